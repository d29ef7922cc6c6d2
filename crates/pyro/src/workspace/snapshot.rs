//! Snapshots as content-addressed trees: `objects/<sha256>` holds each distinct file content
//! once, and `snapshots/<name>.json` lists the tree. Taking a snapshot stores only contents not
//! seen before, so snapshots after the first cost about as much as what changed.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::Pyro;
use crate::error::{Error, IoContext, Result};
use crate::sandbox::Sandbox;
use crate::store::{now_ms, SnapshotRow};
use crate::unpack::OutputLimits;
use crate::workspace::WORKSPACE_PATH;

/// The snapshot taken at create time.
pub const BASELINE: &str = "baseline";
/// Most bytes of content a snapshot, restore or sync may carry.
pub const MAX_ARCHIVE_BYTES: u64 = pyro_api::limits::SNAPSHOT_MAX_BYTES;
/// Most entries a snapshot, restore or sync may carry.
pub const MAX_ARCHIVE_ENTRIES: u64 = pyro_api::limits::SNAPSHOT_MAX_ENTRIES;

/// One entry of a snapshot tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeEntry {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub mode: u32,
    pub mtime: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One snapshot of a workspace, as results show it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Name (`baseline` for the create-time one).
    pub name: String,
    /// `baseline` or `named`.
    pub kind: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Entries.
    pub entries: u64,
    /// Content bytes.
    pub bytes: u64,
}

impl From<SnapshotRow> for SnapshotInfo {
    fn from(r: SnapshotRow) -> SnapshotInfo {
        SnapshotInfo {
            name: r.name,
            kind: r.kind,
            created_at_ms: r.created_at_ms,
            entries: r.entries,
            bytes: r.bytes,
        }
    }
}

/// What deleting a snapshot did.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDeleteResult {
    /// The workspace's id, resolved from whatever name or id the caller gave.
    pub workspace_id: String,
    /// The snapshot.
    pub snapshot: String,
    /// Always true: a snapshot that could not be deleted is an error.
    pub deleted: bool,
}

/// A snapshot as shown to users.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotResult {
    /// The workspace.
    pub workspace_id: String,
    /// The snapshot.
    pub snapshot: SnapshotInfo,
    /// Bytes of new content stored (the rest was already in the object store).
    pub new_bytes: u64,
    /// Milliseconds it took.
    pub duration_ms: u64,
}

pub(crate) fn validate_snapshot_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !n.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid snapshot name {n:?} (1-64 of A-Z a-z 0-9 - _ .)"
        )))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("write {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("sync {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("rename {}", path.display()))
}

/// Reads a tar (from the agent) into the object store; returns the tree and new bytes stored.
fn ingest(tar_path: &Path, objects: &Path, limits: OutputLimits) -> Result<(Vec<TreeEntry>, u64)> {
    std::fs::create_dir_all(objects).ctx(|| format!("create {}", objects.display()))?;
    let f = std::fs::File::open(tar_path).ctx(|| "open snapshot archive".into())?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let mut entries = Vec::new();
    let mut new_bytes = 0u64;
    let mut content = 0u64;
    let too_large = |what: String| Error::SnapshotTooLarge { what };
    let corrupt = |e: std::io::Error| {
        Error::Agent(format!(
            "snapshot archive from the agent is unreadable: {e}"
        ))
    };
    for e in ar.entries().map_err(corrupt)? {
        let mut e = e.map_err(corrupt)?;
        let path = e
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        let entry = match kind {
            tar::EntryType::Directory => TreeEntry {
                path,
                kind: "dir".into(),
                mode,
                mtime,
                size: 0,
                sha256: None,
                link: None,
            },
            tar::EntryType::Symlink => {
                let link = e
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.to_string_lossy().into_owned());
                TreeEntry {
                    path,
                    kind: "symlink".into(),
                    mode,
                    mtime,
                    size: 0,
                    sha256: None,
                    link,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let tmp = objects.join(format!(".in-{}", std::process::id()));
                let mut out = std::fs::File::create(&tmp).ctx(|| "create object".into())?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut size = 0u64;
                loop {
                    let n = e.read(&mut buf).map_err(corrupt)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).ctx(|| "write object".into())?;
                    size += n as u64;
                    if content + size > limits.max_bytes {
                        drop(out);
                        let _ = std::fs::remove_file(&tmp);
                        return Err(too_large(format!(
                            "more than {} bytes of file content",
                            limits.max_bytes
                        )));
                    }
                }
                let sha = hex::encode(hasher.finalize());
                let dest = objects.join(&sha);
                if dest.exists() {
                    let _ = std::fs::remove_file(&tmp);
                } else {
                    // No fsync per object: one syncfs after the whole tree (below) is far
                    // cheaper for thousands of small files and just as safe, since the
                    // manifest naming them is written only after it.
                    std::fs::rename(&tmp, &dest).ctx(|| "store object".into())?;
                    new_bytes += size;
                }
                TreeEntry {
                    path,
                    kind: "file".into(),
                    mode,
                    mtime,
                    size,
                    sha256: Some(sha),
                    link: None,
                }
            }
            _ => continue,
        };
        content += entry.size;
        if entries.len() as u64 >= limits.max_entries {
            return Err(too_large(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        entries.push(entry);
    }
    let dir = std::fs::File::open(objects).ctx(|| format!("open {}", objects.display()))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
        .map_err(|e| Error::io("sync snapshot objects", e.into()))?;
    Ok((entries, new_bytes))
}

/// Builds a tar of a tree from the object store.
fn build_tar(tree: &[TreeEntry], objects: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).ctx(|| format!("create {}", out.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let io = |e: std::io::Error| Error::io("build restore archive", e);
    for e in tree {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_mtime(e.mtime);
        h.set_uid(0);
        h.set_gid(0);
        match e.kind.as_str() {
            "dir" => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &e.path, std::io::empty())
                    .map_err(io)?;
            }
            "symlink" => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.path, e.link.as_deref().unwrap_or(""))
                    .map_err(io)?;
            }
            _ => {
                let sha = e.sha256.as_deref().unwrap_or_default();
                let obj = std::fs::File::open(objects.join(sha))
                    .ctx(|| format!("snapshot object {sha} for {} is missing", e.path))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                b.append_data(&mut h, &e.path, obj).map_err(io)?;
            }
        }
    }
    b.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(())
}

impl Pyro {
    pub(crate) fn snapshot_path(&self, id: &str, name: &str) -> PathBuf {
        self.ws_dir(id)
            .join("snapshots")
            .join(format!("{name}.json"))
    }

    pub(crate) fn objects_dir(&self, id: &str) -> PathBuf {
        self.ws_dir(id).join("objects")
    }

    pub(crate) fn tmp_file(&self, id: &str, what: &str) -> Result<PathBuf> {
        let dir = self.ws_dir(id).join("tmp");
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        Ok(dir.join(format!(
            "{what}-{}-{}",
            std::process::id(),
            crate::sandbox::new_id()
        )))
    }

    pub(crate) fn load_tree(&self, id: &str, name: &str) -> Result<Vec<TreeEntry>> {
        let p = self.snapshot_path(id, name);
        let bytes = std::fs::read(&p).ctx(|| format!("read snapshot {name}"))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptCache {
            path: p,
            message: e.to_string(),
        })
    }

    /// Archives `/workspace` through the agent into the object store as snapshot `name`.
    pub(crate) async fn take_snapshot(
        &self,
        id: &str,
        sb: &Sandbox,
        name: &str,
        kind: &str,
    ) -> Result<SnapshotResult> {
        let t = std::time::Instant::now();
        let tar_path = self.tmp_file(id, "snapshot")?;
        let result = async {
            let cap = super::files::archive_cap(&OutputLimits {
                max_bytes: MAX_ARCHIVE_BYTES,
                max_entries: MAX_ARCHIVE_ENTRIES,
            });
            if super::files::archive_out_capped(sb, WORKSPACE_PATH, &tar_path, cap)
                .await?
                .is_none()
            {
                return Err(Error::SnapshotTooLarge {
                    what: format!("an archive of more than {cap} bytes"),
                });
            }
            let objects = self.objects_dir(id);
            let tp = tar_path.clone();
            let (tree, new_bytes) = tokio::task::spawn_blocking(move || {
                ingest(
                    &tp,
                    &objects,
                    OutputLimits {
                        max_bytes: MAX_ARCHIVE_BYTES,
                        max_entries: MAX_ARCHIVE_ENTRIES,
                    },
                )
            })
            .await
            .map_err(|e| Error::Agent(format!("snapshot task: {e}")))??;
            let dir = self.ws_dir(id).join("snapshots");
            std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            let json = serde_json::to_vec(&tree).map_err(|e| Error::Agent(e.to_string()))?;
            write_atomic(&self.snapshot_path(id, name), &json)?;
            let row = SnapshotRow {
                name: name.into(),
                kind: kind.into(),
                created_at_ms: now_ms(),
                entries: tree.len() as u64,
                bytes: tree.iter().map(|e| e.size).sum(),
            };
            self.inner.store.put_snapshot(id, &row)?;
            Ok(SnapshotResult {
                workspace_id: id.into(),
                snapshot: row.into(),
                new_bytes,
                duration_ms: t.elapsed().as_millis() as u64,
            })
        }
        .await;
        let _ = std::fs::remove_file(&tar_path);
        result
    }

    /// Replaces `/workspace` with a snapshot's tree.
    pub(crate) async fn restore_snapshot(
        &self,
        id: &str,
        sb: &Sandbox,
        name: &str,
    ) -> Result<(u64, u64)> {
        let tree = self.load_tree(id, name)?;
        let tar_path = self.tmp_file(id, "restore")?;
        let result = async {
            let objects = self.objects_dir(id);
            let tp = tar_path.clone();
            tokio::task::spawn_blocking(move || build_tar(&tree, &objects, &tp))
                .await
                .map_err(|e| Error::Agent(format!("restore task: {e}")))??;
            let mut f = tokio::fs::File::open(&tar_path)
                .await
                .ctx(|| "open restore archive".into())?;
            sb.client()
                .archive_in(
                    WORKSPACE_PATH,
                    true,
                    MAX_ARCHIVE_BYTES,
                    MAX_ARCHIVE_ENTRIES,
                    &mut f,
                )
                .await
        }
        .await;
        let _ = std::fs::remove_file(&tar_path);
        let _ = std::fs::remove_file(self.ws_dir(id).join("statcache.json"));
        result
    }

    /// Takes a named snapshot of `/workspace`.
    pub async fn workspace_snapshot_create(&self, id: &str, name: &str) -> Result<SnapshotResult> {
        validate_snapshot_name(name)?;
        if name == BASELINE {
            return Err(Error::InvalidRequest(
                "the baseline snapshot is taken at create time and cannot be replaced".into(),
            ));
        }
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        self.take_snapshot(&w.id, &sb, name, "named").await
    }

    /// A workspace's snapshots.
    pub fn workspace_snapshot_list(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        let w = self.ws_row(id)?;
        Ok(self
            .inner
            .store
            .snapshots(&w.id)?
            .into_iter()
            .map(SnapshotInfo::from)
            .collect())
    }

    /// Deletes a named snapshot and any content only it used.
    pub async fn workspace_snapshot_delete(
        &self,
        id: &str,
        name: &str,
    ) -> Result<SnapshotDeleteResult> {
        if name == BASELINE {
            return Err(Error::InvalidRequest(
                "the baseline snapshot cannot be deleted".into(),
            ));
        }
        validate_snapshot_name(name)?;
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, true).await?;
        if !self.inner.store.delete_snapshot(&w.id, name)? {
            return Err(Error::InvalidRequest(format!(
                "workspace {} has no snapshot named {name:?}",
                w.id
            )));
        }
        let _ = std::fs::remove_file(self.snapshot_path(&w.id, name));
        // Drop objects no remaining snapshot refers to.
        let mut live = HashSet::new();
        for s in self.inner.store.snapshots(&w.id)? {
            for e in self.load_tree(&w.id, &s.name)? {
                if let Some(sha) = e.sha256 {
                    live.insert(sha);
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.objects_dir(&w.id)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&n) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(SnapshotDeleteResult {
            workspace_id: w.id,
            snapshot: name.to_string(),
            deleted: true,
        })
    }
}

/// One changed path.
#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    /// Path relative to `/workspace`.
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub status: String,
    /// `file`, `dir` or `symlink` (the new kind, or the old one for deletions).
    pub kind: String,
    /// Whether the content is binary (no text patch).
    pub binary: bool,
}

/// Counts of changes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffSummary {
    /// All changes.
    pub total: u64,
    /// Added paths.
    pub added: u64,
    /// Modified paths.
    pub modified: u64,
    /// Deleted paths.
    pub deleted: u64,
}

/// What changed under `/workspace` since the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct DiffResult {
    /// The workspace.
    pub workspace_id: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Counts.
    pub summary: DiffSummary,
    /// Changed paths, sorted.
    pub entries: Vec<DiffEntry>,
    /// A unified patch (git style) for text changes; binary files are marked.
    pub patch: String,
    /// Whether the patch was cut at the size cap.
    pub truncated: bool,
    /// Milliseconds it took.
    pub duration_ms: u64,
}

/// What applying a patch changed.
#[derive(Debug, Clone, Serialize)]
pub struct PatchResult {
    /// The workspace.
    pub workspace_id: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Counts.
    pub summary: DiffSummary,
    /// Changed paths.
    pub entries: Vec<DiffEntry>,
}

/// Per-path stat identity and known content hash, so a diff hashes only files that changed.
pub(crate) type StatCache = BTreeMap<String, (u64, i128, i128, u64, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar like the agent sends: a directory, two files with the same content, a symlink.
    fn agent_tar(path: &Path, readme: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut b = tar::Builder::new(f);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_mtime(7);
        dir.set_size(0);
        b.append_data(&mut dir, "src/", std::io::empty()).unwrap();
        for (name, body, mode) in [
            ("README.md", readme, 0o644),
            ("src/main.sh", b"echo hi\n".as_slice(), 0o755),
            ("src/copy.sh", b"echo hi\n".as_slice(), 0o644),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_mtime(9);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, name, body).unwrap();
        }
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_mode(0o777);
        l.set_size(0);
        b.append_link(&mut l, "latest", "src/main.sh").unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn a_snapshot_round_trips_and_stores_each_content_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tar1, objects, out) = (
            dir.path().join("in.tar"),
            dir.path().join("objects"),
            dir.path().join("out.tar"),
        );
        agent_tar(&tar1, b"# one\n");
        let (tree, new_bytes) = ingest(&tar1, &objects, big()).unwrap();
        // "echo hi\n" is stored once for two files.
        assert_eq!(new_bytes, 6 + 8);
        assert_eq!(std::fs::read_dir(&objects).unwrap().count(), 2);
        let kinds: Vec<(&str, &str)> = tree
            .iter()
            .map(|e| (e.path.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("src", "dir"),
                ("README.md", "file"),
                ("src/main.sh", "file"),
                ("src/copy.sh", "file"),
                ("latest", "symlink")
            ]
        );
        // Back to a tar: same entries, modes, content and link target.
        build_tar(&tree, &objects, &out).unwrap();
        let (again, more) = ingest(&out, &objects, big()).unwrap();
        assert_eq!(again, tree);
        assert_eq!(more, 0, "nothing new to store");
        // A second snapshot with one changed file stores only that file.
        let tar2 = dir.path().join("in2.tar");
        agent_tar(&tar2, b"# two, longer\n");
        let (_, new_bytes) = ingest(&tar2, &objects, big()).unwrap();
        assert_eq!(new_bytes, 14);
    }

    fn big() -> OutputLimits {
        OutputLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        }
    }

    #[test]
    fn a_snapshot_over_its_limits_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, objects) = (dir.path().join("in.tar"), dir.path().join("objects"));
        agent_tar(&tar, b"# one\n");
        for (limits, what) in [
            (
                OutputLimits {
                    max_bytes: 10,
                    max_entries: 100,
                },
                "more than 10 bytes",
            ),
            (
                OutputLimits {
                    max_bytes: 1 << 20,
                    max_entries: 3,
                },
                "more than 3 entries",
            ),
        ] {
            let err = ingest(&tar, &objects, limits).expect_err("refused");
            assert_eq!(err.kind(), "snapshot_too_large");
            assert!(err.to_string().contains(what), "{err}");
        }
        // Nothing half-written is left among the objects.
        let partial = std::fs::read_dir(&objects)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".in-"))
            .count();
        assert_eq!(partial, 0);
    }

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["baseline", "v1.2", "before-refactor", "a_b"] {
            assert!(validate_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
            let err = validate_snapshot_name(bad).err().map(|e| e.kind());
            assert_eq!(err, Some("invalid_request"), "{bad:?}");
        }
    }
}
