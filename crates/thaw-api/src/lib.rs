//! What thaw's `/v1` API accepts and answers, as types.
//!
//! The gateway renders these views and the CLI decodes them: neither
//! reads JSON by string keys. `docs/api.md` describes every route, and
//! `/v1/openapi.json` (written from the same types' fields) is checked
//! against the real answers by a test of the gateway.
//!
//! This crate holds plain data: no HTTP, no storage, no policy.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Every error thaw itself answers with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    /// Stable, for programs: `not_found`, `forbidden`, `namespace_limit` ...
    pub code: String,
    /// For people: what was wrong and what to do.
    pub message: String,
    /// Details some errors carry (a stack, a handler error's name, logs).
    #[serde(flatten)]
    pub details: BTreeMap<String, Value>,
}

/// Who the caller's key is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    /// `admin`, `deploy`, `invoke` or `read`.
    pub role: String,
    /// The key's namespace; none for the admin token.
    pub namespace: Option<String>,
    /// The key's name (`admin` for the admin token).
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_functions: u32,
    pub max_instances: u32,
    pub max_memory_mb: u32,
    pub max_deploy_bytes: u64,
    /// Async calls accepted and not finished, across its functions.
    #[serde(default)]
    pub max_queued: u32,
}

/// Limits to set; missing ones keep their value (or the default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    pub max_functions: Option<u32>,
    pub max_instances: Option<u32>,
    pub max_memory_mb: Option<u32>,
    pub max_deploy_bytes: Option<u64>,
    #[serde(default)]
    pub max_queued: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
    pub name: String,
    #[serde(default)]
    pub limits: LimitsPatch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceView {
    pub name: String,
    pub created_ms: i64,
    pub limits: Limits,
    pub functions: usize,
    /// Instances running now across its functions, and their memory.
    pub instances: u32,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceList {
    pub namespaces: Vec<NamespaceView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub namespace: String,
    pub name: String,
    /// `deploy`, `invoke` or `read`.
    pub role: String,
    /// The key stops working this many seconds from now.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub role: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// A new key: `token` is shown this once and kept nowhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    pub key: KeyView,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// Instances of a function, by what they are doing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Instances {
    pub busy: u32,
    pub idle: u32,
    pub paused: u32,
    pub starting: u32,
    pub waiting: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitView {
    pub version: i64,
    pub percent: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasView {
    pub name: String,
    pub version: i64,
    pub split: Option<SplitView>,
    pub url: String,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasList {
    pub aliases: Vec<AliasView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub version: i64,
    #[serde(default)]
    pub split: Option<SplitView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The alias to move [default: latest].
    #[serde(default)]
    pub alias: Option<String>,
    /// The version to point it at [default: the newest older than now].
    #[serde(default)]
    pub to: Option<i64>,
}

/// A function, as `latest` serves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionView {
    pub namespace: String,
    pub name: String,
    pub url: String,
    /// The version number `latest` points at.
    pub version: i64,
    pub bundle: String,
    pub entry: String,
    /// `thaw.toml`'s settings of that version.
    pub settings: Value,
    pub deployed_ms: i64,
    pub deployed_by: String,
    pub aliases: Vec<AliasView>,
    /// Names of variables set through the API, and of secrets.
    pub env_names: Vec<String>,
    pub secret_names: Vec<String>,
    pub instances: Instances,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    pub number: i64,
    pub bundle: String,
    pub archive_bytes: u64,
    pub deployed_by: String,
    /// `deploy` or `config`.
    pub cause: String,
    pub created_ms: i64,
    pub url: String,
    /// Aliases pointing at it (with a split: `prod:10%`).
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionList {
    pub function: String,
    pub versions: Vec<VersionView>,
}

/// A secret or variable's value, sent in a body (never in a URL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetValue {
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    pub function: String,
    /// The version whose secrets these are (the one `latest` points at).
    pub version: i64,
    pub secrets: Vec<SecretView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvList {
    pub function: String,
    pub version: i64,
    /// Variables set through the API (thaw.toml's `[env]` is in `settings`).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLineView {
    pub stream: String,
    pub line: String,
    pub ts_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogList {
    pub logs: Vec<LogLineView>,
    /// Pass as `after=` to get the lines that come next.
    pub next: i64,
}

/// A cron schedule of a function and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// The alias each tick calls.
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// `toml` (declared by the `thaw.toml` of the version `latest` points
    /// at) or `api`.
    pub origin: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ms: Option<i64>,
    /// Ticks that became calls.
    pub fired: u64,
    /// Ticks not run (passed while thaw was down, or refused by a full queue).
    pub missed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleList {
    pub function: String,
    pub schedules: Vec<ScheduleView>,
}

/// `POST .../schedules`: a schedule to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// What an async call's request is answered with (`202 Accepted`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallAccepted {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub state: String,
    /// Where the call's state, attempts and result are read.
    pub status_url: String,
}

/// An async call: where it is, what each attempt did, how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallView {
    pub id: String,
    pub namespace: String,
    pub function: String,
    /// The alias (or version number) each attempt resolves.
    pub target: String,
    /// `request`, `event` or `scheduled`.
    pub kind: String,
    /// Who asked: `api`, `http`, `schedule:NAME`, `destination`.
    pub origin: String,
    /// `queued`, `running`, `failed` (a retry waits), `succeeded` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The call's input (one call's view only, not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// `running` calls: the worker running the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Attempts that ended, oldest first (one call's view only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The runtime invocation id its log lines carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<u64>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub logs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallList {
    pub calls: Vec<CallView>,
    /// Pass as `before=` for the next (older) page; none at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Which dead letters to replay or purge: these, or (none given) all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallIds {
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetters {
    pub function: String,
    /// `replayed` or `purged`.
    pub action: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlerErrorView {
    pub code: String,
    pub name: Option<String>,
    pub message: String,
    pub stack: Option<String>,
}

/// What `POST .../invoke` answers when the function ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvokeResult {
    pub namespace: String,
    pub function: String,
    pub version: i64,
    pub invocation: u64,
    pub cold: bool,
    pub logs: Vec<LogLineView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HandlerErrorView>,
}

/// One minute of a function's calls (`GET {F}/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MinuteStats {
    /// When the minute began, in milliseconds since the epoch.
    pub start_ms: i64,
    pub calls: u32,
    /// Calls that did not end `ok`: the handler threw, timed out, crashed,
    /// or thaw refused or could not run them.
    pub errors: u32,
    /// Calls that started their instance.
    pub cold: u32,
    /// Latency from arrival to answer, estimated from a histogram; none
    /// in a minute without calls.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A function's last hour, kept in memory since `thaw up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionStats {
    pub namespace: String,
    pub function: String,
    /// 60 minutes, oldest first; the last one is the minute now.
    pub minutes: Vec<MinuteStats>,
}

/// A driver's pool of pre-started runtimes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimePoolView {
    pub driver: String,
    /// The Node line its runtimes run (`node22`).
    pub runtime: String,
    /// Runtimes waiting, bound to no function, and starting.
    pub idle: usize,
    pub starting: usize,
    /// Runtimes the pool aims to keep waiting.
    pub target: usize,
    /// Cold starts served from the pool, and those that started Node
    /// themselves.
    pub hits: u64,
    pub misses: u64,
    pub started: u64,
    pub failed: u64,
    /// Measured memory (PSS) of one waiting runtime, 0 before the first.
    pub runtime_bytes: u64,
}

/// Instances and their memory limits, added up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    pub instances: u64,
    pub memory_mb: u64,
}

/// `GET /v1/platform`: the host thaw runs on and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformView {
    /// thaw's version.
    pub version: String,
    /// Workers serving this registry: 1 for a thaw on its own, the live
    /// workers when several share a PostgreSQL registry.
    pub hosts: u32,
    /// The platform's driver and how it runs (`process`, `microvm, kvm`).
    pub driver: String,
    pub jailed: bool,
    /// What all instances together may hold (`thaw up --host-memory-mb`,
    /// `--host-pids`), and what they hold now.
    pub budget: Usage,
    pub in_use: Usage,
    pub namespaces: usize,
    pub functions: usize,
    /// The platform's driver's pool first.
    pub pools: Vec<RuntimePoolView>,
    /// The last `thaw bench` report run on this host, if one was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<BenchReport>,
    /// With a shared registry: the id of the worker that answered (whose
    /// figures these are), and every live worker (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerView>,
}

/// A worker sharing the registry, as its lease last said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    /// Where the other workers reach it.
    pub address: String,
    /// Instances it runs that cannot give way (serving calls or starting),
    /// and the most it may run.
    pub busy: u32,
    pub capacity: u32,
    pub started_ms: i64,
    /// Its lease runs to here; it renews it every second.
    pub lease_until_ms: i64,
}

/// `GET /readyz`: whether this host is ready for traffic, and if not what
/// it waits for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
}

/// A `thaw bench` report as it was written (markdown), and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub written_ms: i64,
    pub markdown: String,
}

/// Where in a data directory `thaw bench` keeps a copy of its report for
/// the dashboard's platform page.
pub const BENCH_REPORT: &str = "bench/report.md";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverUpgrade {
    pub driver: String,
    /// The Node line of the pool (`node22`): one pool per driver and line.
    pub runtime: String,
    pub before: String,
    pub after: String,
    pub changed: bool,
    pub replaced_waiting: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeUpgradeView {
    pub drivers: Vec<DriverUpgrade>,
}

/// A time in milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC),
/// as listings show `created_ms` and the like.
pub fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(super::civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(super::utc_time(1_796_235_666_232), "2026-12-02 18:21:06");
        assert_eq!(super::utc_time(-1), "1969-12-31 23:59:59");
    }
}
