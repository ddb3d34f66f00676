//! Contracts that code written for other platforms relies on, through a
//! real `thaw up` and real HTTP: Lambda's context API and its event-loop
//! rule, Cloudflare's `ctx.waitUntil`, Genezio's errors and OpenWhisk's
//! action contract.

mod common;

use common::{function_dir, http, Platform};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Status, headers and JSON body (`Null` when the body is not JSON).
fn get(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = http().get(url).send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// `result` is turned into the response when the call answers, so a timer
// that changes it shows whether the answer waited for the timer.
const LAMBDA_CONTEXT: &str = r#"
exports.handler = function (event, context, callback) {
  const result = { late: false };
  const later = () => setTimeout(() => { result.late = true; }, 20);
  switch (event.rawPath) {
    case "/wait": callback(null, result); later(); break;
    case "/no-wait": context.callbackWaitsForEmptyEventLoop = false; callback(null, result); later(); break;
    case "/succeed": context.succeed(result); later(); break;
    case "/done": context.done(null, { statusCode: 201, body: "done" }); break;
    case "/fail": context.fail(new Error("failed through context")); break;
    case "/interval": setInterval(() => {}, 100); callback(null, "never sent"); break;
    case "/interval-no-wait":
      context.callbackWaitsForEmptyEventLoop = false;
      setInterval(() => {}, 100);
      callback(null, "sent at the callback");
      break;
    default: callback(new Error("no route " + event.rawPath));
  }
};
"#;

#[test]
fn lambda_context_methods_and_the_event_loop_rule() {
    let p = Platform::start();
    let dir = function_dir(&[
        ("index.js", LAMBDA_CONTEXT),
        ("package.json", "{}"),
        ("thaw.toml", "timeout = 1\n"),
    ]);
    p.deploy(dir.path(), "lambda-ctx");
    let url = |path: &str| p.url("lambda-ctx", path);

    // callback(null, result) answers once the call's timers are done...
    let (s, _, v) = get(&url("/wait"));
    assert_eq!((s, v), (200, json!({"late": true})));
    // ...or at once when callbackWaitsForEmptyEventLoop is false, and
    // context.succeed never waits.
    let (s, _, v) = get(&url("/no-wait"));
    assert_eq!((s, v), (200, json!({"late": false})));
    let (s, _, v) = get(&url("/succeed"));
    assert_eq!((s, v), (200, json!({"late": false})));
    let r = http().get(url("/done")).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.text().unwrap(), "done");
    let (s, _, v) = get(&url("/fail"));
    assert_eq!(s, 500);
    assert_eq!(v["error"]["code"], "handler_error", "{v}");
    assert_eq!(v["error"]["message"], "failed through context", "{v}");

    // A loop that never empties holds the answer until the timeout, as on
    // AWS; without the wait the same handler answers.
    let (s, _, v) = get(&url("/interval-no-wait"));
    assert_eq!((s, v), (200, json!("sent at the callback")));
    let (s, _, v) = get(&url("/interval"));
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "timeout", "{v}");
}

const FETCH_WAIT_UNTIL: &str = r#"
let release;
const gate = new Promise((resolve) => { release = resolve; });
const state = { done: false };
export default {
  async fetch(request, env, ctx) {
    const path = new URL(request.url).pathname;
    if (path === "/start") {
      ctx.passThroughOnException();
      // This work can only end after /release, a later request.
      ctx.waitUntil(gate.then(() => { state.done = true; console.log("background finished"); }));
      return new Response("started");
    }
    if (path === "/release") { release(); return new Response("released"); }
    return Response.json(state);
  },
};
"#;

#[test]
fn fetch_wait_until_work_runs_after_the_response() {
    let p = Platform::start();
    let dir = function_dir(&[
        ("index.mjs", FETCH_WAIT_UNTIL),
        // One instance, so that every request meets the same module state.
        ("thaw.toml", "max_instances = 1\ntimeout = 10\n"),
    ]);
    p.deploy(dir.path(), "wait-until");

    // Answered while its waitUntil work is still pending: had the answer
    // waited for that work, it would never come (504).
    let r = http().get(p.url("wait-until", "/start")).send().unwrap();
    assert_eq!(r.status(), 200);
    let started: u64 = r.headers()["x-thaw-invocation"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.text().unwrap(), "started");
    let (s, _, v) = get(&p.url("wait-until", "/state"));
    assert_eq!((s, v), (200, json!({"done": false})));

    let r = http().get(p.url("wait-until", "/release")).send().unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, v) = get(&p.url("wait-until", "/state"));
    assert_eq!((s, v), (200, json!({"done": true})));
    // The work's console line belongs to the call that started it.
    let line = p.wait_for_log("wait-until", "background finished");
    assert_eq!(line["invocation"], json!(started), "{line}");
}

const GENEZIO_SERVICE: &str = r#"
// The shape of GenezioError from @genezio/types.
class GenezioError extends Error {
  constructor(message, code = undefined, info = undefined) {
    super(message);
    this.name = "GenezioError";
    this.code = code;
    this.info = info;
  }
}
export class Orders {
  async cancel(id) {
    throw new GenezioError(`order ${id} is already shipped`, 409, { id, state: "shipped" });
  }
  broken() { throw new TypeError("not a GenezioError"); }
}
"#;

#[test]
fn genezio_errors_reach_the_json_rpc_caller_with_code_and_info() {
    let p = Platform::start();
    let dir = function_dir(&[("service.mjs", GENEZIO_SERVICE)]);
    p.deploy(dir.path(), "orders");
    let call = |body: &str| {
        let r = http()
            .post(p.url("orders", ""))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (s, v) = call(r#"{"jsonrpc":"2.0","method":"Orders.cancel","params":[7],"id":3}"#);
    assert_eq!(s, 200, "{v}");
    let info = json!({"id": 7, "state": "shipped"});
    assert_eq!(
        v,
        json!({"jsonrpc": "2.0",
               "error": {"code": 409, "message": "order 7 is already shipped", "data": info, "info": info},
               "id": 3})
    );
    // Other errors keep their shape.
    let (s, v) = call(r#"{"jsonrpc":"2.0","method":"Orders.broken","params":[],"id":4}"#);
    assert_eq!(s, 500, "{v}");
    assert_eq!(
        v,
        json!({"jsonrpc": "2.0",
               "error": {"code": -32000, "message": "not a GenezioError", "data": {"name": "TypeError"}},
               "id": 4})
    );
}

const OW_ACTION: &str = r#"
const OW = ["__OW_ACTIVATION_ID", "__OW_ACTION_NAME", "__OW_DEADLINE", "__OW_NAMESPACE", "__OW_API_HOST"];
export function main(params) {
  switch (params.__ow_path) {
    case "/nothing": return;
    case "/string": return "not a dictionary";
    case "/html": return { body: "<h1>hello</h1>" };
    default: return { path: params.__ow_path, env: Object.fromEntries(OW.map((k) => [k, process.env[k] ?? null])) };
  }
}
"#;

#[test]
fn openwhisk_actions_follow_the_openwhisk_contract() {
    let p = Platform::start();
    let action = function_dir(&[("index.mjs", OW_ACTION)]);
    p.deploy(action.path(), "ow-action");

    let (s, _, v) = get(&p.url("ow-action", "/nothing"));
    assert_eq!((s, v), (200, json!({})));
    let (s, _, v) = get(&p.url("ow-action", "/string"));
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"]["code"], "handler_error", "{v}");
    assert_eq!(
        v["error"]["message"], "The action did not return a dictionary.",
        "{v}"
    );
    let r = http().get(p.url("ow-action", "/html")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.text().unwrap(), "<h1>hello</h1>");

    // The bare URL: __ow_path is "", and the __OW_ variables are set.
    let before = now_ms();
    let (s, headers, v) = get(&p.url("ow-action", ""));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["path"], "", "{v}");
    let env = &v["env"];
    assert_eq!(
        env["__OW_ACTIVATION_ID"],
        headers["x-thaw-invocation"].to_str().unwrap(),
        "{v}"
    );
    assert_eq!(env["__OW_ACTION_NAME"], "/default/ow-action", "{v}");
    assert_eq!(env["__OW_NAMESPACE"], "default", "{v}");
    assert_eq!(env["__OW_API_HOST"], p.server.as_str(), "{v}");
    let deadline: u64 = env["__OW_DEADLINE"].as_str().unwrap().parse().unwrap();
    assert!(
        deadline > before,
        "deadline {deadline} is not after {before}"
    );
    let (_, _, v) = get(&p.url("ow-action", "/a/b"));
    assert_eq!(v["path"], "/a/b", "{v}");

    // A plain script that declares main without exporting it, and a bundle
    // that sets global.main.
    let script = function_dir(&[
        (
            "action.js",
            "function main(params) { return { kind: \"script\", name: params.name }; }\n",
        ),
        ("package.json", "{}"),
    ]);
    let bundle = function_dir(&[
        (
            "bundle.js",
            "(function () { global.main = function (params) { return { kind: \"bundle\", name: params.name }; }; })();\n",
        ),
        ("package.json", "{}"),
    ]);
    p.deploy(script.path(), "ow-script");
    p.deploy(bundle.path(), "ow-bundle");
    let (s, _, v) = get(&p.url("ow-script", "?name=Ada"));
    assert_eq!((s, v), (200, json!({"kind": "script", "name": "Ada"})));
    let (s, _, v) = get(&p.url("ow-bundle", "?name=Bo"));
    assert_eq!((s, v), (200, json!({"kind": "bundle", "name": "Bo"})));
}

#[test]
fn work_after_the_answer_is_not_paused_and_ends_on_its_own() {
    // Paused 200 ms after its last answer unless work is still running.
    let p = Platform::start_with(&["--pause-idle-after-ms", "200"]);
    let dir = function_dir(&[(
        "index.mjs",
        r#"export default {
  fetch(request, env, ctx) {
    ctx.waitUntil(new Promise((resolve) => setTimeout(() => {
      console.log("late work done");
      resolve();
    }, 1500)));
    return new Response("answered");
  },
};"#,
    )]);
    p.deploy(dir.path(), "late");
    assert_eq!(
        http()
            .get(p.url("late", "/"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "answered"
    );
    // No other request comes: the line appears only if the instance kept
    // running past the pause delay until its work ended.
    p.wait_for_log("late", "late work done");
    p.eventually(20, "paused once its work ended", || {
        let v: Value = p
            .api(reqwest::Method::GET, "/v1/functions/late")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["instances"]["paused"] == 1
    });
}
