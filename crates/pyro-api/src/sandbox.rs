//! The plain description of one sandbox that backends are handed: what it is, where its
//! directories are, which processes own and run it. The state database stores it; nothing
//! here knows how.

use std::path::PathBuf;

use serde::Serialize;

use crate::ids::now_ms;
use crate::procinfo::ProcessId;
use crate::state::{BackendKind, SandboxState};

/// What kind of object a sandbox record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// The sandbox of one `pyro run`: owned by the process that runs it.
    Run,
    /// The sandbox of a persistent workspace: owned by a process only while it creates or
    /// resets it, otherwise by nobody.
    Workspace,
}

impl SandboxKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Run => "run",
            SandboxKind::Workspace => "workspace",
        }
    }

    /// A stored name back to its kind (anything unknown is a run).
    pub fn parse(s: &str) -> SandboxKind {
        if s == "workspace" {
            SandboxKind::Workspace
        } else {
            SandboxKind::Run
        }
    }
}

/// One recorded sandbox.
#[derive(Debug, Clone)]
pub struct SandboxRecord {
    /// 12 hex characters.
    pub id: String,
    /// What it belongs to.
    pub kind: SandboxKind,
    /// Isolation level name.
    pub isolation: String,
    /// Backend.
    pub backend: BackendKind,
    /// Environment name.
    pub environment: String,
    /// Manifest digest of the environment.
    pub environment_digest: String,
    /// Where it is.
    pub state: SandboxState,
    /// The process that owns this sandbox, if it is ephemeral.
    pub owner: Option<ProcessId>,
    /// The sandbox's own first process on the host (the container's init), once started.
    pub runtime: Option<ProcessId>,
    /// Persistent per-sandbox directory.
    pub state_dir: PathBuf,
    /// Runtime per-sandbox directory.
    pub run_dir: PathBuf,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

impl SandboxRecord {
    /// A record for a sandbox about to be created, stamped with the current time.
    #[allow(clippy::too_many_arguments)]
    pub fn creating(
        id: String,
        kind: SandboxKind,
        isolation: &str,
        backend: BackendKind,
        environment: &str,
        digest: &str,
        state_dir: PathBuf,
        run_dir: PathBuf,
        owner: Option<ProcessId>,
    ) -> SandboxRecord {
        SandboxRecord {
            id,
            kind,
            isolation: isolation.into(),
            backend,
            environment: environment.into(),
            environment_digest: digest.into(),
            state: SandboxState::Creating,
            owner,
            runtime: None,
            state_dir,
            run_dir,
            created_at_ms: now_ms(),
        }
    }
}
