//! `/v1/openapi.json` against a real `thaw up`: the document is well
//! formed, every operation it lists is routed, and every JSON body the
//! server answers with (2xx and errors alike) matches the schema the
//! document gives for that path, method and status. Request bodies are
//! held to it too: one the server takes must match the document, one it
//! refuses as `bad_json` must not; and every query or header parameter
//! sent is one the operation documents.
//!
//! The schemas are checked by a small validator written here (the subset
//! of JSON Schema the document uses: `type`, `enum`, `properties`,
//! `required`, `additionalProperties`, `items`, `minItems`, `maxItems`,
//! `minimum`, `maximum`, `anyOf`, `oneOf` and `$ref`).

mod common;

use common::{function_dir, http, Platform};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The document as the gateway embeds it.
const DOCUMENT: &str = include_str!("../../thaw-gateway/src/openapi.json");

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The routes that need no token: this document, and readiness (which a
/// load balancer asks).
const OPEN: &[&str] = &["/v1/openapi.json", "/readyz"];

// ---- the validator ----

/// `path` with one more object member.
fn member(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key:?}]")
    }
}

/// What a value is, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("string {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("string {s:?}"),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::Object(_) => "object".into(),
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

/// The value a local `$ref` (`#/components/...`) points at in `root`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("`{reference}` is not a local reference"))?;
    root.pointer(pointer)
        .ok_or_else(|| format!("`{reference}` points at nothing in the document"))
}

/// Follows `$ref`s until an object without one.
fn deref<'a>(root: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = resolve(root, r).unwrap();
    }
    v
}

/// Checks `value` against `schema`; `root` is the document `$ref`s point
/// into and `path` the JSON path of `value` (`$` at the top). The error
/// names the path of the first part that does not match.
fn validate(root: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let schema = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => {
            return Err(format!(
                "{path}: nothing is allowed here, found {}",
                kind(value)
            ))
        }
        Value::Object(o) => o,
        other => return Err(format!("{path}: the schema is not an object: {other}")),
    };
    if let Some(r) = schema.get("$ref") {
        let r = r
            .as_str()
            .ok_or_else(|| format!("{path}: $ref is not a string"))?;
        let target = resolve(root, r).map_err(|e| format!("{path}: {e}"))?;
        validate(root, target, value, path)?;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => {
                return Err(format!(
                    "{path}: `type` is neither a string nor an array: {other}"
                ))
            }
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{path}: expected {}, found {}",
                types.join(" or "),
                kind(value)
            ));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!(
                "{path}: {} is not one of {}",
                kind(value),
                Value::Array(allowed.clone())
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{path}: {n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{path}: {n} is above the maximum {max}"));
            }
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        let errors: Vec<String> = branches
            .iter()
            .filter_map(|b| validate(root, b, value, path).err())
            .collect();
        if errors.len() == branches.len() {
            return Err(format!(
                "{path}: matches none of anyOf: [{}]",
                errors.join("; ")
            ));
        }
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let errors: Vec<String> = branches
            .iter()
            .filter_map(|b| validate(root, b, value, path).err())
            .collect();
        let matched = branches.len() - errors.len();
        if matched != 1 {
            return Err(format!(
                "{path}: matches {matched} of oneOf, not exactly one: [{}]",
                errors.join("; ")
            ));
        }
    }
    if let Value::Object(fields) = value {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    return Err(format!("{path}: the required field `{name}` is missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, v) in fields {
            let at = member(path, name);
            match properties.and_then(|p| p.get(name)) {
                Some(s) => validate(root, s, v, &at)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: the field `{name}` is not in the schema"))
                    }
                    Some(s @ Value::Object(_)) => validate(root, s, v, &at)?,
                    _ => {}
                },
            }
        }
    }
    if let Value::Array(items) = value {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                return Err(format!("{path}: {} items, fewer than {min}", items.len()));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                return Err(format!("{path}: {} items, more than {max}", items.len()));
            }
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate(root, item, v, &format!("{path}[{i}]"))?;
            }
        }
    }
    Ok(())
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
}

// ---- checks without a server ----

#[test]
fn the_validator_rejects_what_does_not_match_and_says_where() {
    let doc = document();
    let check = |schema: &str, v: Value| validate(&doc, &schema_ref(schema), &v, "$");

    // A body missing a required field fails, naming the path and the field.
    let e = check("ErrorBody", json!({ "error": { "message": "no code" } })).unwrap_err();
    assert!(e.starts_with("$.error: ") && e.contains("`code`"), "{e}");
    assert!(check(
        "ErrorBody",
        json!({ "error": { "code": "x", "message": "m", "stack": null } })
    )
    .is_ok());
    assert!(check("ErrorBody", json!({}))
        .unwrap_err()
        .contains("`error`"));

    let key = json!({
        "id": "0123456789abcdef", "name": "ci", "namespace": "team-a", "role": "deploy",
        "created_ms": 1, "expires_ms": null, "revoked_ms": null
    });
    assert!(check("KeyView", key.clone()).is_ok());
    let mut missing = key.clone();
    missing.as_object_mut().unwrap().remove("revoked_ms");
    let e = check("KeyView", missing).unwrap_err();
    assert!(e.contains("`revoked_ms`"), "{e}");
    let mut extra = key.clone();
    extra["surprise"] = json!(1);
    assert_eq!(
        check("KeyView", extra).unwrap_err(),
        "$.surprise: the field `surprise` is not in the schema"
    );
    let mut role = key.clone();
    role["role"] = json!("root");
    assert!(check("KeyView", role).unwrap_err().starts_with("$.role: "));
    let mut created = key.clone();
    created["created_ms"] = json!("yesterday");
    assert!(check("KeyView", created)
        .unwrap_err()
        .starts_with("$.created_ms: expected integer"));

    // Deep in arrays and through $refs and anyOf.
    let alias = |split: Value| json!({ "name": "prod", "version": 2, "split": split, "url": "http://h/fn/a@prod", "updated_ms": 5 });
    let list = |split: Value| json!({ "aliases": [alias(json!(null)), alias(split)] });
    assert!(check("AliasList", list(json!(null))).is_ok());
    assert!(check("AliasList", list(json!({ "version": 3, "percent": 10 }))).is_ok());
    let e = check("AliasList", list(json!({ "version": 3 }))).unwrap_err();
    assert!(e.starts_with("$.aliases[1].split: "), "{e}");
    let e = check("AliasList", list(json!({ "version": 3, "percent": 100 }))).unwrap_err();
    assert!(e.contains("$.aliases[1].split.percent"), "{e}");
    let e = check("AliasList", list(json!("prod"))).unwrap_err();
    assert!(e.starts_with("$.aliases[1].split: "), "{e}");

    // Optional members may be absent but, when present, must match.
    let result = json!({
        "namespace": "default", "function": "api", "version": 1, "invocation": 7,
        "cold": true, "logs": [{ "stream": "stdout", "line": "hi", "ts_ms": 1, "invocation": 7 }]
    });
    assert!(check("InvokeResult", result.clone()).is_ok());
    let mut headers = result.clone();
    headers["headers"] = json!([["content-type", "text/plain"], ["x"]]);
    let e = check("InvokeResult", headers).unwrap_err();
    assert!(e.starts_with("$.headers[1]: "), "{e}");
    let mut logs = result;
    logs["logs"][0]["stream"] = json!("stdin");
    assert!(check("InvokeResult", logs)
        .unwrap_err()
        .starts_with("$.logs[0].stream: "));

    // An async call in a list: no payload, no attempts; a state it may be in.
    let call = json!({
        "id": "3f2a9c0e1b7d4a5f6e8c9b0a", "namespace": "default", "function": "report",
        "target": "latest", "kind": "event", "origin": "api", "state": "queued",
        "attempts": 0, "max_attempts": 4, "created_ms": 1, "updated_ms": 1, "next_attempt_ms": 1
    });
    assert!(check("CallList", json!({ "calls": [call.clone()] })).is_ok());
    let mut lost = call;
    lost["state"] = json!("lost");
    assert!(check("CallView", lost)
        .unwrap_err()
        .starts_with("$.state: "));

    // Request bodies: unknown fields are refused, as the server does.
    assert!(check("SetAlias", json!({ "version": 2 })).is_ok());
    assert!(check("SetAlias", json!({ "version": 2, "extra": true })).is_err());
    assert!(check("Rollback", json!({})).is_ok());
    assert!(check("LimitsPatch", json!({ "max_functions": null })).is_ok());
    assert!(check("CallIds", json!({})).is_ok());
    assert!(check("CallIds", json!({ "ids": null })).is_ok());
    assert!(check("CallIds", json!({ "ids": [7] }))
        .unwrap_err()
        .starts_with("$.ids[0]: "));
    assert!(check("NewSchedule", json!({ "name": "n", "cron": "@daily" })).is_ok());
    assert!(check("NewSchedule", json!({ "cron": "@daily" })).is_err());
}

/// Every `$ref` in `v`, with where it is.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push((at.to_string(), r.to_string()));
                    }
                } else {
                    refs(child, &member(at, k), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                refs(child, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every operation of the document: (method, path template, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if METHODS.contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_is_well_formed() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "thaw control API");
    assert_eq!(doc["info"]["version"], "1");
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let mut all = Vec::new();
    refs(&doc, "$", &mut all);
    for (at, r) in &all {
        assert!(resolve(&doc, r).is_ok(), "{at}: `{r}` points at nothing");
    }

    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{} {path}", method.to_uppercase());
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no operationId"));
        assert!(
            ids.insert(id.to_string()),
            "{what}: operationId {id} is used twice"
        );
        assert!(
            !op["summary"].as_str().unwrap_or("").is_empty(),
            "{what}: no summary"
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no 2xx response"
        );
        for (status, r) in responses {
            let r = deref(&doc, r);
            assert!(
                r["description"].is_string(),
                "{what} {status}: no description"
            );
            // Not ready is an answer of `/readyz`, not an error.
            let not_ready = path == "/readyz" && status == "503";
            if (status.starts_with('4') || status.starts_with('5')) && !not_ready {
                let schema = &r["content"]["application/json"]["schema"];
                assert_eq!(schema, &schema_ref("ErrorBody"), "{what} {status}");
            }
        }
        // Only the document itself and readiness are open.
        if OPEN.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([]), "{what}");
        } else {
            assert!(
                op.get("security").is_none(),
                "{what} overrides the global security"
            );
            assert!(responses.contains_key("401"), "{what}: no 401");
        }
        // Every `{param}` of the path is declared, and nothing else is.
        let mut declared = BTreeSet::new();
        let item_params = doc["paths"][&path]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let op_params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in item_params.iter().chain(&op_params) {
            let p = deref(&doc, p);
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{what}: {p}");
                declared.insert(p["name"].as_str().unwrap().to_string());
            }
        }
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(String::from)
            .collect();
        assert_eq!(declared, in_path, "{what}: path parameters");
    }

    // One schema per type; objects list their fields, and what the server
    // sends is closed (ErrorView carries flattened details).
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(schema["type"].is_string(), "{name}: no type");
        if schema["type"] == "object" {
            assert!(schema["properties"].is_object(), "{name}: no properties");
            assert!(schema["required"].is_array(), "{name}: no required");
            if name != "ErrorView" {
                assert_eq!(schema["additionalProperties"], false, "{name}");
            }
        }
    }
}

// ---- against a real thaw ----

enum Body {
    None,
    Json(Value),
    /// Bytes with their content type.
    Raw(&'static str, Vec<u8>),
}

struct Answer {
    status: u16,
    json: Value,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The header that asks `POST .../invoke` to run the event later.
const ASYNC: &[(&str, &str)] = &[("x-thaw-invoke", "async")];

/// Calls the API and holds each answer to the document.
struct Checker<'a> {
    p: &'a Platform,
    doc: Value,
    /// Operations answered: (method, template).
    seen: BTreeSet<(String, String)>,
    /// (method, template, status) checked, for the summary.
    statuses: BTreeSet<(String, String, u16)>,
    bodies_checked: usize,
    /// Whether calls count in `seen` (probes do not).
    record: bool,
}

/// Whether the concrete `path` (no query) fits `template`.
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

impl<'a> Checker<'a> {
    /// Sends `method path` (path may hold a query) as the operation
    /// `template` of the document, with `token`, and checks the answer.
    fn call(
        &mut self,
        token: Option<&str>,
        method: &str,
        template: &str,
        path: &str,
        body: Body,
    ) -> Answer {
        self.call_with(token, method, template, path, &[], body)
    }

    /// `call`, sending `headers` too: each must be a header parameter the
    /// operation documents.
    fn call_with(
        &mut self,
        token: Option<&str>,
        method: &str,
        template: &str,
        path: &str,
        request_headers: &[(&str, &str)],
        body: Body,
    ) -> Answer {
        let what = format!("{method} {path}");
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        assert!(
            fits(template, bare),
            "{what} is not an instance of {template}"
        );
        let op = self.doc["paths"][template][method.to_lowercase()].clone();
        assert!(op.is_object(), "the document has no {method} {template}");

        // The query and header parameters sent are documented ones.
        let mut query_params = BTreeSet::new();
        let mut header_params = BTreeSet::new();
        let item_params = self.doc["paths"][template]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for p in item_params
            .iter()
            .chain(op["parameters"].as_array().into_iter().flatten())
        {
            let p = deref(&self.doc, p);
            let name = p["name"].as_str().unwrap().to_string();
            match p["in"].as_str() {
                Some("query") => {
                    query_params.insert(name);
                }
                Some("header") => {
                    header_params.insert(name.to_ascii_lowercase());
                }
                _ => {}
            }
        }
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let name = pair.split('=').next().unwrap();
            assert!(
                query_params.contains(name),
                "{what}: `{name}` is not a documented query parameter"
            );
        }

        let mut request = http().request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.p.server),
        );
        for (name, value) in request_headers {
            assert!(
                header_params.contains(&name.to_ascii_lowercase()),
                "{what}: `{name}` is not a documented header parameter"
            );
            request = request.header(*name, *value);
        }
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let sent = match &body {
            Body::None => None,
            Body::Json(v) => {
                request = request
                    .header("content-type", "application/json")
                    .body(v.to_string());
                Some(("application/json", Some(v.clone())))
            }
            Body::Raw(ct, bytes) => {
                request = request.header("content-type", *ct).body(bytes.clone());
                Some((
                    *ct,
                    serde_json::from_slice::<Value>(bytes)
                        .ok()
                        .filter(|_| *ct == "application/json"),
                ))
            }
        };
        let response = request.send().unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().unwrap().to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let media = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap().trim().to_string())
            .unwrap_or_default();
        let json: Value = if media == "application/json" {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{what} answered {status} with invalid JSON ({e}): {text}")
            })
        } else {
            Value::Null
        };

        // Routed at all.
        assert!(
            !(status == 404 && json["error"]["code"] == "no_route"),
            "{what}: the server has no such route ({template} is in the document)"
        );
        assert_ne!(
            status, 405,
            "{what}: the server does not take {method} here"
        );

        // The status is documented, and so is what came with it.
        let responses = &op["responses"];
        let documented = responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| {
                panic!(
                    "{what} answered {status}, which the document does not list for {method} {template} (it lists {:?}): {text}",
                    responses.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
                )
            });
        let documented = deref(&self.doc, documented).clone();
        for (name, h) in documented["headers"].as_object().into_iter().flatten() {
            let h = deref(&self.doc, h);
            if h["required"] == true {
                assert!(
                    headers.contains_key(name.as_str()),
                    "{what} {status}: no {name} header"
                );
            }
        }
        let content = documented["content"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if !content.is_empty() {
            let media_doc = content.get(&media).unwrap_or_else(|| {
                panic!(
                    "{what} answered {status} as `{media}`, not one of {:?}: {text}",
                    content.keys().collect::<Vec<_>>()
                )
            });
            let schema = media_doc.get("schema").cloned().unwrap_or(json!({}));
            let value = if media == "application/json" {
                json.clone()
            } else {
                Value::String(text.clone())
            };
            if let Err(e) = validate(&self.doc, &schema, &value, "$") {
                panic!("{what} answered {status} with a body the document does not allow: {e}\nbody: {text}");
            }
            self.bodies_checked += 1;
        } else {
            assert!(
                bytes.is_empty(),
                "{what} {status}: a body the document does not describe: {text}"
            );
        }

        // What was sent fits the request body the document describes: the
        // server took it, so must the document; it refused it as not what
        // the route takes, so must the document.
        if let Some((ct, parsed)) = sent {
            let rb = deref(&self.doc, &op["requestBody"]).clone();
            assert!(
                rb.is_object(),
                "{what}: sent a body to an operation that takes none"
            );
            let media_doc = rb["content"].get(ct).unwrap_or_else(|| {
                panic!("{what}: the request body's type `{ct}` is not documented")
            });
            if let Some(v) = parsed {
                let schema = media_doc.get("schema").cloned().unwrap_or(json!({}));
                let fit = validate(&self.doc, &schema, &v, "$");
                if (200..300).contains(&status) {
                    if let Err(e) = fit {
                        panic!("{what}: the server took a request body the document refuses: {e}\nbody: {v}");
                    }
                } else if status == 400 && json["error"]["code"] == "bad_json" {
                    assert!(
                        fit.is_err(),
                        "{what}: the server refused as bad_json a body the document allows: {v}"
                    );
                }
            }
        } else if (200..300).contains(&status) {
            let rb = deref(&self.doc, &op["requestBody"]);
            assert!(
                rb["required"] != true,
                "{what}: succeeded without the body the document requires"
            );
        }

        if self.record {
            self.seen
                .insert((method.to_lowercase(), template.to_string()));
        }
        self.statuses
            .insert((method.to_lowercase(), template.to_string(), status));
        Answer {
            status,
            json,
            headers,
        }
    }

    /// `call`, insisting on one status.
    fn expect(
        &mut self,
        token: Option<&str>,
        status: u16,
        method: &str,
        template: &str,
        path: &str,
        body: Body,
    ) -> Answer {
        self.expect_with(token, status, method, template, path, &[], body)
    }

    /// `call_with`, insisting on one status.
    #[allow(clippy::too_many_arguments)]
    fn expect_with(
        &mut self,
        token: Option<&str>,
        status: u16,
        method: &str,
        template: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Answer {
        let a = self.call_with(token, method, template, path, headers, body);
        assert_eq!(a.status, status, "{method} {path}: {}", a.json);
        a
    }
}

const HANDLER: &str = r#"
import { VERSION } from "./version.mjs";
export const handler = async (event) => {
  console.log("event", JSON.stringify(event));
  if (event && event.fail) throw new TypeError("asked to fail");
  return { version: VERSION, greeting: process.env.GREETING ?? null };
};
"#;

/// A function's folder with these files, as `thaw deploy` packs it.
fn pack(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = function_dir(files);
    thaw_bundle::pack_dir(dir.path(), &thaw_bundle::Limits::default())
        .expect("packs")
        .archive
}

fn archive(version: &str) -> Vec<u8> {
    pack(&[
        ("index.mjs", HANDLER),
        (
            "version.mjs",
            &format!("export const VERSION = \"{version}\";"),
        ),
    ])
}

/// `job`: the same handler, never retried (a call that throws is a dead
/// letter at once), with a schedule in its `thaw.toml`.
fn job_archive() -> Vec<u8> {
    pack(&[
        ("index.mjs", HANDLER),
        ("version.mjs", "export const VERSION = \"job\";"),
        (
            "thaw.toml",
            "retries = 0\n\n[[schedule]]\nname = \"yearly\"\ncron = \"@yearly\"\n",
        ),
    ])
}

/// Holds its one call long enough for a second to find the queue full.
const SLEEPER: &str = r#"
export const handler = async () => {
  await new Promise((resolve) => setTimeout(resolve, 20000));
  return {};
};
"#;

/// Every function route but the removals, on function `api` under
/// `prefix` (`/v1` or `/v1/namespaces/team-a`), whose template is `tprefix`.
fn exercise_function(c: &mut Checker, token: &str, prefix: &str, tprefix: &str) {
    let t = Some(token);
    let f = format!("{prefix}/functions/api");
    let tf = format!("{tprefix}/functions/{{name}}");
    let list = format!("{tprefix}/functions");

    // Deploys: v1, v2 (promoted, explicitly), v3 (not promoted).
    c.expect(t, 404, "GET", &tf, &f, Body::None);
    let empty = c.expect(
        t,
        400,
        "PUT",
        &tf,
        &f,
        Body::Raw("application/gzip", Vec::new()),
    );
    assert_eq!(empty.code(), "empty_archive");
    c.expect(
        t,
        400,
        "PUT",
        &tf,
        &format!("{prefix}/functions/Not_A_Name"),
        Body::Raw("application/gzip", archive("x")),
    );
    c.expect(
        t,
        400,
        "PUT",
        &tf,
        &format!("{f}?promote=maybe"),
        Body::Raw("application/gzip", archive("x")),
    );
    let v1 = c.expect(
        t,
        200,
        "PUT",
        &tf,
        &f,
        Body::Raw("application/gzip", archive("v1")),
    );
    assert_eq!(v1.json["version"], 1);
    c.expect(
        t,
        200,
        "PUT",
        &tf,
        &format!("{f}?promote=true"),
        Body::Raw("application/gzip", archive("v2")),
    );
    let v3 = c.expect(
        t,
        200,
        "PUT",
        &tf,
        &format!("{f}?promote=false"),
        Body::Raw("application/gzip", archive("v3")),
    );
    assert_eq!(v3.json["version"], 2, "not promoted: latest stays at 2");

    let listed = c.expect(
        t,
        200,
        "GET",
        &list,
        &format!("{prefix}/functions"),
        Body::None,
    );
    assert_eq!(
        listed.json["functions"].as_array().unwrap().len(),
        1,
        "{}",
        listed.json
    );
    c.expect(t, 200, "GET", &tf, &f, Body::None);
    c.expect(
        t,
        404,
        "GET",
        &tf,
        &format!("{prefix}/functions/nope"),
        Body::None,
    );

    // Aliases.
    let ta = format!("{tf}/aliases/{{alias}}");
    c.expect(
        t,
        200,
        "PUT",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::Json(json!({ "version": 2 })),
    );
    let split = c.expect(
        t,
        200,
        "PUT",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::Json(json!({ "version": 2, "split": { "version": 3, "percent": 10 } })),
    );
    assert_eq!(split.json["split"]["percent"], 10);
    c.expect(
        t,
        400,
        "PUT",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::Json(json!({ "version": 2, "extra": true })),
    );
    c.expect(
        t,
        400,
        "PUT",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::Json(json!({ "version": "two" })),
    );
    c.expect(
        t,
        400,
        "PUT",
        &ta,
        &format!("{f}/aliases/Bad_Alias"),
        Body::Json(json!({ "version": 2 })),
    );
    c.expect(
        t,
        404,
        "PUT",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::Json(json!({ "version": 99 })),
    );
    c.expect(
        t,
        404,
        "PUT",
        &ta,
        &format!("{prefix}/functions/nope/aliases/prod"),
        Body::Json(json!({ "version": 1 })),
    );
    let aliases = c.expect(
        t,
        200,
        "GET",
        &format!("{tf}/aliases"),
        &format!("{f}/aliases"),
        Body::None,
    );
    assert_eq!(
        aliases.json["aliases"].as_array().unwrap().len(),
        2,
        "{}",
        aliases.json
    );
    let versions = c.expect(
        t,
        200,
        "GET",
        &format!("{tf}/versions"),
        &format!("{f}/versions"),
        Body::None,
    );
    assert_eq!(
        versions.json["versions"].as_array().unwrap().len(),
        3,
        "{}",
        versions.json
    );
    c.expect(
        t,
        404,
        "GET",
        &format!("{tf}/versions"),
        &format!("{prefix}/functions/nope/versions"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "GET",
        &format!("{tf}/aliases"),
        &format!("{prefix}/functions/nope/aliases"),
        Body::None,
    );

    // Invoke: latest, an alias, a version; an answer and a thrown error.
    let ti = format!("{tf}/invoke");
    let ok = c.expect(
        t,
        200,
        "POST",
        &ti,
        &format!("{f}/invoke"),
        Body::Json(json!({ "name": "openapi" })),
    );
    assert_eq!(ok.json["status"], 200, "{}", ok.json);
    assert!(
        ok.json["body"].as_str().unwrap().contains("\"v2\""),
        "{}",
        ok.json
    );
    let invocation = ok.json["invocation"].as_u64().unwrap();
    c.expect(
        t,
        200,
        "POST",
        &ti,
        &format!("{f}@prod/invoke"),
        Body::Json(json!([1, 2, 3])),
    );
    let v3 = c.expect(t, 200, "POST", &ti, &format!("{f}@3/invoke"), Body::None);
    assert!(
        v3.json["body"].as_str().unwrap().contains("\"v3\""),
        "{}",
        v3.json
    );
    let thrown = c.expect(
        t,
        200,
        "POST",
        &ti,
        &format!("{f}/invoke"),
        Body::Json(json!({ "fail": true })),
    );
    assert_eq!(
        thrown.json["error"]["code"], "handler_error",
        "{}",
        thrown.json
    );
    c.expect(
        t,
        400,
        "POST",
        &ti,
        &format!("{f}/invoke"),
        Body::Raw("application/json", b"{not json".to_vec()),
    );
    c.expect(t, 404, "POST", &ti, &format!("{f}@99/invoke"), Body::None);
    c.expect(t, 404, "POST", &ti, &format!("{f}@nope/invoke"), Body::None);
    c.expect(
        t,
        404,
        "POST",
        &ti,
        &format!("{prefix}/functions/nope/invoke"),
        Body::None,
    );

    // Logs: the lines are written off the request path.
    let tl = format!("{tf}/logs");
    let start = Instant::now();
    loop {
        let logs = c.expect(
            t,
            200,
            "GET",
            &tl,
            &format!("{f}/logs?limit=1000"),
            Body::None,
        );
        let lines = logs.json["logs"].as_array().unwrap();
        if lines
            .iter()
            .any(|l| l["line"].as_str().unwrap_or("").contains("openapi"))
        {
            let next = logs.json["next"].as_i64().unwrap();
            c.expect(
                t,
                200,
                "GET",
                &tl,
                &format!("{f}/logs?after={next}&limit=10"),
                Body::None,
            );
            c.expect(
                t,
                200,
                "GET",
                &tl,
                &format!("{f}/logs?invocation={invocation}"),
                Body::None,
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log lines of the call: {}",
            logs.json
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.expect(
        t,
        400,
        "GET",
        &tl,
        &format!("{f}/logs?limit=lots"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "GET",
        &tl,
        &format!("{prefix}/functions/nope/logs"),
        Body::None,
    );

    // Stats: the four calls that ran (one threw) are in the last hour.
    let tst = format!("{tf}/stats");
    let stats = c.expect(t, 200, "GET", &tst, &format!("{f}/stats"), Body::None);
    assert_last_hour(&stats.json, 4, 1);
    c.expect(
        t,
        404,
        "GET",
        &tst,
        &format!("{prefix}/functions/nope/stats"),
        Body::None,
    );

    // Rollback: latest 2 -> 1 (empty body), back to 2, an alias that is not.
    let tr = format!("{tf}/rollback");
    let back = c.expect(t, 200, "POST", &tr, &format!("{f}/rollback"), Body::None);
    assert_eq!(back.json["version"], 1, "{}", back.json);
    c.expect(t, 404, "POST", &tr, &format!("{f}/rollback"), Body::None);
    c.expect(
        t,
        200,
        "POST",
        &tr,
        &format!("{f}/rollback"),
        Body::Json(json!({ "alias": "latest", "to": 2 })),
    );
    c.expect(
        t,
        200,
        "POST",
        &tr,
        &format!("{f}/rollback"),
        Body::Json(json!({ "alias": "prod", "to": null })),
    );
    c.expect(
        t,
        404,
        "POST",
        &tr,
        &format!("{f}/rollback"),
        Body::Json(json!({ "alias": "nope" })),
    );
    c.expect(
        t,
        400,
        "POST",
        &tr,
        &format!("{f}/rollback"),
        Body::Json(json!({ "to": "two" })),
    );
    c.expect(
        t,
        400,
        "POST",
        &tr,
        &format!("{f}/rollback"),
        Body::Json(json!({ "alias": "latest", "version": 1 })),
    );

    // Secrets and variables: each change is a new version.
    let ts = format!("{tf}/secrets/{{key}}");
    let te = format!("{tf}/env/{{key}}");
    let set = c.expect(
        t,
        200,
        "PUT",
        &ts,
        &format!("{f}/secrets/API_KEY"),
        Body::Json(json!({ "value": "s3cret" })),
    );
    assert_eq!(set.json["secret_names"], json!(["API_KEY"]), "{}", set.json);
    c.expect(
        t,
        400,
        "PUT",
        &ts,
        &format!("{f}/secrets/THAW_X"),
        Body::Json(json!({ "value": "x" })),
    );
    c.expect(
        t,
        400,
        "PUT",
        &ts,
        &format!("{f}/secrets/OTHER"),
        Body::Json(json!({ "val": "x" })),
    );
    c.expect(
        t,
        404,
        "PUT",
        &ts,
        &format!("{prefix}/functions/nope/secrets/OTHER"),
        Body::Json(json!({ "value": "x" })),
    );
    c.expect(
        t,
        413,
        "PUT",
        &ts,
        &format!("{f}/secrets/HUGE"),
        Body::Json(json!({ "value": "x".repeat(65 * 1024) })),
    );
    let secrets = c.expect(
        t,
        200,
        "GET",
        &format!("{tf}/secrets"),
        &format!("{f}/secrets"),
        Body::None,
    );
    assert_eq!(
        secrets.json["secrets"][0]["name"], "API_KEY",
        "{}",
        secrets.json
    );
    c.expect(
        t,
        404,
        "GET",
        &format!("{tf}/secrets"),
        &format!("{prefix}/functions/nope/secrets"),
        Body::None,
    );
    let env = c.expect(
        t,
        200,
        "PUT",
        &te,
        &format!("{f}/env/GREETING"),
        Body::Json(json!({ "value": "hi" })),
    );
    assert_eq!(env.json["env_names"], json!(["GREETING"]), "{}", env.json);
    c.expect(
        t,
        400,
        "PUT",
        &te,
        &format!("{f}/env/9LIVES"),
        Body::Json(json!({ "value": "x" })),
    );
    c.expect(
        t,
        413,
        "PUT",
        &te,
        &format!("{f}/env/HUGE"),
        Body::Json(json!({ "value": "x".repeat(65 * 1024) })),
    );
    let listed = c.expect(
        t,
        200,
        "GET",
        &format!("{tf}/env"),
        &format!("{f}/env"),
        Body::None,
    );
    assert_eq!(
        listed.json["env"],
        json!({ "GREETING": "hi" }),
        "{}",
        listed.json
    );
    c.expect(
        t,
        404,
        "GET",
        &format!("{tf}/env"),
        &format!("{prefix}/functions/nope/env"),
        Body::None,
    );
    let greeted = c.expect(t, 200, "POST", &ti, &format!("{f}/invoke"), Body::None);
    assert!(
        greeted.json["body"].as_str().unwrap().contains("\"hi\""),
        "{}",
        greeted.json
    );
    c.expect(
        t,
        200,
        "DELETE",
        &te,
        &format!("{f}/env/GREETING"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "DELETE",
        &te,
        &format!("{f}/env/GREETING"),
        Body::None,
    );
    c.expect(
        t,
        400,
        "DELETE",
        &te,
        &format!("{f}/env/NODE_OPTIONS"),
        Body::None,
    );
    c.expect(
        t,
        200,
        "DELETE",
        &ts,
        &format!("{f}/secrets/API_KEY"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "DELETE",
        &ts,
        &format!("{f}/secrets/API_KEY"),
        Body::None,
    );
}

/// Checks a function's last hour (`GET {F}/stats`): minutes a minute
/// apart, at least `calls` calls and `errors` errors in all, latencies in
/// every minute with calls and none in those without (a `thaw up` younger
/// than an hour has some).
fn assert_last_hour(stats: &Value, calls: u64, errors: u64) {
    let minutes = stats["minutes"].as_array().unwrap();
    let (mut counted, mut failed, mut quiet) = (0, 0, 0);
    for (i, m) in minutes.iter().enumerate() {
        if i > 0 {
            let step =
                m["start_ms"].as_i64().unwrap() - minutes[i - 1]["start_ms"].as_i64().unwrap();
            assert_eq!(step, 60_000, "{stats}");
        }
        let n = m["calls"].as_u64().unwrap();
        let errors = m["errors"].as_u64().unwrap();
        assert!(errors <= n && m["cold"].as_u64().unwrap() <= n, "{m}");
        counted += n;
        failed += errors;
        if n == 0 {
            quiet += 1;
            assert!(m["p50_ms"].is_null() && m["p99_ms"].is_null(), "{m}");
        } else {
            let (p50, p99) = (m["p50_ms"].as_f64(), m["p99_ms"].as_f64());
            assert!(
                matches!((p50, p99), (Some(p50), Some(p99)) if 0.0 < p50 && p50 <= p99),
                "{m}"
            );
        }
    }
    assert!(counted >= calls && failed >= errors, "{stats}");
    assert!(quiet > 0, "no minute without calls: {stats}");
}

/// Polls the call at `path` (an instance of `template`) until its state
/// is `state`; every answer on the way is checked too.
fn wait_for_state(
    c: &mut Checker,
    token: Option<&str>,
    template: &str,
    path: &str,
    state: &str,
) -> Answer {
    let start = Instant::now();
    loop {
        let call = c.expect(token, 200, "GET", template, path, Body::None);
        if call.json["state"] == state {
            return call;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path} never became {state}: {}",
            call.json
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async calls, dead letters and schedules, on function `job` under
/// `prefix` (as `exercise_function`). Returns the id of a call that
/// succeeded.
fn exercise_triggers(c: &mut Checker, token: &str, prefix: &str, tprefix: &str) -> String {
    let t = Some(token);
    let f = format!("{prefix}/functions/job");
    let nope = format!("{prefix}/functions/nope");
    let tf = format!("{tprefix}/functions/{{name}}");
    let ti = format!("{tf}/invoke");
    let tcall = format!("{tprefix}/invocations/{{id}}");
    c.expect(
        t,
        200,
        "PUT",
        &tf,
        &f,
        Body::Raw("application/gzip", job_archive()),
    );

    // Async calls: accepted at once, with where to follow them.
    let accepted = c.expect_with(
        t,
        202,
        "POST",
        &ti,
        &format!("{f}/invoke"),
        ASYNC,
        Body::Json(json!({ "name": "later" })),
    );
    let ok = accepted.json["id"].as_str().unwrap().to_string();
    assert_eq!(accepted.json["state"], "queued", "{}", accepted.json);
    assert_eq!(accepted.header("location"), accepted.json["status_url"]);
    assert_eq!(accepted.header("x-thaw-invocation"), ok);
    assert_eq!(accepted.header("preference-applied"), "");
    let failing = c.expect_with(
        t,
        202,
        "POST",
        &ti,
        &format!("{f}/invoke"),
        &[("prefer", "respond-async")],
        Body::Json(json!({ "fail": true })),
    );
    assert_eq!(failing.header("preference-applied"), "respond-async");
    let failing = failing.json["id"].as_str().unwrap().to_string();
    for missing in [format!("{f}@nope/invoke"), format!("{nope}/invoke")] {
        c.expect_with(t, 404, "POST", &ti, &missing, ASYNC, Body::None);
    }

    // Each call's state, attempts and result; the status URL works.
    let done = wait_for_state(
        c,
        t,
        &tcall,
        &format!("{prefix}/invocations/{ok}"),
        "succeeded",
    );
    assert_eq!(done.json["kind"], "event", "{}", done.json);
    assert_eq!(done.json["origin"], "api", "{}", done.json);
    assert_eq!(done.json["payload"], json!({ "name": "later" }));
    assert_eq!(done.json["result"]["version"], "job", "{}", done.json);
    assert_eq!(done.json["history"][0]["outcome"], "ok", "{}", done.json);
    let status_path = accepted.json["status_url"]
        .as_str()
        .unwrap()
        .strip_prefix(c.p.server.as_str())
        .unwrap()
        .to_string();
    c.expect(
        t,
        200,
        "GET",
        "/v1/namespaces/{ns}/invocations/{id}",
        &status_path,
        Body::None,
    );
    let failing_path = format!("{prefix}/invocations/{failing}");
    let dead = wait_for_state(c, t, &tcall, &failing_path, "dead");
    assert_eq!(dead.json["attempts"], 1, "retries = 0: {}", dead.json);
    assert_eq!(dead.json["history"][0]["outcome"], "handler_error");
    assert!(
        dead.json["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{}",
        dead.json
    );
    c.expect(
        t,
        404,
        "GET",
        &tcall,
        &format!("{prefix}/invocations/0123456789abcdef01234567"),
        Body::None,
    );

    // A function's calls: newest first, by state, a page at a time.
    let tl = format!("{tf}/invocations");
    let all = c.expect(t, 200, "GET", &tl, &format!("{f}/invocations"), Body::None);
    let ids: Vec<&str> = all.json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failing.as_str(), ok.as_str()], "{}", all.json);
    assert!(
        all.json["calls"][0].get("payload").is_none(),
        "{}",
        all.json
    );
    let dead_ones = c.expect(
        t,
        200,
        "GET",
        &tl,
        &format!("{f}/invocations?state=dead"),
        Body::None,
    );
    assert_eq!(dead_ones.json["calls"][0]["id"], failing.as_str());
    assert_eq!(dead_ones.json["calls"].as_array().unwrap().len(), 1);
    let page = c.expect(
        t,
        200,
        "GET",
        &tl,
        &format!("{f}/invocations?state=succeeded&limit=1"),
        Body::None,
    );
    assert_eq!(page.json["next"], ok.as_str(), "{}", page.json);
    let rest = c.expect(
        t,
        200,
        "GET",
        &tl,
        &format!("{f}/invocations?state=succeeded&before={ok}"),
        Body::None,
    );
    assert_eq!(rest.json, json!({ "calls": [] }));
    let bad = c.expect(
        t,
        400,
        "GET",
        &tl,
        &format!("{f}/invocations?state=lost"),
        Body::None,
    );
    assert_eq!(bad.code(), "bad_query");
    c.expect(
        t,
        400,
        "GET",
        &tl,
        &format!("{f}/invocations?limit=lots"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "GET",
        &tl,
        &format!("{f}/invocations?before=0123456789abcdef01234567"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "GET",
        &tl,
        &format!("{nope}/invocations"),
        Body::None,
    );

    // Dead letters: only dead ones are replayed or purged, those named or all.
    let replay = format!("{tf}/dlq/replay");
    let purge = format!("{tf}/dlq/purge");
    for action in ["replay", "purge"] {
        let template = &format!("{tf}/dlq/{action}");
        let path = format!("{f}/dlq/{action}");
        let not_dead = c.expect(
            t,
            409,
            "POST",
            template,
            &path,
            Body::Json(json!({ "ids": [ok] })),
        );
        assert_eq!(not_dead.code(), "conflict");
        c.expect(
            t,
            404,
            "POST",
            template,
            &path,
            Body::Json(json!({ "ids": ["0123456789abcdef01234567"] })),
        );
        c.expect(
            t,
            400,
            "POST",
            template,
            &path,
            Body::Json(json!({ "ids": "all" })),
        );
        c.expect(
            t,
            400,
            "POST",
            template,
            &path,
            Body::Json(json!({ "calls": [failing] })),
        );
        c.expect(
            t,
            404,
            "POST",
            template,
            &format!("{nope}/dlq/{action}"),
            Body::None,
        );
    }
    let replayed = c.expect(
        t,
        200,
        "POST",
        &replay,
        &format!("{f}/dlq/replay"),
        Body::Json(json!({ "ids": [failing] })),
    );
    assert_eq!(
        replayed.json,
        json!({ "function": "job", "action": "replayed", "count": 1 })
    );
    let again = wait_for_state(c, t, &tcall, &failing_path, "dead");
    assert_eq!(
        again.json["history"].as_array().unwrap().len(),
        2,
        "{}",
        again.json
    );
    let all_replayed = c.expect(
        t,
        200,
        "POST",
        &replay,
        &format!("{f}/dlq/replay"),
        Body::None,
    );
    assert_eq!(all_replayed.json["count"], 1, "{}", all_replayed.json);
    wait_for_state(c, t, &tcall, &failing_path, "dead");
    let purged = c.expect(
        t,
        200,
        "POST",
        &purge,
        &format!("{f}/dlq/purge"),
        Body::Json(json!({ "ids": [failing] })),
    );
    assert_eq!(
        purged.json,
        json!({ "function": "job", "action": "purged", "count": 1 })
    );
    c.expect(t, 404, "GET", &tcall, &failing_path, Body::None);
    for (template, action) in [(&purge, "purge"), (&replay, "replay")] {
        let none = c.expect(
            t,
            200,
            "POST",
            template,
            &format!("{f}/dlq/{action}"),
            Body::None,
        );
        assert_eq!(none.json["count"], 0, "{}", none.json);
    }

    // Schedules: thaw.toml's, and those of the API.
    let ts = format!("{tf}/schedules");
    let tone = format!("{tf}/schedules/{{schedule}}");
    let listed = c.expect(t, 200, "GET", &ts, &format!("{f}/schedules"), Body::None);
    assert_eq!(listed.json["schedules"][0]["name"], "yearly");
    assert_eq!(listed.json["schedules"][0]["origin"], "toml");
    let added = c.expect(
        t,
        201,
        "POST",
        &ts,
        &format!("{f}/schedules"),
        Body::Json(json!({
            "name": "new-year", "cron": "0 0 1 1 *", "timezone": "Europe/Paris",
            "alias": "latest", "method": null, "payload": { "greeting": "happy new year" }
        })),
    );
    assert_eq!(added.json["origin"], "api", "{}", added.json);
    assert!(added.json["next_ms"].is_i64(), "{}", added.json);
    for (status, body) in [
        (400, json!({ "name": "bad", "cron": "61 * * * *" })),
        (400, json!({ "name": "bad", "cron": "0 0 30 2 *" })),
        (
            400,
            json!({ "name": "bad", "cron": "@daily", "timezone": "Mars/Olympus" }),
        ),
        (
            400,
            json!({ "name": "bad", "cron": "@daily", "colour": "red" }),
        ),
        (400, json!({ "cron": "@daily" })),
        (409, json!({ "name": "new-year", "cron": "@daily" })),
    ] {
        c.expect(
            t,
            status,
            "POST",
            &ts,
            &format!("{f}/schedules"),
            Body::Json(body),
        );
    }
    c.expect(
        t,
        404,
        "POST",
        &ts,
        &format!("{nope}/schedules"),
        Body::Json(json!({ "name": "daily", "cron": "@daily" })),
    );
    let both = c.expect(t, 200, "GET", &ts, &format!("{f}/schedules"), Body::None);
    assert_eq!(
        both.json["schedules"].as_array().unwrap().len(),
        2,
        "{}",
        both.json
    );
    c.expect(t, 404, "GET", &ts, &format!("{nope}/schedules"), Body::None);
    let removed = c.expect(
        t,
        200,
        "DELETE",
        &tone,
        &format!("{f}/schedules/new-year"),
        Body::None,
    );
    assert_eq!(removed.json["removed"], "new-year");
    c.expect(
        t,
        404,
        "DELETE",
        &tone,
        &format!("{f}/schedules/new-year"),
        Body::None,
    );
    let declared = c.expect(
        t,
        409,
        "DELETE",
        &tone,
        &format!("{f}/schedules/yearly"),
        Body::None,
    );
    assert!(
        declared.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("thaw.toml"),
        "{}",
        declared.json
    );
    c.expect(
        t,
        404,
        "DELETE",
        &tone,
        &format!("{nope}/schedules/yearly"),
        Body::None,
    );
    ok
}

/// A namespace whose queue holds one unfinished async call: the next is
/// refused with `429 queue_full`, naming the limit.
fn fill_a_queue(c: &mut Checker, token: &str) {
    let t = Some(token);
    c.expect(
        t,
        201,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "busy", "limits": { "max_queued": 1 } })),
    );
    c.expect(
        t,
        200,
        "PUT",
        "/v1/namespaces/{ns}/functions/{name}",
        "/v1/namespaces/busy/functions/sleeper",
        Body::Raw("application/gzip", pack(&[("index.mjs", SLEEPER)])),
    );
    let ti = "/v1/namespaces/{ns}/functions/{name}/invoke";
    let f = "/v1/namespaces/busy/functions/sleeper/invoke";
    c.expect_with(t, 202, "POST", ti, f, ASYNC, Body::None);
    let full = c.expect_with(t, 429, "POST", ti, f, ASYNC, Body::None);
    assert_eq!(full.code(), "queue_full", "{}", full.json);
    assert!(
        full.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queued"),
        "{}",
        full.json
    );
}

/// The removals of the function routes, last.
fn remove_function(c: &mut Checker, token: &str, prefix: &str, tprefix: &str) {
    let t = Some(token);
    let f = format!("{prefix}/functions/api");
    let tf = format!("{tprefix}/functions/{{name}}");
    let ta = format!("{tf}/aliases/{{alias}}");
    c.expect(
        t,
        200,
        "DELETE",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::None,
    );
    c.expect(
        t,
        404,
        "DELETE",
        &ta,
        &format!("{f}/aliases/prod"),
        Body::None,
    );
    c.expect(
        t,
        400,
        "DELETE",
        &ta,
        &format!("{f}/aliases/latest"),
        Body::None,
    );
    let removed = c.expect(t, 200, "DELETE", &tf, &f, Body::None);
    assert_eq!(removed.json["removed"], "api");
    c.expect(t, 404, "DELETE", &tf, &f, Body::None);
}

#[test]
fn every_operation_is_routed_and_every_answer_matches_the_document() {
    let p = Platform::start();
    let admin = p.token();
    let a = Some(admin.as_str());

    // The document is served as the file says, without a token.
    let served = http()
        .get(format!("{}/v1/openapi.json", p.server))
        .send()
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = served.text().unwrap();
    assert_eq!(text, DOCUMENT, "the server serves the file");
    let doc: Value = serde_json::from_str(&text).expect("the served document is JSON");
    let mut c = Checker {
        p: &p,
        doc,
        seen: BTreeSet::new(),
        statuses: BTreeSet::new(),
        bodies_checked: 0,
        record: true,
    };
    c.expect(
        None,
        200,
        "GET",
        "/v1/openapi.json",
        "/v1/openapi.json",
        Body::None,
    );

    // Readiness, without a token: not ready (and why) until the pools are
    // filled, then ready; every answer on the way is checked.
    let start = Instant::now();
    loop {
        let ready = c.call(None, "GET", "/readyz", "/readyz", Body::None);
        if ready.status == 200 {
            assert_eq!(ready.json, json!({ "ready": true }));
            break;
        }
        assert_eq!(ready.status, 503, "{}", ready.json);
        assert_eq!(ready.json["ready"], false, "{}", ready.json);
        assert!(
            !ready.json["waiting"].as_array().unwrap().is_empty(),
            "{}",
            ready.json
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never ready: {}",
            ready.json
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every operation of the document is routed: called with the admin
    // token on objects that do not exist (and no body), each answers with
    // something the document lists, never the `no_route` fallback or 405.
    c.record = false;
    for (method, template, _) in operations(&c.doc) {
        let path = template
            .replace("{ns}", "probe-none")
            .replace("{name}", "probe-none")
            .replace("{alias}", "probe-none")
            .replace("{id}", "probe-none")
            .replace("{schedule}", "probe-none")
            .replace("{key}", "PROBE_NONE");
        c.call(a, &method.to_uppercase(), &template, &path, Body::None);
    }
    c.record = true;

    // Who is calling; no token, a wrong one.
    let me = c.expect(a, 200, "GET", "/v1/whoami", "/v1/whoami", Body::None);
    assert_eq!(
        me.json,
        json!({ "role": "admin", "namespace": null, "name": "admin" })
    );
    c.expect(None, 401, "GET", "/v1/whoami", "/v1/whoami", Body::None);
    c.expect(
        Some("thawk_wrong_token"),
        401,
        "GET",
        "/v1/functions",
        "/v1/functions",
        Body::None,
    );

    // Namespaces.
    let ns = c.expect(
        a,
        201,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "team-a", "limits": { "max_functions": 10 } })),
    );
    assert_eq!(ns.json["limits"]["max_functions"], 10);
    let exists = c.expect(
        a,
        409,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "team-a" })),
    );
    assert_eq!(exists.code(), "conflict");
    c.expect(
        a,
        201,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "throwaway", "limits": {} })),
    );
    c.expect(
        a,
        400,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "team-b", "colour": "red" })),
    );
    c.expect(
        a,
        400,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "Team_B" })),
    );
    c.expect(
        a,
        400,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "team-b", "limits": { "max_instances": 0 } })),
    );
    c.expect(
        None,
        401,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Json(json!({ "name": "team-b" })),
    );
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(1 << 20));
    c.expect(
        a,
        413,
        "POST",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::Raw("application/json", huge.into_bytes()),
    );
    let all = c.expect(
        a,
        200,
        "GET",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::None,
    );
    assert_eq!(
        all.json["namespaces"].as_array().unwrap().len(),
        3,
        "{}",
        all.json
    );
    c.expect(
        a,
        200,
        "GET",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::None,
    );
    let none = c.expect(
        a,
        404,
        "GET",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/nope",
        Body::None,
    );
    assert_eq!(none.code(), "no_namespace");
    let patched = c.expect(
        a,
        200,
        "PATCH",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::Json(json!({ "max_instances": 20, "max_memory_mb": null })),
    );
    assert_eq!(patched.json["limits"]["max_instances"], 20);
    c.expect(
        a,
        400,
        "PATCH",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::Json(json!({ "max_functions": 0 })),
    );
    c.expect(
        a,
        400,
        "PATCH",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::Json(json!({ "max_cpus": 2 })),
    );
    c.expect(
        a,
        404,
        "PATCH",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/nope",
        Body::Json(json!({ "max_instances": 2 })),
    );

    // Keys of team-a.
    let key = |c: &mut Checker, name: &str, role: &str| -> (String, String) {
        let k = c.expect(
            a,
            201,
            "POST",
            "/v1/keys",
            "/v1/keys",
            Body::Json(json!({ "namespace": "team-a", "name": name, "role": role })),
        );
        (
            k.json["key"]["id"].as_str().unwrap().to_string(),
            k.json["token"].as_str().unwrap().to_string(),
        )
    };
    let (reader_id, reader) = key(&mut c, "reader", "read");
    let (_, invoker) = key(&mut c, "invoker", "invoke");
    let (_, deployer) = key(&mut c, "deployer", "deploy");
    let expiring = c.expect(
        a,
        201,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(
            json!({ "namespace": "team-a", "name": "brief", "role": "read", "expires_in_s": 3600 }),
        ),
    );
    assert!(expiring.json["key"]["expires_ms"].is_i64());
    c.expect(
        a,
        409,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(json!({ "namespace": "team-a", "name": "reader", "role": "read" })),
    );
    c.expect(
        a,
        400,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(json!({ "namespace": "team-a", "name": "x", "role": "root" })),
    );
    c.expect(
        a,
        400,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(json!({ "namespace": "team-a", "name": "x" })),
    );
    c.expect(
        a,
        404,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(json!({ "namespace": "nope", "name": "x", "role": "read" })),
    );
    let keys = c.expect(a, 200, "GET", "/v1/keys", "/v1/keys", Body::None);
    assert_eq!(
        keys.json["keys"].as_array().unwrap().len(),
        4,
        "{}",
        keys.json
    );
    c.expect(
        a,
        200,
        "GET",
        "/v1/keys",
        "/v1/keys?namespace=team-a",
        Body::None,
    );

    // Every function route, in team-a by name and in the admin's own
    // namespace (`default`) through `/v1/functions`.
    exercise_function(
        &mut c,
        &admin,
        "/v1/namespaces/team-a",
        "/v1/namespaces/{ns}",
    );
    exercise_function(&mut c, &admin, "/v1", "/v1");
    let team_call = exercise_triggers(
        &mut c,
        &admin,
        "/v1/namespaces/team-a",
        "/v1/namespaces/{ns}",
    );
    let default_call = exercise_triggers(&mut c, &admin, "/v1", "/v1");
    fill_a_queue(&mut c, &admin);
    c.expect(
        a,
        404,
        "PUT",
        "/v1/namespaces/{ns}/functions/{name}",
        "/v1/namespaces/nope/functions/api",
        Body::Raw("application/gzip", archive("x")),
    );

    // Keys reach their own namespace, and there what their role allows.
    let r = Some(reader.as_str());
    let who = c.expect(r, 200, "GET", "/v1/whoami", "/v1/whoami", Body::None);
    assert_eq!(
        who.json,
        json!({ "role": "read", "namespace": "team-a", "name": "reader" })
    );
    let own = c.expect(r, 200, "GET", "/v1/functions", "/v1/functions", Body::None);
    assert_eq!(
        own.json["functions"][0]["namespace"], "team-a",
        "{}",
        own.json
    );
    c.expect(
        r,
        200,
        "GET",
        "/v1/functions/{name}",
        "/v1/functions/api",
        Body::None,
    );
    c.expect(
        r,
        403,
        "POST",
        "/v1/functions/{name}/invoke",
        "/v1/functions/api/invoke",
        Body::None,
    );
    c.expect(
        r,
        403,
        "PUT",
        "/v1/functions/{name}",
        "/v1/functions/api",
        Body::Raw("application/gzip", archive("x")),
    );
    c.expect(
        r,
        403,
        "GET",
        "/v1/namespaces/{ns}/functions",
        "/v1/namespaces/default/functions",
        Body::None,
    );
    c.expect(
        r,
        403,
        "GET",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::None,
    );
    c.expect(r, 403, "GET", "/metrics", "/metrics", Body::None);
    c.expect(r, 403, "GET", "/v1/platform", "/v1/platform", Body::None);
    let stats = "/v1/functions/{name}/stats";
    let api_stats = "/v1/functions/api/stats";
    let own_stats = c.expect(r, 200, "GET", stats, api_stats, Body::None);
    assert_eq!(own_stats.json["namespace"], "team-a", "{}", own_stats.json);
    assert_last_hour(&own_stats.json, 4, 1);
    c.expect(
        r,
        403,
        "GET",
        "/v1/namespaces/{ns}/functions/{name}/stats",
        "/v1/namespaces/default/functions/api/stats",
        Body::None,
    );
    c.expect(
        r,
        200,
        "GET",
        "/v1/namespaces/{ns}/metrics",
        "/v1/namespaces/team-a/metrics",
        Body::None,
    );
    c.expect(
        r,
        403,
        "GET",
        "/v1/namespaces/{ns}/metrics",
        "/v1/namespaces/default/metrics",
        Body::None,
    );
    c.expect(
        r,
        403,
        "POST",
        "/v1/runtime/upgrade",
        "/v1/runtime/upgrade",
        Body::None,
    );
    let i = Some(invoker.as_str());
    c.expect(
        i,
        200,
        "POST",
        "/v1/functions/{name}/invoke",
        "/v1/functions/api/invoke",
        Body::Json(json!("by key")),
    );
    c.expect(
        i,
        403,
        "GET",
        "/v1/functions/{name}/logs",
        "/v1/functions/api/logs",
        Body::None,
    );
    c.expect(i, 403, "GET", stats, api_stats, Body::None);
    let d = Some(deployer.as_str());
    c.expect(d, 200, "GET", stats, api_stats, Body::None);
    c.expect(d, 403, "GET", "/v1/platform", "/v1/platform", Body::None);
    c.expect(
        d,
        200,
        "PUT",
        "/v1/functions/{name}/env/{key}",
        "/v1/functions/api/env/BY_KEY",
        Body::Json(json!({ "value": "1" })),
    );
    c.expect(
        d,
        403,
        "POST",
        "/v1/keys",
        "/v1/keys",
        Body::Json(json!({ "namespace": "team-a", "name": "more", "role": "deploy" })),
    );
    c.expect(
        d,
        403,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::None,
    );

    // Any key of a namespace follows its calls: an invoke key makes them
    // and reads them back, but needs more for schedules and dead letters.
    let later = c.expect_with(
        i,
        202,
        "POST",
        "/v1/functions/{name}/invoke",
        "/v1/functions/job/invoke",
        ASYNC,
        Body::Json(json!("by key")),
    );
    let call = |id: &str| format!("/v1/invocations/{id}");
    let later = later.json["id"].as_str().unwrap().to_string();
    for id in [&later, &team_call] {
        c.expect(i, 200, "GET", "/v1/invocations/{id}", &call(id), Body::None);
    }
    let calls = "/v1/functions/{name}/invocations";
    let job_calls = "/v1/functions/job/invocations";
    c.expect(i, 200, "GET", calls, job_calls, Body::None);
    c.expect(r, 200, "GET", calls, job_calls, Body::None);
    let schedules = "/v1/functions/{name}/schedules";
    let job_schedules = "/v1/functions/job/schedules";
    c.expect(r, 200, "GET", schedules, job_schedules, Body::None);
    c.expect(i, 403, "GET", schedules, job_schedules, Body::None);
    c.expect(
        r,
        403,
        "POST",
        schedules,
        job_schedules,
        Body::Json(json!({ "name": "daily", "cron": "@daily" })),
    );
    c.expect(
        i,
        403,
        "DELETE",
        "/v1/functions/{name}/schedules/{schedule}",
        "/v1/functions/job/schedules/yearly",
        Body::None,
    );
    for action in ["replay", "purge"] {
        let template = format!("/v1/functions/{{name}}/dlq/{action}");
        let path = format!("/v1/functions/job/dlq/{action}");
        c.expect(r, 403, "POST", &template, &path, Body::None);
        c.expect(i, 403, "POST", &template, &path, Body::None);
    }
    // Ids name nothing outside their namespace: another namespace's call
    // is not found by a key's own route, and its namespace is forbidden.
    c.expect(
        d,
        404,
        "GET",
        "/v1/invocations/{id}",
        &call(&default_call),
        Body::None,
    );
    c.expect(
        d,
        403,
        "GET",
        "/v1/namespaces/{ns}/invocations/{id}",
        &format!("/v1/namespaces/default/invocations/{default_call}"),
        Body::None,
    );
    c.expect(
        d,
        200,
        "GET",
        "/v1/namespaces/{ns}/invocations/{id}",
        &format!("/v1/namespaces/team-a/invocations/{team_call}"),
        Body::None,
    );

    // Metrics and the runtime.
    c.expect(a, 200, "GET", "/metrics", "/metrics", Body::None);
    c.expect(
        a,
        200,
        "GET",
        "/v1/namespaces/{ns}/metrics",
        "/v1/namespaces/team-a/metrics",
        Body::None,
    );
    c.expect(None, 401, "GET", "/metrics", "/metrics", Body::None);
    let host = c.expect(a, 200, "GET", "/v1/platform", "/v1/platform", Body::None);
    assert_eq!(host.json["hosts"], 1, "{}", host.json);
    let namespaces = c.expect(
        a,
        200,
        "GET",
        "/v1/namespaces",
        "/v1/namespaces",
        Body::None,
    );
    assert_eq!(
        host.json["namespaces"],
        namespaces.json["namespaces"].as_array().unwrap().len(),
        "{}",
        host.json
    );
    // api and job in team-a and default, sleeper in busy.
    assert_eq!(host.json["functions"], 5, "{}", host.json);
    let driver = host.json["driver"].as_str().unwrap();
    assert_eq!(
        host.json["pools"][0]["driver"],
        driver.split(',').next().unwrap(),
        "the platform's driver's pool first: {}",
        host.json
    );
    assert!(
        host.json["in_use"]["memory_mb"].as_u64().unwrap()
            <= host.json["budget"]["memory_mb"].as_u64().unwrap(),
        "{}",
        host.json
    );
    c.expect(None, 401, "GET", "/v1/platform", "/v1/platform", Body::None);
    let upgraded = c.expect(
        a,
        200,
        "POST",
        "/v1/runtime/upgrade",
        "/v1/runtime/upgrade",
        Body::None,
    );
    assert!(
        !upgraded.json["drivers"].as_array().unwrap().is_empty(),
        "{}",
        upgraded.json
    );

    // Removals, last.
    c.expect(
        a,
        409,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::None,
    );
    remove_function(
        &mut c,
        &admin,
        "/v1/namespaces/team-a",
        "/v1/namespaces/{ns}",
    );
    remove_function(&mut c, &admin, "/v1", "/v1");
    for (prefix, tprefix) in [
        ("/v1/namespaces/team-a", "/v1/namespaces/{ns}"),
        ("/v1", "/v1"),
    ] {
        c.expect(
            a,
            200,
            "DELETE",
            &format!("{tprefix}/functions/{{name}}"),
            &format!("{prefix}/functions/job"),
            Body::None,
        );
    }
    // A function's calls go with it.
    c.expect(
        a,
        404,
        "GET",
        "/v1/invocations/{id}",
        &format!("/v1/invocations/{default_call}"),
        Body::None,
    );
    c.expect(
        a,
        404,
        "GET",
        "/v1/namespaces/{ns}/invocations/{id}",
        &format!("/v1/namespaces/team-a/invocations/{team_call}"),
        Body::None,
    );
    c.expect(
        a,
        409,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/busy",
        Body::None,
    );
    c.expect(
        a,
        200,
        "DELETE",
        "/v1/namespaces/{ns}/functions/{name}",
        "/v1/namespaces/busy/functions/sleeper",
        Body::None,
    );
    c.expect(
        a,
        200,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/busy",
        Body::None,
    );
    let revoked = c.expect(
        a,
        200,
        "DELETE",
        "/v1/keys/{id}",
        &format!("/v1/keys/{reader_id}"),
        Body::None,
    );
    assert!(revoked.json["revoked_ms"].is_i64(), "{}", revoked.json);
    c.expect(r, 401, "GET", "/v1/whoami", "/v1/whoami", Body::None);
    c.expect(
        a,
        404,
        "DELETE",
        "/v1/keys/{id}",
        "/v1/keys/nope",
        Body::None,
    );
    c.expect(
        a,
        200,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/throwaway",
        Body::None,
    );
    c.expect(
        a,
        404,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/throwaway",
        Body::None,
    );
    c.expect(
        a,
        400,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/default",
        Body::None,
    );
    c.expect(
        a,
        200,
        "DELETE",
        "/v1/namespaces/{ns}",
        "/v1/namespaces/team-a",
        Body::None,
    );

    // Every operation of the document was called.
    let missing: Vec<String> = operations(&c.doc)
        .into_iter()
        .filter(|(m, path, _)| !c.seen.contains(&(m.clone(), path.clone())))
        .map(|(m, path, _)| format!("{} {path}", m.to_uppercase()))
        .collect();
    assert!(missing.is_empty(), "operations never called: {missing:?}");
    eprintln!(
        "checked {} answers' bodies; {} operations, {} (operation, status) pairs:",
        c.bodies_checked,
        c.seen.len(),
        c.statuses.len()
    );
    for (m, path, status) in &c.statuses {
        eprintln!("  {status} {} {path}", m.to_uppercase());
    }
}
