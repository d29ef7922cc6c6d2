//! Tar archives in and out of the workspace, streamed (never whole in memory).
//!
//! Unpacking checks every entry before anything reaches the destination: no absolute paths, no
//! `..`, no links leaving the tree, no devices or fifos, and caps on bytes and entries. Entries
//! are unpacked into a staging directory beside the workspace and moved into place only when
//! the whole archive was good.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use pyro_protocol::{read_frame, FrameKind};

use crate::exec::FrameSink;
use crate::files::{err, FileError, Root};

/// Reads the `Data` frames of a host stream as one byte stream; an empty frame ends it.
pub struct DataReader<'a, R: Read> {
    inner: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<'a, R: Read> DataReader<'a, R> {
    /// Wraps a connection.
    pub fn new(inner: &'a mut R) -> Self {
        DataReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Reads and drops the rest of the stream, so the connection can still carry a response.
    pub fn drain(&mut self) {
        let mut sink = [0u8; 64 * 1024];
        while matches!(self.read(&mut sink), Ok(n) if n > 0) {}
    }
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let (kind, payload) =
                read_frame(self.inner).map_err(|e| io::Error::other(e.to_string()))?;
            if kind != FrameKind::Data {
                return Err(io::Error::other(format!(
                    "expected a data frame, got {kind:?}"
                )));
            }
            if payload.is_empty() {
                self.done = true;
            }
            self.buf = payload;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Buffers writes into `Data` frames of up to 256 KiB.
struct DataWriter<'a> {
    sink: &'a mut dyn FrameSink,
    buf: Vec<u8>,
    bytes: u64,
}

impl Write for DataWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.sink.send(FrameKind::Data, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Sends a tar of `path` (a directory's contents, or one file) as `Data` frames.
/// Returns (entries, content bytes). Symlinks are archived as links, never followed.
pub fn archive_out(
    root: &Root,
    path: &str,
    sink: &mut dyn FrameSink,
) -> Result<(u64, u64), FileError> {
    let rel = root.relative(path)?;
    let fd = root.open(&rel, libc::O_PATH, 0)?;
    let base = Root::fd_path(&fd);
    // `metadata`, not `symlink_metadata`: the /proc/self/fd entry is a magic link to the object.
    let meta = std::fs::metadata(&base).map_err(|e| err("io", format!("{path}: {e}")))?;
    let mut w = DataWriter {
        sink,
        buf: Vec::new(),
        bytes: 0,
    };
    let mut entries = 0u64;
    let mut content = 0u64;
    {
        let mut b = tar::Builder::new(&mut w);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        let io = |e: io::Error| err("io", format!("{path}: archiving: {e}"));
        if meta.is_dir() {
            // A leading "./" entry marks the archive as a directory (so a directory holding one
            // file is not mistaken for that file) and carries the directory's own mode.
            let mut top = tar::Header::new_gnu();
            top.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            top.set_entry_type(tar::EntryType::Directory);
            top.set_size(0);
            b.append_data(&mut top, "./", std::io::empty())
                .map_err(io)?;
            let mut stack = vec![PathBuf::new()];
            while let Some(dir) = stack.pop() {
                let mut names: Vec<_> = std::fs::read_dir(base.join(&dir))
                    .map_err(io)?
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                names.sort();
                for n in names {
                    let r = dir.join(&n);
                    let full = base.join(&r);
                    let Ok(m) = std::fs::symlink_metadata(&full) else {
                        continue;
                    };
                    if !(m.is_file() || m.is_dir() || m.file_type().is_symlink()) {
                        continue;
                    }
                    b.append_path_with_name(&full, &r).map_err(io)?;
                    entries += 1;
                    if m.is_file() {
                        content += m.len();
                    }
                    if m.is_dir() {
                        stack.push(r);
                    }
                }
            }
        } else {
            let name = rel
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("file"));
            // Through the already resolved fd: `base` itself is a /proc magic link, which
            // `append_path` would archive as a symlink.
            let mut f = std::fs::File::open(&base).map_err(io)?;
            b.append_file(&name, &mut f).map_err(io)?;
            entries = 1;
            content = meta.len();
        }
        b.finish().map_err(io)?;
    }
    w.flush()
        .map_err(|e| err("io", format!("host went away: {e}")))?;
    Ok((entries, content))
}

/// Limits for [`archive_in`].
#[derive(Debug, Clone, Copy)]
pub struct InLimits {
    /// Most bytes of file content.
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
}

/// A clean relative path for an archive entry, or why not.
fn clean_entry_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute".into()),
        }
    }
    Ok(out)
}

/// Whether a symlink at `at` (relative to the archive root) pointing to `target` stays inside.
fn link_stays_inside(at: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = at.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Unpacks a tar stream under `dest`, all or nothing. Returns (entries, content bytes).
pub fn archive_in(
    root: &Root,
    dest: &str,
    clear: bool,
    limits: InLimits,
    src: &mut dyn Read,
) -> Result<(u64, u64), FileError> {
    let rel = root.relative(dest)?;
    // Staging sits beside the workspace root so that the final renames stay on one filesystem
    // and nothing half-unpacked ever shows inside the workspace.
    let parent = root.path.parent().unwrap_or(Path::new("/"));
    let staging = parent.join(format!(".pyro-staging-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&staging).map_err(|e| err("io", format!("create staging dir: {e}")))?;
    let result = unpack_into(&staging, limits, src).and_then(|stats| {
        let (dir, name) = if rel.as_os_str().is_empty() {
            (
                root.open(Path::new(""), libc::O_PATH | libc::O_DIRECTORY, 0)?,
                None,
            )
        } else {
            let (d, n) = root.parent(&rel, true)?;
            (d, Some(n))
        };
        let mut target = Root::fd_path(&dir);
        let existing = match name {
            Some(n) => {
                target.push(n);
                std::fs::symlink_metadata(&target)
            }
            // The fd path itself is a magic link to the directory.
            None => std::fs::metadata(&target),
        };
        match existing {
            Ok(m) if !m.is_dir() => {
                return Err(err(
                    "bad_path",
                    format!("{dest}: exists and is not a directory"),
                ))
            }
            Ok(_) if clear => {
                clear_dir(&target).map_err(|e| err("io", format!("clear {dest}: {e}")))?
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&target)
                .map_err(|e| err("io", format!("create {dest}: {e}")))?,
        }
        merge(&staging, &target).map_err(|e| err("io", format!("move into {dest}: {e}")))?;
        Ok(stats)
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn unpack_into(
    staging: &Path,
    limits: InLimits,
    src: &mut dyn Read,
) -> Result<(u64, u64), FileError> {
    let mut ar = tar::Archive::new(src);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let bad = |p: &Path, why: &str| {
        err(
            "bad_archive",
            format!("archive entry {}: {why}", p.display()),
        )
    };
    let mut entries = 0u64;
    let mut bytes = 0u64;
    for e in ar
        .entries()
        .map_err(|e| err("bad_archive", format!("not a tar archive: {e}")))?
    {
        let mut e = e.map_err(|e| err("bad_archive", format!("corrupt archive: {e}")))?;
        let raw = e
            .path()
            .map_err(|e| err("bad_archive", format!("bad entry path: {e}")))?
            .into_owned();
        let p = clean_entry_path(&raw).map_err(|why| bad(&raw, &why))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(err(
                "too_large",
                format!("archive has more than {} entries", limits.max_entries),
            ));
        }
        if p.as_os_str().is_empty() {
            continue;
        }
        let kind = e.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                bytes += e.header().size().unwrap_or(0);
                if bytes > limits.max_bytes {
                    return Err(err(
                        "too_large",
                        format!("archive content exceeds {} bytes", limits.max_bytes),
                    ));
                }
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad(&raw, "symlink without a target"))?;
                if !link_stays_inside(&p, &t) {
                    return Err(bad(
                        &raw,
                        &format!("symlink to {} leaves the tree", t.display()),
                    ));
                }
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad(&raw, "hard link without a target"))?;
                let t = clean_entry_path(&t)
                    .map_err(|why| bad(&raw, &format!("hard link target {why}")))?;
                if !staging.join(&t).is_file() {
                    return Err(bad(
                        &raw,
                        "hard link to something not earlier in the archive",
                    ));
                }
            }
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(bad(
                    &raw,
                    &format!("{other:?} entries (devices, fifos) are not allowed"),
                ))
            }
        }
        // Every parent must be a real directory we created, never a symlink from the archive.
        let mut acc = staging.to_path_buf();
        if let Some(parent) = p.parent() {
            for c in parent.components() {
                acc.push(c);
                match std::fs::symlink_metadata(&acc) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(bad(&raw, "a parent directory is not a directory")),
                    Err(_) => std::fs::create_dir(&acc)
                        .map_err(|e| err("io", format!("{}: {e}", acc.display())))?,
                }
            }
        }
        let out = staging.join(&p);
        if let Ok(m) = std::fs::symlink_metadata(&out) {
            if !(m.is_dir() && kind == tar::EntryType::Directory) {
                let _ = if m.is_dir() {
                    std::fs::remove_dir_all(&out)
                } else {
                    std::fs::remove_file(&out)
                };
            }
        }
        if kind == tar::EntryType::Link {
            let t = e
                .link_name()
                .ok()
                .flatten()
                .and_then(|t| clean_entry_path(&t).ok())
                .unwrap_or_default();
            std::fs::hard_link(staging.join(t), &out)
                .map_err(|er| err("io", format!("{}: {er}", raw.display())))?;
            continue;
        }
        e.unpack(&out)
            .map_err(|er| err("bad_archive", format!("{}: {er}", raw.display())))?;
    }
    Ok((entries, bytes))
}

fn clear_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Moves everything from `src` into `dst`, merging directories and replacing the rest.
fn merge(src: &Path, dst: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let from_dir = e.file_type()?.is_dir();
        match std::fs::symlink_metadata(&to) {
            Ok(m) if m.is_dir() && from_dir => {
                merge(&from, &to)?;
                continue;
            }
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&to)?,
            Ok(_) => std::fs::remove_file(&to)?,
            Err(_) => {}
        }
        std::fs::rename(&from, &to)?;
    }
    // Directory modes and mtimes from the archive apply to merged directories too.
    if let Ok(m) = std::fs::metadata(src) {
        let _ = std::fs::set_permissions(dst, m.permissions());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Bypass the builder's own path checks to build hostile archives.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        h.set_link_name(target).unwrap();
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("workspace");
        std::fs::create_dir(&ws).unwrap();
        (dir, Root { path: ws })
    }

    const LIMITS: InLimits = InLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    #[test]
    fn good_archives_unpack_and_merge() {
        let (_d, r) = setup();
        std::fs::write(r.path.join("keep.txt"), "old").unwrap();
        let t = tar_of(|b| {
            file(b, "src/main.rs", b"fn main() {}\n");
            link(b, tar::EntryType::Symlink, "src/lib.rs", "main.rs");
            link(b, tar::EntryType::Link, "src/again.rs", "src/main.rs");
        });
        let (n, bytes) = archive_in(&r, "", false, LIMITS, &mut &t[..]).unwrap();
        assert_eq!((n, bytes), (3, 13));
        assert_eq!(
            std::fs::read_to_string(r.path.join("src/again.rs")).unwrap(),
            "fn main() {}\n"
        );
        assert_eq!(
            std::fs::read_link(r.path.join("src/lib.rs")).unwrap(),
            PathBuf::from("main.rs")
        );
        assert!(r.path.join("keep.txt").exists());
        // clear=true replaces everything.
        archive_in(
            &r,
            "",
            true,
            LIMITS,
            &mut &tar_of(|b| file(b, "only.txt", b"x"))[..],
        )
        .unwrap();
        let names: Vec<_> = std::fs::read_dir(&r.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("only.txt")]);
    }

    #[test]
    fn hostile_archives_are_refused_and_change_nothing() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", tar_of(|b| file(b, "../escape", b"x"))),
            ("absolute", tar_of(|b| file(b, "/etc/evil", b"x"))),
            (
                "symlink out",
                tar_of(|b| link(b, tar::EntryType::Symlink, "l", "../../etc")),
            ),
            (
                "absolute symlink",
                tar_of(|b| link(b, tar::EntryType::Symlink, "l", "/etc/passwd")),
            ),
            (
                "write through symlink",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, "d", "sub");
                    file(b, "d/x", b"x");
                }),
            ),
            (
                "hard link out",
                tar_of(|b| link(b, tar::EntryType::Link, "h", "../../etc/passwd")),
            ),
            (
                "device",
                tar_of(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_path("dev").unwrap();
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }),
            ),
            (
                "too many entries",
                tar_of(|b| (0..101).for_each(|i| file(b, &format!("f{i}"), b""))),
            ),
            (
                "too many bytes",
                tar_of(|b| file(b, "big", &vec![0u8; (1 << 20) + 1])),
            ),
        ];
        for (name, t) in cases {
            let (d, r) = setup();
            std::fs::write(r.path.join("before.txt"), "b").unwrap();
            let e = archive_in(&r, "", true, LIMITS, &mut &t[..]).unwrap_err();
            assert!(
                e.kind == "bad_archive" || e.kind == "too_large",
                "{name}: {e:?}"
            );
            let names: Vec<_> = std::fs::read_dir(&r.path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                names,
                vec![std::ffi::OsString::from("before.txt")],
                "{name} changed the workspace"
            );
            let top: Vec<_> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                top,
                vec![std::ffi::OsString::from("workspace")],
                "{name} left files outside"
            );
        }
    }

    #[test]
    fn archives_round_trip() {
        let (_d, r) = setup();
        std::fs::create_dir_all(r.path.join("a/b")).unwrap();
        std::fs::write(r.path.join("a/b/c"), "data").unwrap();
        std::os::unix::fs::symlink("b/c", r.path.join("a/l")).unwrap();
        let mut frames: Vec<u8> = Vec::new();
        let (n, bytes) = archive_out(&r, "a", &mut frames).unwrap();
        assert_eq!((n, bytes), (3, 4));
        // Re-read the frames as a stream and unpack elsewhere.
        let mut all = Vec::new();
        let mut cur = &frames[..];
        while let Ok((k, p)) = read_frame(&mut cur) {
            assert_eq!(k, FrameKind::Data);
            all.extend(p);
        }
        archive_in(&r, "copy", false, LIMITS, &mut &all[..]).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.path.join("copy/b/c")).unwrap(),
            "data"
        );
        assert_eq!(
            std::fs::read_link(r.path.join("copy/l")).unwrap(),
            PathBuf::from("b/c")
        );
    }
}
