//! A stopped sandbox's root filesystem read offline: its writable layer over its environment,
//! merged as overlayfs merges them (whiteouts hide, opaque directories cut the layers below),
//! without booting, mounting or running anything of the guest's.
//!
//! A layer is a host directory (the container level's upper directory and unpacked rootfs) or a
//! directory inside an ext4 image (the VM levels' writable disk and environment image), read
//! with e2fsprogs' `debugfs`. No crate reads ext4 with its device numbers and extended
//! attributes (what whiteouts and opaque directories are made of), so debugfs it is; it is only
//! ever told inode numbers (`ls -p <12>`), never a name, so a guest's file names cannot become
//! debugfs commands.
//!
//! Everything here is the guest's: names, link targets and sizes are data, symlinks are resolved
//! inside the guest's root and never on the host, and reads are capped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};

/// Most symlinks followed while resolving one path (as Linux's `MAXSYMLINKS`).
const MAX_LINK_HOPS: u32 = 40;
/// Most bytes of debugfs output read for one directory listing.
const MAX_LISTING_BYTES: u64 = 256 << 20;
/// The overlayfs attribute that marks a directory as hiding the layers below it.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Where one layer lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSource {
    /// A directory on the host.
    Dir(PathBuf),
    /// A directory (`dir`, absolute inside the image, e.g. `/upper`) of an ext4 image.
    Ext4 {
        /// The image file.
        image: PathBuf,
        /// The layer's root inside it.
        dir: String,
    },
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (devices, fifos, sockets).
    Other,
}

impl EntryKind {
    /// As listings name it: `file`, `dir`, `symlink` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

/// One entry of the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to what was listed (or the entry's own name when a non-directory was).
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// A symlink's target, as stored.
    pub link_target: Option<String>,
}

/// Where an entry lives in its layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Handle {
    Host(PathBuf),
    Ino(u64),
}

/// An entry as one layer has it.
#[derive(Debug, Clone)]
struct Raw {
    name: OsString,
    kind: EntryKind,
    chardev: bool,
    mode: u32,
    size: u64,
    handle: Handle,
}

enum Layer {
    Dir,
    Ext4(PathBuf),
}

/// A merged entry: where it comes from, and for a directory every layer that adds to it.
#[derive(Debug, Clone)]
struct Node {
    kind: EntryKind,
    mode: u32,
    size: u64,
    layer: usize,
    handle: Handle,
    /// For directories: `(layer, handle)` from the top down, cut at an opaque one.
    dirs: Vec<(usize, Handle)>,
}

/// A read-only view of layers merged as overlayfs merges them, the first on top.
pub struct OverlayView {
    layers: Vec<Layer>,
    root: Node,
    /// Each layer directory's entries by name, read once.
    listings: HashMap<(usize, Handle), BTreeMap<OsString, Raw>>,
}

impl OverlayView {
    /// Opens `layers` (top first). A layer whose root does not exist (a writable disk that was
    /// never written) adds nothing.
    pub fn open(layers: &[LayerSource]) -> Result<OverlayView> {
        let mut view = OverlayView {
            layers: Vec::with_capacity(layers.len()),
            root: Node {
                kind: EntryKind::Dir,
                mode: 0o755,
                size: 0,
                layer: 0,
                handle: Handle::Ino(0),
                dirs: Vec::new(),
            },
            listings: HashMap::new(),
        };
        // Every layer first: whether a directory can hide anything depends on what is below it.
        for src in layers {
            view.layers.push(match src {
                LayerSource::Dir(_) => Layer::Dir,
                LayerSource::Ext4 { image, .. } => {
                    if !image.is_file() {
                        return Err(Error::io(
                            format!("open disk image {}", image.display()),
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ));
                    }
                    Layer::Ext4(image.clone())
                }
            });
        }
        let mut roots = Vec::new();
        for (i, src) in layers.iter().enumerate() {
            let root = match src {
                LayerSource::Dir(p) => match std::fs::symlink_metadata(p) {
                    Ok(m) if m.is_dir() => Some((Handle::Host(p.clone()), m.mode() & 0o7777)),
                    Ok(_) => None,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
                },
                LayerSource::Ext4 { dir, .. } => view.image_dir(i, dir)?,
            };
            if let Some((h, mode)) = root {
                if roots.is_empty() {
                    view.root.mode = mode;
                    view.root.layer = i;
                    view.root.handle = h.clone();
                }
                let opaque = view.opaque(i, &h)?;
                roots.push((i, h));
                if opaque {
                    break;
                }
            }
        }
        view.root.dirs = roots;
        Ok(view)
    }

    /// Lists `path` (a guest path, see [`guest_path`]): a directory's entries (all of them
    /// below it when `recursive`), sorted, depth first, or a non-directory as itself; at most
    /// `max` entries, and whether there were more. Links are listed, never followed, except in
    /// the components that lead to `path`.
    pub fn list(&mut self, path: &str, recursive: bool, max: u64) -> Result<(Vec<Entry>, bool)> {
        let node = self.resolve(&guest_path(path)?, false)?;
        if node.kind != EntryKind::Dir {
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok((vec![self.entry(name, &node)?], false));
        }
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), node)];
        while let Some((prefix, dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            for (name, child) in self.children(&dir)? {
                if out.len() as u64 >= max {
                    return Ok((out, true));
                }
                let rel = if prefix.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{prefix}/{}", name.to_string_lossy())
                };
                out.push(self.entry(rel.clone(), &child)?);
                if recursive && child.kind == EntryKind::Dir {
                    subdirs.push((rel, child));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok((out, false))
    }

    /// Reads at most `max` bytes of the file at `path` (links followed inside the guest's
    /// root); returns them and the file's size.
    pub fn read(&mut self, path: &str, max: u64) -> Result<(Vec<u8>, u64)> {
        let node = self.resolve(&guest_path(path)?, true)?;
        if node.kind != EntryKind::File {
            return Err(Error::InvalidRequest(format!(
                "{path}: not a regular file (it is a {})",
                match node.kind {
                    EntryKind::Dir => "directory",
                    EntryKind::Symlink => "symlink",
                    _ => "special file",
                }
            )));
        }
        let bytes = match (&self.layers[node.layer], &node.handle) {
            (Layer::Dir, Handle::Host(p)) => read_host(p, max)?,
            (Layer::Ext4(image), Handle::Ino(ino)) => debugfs(image, &format!("cat <{ino}>"), max)?,
            _ => return Err(Error::InvalidRequest("inconsistent layer handle".into())),
        };
        Ok((bytes, node.size))
    }

    fn entry(&self, path: String, node: &Node) -> Result<Entry> {
        let link_target = if node.kind == EntryKind::Symlink {
            Some(String::from_utf8_lossy(&self.link(node)?).into_owned())
        } else {
            None
        };
        Ok(Entry {
            path,
            kind: node.kind,
            size: if node.kind == EntryKind::File {
                node.size
            } else {
                0
            },
            mode: node.mode,
            link_target,
        })
    }

    /// Walks a guest path from the root, following links in its components (and in the last
    /// one when `follow_last`) inside the guest's root.
    fn resolve(&mut self, path: &str, follow_last: bool) -> Result<Node> {
        let mut todo: Vec<OsString> = components(path)?;
        todo.reverse();
        let mut stack: Vec<Node> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                stack.pop();
                continue;
            }
            let here = stack.last().cloned().unwrap_or_else(|| self.root.clone());
            if here.kind != EntryKind::Dir {
                return Err(not_found(path, "a component is not a directory"));
            }
            let Some(child) = self.child(&here, &name)? else {
                return Err(not_found(path, "no such file or directory"));
            };
            if child.kind == EntryKind::Symlink && (follow_last || !todo.is_empty()) {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(Error::InvalidRequest(format!(
                        "{path}: too many levels of symbolic links"
                    )));
                }
                let target = self.link(&child)?;
                let target = OsStr::from_bytes(&target);
                if Path::new(target).is_absolute() {
                    stack.clear();
                }
                let mut more = components(&target.to_string_lossy())?;
                more.reverse();
                todo.extend(more);
                continue;
            }
            stack.push(child);
        }
        Ok(stack.pop().unwrap_or_else(|| self.root.clone()))
    }

    /// The merged children of a directory, sorted by name.
    fn children(&mut self, dir: &Node) -> Result<Vec<(OsString, Node)>> {
        let mut names = BTreeSet::new();
        for (layer, h) in dir.dirs.clone() {
            names.extend(self.listing(layer, &h)?.keys().cloned());
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(child) = self.child(dir, &n)? {
                out.push((n, child));
            }
        }
        Ok(out)
    }

    /// One merged child: the topmost layer that has the name decides, a whiteout hides it, and
    /// a directory gathers the same directory from the layers below until an opaque one.
    fn child(&mut self, dir: &Node, name: &OsStr) -> Result<Option<Node>> {
        let mut found: Option<Node> = None;
        for (layer, h) in dir.dirs.clone() {
            let Some(raw) = self.listing(layer, &h)?.get(name).cloned() else {
                continue;
            };
            if raw.chardev && self.whiteout(layer, &raw)? {
                break;
            }
            match &mut found {
                None => {
                    let dirs = if raw.kind == EntryKind::Dir {
                        vec![(layer, raw.handle.clone())]
                    } else {
                        Vec::new()
                    };
                    let stop = raw.kind != EntryKind::Dir || self.opaque(layer, &raw.handle)?;
                    found = Some(Node {
                        kind: raw.kind,
                        mode: raw.mode,
                        size: raw.size,
                        layer,
                        handle: raw.handle,
                        dirs,
                    });
                    if stop {
                        break;
                    }
                }
                Some(node) => {
                    // A directory above hides whatever else a lower layer has by that name.
                    if raw.kind != EntryKind::Dir {
                        break;
                    }
                    let opaque = self.opaque(layer, &raw.handle)?;
                    node.dirs.push((layer, raw.handle));
                    if opaque {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    fn listing(&mut self, layer: usize, h: &Handle) -> Result<&BTreeMap<OsString, Raw>> {
        let key = (layer, h.clone());
        if !self.listings.contains_key(&key) {
            let list = match (&self.layers[layer], h) {
                (Layer::Dir, Handle::Host(p)) => list_host(p)?,
                (Layer::Ext4(image), Handle::Ino(ino)) => list_ext4(image, *ino)?,
                _ => Vec::new(),
            };
            let by_name = list.into_iter().map(|r| (r.name.clone(), r)).collect();
            self.listings.insert(key.clone(), by_name);
        }
        Ok(&self.listings[&key])
    }

    fn whiteout(&self, layer: usize, raw: &Raw) -> Result<bool> {
        Ok(match (&self.layers[layer], &raw.handle) {
            (Layer::Dir, Handle::Host(p)) => std::fs::symlink_metadata(p)
                .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
                .unwrap_or(false),
            (Layer::Ext4(image), Handle::Ino(ino)) => {
                let stat = debugfs(image, &format!("stat <{ino}>"), 64 << 10)?;
                let text = String::from_utf8_lossy(&stat);
                text.lines().any(|l| {
                    l.contains("Device major/minor number:")
                        && l.split("number:")
                            .nth(1)
                            .is_some_and(|n| n.trim().starts_with("00:00"))
                })
            }
            _ => false,
        })
    }

    /// Whether a directory hides the layers below it; the lowest layer has none to hide, so
    /// its directories are not asked (on an image that would be a debugfs run per directory).
    fn opaque(&self, layer: usize, h: &Handle) -> Result<bool> {
        if layer + 1 >= self.layers.len() {
            return Ok(false);
        }
        Ok(match (&self.layers[layer], h) {
            (Layer::Dir, Handle::Host(p)) => host_xattr(p, OPAQUE_XATTR).as_deref() == Some(b"y"),
            (Layer::Ext4(image), Handle::Ino(ino)) => {
                let out = debugfs(image, &format!("ea_get <{ino}> {OPAQUE_XATTR}"), 64 << 10)?;
                String::from_utf8_lossy(&out).contains(&format!("{OPAQUE_XATTR} (1) = \"y\""))
            }
            _ => false,
        })
    }

    fn link(&self, node: &Node) -> Result<Vec<u8>> {
        match (&self.layers[node.layer], &node.handle) {
            (Layer::Dir, Handle::Host(p)) => std::fs::read_link(p)
                .map(|t| t.into_os_string().into_vec())
                .ctx(|| format!("read link {}", p.display())),
            (Layer::Ext4(image), Handle::Ino(ino)) => {
                // A short target lives in the inode ("fast" link), which `cat` does not show;
                // its length is the link's size, so the quoted text is cut exactly there.
                let stat = debugfs(image, &format!("stat <{ino}>"), 64 << 10)?;
                let marker = b"Fast link dest: \"";
                if let Some(at) = find(&stat, marker) {
                    let start = at + marker.len();
                    let end = (start + node.size as usize).min(stat.len());
                    return Ok(stat[start..end].to_vec());
                }
                debugfs(image, &format!("cat <{ino}>"), 4096)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The inode and mode of `dir` inside layer `layer`'s image, if it exists and is a directory.
    fn image_dir(&mut self, layer: usize, dir: &str) -> Result<Option<(Handle, u32)>> {
        let mut h = Handle::Ino(2);
        let mut mode = 0o755;
        for c in components(dir)? {
            let Some(raw) = self.listing(layer, &h)?.get(&c).cloned() else {
                return Ok(None);
            };
            if raw.kind != EntryKind::Dir {
                return Ok(None);
            }
            h = raw.handle;
            mode = raw.mode;
        }
        Ok(Some((h, mode)))
    }
}

/// Writes `layer` as a standalone ext4 image at `out` (a new file): a VM's writable disk is
/// copied as it is, holes kept (the layer is under `/upper` in it); a host directory becomes a
/// new image with the layer at its root. Returns where the layer is inside the image and the
/// image's size in bytes.
pub fn export_layer(layer: &LayerSource, out: &Path) -> Result<(String, u64)> {
    match layer {
        LayerSource::Dir(dir) => {
            let (bytes, entries) = crate::tree_usage(dir);
            let size = crate::image_size(bytes, entries);
            crate::mkfs_ext4(Some(dir), out, size, entries)?;
            Ok(("/".into(), size))
        }
        LayerSource::Ext4 { image, dir } => {
            let size = sparse_copy(image, out)?;
            Ok((dir.clone(), size))
        }
    }
}

/// Copies `src` to the new file `dst`, writing only its data extents (a sandbox's writable disk
/// is a mostly empty sparse file of several GiB). Returns the file's length.
fn sparse_copy(src: &Path, dst: &Path) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let from = std::fs::File::open(src).ctx(|| format!("open {}", src.display()))?;
    let len = from
        .metadata()
        .ctx(|| format!("stat {}", src.display()))?
        .len();
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .ctx(|| format!("create {}", dst.display()))?;
    to.set_len(len).ctx(|| format!("size {}", dst.display()))?;
    let (fi, fo) = (from.as_raw_fd(), to.as_raw_fd());
    let mut at: i64 = 0;
    while (at as u64) < len {
        // SAFETY: plain lseek on a file descriptor this function owns.
        let data = unsafe { libc::lseek(fi, at, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data past `at`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fi, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let (mut off_in, mut off_out) = (data, data);
        while off_in < end {
            // SAFETY: both descriptors are open for the call; the offsets are valid pointers
            // to locals.
            let n = unsafe {
                libc::copy_file_range(
                    fi,
                    &mut off_in,
                    fo,
                    &mut off_out,
                    (end - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(Error::io(
                    format!("copy {} to {}", src.display(), dst.display()),
                    std::io::Error::last_os_error(),
                ));
            }
            if n == 0 {
                break;
            }
        }
        at = end;
    }
    to.sync_all().ctx(|| format!("flush {}", dst.display()))?;
    Ok(len)
}

/// A caller's path as a guest path: a relative one is under `/workspace`; `..` stops at `/`.
pub fn guest_path(path: &str) -> Result<String> {
    if path.contains('\0') {
        return Err(Error::InvalidRequest("path contains a NUL byte".into()));
    }
    let full = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new("/workspace").join(path)
    };
    let mut out = PathBuf::from("/");
    for c in full.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

fn components(path: &str) -> Result<Vec<OsString>> {
    if path.contains('\0') {
        return Err(Error::InvalidRequest("path contains a NUL byte".into()));
    }
    Ok(Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect())
}

fn not_found(path: &str, why: &str) -> Error {
    Error::DiskPathNotFound {
        path: path.into(),
        why: why.into(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn list_host(dir: &Path) -> Result<Vec<Raw>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let e = e.ctx(|| format!("list {}", dir.display()))?;
        let path = e.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = m.file_type();
        out.push(Raw {
            name: e.file_name(),
            kind: kind_of(ft.is_file(), ft.is_dir(), ft.is_symlink()),
            chardev: ft.is_char_device(),
            mode: m.mode() & 0o7777,
            size: m.len(),
            handle: Handle::Host(path),
        });
    }
    Ok(out)
}

fn kind_of(file: bool, dir: bool, link: bool) -> EntryKind {
    if file {
        EntryKind::File
    } else if dir {
        EntryKind::Dir
    } else if link {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

/// Parses `ls -p` output: `/INODE/MODE/UID/GID/NAME/SIZE/` per entry. A name cannot hold a
/// `/`, so the stream is split on the six slashes of each record, not on lines: a name with a
/// newline in it stays one name.
fn parse_ls_p(out: &[u8]) -> Vec<(u64, u32, OsString, u64)> {
    let mut entries = Vec::new();
    let mut rest = out;
    loop {
        while let Some((&c, tail)) = rest.split_first() {
            if c == b'/' {
                break;
            }
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        let fields: Vec<&[u8]> = rest[1..].splitn(7, |&c| c == b'/').collect();
        if fields.len() < 7 {
            break;
        }
        let num = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        let (Some(ino), Some(mode)) = (
            num(fields[0]),
            std::str::from_utf8(fields[1])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 8).ok()),
        ) else {
            // Not a record start (debugfs' own text): skip this slash and look again.
            rest = &rest[1..];
            continue;
        };
        let name = OsString::from_vec(fields[4].to_vec());
        let size = num(fields[5]).unwrap_or(0);
        entries.push((ino, mode, name, size));
        rest = fields[6];
    }
    entries
}

fn list_ext4(image: &Path, ino: u64) -> Result<Vec<Raw>> {
    let out = debugfs(image, &format!("ls -p <{ino}>"), MAX_LISTING_BYTES)?;
    Ok(parse_ls_p(&out)
        .into_iter()
        .filter(|(_, _, name, _)| name != "." && name != ".." && !name.is_empty())
        .map(|(ino, mode, name, size)| {
            let fmt = mode & 0o170000;
            Raw {
                name,
                kind: kind_of(fmt == 0o100000, fmt == 0o040000, fmt == 0o120000),
                chardev: fmt == 0o020000,
                mode: mode & 0o7777,
                size,
                handle: Handle::Ino(ino),
            }
        })
        .collect())
}

fn read_host(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ctx(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    f.take(max)
        .read_to_end(&mut out)
        .ctx(|| format!("read {}", path.display()))?;
    Ok(out)
}

fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: both strings are NUL-terminated and live for the call; `buf` is writable for its
    // length, which is what is passed.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// e2fsprogs' `debugfs`, found on PATH or in /sbin.
pub fn find_debugfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("debugfs"))
        .find(|p| p.is_file())
}

/// Runs one read-only debugfs request on `image`; returns at most `max` bytes of what it
/// printed (the rest is not read: debugfs is stopped).
fn debugfs(image: &Path, request: &str, max: u64) -> Result<Vec<u8>> {
    let bin = find_debugfs().ok_or_else(|| {
        Error::io(
            "debugfs not found (install e2fsprogs)".to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    let mut child = Command::new(bin)
        .arg("-R")
        .arg(request)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| "run debugfs".into())?;
    let mut out = Vec::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // stderr on a thread of its own, so that neither pipe can fill up and stall debugfs.
    let errs = std::thread::spawn(move || {
        let mut e = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(64 << 10).read_to_end(&mut e);
        }
        e
    });
    if let Some(s) = stdout {
        s.take(max)
            .read_to_end(&mut out)
            .ctx(|| "read debugfs output".into())?;
    }
    let _ = child.kill();
    child.wait().ctx(|| "wait for debugfs".into())?;
    let errs = errs.join().unwrap_or_default();
    let errs = String::from_utf8_lossy(&errs);
    // debugfs prints its banner on stderr and exits 0 even when a request fails; a failure to
    // open the image is the one that matters here.
    if let Some(line) = errs
        .lines()
        .find(|l| l.contains("while opening filesystem") || l.contains("Bad magic"))
    {
        return Err(Error::io(
            format!("read disk image {}: {}", image.display(), line.trim()),
            std::io::Error::other("debugfs failed"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_p_records_are_split_on_slashes_so_odd_names_survive() {
        let out = b"/2/040755/0/0/.//\n/12/100644/0/0/a.txt/6/\n/13/100644/0/0/two\nlines/3/\n/14/020644/0/0/wh/0/\n";
        let got = parse_ls_p(out);
        let names: Vec<_> = got
            .iter()
            .map(|e| e.2.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".", "a.txt", "two\nlines", "wh"]);
        assert_eq!(got[1], (12, 0o100644, OsString::from("a.txt"), 6));
        assert_eq!(got[3].1 & 0o170000, 0o020000);
    }

    #[test]
    fn guest_paths_are_under_workspace_unless_absolute_and_never_climb_above_the_root() {
        assert_eq!(guest_path("src/a.txt").unwrap(), "/workspace/src/a.txt");
        assert_eq!(guest_path("/etc/os-release").unwrap(), "/etc/os-release");
        assert_eq!(guest_path("../../../../etc").unwrap(), "/etc");
        assert_eq!(guest_path("/").unwrap(), "/");
        assert!(guest_path("a\0b").is_err());
    }

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (p, content) in files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
    }

    fn whiteout(p: &Path) -> bool {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mknod has no other pointer argument.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, 0) == 0 }
    }

    fn layered(dir: &Path) -> Option<Vec<LayerSource>> {
        let (upper, lower) = (dir.join("upper"), dir.join("lower"));
        tree(
            &lower,
            &[
                ("etc/os-release", "debian"),
                ("workspace/gone.txt", "old"),
                ("workspace/kept.txt", "lower"),
                ("workspace/replaced/old.txt", "x"),
                ("workspace/merged/low.txt", "l"),
            ],
        );
        tree(
            &upper,
            &[
                ("workspace/kept.txt", "upper wins"),
                ("workspace/new.txt", "new"),
                ("workspace/replaced/fresh.txt", "y"),
                ("workspace/merged/up.txt", "u"),
            ],
        );
        std::os::unix::fs::symlink("/etc/os-release", upper.join("workspace/abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", upper.join("workspace/climb")).unwrap();
        if !whiteout(&upper.join("workspace/gone.txt")) {
            return None;
        }
        let opaque =
            std::ffi::CString::new(upper.join("workspace/replaced").as_os_str().as_bytes())
                .unwrap();
        let name = std::ffi::CString::new(OPAQUE_XATTR).unwrap();
        // SAFETY: NUL-terminated path and name; the value pointer is valid for 1 byte.
        let set =
            unsafe { libc::setxattr(opaque.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if set != 0 {
            return None;
        }
        Some(vec![LayerSource::Dir(upper), LayerSource::Dir(lower)])
    }

    fn check_merged(layers: &[LayerSource]) {
        let mut v = OverlayView::open(layers).unwrap();
        let (entries, more) = v.list("/workspace", true, 100).unwrap();
        assert!(!more);
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "abs-link",
                "climb",
                "kept.txt",
                "merged",
                "new.txt",
                "replaced",
                // A directory's own entries come first, then each subdirectory's, as the
                // agent lists a running workspace.
                "merged/low.txt",
                "merged/up.txt",
                "replaced/fresh.txt"
            ],
            "{entries:?}"
        );
        let link = entries.iter().find(|e| e.path == "abs-link").unwrap();
        assert_eq!(link.link_target.as_deref(), Some("/etc/os-release"));
        assert_eq!(
            v.read("kept.txt", 100).unwrap(),
            (b"upper wins".to_vec(), 10)
        );
        assert_eq!(v.read("kept.txt", 3).unwrap().0, b"upp");
        // Links resolve inside the guest's root: `..` stops at its `/`.
        assert_eq!(v.read("abs-link", 100).unwrap().0, b"debian");
        assert_eq!(v.read("climb/os-release", 100).unwrap().0, b"debian");
        assert!(v.read("gone.txt", 100).is_err());
        assert!(v.read("replaced/old.txt", 100).is_err());
        assert!(v.read("merged", 100).is_err());
        let (one, _) = v.list("new.txt", false, 100).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].path.as_str(), one[0].size), ("new.txt", 3));
    }

    #[test]
    fn host_layers_merge_as_overlayfs_does() {
        let dir = tempfile::tempdir().unwrap();
        let Some(layers) = layered(dir.path()) else {
            eprintln!("SKIPPED: making whiteouts and trusted xattrs needs root");
            return;
        };
        check_merged(&layers);
    }

    #[test]
    fn ext4_layers_merge_as_overlayfs_does() {
        let dir = tempfile::tempdir().unwrap();
        if layered(dir.path()).is_none() {
            eprintln!("SKIPPED: making whiteouts and trusted xattrs needs root");
            return;
        }
        if find_debugfs().is_none() || crate::find_mkfs_ext4().is_none() {
            eprintln!("SKIPPED: needs e2fsprogs (debugfs, mkfs.ext4)");
            return;
        }
        // The writable disk holds its layer under /upper, as a VM's does.
        let rw = dir.path().join("rw");
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::rename(dir.path().join("upper"), rw.join("upper")).unwrap();
        let (rw_img, env_img) = (dir.path().join("rw.ext4"), dir.path().join("env.ext4"));
        crate::mkfs_ext4(Some(&rw), &rw_img, 64 << 20, 0).unwrap();
        crate::mkfs_ext4(Some(&dir.path().join("lower")), &env_img, 64 << 20, 0).unwrap();
        check_merged(&[
            LayerSource::Ext4 {
                image: rw_img.clone(),
                dir: "/upper".into(),
            },
            LayerSource::Ext4 {
                image: env_img,
                dir: "/".into(),
            },
        ]);
        // Exported, the disk is a copy that reads the same, holes kept.
        let copy = dir.path().join("copy.ext4");
        let (at, size) = export_layer(
            &LayerSource::Ext4 {
                image: rw_img.clone(),
                dir: "/upper".into(),
            },
            &copy,
        )
        .unwrap();
        assert_eq!((at.as_str(), size), ("/upper", 64 << 20));
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(&rw_img).unwrap()
        );
        let used = |p: &Path| std::fs::metadata(p).unwrap().blocks();
        assert!(used(&copy) <= used(&rw_img) + 8, "the copy is not sparse");
        // A writable disk never written to adds nothing.
        let empty = dir.path().join("empty.ext4");
        crate::mkfs_ext4(None, &empty, 16 << 20, 0).unwrap();
        let mut v = OverlayView::open(&[
            LayerSource::Ext4 {
                image: empty,
                dir: "/upper".into(),
            },
            LayerSource::Dir(dir.path().join("lower")),
        ])
        .unwrap();
        assert_eq!(v.read("/etc/os-release", 100).unwrap().0, b"debian");
    }
}
