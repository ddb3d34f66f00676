use std::io;

/// Everything that can go wrong building, running or tearing down a jail.
///
/// Messages name the step that failed and, where the fix is known, what to
/// do about it. Inside the jail they are printed as one line starting with
/// `thaw-jail: ` before the jail exits with [`crate::SETUP_FAILED`].
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration is wrong; nothing was started.
    #[error("invalid jail config: {0}")]
    Config(String),

    /// The command line of `thaw __jail` is malformed.
    #[error("usage: {0} (expected: __jail --config <json> -- <program> [args...])")]
    Usage(String),

    /// This host lacks something the jail needs.
    #[error("this host cannot run jails: {0}")]
    Unsupported(String),

    /// The instance's cgroup still holds processes from an earlier start.
    #[error(
        "instance `{0}` still has running processes; use a fresh instance id or call cleanup_instance first"
    )]
    InUse(String),

    /// `attach` was called for an instance that already has code attached.
    #[error("instance `{0}` already has code attached; call detach first")]
    AlreadyAttached(String),

    /// `attach` was called for an instance whose jail is not set up.
    #[error("instance `{0}` has no jail (not started yet, or already cleaned up)")]
    NoJail(String),

    /// Processes of the instance survived SIGKILL, or a freeze did not settle.
    #[error("cgroup of instance `{id}`: {what}")]
    Stuck { id: String, what: String },

    /// A system call failed.
    #[error("{what}: {source}{}", hint(source))]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl JailError {
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> Self {
        JailError::Os {
            what: what.into(),
            source,
        }
    }
}

/// What to do about the errors an operator can fix.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (the jail needs root: namespaces, mounts and cgroups need CAP_SYS_ADMIN on the host)"
        }
        Some(libc::ENOSYS) => {
            " (the kernel is too old for the jail: Linux 5.12 or newer is needed)"
        }
        _ => "",
    }
}

/// Shorthand for wrapping an `io::Result` with the step that produced it.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, JailError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, JailError> {
        self.map_err(|e| JailError::os(what(), e))
    }
}
