//! Garbage collection: sandboxes, VM records and network links whose owner died, and the
//! clean-up a front door asks for when a call is interrupted.

use serde::Serialize;

use crate::engine::Pyro;
use crate::error::Result;
use crate::sandbox::destroy_record;

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Sandboxes removed.
    pub removed: Vec<String>,
    /// Sandboxes skipped because their owner is alive.
    pub in_use: Vec<String>,
    /// What could not be removed.
    pub errors: Vec<String>,
    /// Sandbox links and firewall tables removed whose sandbox was already gone.
    pub network_removed: Vec<String>,
    /// Workspaces recorded as running whose sandbox had died: now recorded as stopped (their
    /// files are intact; `workspace start` brings them back).
    pub stopped: Vec<String>,
}

impl Pyro {
    /// Removes every sandbox whose owning process is gone (checked by pid and start time).
    pub async fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for rec in self.inner.store.list()? {
            match rec.owner {
                // A workspace's sandbox between calls: owned by nobody, and not garbage.
                None => continue,
                Some(o) if o.is_alive() => {
                    report.in_use.push(rec.id);
                    continue;
                }
                Some(_) => {}
            }
            if rec.kind == crate::store::SandboxKind::Workspace {
                if self
                    .inner
                    .store
                    .claim_for_delete(&rec.id, rec.owner, self.inner.me)?
                    && self.ws_orphan(&rec).await?
                {
                    report.removed.push(rec.id);
                }
                continue;
            }
            self.reap(rec, "orphaned", &mut report).await?;
        }
        // VM records of dead processes; their sandboxes went with the loop above.
        for id in self.vm_forget_orphans() {
            if !report.removed.contains(&id) {
                report.removed.push(id);
            }
        }
        report.stopped = self.ws_reconcile_dead().await?;
        self.sweep_networks(&mut report).await?;
        Ok(report)
    }

    /// Removes the links, tables and leases of this installation's sandboxes whose record is
    /// gone. Only ids this state database leased are touched: another `$PYRO_HOME` on the same
    /// host owns its own sandboxes' links.
    async fn sweep_networks(&self, report: &mut GcReport) -> Result<()> {
        let live: std::collections::HashSet<String> =
            self.inner.store.list()?.into_iter().map(|r| r.id).collect();
        for id in self.inner.store.network_ids()? {
            if live.contains(&id) {
                continue;
            }
            let errors = crate::network::link::remove_all(&id).await;
            if errors.is_empty() {
                self.inner.store.forget_network(&id)?;
                report.network_removed.push(id);
            } else {
                report.errors.extend(errors);
            }
        }
        Ok(())
    }

    /// Removes every sandbox this process owns; for a front door that was interrupted.
    pub async fn cleanup_owned(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for rec in self.inner.store.list()? {
            if rec.owner == Some(self.inner.me) {
                self.reap(rec, "interrupted", &mut report).await?;
            }
        }
        self.vm_forget_mine().await;
        Ok(report)
    }

    /// Removes one one-shot sandbox this process owns, leaving every other alone: for a front
    /// door that serves many calls at once (the MCP server), where one interrupted call must
    /// not tear down the sandboxes of the calls still running. Workspace sandboxes are not
    /// touched (their lifecycle goes through `workspace_*`).
    pub async fn cleanup_sandbox(&self, id: &str) -> Result<GcReport> {
        let mut report = GcReport::default();
        let rec = self.inner.store.list()?.into_iter().find(|r| {
            r.id == id
                && r.owner == Some(self.inner.me)
                && r.kind != crate::store::SandboxKind::Workspace
        });
        if let Some(rec) = rec {
            self.reap(rec, "interrupted", &mut report).await?;
        }
        Ok(report)
    }

    async fn reap(
        &self,
        rec: crate::store::SandboxRecord,
        reason: &str,
        report: &mut GcReport,
    ) -> Result<()> {
        if rec.owner != Some(self.inner.me)
            && !self
                .inner
                .store
                .claim_for_delete(&rec.id, rec.owner, self.inner.me)?
        {
            // Another pyro claimed it first.
            return Ok(());
        }
        let backend = self.backend_of(rec.backend);
        let r = destroy_record(&self.inner, backend.as_ref(), &rec, reason).await;
        if r.deleted {
            report.removed.push(rec.id);
        } else {
            report
                .errors
                .extend(r.errors.into_iter().map(|e| format!("{}: {e}", rec.id)));
        }
        Ok(())
    }
}
