//! Child processes that never outlive the bench, scratch folders that never
//! outlive it either, and what `/proc` tells about a process.
//!
//! Every child is started through [`Guarded::spawn`]: it gets SIGKILL when
//! the bench dies (`PR_SET_PDEATHSIG`), is killed and reaped when its guard
//! is dropped (an error unwinding the stack included), and is killed by the
//! interrupt handler on Ctrl-C or SIGTERM, which also removes the scratch
//! folders before exiting.

use crate::error::{failed, Context as _, Result};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

static LIVE_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static SCRATCH_DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static INTERRUPT_HANDLER: Once = Once::new();

/// Kills every live child and removes the scratch folders when the bench
/// gets SIGINT or SIGTERM, then exits with status 130.
pub fn install_interrupt_handler() {
    INTERRUPT_HANDLER.call_once(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("[bench] warning: no interrupt handler ({e}); children still die with the bench (PR_SET_PDEATHSIG)");
                return;
            }
        };
        std::thread::spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = match signal(SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("\n[bench] interrupted: stopping every process the bench started");
            kill_all_children();
            for dir in std::mem::take(&mut *SCRATCH_DIRS.lock().unwrap()) {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        });
    });
}

fn kill_all_children() {
    let pids = std::mem::take(&mut *LIVE_CHILDREN.lock().unwrap());
    for pid in pids {
        // SAFETY: plain kill(2) on a child this process started and has not
        // reaped (reaped children leave LIVE_CHILDREN first).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// A child process that is killed and reaped when dropped.
pub struct Guarded {
    child: Child,
    name: String,
    reaped: bool,
    /// Where the child's output goes, to explain a failure.
    log: Option<PathBuf>,
}

impl Guarded {
    /// Starts `cmd`. The child gets SIGKILL if the thread that spawned it
    /// ends (`PR_SET_PDEATHSIG` follows the thread, not the process), so
    /// spawn from a thread that outlives the child: the main thread, or a
    /// worker that waits for its child before returning.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Guarded> {
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context(|| format!("could not start {name} ({:?})", cmd.get_program()))?;
        LIVE_CHILDREN.lock().unwrap().insert(child.id());
        Ok(Guarded {
            child,
            name: name.to_string(),
            reaped: false,
            log: None,
        })
    }

    /// Starts `cmd` with no input and its stdout and stderr in the file
    /// `log` (a pipe nobody reads could fill up and stall a chatty server).
    pub fn spawn_logged(cmd: &mut Command, name: &str, log: &Path) -> Result<Guarded> {
        let out =
            std::fs::File::create(log).context(|| format!("could not create {}", log.display()))?;
        let err = out
            .try_clone()
            .context(|| format!("could not reopen {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut g = Guarded::spawn(cmd, name)?;
        g.log = Some(log.to_path_buf());
        Ok(g)
    }

    /// The last lines the child wrote to its log, joined with ` | `.
    pub fn log_tail(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| last_lines(&t, 5))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status, if the child has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.forget();
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits for the child to end by itself, at most `limit`; kills it past
    /// that.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(failed(format!(
                    "{} did not exit within {limit:?} and was killed",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Asks the child to stop with `signal`, waits up to `grace`, then
    /// kills it.
    pub fn stop(&mut self, signal: i32, grace: Duration) {
        if self.reaped {
            return;
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }

    fn forget(&mut self) {
        self.reaped = true;
        LIVE_CHILDREN.lock().unwrap().remove(&self.child.id());
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary folder, removed when dropped or when the bench is
/// interrupted.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(prefix: &str) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context(|| "could not create a temporary folder".to_string())?;
        SCRATCH_DIRS
            .lock()
            .unwrap()
            .insert(dir.path().to_path_buf());
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `relative` inside the folder, creating parents.
    pub fn write(&self, relative: &str, content: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .context(|| format!("could not create {}", parent.display()))?;
        }
        std::fs::write(&path, content).context(|| format!("could not write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH_DIRS.lock().unwrap().remove(self.dir.path());
    }
}

/// Gives `cmd` only PATH and HOME, like thaw gives its runtimes: a
/// variable such as NODE_EXTRA_CA_CERTS or NODE_OPTIONS would otherwise
/// add its own cost to every start of the systems compared.
pub fn minimal_env(cmd: &mut Command) -> &mut Command {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    cmd.env_clear().env("PATH", path).env("HOME", "/tmp")
}

/// A loopback port that was free a moment ago, for servers that must be
/// told their port (workerd, Deno).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context(|| "could not bind 127.0.0.1:0".into())?;
    Ok(l.local_addr()
        .context(|| "could not read a bound address".into())?
        .port())
}

/// Connects to `addr` as soon as something listens there: tries again
/// every 100 µs, so the time this returns is within 0.1 ms of the moment
/// the server began to accept. Fails if the child exits or `limit` passes.
pub fn connect_when_listening(
    addr: SocketAddr,
    child: &mut Guarded,
    limit: Duration,
) -> Result<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).context(|| format!("could not connect to {addr}")),
        }
        if let Some(status) = child.exited() {
            return Err(failed(format!(
                "{} exited ({status}) before listening on {addr}: {}",
                child.name,
                child.log_tail()
            )));
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "{} did not listen on {addr} within {limit:?}",
                child.name
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Processes whose parent is `pid`, from `/proc/*/stat`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found: Vec<u32> = all_processes()
        .into_iter()
        .filter(|(_, parent)| *parent == pid)
        .map(|(p, _)| p)
        .collect();
    found.sort_unstable();
    found
}

/// Every process below `pid` in the process tree, nearest first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all = all_processes();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let mut kids: Vec<u32> = all
            .iter()
            .filter(|(_, pp)| *pp == parent)
            .map(|(p, _)| *p)
            .collect();
        kids.sort_unstable();
        found.extend(kids);
        i += 1;
    }
    found.remove(0);
    found
}

/// (pid, parent pid) of every process.
fn all_processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. They are: state, ppid, ...
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time a process has used so far, user and system, all its threads
/// (`/proc/PID/stat`, fields 14 and 15).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf(3) reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / per_second as f64,
    ))
}

/// Proportional set size: private pages plus an equal share of the pages
/// shared with other processes (`/proc/PID/smaps_rollup`).
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A process's argument vector.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    nul_separated(&format!("/proc/{pid}/cmdline"))
}

/// A process's environment, as `NAME=value` strings.
pub fn environ(pid: u32) -> Option<Vec<String>> {
    nul_separated(&format!("/proc/{pid}/environ"))
}

pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

fn nul_separated(path: &str) -> Option<Vec<String>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_children_and_their_memory() {
        let mut child = Guarded::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let me = std::process::id();
        assert!(children_of(me).contains(&child.pid()));
        assert!(pss_bytes(child.pid()).unwrap() > 0);
        assert_eq!(cmdline(child.pid()).unwrap(), ["sleep", "30"]);
        let spin = Instant::now();
        while cpu_time(me).unwrap() < Duration::from_millis(20)
            && spin.elapsed() < Duration::from_secs(5)
        {
            std::hint::black_box(spin.elapsed());
        }
        assert!(cpu_time(me).unwrap() >= Duration::from_millis(20));
        child.kill();
        assert!(!children_of(me).contains(&child.pid()));
    }
}
