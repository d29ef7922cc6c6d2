//! A stopped workspace's disk, read offline: list, read and export without booting it (the
//! seed's `workspace disk` calls). The workspace's root is its writable layer over its
//! environment, merged as overlayfs merges them ([`pyro_image::overlay`]); nothing of the
//! guest's runs, and the workspace stays stopped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::Pyro;
use crate::error::{Error, IoContext, Result};
use crate::store::WorkspaceState;
use crate::unpack::{self, Owner};
use crate::workspace::files::{
    check_read_cap, FileEntry, FileListResult, FileReadResult, MAX_LIST_ENTRIES,
};
use crate::workspace::files_gone;
use pyro_image::overlay::{self, LayerSource, OverlayView};

/// A disk export.
#[derive(Debug, Clone, Serialize)]
pub struct DiskExportResult {
    /// The workspace.
    pub workspace_id: String,
    /// Host path written.
    pub output_path: PathBuf,
    /// Always `ext4`.
    pub disk_format: &'static str,
    /// Where the workspace's writable layer (overlayfs upper directory, whiteouts included)
    /// is inside the image: `/upper` for a VM's disk, `/` on the container level.
    pub layer_dir: String,
    /// The image's size (it is sparse: what it takes on disk is what it holds).
    pub bytes_written: u64,
}

impl Pyro {
    /// Lists a path of a stopped workspace's disk: relative paths are under `/workspace`,
    /// absolute ones anywhere in its root; links are listed, not followed.
    pub async fn workspace_disk_list(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        let guest = overlay::guest_path(path)?;
        let (w, layers, _lock) = self.ws_offline_layers(id).await?;
        let g = guest.clone();
        let (entries, truncated) =
            blocking(move || OverlayView::open(&layers)?.list(&g, recursive, MAX_LIST_ENTRIES))
                .await?;
        Ok(FileListResult {
            workspace_id: w,
            path: guest,
            recursive,
            entries: entries
                .into_iter()
                .map(|e| FileEntry {
                    path: e.path,
                    kind: e.kind.as_str().into(),
                    size: e.size,
                    mode: e.mode,
                    link_target: e.link_target,
                })
                .collect(),
            truncated,
        })
    }

    /// Reads at most `max_bytes` of a file on a stopped workspace's disk (links followed
    /// inside its root). Secrets are redacted, as in a running workspace's file read.
    pub async fn workspace_disk_read(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<FileReadResult> {
        check_read_cap(max_bytes)?;
        let guest = overlay::guest_path(path)?;
        let (w, layers, _lock) = self.ws_offline_layers(id).await?;
        let g = guest.clone();
        let (bytes, size) =
            blocking(move || OverlayView::open(&layers)?.read(&g, max_bytes)).await?;
        let truncated = size > bytes.len() as u64;
        self.file_read_result(w, guest, size, max_bytes, &bytes, truncated)
    }

    /// Writes a stopped workspace's writable layer to `output` as an ext4 image (see
    /// [`DiskExportResult::layer_dir`]). The image appears whole or not at all, owned by the
    /// calling user; an existing `output` is replaced only with `force`.
    pub async fn workspace_disk_export(
        &self,
        id: &str,
        output: &Path,
        force: bool,
    ) -> Result<DiskExportResult> {
        if !force && output.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(output.display().to_string()));
        }
        let (w, layers, _lock) = self.ws_offline_layers(id).await?;
        let out = output.to_path_buf();
        let (layer_dir, bytes_written) = blocking(move || {
            let staged = unpack::staging_path(&out)?;
            let made = overlay::export_layer(&layers[0], &staged).and_then(|made| {
                // The image holds the workspace's files: the caller's alone.
                let owner = Owner::caller();
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                    .ctx(|| format!("chmod {}", staged.display()))?;
                std::os::unix::fs::lchown(&staged, Some(owner.uid), Some(owner.gid))
                    .ctx(|| format!("chown {}", staged.display()))?;
                unpack::place(&staged, &out, force)?;
                Ok(made)
            });
            if made.is_err() {
                unpack::remove_staged(&staged);
            }
            made
        })
        .await?;
        Ok(DiskExportResult {
            workspace_id: w,
            output_path: output.to_path_buf(),
            disk_format: "ext4",
            layer_dir,
            bytes_written,
        })
    }

    /// The layers of a stopped workspace, top first, with its lock held exclusively so that
    /// nothing starts it meanwhile.
    async fn ws_offline_layers(
        &self,
        id: &str,
    ) -> Result<(String, Vec<LayerSource>, super::WsLock)> {
        let w = self.ws_row(id)?;
        let lock = self.ws_lock(&w.id, true).await?;
        let w = self.ws_row(&w.id)?;
        let rec = self.ws_sandbox(&w.id)?;
        let alive = rec.runtime.is_some_and(|p| p.is_alive());
        if !matches!(w.state, WorkspaceState::Stopped | WorkspaceState::Broken) || alive {
            return Err(Error::WorkspaceNotStopped {
                id: w.id,
                state: if alive {
                    WorkspaceState::Running.to_string()
                } else {
                    w.state.to_string()
                },
            });
        }
        if !rec.state_dir.is_dir() {
            return Err(files_gone(&w.id, &rec.state_dir));
        }
        let backend = self.ws_backend(&w)?;
        let upper = backend.writable_layer(&rec);
        let rootfs = self.ws_rootfs(&w, backend.as_ref()).await?;
        let lower = if backend.wants_ext4_image() {
            LayerSource::Ext4 {
                image: rootfs,
                dir: "/".into(),
            }
        } else {
            LayerSource::Dir(rootfs)
        };
        Ok((w.id, vec![upper, lower], lock))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidRequest(format!("disk task failed: {e}")))?
}
