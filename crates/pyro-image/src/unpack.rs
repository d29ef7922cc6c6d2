//! The one policy for unpacking a tar archive onto the host filesystem, in two profiles.
//!
//! - [`ArchiveProfile::TrustedImageLayer`]: an environment's image layers. Owners are shifted
//!   into the sandbox's user-namespace range and modes are kept, setuid, setgid and sticky
//!   included, because a root filesystem needs them. Layers come from the cache, and a cache can
//!   hold pulled images, so paths are still checked: absolute paths, `..` components and hard
//!   links that leave the tree are refused (the whole layer fails, so a half-trusted tree is
//!   never used), writes through symlinks that point outside are refused by the `tar` crate's
//!   `unpack_in`, device nodes and fifos are skipped (a sandbox gets its own `/dev`), and
//!   extended attributes are not unpacked.
//! - [`ArchiveProfile::UntrustedGuestOutput`]: anything a guest sends back to be written on the
//!   host (`workspace export`). A guest is root in its sandbox and can hand the host any archive
//!   at all, so nothing in it is taken as an instruction: every file, directory and symlink is
//!   owned by the calling user ([`Owner::caller`]), modes are masked to `0o777` (no setuid,
//!   setgid or sticky bit), device nodes and fifos are skipped and listed, a hard link becomes a
//!   copy of a regular file unpacked earlier from the same archive (any other hard link is
//!   refused), no path is ever written through a symlink (each parent must be a real directory,
//!   each new name is created exclusively), whiteouts are plain file names, and the total of
//!   file bytes and of entries is capped ([`OutputLimits`]). The destination is created fresh
//!   and removed again on any refusal; [`place`] then moves it to where the user asked.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    fchown, lchown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tar::{Archive, Entry, EntryType};

use crate::error::{Error, IoContext, Result};

/// OCI whiteout prefix: `.wh.NAME` deletes `NAME` from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque whiteout: the directory's contents from the layers below are deleted.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// Default cap on the bytes of file content guest output may write on the host.
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = pyro_api::limits::EXPORT_MAX_BYTES;
/// Default cap on the entries guest output may hold.
pub const DEFAULT_OUTPUT_MAX_ENTRIES: u64 = pyro_api::limits::EXPORT_MAX_ENTRIES;
/// Most skipped entries listed by name in [`UnpackStats::skipped`]; the count covers all.
pub const MAX_SKIPPED_LISTED: usize = 100;

/// How an archive is trusted, and so what of its metadata reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveProfile {
    /// An environment's image layer: owners shifted by `uid_shift`, modes kept (setuid and
    /// setgid included), hard links inside the tree kept, OCI whiteouts applied.
    TrustedImageLayer {
        /// Added to every uid and gid (the sandbox's user-namespace base).
        uid_shift: u32,
    },
    /// Output from a guest: owned by `owner`, modes masked to `0o777`, no special files, hard
    /// links as copies, capped by `limits`.
    UntrustedGuestOutput {
        /// Who owns everything written.
        owner: Owner,
        /// Caps on content bytes and entries.
        limits: OutputLimits,
    },
}

/// The owner of files pyro writes on a user's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// The user pyro acts for: its real uid and gid, or, when it runs as root under `sudo`, the
    /// invoking user's `SUDO_UID` and `SUDO_GID`.
    pub fn caller() -> Owner {
        Owner::from_ids(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            std::env::var("SUDO_UID").ok().as_deref(),
            std::env::var("SUDO_GID").ok().as_deref(),
        )
    }

    /// [`Owner::caller`] without the environment: the sudo ids count only when the real uid is
    /// root and both are plain decimal ids; otherwise the real ids are the owner.
    pub fn from_ids(uid: u32, gid: u32, sudo_uid: Option<&str>, sudo_gid: Option<&str>) -> Owner {
        let parse = |s: Option<&str>| {
            s.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u32>().ok())
                // u32::MAX means "unchanged" to chown.
                .filter(|&id| id != u32::MAX)
        };
        match (uid, parse(sudo_uid), parse(sudo_gid)) {
            (0, Some(uid), Some(gid)) => Owner { uid, gid },
            _ => Owner { uid, gid },
        }
    }
}

/// Caps on what guest output may write on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputLimits {
    /// Most bytes of file content (hard-link copies included).
    pub max_bytes: u64,
    /// Most archive entries (skipped ones included).
    pub max_entries: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_bytes: DEFAULT_OUTPUT_MAX_BYTES,
            max_entries: DEFAULT_OUTPUT_MAX_ENTRIES,
        }
    }
}

impl OutputLimits {
    /// The error for output over these limits.
    pub fn exceeded(&self, what: &str) -> Error {
        Error::ExportTooLarge {
            what: what.to_owned(),
        }
    }

    fn too_many_bytes(&self) -> Error {
        self.exceeded(&format!(
            "more than {} bytes of file content",
            self.max_bytes
        ))
    }

    fn too_many_entries(&self) -> Error {
        self.exceeded(&format!("more than {} entries", self.max_entries))
    }
}

/// An entry that was not unpacked because its kind has no place on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedEntry {
    /// The entry's path as written in the archive.
    pub path: String,
    /// `fifo`, `char_device`, `block_device` or `other`.
    pub kind: String,
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Hard links created (for guest output: copies made of their targets).
    pub hard_links: u64,
    /// Character devices, block devices, fifos and unknown kinds skipped.
    pub skipped_devices: u64,
    /// The first [`MAX_SKIPPED_LISTED`] of them.
    pub skipped: Vec<SkippedEntry>,
    /// Whiteout entries applied (deletions of lower-layer content).
    pub whiteouts: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

impl UnpackStats {
    fn skip(&mut self, path: &str, kind: EntryType) {
        self.skipped_devices += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            let kind = match kind {
                EntryType::Fifo => "fifo",
                EntryType::Char => "char_device",
                EntryType::Block => "block_device",
                _ => "other",
            };
            self.skipped.push(SkippedEntry {
                path: path.to_owned(),
                kind: kind.to_owned(),
            });
        }
    }

    /// Entries written: files, directories, symlinks and hard links.
    pub fn written(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.hard_links
    }
}

/// Unpacks one uncompressed tar into `dest` under `profile`.
///
/// A trusted image layer goes on top of whatever earlier layers left in `dest` (created if
/// missing); its root entry (`./`) is ignored, because the caller decides the top directory's
/// owner and mode. Untrusted guest output needs a `dest` that does not exist yet: it is created
/// (its mode from the root entry, masked), and on any error removed again.
pub fn unpack(tar: impl Read, dest: &Path, profile: &ArchiveProfile) -> Result<UnpackStats> {
    match profile {
        ArchiveProfile::TrustedImageLayer { uid_shift } => unpack_trusted(tar, dest, *uid_shift),
        ArchiveProfile::UntrustedGuestOutput { owner, limits } => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dest)
                .ctx(|| format!("creating {}", dest.display()))?;
            let result = unpack_untrusted(tar, dest, *owner, limits);
            if result.is_err() {
                let _ = fs::remove_dir_all(dest);
            }
            result
        }
    }
}

/// [`unpack`] with [`ArchiveProfile::TrustedImageLayer`]: owners become the header's uid/gid
/// plus `uid_shift`; permission bits are kept, setuid, setgid and sticky included; mtimes are
/// kept.
pub fn unpack_layer(tar: impl Read, dest: &Path, uid_shift: u32) -> Result<UnpackStats> {
    unpack(tar, dest, &ArchiveProfile::TrustedImageLayer { uid_shift })
}

fn unpack_trusted(tar: impl Read, dest: &Path, uid_shift: u32) -> Result<UnpackStats> {
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
        trusted_entry(&mut entry, dest, uid_shift, &mut stats, &mut dir_times)?;
    }
    for (path, mtime) in dir_times.iter().rev() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        File::open(path)
            .and_then(|dir| dir.set_times(FileTimes::new().set_accessed(time).set_modified(time)))
            .ctx(|| format!("setting mtime of {}", path.display()))?;
    }
    Ok(stats)
}

fn trusted_entry<R: Read>(
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
        stats.skip(&shown, kind);
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

/// Mode and mtime a directory of guest output gets once everything is in it.
#[derive(Debug, Clone, Copy)]
struct PendingDir {
    mode: u32,
    mtime: Option<u64>,
}

/// Parents not listed in an archive get this mode.
const IMPLICIT_DIR_MODE: u32 = 0o755;

fn unpack_untrusted(
    tar: impl Read,
    dest: &Path,
    owner: Owner,
    limits: &OutputLimits,
) -> Result<UnpackStats> {
    // The tar crate only reads here; every write below is pyro's own.
    let mut archive = Archive::new(tar);
    let mut stats = UnpackStats::default();
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut dirs: BTreeMap<PathBuf, PendingDir> = BTreeMap::new();
    dirs.insert(
        PathBuf::new(),
        PendingDir {
            mode: IMPLICIT_DIR_MODE,
            mtime: None,
        },
    );
    let mut count = 0u64;
    let entries = archive
        .entries()
        .ctx(|| "reading guest archive".to_owned())?;
    for entry in entries {
        let mut entry = entry.ctx(|| "reading guest archive entry".to_owned())?;
        count += 1;
        if count > limits.max_entries {
            return Err(limits.too_many_entries());
        }
        let mut state = GuestState {
            dest,
            owner,
            limits,
            stats: &mut stats,
            files: &mut files,
            dirs: &mut dirs,
        };
        state.entry(&mut entry)?;
    }
    // Deepest first: a directory's own mode may take away the access its children need.
    let mut pending: Vec<(PathBuf, PendingDir)> = dirs.into_iter().collect();
    pending.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, dir) in pending {
        let full = dest.join(&rel);
        finish_dir(&full, owner, dir).ctx(|| format!("finishing directory {}", full.display()))?;
    }
    Ok(stats)
}

/// What unpacking guest output keeps track of across entries.
struct GuestState<'a> {
    dest: &'a Path,
    owner: Owner,
    limits: &'a OutputLimits,
    stats: &'a mut UnpackStats,
    /// Regular files written so far (relative paths): the only targets a hard link may have.
    files: &'a mut HashSet<PathBuf>,
    /// Every directory made, with the mode and mtime it gets at the end.
    dirs: &'a mut BTreeMap<PathBuf, PendingDir>,
}

impl GuestState<'_> {
    fn entry<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<()> {
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: &str| Error::UnsafeArchive {
            entry: shown.clone(),
            reason: reason.to_owned(),
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let regular = kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse();
        if !(regular || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            // Devices, fifos and kinds pyro does not know have no place in a user's files.
            self.stats.skip(&shown, kind);
            return Ok(());
        }
        let path = entry
            .path()
            .map_err(|_| unsafe_entry("path is not valid on this host"))?;
        let rel = relative(&path).map_err(unsafe_entry)?;
        let header = entry.header();
        let mode = header.mode().map_err(|_| unsafe_entry("unreadable mode"))? & 0o777;
        let mtime = header.mtime().ok();
        if rel.as_os_str().is_empty() {
            if !kind.is_dir() {
                return Err(unsafe_entry("the archive's root is not a directory"));
            }
            self.dirs.insert(rel, PendingDir { mode, mtime });
            return Ok(());
        }
        self.real_parents(&rel).map_err(|e| match e {
            ParentError::Unsafe(reason) => unsafe_entry(&reason),
            ParentError::Io(e) => Error::io(format!("creating parent directories of {shown}"), e),
        })?;
        let full = self.dest.join(&rel);
        let exists = |e: io::Error| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                unsafe_entry("an entry of the same name came earlier in the archive")
            } else {
                Error::io(format!("unpacking {shown}"), e)
            }
        };

        if kind.is_dir() {
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(exists(io::ErrorKind::AlreadyExists.into())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&full)
                        .map_err(exists)?;
                }
                Err(e) => return Err(Error::io(format!("unpacking {shown}"), e)),
            }
            self.dirs.insert(rel, PendingDir { mode, mtime });
            self.stats.dirs += 1;
        } else if kind.is_symlink() {
            // A symlink is data: recreated as it is, never followed (see `real_parents`).
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry("symlink without a target"))?;
            let target = std::ffi::OsStr::from_bytes(&target);
            std::os::unix::fs::symlink(target, &full).map_err(exists)?;
            lchown(&full, Some(self.owner.uid), Some(self.owner.gid))
                .ctx(|| format!("changing owner of {}", full.display()))?;
            self.stats.symlinks += 1;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|_| unsafe_entry("hard link target is not valid on this host"))?
                .ok_or_else(|| unsafe_entry("hard link without a target"))?;
            let link_rel = relative(&link)
                .map_err(|reason| unsafe_entry(&format!("hard link target {reason}")))?;
            if !self.files.contains(&link_rel) {
                return Err(unsafe_entry(
                    "hard link target is not a regular file unpacked earlier from this archive",
                ));
            }
            // Made a copy: a link would tie the user's file to whatever else shares the inode.
            let source = self.dest.join(&link_rel);
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&source)
                .ctx(|| format!("opening {}", source.display()))?;
            let meta = src
                .metadata()
                .ctx(|| format!("reading {}", source.display()))?;
            let size = meta.len();
            self.reserve(size)?;
            let mut out = create_new_file(&full).map_err(exists)?;
            let copied = io::copy(&mut (&mut src).take(size), &mut out)
                .ctx(|| format!("copying {} to {shown}", link_rel.display()))?;
            finish_file(&out, self.owner, meta.mode(), mtime)
                .ctx(|| format!("finishing {}", full.display()))?;
            self.files.insert(rel);
            self.stats.hard_links += 1;
            self.stats.bytes += copied;
        } else {
            self.reserve(entry.header().size().unwrap_or(0))?;
            let mut out = create_new_file(&full).map_err(exists)?;
            let left = self.limits.max_bytes - self.stats.bytes;
            let copied = io::copy(
                &mut Read::take(&mut *entry, left.saturating_add(1)),
                &mut out,
            )
            .ctx(|| format!("unpacking {shown}"))?;
            if copied > left {
                return Err(self.limits.too_many_bytes());
            }
            finish_file(&out, self.owner, mode, mtime)
                .ctx(|| format!("finishing {}", full.display()))?;
            self.files.insert(rel);
            self.stats.files += 1;
            self.stats.bytes += copied;
        }
        Ok(())
    }

    /// Refuses `size` more bytes of content when they would pass the cap.
    fn reserve(&self, size: u64) -> Result<()> {
        if self.stats.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(self.limits.too_many_bytes());
        }
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory inside the destination, creating
    /// missing ones; a parent that is a symlink (or anything else) is refused, so no entry is
    /// ever written through a link an earlier entry made.
    fn real_parents(&mut self, rel: &Path) -> std::result::Result<(), ParentError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut current = PathBuf::new();
        for component in parent.components() {
            current.push(component);
            let full = self.dest.join(&current);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(ParentError::Unsafe(format!(
                        "its parent {} is {what}; nothing is written through it",
                        current.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o700).create(&full)?;
                    self.dirs.entry(current.clone()).or_insert(PendingDir {
                        mode: IMPLICIT_DIR_MODE,
                        mtime: None,
                    });
                }
                Err(e) => return Err(ParentError::Io(e)),
            }
        }
        Ok(())
    }
}

enum ParentError {
    Unsafe(String),
    Io(io::Error),
}

impl From<io::Error> for ParentError {
    fn from(e: io::Error) -> Self {
        ParentError::Io(e)
    }
}

/// Creates a file for guest output: never an existing name, never through a symlink, private
/// until [`finish_file`].
pub fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Gives a file of guest output its owner, its mode masked to `0o777` (after the chown, which
/// would clear setuid anyway) and, when known, its mtime.
pub fn finish_file(file: &File, owner: Owner, mode: u32, mtime: Option<u64>) -> io::Result<()> {
    fchown(file, Some(owner.uid), Some(owner.gid))?;
    file.set_permissions(fs::Permissions::from_mode(mode & 0o777))?;
    if let Some(mtime) = mtime {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
        file.set_times(FileTimes::new().set_accessed(time).set_modified(time))?;
    }
    Ok(())
}

fn finish_dir(full: &Path, owner: Owner, dir: PendingDir) -> io::Result<()> {
    // Opened without following a link; only a real directory is changed.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(full)?;
    fchown(&handle, Some(owner.uid), Some(owner.gid))?;
    if let Some(mtime) = dir.mtime {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
        handle.set_times(FileTimes::new().set_accessed(time).set_modified(time))?;
    }
    handle.set_permissions(fs::Permissions::from_mode(dir.mode & 0o777))
}

/// Unpacks guest output that is one regular file into the file `dest` (which must not exist),
/// under the same rules as [`ArchiveProfile::UntrustedGuestOutput`].
pub fn unpack_single_file(
    tar: impl Read,
    dest: &Path,
    owner: Owner,
    limits: &OutputLimits,
) -> Result<UnpackStats> {
    let mut archive = Archive::new(tar);
    let mut entries = archive
        .entries()
        .ctx(|| "reading guest archive".to_owned())?;
    let mut entry = entries
        .next()
        .ok_or_else(|| Error::UnsafeArchive {
            entry: String::new(),
            reason: "the archive is empty".into(),
        })?
        .ctx(|| "reading guest archive entry".to_owned())?;
    let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let header = entry.header();
    if !header.entry_type().is_file() {
        return Err(Error::UnsafeArchive {
            entry: shown,
            reason: "not a regular file".into(),
        });
    }
    let mode = header.mode().unwrap_or(0o644);
    let mtime = header.mtime().ok();
    if header.size().unwrap_or(0) > limits.max_bytes {
        return Err(limits.too_many_bytes());
    }
    // Created here, so removed below only when it is ours.
    let mut out = create_new_file(dest).ctx(|| format!("creating {}", dest.display()))?;
    let result = (|| {
        let copied = io::copy(&mut (&mut entry).take(limits.max_bytes + 1), &mut out)
            .ctx(|| format!("writing {}", dest.display()))?;
        if copied > limits.max_bytes {
            return Err(limits.too_many_bytes());
        }
        finish_file(&out, owner, mode, mtime).ctx(|| format!("finishing {}", dest.display()))?;
        Ok(UnpackStats {
            files: 1,
            bytes: copied,
            ..UnpackStats::default()
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

/// A fresh name beside `out` to stage output under before [`place`] renames it there (the
/// same directory, so the rename stays on one filesystem). Creates `out`'s parent if missing.
pub fn staging_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::InvalidRequest(format!("{} does not name a file", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    Ok(parent.join(format!(
        ".{}.pyro-partial-{}",
        name.to_string_lossy(),
        pyro_api::ids::new_id()
    )))
}

/// Moves staged output to `out` with one rename: never onto an existing `out` unless `replace`,
/// and never through a symlink at `out` (a symlink there is replaced like any file, its target
/// untouched). What `out` held is removed only once the new output is in place.
pub fn place(staged: &Path, out: &Path, replace: bool) -> Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags};
    let moving = || format!("moving the output to {}", out.display());
    let exists = || Error::AlreadyExists(out.display().to_string());
    if replace && fs::symlink_metadata(out).is_ok() {
        match renameat2(None, staged, None, out, RenameFlags::RENAME_EXCHANGE) {
            // `staged` now names the previous output.
            Ok(()) => {
                return remove_any(staged)
                    .ctx(|| format!("removing the previous {}", out.display()))
            }
            Err(Errno::ENOENT) => {}
            Err(Errno::EINVAL) => {
                // A filesystem without renameat2: remove, then rename.
                remove_any(out).ctx(|| format!("replacing {}", out.display()))?;
            }
            Err(e) => return Err(Error::io(moving(), e.into())),
        }
    }
    match renameat2(None, staged, None, out, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(exists()),
        Err(Errno::EINVAL) => {
            if fs::symlink_metadata(out).is_ok() {
                return Err(exists());
            }
            fs::rename(staged, out).ctx(moving)
        }
        Err(e) => Err(Error::io(moving(), e.into())),
    }
}

/// Removes staged output left by a failed export, whatever it is.
pub fn remove_staged(staged: &Path) {
    let _ = remove_any(staged);
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
                skipped: vec![
                    SkippedEntry {
                        path: "./dev/null".into(),
                        kind: "char_device".into()
                    },
                    SkippedEntry {
                        path: "./dev/sda".into(),
                        kind: "block_device".into()
                    },
                    SkippedEntry {
                        path: "./run/fifo".into(),
                        kind: "fifo".into()
                    },
                ],
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

    // -----------------------------------------------------------------------------------------
    // Untrusted guest output
    // -----------------------------------------------------------------------------------------

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Someone other than the test process when it can chown (root), itself otherwise.
    fn test_owner() -> Owner {
        if is_root() {
            Owner {
                uid: 12_345,
                gid: 23_456,
            }
        } else {
            Owner::caller()
        }
    }

    fn guest(owner: Owner, limits: OutputLimits) -> ArchiveProfile {
        ArchiveProfile::UntrustedGuestOutput { owner, limits }
    }

    fn unpack_guest(entries: &[E], dest: &Path) -> Result<UnpackStats> {
        unpack(
            &tar_of(entries)[..],
            dest,
            &guest(test_owner(), OutputLimits::default()),
        )
    }

    #[test]
    fn guest_output_is_owned_by_the_caller_without_special_bits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("out");
        let owner = test_owner();
        let stats = unpack_guest(
            &[
                E {
                    mode: 0o1777,
                    ..e("./", EntryType::Directory)
                },
                E {
                    mode: 0o2775,
                    ..e("./d/", EntryType::Directory)
                },
                E {
                    mode: 0o4755,
                    data: b"#!/bin/sh\n",
                    ..e("./suid", EntryType::Regular)
                },
                E {
                    mode: 0o2755,
                    gid: 42,
                    ..e("./sgid", EntryType::Regular)
                },
                E {
                    mode: 0o6777,
                    ..e("./all", EntryType::Regular)
                },
                E {
                    mode: 0o1777,
                    ..e("./sticky/", EntryType::Directory)
                },
                E {
                    uid: 1000,
                    gid: 1000,
                    mtime: 12_345,
                    data: b"hi\n",
                    ..e("./d/f", EntryType::Regular)
                },
                E {
                    link: "/etc/passwd",
                    ..e("./link", EntryType::Symlink)
                },
                E {
                    mode: 0o4755,
                    link: "./suid",
                    ..e("./hl", EntryType::Link)
                },
                e("./fifo", EntryType::Fifo),
                e("./null", EntryType::Char),
                e("./d/sda", EntryType::Block),
                // Not an OCI layer: a whiteout name is just a name.
                e("./.wh.d", EntryType::Regular),
                // A parent the archive does not list.
                e("./implicit/x", EntryType::Regular),
            ],
            &dest,
        )
        .expect("unpack");
        assert_eq!(
            (stats.files, stats.dirs, stats.symlinks, stats.hard_links),
            (6, 2, 1, 1),
            "{stats:?}"
        );
        assert_eq!(stats.bytes, 10 + 3 + 10, "the hard link is a copy");
        assert_eq!(stats.written(), 10);
        assert_eq!(stats.skipped_devices, 3);
        let skipped: Vec<(&str, &str)> = stats
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.kind.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("./fifo", "fifo"),
                ("./null", "char_device"),
                ("./d/sda", "block_device")
            ]
        );

        let meta = |p: &str| fs::symlink_metadata(dest.join(p)).expect(p);
        for (path, mode) in [
            ("", 0o777),
            ("d", 0o775),
            ("suid", 0o755),
            ("sgid", 0o755),
            ("all", 0o777),
            ("sticky", 0o777),
            ("d/f", 0o644),
            ("hl", 0o755),
            (".wh.d", 0o644),
            ("implicit", 0o755),
            ("implicit/x", 0o644),
        ] {
            let m = meta(path);
            assert_eq!(m.mode() & 0o7777, mode, "{path:?}");
            assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid), "{path:?}");
        }
        assert_eq!(meta("d/f").mtime(), 12_345);
        assert!(!dest.join("fifo").exists() && !dest.join("null").exists());
        assert!(!dest.join("d/sda").exists());

        let link = meta("link");
        assert!(link.file_type().is_symlink());
        assert_eq!((link.uid(), link.gid()), (owner.uid, owner.gid));
        assert_eq!(
            fs::read_link(dest.join("link")).expect("readlink"),
            Path::new("/etc/passwd")
        );
        let hl = meta("hl");
        assert!(hl.is_file());
        assert_ne!(hl.ino(), meta("suid").ino(), "a copy, not a link");
        assert_eq!((hl.nlink(), meta("suid").nlink()), (1, 1));
        assert_eq!(fs::read(dest.join("hl")).expect("read"), b"#!/bin/sh\n");
    }

    #[test]
    fn guest_output_never_writes_through_a_symlink_or_links_outside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("target"), b"secret").expect("write target");
        let outside_dir: &'static str = Box::leak(outside.display().to_string().into_boxed_str());
        let outside_target: &'static str = Box::leak(
            outside
                .join("target")
                .display()
                .to_string()
                .into_boxed_str(),
        );

        let cases: Vec<(&str, Vec<E>)> = vec![
            (
                "file through a symlinked parent",
                vec![
                    E {
                        link: outside_dir,
                        ..e("./a", EntryType::Symlink)
                    },
                    E {
                        data: b"x",
                        ..e("./a/passwd", EntryType::Regular)
                    },
                ],
            ),
            (
                "directory through a symlinked parent",
                vec![
                    E {
                        link: outside_dir,
                        ..e("./a", EntryType::Symlink)
                    },
                    e("./a/sub/", EntryType::Directory),
                ],
            ),
            (
                "symlink through a symlinked parent",
                vec![
                    E {
                        link: outside_dir,
                        ..e("./a", EntryType::Symlink)
                    },
                    E {
                        link: "/etc/passwd",
                        ..e("./a/l", EntryType::Symlink)
                    },
                ],
            ),
            (
                "through a symlink pointing inside",
                vec![
                    e("./real/", EntryType::Directory),
                    E {
                        link: "real",
                        ..e("./a", EntryType::Symlink)
                    },
                    e("./a/x", EntryType::Regular),
                ],
            ),
            (
                "file over a symlink",
                vec![
                    E {
                        link: outside_target,
                        ..e("./x", EntryType::Symlink)
                    },
                    E {
                        data: b"pwned",
                        ..e("./x", EntryType::Regular)
                    },
                ],
            ),
            (
                "directory over a symlink",
                vec![
                    E {
                        link: outside_dir,
                        ..e("./x", EntryType::Symlink)
                    },
                    e("./x/", EntryType::Directory),
                ],
            ),
            (
                "file under a file",
                vec![e("./f", EntryType::Regular), e("./f/x", EntryType::Regular)],
            ),
            (
                "duplicate file",
                vec![e("./f", EntryType::Regular), e("./f", EntryType::Regular)],
            ),
            (
                "hard link outside by dotdot",
                vec![E {
                    link: "../outside/target",
                    ..e("./h", EntryType::Link)
                }],
            ),
            (
                "hard link to an absolute path",
                vec![E {
                    link: outside_target,
                    ..e("./h", EntryType::Link)
                }],
            ),
            (
                "hard link to a symlink",
                vec![
                    E {
                        link: outside_target,
                        ..e("./l", EntryType::Symlink)
                    },
                    E {
                        link: "./l",
                        ..e("./h", EntryType::Link)
                    },
                ],
            ),
            (
                "hard link through a symlinked parent",
                vec![
                    E {
                        link: outside_dir,
                        ..e("./a", EntryType::Symlink)
                    },
                    E {
                        link: "./a/target",
                        ..e("./h", EntryType::Link)
                    },
                ],
            ),
            (
                "hard link to a later file",
                vec![
                    E {
                        link: "./f",
                        ..e("./h", EntryType::Link)
                    },
                    e("./f", EntryType::Regular),
                ],
            ),
            (
                "dotdot",
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
            ("root is a file", vec![e("./", EntryType::Regular)]),
        ];
        for (what, entries) in cases {
            let dest = tmp.path().join(what.replace(' ', "-"));
            let err = unpack_guest(&entries, &dest).expect_err(what);
            assert_eq!(err.kind(), "unsafe_archive", "{what}: {err}");
            assert!(err.hint().is_some(), "{what}");
            assert!(!dest.exists(), "{what}: a refused archive leaves nothing");
            assert!(!tmp.path().join("escape").exists(), "{what}");
            let left: Vec<_> = fs::read_dir(&outside)
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(left, ["target"], "{what}");
            let target = fs::metadata(outside.join("target")).expect("target");
            assert_eq!(target.nlink(), 1, "{what}");
            assert_eq!(
                fs::read(outside.join("target")).expect("read"),
                b"secret",
                "{what}"
            );
        }
    }

    #[test]
    fn guest_output_is_capped_in_bytes_and_entries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let limits = OutputLimits {
            max_bytes: 10,
            max_entries: 4,
        };
        let run = |name: &str, entries: &[E]| {
            let dest = tmp.path().join(name);
            let r = unpack(&tar_of(entries)[..], &dest, &guest(test_owner(), limits));
            (r, dest)
        };
        // At the limits: fine (skipped entries count as entries).
        let (r, _) = run(
            "at-limits",
            &[
                e("./", EntryType::Directory),
                E {
                    data: b"12345",
                    ..e("./a", EntryType::Regular)
                },
                E {
                    link: "./a",
                    ..e("./b", EntryType::Link)
                },
                e("./fifo", EntryType::Fifo),
            ],
        );
        assert_eq!(r.expect("at the limits").bytes, 10);

        let too_many: Vec<E> = ["./1", "./2", "./3", "./4", "./5"]
            .into_iter()
            .map(|p| e(p, EntryType::Regular))
            .collect();
        let too_big = [
            E {
                data: b"123456",
                ..e("./a", EntryType::Regular)
            },
            E {
                data: b"12345",
                ..e("./b", EntryType::Regular)
            },
        ];
        let copy_too_big = [
            E {
                data: b"123456",
                ..e("./a", EntryType::Regular)
            },
            E {
                link: "./a",
                ..e("./b", EntryType::Link)
            },
        ];
        let one_big = [E {
            data: b"12345678901",
            ..e("./a", EntryType::Regular)
        }];
        for (name, entries, message) in [
            ("entries", &too_many[..], "more than 4 entries"),
            ("bytes", &too_big[..], "more than 10 bytes"),
            ("copy", &copy_too_big[..], "more than 10 bytes"),
            ("one", &one_big[..], "more than 10 bytes"),
        ] {
            let (r, dest) = run(name, entries);
            let err = r.expect_err(name);
            assert_eq!(err.kind(), "export_too_large", "{name}: {err}");
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert!(
                err.hint().is_some_and(|h| h.contains("--max-bytes")),
                "{name}"
            );
            assert!(!dest.exists(), "{name}: nothing is left half-written");
        }
    }

    #[test]
    fn a_single_guest_file_is_masked_owned_and_capped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let owner = test_owner();
        let tar = tar_of(&[E {
            mode: 0o6755,
            data: b"#!/bin/sh\n",
            ..e("suid", EntryType::Regular)
        }]);
        let dest = tmp.path().join("suid");
        let stats =
            unpack_single_file(&tar[..], &dest, owner, &OutputLimits::default()).expect("file");
        assert_eq!((stats.files, stats.bytes), (1, 10));
        let m = fs::symlink_metadata(&dest).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid));

        let small = OutputLimits {
            max_bytes: 9,
            max_entries: 1,
        };
        let dest = tmp.path().join("big");
        let err = unpack_single_file(&tar[..], &dest, owner, &small).expect_err("cap");
        assert_eq!(err.kind(), "export_too_large");
        assert!(!dest.exists());

        // A name that exists, as a symlink here, is never opened through.
        let target = tmp.path().join("target");
        fs::write(&target, b"keep").expect("write");
        let dest = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &dest).expect("symlink");
        unpack_single_file(&tar[..], &dest, owner, &OutputLimits::default()).expect_err("existing");
        assert_eq!(fs::read(&target).expect("read"), b"keep");
        assert!(fs::symlink_metadata(&dest)
            .expect("link")
            .file_type()
            .is_symlink());

        let dir = tar_of(&[e("./", EntryType::Directory)]);
        let err = unpack_single_file(&dir[..], &tmp.path().join("d"), owner, &small)
            .expect_err("not a file");
        assert_eq!(err.kind(), "unsafe_archive");
    }

    #[test]
    fn sudo_ids_count_only_for_root_and_only_when_numeric() {
        let o = |uid, gid| Owner { uid, gid };
        assert_eq!(
            Owner::from_ids(0, 0, Some("1000"), Some("1001")),
            o(1000, 1001)
        );
        assert_eq!(Owner::from_ids(0, 0, None, None), o(0, 0));
        assert_eq!(Owner::from_ids(0, 0, Some("1000"), None), o(0, 0));
        for bad in ["", "abc", "-1", "+5", "1000 ", "4294967295", "99999999999"] {
            assert_eq!(
                Owner::from_ids(0, 0, Some(bad), Some("1001")),
                o(0, 0),
                "{bad:?}"
            );
            assert_eq!(
                Owner::from_ids(0, 0, Some("1000"), Some(bad)),
                o(0, 0),
                "{bad:?}"
            );
        }
        // Not root: sudo's variables are someone else's story.
        assert_eq!(
            Owner::from_ids(500, 501, Some("1000"), Some("1001")),
            o(500, 501)
        );
    }

    #[test]
    fn placing_output_never_writes_through_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).expect("mkdir");
        fs::write(victim.join("keep"), b"keep").expect("write");
        let stage_dir = |name: &str| {
            let out = tmp.path().join(name);
            let staged = staging_path(&out).expect("staging");
            assert_eq!(staged.parent(), out.parent(), "staged beside the output");
            fs::create_dir(&staged).expect("mkdir");
            fs::write(staged.join("new"), b"new").expect("write");
            (staged, out)
        };

        // Onto nothing: moved.
        let (staged, out) = stage_dir("fresh");
        place(&staged, &out, false).expect("place");
        assert!(out.join("new").is_file() && !staged.exists());

        // Onto something, not replacing: refused, both kept.
        let (staged, out) = stage_dir("fresh");
        let err = place(&staged, &out, false).expect_err("exists");
        assert_eq!(err.kind(), "already_exists");
        assert!(staged.join("new").is_file());
        remove_staged(&staged);
        assert!(!staged.exists());

        // Onto a symlink to a directory, replacing: the link is replaced, its target untouched.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let (staged, out) = stage_dir("link");
        let err = place(&staged, &out, false).expect_err("a symlink exists too");
        assert_eq!(err.kind(), "already_exists");
        place(&staged, &out, true).expect("replace");
        assert!(fs::symlink_metadata(&out).expect("out").is_dir());
        assert!(out.join("new").is_file());
        let left: Vec<_> = fs::read_dir(&victim)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["keep"]);
        let siblings = fs::read_dir(tmp.path()).expect("ls").count();
        assert_eq!(siblings, 3, "victim, fresh and link: no staging left");

        // A file replaces a directory.
        let staged = staging_path(&out).expect("staging");
        fs::write(&staged, b"file").expect("write");
        place(&staged, &out, true).expect("replace dir");
        assert_eq!(fs::read(&out).expect("read"), b"file");
    }
}
