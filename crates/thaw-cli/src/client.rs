//! The CLI's side of the control API: requests out, `thaw-api` views in.

use anyhow::{bail, Context as _};
use reqwest::blocking::{Client as Http, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use thaw_api::ErrorBody;

pub struct RemoteConfig {
    pub server: String,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    /// `--namespace` / `THAW_NAMESPACE`; none: the key's own namespace
    /// (`default` for the admin token).
    pub namespace: Option<String>,
}

pub struct Client {
    http: Http,
    server: String,
    token: String,
    namespace: Option<String>,
}

/// Why a call failed: the API's own error, or its status and text.
pub struct ApiFailure {
    pub status: u16,
    pub error: Option<ErrorBody>,
    pub text: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}", e.error.message),
            None => write!(f, "HTTP {}: {}", self.status, self.text),
        }
    }
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
                            "no API key: set THAW_TOKEN, or run where the platform's data directory is \
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
            namespace: cfg.namespace.clone(),
        })
    }

    /// Where a function's routes are: under the namespace asked for, or
    /// the key's own.
    pub fn function_path(&self, name: &str) -> String {
        format!("{}/{name}", self.functions_path())
    }

    /// Where an async call's status is: in the namespace asked for, or the
    /// key's own.
    pub fn call_path(&self, id: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("/v1/namespaces/{ns}/invocations/{id}"),
            None => format!("/v1/invocations/{id}"),
        }
    }

    pub fn functions_path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("/v1/namespaces/{ns}/functions"),
            None => "/v1/functions".to_string(),
        }
    }

    /// Sends a request; a success decodes as `T`, anything else is an
    /// [`ApiFailure`] (the error body, decoded when it is thaw's).
    fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        let resp = req.bearer_auth(&self.token).send().map_err(|e| {
            anyhow::anyhow!(
                "cannot reach thaw at {}: {e} (is `thaw up` running? set --server or THAW_SERVER)",
                self.server
            )
        })?;
        let status = resp.status();
        let text = resp.text()?;
        if status.is_success() {
            let v = serde_json::from_str(&text).with_context(|| {
                format!("the server's answer is not what this thaw expects: {text}")
            })?;
            return Ok(Ok(v));
        }
        Ok(Err(ApiFailure {
            status: status.as_u16(),
            error: serde_json::from_str(&text).ok(),
            text,
        }))
    }

    fn expect<T: DeserializeOwned>(&self, req: RequestBuilder) -> anyhow::Result<T> {
        match self.send(req)? {
            Ok(v) => Ok(v),
            Err(failure) => bail!("{failure}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.expect(self.http.get(self.url(path)))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.expect(self.http.delete(self.url(path)))
    }

    pub fn put_archive<T: DeserializeOwned>(
        &self,
        path: &str,
        archive: Vec<u8>,
    ) -> anyhow::Result<T> {
        self.expect(
            self.http
                .put(self.url(path))
                .header("content-type", "application/gzip")
                .body(archive),
        )
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.expect(self.http.put(self.url(path)).json(body))
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.expect(self.http.patch(self.url(path)).json(body))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.expect(self.http.post(self.url(path)).json(body))
    }

    /// Posts raw JSON bytes asking for the call to run later.
    pub fn post_async<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        self.expect(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .header("x-thaw-invoke", "async")
                .body(body),
        )
    }

    /// Posts raw JSON bytes; the answer, or the failure as it came.
    pub fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
    }
}
