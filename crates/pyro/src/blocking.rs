//! A blocking wrapper around the async [`crate::Pyro`] facade, for programs without an async
//! runtime of their own.
//!
//! [`Pyro`] owns a small Tokio runtime and runs each call to completion on it. It offers the
//! same operations as the async facade, with the same request and result types, so code can
//! move between the two by adding or removing `.await`.
//!
//! ```no_run
//! use pyro::{blocking::Pyro, Config, Isolation, RunRequest};
//!
//! # fn main() -> pyro::Result<()> {
//! let pyro = Pyro::open(Config::from_env())?;
//! let mut req = RunRequest::new("debian:12", vec!["uname".into(), "-a".into()]);
//! req.isolation = Some(Isolation::Container);
//! let result = pyro.run(&req)?;
//! print!("{}", result.stdout);
//! # Ok(()) }
//! ```
//!
//! Do not call it from inside an async runtime: blocking on a future there panics (Tokio
//! refuses nested runtimes). Use the async [`crate::Pyro`] instead.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::env::{EnvInfo, PruneResult};
use crate::error::{Error, Result};
use crate::facade::{Config, GcReport, LevelStatus};
use crate::run::{Observer, Quiet, RunRequest, RunResult};
use crate::sandbox::ExecOptions;
use crate::vm_calls::{CreateVm, VmDeleteResult, VmInfo, VmReapReport};
use crate::workspace::{
    CreateWorkspace, DeleteResult, DiffResult, ExportResult, FileListResult, FileReadResult,
    FileWriteResult, PatchResult, ReapReport, SnapshotResult, SyncResult, UpdateWorkspace,
    WorkspaceExecResult, WorkspaceInfo,
};
use crate::workspace::{LogEntry, SnapshotInfo};

/// The pyro library with blocking calls. Cheap to clone; all clones share one runtime and
/// one state.
#[derive(Clone)]
pub struct Pyro {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: crate::Pyro,
}

impl std::fmt::Debug for Pyro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Pyro").finish_non_exhaustive()
    }
}

impl Pyro {
    /// Opens pyro's state (see [`crate::Pyro::open`]), starting the runtime that serves the
    /// blocking calls.
    ///
    /// # Errors
    /// When the runtime cannot start, or when [`crate::Pyro::open`] fails.
    pub fn open(config: Config) -> Result<Pyro> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pyro-blocking")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the async runtime", e))?;
        let inner = runtime.block_on(crate::Pyro::open(config))?;
        Ok(Pyro {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    /// The async facade underneath, for mixing in async code on another runtime.
    pub fn as_async(&self) -> &crate::Pyro {
        &self.inner
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// Which isolation levels this host can give, strongest first.
    pub fn levels(&self) -> Vec<LevelStatus> {
        self.inner.levels()
    }

    /// Removes every sandbox whose owning process is gone (see [`crate::Pyro::gc`]).
    pub fn gc(&self) -> Result<GcReport> {
        self.runtime.block_on(self.inner.gc())
    }

    /// Removes every sandbox this process owns (see [`crate::Pyro::cleanup_owned`]).
    pub fn cleanup_owned(&self) -> Result<GcReport> {
        self.runtime.block_on(self.inner.cleanup_owned())
    }

    /// Removes one one-shot sandbox this process owns (see [`crate::Pyro::cleanup_sandbox`]).
    pub fn cleanup_sandbox(&self, id: &str) -> Result<GcReport> {
        self.runtime.block_on(self.inner.cleanup_sandbox(id))
    }

    /// Every catalog environment, built or not.
    pub fn env_list(&self) -> Result<Vec<EnvInfo>> {
        self.inner.env_list()
    }

    /// One environment.
    pub fn env_inspect(&self, name: &str) -> Result<EnvInfo> {
        self.inner.env_inspect(name)
    }

    /// Builds an environment from its recipe (see [`crate::Pyro::env_build`]).
    pub fn env_build(
        &self,
        name: &str,
        force: bool,
        progress: Box<dyn FnMut(&str) + Send>,
    ) -> Result<EnvInfo> {
        self.runtime
            .block_on(self.inner.env_build(name, force, progress))
    }

    /// Removes cache entries no current environment or live sandbox uses.
    pub fn env_prune(&self) -> Result<PruneResult> {
        self.inner.env_prune()
    }

    /// Runs one command in a fresh sandbox and deletes the sandbox afterwards, whatever happens
    /// (see [`crate::Pyro::run`]). Output is collected into the result.
    pub fn run(&self, req: &RunRequest) -> Result<RunResult> {
        self.run_observed(req, Arc::new(Quiet))
    }

    /// [`Pyro::run`], reporting phases and build progress to `observer`.
    pub fn run_observed(&self, req: &RunRequest, observer: Arc<dyn Observer>) -> Result<RunResult> {
        self.runtime.block_on(self.inner.run(req, observer, None))
    }

    /// Creates a workspace (see [`crate::Pyro::workspace_create`]).
    pub fn workspace_create(&self, req: &CreateWorkspace) -> Result<WorkspaceInfo> {
        self.runtime
            .block_on(self.inner.workspace_create(req, Arc::new(Quiet)))
    }

    /// Every workspace, optionally filtered by labels (all must match) and state.
    pub fn workspace_list(
        &self,
        labels: &BTreeMap<String, String>,
        state: Option<&str>,
    ) -> Result<Vec<WorkspaceInfo>> {
        self.inner.workspace_list(labels, state)
    }

    /// One workspace, by id or name.
    pub fn workspace_status(&self, id: &str) -> Result<WorkspaceInfo> {
        self.inner.workspace_status(id)
    }

    /// Changes name, labels or TTL.
    pub fn workspace_update(&self, id: &str, update: &UpdateWorkspace) -> Result<WorkspaceInfo> {
        self.runtime
            .block_on(self.inner.workspace_update(id, update))
    }

    /// Runs a command in a workspace (see [`crate::Pyro::workspace_exec`]).
    pub fn workspace_exec(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
    ) -> Result<WorkspaceExecResult> {
        self.runtime
            .block_on(self.inner.workspace_exec(id, argv, opts, None))
    }

    /// The workspace's command history.
    pub fn workspace_logs(&self, id: &str) -> Result<Vec<LogEntry>> {
        self.inner.workspace_logs(id)
    }

    /// Connections the workspace's network rules refused (from the kernel log).
    pub fn workspace_network_refused(
        &self,
        id: &str,
    ) -> Result<Vec<crate::network::refused::Refusal>> {
        self.inner.workspace_network_refused(id)
    }

    /// Stops the sandbox; `/workspace` and snapshots are kept.
    pub fn workspace_stop(&self, id: &str) -> Result<WorkspaceInfo> {
        self.runtime.block_on(self.inner.workspace_stop(id))
    }

    /// Starts a stopped workspace again with its files as they were.
    pub fn workspace_start(&self, id: &str) -> Result<WorkspaceInfo> {
        self.runtime.block_on(self.inner.workspace_start(id))
    }

    /// Deletes a workspace: its sandbox, files, snapshots and history.
    pub fn workspace_delete(&self, id: &str) -> Result<DeleteResult> {
        self.runtime.block_on(self.inner.workspace_delete(id))
    }

    /// Recreates the sandbox and restores the baseline or a named snapshot.
    pub fn workspace_reset(&self, id: &str, snapshot: Option<&str>) -> Result<WorkspaceInfo> {
        self.runtime
            .block_on(self.inner.workspace_reset(id, snapshot))
    }

    /// Stops expired workspaces and deletes those past the grace period.
    pub fn reap_expired(&self) -> Result<ReapReport> {
        self.runtime.block_on(self.inner.reap_expired())
    }

    /// Reads at most `max_bytes` of a file in `/workspace`.
    pub fn workspace_file_read(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<FileReadResult> {
        self.runtime
            .block_on(self.inner.workspace_file_read(id, path, max_bytes))
    }

    /// Writes a file in `/workspace` atomically.
    pub fn workspace_file_write(
        &self,
        id: &str,
        path: &str,
        contents: &[u8],
    ) -> Result<FileWriteResult> {
        let mut src = contents;
        self.runtime
            .block_on(self.inner.workspace_file_write(id, path, &mut src))
    }

    /// Lists a directory in `/workspace`.
    pub fn workspace_file_list(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        self.runtime
            .block_on(self.inner.workspace_file_list(id, path, recursive))
    }

    /// Copies a host directory or archive into the workspace.
    pub fn workspace_sync_push(
        &self,
        id: &str,
        source: &Path,
        dest: Option<&str>,
    ) -> Result<SyncResult> {
        self.runtime
            .block_on(self.inner.workspace_sync_push(id, source, dest))
    }

    /// Copies a path out of the workspace to the host.
    pub fn workspace_export(
        &self,
        id: &str,
        path: &str,
        output: &Path,
        force: bool,
        limits: crate::unpack::OutputLimits,
    ) -> Result<ExportResult> {
        self.runtime
            .block_on(self.inner.workspace_export(id, path, output, force, limits))
    }

    /// Takes a named snapshot of `/workspace`.
    pub fn workspace_snapshot_create(&self, id: &str, name: &str) -> Result<SnapshotResult> {
        self.runtime
            .block_on(self.inner.workspace_snapshot_create(id, name))
    }

    /// The workspace's snapshots, baseline first.
    pub fn workspace_snapshot_list(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        self.inner.workspace_snapshot_list(id)
    }

    /// Deletes a named snapshot.
    pub fn workspace_snapshot_delete(
        &self,
        id: &str,
        name: &str,
    ) -> Result<crate::workspace::SnapshotDeleteResult> {
        self.runtime
            .block_on(self.inner.workspace_snapshot_delete(id, name))
    }

    /// What changed in `/workspace` since create, as entries and a unified patch.
    pub fn workspace_diff(&self, id: &str) -> Result<DiffResult> {
        self.runtime.block_on(self.inner.workspace_diff(id))
    }

    /// Applies a unified diff, all or nothing.
    pub fn workspace_patch_apply(&self, id: &str, patch: &str) -> Result<PatchResult> {
        self.runtime
            .block_on(self.inner.workspace_patch_apply(id, patch))
    }

    /// Records a VM owned by this process (see [`crate::Pyro::vm_create`]).
    pub fn vm_create(&self, req: &CreateVm) -> Result<VmInfo> {
        self.runtime.block_on(self.inner.vm_create(req))
    }

    /// Starts a created or stopped VM.
    pub fn vm_start(&self, id: &str) -> Result<VmInfo> {
        self.runtime.block_on(self.inner.vm_start(id))
    }

    /// Runs one command in a started VM, then deletes the VM.
    pub fn vm_exec(&self, id: &str, argv: &[String], opts: &ExecOptions) -> Result<RunResult> {
        self.runtime.block_on(self.inner.vm_exec(id, argv, opts))
    }

    /// Stops a started VM (its sandbox is destroyed; the record stays).
    pub fn vm_stop(&self, id: &str) -> Result<VmInfo> {
        self.runtime.block_on(self.inner.vm_stop(id))
    }

    /// Deletes a VM of this process.
    pub fn vm_delete(&self, id: &str) -> Result<VmDeleteResult> {
        self.runtime.block_on(self.inner.vm_delete(id))
    }

    /// One VM.
    pub fn vm_status(&self, id: &str) -> Result<VmInfo> {
        self.inner.vm_status(id)
    }

    /// Every VM on record.
    pub fn vm_list(&self) -> Result<Vec<VmInfo>> {
        self.inner.vm_list()
    }

    /// Deletes expired VMs of this process and VMs of dead processes.
    pub fn vm_reap_expired(&self) -> Result<VmReapReport> {
        self.runtime.block_on(self.inner.vm_reap_expired())
    }
}
