//! Unpacking image layers into a root filesystem, with ownership shifted into a sandbox's user
//! namespace range.
//!
//! Layers come from the cache, but a cache can hold pulled images, so entries are treated as
//! untrusted: absolute paths, `..` components and hard links that leave the tree are refused (the
//! whole layer fails, so a half-trusted tree is never used), writes through symlinks that point
//! outside are refused by the `tar` crate's `unpack_in`, device nodes and fifos are skipped (a
//! sandbox gets its own `/dev`), and extended attributes are not unpacked.

use std::fs::{self, File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::{lchown, DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::{Archive, Entry, EntryType};

use crate::error::{Error, IoContext, Result};

/// OCI whiteout prefix: `.wh.NAME` deletes `NAME` from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque whiteout: the directory's contents from the layers below are deleted.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// What [`unpack_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Hard links created.
    pub hard_links: u64,
    /// Character devices, block devices and fifos skipped.
    pub skipped_devices: u64,
    /// Whiteout entries applied (deletions of lower-layer content).
    pub whiteouts: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Unpacks one uncompressed tar layer into `dest` (created if missing), on top of whatever
/// earlier layers put there.
///
/// Owners become the header's uid/gid plus `uid_shift`; permission bits are kept, setuid,
/// setgid and sticky included; mtimes are kept. `dest` itself is left as it is: the root entry
/// (`./`) of the layer is ignored, because the caller decides the top directory's owner and mode.
pub fn unpack_layer(tar: impl Read, dest: &Path, uid_shift: u32) -> Result<UnpackStats> {
    fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    let mut archive = Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // Ownership is set here, shifted; the tar crate would use the header ids unshifted.
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);

    let mut stats = UnpackStats::default();
    // Writing into a directory changes its mtime, so directory times are set after everything.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let entries = archive.entries().ctx(|| "reading layer".to_owned())?;
    for entry in entries {
        let mut entry = entry.ctx(|| "reading layer entry".to_owned())?;
        unpack_entry(&mut entry, dest, uid_shift, &mut stats, &mut dir_times)?;
    }
    for (path, mtime) in dir_times.iter().rev() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        File::open(path)
            .and_then(|dir| dir.set_times(FileTimes::new().set_accessed(time).set_modified(time)))
            .ctx(|| format!("setting mtime of {}", path.display()))?;
    }
    Ok(stats)
}

fn unpack_entry<R: Read>(
    entry: &mut Entry<'_, R>,
    dest: &Path,
    uid_shift: u32,
    stats: &mut UnpackStats,
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> Result<()> {
    let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let unsafe_entry = |reason: &str| Error::UnsafeArchive {
        entry: shown.clone(),
        reason: reason.to_owned(),
    };
    let path = entry
        .path()
        .map_err(|_| unsafe_entry("path is not valid on this host"))?;
    let rel = relative(&path).map_err(unsafe_entry)?;
    let header = entry.header();
    let kind = header.entry_type();

    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        // Metadata for other entries; the tar crate has already applied what it needs.
        return Ok(());
    }
    if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        stats.skipped_devices += 1;
        return Ok(());
    }
    if rel.as_os_str().is_empty() {
        // The layer's root entry: the caller owns the top directory.
        return Ok(());
    }
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        apply_whiteout(dest, &rel, target).map_err(|e| match e {
            WhiteoutError::Unsafe(reason) => unsafe_entry(reason),
            WhiteoutError::Io(e) => Error::io(format!("applying whiteout {shown}"), e),
        })?;
        stats.whiteouts += 1;
        return Ok(());
    }
    if kind.is_hard_link() {
        let link = entry
            .link_name()
            .map_err(|_| unsafe_entry("hard link target is not valid on this host"))?
            .ok_or_else(|| unsafe_entry("hard link without a target"))?;
        let link_rel = relative(&link)
            .map_err(|reason| unsafe_entry(&format!("hard link target {reason}")))?;
        if link_rel.as_os_str().is_empty() {
            return Err(unsafe_entry("hard link to the root directory"));
        }
    }

    let uid = shifted(header.uid(), uid_shift).map_err(|reason| unsafe_entry(&reason))?;
    let gid = shifted(header.gid(), uid_shift).map_err(|reason| unsafe_entry(&reason))?;
    let mode = header.mode().map_err(|_| unsafe_entry("unreadable mode"))? & 0o7777;
    let mtime = header.mtime().unwrap_or(0);
    let size = header.size().unwrap_or(0);

    ensure_parents(dest, &rel, uid_shift)
        .ctx(|| format!("creating parent directories of {shown}"))?;
    // unpack_in refuses to write anywhere whose canonical parent is outside `dest` (a symlinked
    // directory pointing out of the tree) and hard links whose target resolves outside it.
    let unpacked = entry.unpack_in(dest).map_err(|e| {
        if mentions_escape(&e) {
            unsafe_entry("it would be written outside the destination")
        } else {
            Error::io(format!("unpacking {shown}"), e)
        }
    })?;
    if !unpacked {
        return Err(unsafe_entry("path leaves the destination"));
    }

    let full = dest.join(&rel);
    if kind.is_hard_link() {
        // A hard link shares its target's inode, which already has its owner and mode; a chown
        // here would only clear the target's setuid bit again.
        stats.hard_links += 1;
        return Ok(());
    }
    lchown(&full, Some(uid), Some(gid)).ctx(|| format!("changing owner of {}", full.display()))?;
    if kind.is_symlink() {
        stats.symlinks += 1;
        return Ok(());
    }
    // chown clears setuid and setgid, so the mode goes on again afterwards.
    fs::set_permissions(&full, fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting mode of {}", full.display()))?;
    if kind.is_dir() {
        stats.dirs += 1;
        dir_times.push((full, mtime));
    } else {
        stats.files += 1;
        stats.bytes += size;
    }
    Ok(())
}

/// The entry path relative to the destination, with `.` components dropped; absolute paths and
/// `..` are refused rather than rewritten, because a layer that has them is not a sane image.
fn relative(path: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::ParentDir => return Err("contains a `..` component"),
        }
    }
    Ok(rel)
}

/// Whether the tar crate refused an entry for leaving the destination. Its error is an
/// `io::Error` wrapping a chain of descriptions, and only the message tells this case apart.
fn mentions_escape(e: &io::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    while let Some(err) = next {
        if err.to_string().contains("outside of destination") {
            return true;
        }
        next = err.source();
    }
    e.to_string().contains("outside of destination")
}

/// `id + shift`, refused when it leaves the uid range (`u32::MAX` means "unchanged" to chown).
fn shifted(id: io::Result<u64>, shift: u32) -> std::result::Result<u32, String> {
    let id = id.map_err(|_| "unreadable uid or gid".to_owned())?;
    u32::try_from(id)
        .ok()
        .and_then(|id| id.checked_add(shift))
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| format!("uid or gid {id} shifted by {shift} is out of range"))
}

/// Creates missing parent directories of `rel` as 0755 owned by the shifted root, checking each
/// new directory lands inside `dest` (the tar crate would create them owned by the caller).
fn ensure_parents(dest: &Path, rel: &Path, uid_shift: u32) -> io::Result<()> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = dest.to_path_buf();
    for component in parent.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(up) = current.parent() {
            if !inside(dest, up)? {
                return Err(io::Error::other(
                    "parent directory resolves outside of destination",
                ));
            }
        }
        fs::DirBuilder::new().mode(0o755).create(&current)?;
        lchown(&current, Some(uid_shift), Some(uid_shift))?;
        fs::set_permissions(&current, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Whether `path` (which must exist) resolves to `dest` or below it.
fn inside(dest: &Path, path: &Path) -> io::Result<bool> {
    Ok(path.canonicalize()?.starts_with(dest.canonicalize()?))
}

enum WhiteoutError {
    Unsafe(&'static str),
    Io(io::Error),
}

impl From<io::Error> for WhiteoutError {
    fn from(e: io::Error) -> Self {
        WhiteoutError::Io(e)
    }
}

/// Applies `.wh.TARGET` (delete TARGET) or `.wh..wh..opq` (empty the directory) to what the lower
/// layers left in `dest`.
fn apply_whiteout(dest: &Path, rel: &Path, target: &str) -> std::result::Result<(), WhiteoutError> {
    let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
    if fs::symlink_metadata(&dir).is_err() {
        // Nothing below to delete.
        return Ok(());
    }
    if !inside(dest, &dir)? {
        return Err(WhiteoutError::Unsafe(
            "whiteout directory resolves outside of destination",
        ));
    }
    if rel.file_name().is_some_and(|n| n == WHITEOUT_OPAQUE) {
        for child in fs::read_dir(&dir)? {
            remove_any(&child?.path())?;
        }
        return Ok(());
    }
    if target.is_empty() || target == "." || target == ".." || target.contains('/') {
        return Err(WhiteoutError::Unsafe("malformed whiteout name"));
    }
    match remove_any(&dir.join(target)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => Ok(other?),
    }
}

/// Removes a file, symlink (not its target) or directory tree.
fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tar::{Builder, Header};

    /// One tar entry to write: path, type, mode, uid, gid, mtime, link target, content.
    struct E {
        path: &'static str,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: &'static str,
        data: &'static [u8],
    }

    fn e(path: &'static str, kind: EntryType) -> E {
        let mode = if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        E {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: "",
            data: b"",
        }
    }

    /// Builds a tar, writing names into the header bytes directly so that the tests can make the
    /// unsafe entries the tar crate's builder refuses to write.
    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        for entry in entries {
            let mut header = Header::new_gnu();
            {
                let gnu = header.as_gnu_mut().expect("gnu header");
                gnu.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
                gnu.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
            }
            header.set_entry_type(entry.kind);
            header.set_mode(entry.mode);
            header.set_uid(entry.uid);
            header.set_gid(entry.gid);
            header.set_mtime(entry.mtime);
            header.set_size(entry.data.len() as u64);
            if matches!(entry.kind, EntryType::Char | EntryType::Block) {
                header.set_device_major(1).expect("major");
                header.set_device_minor(3).expect("minor");
            }
            header.set_cksum();
            builder.append(&header, entry.data).expect("append");
        }
        builder.into_inner().expect("finish")
    }

    #[test]
    fn unpacks_with_shifted_owners_modes_links_and_times() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("root");
        let shift = 100_000;
        let tar = tar_of(&[
            E {
                mode: 0o700,
                ..e("./", EntryType::Directory)
            },
            E {
                mtime: 1_000,
                ..e("./etc/", EntryType::Directory)
            },
            E {
                uid: 1000,
                gid: 1001,
                mtime: 12_345,
                data: b"hi\n",
                ..e("./etc/hello", EntryType::Regular)
            },
            E {
                mode: 0o4755,
                data: b"#!/bin/sh\n",
                ..e("./usr/bin/su", EntryType::Regular)
            },
            E {
                mode: 0o2755,
                gid: 42,
                ..e("./usr/bin/wall", EntryType::Regular)
            },
            E {
                mode: 0o1777,
                ..e("./tmp/", EntryType::Directory)
            },
            E {
                uid: 5,
                gid: 6,
                link: "hello",
                ..e("./etc/link", EntryType::Symlink)
            },
            E {
                link: "./usr/bin/su",
                ..e("./usr/bin/su-again", EntryType::Link)
            },
            e("./dev/null", EntryType::Char),
            e("./dev/sda", EntryType::Block),
            e("./run/fifo", EntryType::Fifo),
        ]);
        let stats = unpack_layer(&tar[..], &dest, shift).expect("unpack");
        assert_eq!(
            stats,
            UnpackStats {
                files: 3,
                dirs: 2,
                symlinks: 1,
                hard_links: 1,
                skipped_devices: 3,
                whiteouts: 0,
                bytes: 13,
            }
        );

        let meta = |p: &str| fs::symlink_metadata(dest.join(p)).expect(p);
        let hello = meta("etc/hello");
        assert_eq!(fs::read(dest.join("etc/hello")).expect("read"), b"hi\n");
        assert_eq!((hello.uid(), hello.gid()), (1000 + shift, 1001 + shift));
        assert_eq!(hello.mode() & 0o7777, 0o644);
        assert_eq!(hello.mtime(), 12_345);

        let su = meta("usr/bin/su");
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!((su.uid(), su.gid()), (shift, shift));
        assert_eq!(su.nlink(), 2);
        assert_eq!(meta("usr/bin/su-again").ino(), su.ino());
        let wall = meta("usr/bin/wall");
        assert_eq!(wall.mode() & 0o7777, 0o2755, "setgid survives the chown");
        assert_eq!(wall.gid(), 42 + shift);

        let tmpdir = meta("tmp");
        assert_eq!(tmpdir.mode() & 0o7777, 0o1777, "sticky bit kept");
        assert_eq!(tmpdir.uid(), shift);
        assert_eq!(
            meta("etc").mtime(),
            1_000,
            "directory mtime set after its contents"
        );
        // Parents the layer does not list are created owned by the shifted root.
        let usr = meta("usr");
        assert_eq!(
            (usr.uid(), usr.gid(), usr.mode() & 0o7777),
            (shift, shift, 0o755)
        );

        let link = meta("etc/link");
        assert!(link.file_type().is_symlink());
        assert_eq!(
            fs::read_link(dest.join("etc/link")).expect("readlink"),
            Path::new("hello")
        );
        assert_eq!((link.uid(), link.gid()), (5 + shift, 6 + shift));

        assert!(!dest.join("dev/null").exists());
        assert!(!dest.join("dev/sda").exists());
        assert!(!dest.join("run/fifo").exists());
        // The root entry does not change the destination directory.
        assert_ne!(meta("").mode() & 0o7777, 0o700);
    }

    #[test]
    fn refuses_entries_that_escape() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let outside_link: &'static str = Box::leak(outside.display().to_string().into_boxed_str());

        let cases: Vec<(&str, Vec<E>)> = vec![
            (
                "dotdot",
                vec![E {
                    data: b"x",
                    ..e("../escape", EntryType::Regular)
                }],
            ),
            (
                "nested dotdot",
                vec![E {
                    data: b"x",
                    ..e("./a/../../escape", EntryType::Regular)
                }],
            ),
            (
                "absolute",
                vec![E {
                    data: b"x",
                    ..e("/escape", EntryType::Regular)
                }],
            ),
            (
                "hard link dotdot",
                vec![E {
                    link: "../outside/target",
                    ..e("./h", EntryType::Link)
                }],
            ),
            (
                "hard link absolute",
                vec![E {
                    link: "/etc/passwd",
                    ..e("./h", EntryType::Link)
                }],
            ),
            (
                "write through symlink",
                vec![
                    E {
                        link: outside_link,
                        ..e("./evil", EntryType::Symlink)
                    },
                    E {
                        data: b"x",
                        ..e("./evil/escape", EntryType::Regular)
                    },
                ],
            ),
            (
                "hard link through symlink",
                vec![
                    E {
                        link: outside_link,
                        ..e("./evil", EntryType::Symlink)
                    },
                    E {
                        link: "./evil/target",
                        ..e("./h", EntryType::Link)
                    },
                ],
            ),
            (
                "whiteout dotdot",
                vec![e("./../.wh.outside", EntryType::Regular)],
            ),
        ];
        fs::write(outside.join("target"), b"secret").expect("write target");
        for (what, entries) in cases {
            let dest = tmp.path().join("root").join(what.replace(' ', "-"));
            let err = unpack_layer(&tar_of(&entries)[..], &dest, 0).expect_err(what);
            assert_eq!(err.kind(), "unsafe_archive", "{what}: {err}");
            assert!(!tmp.path().join("escape").exists(), "{what}");
            assert!(!tmp.path().join("root/escape").exists(), "{what}");
            assert!(!outside.join("escape").exists(), "{what}");
            assert_eq!(fs::read_dir(&outside).expect("ls").count(), 1, "{what}");
            assert_eq!(
                fs::metadata(outside.join("target"))
                    .expect("target")
                    .nlink(),
                1,
                "{what}"
            );
        }
    }

    #[test]
    fn refuses_ids_that_overflow_the_shift() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tar = tar_of(&[E {
            uid: u64::from(u32::MAX) - 10,
            ..e("./f", EntryType::Regular)
        }]);
        let err = unpack_layer(&tar[..], tmp.path(), 10).expect_err("overflow");
        assert_eq!(err.kind(), "unsafe_archive");
    }

    #[test]
    fn whiteouts_delete_lower_layer_content() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("root");
        let lower = tar_of(&[
            e("./a/", EntryType::Directory),
            e("./a/x", EntryType::Regular),
            e("./a/y", EntryType::Regular),
            e("./b/", EntryType::Directory),
            e("./b/old/", EntryType::Directory),
            e("./b/old/z", EntryType::Regular),
        ]);
        let upper = tar_of(&[
            e("./a/.wh.x", EntryType::Regular),
            e("./a/.wh.never-existed", EntryType::Regular),
            e("./b/", EntryType::Directory),
            e("./b/.wh..wh..opq", EntryType::Regular),
            e("./b/new", EntryType::Regular),
        ]);
        unpack_layer(&lower[..], &dest, 0).expect("lower");
        let stats = unpack_layer(&upper[..], &dest, 0).expect("upper");
        assert_eq!(stats.whiteouts, 3);
        assert!(!dest.join("a/x").exists());
        assert!(dest.join("a/y").exists());
        assert!(!dest.join("b/old").exists());
        assert!(dest.join("b/new").exists());
        assert!(
            !dest.join("a/.wh.x").exists(),
            "whiteout markers are not unpacked"
        );
    }
}
