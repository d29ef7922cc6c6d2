//! Generating git-style unified diffs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use similar::{capture_diff_slices_deadline, group_diff_ops, Algorithm, DiffOp, DiffTag};

use crate::parse::quote;
use crate::MODE_FILE;

/// Lines of context around each change, as git uses by default.
const CONTEXT: usize = 3;
/// How many leading bytes are checked for NUL, as git does.
const BINARY_SNIFF: usize = 8000;
/// After this long the diff algorithm settles for a correct but possibly
/// non-minimal diff.
const DIFF_DEADLINE: Duration = Duration::from_secs(2);

/// Whether `content` is treated as binary: a NUL byte among the first 8000
/// bytes (git's rule), or content that is not valid UTF-8.
pub fn is_binary(content: &[u8]) -> bool {
    content[..content.len().min(BINARY_SNIFF)].contains(&0) || std::str::from_utf8(content).is_err()
}

/// Produces a git-style diff of one file, as `git diff` would print it.
///
/// `old`/`new` are the contents before and after (`None`: the file does not
/// exist on that side, giving `new file mode` / `deleted file mode` and
/// `/dev/null`). `old_mode`/`new_mode` are git modes; a missing mode of an
/// added or deleted file defaults to [`MODE_FILE`], and `old mode`/`new mode`
/// lines are written only when both are given and differ. Hunks have three
/// lines of context. If either side [`is_binary`], the body is
/// `Binary files a/p and b/p differ`. Returns an empty string when nothing
/// changed. `index` lines are not written.
///
/// For text content, [`crate::plan`] applied to `parse(unified_diff(..))` with
/// `old` turns it into exactly `new`.
pub fn unified_diff(
    path: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    old_mode: Option<u32>,
    new_mode: Option<u32>,
) -> String {
    let mode_change = match (old, new, old_mode, new_mode) {
        (Some(_), Some(_), Some(o), Some(n)) if o != n => Some((o, n)),
        _ => None,
    };
    if old.is_none() && new.is_none() || (old == new && mode_change.is_none()) {
        return String::new();
    }
    let a = quote("a/", path);
    let b = quote("b/", path);
    let mut out = format!("diff --git {a} {b}\n");
    match (old, new) {
        (None, _) => {
            let _ = writeln!(out, "new file mode {:06o}", new_mode.unwrap_or(MODE_FILE));
        }
        (_, None) => {
            let _ = writeln!(
                out,
                "deleted file mode {:06o}",
                old_mode.unwrap_or(MODE_FILE)
            );
        }
        _ => {
            if let Some((o, n)) = mode_change {
                let _ = writeln!(out, "old mode {o:06o}\nnew mode {n:06o}");
            }
        }
    }
    let old_bytes = old.unwrap_or_default();
    let new_bytes = new.unwrap_or_default();
    if old_bytes == new_bytes {
        // Mode change only, or an empty file added/deleted: no body.
        return out;
    }
    let from = if old.is_some() {
        a.clone()
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        b.clone()
    } else {
        "/dev/null".into()
    };
    if is_binary(old_bytes) || is_binary(new_bytes) {
        let _ = writeln!(out, "Binary files {from} and {to} differ");
        return out;
    }
    let tab = |name: &str| if name.contains(' ') { "\t" } else { "" };
    let _ = writeln!(out, "--- {from}{}", tab(&from));
    let _ = writeln!(out, "+++ {to}{}", tab(&to));
    let old_lines = split_lines(old_bytes);
    let new_lines = split_lines(new_bytes);
    let ops = capture_diff_slices_deadline(
        Algorithm::Myers,
        &old_lines,
        &new_lines,
        Some(Instant::now() + DIFF_DEADLINE),
    );
    for group in group_diff_ops(renumber(ops), CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let o = first.old_range().start..last.old_range().end;
        let n = first.new_range().start..last.new_range().end;
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(o.start, o.len()),
            range(n.start, n.len())
        );
        for op in &group {
            let (tag, or, nr) = op.as_tag_tuple();
            match tag {
                DiffTag::Equal => or.for_each(|i| push_line(&mut out, ' ', old_lines[i])),
                DiffTag::Delete => or.for_each(|i| push_line(&mut out, '-', old_lines[i])),
                DiffTag::Insert => nr.for_each(|i| push_line(&mut out, '+', new_lines[i])),
                DiffTag::Replace => {
                    or.for_each(|i| push_line(&mut out, '-', old_lines[i]));
                    nr.for_each(|i| push_line(&mut out, '+', new_lines[i]));
                }
            }
        }
    }
    out
}

/// Recomputes every op's indices from the running old/new positions.
///
/// `similar`'s Myers output can carry a `new_index` on a leading `Delete` that
/// points past inserts which come later; hunk headers need the position in
/// the new file at that point.
fn renumber(ops: Vec<DiffOp>) -> Vec<DiffOp> {
    let (mut o, mut n) = (0, 0);
    ops.into_iter()
        .map(|op| {
            let (ol, nl) = (op.old_range().len(), op.new_range().len());
            let op = match op.tag() {
                DiffTag::Equal => DiffOp::Equal {
                    old_index: o,
                    new_index: n,
                    len: ol,
                },
                DiffTag::Delete => DiffOp::Delete {
                    old_index: o,
                    old_len: ol,
                    new_index: n,
                },
                DiffTag::Insert => DiffOp::Insert {
                    old_index: o,
                    new_index: n,
                    new_len: nl,
                },
                DiffTag::Replace => DiffOp::Replace {
                    old_index: o,
                    old_len: ol,
                    new_index: n,
                    new_len: nl,
                },
            };
            o += ol;
            n += nl;
            op
        })
        .collect()
}

/// `start[,count]` in git's form for a 0-based range start.
fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

/// Splits text into lines that keep their `\n` (the last one may lack it).
fn split_lines(s: &[u8]) -> Vec<&str> {
    let text = std::str::from_utf8(s).unwrap_or_default();
    text.split_inclusive('\n').collect()
}

fn push_line(out: &mut String, marker: char, line: &str) {
    out.push(marker);
    out.push_str(line);
    if !line.ends_with('\n') {
        out.push_str("\n\\ No newline at end of file\n");
    }
}
