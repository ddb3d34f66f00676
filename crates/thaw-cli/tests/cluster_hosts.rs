//! Three `thaw up` workers on three hosts of their own: each in a network
//! namespace, joined to the others and to a real PostgreSQL server by
//! veth pairs on one bridge, so that they reach each other only over
//! their own addresses. Calls find their function's home from any worker;
//! a worker killed with calls in flight, or cut off from the network, is
//! routed around; its async calls run elsewhere; schedules fire once per
//! tick; and haproxy, configured as docs/cluster.md says, keeps answering.

mod common;

use common::{function_dir, http, in_netns, repo_root, until, Platform, TEST_SECRETS_KEY};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use thaw_testpg::TestPg;

/// The port every worker listens on, each in its own namespace.
const PORT: u16 = 7070;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in the test's own namespace (the "switch", at `10.77.S.1`,
/// where PostgreSQL and haproxy listen) and one namespace per host, its
/// `eth0` at `10.77.S.(2 + i)`. Removed when dropped.
struct Hosts {
    tag: String,
    subnet: u32,
    count: usize,
}

impl Hosts {
    fn new(count: usize) -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = (std::process::id() * 7 + n) % 200 + 20;
        let hosts = Hosts {
            tag: format!("{:04x}", (std::process::id() * 16 + n) & 0xffff),
            subnet,
            count,
        };
        let bridge = hosts.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.gateway()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..count {
            let (ns, veth) = (hosts.ns(i), format!("thv{}{i}", hosts.tag));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &bridge]);
            ip(&["link", "set", &veth, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", hosts.address(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("thbr{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("thns{}{i}", self.tag)
    }

    fn gateway(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn address(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, i + 2)
    }

    /// Sets host `i`'s link down (`up == false`) or up again.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns(i), "link", "set", "eth0", state]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// Three hosts, a PostgreSQL server on their bridge, a worker on each.
struct Cluster {
    workers: Vec<Platform>,
    ids: Vec<String>,
    hosts: Hosts,
    _pg: TestPg,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start() -> Cluster {
        let hosts = Hosts::new(3);
        let pg = TestPg::start(&[&hosts.gateway()]).expect("a scratch PostgreSQL server");
        let url = pg.tcp_url(&hosts.gateway(), &pg.new_database());
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let listen = format!("0.0.0.0:{PORT}");
        let workers: Vec<Platform> = (0..3)
            .map(|i| {
                let me = format!("http://{}:{PORT}", hosts.address(i));
                let mut p = Platform::launch_in_netns(
                    Some(&hosts.ns(i)),
                    dirs[i].path(),
                    &[
                        ("THAW_DATABASE_URL", &url),
                        ("THAW_SECRETS_KEY", TEST_SECRETS_KEY),
                    ],
                    &["--listen", &listen, "--advertise", &me],
                    // Room for the warm instances of a few hundred
                    // functions on this machine, which shares one
                    // kernel.pid_max among the three "hosts" (each
                    // instance's budget of 256 PIDs is far above what an
                    // idle one runs).
                    &["--host-pids", "32768"],
                );
                p.server = me;
                p
            })
            .collect();
        let ids = workers.iter().map(worker_id).collect();
        Cluster {
            workers,
            ids,
            hosts,
            _pg: pg,
            _dirs: dirs,
        }
    }

    /// Which worker (by index) has the id `id`.
    fn index_of(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|w| w == id)
            .unwrap_or_else(|| panic!("no worker {id:?} among {:?}", self.ids))
    }
}

/// The id a worker gives in `x-thaw-worker` (its `/readyz` says it).
fn worker_id(p: &Platform) -> String {
    let r = http().get(format!("{}/readyz", p.server)).send().unwrap();
    header(&r, "x-thaw-worker")
}

/// A worker's routing counters and its view of the cluster, for a message.
fn routing_of(p: &Platform) -> String {
    let text = p
        .api(Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("thaw_cluster") || l.starts_with("thaw_pool_takes"))
        .collect();
    format!("{}: {}", p.server, lines.join("; "))
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `(status, serving worker, cold or warm, body)` of a GET.
fn get(url: &str) -> (u16, String, String, String) {
    let r = http().get(url).send().unwrap();
    let (worker, start) = (header(&r, "x-thaw-worker"), header(&r, "x-thaw-start"));
    (r.status().as_u16(), worker, start, r.text().unwrap())
}

/// A GET from inside host `ns` itself, by Node: `(status, body)`, or
/// status 0 when nothing answers.
fn get_inside(ns: &str, url: &str) -> (u16, String) {
    let mut cmd = Command::new("node");
    in_netns(&mut cmd, ns);
    let out = cmd
        .args([
            "-e",
            "fetch(process.argv[1], { signal: AbortSignal.timeout(3000) })\
               .then(async r => console.log(r.status + ' ' + await r.text()))\
               .catch(() => console.log('0 '))",
            url,
        ])
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (status, body) = text.split_once(' ').unwrap_or((&text, ""));
    (status.parse().unwrap_or(0), body.to_string())
}

const SLEEPER: &str = "export const handler = async (event) => { \
    const ms = Number(event.queryStringParameters?.ms ?? 0); \
    await new Promise((r) => setTimeout(r, ms)); \
    return { statusCode: 200, body: `slept ${ms}` }; };";

fn sleeper() -> tempfile::TempDir {
    function_dir(&[("index.mjs", SLEEPER)])
}

/// Deploys the sleeper under new names through `via` until one is homed
/// on worker `home`; returns its name.
fn homed_on(c: &Cluster, via: usize, home: usize, prefix: &str) -> String {
    let code = sleeper();
    for n in 0..40 {
        let name = format!("{prefix}{n}");
        c.workers[via].deploy(code.path(), &name);
        let url = c.workers[via].url(&name, "/");
        until(10, "a new function answers", || get(&url).0 == 200);
        if c.index_of(&get(&url).1) == home {
            return name;
        }
    }
    panic!("no function homed on worker {home} in 40 tries");
}

#[test]
fn calls_find_their_home_across_hosts_and_a_killed_host_is_taken_over() {
    let mut c = Cluster::start();
    let w = &c.workers;

    // Deployed through A, answered through B and C.
    let hello = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'hello from the cluster' });",
    )]);
    w[0].deploy(hello.path(), "hello");
    for p in &w[1..] {
        until(10, "B and C serve what A deployed", || {
            get(&p.url("hello", "/")).3 == "hello from the cluster"
        });
    }

    // Through a worker that is not its home, a function still sees its
    // caller's address and the host the caller asked for.
    let whoami = function_dir(&[(
        "index.mjs",
        "export const handler = async (event) => ({ statusCode: 200, \
         body: `${event.requestContext.http.sourceIp} ${event.headers.host}` });",
    )]);
    w[0].deploy(whoami.path(), "whoami");
    let home = {
        let url = w[0].url("whoami", "/");
        until(10, "whoami answers", || get(&url).0 == 200);
        c.index_of(&get(&url).1)
    };
    let away = (home + 1) % 3;
    let (status, served_by, _, body) = get(&w[away].url("whoami", "/"));
    assert_eq!((status, c.index_of(&served_by)), (200, home), "{body}");
    let landed = w[away].server.trim_start_matches("http://");
    assert_eq!(body, format!("{} {landed}", c.hosts.gateway()));

    // Many functions, called through every worker in turn: each is served
    // by one home, which finds its warm instance again.
    const FUNCTIONS: usize = 200;
    let code = sleeper();
    let started = Instant::now();
    for i in 0..FUNCTIONS {
        w[i % 3].deploy(code.path(), &format!("f{i}"));
    }
    eprintln!("{FUNCTIONS} deploys took {:?}", started.elapsed());
    let mut homes = BTreeMap::new();
    for i in 0..FUNCTIONS {
        let url = w[(i + 1) % 3].url(&format!("f{i}"), "/");
        until(10, "every function answers", || get(&url).0 == 200);
        homes.insert(i, get(&url).1);
    }
    let mut per_home = BTreeMap::new();
    for home in homes.values() {
        *per_home.entry(home.clone()).or_insert(0) += 1;
    }
    eprintln!("functions per home: {per_home:?}");
    let (mut calls, mut warm) = (0, 0);
    for round in 0..2 {
        for i in 0..FUNCTIONS {
            let (status, served_by, start, _) =
                get(&w[(i + round + 2) % 3].url(&format!("f{i}"), "/"));
            assert_eq!(status, 200);
            if homes[&i] != served_by {
                let routing: Vec<String> = w.iter().map(routing_of).collect();
                panic!(
                    "f{i} served by {served_by} away from its home {} ({per_home:?}); {routing:#?}",
                    homes[&i]
                );
            }
            calls += 1;
            warm += usize::from(start == "warm");
        }
    }
    let ratio = warm as f64 / calls as f64;
    eprintln!(
        "warm hit ratio over {calls} calls of {FUNCTIONS} functions on three hosts: {ratio:.4}"
    );
    assert!(ratio > 0.95, "{ratio}");
    let spread: BTreeSet<_> = homes.values().collect();
    assert_eq!(spread.len(), 3, "homes on all three hosts");

    // A key revoked through A fails through C.
    w[0].thaw_ok(&["ns", "create", "team"]);
    let key = w[0].new_key("team", "ci", "deploy");
    let listed = |p: &Platform| {
        http()
            .get(format!("{}/v1/functions?namespace=team", p.server))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    until(10, "the new key works on C", || listed(&w[2]) == 200);
    let keys: Value = w[0]
        .api(Method::GET, "/v1/keys?namespace=team")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = keys["keys"][0]["id"].as_str().unwrap();
    let revoked = w[0]
        .api(Method::DELETE, &format!("/v1/keys/{id}"))
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let took = until(5, "the revoked key fails on C", || listed(&w[2]) == 401);
    eprintln!("a key revoked on A failed on C after {took:?}");

    let slow = homed_on(&c, 0, 2, "slow");

    // Async calls spread over the workers; some are seen running on C.
    let job = function_dir(&[("index.mjs", SLEEPER), ("thaw.toml", "concurrency = 8\n")]);
    w[0].deploy(job.path(), "job");
    const JOBS: usize = 30;
    for n in 0..JOBS {
        let r = http()
            .post(format!("{}/v1/functions/job/invoke", w[n % 3].server))
            .bearer_auth(w[0].token())
            .header("x-thaw-invoke", "async")
            .json(&json!({ "queryStringParameters": { "ms": "5000" }, "n": n }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let calls_of = |p: &Platform| -> Vec<Value> {
        let v: Value = p
            .api(Method::GET, "/v1/functions/job/invocations?limit=1000")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["calls"].as_array().unwrap().clone()
    };
    let mut on_c = Vec::new();
    until(60, "an async call running on C", || {
        on_c = calls_of(&w[0])
            .into_iter()
            .filter(|v| v["state"] == "running" && v["worker"] == c.ids[2].as_str())
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        !on_c.is_empty()
    });

    // A slow call homed on C will be in flight through A when C is killed.
    let in_flight = {
        let url = c.workers[0].url(&slow, "/?ms=8000");
        std::thread::spawn(move || {
            let r = http().get(url).send().unwrap();
            (r.status().as_u16(), r.text().unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    c.workers[2].kill();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("worker_lost"), "{body}");

    // Every later call succeeds through the others.
    let w = &c.workers;
    for round in 0..2 {
        for i in 0..FUNCTIONS {
            let (status, _, _, body) = get(&w[(i + round) % 2].url(&format!("f{i}"), "/"));
            assert_eq!(status, 200, "f{i} after C was killed: {body}");
        }
        assert_eq!(get(&w[round].url(&slow, "/")).0, 200);
    }

    // The async calls C was running are run again elsewhere, and every
    // call ends once.
    until(120, "every async call succeeded", || {
        let all = calls_of(&w[1]);
        all.len() == JOBS && all.iter().all(|v| v["state"] == "succeeded")
    });
    for id in &on_c {
        let call: Value = w[1]
            .api(Method::GET, &format!("/v1/invocations/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let history = call["history"].as_array().unwrap();
        assert!(
            history
                .iter()
                .any(|a| a["error"].as_str().unwrap_or("").contains("lost its lease")),
            "{call}"
        );
        assert_eq!(history.last().unwrap()["outcome"], "ok", "{call}");
    }
    eprintln!(
        "{} async calls of the killed worker ran elsewhere",
        on_c.len()
    );

    // haproxy, with the configuration docs/cluster.md gives, in front of
    // the two workers left and the dead one.
    let proxy = Haproxy::start(&c);
    for i in 0..60 {
        let (status, _, _, body) = get(&format!("{}/fn/f{}/", proxy.url, i % FUNCTIONS));
        assert_eq!(status, 200, "through haproxy: {body}");
    }
}

#[test]
fn a_host_cut_off_stops_serving_its_functions_move_and_each_tick_fires_once() {
    let c = Cluster::start();
    let w = &c.workers;
    let every_2s = function_dir(&[
        (
            "index.mjs",
            "export const handler = async (event) => ({ statusCode: 200, body: event.time ?? 'called' });",
        ),
        ("thaw.toml", "[[schedule]]\nname = \"tick\"\ncron = \"*/2 * * * * *\"\n"),
    ]);
    w[0].deploy(every_2s.path(), "ticker");
    let on_b = homed_on(&c, 0, 1, "b");

    // B loses its link: it stops serving before its lease lapses, and its
    // functions move to the others.
    c.hosts.link(1, false);
    let ns = c.hosts.ns(1);
    let inside = format!("http://127.0.0.1:{PORT}");
    let took = until(30, "B refuses calls", || {
        let (status, body) = get_inside(&ns, &format!("{inside}/fn/{on_b}/"));
        status == 503 && body.contains("not_serving")
    });
    eprintln!("B cut off stopped serving after {took:?}");
    assert_eq!(get_inside(&ns, &format!("{inside}/readyz")).0, 503);
    let took = until(30, "B's function served by another worker", || {
        let (status, worker, _, _) = get(&w[0].url(&on_b, "/"));
        status == 200 && worker != c.ids[1]
    });
    eprintln!("B's function moved after {took:?}");

    // Its link back, B serves again.
    c.hosts.link(1, true);
    let took = until(60, "B serves again", || {
        http()
            .get(format!("{}/readyz", w[1].server))
            .send()
            .is_ok_and(|r| r.status() == 200)
            && get(&w[1].url(&on_b, "/")).0 == 200
    });
    eprintln!("B back on the network served again after {took:?}");

    // Over all of that, each tick of the schedule fired on one worker only.
    std::thread::sleep(Duration::from_secs(4));
    let (mut ticks, schedule) = ticks_of(&w[2], "ticker");
    ticks.sort();
    let distinct: BTreeSet<_> = ticks.iter().collect();
    assert!(ticks.len() >= 4, "{ticks:?}");
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    let s = &schedule["schedules"][0];
    assert_eq!(s["fired"].as_u64().unwrap() as usize, ticks.len(), "{s}");
    let span = ((ticks.last().unwrap() - ticks[0]) / 2000 + 1) as u64;
    assert_eq!(
        span,
        ticks.len() as u64 + s["missed"].as_u64().unwrap(),
        "every tick fired or counted missed: {ticks:?} {s}"
    );
}

/// The ticks `name`'s calls were fired for, and its schedule, read with
/// no tick between the two (the schedule keeps ticking while it is read).
fn ticks_of(p: &Platform, name: &str) -> (Vec<i64>, Value) {
    let schedule = |p: &Platform| -> Value {
        p.api(Method::GET, &format!("/v1/functions/{name}/schedules"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    loop {
        let before = schedule(p);
        let list: Value = p
            .api(
                Method::GET,
                &format!("/v1/functions/{name}/invocations?limit=1000"),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        let mut ticks = Vec::new();
        for call in list["calls"].as_array().unwrap() {
            let full: Value = p
                .api(
                    Method::GET,
                    &format!("/v1/invocations/{}", call["id"].as_str().unwrap()),
                )
                .send()
                .unwrap()
                .json()
                .unwrap();
            ticks.push(full["payload"]["scheduled_time_ms"].as_i64().unwrap());
        }
        let after = schedule(p);
        if before == after {
            return (ticks, after);
        }
    }
}

/// haproxy in the test's namespace, on a free loopback port, in front of
/// the cluster's workers, run from the configuration in docs/cluster.md.
struct Haproxy {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(c: &Cluster) -> Haproxy {
        let config = haproxy_config_of(&repo_root().join("docs/cluster.md"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The documented addresses are the example's; these are the test's.
        let mut config = config.replace("bind :80", &format!("bind 127.0.0.1:{port}"));
        for (i, example) in ["10.0.0.11", "10.0.0.12", "10.0.0.13"].iter().enumerate() {
            config = config.replace(
                &format!("{example}:8787"),
                &format!("{}:{PORT}", c.hosts.address(i)),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, &config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output();
        let check = check.expect("haproxy is installed (cargo xtask setup)");
        assert!(
            check.status.success(),
            "docs/cluster.md's haproxy configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        until(20, "haproxy answers", || {
            http()
                .get(format!("{url}/healthz"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        });
        Haproxy {
            url,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The haproxy configuration in `doc`: the fenced block after the line
/// `<!-- haproxy.cfg -->`.
fn haproxy_config_of(doc: &Path) -> String {
    let text = std::fs::read_to_string(doc).unwrap();
    let after = text
        .split_once("<!-- haproxy.cfg -->")
        .expect("docs/cluster.md marks its haproxy configuration")
        .1;
    let block = after.split_once("```").unwrap().1;
    let block = block.split_once('\n').unwrap().1;
    block.split_once("```").unwrap().0.to_string()
}
