//! The optional `thaw.toml` at the top of a bundle.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::paths::normalize_rel;
use crate::{validate_name, BundleError};

/// The settings file's name, at the top of the bundle.
pub const SETTINGS_FILE: &str = "thaw.toml";

const TOML_HINT: &str =
    "hint: memory, timeout, concurrency, max_body_mb, keep_alive, max_instances, min_instances and retries are whole numbers \
    (memory = 512); name, entry, driver, runtime, destination and every [env] value are quoted text (PORT = \"8080\")";

/// A function's settings. Every key is optional in `thaw.toml`; missing ones
/// take the defaults of [`Settings::default`]. Serde uses the TOML key names
/// (`memory`, `timeout`, `concurrency`, `keep_alive`, `env`), also in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The function's name (the CLI's default for `thaw deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The entry file, relative to the bundle root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Memory per instance in MiB, 64..=4096.
    #[serde(rename = "memory", default = "default_memory")]
    pub memory_mb: u32,
    /// Longest a request may run, in seconds, 1..=900.
    #[serde(rename = "timeout", default = "default_timeout")]
    pub timeout_s: u32,
    /// Requests one instance handles at once, 1..=1000.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Largest request body an HTTP call may send, in MiB, 1..=MAX_BODY_MB.
    /// Bodies stream to the function as it reads them, so a large limit
    /// costs thaw no memory.
    #[serde(default = "default_max_body_mb")]
    pub max_body_mb: u32,
    /// Instances of the function running at once, 1..=1000; calls beyond
    /// them and their concurrency wait in a bounded queue.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Instances kept bound and warm whatever the traffic (provisioned),
    /// 0..=max_instances: never reclaimed for idleness, re-made after a
    /// crash or a runtime upgrade.
    #[serde(default)]
    pub min_instances: u32,
    /// How long an idle instance stays warm, in seconds, 0..=86400.
    #[serde(rename = "keep_alive", default = "default_keep_alive")]
    pub keep_alive_s: u32,
    /// Environment variables for the function.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the function's instances run, one of [`DRIVERS`]; missing:
    /// the platform's (`thaw up --driver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The Node line its instances run, one of [`RUNTIMES`]; missing: the
    /// platform's default line (the major version of `thaw up --node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Times a failed async call is tried again, 0..=10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Another function of the same namespace that receives, as an async
    /// event, how each async call of this one ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Cron schedules (`[[schedule]]`): the function is called at each
    /// tick, through an alias, as an async call.
    #[serde(default, rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleSpec>,
}

/// One `[[schedule]]` of `thaw.toml`, or one made through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Names it among the function's schedules; `schedule-N` (its place in
    /// the file, from 1) when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with a leading second; see docs/triggers.md.
    pub cron: String,
    /// An IANA time zone name; UTC when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The alias each tick calls; `latest` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// For class services: the `Class.method` each tick calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Given to the function with each tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// Schedules one function may have (thaw.toml and API together).
pub const MAX_SCHEDULES: usize = 20;
/// Largest payload of one schedule, as JSON.
pub const MAX_SCHEDULE_PAYLOAD: usize = 16 * 1024;

impl ScheduleSpec {
    /// The name it goes by: its own, or `schedule-N` for the `index`th
    /// (from 0) of a file.
    pub fn name_at(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("schedule-{}", index + 1))
    }

    pub fn timezone(&self) -> &str {
        self.timezone.as_deref().unwrap_or("UTC")
    }

    pub fn alias(&self) -> &str {
        self.alias.as_deref().unwrap_or("latest")
    }

    /// Checks every field; the error says which schedule and what is wrong.
    pub fn validate(&self, which: &str) -> Result<(), String> {
        if let Some(name) = &self.name {
            validate_name(name).map_err(|e| format!("{which}: `name`: {e}"))?;
        }
        thaw_cron::Cron::parse(&self.cron)
            .map_err(|e| format!("{which}: `cron = {:?}`: {e}", self.cron))?;
        thaw_cron::parse_time_zone(self.timezone())
            .map_err(|e| format!("{which}: `timezone`: {e}"))?;
        validate_name(self.alias()).map_err(|_| {
            format!(
                "{which}: `alias = {:?}` is not an alias name: lowercase letters, digits and '-', starting with a letter",
                self.alias()
            )
        })?;
        if let Some(method) = &self.method {
            let ok = method.split_once('.').is_some_and(|(class, m)| {
                let ident = |s: &str| {
                    s.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                };
                ident(class) && ident(m)
            });
            if !ok {
                return Err(format!(
                    "{which}: `method = {method:?}` must name a class service's method as Class.method"
                ));
            }
        }
        if let Some(payload) = &self.payload {
            let bytes = payload.to_string().len();
            if bytes > MAX_SCHEDULE_PAYLOAD {
                return Err(format!(
                    "{which}: `payload` is {bytes} bytes as JSON; the limit is {MAX_SCHEDULE_PAYLOAD}"
                ));
            }
        }
        Ok(())
    }
}

/// The values `driver` may take in `thaw.toml`.
pub const DRIVERS: &[&str] = &["process", "microvm"];

/// The Node lines `runtime` may name in `thaw.toml` (and `thaw runtime
/// install` installs): `node` and a major version, the even-numbered
/// (long-term support) releases the shim is written for.
pub const RUNTIMES: &[&str] = &["node20", "node22", "node24", "node26"];

fn default_memory() -> u32 {
    256
}
fn default_timeout() -> u32 {
    30
}
fn default_concurrency() -> u32 {
    1
}
fn default_max_body_mb() -> u32 {
    6
}
/// Upper bound of `max_body_mb`: 10 GiB.
pub const MAX_BODY_MB: u32 = 10 * 1024;
fn default_keep_alive() -> u32 {
    300
}
fn default_max_instances() -> u32 {
    16
}
fn default_retries() -> u32 {
    2
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: None,
            entry: None,
            memory_mb: default_memory(),
            timeout_s: default_timeout(),
            concurrency: default_concurrency(),
            max_body_mb: default_max_body_mb(),
            keep_alive_s: default_keep_alive(),
            max_instances: default_max_instances(),
            min_instances: 0,
            env: BTreeMap::new(),
            driver: None,
            runtime: None,
            retries: default_retries(),
            destination: None,
            schedules: Vec::new(),
        }
    }
}

impl Settings {
    /// Parses and validates the text of a `thaw.toml`.
    pub fn from_toml(text: &str) -> Result<Settings, BundleError> {
        let settings: Settings = toml::from_str(text).map_err(|e| BundleError::BadSettings {
            message: format!("{}\n{TOML_HINT}", e.to_string().trim_end()),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values serde cannot: ranges, the name, the entry path and
    /// env keys. Useful for settings that arrive some other way than TOML.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |message: String| Err(BundleError::BadSettings { message });
        if let Some(name) = &self.name {
            if let Err(e) = validate_name(name) {
                return bad(format!("`name`: {e}"));
            }
        }
        if let Some(destination) = &self.destination {
            if let Err(e) = validate_name(destination) {
                return bad(format!("`destination`: {e}"));
            }
            if self.name.as_ref() == Some(destination) {
                return bad(format!(
                    "`destination = {destination:?}` names the function itself: its events would call it again"
                ));
            }
        }
        if self.schedules.len() > MAX_SCHEDULES {
            return bad(format!(
                "{} [[schedule]] entries; a function may have at most {MAX_SCHEDULES}",
                self.schedules.len()
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let name = s.name_at(i);
            if let Err(message) = s.validate(&format!("[[schedule]] `{name}`")) {
                return bad(message);
            }
            if !names.insert(name.clone()) {
                return bad(format!("two [[schedule]] entries are named `{name}`"));
            }
        }
        if let Some(entry) = &self.entry {
            if let Err(problem) = normalize_rel(entry.as_bytes()).and_then(|e| e.ok_or("")) {
                let problem = if problem.is_empty() {
                    "names the folder itself, not a file"
                } else {
                    problem
                };
                return bad(format!("`entry = {entry:?}` {problem}"));
            }
        }
        if let Some(driver) = &self.driver {
            if !DRIVERS.contains(&driver.as_str()) {
                return bad(format!(
                    "`driver = {driver:?}` is not a driver: use one of {}",
                    DRIVERS.join(", ")
                ));
            }
        }
        if let Some(runtime) = &self.runtime {
            if !RUNTIMES.contains(&runtime.as_str()) {
                return bad(format!(
                    "`runtime = {runtime:?}` is not a Node line thaw runs: use one of {}",
                    RUNTIMES.join(", ")
                ));
            }
        }
        let ranges = [
            ("memory", "MiB", self.memory_mb, 64, 4096),
            ("timeout", "seconds", self.timeout_s, 1, 900),
            ("concurrency", "requests", self.concurrency, 1, 1000),
            ("max_body_mb", "MiB", self.max_body_mb, 1, MAX_BODY_MB),
            ("keep_alive", "seconds", self.keep_alive_s, 0, 86400),
            ("max_instances", "instances", self.max_instances, 1, 1000),
            ("retries", "retries", self.retries, 0, 10),
            ("min_instances", "instances", self.min_instances, 0, 1000),
        ];
        for (key, unit, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return bad(format!(
                    "`{key} = {value}` is out of range: it must be between {min} and {max} ({unit})"
                ));
            }
        }
        if self.min_instances > self.max_instances {
            return bad(format!(
                "`min_instances = {}` is more than `max_instances = {}`",
                self.min_instances, self.max_instances
            ));
        }
        for key in self.env.keys() {
            let mut chars = key.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return bad(format!(
                    "environment variable name {key:?} in [env] is invalid: names are letters, \
                     digits and '_', and do not start with a digit"
                ));
            }
        }
        Ok(())
    }
}

/// Reads `thaw.toml` at the top of `dir`; no file means all defaults.
pub fn read_settings(dir: &Path) -> Result<Settings, BundleError> {
    let path = dir.join(SETTINGS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => {
            return Err(BundleError::io(
                format!("cannot read `{}`", path.display()),
                e,
            ))
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| BundleError::BadSettings {
        message: "the file is not valid UTF-8: save it as UTF-8 text".into(),
    })?;
    Settings::from_toml(&text)
}
