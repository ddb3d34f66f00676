//! Functions that attack their walls, through the whole platform: each
//! attempt fails, the caller gets a clear answer where the instance dies,
//! and the host and every other function keep serving. docs/security.md
//! lists these probes and their results.
//!
//! These need a host that can run the jail (root, Linux 5.12+, cgroups);
//! `thaw up --jail on` refuses to start elsewhere, so they fail loudly
//! rather than pass without a jail.

mod common;

use common::{function_dir, http, Platform};
use serde_json::Value;

/// Runs each named probe and answers with what happened to it: `ok` and
/// what it saw, or the error code it got.
const PROBES: &str = r#"
import fs from "node:fs";
import os from "node:os";
import net from "node:net";

function attempt(f) {
  try { return { ok: true, value: f() }; }
  catch (e) { return { ok: false, code: e.code ?? e.name, message: String(e.message).slice(0, 200) }; }
}

function connect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port }, () => { s.destroy(); resolve({ ok: true }); });
    s.on("error", (e) => resolve({ ok: false, code: e.code }));
    setTimeout(() => { s.destroy(); resolve({ ok: false, code: "TIMEOUT" }); }, 2000);
  });
}

export const handler = async () => {
  const env = process.env;
  const out = {
    shadow: attempt(() => fs.readFileSync("/etc/shadow", "utf8").length),
    passwd_real: attempt(() => fs.readFileSync("/etc/passwd", "utf8").includes("root:x:0:0:root:/root")),
    data_dir: attempt(() => fs.readdirSync(env.DATA_DIR)),
    token: attempt(() => fs.readFileSync(env.DATA_DIR + "/token", "utf8")),
    other_code: attempt(() => fs.readdirSync(env.DATA_DIR + "/code")),
    root_home: attempt(() => fs.readdirSync("/root")),
    write_own_code: attempt(() => fs.writeFileSync("/code/index.mjs", "hacked")),
    write_root: attempt(() => fs.writeFileSync("/evil", "x")),
    interfaces: Object.keys(os.networkInterfaces()),
    proc_pids: fs.readdirSync("/proc").filter((n) => /^\d+$/.test(n)).length,
    kill_host: attempt(() => process.kill(Number(env.THAW_PID), "SIGKILL")),
    uid: process.getuid(),
    init_cmdline: attempt(() => fs.readFileSync("/proc/1/cmdline", "latin1")),
    mountinfo: attempt(() => fs.readFileSync("/proc/self/mountinfo", "utf8")),
    mounts: attempt(() => fs.readFileSync("/proc/self/mounts", "utf8")),
    constrained_memory: process.constrainedMemory(),
    cgroup_write: attempt(() => fs.writeFileSync(
      fs.existsSync("/sys/fs/cgroup/memory") ? "/sys/fs/cgroup/memory/memory.limit_in_bytes" : "/sys/fs/cgroup/memory.max",
      "9999999999")),
    sudo: fs.existsSync("/usr/bin/sudo") || fs.existsSync("/bin/su"),
    api_port: await connect(Number(env.API_PORT)),
  };
  return { statusCode: 200, body: JSON.stringify(out) };
};
"#;

/// Every `thaw up` these tests start gives its instances the same uids
/// (each counts from the first of thaw's range), and the fork bomb fills
/// its instance's uid up to `RLIMIT_NPROC`, which counts that uid's
/// processes on the whole host: while it runs, a runtime of another
/// platform with that uid could not start. So the fork bomb runs alone.
static UIDS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn sharing_uids() -> std::sync::RwLockReadGuard<'static, ()> {
    UIDS.read().unwrap_or_else(|e| e.into_inner())
}

fn port_of(server: &str) -> String {
    server.rsplit(':').next().unwrap().to_string()
}

fn thaw_pid(p: &Platform) -> String {
    // The `thaw up` process serving this platform: the one listening on
    // its port (found through /proc, so nothing is installed for it).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'thaw up' && \
             grep -qs '{}' $p/environ && basename $p; done | head -1",
            p.data_dir.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_function_sees_none_of_the_host_and_cannot_change_its_code() {
    let _uids = sharing_uids();
    let p = Platform::start_with(&["--jail", "on"]);
    // Another function's code, which the probe must not reach.
    let other = function_dir(&[("index.mjs", "export const main = () => ({ secret: 42 });")]);
    p.deploy(other.path(), "neighbour");
    let host_pid = thaw_pid(&p);
    assert!(
        host_pid.parse::<u32>().is_ok(),
        "found thaw up's pid: {host_pid:?}"
    );
    let toml = format!(
        "memory = 192\n[env]\nDATA_DIR = \"{}\"\nAPI_PORT = \"{}\"\nTHAW_PID = \"{}\"\n",
        p.data_dir.display(),
        port_of(&p.server),
        host_pid
    );
    let probe = function_dir(&[("index.mjs", PROBES), ("thaw.toml", &toml)]);
    p.deploy(probe.path(), "prober");
    let r = http().get(p.url("prober", "/")).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());

    for denied in ["shadow", "data_dir", "token", "other_code", "root_home"] {
        assert_eq!(v[denied]["ok"], false, "{denied}: {}", v[denied]);
    }
    assert!(
        v["passwd_real"]["value"] != true,
        "the host's /etc/passwd is not visible"
    );
    assert_eq!(v["write_own_code"]["ok"], false);
    assert!(
        ["EROFS", "EACCES", "EPERM"].contains(&v["write_own_code"]["code"].as_str().unwrap()),
        "{}",
        v["write_own_code"]
    );
    assert_eq!(v["write_root"]["ok"], false);
    assert_eq!(v["interfaces"], serde_json::json!(["lo"]));
    assert!(
        v["proc_pids"].as_u64().unwrap() <= 3,
        "sees only its own processes: {}",
        v["proc_pids"]
    );
    assert_eq!(v["kill_host"]["ok"], false);
    assert!(
        v["uid"].as_u64().unwrap() >= 1_000_000,
        "runs as an unprivileged uid"
    );
    assert_eq!(v["sudo"], false);
    // Its own memory limit is what Node's process.constrainedMemory() sees,
    // read-only.
    assert_eq!(
        v["constrained_memory"],
        192u64 << 20,
        "{}",
        v["constrained_memory"]
    );
    assert_eq!(v["cgroup_write"]["ok"], false, "{}", v["cgroup_write"]);
    // The jail's init shows a name, not the configuration it was given.
    let init = v["init_cmdline"]["value"].as_str().unwrap_or("");
    assert!(init.starts_with("thaw-init"), "{}", v["init_cmdline"]);
    for hidden in ["config", "state_dir", "jails", "uid", "memory"] {
        assert!(
            !init.contains(hidden),
            "/proc/1/cmdline shows {hidden}: {init:?}"
        );
    }
    assert_eq!(
        v["api_port"]["ok"], false,
        "the platform's API is out of reach"
    );
    // The mount tables name no path of the data directory, nor anything
    // shaped like its layout: the code and the shim are filesystems of
    // their own (each line shows `/`), not binds of host directories.
    let data_dir = p.data_dir.display().to_string();
    for table in ["mountinfo", "mounts"] {
        let text = v[table]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", v[table]));
        for hidden in [data_dir.as_str(), "/jails/", "/code/", "/runtime/"] {
            assert!(
                !text.contains(hidden),
                "/proc/self/{table} shows {hidden}:\n{text}"
            );
        }
    }
    let mountinfo = v["mountinfo"]["value"].as_str().unwrap();
    let code = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/code"))
        .unwrap();
    assert!(code.contains(" - erofs /dev/loop"), "{code}");

    // The neighbour still serves, and its code is intact.
    let n: Value = http()
        .get(p.url("neighbour", "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["secret"], 42);
}

#[test]
fn an_instance_past_its_memory_limit_is_killed_with_an_error_naming_the_limit() {
    let _uids = sharing_uids();
    let p = Platform::start_with(&["--jail", "on"]);
    let hog = function_dir(&[
        (
            "index.mjs",
            r#"const kept = [];
               export const handler = async () => {
                 for (;;) { const b = Buffer.alloc(8 * 1024 * 1024); b.fill(1); kept.push(b); }
               };"#,
        ),
        ("thaw.toml", "memory = 96\ntimeout = 60\n"),
    ]);
    p.deploy(hog.path(), "hog");
    let bystander = function_dir(&[("index.mjs", "export const main = () => ({ fine: true });")]);
    p.deploy(bystander.path(), "bystander");
    common::assert_killed_past_memory_limit(&p, "hog", "/", 96, "bystander");
}

#[test]
fn fork_bombs_spinning_and_filling_tmp_hit_their_limits_and_others_keep_serving() {
    let _uids = UIDS.write().unwrap_or_else(|e| e.into_inner());
    let p = Platform::start_with(&["--jail", "on"]);
    let bomb = function_dir(&[(
        "index.mjs",
        r#"import { spawn } from "node:child_process";
           export const handler = async () => {
             let started = 0, error = null;
             for (let i = 0; i < 2000 && !error; i++) {
               try {
                 const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 20000)"]);
                 c.on("error", (e) => { error ??= e.code; });
                 started++;
                 await new Promise((r) => setImmediate(r));
               } catch (e) { error = e.code ?? String(e); }
             }
             return { statusCode: 200, body: JSON.stringify({ started, error }) };
           };"#,
    )]);
    let spinner = function_dir(&[
        (
            "index.mjs",
            "export const handler = async () => { for (;;) {} };",
        ),
        ("thaw.toml", "timeout = 1\n"),
    ]);
    let filler = function_dir(&[(
        "index.mjs",
        r#"import fs from "node:fs";
           export const handler = async () => {
             const chunk = Buffer.alloc(1024 * 1024, 1);
             let written = 0, code = null;
             // Files of 8 MiB each: the per-file size limit is not what is
             // being probed here, the size of /tmp is.
             try { for (;;) { fs.appendFileSync(`/tmp/fill-${written >> 3}`, chunk); written++; if (written > 4096) break; } }
             catch (e) { code = e.code; }
             return { statusCode: 200, body: JSON.stringify({ written, code }) };
           };"#,
    )]);
    let calm = function_dir(&[("index.mjs", "export const main = () => ({ calm: true });")]);
    p.deploy(bomb.path(), "bomb");
    p.deploy(spinner.path(), "spinner");
    p.deploy(filler.path(), "filler");
    p.deploy(calm.path(), "calm");

    let r = http().get(p.url("bomb", "/")).send().unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    eprintln!("fork bomb: {status} {body}");
    // Either the function saw its spawns refused, or the instance died of
    // it: never an unbounded number of processes.
    if status == 200 {
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["started"].as_u64().unwrap() < 2000, "{v}");
        assert!(!v["error"].is_null(), "{v}");
    } else {
        assert_eq!(status, 502, "{body}");
    }

    let r = http().get(p.url("spinner", "/")).send().unwrap();
    assert_eq!(r.status(), 504);

    let v: Value = http()
        .get(p.url("filler", "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    eprintln!("fill /tmp: {v}");
    assert_eq!(v["code"], "ENOSPC", "{v}");
    assert!(v["written"].as_u64().unwrap() <= 64, "/tmp is limited: {v}");

    let ok: Value = http()
        .get(p.url("calm", "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ok["calm"], true);
    assert_eq!(
        http()
            .get(format!("{}/healthz", p.server))
            .send()
            .unwrap()
            .status(),
        200
    );
}

/// The loop devices bound to a file under `dir` (`loopN`).
fn loops_backed_by(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let backing = std::fs::read_to_string(entry.path().join("loop/backing_file"));
        if backing.is_ok_and(|file| std::path::Path::new(file.trim()).starts_with(dir)) {
            out.push(name);
        }
    }
    out
}

/// The lines of the host's mount table whose mount point is under `dir`.
fn host_mounts_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|at| std::path::Path::new(at).starts_with(dir))
        })
        .map(str::to_string)
        .collect()
}

/// Code attached to instances of `data_dir`: erofs mounts on attach points.
fn attached_images(data_dir: &std::path::Path) -> Vec<String> {
    host_mounts_under(&data_dir.join("jails"))
        .into_iter()
        .filter(|l| l.contains(" - erofs "))
        .collect()
}

#[test]
fn removing_a_function_ends_its_instances_and_lets_go_of_its_code_image() {
    let _uids = sharing_uids();
    let p = Platform::start_with(&["--jail", "on"]);
    let d = function_dir(&[("index.mjs", "export const main = () => ({ up: true });")]);
    p.deploy(d.path(), "short-lived");
    let v: Value = http()
        .get(p.url("short-lived", "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["up"], true);
    let code = p.data_dir.join("code");
    assert_eq!(
        loops_backed_by(&code).len(),
        1,
        "its code is on a loop device"
    );
    assert!(!attached_images(&p.data_dir).is_empty(), "and attached");

    p.thaw_ok(&["rm", "short-lived"]);
    p.eventually(20, "its instance ended and its image went", || {
        attached_images(&p.data_dir).is_empty() && loops_backed_by(&code).is_empty()
    });
    let left: Vec<_> = std::fs::read_dir(&code).unwrap().flatten().collect();
    assert!(left.is_empty(), "its code and image are removed: {left:?}");
    // The runtime's own image stays for the runtimes still to come.
    assert_eq!(loops_backed_by(&p.data_dir.join("runtime")).len(), 1);
}

#[test]
fn nothing_stays_mounted_or_on_a_loop_device_after_thaw_is_killed_and_started_again() {
    let _uids = sharing_uids();
    let data = tempfile::tempdir().unwrap();
    let mut p = Platform::launch(data.path(), &[], &["--jail", "on"]);
    let d = function_dir(&[("index.mjs", "export const main = () => ({ up: true });")]);
    p.deploy(d.path(), "survivor");
    let call = |p: &Platform| -> Value {
        let text = http()
            .get(p.url("survivor", "/"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let v = call(&p);
    assert_eq!(v["up"], true, "{v}");
    let (code, runtime) = (data.path().join("code"), data.path().join("runtime"));
    let before: Vec<String> = std::fs::read_dir(data.path().join("jails"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!before.is_empty());
    assert_eq!(loops_backed_by(&code).len(), 1);
    p.kill();
    // Each jail unmounts its attach point as thaw dies: the attached code
    // and its loop device go with thaw, before any restart.
    p.eventually(
        10,
        "the code's mount and loop device went with thaw",
        || attached_images(data.path()).is_empty() && loops_backed_by(&code).is_empty(),
    );

    // The next start removes the rest: the instances' directories, and the
    // attach point of one that was starting as thaw died.
    let p = Platform::launch(data.path(), &[], &["--jail", "on"]);
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in &before {
        assert!(
            !host.contains(&format!("/jails/{id}/")),
            "instance {id} of the killed thaw is still mounted:\n{}",
            host_mounts_under(data.path()).join("\n")
        );
        assert!(!data.path().join("jails").join(id).exists(), "{id}");
    }
    p.eventually(10, "the killed thaw's runtime image is free", || {
        loops_backed_by(&runtime).len() == 1
    });
    // The routed version's image is held again before a call needs it.
    p.eventually(10, "the code's image is held again", || {
        loops_backed_by(&code).len() == 1
    });

    // And the function serves again, from its image.
    let v = call(&p);
    assert_eq!(v["up"], true, "{v}");
    assert_eq!(loops_backed_by(&code).len(), 1);
}

#[test]
fn without_mkfs_erofs_code_is_bound_after_one_warning_and_still_serves() {
    let _uids = sharing_uids();
    // A PATH with Node and ldd, and no mkfs.erofs.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["node", "ldd"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} on PATH"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let p = Platform::launch(
        data.path(),
        &[("PATH", bin.path().to_str().unwrap())],
        &["--jail", "on"],
    );
    let warnings: Vec<&String> = p
        .startup
        .iter()
        .filter(|l| l.contains("/proc/self/mountinfo"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", p.startup);
    assert!(
        warnings[0].starts_with("warning: ") && warnings[0].contains("erofs-utils"),
        "{}",
        warnings[0]
    );

    let d = function_dir(&[(
        "index.mjs",
        r#"import fs from "node:fs";
           export const handler = async () => {
             let write = "ok";
             try { fs.writeFileSync("/code/index.mjs", "x"); } catch (e) { write = e.code; }
             const mountinfo = fs.readFileSync("/proc/self/mountinfo", "utf8");
             return { statusCode: 200, body: JSON.stringify({ write, mountinfo }) };
           };"#,
    )]);
    p.deploy(d.path(), "bound");
    let v: Value = http()
        .get(p.url("bound", "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["write"], "EROFS");
    // What is lost: the code's host path shows; the attach point's does not.
    let mountinfo = v["mountinfo"].as_str().unwrap();
    let code = data.path().join("code").display().to_string();
    assert!(mountinfo.contains(&code), "{mountinfo}");
    assert!(!mountinfo.contains("/jails/"), "{mountinfo}");
    assert!(loops_backed_by(data.path()).is_empty());
}

/// Processes of every jail in `data_dir`: those whose cgroup names one of
/// the instance ids under `data_dir/jails`.
fn jailed_processes(data_dir: &std::path::Path) -> Vec<u32> {
    let ids: Vec<String> = std::fs::read_dir(data_dir.join("jails"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if ids
            .iter()
            .any(|id| cgroups.lines().any(|l| l.ends_with(&format!("/thaw/{id}"))))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Alive: /proc has it and it is not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[test]
fn instances_paused_ones_included_end_when_thaw_is_killed() {
    let _uids = sharing_uids();
    let mut p = Platform::start_with(&["--jail", "on", "--pause-idle-after-ms", "200"]);
    let d = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'up' });",
    )]);
    p.deploy(d.path(), "sleeper");
    assert_eq!(
        http()
            .get(p.url("sleeper", "/"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "up"
    );
    p.eventually(20, "the idle instance is paused", || {
        let v: Value = p
            .api(reqwest::Method::GET, "/v1/functions/sleeper")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["instances"]["paused"] == 1
    });
    let before = jailed_processes(&p.data_dir);
    let frozen = before.iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').nth(2))
            .filter(|path| path.starts_with("/thaw/"))
            .any(|path| {
                ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup"]
                    .iter()
                    .any(|base| {
                        let v1 = std::fs::read_to_string(format!("{base}{path}/freezer.state"));
                        let v2 = std::fs::read_to_string(format!("{base}{path}/cgroup.freeze"));
                        v1.is_ok_and(|s| s.trim() == "FROZEN") || v2.is_ok_and(|s| s.trim() == "1")
                    })
            })
    });
    assert!(frozen, "a paused instance is frozen: {before:?}");
    p.kill();
    // Not a timing assertion: a generous bound against a hang.
    p.eventually(30, "every jailed process ended with thaw", || {
        !jailed_processes(&p.data_dir).iter().any(|pid| alive(*pid))
    });
    // What a killed thaw leaves of its instances (their directories, and a
    // mount of one that was starting as thaw died) goes at its next start:
    // start it once, so that the test leaves nothing behind, and let its
    // pool settle before stopping it.
    let again = Platform::launch(&p.data_dir, &[], &["--jail", "on"]);
    again.eventually(30, "the restarted pool settled", || {
        again.metric("thaw_pool_runtimes{state=\"starting\"}") == 0.0
            && again.metric("thaw_pool_runtimes{state=\"idle\"}") >= 1.0
    });
}
