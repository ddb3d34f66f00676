//! Code bundles for thaw: this crate owns everything between a user's folder
//! and a runnable, read-only tree on the server. It packs a folder into a
//! deterministic `.tar.gz` ([`pack_dir`]), checks and unpacks an untrusted
//! archive under strict path, type and size rules ([`unpack`]), reads the
//! optional `thaw.toml` ([`read_settings`]), finds the entry file
//! ([`find_entry`]), compiles TypeScript with esbuild ([`build`]) and makes
//! the tree read-only ([`seal`]). It must not touch HTTP, databases, Node
//! processes or anything outside the folders it is given (esbuild is the only
//! program it runs); callers decide where bundles live and how errors travel.
//! Every [`BundleError`] message is written to be shown to users as it is.

mod build;
mod entry;
mod error;
mod pack;
mod paths;
mod seal;
mod settings;
mod unpack;

use sha2::{Digest, Sha256};

pub use build::{
    build, build_with, find_esbuild, run_to_end, BuildEnd, BuildJob, BuildOutput, BuildSandbox,
    BuildView, HostBuild, BUILD_DIR,
};
pub use entry::find_entry;
pub use error::BundleError;
pub use pack::{pack_dir, Packed};
pub use seal::seal;
pub use settings::{
    read_settings, ScheduleSpec, Settings, DRIVERS, MAX_SCHEDULES, MAX_SCHEDULE_PAYLOAD, RUNTIMES,
    SETTINGS_FILE,
};
pub use unpack::{unpack, Unpacked};

/// Size limits for a bundle, applied the same way when packing and unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the compressed `.tar.gz`.
    pub max_archive_bytes: u64,
    /// Sum of the sizes of all regular files once unpacked.
    pub max_unpacked_bytes: u64,
    /// Number of files, folders and symlinks.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 64 << 20,
            max_unpacked_bytes: 512 << 20,
            max_entries: 100_000,
        }
    }
}

pub(crate) const NAME_RULE: &str = "a name is 1 to 63 characters of lowercase letters (a-z), \
    digits and '-', starts with a letter and does not end with '-'";

/// Checks a function name: 1..=63 chars of `[a-z0-9-]`, starting with a
/// letter, not ending with `-` (so it fits a DNS label and a URL path).
pub fn validate_name(name: &str) -> Result<(), BundleError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BundleError::InvalidName {
            name: paths::show(name.as_bytes()),
        })
    }
}

/// `text`'s start, at most `max` bytes, cut at a character boundary: for
/// bounding what a function or a tool wrote before it is kept or shown.
pub fn text_prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The SHA-256 of an archive as lowercase hex; the same folder packs to the
/// same archive, so this identifies a version's content.
pub fn content_hash(archive: &[u8]) -> String {
    hex::encode(Sha256::digest(archive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello-world", "f1", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a.b",
            "é",
            &"a".repeat(64),
        ] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_name");
            assert!(err.to_string().contains("lowercase letters"), "{err}");
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
