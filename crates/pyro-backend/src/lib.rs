//! Backends create, start, connect to and delete sandboxes. They know nothing about workspaces
//! or one-shot runs: whatever isolates a sandbox, it runs the same agent as PID 1 and the host
//! reaches it over a Unix socket.

pub mod agent_client;
pub mod bootcheck;
pub mod container;
pub mod firecracker;
pub mod jailer;
pub mod qemu;
pub mod vmm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::agent_client::Endpoint;

use crate::error::{IoContext, Result};
pub(crate) use pyro_api::error;
use pyro_api::procinfo::ProcessId;
use pyro_api::sandbox::SandboxRecord;

pub use pyro_api::{BackendKind, Isolation, Resources};

/// Which limits the host actually enforced, read back after start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsReport {
    /// `v1`, `v2`, or `none`.
    pub cgroup: String,
    /// Enforced memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Enforced process limit.
    pub pids_max: Option<u64>,
    /// Enforced CPU limit, in CPUs (quota / period).
    pub cpus: Option<f64>,
    /// Limits that were asked for but could not be applied, with why.
    pub not_applied: Vec<String>,
}

/// What a backend needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec<'a> {
    /// The sandbox id.
    pub id: &'a str,
    /// The environment's root filesystem, never modified: the unpacked directory, or for
    /// backends that want one, the read-only ext4 image.
    pub rootfs: &'a Path,
    /// Persistent per-sandbox directory (writable layer, logs).
    pub state_dir: &'a Path,
    /// Runtime per-sandbox directory (bundle, sockets).
    pub run_dir: &'a Path,
    /// The statically linked agent binary on the host.
    pub agent: &'a Path,
    /// Limits.
    pub resources: Resources,
    /// The sandbox's network, if it has one (its lease is recorded and its marker written).
    pub network: Option<&'a pyro_net::NetPlan>,
}

/// A started sandbox.
#[derive(Debug, Clone)]
pub struct Started {
    /// The sandbox's first process on the host.
    pub runtime: Option<ProcessId>,
    /// Where the host reaches the agent.
    pub endpoint: Endpoint,
    /// Limits actually enforced.
    pub limits: LimitsReport,
    /// Where a VM's agent announces that it listens (see [`vm::ready_listener`]); the host waits
    /// for that before its first connection.
    pub ready: Option<std::sync::Arc<std::os::unix::net::UnixListener>>,
}

/// What deleting a sandbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Whether every process, mount and file is gone.
    pub deleted: bool,
    /// Why it was deleted (`post_exec`, `error`, `interrupted`, `orphaned`).
    pub reason: String,
    /// Anything that could not be removed.
    pub errors: Vec<String>,
}

/// A way to isolate sandboxes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Which backend it is.
    fn kind(&self) -> BackendKind;
    /// The backend's name, as results show it.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }
    /// The isolation level it gives.
    fn isolation(&self) -> Isolation;
    /// The host uid that the sandbox's root maps to, for unpacking root filesystems.
    fn uid_shift(&self) -> u32;
    /// Whether [`SandboxSpec::rootfs`] must be the environment's read-only ext4 image (the VM
    /// backends) rather than its unpacked directory.
    fn wants_ext4_image(&self) -> bool {
        false
    }
    /// How this backend connects a sandbox to the host's network, or `None` when it cannot.
    fn network_link(&self) -> Option<pyro_net::LinkKind> {
        None
    }
    /// Creates and starts a sandbox; the agent may not be ready yet when this returns.
    async fn start(&self, spec: &SandboxSpec<'_>) -> Result<Started>;
    /// Stops every process and removes every mount and runtime file of a sandbox, but keeps its
    /// state directory (the writable layer), so that `start` can bring it back. Never fails:
    /// what could not be removed is listed in the report.
    async fn stop(&self, record: &SandboxRecord) -> CleanupReport;
    /// Stops a sandbox and removes its state directory too. Never fails: what could not be
    /// removed is listed in the report, and a later `pyro gc` tries again.
    async fn destroy(&self, record: &SandboxRecord) -> CleanupReport {
        let mut report = self.stop(record).await;
        match std::fs::remove_dir_all(&record.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .errors
                .push(format!("remove {}: {e}", record.state_dir.display())),
        }
        report.deleted = report.errors.is_empty();
        report
    }
    /// Where the host reaches the agent of a started sandbox (for calls from later processes).
    fn endpoint(&self, record: &SandboxRecord) -> Endpoint;
    /// Where a sandbox's writable layer (the overlay's upper directory) lives, for reading a
    /// stopped one offline: `upper/` of its state directory on the container level, `/upper` of
    /// its writable disk on the VM levels (the agent's `vm_root` lays it out so).
    fn writable_layer(&self, record: &SandboxRecord) -> pyro_image::overlay::LayerSource {
        if self.wants_ext4_image() {
            pyro_image::overlay::LayerSource::Ext4 {
                image: record.state_dir.join(vmm::RW_DISK),
                dir: "/upper".into(),
            }
        } else {
            pyro_image::overlay::LayerSource::Dir(record.state_dir.join("upper"))
        }
    }
}

/// Copies an executable into `dir` (made searchable by everybody) under a name that changes
/// with its size and mtime, once per build, for a process whose uid cannot reach the original
/// (home directories are usually 0700).
pub(crate) fn stage_executable(src: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let meta = std::fs::metadata(src).ctx(|| format!("read {}", src.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let staged = dir.join(format!("{name}-{}-{mtime}", meta.len()));
    if staged.is_file() {
        return Ok(staged);
    }
    make_traversable_dir(dir)?;
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    std::fs::copy(src, &tmp).ctx(|| format!("copy {} to {}", src.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, &staged).ctx(|| format!("install {}", staged.display()))?;
    Ok(staged)
}

/// Creates a directory (and parents) readable by nobody but searchable by everybody.
pub(crate) fn make_traversable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .ctx(|| format!("chmod {}", dir.display()))
}

/// Checks that `backend` can connect a sandbox on this host, before anything is made: a
/// sandbox that asked for a network never silently runs without.
pub fn check_network(backend: &dyn Backend) -> Result<pyro_net::LinkKind> {
    let link = backend.network_link().ok_or_else(|| {
        crate::error::Error::NetworkUnavailable(format!(
            "the {} backend cannot connect sandboxes to a network; use --isolation vm-emulated or container",
            backend.name()
        ))
    })?;
    pyro_net::check_host(link)?;
    Ok(link)
}
