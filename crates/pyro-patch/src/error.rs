//! The error type shared by parsing, application and planning.

use thiserror::Error;

/// Everything that can go wrong while parsing or applying a patch.
///
/// Every variant names the file (and, where relevant, the hunk or the patch
/// line) it is about, so the message can be handed back to an agent as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatchError {
    /// The patch text is malformed.
    #[error("malformed patch at line {line}: {message}")]
    Parse {
        /// 1-based line number in the patch text.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The patch text contains no file changes at all.
    #[error("no file changes found in patch")]
    NoChanges,
    /// A [`crate::FilePatch`] is inconsistent (e.g. a rename without a new
    /// path); only possible for file patches built by hand.
    #[error("invalid file patch for {path}: {reason}")]
    InvalidFilePatch {
        /// The file concerned.
        path: String,
        /// What is inconsistent.
        reason: String,
    },
    /// A path in the patch is not acceptable (absolute, `..`, NUL, empty, ...).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path, as decoded from the patch.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The patch for this file is a binary patch, which is not supported.
    #[error("binary patch for {path} is not supported")]
    Binary {
        /// The file the binary patch is for.
        path: String,
    },
    /// The patch uses a feature this engine does not support
    /// (copies, symlinks, submodules, unusual file modes).
    #[error("unsupported patch for {path}: {what}")]
    Unsupported {
        /// The file concerned.
        path: String,
        /// The unsupported feature.
        what: String,
    },
    /// A hunk could not be applied.
    #[error("hunk {hunk} of {path} ({header}) does not apply: {reason}")]
    HunkFailed {
        /// The file the hunk belongs to.
        path: String,
        /// 1-based index of the hunk within the file's patch.
        hunk: usize,
        /// The hunk header, e.g. `@@ -10,6 +10,7 @@`.
        header: String,
        /// Why it failed, e.g. `context not found`.
        reason: String,
    },
    /// The patch creates a file (or renames onto a path) that already exists.
    #[error("{path} already exists")]
    AlreadyExists {
        /// The existing path.
        path: String,
    },
    /// The patch modifies, deletes or renames a file that does not exist.
    #[error("{path} does not exist")]
    Missing {
        /// The missing path.
        path: String,
    },
    /// The patch deletes a file whose content is not exactly the removed lines.
    #[error("cannot delete {path}: its content does not match the lines the patch removes")]
    DeleteMismatch {
        /// The file that was to be deleted.
        path: String,
    },
}
