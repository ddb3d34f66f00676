use std::path::PathBuf;

/// What went wrong finding or installing a line; every message says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0:?} is not a Node line thaw runs: use one of {lines}", lines = thaw_bundle::RUNTIMES.join(", "))]
    UnknownLine(String),
    #[error("the registry at {registry}: {why}")]
    Registry { registry: String, why: String },
    #[error("the registry at {registry} has no release of {package} for {line} (versions {major}.x.y); is it the right registry?")]
    NoRelease {
        registry: String,
        package: &'static str,
        line: String,
        major: u32,
    },
    #[error("downloading {url}: {why}")]
    Download { url: String, why: String },
    #[error("the download of {package} {version} does not match its integrity ({expected}, but the file's is {found}): it was changed or corrupted on the way; nothing was installed")]
    Integrity {
        package: &'static str,
        version: String,
        expected: String,
        found: String,
    },
    #[error("{package} {version}: {why}; nothing was installed")]
    BadPackage {
        package: &'static str,
        version: String,
        why: String,
    },
    #[error("{} does not run here: {why}", node.display())]
    NotRunnable { node: PathBuf, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            what: what.into(),
            source,
        }
    }
}
