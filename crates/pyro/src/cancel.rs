//! Cancelling an operation, in one place for every front door: the CLI passes Ctrl-C and
//! SIGTERM, the MCP server a client's cancel or hang-up, an SDK user whatever future it likes.
//! The operation's future is dropped and what it started is removed before the call returns.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::agent_client::OutputSink;
use crate::engine::Pyro;
use crate::error::Result;
use crate::gc::GcReport;
use crate::observer::Observer;
use crate::run::{RunRequest, RunResult};
use crate::sandbox::ExecOptions;
use crate::workspace::{CreateWorkspace, WorkspaceExecResult, WorkspaceInfo};

/// How a cancellable call ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It ran to the end (its own errors come back as `Err` of the call).
    Done(T),
    /// `cancel` fired first: the operation was stopped, and `cleanup` says what was removed.
    Cancelled(GcReport),
}

/// Forwards to the caller's observer and remembers the sandbox the operation recorded, so a
/// cancel removes exactly that one (other calls of the same process keep theirs).
struct Tracking {
    inner: Arc<dyn Observer>,
    id: Mutex<Option<String>>,
}

impl Tracking {
    fn new(inner: Arc<dyn Observer>) -> Arc<Tracking> {
        Arc::new(Tracking {
            inner,
            id: Mutex::new(None),
        })
    }

    /// The sandbox (or workspace) the operation recorded, if it got that far.
    fn started(&self) -> Option<String> {
        self.id.lock().ok().and_then(|s| s.clone())
    }
}

impl Observer for Tracking {
    fn phase(&self, phase: &str, fields: &[(&str, String)]) {
        self.inner.phase(phase, fields);
    }
    fn build(&self, environment: &str, message: &str) {
        self.inner.build(environment, message);
    }
    fn transfer(&self, environment: &str, event: &crate::env::Transfer) {
        self.inner.transfer(environment, event);
    }
    fn sandbox(&self, id: &str) {
        if let Ok(mut slot) = self.id.lock() {
            *slot = Some(id.to_string());
        }
        self.inner.sandbox(id);
    }
}

impl Pyro {
    /// [`Pyro::run`] until `cancel` resolves. On cancel the run is dropped and its sandbox
    /// removed (processes, mounts, network, record) before this returns.
    pub async fn run_or_cancel(
        &self,
        req: &RunRequest,
        observer: Arc<dyn Observer>,
        output: Option<&mut dyn OutputSink>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome<RunResult>> {
        let tracking = Tracking::new(observer);
        tokio::select! {
            r = self.run(req, tracking.clone(), output) => r.map(Outcome::Done),
            () = cancel => {
                let id = tracking.started();
                Ok(Outcome::Cancelled(self.cleanup_started(id.as_deref()).await))
            }
        }
    }

    /// [`Pyro::workspace_create`] until `cancel` resolves. On cancel the half-made workspace is
    /// deleted (sandbox, files, records) before this returns.
    pub async fn workspace_create_or_cancel(
        &self,
        req: &CreateWorkspace,
        observer: Arc<dyn Observer>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome<WorkspaceInfo>> {
        let tracking = Tracking::new(observer);
        tokio::select! {
            r = self.workspace_create(req, tracking.clone()) => r.map(Outcome::Done),
            () = cancel => {
                let mut report = GcReport::default();
                if let Some(id) = tracking.started() {
                    let r = self.ws_destroy(&id, "interrupted_create").await;
                    if r.deleted {
                        report.removed.push(id);
                    } else {
                        report.errors.extend(r.errors);
                    }
                }
                Ok(Outcome::Cancelled(report))
            }
        }
    }

    /// [`Pyro::vm_exec`] until `cancel` resolves. A VM is one-shot: on cancel its sandbox is
    /// removed, as when the command ends.
    pub async fn vm_exec_or_cancel(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome<RunResult>> {
        tokio::select! {
            r = self.vm_exec(id, argv, opts) => r.map(Outcome::Done),
            () = cancel => Ok(Outcome::Cancelled(self.cleanup_started(Some(id)).await)),
        }
    }

    /// [`Pyro::workspace_exec_with_secrets`] until `cancel` resolves. On cancel the guest command
    /// is stopped (its process group gets TERM, then KILL) and the workspace's log records it as
    /// interrupted; the workspace itself stays.
    pub async fn workspace_exec_or_cancel(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
        secret_env: &[String],
        output: Option<&mut dyn OutputSink>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome<WorkspaceExecResult>> {
        tokio::select! {
            r = self.workspace_exec_with_secrets(id, argv, opts, secret_env, output) => {
                r.map(Outcome::Done)
            }
            // Dropping the exec closes the agent connection, which stops the command, and its
            // drop guard writes the log entry before the drop returns: nothing is left to remove.
            () = cancel => Ok(Outcome::Cancelled(GcReport::default())),
        }
    }

    /// Removes the one-shot sandbox `id` a dropped call had started, if it recorded one; a
    /// failure is reported in the result, not raised (the caller is already on its way out).
    async fn cleanup_started(&self, id: Option<&str>) -> GcReport {
        let Some(id) = id else {
            return GcReport::default();
        };
        match self.cleanup_sandbox(id).await {
            Ok(r) => r,
            Err(e) => GcReport {
                errors: vec![format!("{id}: {e}")],
                ..GcReport::default()
            },
        }
    }
}
