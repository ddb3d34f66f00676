//! thaw itself: a `thaw up` of the bench's own on a scratch data directory
//! and a free loopback port, functions deployed through its HTTP API, and
//! calls through its gateway.

use crate::error::{failed, Context as _, Result};
use crate::http::Conn;
use crate::load::{self, check, Warm, WarmPlan};
use crate::procs::{children_of, cmdline, cwd, descendants, pss_bytes, Guarded, Scratch};
use crate::results::{Cold, Figure, Memory, PoolTakes, Role, SystemResult};
use crate::stats::Summary;
use crate::{progress, progress_n};
use std::collections::VecDeque;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The reaper runs every second: an instance with `keep_alive = 0` is gone
/// within two. This bounds the wait for all of them.
const REAP_LIMIT: Duration = Duration::from_secs(30);
/// Quiet time after the last instance went away, before the first cold
/// call: background work the deploys caused (a pool refilling) settles.
const SETTLE: Duration = Duration::from_secs(1);

/// How the hello-world function is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `export const handler = async (event) => ({ statusCode, body })`
    Lambda,
    /// `export default { fetch(request) }`, like the workerd and Deno code.
    Fetch,
}

impl Style {
    pub fn key(self) -> &'static str {
        match self {
            Style::Lambda => "lambda",
            Style::Fetch => "fetch",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Style::Lambda => "thaw (Lambda handler)",
            Style::Fetch => "thaw (fetch handler)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Style::Lambda => "thaw, Lambda",
            Style::Fetch => "thaw, fetch",
        }
    }

    /// The function's code; `tag` makes every function's bundle distinct.
    pub fn source(self, tag: &str) -> String {
        match self {
            Style::Lambda => format!(
                "// {tag}\nexport const handler = async () => ({{\n  statusCode: 200,\n  \
                 headers: {{ \"content-type\": \"text/plain\" }},\n  body: \"hello world\",\n}});\n"
            ),
            Style::Fetch => format!(
                "// {tag}\nexport default {{ fetch: () => new Response(\"hello world\") }};\n"
            ),
        }
    }
}

/// A running `thaw up`, stopped (with every runtime it started) on drop.
pub struct Platform {
    up: Guarded,
    pub addr: SocketAddr,
    /// How `thaw up` said it runs its runtimes ("process, jailed").
    pub driver: String,
    data: Scratch,
    token: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Platform {
    /// Starts `thaw up`, with `extra` flags after the bench's own.
    pub fn start(thaw_exe: &Path, node: &Path, extra: &[&str]) -> Result<Platform> {
        Platform::start_with_env(thaw_exe, node, extra, &[])
    }

    /// Starts `thaw up` with `extra` flags and environment variables `env`.
    pub fn start_with_env(
        thaw_exe: &Path,
        node: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Platform> {
        let data = Scratch::new("thaw-bench-data")?;
        let mut cmd = Command::new(thaw_exe);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .arg("--node")
            .arg(node)
            .args(extra)
            .env_remove("THAW_TOKEN")
            .env_remove("THAW_DATA_DIR")
            .env_remove("THAW_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut up = Guarded::spawn(&mut cmd, "thaw up")?;
        let stderr = up.child().stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !announced {
                    if let Some(addr) = announced_addr(&line) {
                        announced = true;
                        let _ = tx.send((addr, announced_driver(&line)));
                    }
                }
                let mut kept = kept.lock().unwrap();
                if kept.len() == 40 {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let started = Instant::now();
        let (addr, driver) = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(announced) => break announced,
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < load::START_LIMIT => {
                    if let Some(status) = up.exited() {
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(failed(format!(
                            "thaw up exited ({status}) before serving: {}",
                            tail(&log)
                        )));
                    }
                }
                Err(_) => {
                    return Err(failed(format!(
                        "thaw up did not say `thaw is up on ...` within {:?}: {}",
                        load::START_LIMIT,
                        tail(&log)
                    )))
                }
            }
        };
        let token_file = data.path().join("token");
        let token = std::fs::read_to_string(&token_file)
            .context(|| format!("could not read the API token in {}", token_file.display()))?
            .trim()
            .to_string();
        Ok(Platform {
            up,
            addr,
            driver,
            data,
            token,
            log,
        })
    }

    /// One control API call on a new connection, with the admin token.
    fn api(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.api_as(&self.token, method, path, "application/gzip", body)
    }

    /// One control API call on a new connection, with `token`; `body` is
    /// sent as `content_type` when there is one.
    fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let mut c = Conn::connect(self.addr)
            .context(|| format!("could not reach thaw on {}", self.addr))?;
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("content-type", content_type));
        }
        let r = c
            .request(method, path, &headers, body)
            .context(|| format!("{method} {path} on thaw failed"))?;
        Ok((r.status, r.body))
    }

    /// A JSON control API call with the admin token; the answer, as `T`,
    /// when its status is `want`, else the error thaw gave.
    fn api_json<T>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        want: u16,
        decode: impl FnOnce(serde_json::Value) -> serde_json::Result<T>,
    ) -> Result<T> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) = self.api_as(
            &self.token,
            method,
            path,
            "application/json",
            body.as_bytes(),
        )?;
        if status != want {
            return Err(failed(format!(
                "{method} {path} answered {status}: {}",
                error_message(&answer)
            )));
        }
        serde_json::from_slice(&answer)
            .and_then(decode)
            .map_err(|e| failed(format!("{method} {path} gave unexpected JSON: {e}")))
    }

    /// `POST /v1/namespaces`, with `max_instances` when given.
    pub fn create_namespace(
        &self,
        name: &str,
        max_instances: Option<u32>,
    ) -> Result<thaw_api::NamespaceView> {
        let request = thaw_api::CreateNamespace {
            name: name.into(),
            limits: thaw_api::LimitsPatch {
                max_instances,
                ..Default::default()
            },
        };
        let body = serde_json::to_value(&request).expect("a request serialises");
        self.api_json(
            "POST",
            "/v1/namespaces",
            Some(&body),
            201,
            serde_json::from_value,
        )
    }

    /// `GET /v1/namespaces/{name}`.
    pub fn namespace(&self, name: &str) -> Result<thaw_api::NamespaceView> {
        self.api_json(
            "GET",
            &format!("/v1/namespaces/{name}"),
            None,
            200,
            serde_json::from_value,
        )
    }

    /// `POST /v1/keys`: a new key of `namespace` with `role`; its token.
    pub fn create_key(&self, namespace: &str, name: &str, role: &str) -> Result<String> {
        let request = thaw_api::CreateKey {
            namespace: namespace.into(),
            name: name.into(),
            role: role.into(),
            expires_in_s: None,
        };
        let body = serde_json::to_value(&request).expect("a request serialises");
        let created: thaw_api::CreatedKey =
            self.api_json("POST", "/v1/keys", Some(&body), 201, serde_json::from_value)?;
        Ok(created.token)
    }

    /// Deploys the folder `dir` as `name` (`PUT /v1/functions/{name}`) with
    /// the admin token, into `default`.
    pub fn deploy(&self, name: &str, dir: &Path) -> Result<()> {
        self.deploy_as(&self.token, name, dir)
    }

    /// Deploys the folder `dir` as `name` through `PUT /v1/functions/{name}`
    /// with `token`: into the key's own namespace.
    pub fn deploy_as(&self, token: &str, name: &str, dir: &Path) -> Result<()> {
        let packed = thaw_bundle::pack_dir(dir, &thaw_bundle::Limits::default())
            .map_err(|e| failed(format!("could not pack {}: {e}", dir.display())))?;
        let (status, body) = self.api_as(
            token,
            "PUT",
            &format!("/v1/functions/{name}"),
            "application/gzip",
            &packed.archive,
        )?;
        if status != 200 {
            return Err(failed(format!(
                "deploying {name} failed ({status}): {}",
                error_message(&body)
            )));
        }
        Ok(())
    }

    /// Instances (busy or idle) of the functions whose names start with
    /// `prefix`, as `GET /v1/functions` counts them.
    pub fn instances(&self, prefix: &str) -> Result<u64> {
        let (status, body) = self.api("GET", "/v1/functions", &[])?;
        if status != 200 {
            return Err(failed(format!("GET /v1/functions answered {status}")));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("GET /v1/functions gave bad JSON: {e}")))?;
        Ok(v["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|f| {
                ["busy", "idle", "starting"]
                    .iter()
                    .filter_map(|k| f["instances"][k].as_u64())
                    .sum::<u64>()
            })
            .sum())
    }

    /// `/metrics`, when the platform has it.
    pub fn metrics(&self) -> Option<String> {
        match self.api("GET", "/metrics", &[]) {
            Ok((200, body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            _ => None,
        }
    }

    /// The runtimes `thaw up` started.
    pub fn runtimes(&self) -> Vec<Runtime> {
        children_of(self.up.pid())
            .into_iter()
            .map(|launcher| {
                // A jail's command line names the shim too: Node is the
                // deepest process that does.
                let node = std::iter::once(launcher)
                    .chain(descendants(launcher))
                    .rfind(|pid| runs_shim(*pid))
                    .unwrap_or(launcher);
                Runtime { launcher, node }
            })
            .collect()
    }

    /// Whether a runtime is bound to a function: a waiting runtime's
    /// working directory is `/`; the shim moves into the function's code
    /// tree on `init`.
    pub fn is_bound(&self, r: &Runtime) -> bool {
        cwd(r.node).is_some_and(|c| c != Path::new("/"))
    }

    /// The shim as the host sees it, for runtimes started outside a jail.
    pub fn shim_on_host(&self) -> Option<std::path::PathBuf> {
        std::fs::read_dir(self.data.path().join("runtime"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("shim.mjs"))
            .find(|p| p.is_file())
    }

    /// PSS of thaw's processes right now; a runtime's figure is the sum
    /// over its processes (a jail's, when it has one, and Node's). `system`
    /// begins each row ("thaw").
    pub fn memory(&self, system: &str) -> Vec<Memory> {
        let (mut bound, mut waiting) = (Vec::new(), Vec::new());
        let runtimes = self.runtimes();
        for r in &runtimes {
            let pss: u64 = std::iter::once(r.launcher)
                .chain(descendants(r.launcher))
                .filter_map(pss_bytes)
                .sum();
            if pss == 0 {
                continue;
            }
            if self.is_bound(r) {
                bound.push(pss);
            } else {
                waiting.push(pss);
            }
        }
        let jail = if runtimes.iter().any(Runtime::jailed) {
            " + its jail process"
        } else {
            ""
        };
        vec![
            Memory {
                what: format!(
                    "{system}: idle function instances (Node + shim + the hello function{jail}, after the warm phase)"
                ),
                pss: bound,
                idle_instances: true,
            },
            Memory {
                what: format!(
                    "{system}: pre-started runtimes bound to no function (Node + shim{jail})"
                ),
                pss: waiting,
                idle_instances: false,
            },
            Memory {
                what: "thaw up itself (gateway, scheduler, registry)".into(),
                pss: pss_bytes(self.up.pid()).into_iter().collect(),
                idle_instances: false,
            },
        ]
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The pid of `thaw up` itself.
    pub fn pid(&self) -> u32 {
        self.up.pid()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let runtimes: Vec<(u32, Option<String>)> = descendants(self.up.pid())
            .into_iter()
            .map(|pid| (pid, start_time(pid)))
            .collect();
        // thaw up stops its runtimes on a graceful stop, and they get
        // SIGKILL when it dies in any case; any left over are killed here.
        self.up.stop(libc::SIGINT, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        for (pid, started) in runtimes {
            if started.is_some() && start_time(pid) == started {
                // SAFETY: kill(2) of a runtime our own thaw up started (same
                // pid and same start time, so not a reused pid).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// One runtime of `thaw up`: the process thaw started (`launcher`: Node
/// itself, or the jail Node runs in) and the Node process running the shim.
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    pub launcher: u32,
    pub node: u32,
}

impl Runtime {
    pub fn jailed(&self) -> bool {
        self.launcher != self.node
    }
}

fn runs_shim(pid: u32) -> bool {
    cmdline(pid).is_some_and(|argv| argv.iter().any(|a| a.ends_with("shim.mjs")))
}

/// Field 22 of `/proc/PID/stat`: the start time, which tells a process
/// from a later one that reuses its pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

fn announced_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("thaw is up on http://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `driver: process, jailed, functions: 0` → "process, jailed".
fn announced_driver(line: &str) -> String {
    line.split("driver: ")
        .nth(1)
        .and_then(|rest| rest.split(", functions").next())
        .unwrap_or("unknown")
        .to_string()
}

/// The message of thaw's error shape, or the body as text.
fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    let lines = log.lock().unwrap();
    let n = lines.len();
    lines
        .iter()
        .skip(n.saturating_sub(5))
        .cloned()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Cold and warm figures of one handler style.
pub fn measure(
    p: &Platform,
    style: Style,
    functions: usize,
    gap: Duration,
    plan: &WarmPlan,
) -> SystemResult {
    let mut notes = Vec::new();
    let cold = Figure::from_result(cold(p, style, functions, gap, &mut notes));
    let warm = Figure::from_result(warm(p, style, plan, &mut notes));
    SystemResult {
        name: style.label().into(),
        short: style.short().into(),
        role: Role::Thaw,
        cold_means: "first call through the gateway of a deployed function with no instance \
                     (deployed with keep_alive = 0, its deploy-time instance reclaimed first)"
            .into(),
        cold,
        warm,
        warm_is_cold: false,
        notes,
    }
}

fn cold(
    p: &Platform,
    style: Style,
    n: usize,
    gap: Duration,
    notes: &mut Vec<String>,
) -> Result<Cold> {
    let label = format!("{} cold", style.label());
    let code = Scratch::new("thaw-bench-code")?;
    let prefix = format!("cold-{}-", style.key());
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        code.write(&format!("{name}/index.mjs"), &style.source(name))?;
        code.write(&format!("{name}/thaw.toml"), "keep_alive = 0\n")?;
        p.deploy(name, &code.path().join(name))?;
        progress_n(&label, "deploy", i + 1, n);
    }
    // A deploy loads the code once in a runtime and keeps that instance;
    // with keep_alive = 0 the reaper ends it within two seconds.
    progress(&format!(
        "{label}: waiting for the deploy-time instances to be reclaimed"
    ));
    let deadline = Instant::now() + REAP_LIMIT;
    loop {
        let left = p.instances(&prefix)?;
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "{left} instances of the cold-start functions were still running {REAP_LIMIT:?} after \
                 their deploy, though keep_alive = 0: no cold start to measure"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(SETTLE);

    let before = p.metrics();
    let mut samples = Vec::with_capacity(n);
    let (mut marked, mut confirmed) = (0, 0);
    for (i, name) in names.iter().enumerate() {
        let mut conn =
            Conn::connect(p.addr).context(|| format!("could not reach thaw on {}", p.addr))?;
        let path = format!("/fn/{name}/");
        let start = Instant::now();
        let r = conn
            .get(&path)
            .context(|| format!("GET {path} on thaw failed"))?;
        let elapsed = start.elapsed();
        check(&r).map_err(|e| failed(format!("{name} {e}")))?;
        match r.header("x-thaw-start") {
            Some("cold") => {
                marked += 1;
                confirmed += 1;
                samples.push(elapsed);
            }
            Some(_) => marked += 1,
            None => samples.push(elapsed),
        }
        progress_n(&label, "first call", i + 1, n);
        std::thread::sleep(gap);
    }
    let pool_takes = before.zip(p.metrics()).and_then(|(b, a)| {
        let takes =
            |m: &str, r: &str| metric(m, &format!("thaw_pool_takes_total{{result=\"{r}\"}}"));
        Some(PoolTakes {
            hits: takes(&a, "hit")?.saturating_sub(takes(&b, "hit")?),
            misses: takes(&a, "miss")?.saturating_sub(takes(&b, "miss")?),
        })
    });
    let summary = Summary::of(&samples).ok_or_else(|| {
        failed(format!(
            "none of the {n} first calls was a cold start (x-thaw-start: cold); the instances \
             were not reclaimed"
        ))
    })?;
    if marked == 0 {
        notes.push(
            "cold: the platform sent no x-thaw-start header, so every first call is counted as cold"
                .into(),
        );
    } else if confirmed < n {
        notes.push(format!(
            "cold: {} of {n} first calls found an instance still running (x-thaw-start: warm) and are left out",
            n - confirmed
        ));
    }
    Ok(Cold {
        summary,
        attempted: n,
        confirmed: (marked > 0).then_some(confirmed),
        pool_takes,
    })
}

fn warm(p: &Platform, style: Style, plan: &WarmPlan, notes: &mut Vec<String>) -> Result<Warm> {
    let name = format!("hello-{}", style.key());
    let code = Scratch::new("thaw-bench-code")?;
    code.write("index.mjs", &style.source(&name))?;
    p.deploy(&name, code.path())?;
    let w = load::warm(style.label(), p.addr, &format!("/fn/{name}/"), plan)?;
    let instances = p.instances(&name)?;
    notes.push(format!(
        "warm: {instances} instance(s) served the {} concurrent clients (default settings: one request \
         at a time per instance)",
        plan.connections
    ));
    Ok(w)
}

/// The value of one exact series in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
