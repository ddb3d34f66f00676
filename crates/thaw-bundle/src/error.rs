//! The one error type of the crate. Messages are shown to users as they are
//! (HTTP 400 bodies, CLI output), so each says what was wrong and what to do.

use std::io;

/// Everything that can go wrong with a bundle. [`BundleError::code`] gives a
/// stable machine-readable code for each variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("invalid function name `{name}`: {}", crate::NAME_RULE)]
    InvalidName { name: String },

    #[error("cannot pack `{path}`: {problem}; give the folder that holds your function's code")]
    BadDir { path: String, problem: String },

    /// A path or symlink target that would leave the bundle (or write through a link).
    #[error("{what} `{path}` {problem}")]
    UnsafePath {
        what: &'static str,
        path: String,
        problem: String,
    },

    /// A path the file system could not hold: a name over 255 bytes, or a
    /// whole path over 4096 bytes (PATH_MAX) where it would be written.
    #[error("{what} `{path}` {problem}")]
    PathTooLong {
        what: &'static str,
        path: String,
        problem: String,
    },

    #[error(
        "{what} `{path}` is a {kind}: a bundle holds only regular files, folders and symlinks; \
         remove it or list it in `.thawignore`"
    )]
    Unsupported {
        what: &'static str,
        path: String,
        kind: String,
    },

    #[error(
        "archive entry `{path}` appears more than once (or clashes with a file or folder of the \
         same name): each path may appear only once"
    )]
    Duplicate { path: String },

    #[error(
        "{what} is {found}, over the limit of {limit}: leave out what the function does not need \
         with a `.thawignore` file (gitignore syntax)"
    )]
    TooLarge {
        what: &'static str,
        found: String,
        limit: String,
    },

    #[error(
        "the upload is not a valid .tar.gz bundle ({reason}): upload what `thaw deploy` packs"
    )]
    BadArchive { reason: String },

    #[error("thaw.toml: {message}")]
    BadSettings { message: String },

    #[error("package.json is not valid JSON ({message}): fix it, or remove it")]
    BadPackageJson { message: String },

    #[error("{message}")]
    NoEntry { message: String },

    #[error(
        "`{entry}` is TypeScript, which needs esbuild to compile, but esbuild was not found: \
         run `cargo xtask setup` (or point THAW_ESBUILD at the esbuild binary)"
    )]
    NoEsbuild { entry: String },

    #[error("compiling `{entry}` failed:\n{output}")]
    BuildFailed { entry: String, output: String },

    /// A local file-system problem (disk full, permissions, destination exists).
    /// This is usually the operator's problem rather than the user's.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    /// A stable code for programs (HTTP error bodies, tests). Never changes
    /// for a given variant.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::InvalidName { .. } => "invalid_name",
            BundleError::BadDir { .. } => "bad_dir",
            BundleError::UnsafePath { .. } => "unsafe_path",
            BundleError::PathTooLong { .. } => "path_too_long",
            BundleError::Unsupported { .. } => "unsupported_entry",
            BundleError::Duplicate { .. } => "duplicate_entry",
            BundleError::TooLarge { .. } => "too_large",
            BundleError::BadArchive { .. } => "bad_archive",
            BundleError::BadSettings { .. } => "bad_settings",
            BundleError::BadPackageJson { .. } => "bad_package_json",
            BundleError::NoEntry { .. } => "no_entry",
            BundleError::NoEsbuild { .. } => "no_esbuild",
            BundleError::BuildFailed { .. } => "build_failed",
            BundleError::Io { .. } => "io_error",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        BundleError::Io {
            context: context.into(),
            source,
        }
    }
}
