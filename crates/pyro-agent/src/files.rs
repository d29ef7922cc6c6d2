//! File operations confined to the workspace directory.
//!
//! Every path from the host is resolved with `openat2(RESOLVE_BENEATH)` against an fd of the
//! workspace root, so neither `..` nor a symlink (even one swapped in mid-call) can lead outside
//! it. Later steps work through `/proc/self/fd/N` of the resolved directory, never re-walking
//! the user's path.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use pyro_protocol::{Entry, FrameKind};
use sha2::{Digest, Sha256};

use crate::exec::FrameSink;

/// Why a file operation failed; `kind` becomes the protocol error kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    /// `bad_path`, `not_found`, `too_large`, `bad_archive` or `io`.
    pub kind: &'static str,
    /// What happened, naming the path.
    pub message: String,
}

pub(crate) fn err(kind: &'static str, message: impl Into<String>) -> FileError {
    FileError {
        kind,
        message: message.into(),
    }
}

fn io_err(path: &str, e: io::Error) -> FileError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => "not_found",
        _ if e.raw_os_error() == Some(libc::EXDEV) => "bad_path",
        _ => "io",
    };
    let why = if e.raw_os_error() == Some(libc::EXDEV) {
        "it leads outside the workspace".to_string()
    } else {
        e.to_string()
    };
    err(kind, format!("{path}: {why}"))
}

/// The workspace root every path is confined to.
#[derive(Debug, Clone)]
pub struct Root {
    /// Absolute path of the workspace (`/workspace`).
    pub path: PathBuf,
}

impl Root {
    /// Turns a host-supplied path into a clean path relative to the root. Absolute paths must
    /// lie under the root; `..` may not climb above it.
    pub fn relative(&self, user: &str) -> Result<PathBuf, FileError> {
        if user.contains('\0') {
            return Err(err("bad_path", "path contains a NUL byte"));
        }
        let p = Path::new(user);
        let rel = if p.is_absolute() {
            p.strip_prefix(&self.path).map_err(|_| {
                err(
                    "bad_path",
                    format!("{user}: outside the workspace {}", self.path.display()),
                )
            })?
        } else {
            p
        };
        let mut out = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return Err(err(
                            "bad_path",
                            format!("{user}: leads outside the workspace"),
                        ));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(err("bad_path", format!("{user}: not a workspace path")))
                }
            }
        }
        Ok(out)
    }

    fn root_fd(&self) -> Result<OwnedFd, FileError> {
        open_plain(&self.path, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| io_err(&self.path.to_string_lossy(), e))
    }

    /// Opens `rel` beneath the root with `flags`.
    pub fn open(&self, rel: &Path, flags: i32, mode: u32) -> Result<OwnedFd, FileError> {
        let root = self.root_fd()?;
        let shown = self.path.join(rel).to_string_lossy().into_owned();
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        openat2_beneath(root.as_raw_fd(), target, flags, mode).map_err(|e| io_err(&shown, e))
    }

    /// A `/proc/self/fd` path for an already resolved directory (or file).
    pub fn fd_path(fd: &OwnedFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Resolves the parent of `rel` (creating missing directories when `create`), returning its
    /// fd and the final name.
    pub fn parent(
        &self,
        rel: &Path,
        create: bool,
    ) -> Result<(OwnedFd, std::ffi::OsString), FileError> {
        let name = rel
            .file_name()
            .ok_or_else(|| err("bad_path", "the workspace root itself cannot be used here"))?
            .to_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if create {
            let mut acc = PathBuf::new();
            for c in parent.components() {
                acc.push(c);
                let fd = self.open(
                    acc.parent().unwrap_or(Path::new("")),
                    libc::O_PATH | libc::O_DIRECTORY,
                    0,
                )?;
                let cname = cstring(Path::new(c.as_os_str()))?;
                // SAFETY: mkdirat with a valid dir fd and a NUL-terminated name.
                let r = unsafe { libc::mkdirat(fd.as_raw_fd(), cname.as_ptr(), 0o755) };
                if r != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(io_err(&acc.to_string_lossy(), e));
                    }
                }
            }
        }
        let fd = self.open(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((fd, name))
    }
}

fn cstring(p: &Path) -> Result<CString, FileError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| err("bad_path", "path contains a NUL byte"))
}

fn open_plain(p: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat2_beneath(dir: RawFd, p: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data; zeroed is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dir fd, a NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Streams up to `max` bytes of a file as `Data` frames; returns (size, truncated).
pub fn read_file(
    root: &Root,
    path: &str,
    max: u64,
    sink: &mut dyn FrameSink,
) -> Result<(u64, bool), FileError> {
    let rel = root.relative(path)?;
    let fd = root.open(&rel, libc::O_RDONLY, 0)?;
    let mut f = File::from(fd);
    let meta = f.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(err("bad_path", format!("{path}: not a regular file")));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < max {
        let want = (max - sent).min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        sink.send(FrameKind::Data, &buf[..n])
            .map_err(|e| err("io", format!("host went away: {e}")))?;
        sent += n as u64;
    }
    Ok((meta.len(), meta.len() > sent))
}

/// Writes a file atomically from a byte stream: temp file beside it, then rename.
pub fn write_file(
    root: &Root,
    path: &str,
    mode: Option<u32>,
    max: u64,
    src: &mut dyn Read,
) -> Result<u64, FileError> {
    let rel = root.relative(path)?;
    let (dir, name) = root.parent(&rel, true)?;
    let dir_path = Root::fd_path(&dir);
    let target = dir_path.join(&name);
    if let Ok(m) = std::fs::symlink_metadata(&target) {
        if m.is_dir() {
            return Err(err("bad_path", format!("{path}: is a directory")));
        }
    }
    let existing_mode = std::fs::symlink_metadata(&target)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o7777);
    let tmp_name = format!(
        ".{}.pyro-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    );
    let tmp = dir_path.join(&tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err(path, e))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| err("io", format!("{path}: receiving content: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max {
                return Err(err(
                    "too_large",
                    format!("{path}: content exceeds {max} bytes"),
                ));
            }
            f.write_all(&buf[..n]).map_err(|e| io_err(path, e))?;
        }
        let perm = mode.or(existing_mode).unwrap_or(0o644);
        f.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(|e| io_err(path, e))?;
        f.sync_all().map_err(|e| io_err(path, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io_err(path, e))?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file, symlink or directory tree.
pub fn remove(root: &Root, path: &str) -> Result<(), FileError> {
    let rel = root.relative(path)?;
    let (dir, name) = root.parent(&rel, false)?;
    let target = Root::fd_path(&dir).join(name);
    let meta = std::fs::symlink_metadata(&target).map_err(|e| io_err(path, e))?;
    // std's remove_dir_all never follows symlinks.
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(&target)
    } else {
        std::fs::remove_file(&target)
    };
    r.map_err(|e| io_err(path, e))
}

fn entry_for(rel: &Path, meta: &std::fs::Metadata, full: &Path) -> Entry {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Entry {
        path: rel.to_string_lossy().into_owned(),
        kind: kind.into(),
        size: if ft.is_file() { meta.len() } else { 0 },
        mode: meta.mode() & 0o7777,
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        ino: meta.ino(),
        link_target: if ft.is_symlink() {
            std::fs::read_link(full)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
    }
}

/// Lists a directory (or describes a single path), sending JSON lines as `Data` frames.
/// Returns (count, truncated). Never follows symlinks.
pub fn list(
    root: &Root,
    path: &str,
    recursive: bool,
    max: u64,
    sink: &mut dyn FrameSink,
) -> Result<(u64, bool), FileError> {
    let rel = root.relative(path)?;
    let fd = root.open(&rel, libc::O_PATH, 0)?;
    let base = Root::fd_path(&fd);
    // `metadata`: the /proc/self/fd entry is a magic link to the opened object.
    let meta = std::fs::metadata(&base).map_err(|e| io_err(path, e))?;
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut count = 0u64;
    let mut flush = |batch: &mut Vec<u8>, force: bool| -> Result<(), FileError> {
        if !batch.is_empty() && (force || batch.len() > 60 * 1024) {
            sink.send(FrameKind::Data, batch)
                .map_err(|e| err("io", format!("host went away: {e}")))?;
            batch.clear();
        }
        Ok(())
    };
    if !meta.is_dir() {
        let name = rel.file_name().map(PathBuf::from).unwrap_or_default();
        let e = entry_for(&name, &meta, &base);
        serde_json::to_writer(&mut batch, &e).map_err(|e| err("io", e.to_string()))?;
        batch.push(b'\n');
        flush(&mut batch, true)?;
        return Ok((1, false));
    }
    // Depth-first, sorted, so listings are stable.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(base.join(&dir))
            .map_err(|e| io_err(path, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut subdirs = Vec::new();
        for n in names {
            if count >= max {
                flush(&mut batch, true)?;
                return Ok((count, true));
            }
            let r = dir.join(&n);
            let full = base.join(&r);
            let Ok(m) = std::fs::symlink_metadata(&full) else {
                continue;
            };
            let e = entry_for(&r, &m, &full);
            serde_json::to_writer(&mut batch, &e).map_err(|e| err("io", e.to_string()))?;
            batch.push(b'\n');
            count += 1;
            flush(&mut batch, false)?;
            if recursive && m.is_dir() {
                subdirs.push(r);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    flush(&mut batch, true)?;
    Ok((count, false))
}

/// sha256 of each path that is a regular file.
pub fn hash(root: &Root, paths: &[String]) -> Result<Vec<Option<String>>, FileError> {
    let mut out = Vec::with_capacity(paths.len());
    let mut buf = vec![0u8; 256 * 1024];
    for p in paths {
        let rel = root.relative(p)?;
        let Ok(fd) = root.open(&rel, libc::O_RDONLY | libc::O_NOFOLLOW, 0) else {
            out.push(None);
            continue;
        };
        let mut f = File::from(fd);
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            out.push(None);
            continue;
        }
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err(p, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        out.push(Some(hex(&h.finalize())));
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_lexically() {
        let r = Root {
            path: PathBuf::from("/workspace"),
        };
        assert_eq!(r.relative("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            r.relative("/workspace/a/./b").unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(r.relative("a/../b").unwrap(), PathBuf::from("b"));
        assert_eq!(r.relative("/workspace").unwrap(), PathBuf::new());
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../x",
            "/workspacex/y",
            "a\0b",
        ] {
            assert_eq!(r.relative(bad).unwrap_err().kind, "bad_path", "{bad}");
        }
    }

    #[test]
    fn symlinks_cannot_lead_out() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../secret", ws.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.join("abs")).unwrap();
        std::fs::write(ws.join("ok"), "fine").unwrap();
        std::os::unix::fs::symlink("ok", ws.join("inner")).unwrap();
        let r = Root { path: ws.clone() };
        let mut sink: Vec<u8> = Vec::new();
        assert_eq!(
            read_file(&r, "link", 100, &mut sink).unwrap_err().kind,
            "bad_path"
        );
        assert_eq!(
            read_file(&r, "abs/secret", 100, &mut sink)
                .unwrap_err()
                .kind,
            "bad_path"
        );
        assert!(write_file(&r, "abs/new", None, 100, &mut &b"x"[..]).is_err());
        assert!(!dir.path().join("new").exists());
        assert_eq!(read_file(&r, "inner", 100, &mut sink).unwrap(), (4, false));
    }

    #[test]
    fn writes_are_atomic_capped_and_create_parents() {
        let dir = tempfile::tempdir().unwrap();
        let r = Root {
            path: dir.path().to_path_buf(),
        };
        assert_eq!(
            write_file(&r, "a/b/c.txt", Some(0o755), 100, &mut &b"hello"[..]).unwrap(),
            5
        );
        let p = dir.path().join("a/b/c.txt");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            write_file(&r, "a/b/c.txt", None, 3, &mut &b"toolong"[..])
                .unwrap_err()
                .kind,
            "too_large"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"hello",
            "a failed write must leave the old content"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(
            hash(&r, &["a/b/c.txt".into(), "a".into()]).unwrap()[0].as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        remove(&r, "a").unwrap();
        assert!(!dir.path().join("a").exists());
    }
}
