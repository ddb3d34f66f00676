//! `thaw-agent`: PID 1 of a thaw microVM guest.
//!
//! It mounts /proc, /sys, /dev and /tmp, loads the kernel modules listed in
//! `/etc/thaw-agent.conf` (virtio transport, console, block, filesystems),
//! finds the two virtio-serial ports by name, starts Node with the runtime
//! shim, and then relays bytes between the protocol port and the shim over a
//! socketpair, so the shim sees an ordinary stream socket on fd 3 exactly as
//! under the `process` driver. A second port carries the agent's own control
//! lines (set the clock, mount the code, ping). When the shim exits the
//! agent powers the VM off.
//!
//! Why a relay instead of handing the port to Node: on a virtio-serial port a
//! read returns 0 while no host is connected (before the host connects, and
//! between a snapshot and the restored VM's reconnection), which the shim
//! would take for end of stream and exit. The agent treats it as "host away"
//! and keeps the shim's side open across reconnects.
//!
//! The agent owns nothing else: it knows the protocol only as bytes, never
//! parses the shim's frames, and starts no threads. See docs/microvm.md.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const CONFIG_PATH: &str = "/etc/thaw-agent.conf";
/// The fd the shim reads its frames from (the shim's THAW_FD).
const SHIM_FD: RawFd = 3;
/// Bytes buffered in each direction before the agent stops reading the
/// other side (back-pressure instead of unbounded memory).
const BUFFER_CAP: usize = 1 << 20;
/// How long to wait before looking again at a port whose host is away: poll
/// reports POLLHUP at once on such a port, so it cannot be waited on.
const HOST_AWAY_RETRY: Duration = Duration::from_millis(2);
const PORT_WAIT: Duration = Duration::from_secs(30);
const VERSION: &str = concat!("thaw-agent/", env!("CARGO_PKG_VERSION"));

fn main() {
    let mut shutdown = Shutdown::PowerOff;
    match run(&mut shutdown) {
        Ok(status) => log(&format!("the runtime exited ({status}); {shutdown}")),
        Err(e) => log(&format!("fatal: {e}; {shutdown}")),
    }
    end_vm(shutdown);
}

/// How the agent ends the VM (QEMU runs with `-no-reboot`, so either ends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// ACPI power-off (a kernel with ACPI).
    PowerOff,
    /// A reset: a kernel without ACPI cannot power off (the call halts the
    /// CPU for good), but it can reset the machine.
    Reboot,
}

impl std::fmt::Display for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shutdown::PowerOff => "powering off",
            Shutdown::Reboot => "resetting the VM",
        })
    }
}

type Result<T> = std::result::Result<T, String>;

fn log(message: &str) {
    // fd 2 is /dev/console for PID 1.
    let line = format!("{VERSION}: {message}\n");
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"))
}

struct Config {
    modules: Vec<String>,
    port: String,
    control_port: String,
    exec: String,
    args: Vec<String>,
    env: Vec<String>,
    shutdown: Shutdown,
}

impl Config {
    fn parse(text: &str) -> Result<Config> {
        let mut config = Config {
            modules: Vec::new(),
            port: "thaw".into(),
            control_port: "thaw.ctl".into(),
            exec: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            shutdown: Shutdown::PowerOff,
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let value = value.to_string();
            match key {
                "module" => config.modules.push(value),
                "port" => config.port = value,
                "control_port" => config.control_port = value,
                "exec" => config.exec = value,
                "arg" => config.args.push(value),
                "env" => config.env.push(value),
                "shutdown" => {
                    config.shutdown = match value.as_str() {
                        "poweroff" => Shutdown::PowerOff,
                        "reboot" => Shutdown::Reboot,
                        other => {
                            return Err(format!(
                                "{CONFIG_PATH}: shutdown {other:?}: poweroff or reboot"
                            ))
                        }
                    }
                }
                other => return Err(format!("{CONFIG_PATH}: unknown setting {other:?}")),
            }
        }
        if config.exec.is_empty() {
            return Err(format!("{CONFIG_PATH}: no `exec` line"));
        }
        Ok(config)
    }
}

fn run(shutdown: &mut Shutdown) -> Result<String> {
    mount_basics()?;
    let text = fs::read_to_string(CONFIG_PATH).map_err(|e| format!("{CONFIG_PATH}: {e}"))?;
    let config = Config::parse(&text)?;
    *shutdown = config.shutdown;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for module in &config.modules {
        load_module(module, &cmdline)?;
    }
    let proto = open_port(&config.port)?;
    let control = open_port(&config.control_port)?;

    // SIGCHLD arrives through a signalfd; block it before the child exists.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &mask, &mut old_mask);
    }
    let sigfd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sigfd < 0 {
        return Err(os_err("signalfd"));
    }
    let sigfd = unsafe { OwnedFd::from_raw_fd(sigfd) };

    let mut pair = [0; 2];
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(os_err("socketpair"));
    }
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    set_nonblocking(ours.as_raw_fd())?;
    let shim_pid = spawn(&config, theirs.as_raw_fd(), &old_mask)?;
    drop(theirs);

    Relay::new(proto, control, ours, sigfd, shim_pid).run()
}

fn mount_basics() -> Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nodev, "")?;
    mount("sysfs", "/sys", "sysfs", nodev, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    mount("tmpfs", "/dev/shm", "tmpfs", nodev, "mode=1777")?;
    Ok(())
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let _ = fs::create_dir_all(target);
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 {
        return Err(os_err(&format!("mount {source} on {target} ({fstype})")));
    }
    Ok(())
}

/// Loads one module with `finit_module`, passing it the `name.key=value`
/// parameters of the kernel command line as modprobe would.
fn load_module(path: &str, cmdline: &str) -> Result<()> {
    let file = fs::File::open(path).map_err(|e| format!("module {path}: {e}"))?;
    let name = module_name(path);
    let params = cstr(&module_params(cmdline, &name))?;
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if r != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("loading module {path}: {err}"));
        }
    }
    Ok(())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.replace('-', "_")
}

fn module_params(cmdline: &str, module: &str) -> String {
    let prefix = format!("{module}.");
    cmdline
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Finds the virtio-serial port the host named `name` (udev would make
/// /dev/virtio-ports/<name>; there is no udev here) and opens it.
fn open_port(name: &str) -> Result<OwnedFd> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Some(dev) = find_port(name) {
            let path = cstr(&dev)?;
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            };
            if fd >= 0 {
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(format!("opening {dev} (port {name}): {err}"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no virtio-serial port named {name:?} after {PORT_WAIT:?}: is the \
                 virtserialport device given to QEMU and virtio_console loaded?"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn find_port(name: &str) -> Option<String> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Some(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    None
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os_err("fcntl O_NONBLOCK"));
    }
    Ok(())
}

/// Starts the runtime with `channel` as its fd 3, in its own session, with
/// only the environment of the config file.
fn spawn(config: &Config, channel: RawFd, old_mask: &libc::sigset_t) -> Result<libc::pid_t> {
    // Everything the child needs is built before fork: no allocation after.
    let exec = cstr(&config.exec)?;
    let mut argv_owned = vec![exec.clone()];
    for arg in &config.args {
        argv_owned.push(cstr(arg)?);
    }
    let envp_owned = config
        .env
        .iter()
        .map(|e| cstr(e))
        .collect::<Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envp_owned.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let root = cstr("/")?;

    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut());
            libc::setsid();
            libc::chdir(root.as_ptr());
            if channel == SHIM_FD {
                libc::fcntl(SHIM_FD, libc::F_SETFD, 0);
            } else {
                libc::dup2(channel, SHIM_FD);
            }
            libc::execve(exec.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let msg = b"thaw-agent: exec of the runtime failed\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    Ok(pid)
}

/// One virtio-serial port as the relay sees it.
struct Port {
    fd: OwnedFd,
    /// Set while the host is away: the port is left out of poll until then.
    away_until: Option<Instant>,
}

impl Port {
    fn new(fd: OwnedFd) -> Port {
        Port {
            fd,
            away_until: None,
        }
    }

    fn host_away(&mut self) {
        self.away_until = Some(Instant::now() + HOST_AWAY_RETRY);
    }

    fn pollable(&mut self, now: Instant) -> bool {
        match self.away_until {
            Some(t) if t > now => false,
            _ => {
                self.away_until = None;
                true
            }
        }
    }
}

enum Io {
    Done,
    WouldBlock,
    Closed,
    Failed(io::Error),
}

fn read_into(fd: RawFd, buf: &mut Vec<u8>, room: usize) -> Io {
    let mut chunk = [0u8; 64 * 1024];
    let want = room.min(chunk.len());
    let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), want) };
    match n {
        0 => Io::Closed,
        n if n > 0 => {
            buf.extend_from_slice(&chunk[..n as usize]);
            Io::Done
        }
        _ => classify(io::Error::last_os_error()),
    }
}

fn write_from(fd: RawFd, buf: &mut Vec<u8>) -> Io {
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n >= 0 {
        buf.drain(..n as usize);
        return Io::Done;
    }
    classify(io::Error::last_os_error())
}

fn classify(err: io::Error) -> Io {
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Io::WouldBlock,
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => Io::Closed,
        _ => Io::Failed(err),
    }
}

struct Relay {
    proto: Port,
    control: Port,
    shim: OwnedFd,
    shim_open: bool,
    sigfd: OwnedFd,
    shim_pid: libc::pid_t,
    to_shim: Vec<u8>,
    to_host: Vec<u8>,
    control_in: Vec<u8>,
    control_out: Vec<u8>,
    /// Bytes the shim has written so far, and the length header of its
    /// first frame: the host asks (`ping`) whether the runtime has
    /// announced itself, and the agent answers without parsing frames.
    from_shim: usize,
    first_header: Vec<u8>,
}

impl Relay {
    fn new(
        proto: OwnedFd,
        control: OwnedFd,
        shim: OwnedFd,
        sigfd: OwnedFd,
        shim_pid: libc::pid_t,
    ) -> Relay {
        Relay {
            proto: Port::new(proto),
            control: Port::new(control),
            shim,
            shim_open: true,
            sigfd,
            shim_pid,
            to_shim: Vec::new(),
            to_host: Vec::new(),
            control_in: Vec::new(),
            control_out: Vec::new(),
            from_shim: 0,
            first_header: Vec::new(),
        }
    }

    fn run(mut self) -> Result<String> {
        loop {
            let now = Instant::now();
            let proto_on = self.proto.pollable(now);
            let control_on = self.control.pollable(now);
            let mut fds = [
                pollfd(
                    proto_on.then(|| self.proto.fd.as_raw_fd()),
                    self.to_shim.len() < BUFFER_CAP,
                    !self.to_host.is_empty(),
                ),
                pollfd(
                    // A closed channel would report POLLHUP forever.
                    self.shim_open.then(|| self.shim.as_raw_fd()),
                    self.shim_open && self.to_host.len() < BUFFER_CAP,
                    !self.to_shim.is_empty(),
                ),
                pollfd(
                    control_on.then(|| self.control.fd.as_raw_fd()),
                    true,
                    !self.control_out.is_empty(),
                ),
                pollfd(Some(self.sigfd.as_raw_fd()), true, false),
            ];
            let timeout = if proto_on && control_on {
                -1
            } else {
                HOST_AWAY_RETRY.as_millis() as libc::c_int
            };
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(format!("poll: {err}"));
            }
            let [proto, shim, control, sig] = fds.map(|f| f.revents);

            if proto != 0 {
                self.service_proto(proto);
            }
            if shim != 0 {
                self.service_shim(shim);
            }
            if control != 0 {
                self.service_control(control);
            }
            if sig != 0 {
                if let Some(status) = self.reap() {
                    self.flush_to_host();
                    return Ok(status);
                }
            }
        }
    }

    fn service_proto(&mut self, revents: libc::c_short) {
        let fd = self.proto.fd.as_raw_fd();
        if revents & libc::POLLIN != 0 {
            let room = BUFFER_CAP - self.to_shim.len();
            match read_into(fd, &mut self.to_shim, room) {
                Io::Closed => self.proto.host_away(),
                Io::Failed(e) => {
                    log(&format!("reading the protocol port: {e}"));
                    self.proto.host_away();
                }
                _ => {}
            }
        }
        if revents & libc::POLLOUT != 0 && !self.to_host.is_empty() {
            if let Io::Failed(e) = write_from(fd, &mut self.to_host) {
                log(&format!("writing the protocol port: {e}"));
                self.proto.host_away();
            }
        }
        if revents & libc::POLLHUP != 0 && revents & libc::POLLIN == 0 {
            self.proto.host_away();
        }
    }

    fn service_shim(&mut self, revents: libc::c_short) {
        let fd = self.shim.as_raw_fd();
        if revents & (libc::POLLIN | libc::POLLHUP) != 0 && self.shim_open {
            let room = BUFFER_CAP - self.to_host.len();
            let before = self.to_host.len();
            match read_into(fd, &mut self.to_host, room) {
                Io::Closed | Io::Failed(_) => {
                    // A runtime that closed its channel can never answer
                    // again: end it, and the VM with it.
                    self.shim_open = false;
                    unsafe { libc::kill(self.shim_pid, libc::SIGKILL) };
                }
                _ => {}
            }
            let new = &self.to_host[before..];
            if self.first_header.len() < 4 {
                let take = (4 - self.first_header.len()).min(new.len());
                self.first_header.extend_from_slice(&new[..take]);
            }
            self.from_shim += self.to_host.len() - before;
        }
        if revents & libc::POLLOUT != 0 && !self.to_shim.is_empty() {
            match write_from(fd, &mut self.to_shim) {
                Io::Closed | Io::Failed(_) => self.to_shim.clear(),
                _ => {}
            }
        }
    }

    fn service_control(&mut self, revents: libc::c_short) {
        let fd = self.control.fd.as_raw_fd();
        if revents & libc::POLLIN != 0 {
            match read_into(fd, &mut self.control_in, 64 * 1024) {
                Io::Closed | Io::Failed(_) => self.control.host_away(),
                _ => {}
            }
            while let Some(end) = self.control_in.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.control_in.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).trim().to_string();
                let ready = self.runtime_ready();
                let reply = match control_command(&line, ready) {
                    Ok(reply) => format!("ok {reply}\n"),
                    Err(e) => format!("err {}\n", e.replace('\n', " ")),
                };
                self.control_out.extend_from_slice(reply.as_bytes());
            }
            if self.control_in.len() > 64 * 1024 {
                self.control_in.clear();
            }
        }
        if revents & libc::POLLOUT != 0 && !self.control_out.is_empty() {
            if let Io::Failed(_) = write_from(fd, &mut self.control_out) {
                self.control.host_away();
            }
        }
        if revents & libc::POLLHUP != 0 && revents & libc::POLLIN == 0 {
            self.control.host_away();
        }
    }

    fn runtime_ready(&self) -> bool {
        match <[u8; 4]>::try_from(&self.first_header[..]) {
            Ok(len) => self.from_shim >= 4 + u32::from_be_bytes(len) as usize,
            Err(_) => false,
        }
    }

    /// Reaps every exited child (PID 1 inherits orphans); returns the shim's
    /// exit status once it is gone.
    fn reap(&mut self) -> Option<String> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while unsafe { libc::read(self.sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) }
            > 0
        {}
        let mut shim_status = None;
        loop {
            let mut status = 0;
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == self.shim_pid {
                shim_status = Some(if libc::WIFEXITED(status) {
                    format!("exit code {}", libc::WEXITSTATUS(status))
                } else {
                    format!("signal {}", libc::WTERMSIG(status))
                });
            }
        }
        shim_status
    }

    /// The shim's last frames (a crash report) should reach the host: read
    /// what it left in the socket and give the port a second to take it.
    fn flush_to_host(&mut self) {
        while self.shim_open {
            match read_into(self.shim.as_raw_fd(), &mut self.to_host, BUFFER_CAP) {
                Io::Done => {}
                _ => break,
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.to_host.is_empty() && Instant::now() < deadline {
            let mut fds = [pollfd(Some(self.proto.fd.as_raw_fd()), false, true)];
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            if fds[0].revents & libc::POLLOUT == 0 {
                continue;
            }
            if let Io::Failed(_) | Io::Closed =
                write_from(self.proto.fd.as_raw_fd(), &mut self.to_host)
            {
                break;
            }
        }
    }
}

fn pollfd(fd: Option<RawFd>, read: bool, write: bool) -> libc::pollfd {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd: fd.unwrap_or(-1),
        events,
        revents: 0,
    }
}

/// One line of the control port. Replies are `ok <text>` or `err <text>`.
///
/// - `ping` → `ok thaw-agent/<version> runtime=ready|starting` (ready once
///   the runtime has written its first whole frame, `ready`)
/// - `clock <unix-ns>` sets the wall clock (stale after a restore)
/// - `mount <source> <target> <fstype>` mounts read-only, nodev, nosuid
fn control_command(line: &str, runtime_ready: bool) -> Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["ping"] => {
            let state = if runtime_ready { "ready" } else { "starting" };
            Ok(format!("{VERSION} runtime={state}"))
        }
        ["clock", ns] => {
            let ns: u128 = ns.parse().map_err(|_| format!("clock: bad time {ns:?}"))?;
            let ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
                return Err(os_err("clock_settime"));
            }
            Ok(String::new())
        }
        ["mount", source, target, fstype] => {
            flush_block_cache(source);
            mount(
                source,
                target,
                fstype,
                libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
                "",
            )?;
            Ok(String::new())
        }
        [] => Err("empty command".into()),
        _ => Err(format!("unknown command {line:?}")),
    }
}

/// The code drive's backing file is swapped by the host after a restore;
/// blocks the kernel read from the placeholder before (a partition scan)
/// must not be served from cache.
fn flush_block_cache(device: &str) {
    if let Ok(file) = fs::File::open(device) {
        const BLKFLSBUF: libc::c_ulong = 0x1261;
        unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF, 0) };
    }
}

fn end_vm(shutdown: Shutdown) -> ! {
    unsafe {
        libc::sync();
        if shutdown == Shutdown::PowerOff {
            libc::reboot(libc::RB_POWER_OFF);
        }
        // A reset ends QEMU too, as it runs with -no-reboot.
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_params_follow_modprobe() {
        assert_eq!(
            module_name("/lib/modules/thaw/virtio-mmio.ko"),
            "virtio_mmio"
        );
        assert_eq!(
            module_params(
                "quiet virtio_mmio.device=4K@0x1000:5 virtio.x=1 virtio_mmio.y=2",
                "virtio_mmio"
            ),
            "device=4K@0x1000:5 y=2"
        );
    }

    #[test]
    fn config_parses_and_rejects_unknown_settings() {
        let c =
            Config::parse("# c\nmodule /a.ko\nexec /usr/bin/node\narg /s.mjs\nenv A=b c\nport p\n")
                .unwrap();
        assert_eq!(c.modules, ["/a.ko"]);
        assert_eq!(c.args, ["/s.mjs"]);
        assert_eq!(c.env, ["A=b c"]);
        assert_eq!(c.port, "p");
        assert_eq!(c.shutdown, Shutdown::PowerOff);
        let c = Config::parse("exec /x\nshutdown reboot\n").unwrap();
        assert_eq!(c.shutdown, Shutdown::Reboot);
        assert!(Config::parse("exec /x\nshutdown later\n").is_err());
        assert!(Config::parse("bogus 1\nexec /x\n").is_err());
        assert!(Config::parse("arg x\n").is_err());
    }
}
