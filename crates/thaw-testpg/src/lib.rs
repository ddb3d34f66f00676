//! A real PostgreSQL server for thaw's tests, made from the host's
//! packages (Debian's `postgresql`) in a scratch directory.
//!
//! [`TestPg::start`] runs `initdb` and `postgres` (as the `postgres` user
//! when the tests run as root, which PostgreSQL requires), listening on a
//! Unix socket in the scratch directory and, when asked, on TCP addresses
//! too (tests whose workers sit in network namespaces). The server goes
//! with the value: dropped, it is shut down and its directory removed.
//! [`shared`] is one server for a whole test binary, started at first use
//! and stopped when the test process ends, however it ends: the postmaster
//! gets `SIGQUIT` from the kernel when its parent goes (`PR_SET_PDEATHSIG`).
//! Each test takes a database of its own ([`TestPg::new_database`]).
//!
//! Tests use it, and so does `thaw bench`'s cluster section; `thaw up`
//! never does: a cluster's database is the operator's.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running scratch server.
pub struct TestPg {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Where the server's files go: a fresh directory under the system's
/// temporary directory, named so that leftovers can be found.
const DIR_PREFIX: &str = "thaw-testpg-";

/// The directory of PostgreSQL's server programs: the newest installed
/// major version (Debian keeps them in `/usr/lib/postgresql/<major>/bin`),
/// or `THAW_TEST_PG_BIN`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("THAW_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL server here (/usr/lib/postgresql: {e}): run `cargo xtask setup`")
        })?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server in /usr/lib/postgresql: run `cargo xtask setup`".into()
    })
}

/// The user and group the server runs as: `postgres` when we are root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam takes a valid C string; the returned pointer is read
    // at once, before any other call could reuse its static storage.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, points at a passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Removes scratch directories of servers whose tests are gone.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        // SAFETY: signal 0 only checks that a process exists.
        let alive = |pid: i32| unsafe { libc::kill(pid, 0) } == 0;
        let server = std::fs::read_to_string(e.path().join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        // The directory's name carries the pid of the test process that
        // made it: while that process lives, the directory is its own.
        let owner = name
            .to_string_lossy()
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next()?.parse::<i32>().ok());
        if !owner.is_some_and(alive) && !server.is_some_and(alive) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl TestPg {
    /// A new server listening on its Unix socket and, for each address in
    /// `tcp` (such as `10.77.0.1`), on TCP at [`TestPg::port`]. Every
    /// client is trusted: the server lives in a private directory for the
    /// length of a test.
    pub fn start(tcp: &[&str]) -> Result<TestPg, String> {
        remove_leftovers();
        let bin = bin_dir()?;
        let owner = server_user();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut pg = TestPg {
            dir: dir.clone(),
            port: 20_000 + rand::random::<u16>() % 30_000,
            child: None,
        };
        chown(&dir, owner)?;
        let as_server = |cmd: &mut Command| {
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
                // initdb reads its own directory: it must not start in
                // root's home, which the postgres user cannot enter.
                cmd.current_dir(&dir);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_server(&mut initdb);
        let out = initdb
            .output()
            .map_err(|e| format!("{}: {e}", bin.join("initdb").display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !tcp.is_empty() {
            // Clients on the test's own networks (namespaces joined by a
            // bridge) are trusted like local ones.
            let hba = dir.join("data").join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
            rules.push_str("host all all 0.0.0.0/0 trust\n");
            std::fs::write(&hba, rules).map_err(|e| e.to_string())?;
        }
        let listen = tcp.join(",");
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        chown(&dir.join("server.log"), owner)?;
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(&dir)
            .arg("-p")
            .arg(pg.port.to_string())
            .args(["-c", &format!("listen_addresses={listen}")])
            // Speed over durability: the data lives as long as the test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        as_server(&mut server);
        // SAFETY: prctl with PR_SET_PDEATHSIG is async-signal-safe, and is
        // all that runs between fork and exec here.
        unsafe {
            server.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        pg.child = Some(
            server
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.join("postgres").display()))?,
        );
        pg.wait_ready()?;
        Ok(pg)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "postgres exited ({status}) before it was ready: {}",
                        self.log_tail()
                    ));
                }
            }
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres not ready after 60 s: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The TCP port (and the Unix socket's number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` over the Unix socket.
    pub fn url(&self, database: &str) -> String {
        let socket_dir: String = self
            .dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_string(),
                b => (b as char).to_string(),
            })
            .collect();
        format!(
            "postgresql://postgres@{socket_dir}:{}/{database}",
            self.port
        )
    }

    /// A URL for `database` over TCP at `address`.
    pub fn tcp_url(&self, address: &str, database: &str) -> String {
        format!("postgresql://postgres@{address}:{}/{database}", self.port)
    }

    /// Makes a new empty database; returns its name.
    pub fn new_database(&self) -> String {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("the scratch server answers");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE");
        name
    }

    /// A new empty database's URL over the Unix socket.
    pub fn new_database_url(&self) -> String {
        self.url(&self.new_database())
    }

    /// Stops the server at once (`SIGKILL` of the postmaster), as a crash
    /// or a lost host would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown: clients are cut off, the server exits cleanly.
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server for the whole test process, started by the first test that
/// asks. It is started from a thread that lives as long as the process,
/// because the kernel's parent-death signal follows the thread that forked
/// the server, and a test's own thread ends with the test.
pub fn shared() -> &'static TestPg {
    static SHARED: OnceLock<TestPg> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("thaw-testpg".into())
            .spawn(move || {
                let _ = tx.send(TestPg::start(&[]));
                loop {
                    std::thread::park();
                }
            })
            .expect("a thread for the scratch server");
        match rx.recv().expect("the scratch server thread answers") {
            Ok(pg) => pg,
            Err(e) => panic!("cannot start a scratch PostgreSQL server: {e}"),
        }
    })
}
