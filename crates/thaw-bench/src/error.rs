use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call, a file or a child process failed; `what` says which.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something the harness needs did not behave: a server that never
    /// answered, a deploy the platform refused, a wrong answer.
    #[error("{0}")]
    Failed(String),
    #[error("unknown --skip entry {0:?}: the systems that can be skipped are {1}")]
    UnknownSkip(String, String),
    /// The report was written, but a system that every report needs (thaw
    /// or the bare Node server) could not be measured.
    #[error("the report is in {}, but these measurements failed: {}", written.display(), failed.join("; "))]
    Incomplete {
        written: PathBuf,
        failed: Vec<String>,
    },
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// Adds what was being done to an I/O error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BenchError::Io {
            what: what(),
            source,
        })
    }
}

pub(crate) fn failed(message: impl Into<String>) -> BenchError {
    BenchError::Failed(message.into())
}
