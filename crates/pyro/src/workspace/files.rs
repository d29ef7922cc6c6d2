//! Files in and out of a workspace: read, write, list, sync push and export. Host archives are
//! streamed from disk, never held whole in memory; every archive is checked entry by entry by
//! the agent before anything reaches `/workspace`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::Pyro;
use crate::error::{Error, IoContext, Result};
use crate::sandbox::Sandbox;
use crate::unpack::{self, ArchiveProfile, OutputLimits, Owner, SkippedEntry, UnpackStats};
use crate::workspace::snapshot::{MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES};
use crate::workspace::{Seed, WORKSPACE_PATH};

/// Most bytes a single file read may return.
pub const MAX_READ_BYTES: u64 = 64 << 20;
/// Most bytes a single file write may carry.
pub const MAX_WRITE_BYTES: u64 = 256 << 20;
/// Most entries a listing returns.
pub const MAX_LIST_ENTRIES: u64 = 100_000;

/// A checked seed or sync source on the host.
#[derive(Debug, Clone)]
pub(crate) struct SeedSource {
    seed: Seed,
    gzip: bool,
}

impl SeedSource {
    pub fn prepare(seed: &Seed) -> Result<SeedSource> {
        match seed {
            Seed::Dir(p) => {
                if !p.is_dir() {
                    return Err(Error::InvalidRequest(format!(
                        "{} is not a directory",
                        p.display()
                    )));
                }
                Ok(SeedSource {
                    seed: seed.clone(),
                    gzip: false,
                })
            }
            Seed::Archive(p) => {
                let mut magic = [0u8; 2];
                let mut f = std::fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
                let n = std::io::Read::read(&mut f, &mut magic)
                    .ctx(|| format!("read {}", p.display()))?;
                Ok(SeedSource {
                    seed: seed.clone(),
                    gzip: n == 2 && magic == [0x1f, 0x8b],
                })
            }
            Seed::File(p) => {
                if !p.is_file() {
                    return Err(Error::InvalidRequest(format!(
                        "{} is not a regular file",
                        p.display()
                    )));
                }
                Ok(SeedSource {
                    seed: seed.clone(),
                    gzip: false,
                })
            }
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        match &self.seed {
            Seed::Dir(p) => serde_json::json!({"mode": "directory", "source": p}),
            Seed::Archive(p) => {
                serde_json::json!({"mode": if self.gzip { "tar.gz" } else { "tar" }, "source": p})
            }
            Seed::File(p) => serde_json::json!({"mode": "file", "source": p}),
        }
    }

    /// Streams the source as a plain tar to the agent, unpacked under `dest`.
    pub async fn upload(&self, pyro: &Pyro, sb: &Sandbox, dest: &str) -> Result<(u64, u64)> {
        let src: Option<PathBuf> = match (&self.seed, self.gzip) {
            (Seed::Archive(p), false) => Some(p.clone()),
            _ => None,
        };
        let (path, temp) = match src {
            Some(p) => (p, None),
            None => {
                // A directory is archived (or a gzip archive decompressed) into a temporary file
                // on disk first: streamed, bounded by disk, never whole in memory.
                let tmp = pyro.tmp_file(sb.id(), "upload")?;
                let seed = self.seed.clone();
                let t = tmp.clone();
                tokio::task::spawn_blocking(move || to_plain_tar(&seed, &t))
                    .await
                    .map_err(|e| Error::Agent(format!("archive task: {e}")))??;
                (tmp.clone(), Some(tmp))
            }
        };
        let result = async {
            let mut f = tokio::fs::File::open(&path)
                .await
                .ctx(|| format!("open {}", path.display()))?;
            sb.client()
                .archive_in(dest, false, MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES, &mut f)
                .await
        }
        .await;
        if let Some(t) = temp {
            let _ = std::fs::remove_file(t);
        }
        result
    }
}

fn to_plain_tar(seed: &Seed, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).ctx(|| format!("create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(f);
    match seed {
        Seed::Dir(dir) => {
            let mut b = tar::Builder::new(&mut w);
            // Links are archived as links; the agent refuses any that leave the tree.
            b.follow_symlinks(false);
            b.append_dir_all(".", dir)
                .ctx(|| format!("archive {}", dir.display()))?;
            b.finish().ctx(|| "finish archive".into())?;
        }
        Seed::File(p) => {
            let name = p.file_name().ok_or_else(|| {
                Error::InvalidRequest(format!("{} has no file name", p.display()))
            })?;
            let mut b = tar::Builder::new(&mut w);
            b.append_path_with_name(p, name)
                .ctx(|| format!("archive {}", p.display()))?;
            b.finish().ctx(|| "finish archive".into())?;
        }
        Seed::Archive(p) => {
            let f = std::fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
            let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
            // Decompressed size is capped like the archive's content (a gzip bomb stops here).
            let copied = std::io::copy(
                &mut std::io::Read::take(&mut gz, MAX_ARCHIVE_BYTES + (64 << 20)),
                &mut w,
            )
            .ctx(|| format!("decompress {}", p.display()))?;
            if copied > MAX_ARCHIVE_BYTES {
                return Err(Error::InvalidRequest(format!(
                    "{} decompresses to more than {MAX_ARCHIVE_BYTES} bytes",
                    p.display()
                )));
            }
        }
    }
    std::io::Write::flush(&mut w).ctx(|| "flush archive".into())
}

/// Refuses a read cap above [`MAX_READ_BYTES`].
pub(crate) fn check_read_cap(max_bytes: u64) -> Result<()> {
    if max_bytes > MAX_READ_BYTES {
        return Err(Error::InvalidRequest(format!(
            "max bytes may not exceed {MAX_READ_BYTES}"
        )));
    }
    Ok(())
}

/// A file read.
#[derive(Debug, Clone, Serialize)]
pub struct FileReadResult {
    /// The workspace.
    pub workspace_id: String,
    /// The path asked for.
    pub path: String,
    /// The file's size.
    pub size_bytes: u64,
    /// The cap that applied.
    pub max_bytes: u64,
    /// Content (lossy when not UTF-8; see `content_base64`).
    pub content: String,
    /// Exact bytes when the content is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Whether the file is longer than what was returned.
    pub truncated: bool,
    /// The raw bytes, for front doors that print them.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// A file write.
#[derive(Debug, Clone, Serialize)]
pub struct FileWriteResult {
    /// The workspace.
    pub workspace_id: String,
    /// The path written.
    pub path: String,
    /// Bytes written.
    pub bytes_written: u64,
}

/// A listing.
#[derive(Debug, Clone, Serialize)]
pub struct FileListResult {
    /// The workspace.
    pub workspace_id: String,
    /// The path listed.
    pub path: String,
    /// Whether subdirectories were included.
    pub recursive: bool,
    /// Entries.
    pub entries: Vec<FileEntry>,
    /// Whether the listing was cut short.
    pub truncated: bool,
}

/// One listed entry.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    /// Path relative to the listed directory.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// A sync push.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    /// The workspace.
    pub workspace_id: String,
    /// Host source.
    pub source: PathBuf,
    /// Guest destination.
    pub destination: String,
    /// Entries unpacked.
    pub entry_count: u64,
    /// Content bytes written.
    pub bytes_written: u64,
}

/// An export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportResult {
    /// The workspace.
    pub workspace_id: String,
    /// Guest path.
    pub workspace_path: String,
    /// Host path written.
    pub output_path: PathBuf,
    /// `file`, `directory` or `archive`.
    pub artifact_type: String,
    /// Entries.
    pub entry_count: u64,
    /// Content bytes.
    pub bytes_written: u64,
    /// Entries not written because they have no place in a user's files (fifos, devices).
    pub skipped_count: u64,
    /// The first of them, by path and kind.
    pub skipped: Vec<SkippedEntry>,
}

impl Pyro {
    /// Reads a file from `/workspace` (at most `max_bytes`).
    pub async fn workspace_file_read(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<FileReadResult> {
        check_read_cap(max_bytes)?;
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let (bytes, size, truncated) = sb.client().read_file(path, max_bytes).await?;
        self.file_read_result(w.id, path.into(), size, max_bytes, &bytes, truncated)
    }

    /// A read's result, its bytes redacted of the workspace's secrets.
    pub(crate) fn file_read_result(
        &self,
        workspace_id: String,
        path: String,
        size_bytes: u64,
        max_bytes: u64,
        bytes: &[u8],
        truncated: bool,
    ) -> Result<FileReadResult> {
        let bytes = self.redactor(&workspace_id)?.bytes(bytes);
        let (content, content_base64) = crate::run::text_and_bytes(&bytes);
        Ok(FileReadResult {
            workspace_id,
            path,
            size_bytes,
            max_bytes,
            content,
            content_base64,
            truncated,
            bytes,
        })
    }

    /// Writes a file in `/workspace` atomically from `src`.
    pub async fn workspace_file_write(
        &self,
        id: &str,
        path: &str,
        src: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    ) -> Result<FileWriteResult> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let bytes_written = sb
            .client()
            .write_file(path, None, MAX_WRITE_BYTES, src)
            .await?;
        Ok(FileWriteResult {
            workspace_id: w.id,
            path: path.into(),
            bytes_written,
        })
    }

    /// Lists a path in `/workspace`.
    pub async fn workspace_file_list(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let (entries, truncated) = sb.client().list(path, recursive, MAX_LIST_ENTRIES).await?;
        let entries = entries
            .into_iter()
            .map(|e| FileEntry {
                path: e.path,
                kind: e.kind,
                size: e.size,
                mode: e.mode,
                link_target: e.link_target,
            })
            .collect();
        Ok(FileListResult {
            workspace_id: w.id,
            path: path.into(),
            recursive,
            entries,
            truncated,
        })
    }

    /// Copies a host directory or archive into the workspace.
    pub async fn workspace_sync_push(
        &self,
        id: &str,
        source: &Path,
        dest: Option<&str>,
    ) -> Result<SyncResult> {
        let seed = SeedSource::prepare(&Seed::from_path(source)?)?;
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let dest = dest.unwrap_or(WORKSPACE_PATH);
        let (entry_count, bytes_written) = seed.upload(self, &sb, dest).await?;
        let _ = std::fs::remove_file(self.ws_dir(&w.id).join("statcache.json"));
        Ok(SyncResult {
            workspace_id: w.id,
            source: source.to_path_buf(),
            destination: dest.into(),
            entry_count,
            bytes_written,
        })
    }

    /// Exports a file or directory to the host: a file to a file, a directory to a directory
    /// tree, or to a tar archive when `output` ends in `.tar`. Refuses to overwrite unless
    /// `force`. What the guest sends is untrusted ([`ArchiveProfile::UntrustedGuestOutput`]):
    /// everything is owned by the calling user with modes masked to `0o777`, special files are
    /// skipped and listed, links are exported as links and never followed, and `limits` cap
    /// the bytes and entries. The output appears whole or not at all: it is staged beside
    /// `output` and renamed into place, replacing (never writing through) what was there.
    pub async fn workspace_export(
        &self,
        id: &str,
        path: &str,
        output: &Path,
        force: bool,
        limits: OutputLimits,
    ) -> Result<ExportResult> {
        if limits.max_bytes == 0 || limits.max_entries == 0 {
            return Err(Error::InvalidRequest(
                "export limits must be at least 1 byte and 1 entry".into(),
            ));
        }
        if !force && output.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(output.display().to_string()));
        }
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let tar_path = self.tmp_file(&w.id, "export")?;
        let result = async {
            let cap = archive_cap(&limits);
            let Some((entries, bytes)) = archive_out_capped(&sb, path, &tar_path, cap).await?
            else {
                return Err(limits.exceeded(&format!("an archive of more than {cap} bytes")));
            };
            let as_archive = output.extension().is_some_and(|e| e == "tar");
            let (tp, out) = (tar_path.clone(), output.to_path_buf());
            let owner = Owner::caller();
            let (artifact, stats) = tokio::task::spawn_blocking(move || {
                place_export(&tp, &out, as_archive, force, owner, limits)
            })
            .await
            .map_err(|e| Error::Agent(format!("export task: {e}")))??;
            let (entry_count, bytes_written) = match &stats {
                Some(s) => (s.written(), s.bytes),
                None => (entries, bytes),
            };
            let stats = stats.unwrap_or_default();
            Ok(ExportResult {
                workspace_id: w.id.clone(),
                workspace_path: path.into(),
                output_path: output.to_path_buf(),
                artifact_type: artifact.into(),
                entry_count,
                bytes_written,
                skipped_count: stats.skipped_devices,
                skipped: stats.skipped,
            })
        }
        .await;
        let _ = std::fs::remove_file(&tar_path);
        result
    }
}

/// Most bytes of tar framing per entry: a header, padding, and GNU long-name and long-link
/// records for a 4096-byte path and target.
const TAR_OVERHEAD_PER_ENTRY: u64 = 11 << 10;

/// The most bytes of archive an export within `limits` can take; the download stops there, so
/// a guest cannot fill the host's disk before the limits are checked entry by entry.
pub(crate) fn archive_cap(limits: &OutputLimits) -> u64 {
    limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(TAR_OVERHEAD_PER_ENTRY))
        .saturating_add(TAR_OVERHEAD_PER_ENTRY)
}

/// Downloads the guest's tar of `guest_path` into `dest`, taking at most `cap` bytes of it: the
/// guest decides how much it sends. `None` when it sent more (what was written is left for the
/// caller's clean-up); else the agent's (entries, content bytes).
pub(crate) async fn archive_out_capped(
    sb: &Sandbox,
    guest_path: &str,
    dest: &Path,
    cap: u64,
) -> Result<Option<(u64, u64)>> {
    let file = tokio::fs::File::create(dest)
        .await
        .ctx(|| format!("create {}", dest.display()))?;
    let mut f = CappedWriter::new(file, cap);
    let counts = match sb.client().archive_out(guest_path, &mut f).await {
        Err(_) if f.over() => return Ok(None),
        other => other?,
    };
    f.flush()
        .await
        .ctx(|| format!("flush {}", dest.display()))?;
    Ok(Some(counts))
}

/// Writes at most `left` bytes, then fails and remembers why.
pub(crate) struct CappedWriter {
    inner: tokio::fs::File,
    left: u64,
    over: bool,
}

impl CappedWriter {
    /// A writer into `inner` that takes at most `cap` bytes.
    pub(crate) fn new(inner: tokio::fs::File, cap: u64) -> CappedWriter {
        CappedWriter {
            inner,
            left: cap,
            over: false,
        }
    }

    /// Whether a write went over the cap.
    pub(crate) fn over(&self) -> bool {
        self.over
    }

    /// Flushes what was written.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::flush(&mut self.inner).await
    }
}

impl tokio::io::AsyncWrite for CappedWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the export archive is over its cap",
            )));
        }
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            self.left -= *n as u64;
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Puts an exported archive in place: as is, as a single file, or unpacked into a directory,
/// staged beside `out` and renamed there. Gives the unpack statistics unless it is the archive.
fn place_export(
    tar_path: &Path,
    out: &Path,
    as_archive: bool,
    replace: bool,
    owner: Owner,
    limits: OutputLimits,
) -> Result<(&'static str, Option<UnpackStats>)> {
    let staged = unpack::staging_path(out)?;
    // Staging removes what it made when it fails; what it made is removed here when the move
    // into place fails.
    let placed = stage_export(tar_path, &staged, as_archive, owner, limits)?;
    if let Err(e) = unpack::place(&staged, out, replace) {
        unpack::remove_staged(&staged);
        return Err(e);
    }
    Ok(placed)
}

fn stage_export(
    tar_path: &Path,
    staged: &Path,
    as_archive: bool,
    owner: Owner,
    limits: OutputLimits,
) -> Result<(&'static str, Option<UnpackStats>)> {
    let open = || -> Result<std::io::BufReader<std::fs::File>> {
        let f = std::fs::File::open(tar_path).ctx(|| "open export archive".into())?;
        Ok(std::io::BufReader::new(f))
    };
    if as_archive {
        // The archive is data: the modes and owners it lists matter only to whoever unpacks it.
        let mut f =
            unpack::create_new_file(staged).ctx(|| format!("create {}", staged.display()))?;
        let written = open().and_then(|mut src| {
            std::io::copy(&mut src, &mut f).ctx(|| format!("write {}", staged.display()))?;
            unpack::finish_file(&f, owner, 0o644, None)
                .ctx(|| format!("finish {}", staged.display()))
        });
        if let Err(e) = written {
            unpack::remove_staged(staged);
            return Err(e);
        }
        return Ok(("archive", None));
    }
    // A single regular file exports as that file (a directory's archive starts with `./`).
    let mut count = 0usize;
    let mut first_is_file = false;
    for e in tar::Archive::new(open()?)
        .entries()
        .ctx(|| "read export archive".into())?
    {
        let e = e.ctx(|| "read export archive".into())?;
        count += 1;
        if count == 1 {
            first_is_file = e.header().entry_type().is_file();
        } else {
            break;
        }
    }
    if count == 1 && first_is_file {
        let stats = unpack::unpack_single_file(open()?, staged, owner, &limits)?;
        return Ok(("file", Some(stats)));
    }
    let profile = ArchiveProfile::UntrustedGuestOutput { owner, limits };
    let stats = unpack::unpack(open()?, staged, &profile)?;
    Ok(("directory", Some(stats)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_download_stops_at_the_archive_cap() {
        let limits = OutputLimits {
            max_bytes: 100,
            max_entries: 2,
        };
        assert_eq!(archive_cap(&limits), 100 + 3 * TAR_OVERHEAD_PER_ENTRY);
        let huge = OutputLimits {
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
        };
        assert_eq!(archive_cap(&huge), u64::MAX);

        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a.tar");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let file = tokio::fs::File::create(&path).await.expect("create");
            let mut w = CappedWriter {
                inner: file,
                left: 10,
                over: false,
            };
            w.write_all(b"12345678").await.expect("under the cap");
            assert!(!w.over);
            w.write_all(b"123").await.expect_err("over the cap");
            assert!(w.over);
            w.inner.flush().await.expect("flush");
        });
        assert_eq!(std::fs::read(&path).expect("read"), b"12345678");
    }
}
