//! Parsing `git diff` output and plain unified diffs.

use crate::{FilePatch, Hunk, HunkLine, PatchError, PatchKind};

/// Parses a patch: `git diff` output (with `diff --git` headers) and/or plain
/// unified diffs (`--- a/x` / `+++ b/x`).
///
/// Text before, between and after file patches that is not part of a patch
/// (commit messages, `Index:` lines, `diff -ru` command lines) is ignored.
/// One leading `a/` (old side) and `b/` (new side) is stripped from paths.
/// Every path is validated (relative, no `.`/`..`/empty components, no NUL).
///
/// An empty or whitespace-only patch yields no file patches; any other text
/// without a single file patch is [`PatchError::NoChanges`]. Binary patches
/// are [`PatchError::Binary`]; copies, symlinks and submodules are
/// [`PatchError::Unsupported`].
pub fn parse(patch: &str) -> Result<Vec<FilePatch>, PatchError> {
    let mut lines: Vec<&str> = patch.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut p = Parser { lines, pos: 0 };
    let mut out = Vec::new();
    while p.pos < p.lines.len() {
        let line = p.lines[p.pos];
        if line.starts_with("diff --git ") {
            out.push(p.git_file()?);
        } else if line.starts_with("--- ")
            && p.lines
                .get(p.pos + 1)
                .is_some_and(|l| l.starts_with("+++ "))
        {
            out.push(p.plain_file()?);
        } else if line.starts_with("@@ -") {
            return Err(p.err("hunk without a preceding --- / +++ file header"));
        } else {
            p.pos += 1;
        }
    }
    if out.is_empty() && !patch.trim().is_empty() {
        return Err(PatchError::NoChanges);
    }
    Ok(out)
}

struct Parser<'a> {
    lines: Vec<&'a str>,
    pos: usize,
}

/// Header information gathered before the hunks.
#[derive(Default)]
struct Header {
    old: Option<Option<String>>,
    new: Option<Option<String>>,
    rename_from: Option<String>,
    rename_to: Option<String>,
    old_mode: Option<u32>,
    new_mode: Option<u32>,
    new_file: bool,
    deleted: bool,
    binary: bool,
    copy: bool,
}

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>) -> PatchError {
        PatchError::Parse {
            line: self.pos + 1,
            message: message.into(),
        }
    }

    fn header_line(&self) -> &'a str {
        let l = self.lines[self.pos];
        l.strip_suffix('\r').unwrap_or(l)
    }

    fn git_file(&mut self) -> Result<FilePatch, PatchError> {
        let first = self.header_line();
        let rest = &first["diff --git ".len()..];
        let (hdr_old, hdr_new) = match split_git_header(rest).map_err(|m| self.err(m))? {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        self.pos += 1;
        let mut h = Header::default();
        while self.pos < self.lines.len() {
            let l = self.header_line();
            let mode = |s: &str| parse_mode(s).ok_or_else(|| self.err(format!("bad mode {s:?}")));
            if let Some(m) = l.strip_prefix("old mode ") {
                h.old_mode = Some(mode(m)?);
            } else if let Some(m) = l.strip_prefix("new mode ") {
                h.new_mode = Some(mode(m)?);
            } else if let Some(m) = l.strip_prefix("deleted file mode ") {
                h.deleted = true;
                h.old_mode = Some(mode(m)?);
            } else if let Some(m) = l.strip_prefix("new file mode ") {
                h.new_file = true;
                h.new_mode = Some(mode(m)?);
            } else if let Some(p) = l.strip_prefix("rename from ") {
                h.rename_from = Some(self.path_arg(p)?);
            } else if let Some(p) = l.strip_prefix("rename to ") {
                h.rename_to = Some(self.path_arg(p)?);
            } else if l.starts_with("copy from ") || l.starts_with("copy to ") {
                h.copy = true;
            } else if l.starts_with("similarity index ")
                || l.starts_with("dissimilarity index ")
                || l.starts_with("index ")
            {
            } else if l.starts_with("Binary files ") || l == "GIT binary patch" {
                h.binary = true;
            } else if l.starts_with("--- ")
                && self
                    .lines
                    .get(self.pos + 1)
                    .is_some_and(|n| n.starts_with("+++ "))
            {
                self.file_names(&mut h)?;
                break;
            } else {
                break;
            }
            self.pos += 1;
        }
        let old = match (&h.old, &h.rename_from) {
            (Some(o), _) => o.clone(),
            (None, Some(r)) => Some(r.clone()),
            (None, None) if h.new_file => None,
            (None, None) => hdr_old.clone(),
        };
        let new = match (&h.new, &h.rename_to) {
            (Some(n), _) => n.clone(),
            (None, Some(r)) => Some(r.clone()),
            (None, None) if h.deleted => None,
            (None, None) => hdr_new.clone(),
        };
        let name = new.clone().or(old.clone()).or(hdr_new).unwrap_or_default();
        if h.binary {
            return Err(PatchError::Binary { path: name });
        }
        if h.copy {
            return Err(PatchError::Unsupported {
                path: name,
                what: "copy patches".into(),
            });
        }
        if old.is_none() && new.is_none() {
            return Err(self.err("file patch without any path"));
        }
        self.finish(old, new, h, true)
    }

    fn plain_file(&mut self) -> Result<FilePatch, PatchError> {
        let mut h = Header::default();
        self.file_names(&mut h)?;
        let old = h.old.clone().flatten();
        let new = h.new.clone().flatten();
        if old.is_none() && new.is_none() {
            return Err(self.err("both sides of the patch are /dev/null"));
        }
        self.finish(old, new, h, false)
    }

    /// Parses the `---` / `+++` pair at `self.pos` and moves past it.
    fn file_names(&mut self, h: &mut Header) -> Result<(), PatchError> {
        let old = self.file_name(&self.header_line()[4..], "a/")?;
        self.pos += 1;
        let new = self.file_name(&self.header_line()[4..], "b/")?;
        self.pos += 1;
        h.old = Some(old);
        h.new = Some(new);
        Ok(())
    }

    /// A `---`/`+++` name: `/dev/null`, a quoted name, or a name up to a tab.
    fn file_name(&self, s: &str, prefix: &str) -> Result<Option<String>, PatchError> {
        let name = if s.starts_with('"') {
            let (name, _) = unquote(s).map_err(|m| self.err(m))?;
            name
        } else {
            // git ends names containing a space with a tab; plain diffs put a
            // timestamp after the tab.
            s.split('\t').next().unwrap_or_default().to_string()
        };
        if name == "/dev/null" {
            return Ok(None);
        }
        Ok(Some(name.strip_prefix(prefix).unwrap_or(&name).to_string()))
    }

    /// A `rename from`/`rename to` argument (no prefix, maybe quoted).
    fn path_arg(&self, s: &str) -> Result<String, PatchError> {
        if s.starts_with('"') {
            Ok(unquote(s).map_err(|m| self.err(m))?.0)
        } else {
            Ok(s.to_string())
        }
    }

    fn finish(
        &mut self,
        old: Option<String>,
        new: Option<String>,
        h: Header,
        git: bool,
    ) -> Result<FilePatch, PatchError> {
        for p in old.iter().chain(new.iter()) {
            validate_path(p)?;
        }
        let kind = if old.is_none() || h.new_file {
            PatchKind::Add
        } else if new.is_none() || h.deleted {
            PatchKind::Delete
        } else if git && (old != new || h.rename_from.is_some()) {
            PatchKind::Rename
        } else {
            PatchKind::Modify
        };
        let (old, new) = match kind {
            PatchKind::Add => (None, new.or(old)),
            PatchKind::Delete => (old.or(new), None),
            // A plain unified diff with differing names (`--- x.orig` / `+++ x`)
            // modifies the new name in place, as GNU patch does.
            PatchKind::Modify => (new.clone(), new),
            PatchKind::Rename => (old, new),
        };
        let name = new.clone().or(old.clone()).unwrap_or_default();
        for m in [h.old_mode, h.new_mode].into_iter().flatten() {
            if m & 0o170_000 != 0o100_000 {
                let what = match m {
                    0o120_000 => "symlinks".to_string(),
                    0o160_000 => "submodules".to_string(),
                    _ => format!("file mode {m:o}"),
                };
                return Err(PatchError::Unsupported { path: name, what });
            }
        }
        let mut hunks = Vec::new();
        while self.pos < self.lines.len() && self.lines[self.pos].starts_with("@@ -") {
            let hunk = self.hunk(&name, hunks.len() + 1)?;
            hunks.push(hunk);
        }
        if let Some(l) = self.lines.get(self.pos) {
            // `-- ` is the signature separator that ends `git format-patch` mails.
            let continues = l.starts_with(['+', '-', ' '])
                && *l != "-- "
                && !(l.starts_with("--- ")
                    && self
                        .lines
                        .get(self.pos + 1)
                        .is_some_and(|n| n.starts_with("+++ ")));
            if continues && !hunks.is_empty() {
                return Err(self.err(format!(
                    "hunk {} of {name} has more lines than its header counts",
                    hunks.len()
                )));
            }
        }
        Ok(FilePatch {
            old_path: old,
            new_path: new,
            kind,
            old_mode: h.old_mode,
            new_mode: h.new_mode,
            hunks,
        })
    }

    fn hunk(&mut self, path: &str, index: usize) -> Result<Hunk, PatchError> {
        let header = self.header_line();
        let (old_start, old_count, new_start, new_count, section) = parse_hunk_header(header)
            .ok_or_else(|| self.err(format!("bad hunk header {header:?}")))?;
        self.pos += 1;
        let mut hunk = Hunk {
            old_start,
            old_count,
            new_start,
            new_count,
            section,
            lines: Vec::new(),
            old_no_newline: false,
            new_no_newline: false,
        };
        let (mut old_left, mut new_left) = (old_count, new_count);
        let short = |p: &Self, what: &str| {
            p.err(format!(
                "hunk {index} of {path} ({}) {what}",
                hunk_header_text(old_start, old_count, new_start, new_count)
            ))
        };
        while old_left > 0 || new_left > 0 {
            let Some(&l) = self.lines.get(self.pos) else {
                return Err(short(self, "is truncated"));
            };
            let (marker, text) = match l.chars().next() {
                Some(c) => (c, &l[c.len_utf8()..]),
                None => (' ', ""),
            };
            let line = match marker {
                ' ' => HunkLine::Context(text.to_string()),
                '\r' if l == "\r" => HunkLine::Context(String::new()),
                '-' => HunkLine::Remove(text.to_string()),
                '+' => HunkLine::Add(text.to_string()),
                '\\' => {
                    self.no_newline(&mut hunk);
                    self.pos += 1;
                    continue;
                }
                _ => return Err(short(self, "has fewer lines than its header counts")),
            };
            match line {
                HunkLine::Context(_) if old_left > 0 && new_left > 0 => {
                    old_left -= 1;
                    new_left -= 1;
                }
                HunkLine::Remove(_) if old_left > 0 => old_left -= 1,
                HunkLine::Add(_) if new_left > 0 => new_left -= 1,
                _ => return Err(short(self, "does not match its header counts")),
            }
            hunk.lines.push(line);
            self.pos += 1;
        }
        if self
            .lines
            .get(self.pos)
            .is_some_and(|l| l.starts_with('\\'))
        {
            self.no_newline(&mut hunk);
            self.pos += 1;
        }
        Ok(hunk)
    }

    fn no_newline(&self, hunk: &mut Hunk) {
        match hunk.lines.last() {
            Some(HunkLine::Context(_)) => {
                hunk.old_no_newline = true;
                hunk.new_no_newline = true;
            }
            Some(HunkLine::Remove(_)) => hunk.old_no_newline = true,
            Some(HunkLine::Add(_)) => hunk.new_no_newline = true,
            None => {}
        }
    }
}

fn hunk_header_text(os: usize, oc: usize, ns: usize, nc: usize) -> String {
    Hunk {
        old_start: os,
        old_count: oc,
        new_start: ns,
        new_count: nc,
        section: String::new(),
        lines: Vec::new(),
        old_no_newline: false,
        new_no_newline: false,
    }
    .header()
}

/// `@@ -a[,b] +c[,d] @@[ section]`
fn parse_hunk_header(l: &str) -> Option<(usize, usize, usize, usize, String)> {
    let rest = l.strip_prefix("@@ -")?;
    let (ranges, section) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |s: &str| -> Option<(usize, usize)> {
        match s.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    let (os, oc) = range(old)?;
    let (ns, nc) = range(new)?;
    let section = section.strip_prefix(' ').unwrap_or(section).to_string();
    Some((os, oc, ns, nc, section))
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim(), 8).ok()
}

/// Splits the `a/x b/y` part of a `diff --git` line. Returns `None` when the
/// names cannot be told apart (the `---`/`+++` or rename lines then decide).
fn split_git_header(rest: &str) -> Result<Option<(String, String)>, String> {
    let strip = |s: &str, p: &str| s.strip_prefix(p).unwrap_or(s).to_string();
    if rest.starts_with('"') {
        let (a, tail) = unquote(rest)?;
        let tail = tail.trim_start_matches(' ');
        let b = if tail.starts_with('"') {
            unquote(tail)?.0
        } else {
            tail.to_string()
        };
        return Ok(Some((strip(&a, "a/"), strip(&b, "b/"))));
    }
    if let Some(i) = rest.find(" \"") {
        let b = unquote(&rest[i + 1..])?.0;
        return Ok(Some((strip(&rest[..i], "a/"), strip(&b, "b/"))));
    }
    // Unquoted names may contain spaces: prefer the split where both names agree.
    let candidates: Vec<usize> = rest.match_indices(' ').map(|(i, _)| i).collect();
    for &i in &candidates {
        let (a, b) = (&rest[..i], &rest[i + 1..]);
        if strip(a, "a/") == strip(b, "b/") {
            return Ok(Some((strip(a, "a/"), strip(b, "b/"))));
        }
    }
    if let Some(i) = rest.find(" b/") {
        return Ok(Some((strip(&rest[..i], "a/"), strip(&rest[i + 1..], "b/"))));
    }
    Ok(None)
}

/// Decodes a git C-quoted string starting at `s[0] == '"'`; returns the
/// decoded string and the text after the closing quote.
fn unquote(s: &str) -> Result<(String, &str), String> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let name = String::from_utf8(out)
                    .map_err(|_| format!("quoted path {s:?} is not valid UTF-8"))?;
                return Ok((name, &s[i + 1..]));
            }
            b'\\' => {
                let c = *bytes
                    .get(i + 1)
                    .ok_or("unterminated escape in quoted path")?;
                i += 2;
                let b = match c {
                    b'a' => 7,
                    b'b' => 8,
                    b't' => b'\t',
                    b'n' => b'\n',
                    b'v' => 11,
                    b'f' => 12,
                    b'r' => b'\r',
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'0'..=b'3' => {
                        let oct = bytes
                            .get(i..i + 2)
                            .ok_or("short octal escape in quoted path")?;
                        if !oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return Err("bad octal escape in quoted path".into());
                        }
                        i += 2;
                        (c - b'0') * 64 + (oct[0] - b'0') * 8 + (oct[1] - b'0')
                    }
                    _ => return Err(format!("unknown escape \\{} in quoted path", c as char)),
                };
                out.push(b);
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Err(format!("unterminated quoted path {s:?}"))
}

/// Quotes a path the way git does when it contains control characters,
/// `"`, `\` or non-ASCII bytes; returns `prefix + path` unchanged otherwise.
pub(crate) fn quote(prefix: &str, path: &str) -> String {
    let full = format!("{prefix}{path}");
    let needs = full
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f);
    if !needs {
        return full;
    }
    let mut out = String::from("\"");
    for b in full.bytes() {
        match b {
            7 => out.push_str("\\a"),
            8 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            11 => out.push_str("\\v"),
            12 => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b if !(0x20..0x7f).contains(&b) => out.push_str(&format!("\\{b:03o}")),
            b => out.push(b as char),
        }
    }
    out.push('"');
    out
}

/// Refuses absolute paths, `.`/`..`/empty components and NUL bytes.
pub(crate) fn validate_path(path: &str) -> Result<(), PatchError> {
    let bad = |reason| {
        Err(PatchError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    if path.contains('\0') {
        return bad("path contains a NUL byte");
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return bad("absolute paths are not allowed");
    }
    for c in path.split('/') {
        match c {
            ".." => return bad("parent directory components are not allowed"),
            "." | "" => return bad("path is not normalized"),
            _ => {}
        }
    }
    Ok(())
}
