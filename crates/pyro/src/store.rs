//! SQLite state (WAL mode). Every sandbox is recorded here before any of its processes or files
//! exist, so a later pyro can find and remove what a killed one left behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::procinfo::ProcessId;

/// What kind of object a sandbox record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// The sandbox of one `pyro run`: owned by the process that runs it.
    Run,
}

impl SandboxKind {
    fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Run => "run",
        }
    }

    fn parse(_: &str) -> SandboxKind {
        // Only one kind exists so far; workspaces add theirs.
        SandboxKind::Run
    }
}

/// One recorded sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxRecord {
    /// 12 hex characters.
    pub id: String,
    /// What it belongs to.
    pub kind: SandboxKind,
    /// Isolation level name.
    pub isolation: String,
    /// Backend name.
    pub backend: String,
    /// Environment name.
    pub environment: String,
    /// Manifest digest of the environment.
    pub environment_digest: String,
    /// `creating`, `running` or `deleting`.
    pub state: String,
    /// The process that owns this sandbox, if it is ephemeral.
    #[serde(skip)]
    pub owner: Option<ProcessId>,
    /// The sandbox's own first process on the host (the container's init), once started.
    #[serde(skip)]
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
        backend: &str,
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
            backend: backend.into(),
            environment: environment.into(),
            environment_digest: digest.into(),
            state: "creating".into(),
            owner,
            runtime: None,
            state_dir,
            run_dir,
            created_at_ms: now_ms(),
        }
    }
}

/// The state database.
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    isolation TEXT NOT NULL,
    backend TEXT NOT NULL,
    environment TEXT NOT NULL,
    environment_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_pid INTEGER,
    owner_start INTEGER,
    runtime_pid INTEGER,
    runtime_start INTEGER,
    state_dir TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
";

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn proc_from(pid: Option<i64>, start: Option<i64>) -> Option<ProcessId> {
    Some(ProcessId {
        pid: pid? as i32,
        start: start? as u64,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .ctx(|| format!("create state directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new sandbox in state `creating`, owned by `owner`.
    pub fn insert(&self, r: &SandboxRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sandboxes (id, kind, isolation, backend, environment, environment_digest, state,
                owner_pid, owner_start, runtime_pid, runtime_start, state_dir, run_dir, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                r.id,
                r.kind.as_str(),
                r.isolation,
                r.backend,
                r.environment,
                r.environment_digest,
                r.state,
                r.owner.map(|o| o.pid as i64),
                r.owner.map(|o| o.start as i64),
                r.runtime.map(|o| o.pid as i64),
                r.runtime.map(|o| o.start as i64),
                r.state_dir.to_string_lossy(),
                r.run_dir.to_string_lossy(),
                r.created_at_ms,
            ],
        )?;
        Ok(())
    }

    /// Records the sandbox's runtime process and marks it running.
    pub fn set_running(&self, id: &str, runtime: Option<ProcessId>) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET state = 'running', runtime_pid = ?2, runtime_start = ?3 WHERE id = ?1",
            params![id, runtime.map(|p| p.pid as i64), runtime.map(|p| p.start as i64)],
        )?;
        Ok(())
    }

    /// Takes ownership of a sandbox for deletion, but only if its owner is still `expected`
    /// (compare-and-set, so two reapers never both delete it). Returns whether it was claimed.
    pub fn claim_for_delete(
        &self,
        id: &str,
        expected: Option<ProcessId>,
        me: ProcessId,
    ) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET state = 'deleting', owner_pid = ?4, owner_start = ?5
             WHERE id = ?1 AND owner_pid IS ?2 AND owner_start IS ?3",
            params![
                id,
                expected.map(|o| o.pid as i64),
                expected.map(|o| o.start as i64),
                me.pid as i64,
                me.start as i64
            ],
        )?;
        Ok(n == 1)
    }

    /// Forgets a sandbox whose processes and files are gone.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// One sandbox.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                params![id],
                row_to_record,
            )
            .optional()?)
    }

    /// Every recorded sandbox.
    pub fn list(&self) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([], row_to_record)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Error::from)
    }
}

const COLUMNS: &str = "id, kind, isolation, backend, environment, environment_digest, state, owner_pid, owner_start, runtime_pid, runtime_start, state_dir, run_dir, created_at_ms";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    Ok(SandboxRecord {
        id: row.get(0)?,
        kind: SandboxKind::parse(&row.get::<_, String>(1)?),
        isolation: row.get(2)?,
        backend: row.get(3)?,
        environment: row.get(4)?,
        environment_digest: row.get(5)?,
        state: row.get(6)?,
        owner: proc_from(row.get(7)?, row.get(8)?),
        runtime: proc_from(row.get(9)?, row.get(10)?),
        state_dir: PathBuf::from(row.get::<_, String>(11)?),
        run_dir: PathBuf::from(row.get::<_, String>(12)?),
        created_at_ms: row.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, owner: Option<ProcessId>) -> SandboxRecord {
        SandboxRecord::creating(
            id.into(),
            SandboxKind::Run,
            "container",
            "container",
            "debian:12",
            "sha256:00",
            "/s".into(),
            "/r".into(),
            owner,
        )
    }

    #[test]
    fn records_round_trip_and_claims_are_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("pyro.db")).unwrap();
        let dead = ProcessId {
            pid: i32::MAX,
            start: 7,
        };
        store.insert(&record("aaaaaaaaaaaa", Some(dead))).unwrap();
        let me = ProcessId::current();
        store.set_running("aaaaaaaaaaaa", Some(me)).unwrap();
        let got = store.get("aaaaaaaaaaaa").unwrap().unwrap();
        assert_eq!(got.state, "running");
        assert_eq!(got.owner, Some(dead));
        assert_eq!(got.runtime, Some(me));
        assert!(store
            .claim_for_delete("aaaaaaaaaaaa", Some(dead), me)
            .unwrap());
        // A second reaper that saw the old owner loses the race.
        assert!(!store
            .claim_for_delete("aaaaaaaaaaaa", Some(dead), me)
            .unwrap());
        store.remove("aaaaaaaaaaaa").unwrap();
        assert!(store.get("aaaaaaaaaaaa").unwrap().is_none());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn database_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("pyro.db")).unwrap();
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
