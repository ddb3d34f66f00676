//! The four handler styles, reached through the gateway with real HTTP.

mod common;

use common::{function_dir, http, repo_root, Platform};
use serde_json::{json, Value};

const RPC: &str = r#"{"jsonrpc":"2.0","method":"HelloWorldService.helloWorld","params":[],"id":1}"#;

#[test]
fn the_readme_example_answers_json_rpc_and_its_console_line_reaches_thaw_logs() {
    let p = Platform::start();
    let example = repo_root().join("examples/hello-world");
    let url = p.thaw_ok(&["deploy", example.to_str().unwrap()]);
    assert_eq!(url.trim(), p.url("hello-world", ""));

    let resp = http()
        .post(p.url("hello-world", ""))
        .body(RPC)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v, json!({"jsonrpc":"2.0","result":"Hello world!","id":1}));

    p.wait_for_log("hello-world", "Hello world - request received!");
    let logs = p.thaw_ok(&["logs", "hello-world"]);
    assert!(logs.contains("Hello world - request received!"), "{logs}");

    // `thaw invoke` takes the JSON-RPC request as its event and shows the
    // invocation's console output on stderr.
    let out = p.thaw(&["invoke", "hello-world", "--data", RPC]);
    assert!(out.status.success(), "{}", common::stderr_of(&out));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["result"], "Hello world!");
    assert!(common::stderr_of(&out).contains("Hello world - request received!"));
}

#[test]
fn lambda_handlers_get_the_function_url_event_esm_and_commonjs() {
    let p = Platform::start();
    let echo = r#"
        ({ statusCode: 201,
           headers: { "content-type": "application/json", "x-style": "lambda" },
           cookies: ["a=1", "b=2"],
           body: JSON.stringify({ version: event.version, method: event.requestContext.http.method,
             rawPath: event.rawPath, rawQueryString: event.rawQueryString, q: event.queryStringParameters,
             header: event.headers["x-test"], cookies: event.cookies, body: event.body,
             isBase64Encoded: event.isBase64Encoded, fn: context.functionName,
             remaining: context.getRemainingTimeInMillis() > 0 }) })"#;
    let esm = function_dir(&[(
        "index.mjs",
        &format!("export const handler = async (event, context) => {echo};"),
    )]);
    let cjs = function_dir(&[(
        "index.js",
        &format!(
            "exports.handler = async function (event, context) {{ return {}; }};",
            echo.trim()
        ),
    )]);
    p.deploy(esm.path(), "lambda-esm");
    p.deploy(cjs.path(), "lambda-cjs");
    for name in ["lambda-esm", "lambda-cjs"] {
        let resp = http()
            .put(p.url(name, "/a/b%20c?x=1&y=2&x=3"))
            .header("x-test", "yes")
            .header("cookie", "c1=v1; c2=v2")
            .header("content-type", "text/plain")
            .body("hello body")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201, "{name}");
        assert_eq!(resp.headers()["x-style"], "lambda");
        let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies.len(), 2, "{name}: {cookies:?}");
        let v: Value = resp.json().unwrap();
        assert_eq!(v["version"], "2.0");
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["rawPath"], "/a/b%20c");
        assert_eq!(v["rawQueryString"], "x=1&y=2&x=3");
        assert_eq!(v["q"], json!({"x": "1,3", "y": "2"}));
        assert_eq!(v["header"], "yes");
        assert_eq!(v["cookies"], json!(["c1=v1", "c2=v2"]));
        assert_eq!(v["body"], "hello body");
        assert_eq!(v["isBase64Encoded"], false);
        assert_eq!(v["fn"], name);
        assert_eq!(v["remaining"], true);
    }
}

#[test]
fn binary_bodies_reach_the_function_and_come_back_intact() {
    let p = Platform::start();
    let lambda = function_dir(&[(
        "index.mjs",
        r#"export const handler = async (event) => ({
            statusCode: 200, isBase64Encoded: true,
            headers: { "content-type": "application/octet-stream" },
            body: event.isBase64Encoded ? event.body : Buffer.from(event.body ?? "").toString("base64") });"#,
    )]);
    let fetch = function_dir(&[(
        "index.mjs",
        r#"export default { async fetch(request) {
            const bytes = new Uint8Array(await request.arrayBuffer());
            return new Response(bytes.reverse(), { headers: { "content-type": "application/octet-stream" } });
        } };"#,
    )]);
    p.deploy(lambda.path(), "bin-lambda");
    p.deploy(fetch.path(), "bin-fetch");
    let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let back = http()
        .post(p.url("bin-lambda", "/"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.bytes().unwrap().to_vec(), data);
    let back = http()
        .post(p.url("bin-fetch", "/x"))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(back.status(), 200);
    let mut reversed = data.clone();
    reversed.reverse();
    assert_eq!(back.bytes().unwrap().to_vec(), reversed);
}

#[test]
fn fetch_style_sees_method_path_query_headers_and_answers_with_its_response() {
    let p = Platform::start();
    let dir = function_dir(&[(
        "worker.mjs",
        r#"export default { async fetch(request) {
            const url = new URL(request.url);
            return Response.json({ method: request.method, path: url.pathname, q: url.searchParams.get("q"),
                h: request.headers.get("x-h"), body: await request.text() },
              { status: 202, headers: { "x-style": "fetch" } });
        } };"#,
    )]);
    p.deploy(dir.path(), "fetchy");
    let resp = http()
        .patch(p.url("fetchy", "/items/7?q=search"))
        .header("x-h", "v")
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-style"], "fetch");
    let v: Value = resp.json().unwrap();
    assert_eq!(
        v,
        json!({"method":"PATCH","path":"/items/7","q":"search","h":"v","body":"payload"})
    );
}

#[test]
fn openwhisk_main_gets_merged_params_and_may_answer_as_a_web_action() {
    let p = Platform::start();
    let plain = function_dir(&[(
        "index.js",
        r#"function main(params) { return { greeting: `hello ${params.name}`, method: params.__ow_method, path: params.__ow_path, n: params.n }; }
           module.exports.main = main;"#,
    )]);
    let web = function_dir(&[(
        "index.mjs",
        r#"export async function main(params) { return { statusCode: 418, headers: { "x-ow": "1" }, body: "teapot " + params.who }; }"#,
    )]);
    p.deploy(plain.path(), "ow");
    p.deploy(web.path(), "ow-web");
    let v: Value = http()
        .post(p.url("ow", "/p?name=Ada"))
        .header("content-type", "application/json")
        .body(r#"{"n": 3}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        v,
        json!({"greeting":"hello Ada","method":"post","path":"/p","n":3})
    );
    let resp = http().get(p.url("ow-web", "?who=me")).send().unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-ow"], "1");
    assert_eq!(resp.text().unwrap(), "teapot me");
    // `thaw invoke` passes the event as the params, from text, a file or
    // standard input.
    let out = p.thaw_ok(&["invoke", "ow", "--data", r#"{"name":"Bo"}"#]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["greeting"], "hello Bo");
    let event = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(event.path(), r#"{"name":"Cy"}"#).unwrap();
    let at_file = format!("@{}", event.path().display());
    let out = p.thaw_ok(&["invoke", "ow", "--data", &at_file]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["greeting"],
        "hello Cy"
    );
    let mut child = p
        .cli()
        .args(["invoke", "ow", "--data", "@-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"name":"Di"}"#).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["greeting"],
        "hello Di"
    );
    let bad = p.thaw(&["invoke", "ow", "--data", "{nope"]);
    assert!(!bad.status.success());
    assert!(common::stderr_of(&bad).contains("not valid JSON"));
}

#[test]
fn class_services_speak_json_rpc_with_clear_errors() {
    let p = Platform::start();
    let dir = function_dir(&[(
        "service.mjs",
        r#"export class Calc {
              constructor() { this.calls = 0; }
              add(a, b) { this.calls++; return a + b; }
              count() { return this.calls; }
              fail() { throw new Error("no can do"); }
           }"#,
    )]);
    p.deploy(dir.path(), "calc");
    let call = |body: &str| {
        let r = http()
            .post(p.url("calc", ""))
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (s, v) = call(r#"{"jsonrpc":"2.0","method":"Calc.add","params":[2,3],"id":"a"}"#);
    assert_eq!((s, v), (200, json!({"jsonrpc":"2.0","result":5,"id":"a"})));
    // One instance of the class per runtime: state persists between calls.
    let (_, v) = call(r#"{"jsonrpc":"2.0","method":"Calc.count","params":[],"id":2}"#);
    assert_eq!(v["result"], 1);
    let (s, v) = call("{not json");
    assert_eq!((s, v["error"]["code"].clone()), (400, json!(-32700)));
    let (s, v) = call(r#"{"jsonrpc":"2.0","params":[],"id":3}"#);
    assert_eq!((s, v["error"]["code"].clone()), (400, json!(-32600)));
    for method in [
        "Calc.nope",
        "Calc.constructor",
        "Calc.__proto__",
        "Calc.toString",
        "Nope.add",
    ] {
        let (s, v) = call(&format!(
            r#"{{"jsonrpc":"2.0","method":"{method}","params":[],"id":4}}"#
        ));
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (404, json!(-32601)),
            "{method}"
        );
    }
    let (s, v) = call(r#"{"jsonrpc":"2.0","method":"Calc.fail","params":[],"id":5}"#);
    assert_eq!(s, 500);
    assert_eq!(v["error"]["message"], "no can do");
    let r = http().get(p.url("calc", "")).send().unwrap();
    assert_eq!(r.status(), 405);
}
