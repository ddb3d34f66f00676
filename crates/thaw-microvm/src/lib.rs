//! The host side of thaw's microVMs: it builds the guest image (a kernel
//! compiled from Debian's source with thaw's config, or Debian's cloud
//! kernel, and an initramfs with `thaw-agent` as PID 1, Node and the shim),
//! launches QEMU's `microvm` machine under KVM or TCG, talks QMP, makes a
//! runtime snapshot ("template") and restores VMs from it with their RAM
//! mapped copy-on-write from the template's memory file, and attaches a
//! function's code read-only after restore as an EROFS image behind the
//! guest's one virtio-blk drive.
//!
//! The `microvm` driver ([`MicrovmDriver`], a `thaw_sandbox::Driver`) puts
//! these together: it restores VMs for the pool, hands their protocol
//! stream (docs/protocol.md over a virtio-serial port) to a
//! `thaw_sandbox::Instance`, and attaches code when one is bound. The
//! driver lives here rather than in thaw-sandbox so that thaw-sandbox keeps
//! knowing nothing of QEMU; this crate knows nothing of the protocol's
//! messages, functions, scheduling or the registry. See docs/microvm.md.

mod accel;
mod code;
mod cpio;
mod driver;
mod image;
mod kbuild;
mod kmod;
mod memory;
mod qmp;
mod template;
mod vm;

pub use accel::{probe_accel, AccelProbe};
pub use code::{build_code_image, CODE_FSTYPE};
pub use driver::{MicrovmConfig, MicrovmDriver, SetupProgress};
pub use image::{
    build_image, find_agent, BuildProgress, GuestKernel, ImageInfo, ImageOptions, OPTIONAL_MODULES,
    REQUIRED_MODULES,
};
pub use kbuild::{KERNEL_BUILD_PACKAGES, KERNEL_CONFIG};
pub use template::{restore, Template};
pub use vm::{
    Accel, Vm, VmJail, VmOptions, CODE_DRIVE_BYTES, CONTROL_PORT, GUEST_CODE_DIR, PROTOCOL_PORT,
};

/// Everything that can go wrong; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("guest image: {0}")]
    Image(String),
    #[error("QEMU: {0}")]
    Qemu(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("guest agent: {0}")]
    Guest(String),
    #[error("template: {0}")]
    Template(String),
    #[error("timed out {0}")]
    Timeout(String),
}

impl MicrovmError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MicrovmError::Io {
            what: what.into(),
            source,
        }
    }
}
