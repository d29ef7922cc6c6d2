//! Pure, I/O-free patch engine for pyro's persistent workspaces.
//!
//! An agent works in `/workspace` inside a sandbox; pyro diffs that workspace
//! against a baseline and applies the patches LLM agents send back. This crate
//! does the text work only — callers hand in file contents and apply the
//! resulting [`Change`]s themselves:
//!
//! * [`parse`] reads `git diff` output and plain unified diffs into
//!   [`FilePatch`]es (adds, deletes, modifications, renames, mode changes,
//!   `\ No newline at end of file`, quoted paths). Binary patches are refused.
//!   Every path is validated: relative, no `..`, no NUL.
//! * [`apply_file`] applies one [`FilePatch`] to a file's content; [`plan`]
//!   validates a whole patch against a read callback and returns the list of
//!   changes to make, or an error before anything has been written.
//! * [`unified_diff`] produces git-style diffs; for text content,
//!   `plan(parse(unified_diff(old, new)))` turns `old` into exactly `new`.
//!
//! Hunks are located like GNU `patch` without fuzz: at the stated position,
//! then searching outward for an exact context match. Line endings are
//! preserved (CRLF files stay CRLF, even when the patch uses LF).
//!
//! ```
//! use pyro_patch::{parse, plan, unified_diff, Action};
//!
//! let diff = unified_diff("src/main.rs", Some(b"a\nb\n"), Some(b"a\nc\n"), None, None);
//! let patches = parse(&diff)?;
//! let mut read = |path: &str| (path == "src/main.rs").then(|| b"a\nb\n".to_vec());
//! let changes = plan(&patches, &mut read)?;
//! assert_eq!(changes[0].path, "src/main.rs");
//! assert_eq!(
//!     changes[0].action,
//!     Action::Write { content: b"a\nc\n".to_vec(), mode: None }
//! );
//! # Ok::<(), pyro_patch::PatchError>(())
//! ```

mod apply;
mod diff;
mod error;
mod parse;

#[cfg(test)]
mod tests;

pub use apply::{apply_file, plan, Action, Change};
pub use diff::{is_binary, unified_diff};
pub use error::PatchError;
pub use parse::parse;

/// Git mode of a regular, non-executable file (`100644`).
pub const MODE_FILE: u32 = 0o100_644;
/// Git mode of a regular, executable file (`100755`).
pub const MODE_EXECUTABLE: u32 = 0o100_755;

/// What a [`FilePatch`] does to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// Creates `new_path`; the file must not exist.
    Add,
    /// Deletes `old_path`; its content must be exactly the removed lines.
    Delete,
    /// Changes the content and/or mode of an existing file in place.
    Modify,
    /// Moves `old_path` to `new_path`, possibly changing content and mode.
    Rename,
}

/// The patch for a single file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// The path before the change, `a/` prefix stripped; `None` for [`PatchKind::Add`].
    pub old_path: Option<String>,
    /// The path after the change, `b/` prefix stripped; `None` for [`PatchKind::Delete`].
    pub new_path: Option<String>,
    /// What the patch does.
    pub kind: PatchKind,
    /// The git mode before the change (e.g. `0o100644`), when the patch states one
    /// (`old mode`, `deleted file mode`).
    pub old_mode: Option<u32>,
    /// The git mode after the change (e.g. `0o100755`), when the patch states one
    /// (`new mode`, `new file mode`).
    pub new_mode: Option<u32>,
    /// The hunks, in file order.
    pub hunks: Vec<Hunk>,
}

impl FilePatch {
    /// The path this patch is best identified by: the new path, or the old one
    /// for deletions.
    pub fn path(&self) -> &str {
        self.new_path
            .as_deref()
            .or(self.old_path.as_deref())
            .unwrap_or_default()
    }
}

/// One `@@ -a,b +c,d @@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// First line of the old range (1-based; the line before the range when `old_count` is 0).
    pub old_start: usize,
    /// Number of old lines (context plus removed).
    pub old_count: usize,
    /// First line of the new range (1-based; the line before the range when `new_count` is 0).
    pub new_start: usize,
    /// Number of new lines (context plus added).
    pub new_count: usize,
    /// Text after the closing `@@` (git's function context), without the leading space.
    pub section: String,
    /// The hunk body.
    pub lines: Vec<HunkLine>,
    /// The last old line has no trailing newline (`\ No newline at end of file`).
    pub old_no_newline: bool,
    /// The last new line has no trailing newline (`\ No newline at end of file`).
    pub new_no_newline: bool,
}

impl Hunk {
    /// The hunk header in git's form, e.g. `@@ -10,6 +10,7 @@` (a count of 1 is omitted).
    pub fn header(&self) -> String {
        fn range(start: usize, count: usize) -> String {
            if count == 1 {
                start.to_string()
            } else {
                format!("{start},{count}")
            }
        }
        format!(
            "@@ -{} +{} @@",
            range(self.old_start, self.old_count),
            range(self.new_start, self.new_count)
        )
    }
}

/// One line of a hunk body. The text excludes the leading marker and the
/// `\n` terminator; a `\r` of a CRLF line is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    /// A context line (` `), present in both old and new.
    Context(String),
    /// An added line (`+`).
    Add(String),
    /// A removed line (`-`).
    Remove(String),
}
