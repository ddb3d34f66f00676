//! The CLI's side of the control API.

use anyhow::{bail, Context as _};
use reqwest::blocking::{Client as Http, RequestBuilder};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub struct RemoteConfig {
    pub server: String,
    pub token: Option<String>,
    pub data_dir: PathBuf,
}

pub struct Client {
    http: Http,
    server: String,
    token: String,
}

/// The message of an API error body, or the whole body.
pub fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

impl Client {
    pub fn new(cfg: &RemoteConfig) -> anyhow::Result<Client> {
        let token = match &cfg.token {
            Some(t) => t.clone(),
            None => {
                let path = cfg.data_dir.join("token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no API token: set THAW_TOKEN, or run where the platform's data directory is \
                             (looked for {}; pass --data-dir if it is elsewhere)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let http = Http::builder().timeout(Duration::from_secs(600)).build()?;
        Ok(Client {
            http,
            server: cfg.server.clone(),
            token,
        })
    }

    fn send(&self, req: RequestBuilder) -> anyhow::Result<(bool, Value)> {
        let resp = req.bearer_auth(&self.token).send().map_err(|e| {
            anyhow::anyhow!(
                "cannot reach thaw at {}: {e} (is `thaw up` running? set --server or THAW_SERVER)",
                self.server
            )
        })?;
        let ok = resp.status().is_success();
        let status = resp.status();
        let text = resp.text()?;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(
            |_| serde_json::json!({"error": {"message": format!("HTTP {status}: {text}")}}),
        );
        Ok((ok, v))
    }

    fn expect_ok(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let (ok, v) = self.send(req)?;
        if !ok {
            bail!("{}", error_message(&v));
        }
        Ok(v)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.expect_ok(self.http.get(format!("{}{path}", self.server)))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.expect_ok(self.http.delete(format!("{}{path}", self.server)))
    }

    pub fn put_archive(&self, path: &str, archive: Vec<u8>) -> anyhow::Result<Value> {
        self.expect_ok(
            self.http
                .put(format!("{}{path}", self.server))
                .header("content-type", "application/gzip")
                .body(archive),
        )
    }

    /// Posts a JSON body; returns whether the API said success, and its body.
    pub fn post_json_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(bool, Value)> {
        self.send(
            self.http
                .post(format!("{}{path}", self.server))
                .header("content-type", "application/json")
                .body(body),
        )
    }
}
