//! Giving up root: capabilities, supplementary groups, uid and gid,
//! no_new_privs. Runs inside the jail, after everything that needs root.

use crate::error::Context as _;
use crate::sys::{self, cvt};
use crate::JailError;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Becomes `uid`/`gid` with no supplementary groups, no capabilities of any
/// kind (bounding, ambient, effective, permitted, inheritable) and
/// no_new_privs set, so no later execve (setuid binary, file capabilities)
/// can give any of it back.
pub(crate) fn drop_to(uid: u32, gid: u32) -> Result<(), JailError> {
    // The bounding set can only be changed while we still hold
    // CAP_SETPCAP, so it goes first. Dropping up to EINVAL covers
    // capabilities this code has never heard of.
    for cap in 0..64 {
        match sys::prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => {
                return Err(JailError::os(
                    format!("drop capability {cap} from the bounding set"),
                    e,
                ))
            }
        }
    }
    match sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        // Kernels before 4.3 have no ambient set, hence nothing to clear.
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
            return Err(JailError::os("clear ambient capabilities", e))
        }
        _ => {}
    }
    // SAFETY: plain syscalls; setgroups with size 0 ignores the pointer.
    unsafe {
        cvt(libc::setgroups(0, std::ptr::null())).context(|| "drop supplementary groups".into())?;
        cvt(libc::setresgid(gid, gid, gid)).context(|| format!("setresgid {gid}"))?;
        cvt(libc::setresuid(uid, uid, uid)).context(|| format!("setresuid {uid}"))?;
    }
    // Leaving uid 0 already cleared effective and permitted; clear all three
    // sets explicitly so nothing depends on securebits.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capset v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r < 0 {
        return Err(JailError::os(
            "clear capabilities",
            std::io::Error::last_os_error(),
        ));
    }
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).context(|| "set no_new_privs".into())?;
    Ok(())
}
