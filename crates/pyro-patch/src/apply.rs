//! Applying file patches to content, and planning whole patches.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::{FilePatch, Hunk, HunkLine, PatchError, PatchKind, MODE_EXECUTABLE, MODE_FILE};

/// One filesystem change produced by [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path the change is about (relative, validated): the file written,
    /// deleted, or renamed to.
    pub path: String,
    /// What to do at `path`.
    pub action: Action,
}

/// What a [`Change`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create or overwrite `path` with `content`. `mode` is a git mode
    /// ([`MODE_FILE`] or [`MODE_EXECUTABLE`]) to set, or `None` to keep the
    /// existing file's mode. New files always carry a mode.
    Write {
        /// The complete new content.
        content: Vec<u8>,
        /// The git mode to set, if any.
        mode: Option<u32>,
    },
    /// Delete `path`.
    Delete,
    /// Move `from` to `path`, then give `path` exactly `content` (and `mode`,
    /// when `Some`; otherwise keep the mode `from` had).
    Rename {
        /// The old path; it no longer exists afterwards.
        from: String,
        /// The complete content of `path`.
        content: Vec<u8>,
        /// The git mode to set, if any.
        mode: Option<u32>,
    },
}

/// Applies one file patch to a file's content.
///
/// `old` is the current content of the patch's old path, `None` when the file
/// does not exist. Returns the new content, or `None` when the patch deletes
/// the file. Adding a file that exists, or changing one that does not, is an
/// error; so is deleting a file whose content is not exactly the removed lines.
/// Paths are not looked at here: [`plan`] checks the rename target.
pub fn apply_file(fp: &FilePatch, old: Option<&[u8]>) -> Result<Option<Vec<u8>>, PatchError> {
    let path = fp.path();
    let old = match (fp.kind, old) {
        (PatchKind::Add, Some(_)) => return Err(PatchError::AlreadyExists { path: path.into() }),
        (PatchKind::Add, None) => &[][..],
        (_, Some(old)) => old,
        (_, None) => {
            let path = fp.old_path.as_deref().unwrap_or(path);
            return Err(PatchError::Missing { path: path.into() });
        }
    };
    let new = apply_hunks(path, &fp.hunks, old)?;
    if fp.kind == PatchKind::Delete {
        if !new.is_empty() {
            let path = fp.old_path.as_deref().unwrap_or(path);
            return Err(PatchError::DeleteMismatch { path: path.into() });
        }
        return Ok(None);
    }
    Ok(Some(new))
}

/// Validates a whole patch and returns the changes that carry it out.
///
/// `read` is called with a (validated, relative) path and returns that file's
/// current content, or `None` if it does not exist. It is called at most once
/// per path. Every file patch is applied in memory, in order (a later file
/// patch sees the result of earlier ones, so e.g. a rename followed by a
/// modification of the new name works). If anything fails, the error is
/// returned and no changes at all are planned.
///
/// Modes stated in the patch (`old mode`, `deleted file mode`) are not
/// checked against the files: this crate never sees modes. `read` should
/// return `None` only when nothing exists at the path; directories, symlinks
/// and other non-regular files are the caller's to refuse before planning.
/// Parent directories of written paths may not exist yet, and deletes may
/// leave empty directories behind.
///
/// The returned changes must be applied in order. To make the application
/// all-or-nothing, a caller can snapshot every path in
/// [`Change::paths`] first and restore the snapshots if a write fails.
pub fn plan(
    patches: &[FilePatch],
    read: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<Change>, PatchError> {
    let mut files: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    let mut current = |path: &str, files: &mut HashMap<String, Option<Vec<u8>>>| {
        files
            .entry(path.to_string())
            .or_insert_with(|| read(path))
            .clone()
    };
    let mut changes = Vec::with_capacity(patches.len());
    for fp in patches {
        for p in fp.old_path.iter().chain(fp.new_path.iter()) {
            crate::parse::validate_path(p)?;
        }
        for m in [fp.old_mode, fp.new_mode].into_iter().flatten() {
            if m != MODE_FILE && m != MODE_EXECUTABLE {
                return Err(PatchError::Unsupported {
                    path: fp.path().into(),
                    what: format!("file mode {m:o}"),
                });
            }
        }
        let missing = |what: &str| PatchError::InvalidFilePatch {
            path: fp.path().into(),
            reason: format!("{:?} patch without {what}", fp.kind).to_lowercase(),
        };
        let mode_change = match (fp.old_mode, fp.new_mode) {
            (Some(o), Some(n)) if o == n => None,
            (_, n) => n,
        };
        match fp.kind {
            PatchKind::Add => {
                let new = fp.new_path.as_deref().ok_or_else(|| missing("new path"))?;
                let old = current(new, &mut files);
                let content = apply_file(fp, old.as_deref())?.unwrap_or_default();
                files.insert(new.into(), Some(content.clone()));
                changes.push(Change {
                    path: new.into(),
                    action: Action::Write {
                        content,
                        mode: Some(fp.new_mode.unwrap_or(MODE_FILE)),
                    },
                });
            }
            PatchKind::Delete => {
                let old = fp.old_path.as_deref().ok_or_else(|| missing("old path"))?;
                let content = current(old, &mut files);
                apply_file(fp, content.as_deref())?;
                files.insert(old.into(), None);
                changes.push(Change {
                    path: old.into(),
                    action: Action::Delete,
                });
            }
            PatchKind::Modify => {
                let path = fp.new_path.as_deref().ok_or_else(|| missing("path"))?;
                let content = current(path, &mut files);
                let old = content.clone();
                let content = apply_file(fp, content.as_deref())?.unwrap_or_default();
                if old.as_deref() == Some(&content[..]) && mode_change.is_none() {
                    // Nothing to do (e.g. a header-only patch).
                    continue;
                }
                files.insert(path.into(), Some(content.clone()));
                changes.push(Change {
                    path: path.into(),
                    action: Action::Write {
                        content,
                        mode: mode_change,
                    },
                });
            }
            PatchKind::Rename => {
                let from = fp.old_path.as_deref().ok_or_else(|| missing("old path"))?;
                let to = fp.new_path.as_deref().ok_or_else(|| missing("new path"))?;
                let old = current(from, &mut files);
                if old.is_none() {
                    return Err(PatchError::Missing { path: from.into() });
                }
                if from != to && current(to, &mut files).is_some() {
                    return Err(PatchError::AlreadyExists { path: to.into() });
                }
                let content = apply_file(fp, old.as_deref())?.unwrap_or_default();
                files.insert(from.into(), None);
                files.insert(to.into(), Some(content.clone()));
                changes.push(Change {
                    path: to.into(),
                    action: Action::Rename {
                        from: from.into(),
                        content,
                        mode: mode_change,
                    },
                });
            }
        }
    }
    Ok(changes)
}

impl Change {
    /// Every path this change touches: `path`, plus `from` for a rename.
    /// These are the paths to snapshot for an all-or-nothing application.
    pub fn paths(&self) -> Vec<&str> {
        match &self.action {
            Action::Rename { from, .. } => vec![from.as_str(), self.path.as_str()],
            _ => vec![self.path.as_str()],
        }
    }
}

/// A file split into lines at `\n`. Lines keep a `\r` but not the `\n`.
struct Lines<'a> {
    lines: Vec<Cow<'a, [u8]>>,
    /// Whether the last line ends with `\n` (true for an empty file).
    trailing_newline: bool,
}

impl<'a> Lines<'a> {
    fn split(content: &'a [u8]) -> Self {
        if content.is_empty() {
            return Lines {
                lines: Vec::new(),
                trailing_newline: true,
            };
        }
        let trailing_newline = content.ends_with(b"\n");
        let body = if trailing_newline {
            &content[..content.len() - 1]
        } else {
            content
        };
        Lines {
            lines: body.split(|&b| b == b'\n').map(Cow::Borrowed).collect(),
            trailing_newline,
        }
    }

    fn join(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(l);
        }
        if self.trailing_newline && !self.lines.is_empty() {
            out.push(b'\n');
        }
        out
    }
}

fn strip_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Applies hunks in order to `old`, returning the new content.
fn apply_hunks(path: &str, hunks: &[Hunk], old: &[u8]) -> Result<Vec<u8>, PatchError> {
    let file = Lines::split(old);
    let file_crlf = file.lines.first().is_some_and(|l| l.ends_with(b"\r"));
    let len = file.lines.len();
    let mut out: Vec<Cow<[u8]>> = Vec::with_capacity(len);
    let mut cursor = 0usize;
    // Shift between stated and actual old positions, carried to later hunks.
    let mut offset: isize = 0;
    let mut trailing_newline = file.trailing_newline;
    for (i, hunk) in hunks.iter().enumerate() {
        let fail = |reason: &str| PatchError::HunkFailed {
            path: path.into(),
            hunk: i + 1,
            header: hunk.header(),
            reason: reason.into(),
        };
        let old_lines: Vec<&[u8]> = hunk
            .lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(s) | HunkLine::Remove(s) => Some(s.as_bytes()),
                HunkLine::Add(_) => None,
            })
            .collect();
        let n = old_lines.len();
        if n > len.saturating_sub(cursor) {
            return Err(fail("context not found (the file is too short)"));
        }
        let stated = if hunk.old_count == 0 {
            hunk.old_start
        } else {
            hunk.old_start.saturating_sub(1)
        } as isize;
        let max = len - n;
        let expected = (stated + offset).clamp(cursor as isize, max as isize) as usize;
        let fits = |pos: usize, loose: bool| -> bool {
            let at_eof = pos + n == len;
            // A hunk whose old side lacks the final newline must end at the
            // end of a file that lacks it, and vice versa.
            let eof_without_newline = at_eof && !file.trailing_newline;
            if hunk.old_no_newline != eof_without_newline {
                return false;
            }
            old_lines
                .iter()
                .zip(&file.lines[pos..pos + n])
                .all(|(a, b)| {
                    if loose {
                        strip_cr(a) == strip_cr(b)
                    } else {
                        *a == &b[..]
                    }
                })
        };
        let search = |loose: bool| -> Option<usize> {
            if n == 0 {
                // Pure insertion: nothing to match, trust the position.
                return fits(expected, loose).then_some(expected);
            }
            let span = (expected - cursor).max(max - expected);
            (0..=span).find_map(|d| {
                let after = expected + d;
                if after <= max && fits(after, loose) {
                    return Some(after);
                }
                let before = expected.checked_sub(d)?;
                (d > 0 && before >= cursor && fits(before, loose)).then_some(before)
            })
        };
        let (pos, loose) = match search(false) {
            Some(p) => (p, false),
            None => match search(true) {
                Some(p) => (p, true),
                None => return Err(fail("context not found")),
            },
        };
        // Lines added by a hunk that only matched ignoring CRs get the line
        // ending of the lines it matched (or of the file, for pure insertions).
        let matched = &file.lines[pos..pos + n];
        let crlf = if n == 0 {
            file_crlf
        } else {
            matched.iter().filter(|l| l.ends_with(b"\r")).count() * 2 >= n
        };
        let at_eof = pos + n == len;
        if hunk.new_no_newline && !at_eof {
            return Err(fail(
                "it marks a missing newline at end of file away from the end",
            ));
        }
        out.extend(file.lines[cursor..pos].iter().cloned());
        // Context lines are taken from the file, so their bytes (e.g. CR) are kept.
        let mut k = pos;
        for l in &hunk.lines {
            match l {
                HunkLine::Context(_) => {
                    out.push(file.lines[k].clone());
                    k += 1;
                }
                HunkLine::Remove(_) => k += 1,
                HunkLine::Add(s) if loose => {
                    let mut v = strip_cr(s.as_bytes()).to_vec();
                    if crlf {
                        v.push(b'\r');
                    }
                    out.push(Cow::Owned(v));
                }
                HunkLine::Add(s) => out.push(Cow::Borrowed(s.as_bytes())),
            }
        }
        if at_eof {
            trailing_newline = !hunk.new_no_newline;
        }
        offset = pos as isize - stated;
        cursor = pos + n;
    }
    out.extend(file.lines[cursor..].iter().cloned());
    Ok(Lines {
        lines: out,
        trailing_newline,
    }
    .join())
}
