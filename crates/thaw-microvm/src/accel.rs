//! Choosing KVM or TCG by trying, never by guessing: some hosts have a
//! `/dev/kvm` that cannot run a standard Linux guest (nested or
//! paravirtual KVM), and QEMU then aborts or hangs. The probe boots the
//! real image under KVM with a deadline and keeps KVM only if the runtime
//! announced itself. The answer is cached per host kernel, QEMU version
//! and guest kernel, so the probe runs once.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::image::ImageInfo;
use crate::vm::{Accel, Vm, VmOptions};

/// How long a KVM boot may take before the probe gives up on KVM. A
/// working KVM boots this image in well under a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the probe decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
    pub accel: Accel,
    pub reason: String,
    /// The host this answer holds for.
    pub key: String,
    /// Read from the cache rather than probed now.
    #[serde(skip)]
    pub cached: bool,
}

/// Picks the accelerator for `image` on this host; `cache_file` keeps the
/// answer (e.g. `<data>/images/accel.json`). `opts` gives QEMU's path and
/// the run directory; its `accel` is ignored. The caller tells the user
/// when the answer is TCG (the reason is in [`AccelProbe::reason`]).
pub async fn probe_accel(image: &ImageInfo, opts: &VmOptions, cache_file: &Path) -> AccelProbe {
    let key = host_key(opts, image);
    if let Ok(bytes) = fs::read(cache_file) {
        if let Ok(mut cached) = serde_json::from_slice::<AccelProbe>(&bytes) {
            if cached.key == key {
                cached.cached = true;
                return cached;
            }
        }
    }
    let (accel, reason) = match kvm_usable() {
        Err(why) => (Accel::Tcg, why),
        Ok(()) => match try_kvm(image, opts).await {
            Ok(()) => (
                Accel::Kvm,
                "a probe VM booted to the runtime under KVM".to_string(),
            ),
            Err(why) => (
                Accel::Tcg,
                format!("/dev/kvm is there but a probe VM did not boot under it: {why}"),
            ),
        },
    };
    let probe = AccelProbe {
        accel,
        reason,
        key,
        cached: false,
    };
    if let Some(parent) = cache_file.parent() {
        let _ = fs::create_dir_all(parent);
    }
    let _ = fs::write(
        cache_file,
        serde_json::to_vec_pretty(&probe).expect("a probe serialises"),
    );
    probe
}

fn kvm_usable() -> Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened: {e}"))
}

async fn try_kvm(image: &ImageInfo, opts: &VmOptions) -> Result<(), String> {
    let mut opts = opts.clone();
    opts.accel = Accel::Kvm;
    opts.timeout = PROBE_TIMEOUT;
    let attempt = async {
        let mut vm = Vm::boot(image, &opts)
            .await
            .map_err(|e| short_reason(&e.to_string()))?;
        let mut channel = vm.take_channel().ok_or("no protocol channel")?;
        let mut len = [0u8; 4];
        channel
            .read_exact(&mut len)
            .await
            .map_err(|e| format!("reading the ready frame: {e}"))?;
        let mut frame = vec![0u8; (u32::from_be_bytes(len) as usize).min(1 << 20)];
        channel
            .read_exact(&mut frame)
            .await
            .map_err(|e| format!("reading the ready frame: {e}"))?;
        if !String::from_utf8_lossy(&frame).contains("\"ready\"") {
            return Err("the first frame was not `ready`".to_string());
        }
        Ok(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no runtime within {PROBE_TIMEOUT:?}")),
    }
}

/// The first line of a launch error, and QEMU's own last word when the
/// error carries its log (where the real reason usually is: "failed to
/// set MSR ..." says more than the closed socket that followed).
fn short_reason(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").to_string();
    let qemu_said = s
        .split_once("--- qemu.log\n")
        .map(|(_, rest)| rest.split("--- guest console").next().unwrap_or(""))
        .and_then(|log| log.lines().rev().find(|l| !l.trim().is_empty()))
        .map(str::trim);
    match qemu_said {
        Some(last) if !first.contains(last) => format!("{first} (QEMU: {last})"),
        _ => first,
    }
}

fn host_key(opts: &VmOptions, image: &ImageInfo) -> String {
    let uname = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu = Command::new(&opts.qemu)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or("")
        .to_string();
    format!(
        "host {} | {qemu} | {cpu} | guest {}",
        uname.trim(),
        image.kernel_release
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_failure_says_what_qemu_said() {
        let err = "QEMU: QMP: reading: Connection reset by peer\n--- qemu.log\nqemu: error: failed to set MSR 0x10a to 0x0\n\n--- guest console\n";
        assert_eq!(
            short_reason(err),
            "QEMU: QMP: reading: Connection reset by peer (QEMU: qemu: error: failed to set MSR 0x10a to 0x0)"
        );
        assert_eq!(short_reason("no log here\nmore"), "no log here");
    }
}
