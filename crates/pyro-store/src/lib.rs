//! SQLite state (WAL mode). Every sandbox is recorded here before any of its processes or files
//! exist, so a later pyro can find and remove what a killed one left behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use pyro_api::error::{Error, IoContext, Result};
use pyro_api::procinfo::ProcessId;

pub use pyro_api::sandbox::{SandboxKind, SandboxRecord};
pub use pyro_api::{BackendKind, SandboxState, WorkspaceState};

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
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    name TEXT,
    labels TEXT NOT NULL,
    environment TEXT NOT NULL,
    environment_digest TEXT NOT NULL,
    isolation TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    ttl_s INTEGER,
    idle_ttl_s INTEGER,
    created_at_ms INTEGER NOT NULL,
    last_activity_ms INTEGER NOT NULL,
    stopped_at_ms INTEGER,
    expired_at_ms INTEGER,
    command_count INTEGER NOT NULL DEFAULT 0,
    reset_count INTEGER NOT NULL DEFAULT 0,
    seed TEXT
);
CREATE TABLE IF NOT EXISTS workspace_logs (
    workspace_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    command TEXT NOT NULL,
    cwd TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    signal INTEGER,
    timed_out INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    stdout_bytes INTEGER NOT NULL,
    stderr_bytes INTEGER NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, seq)
);
CREATE TABLE IF NOT EXISTS networks (
    sandbox_id TEXT PRIMARY KEY,
    slot INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS published_ports (
    sandbox_id TEXT NOT NULL,
    service TEXT NOT NULL,
    host_addr TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    guest_port INTEGER NOT NULL,
    PRIMARY KEY (host_addr, host_port)
);
CREATE TABLE IF NOT EXISTS snapshots (
    workspace_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
";

pub use pyro_api::ids::now_ms;

fn proc_from(pid: Option<i64>, start: Option<i64>) -> Option<ProcessId> {
    Some(ProcessId {
        pid: pid? as i32,
        start: start? as u64,
    })
}

/// Starts a transaction that writes. It takes the write lock at once (`BEGIN IMMEDIATE`): a
/// deferred transaction that reads first and writes later cannot wait for the lock when another
/// process wrote in between (SQLite answers `SQLITE_BUSY_SNAPSHOT` at once, with no busy
/// timeout), whereas waiting for the lock up front is covered by the busy timeout.
fn write_tx(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Checks, in debug builds (every test), that changing workspace `id` to `to` is a transition of
/// the lifecycle ([`WorkspaceState::may_become`]); a release build records what it is told.
fn check_transition(tx: &rusqlite::Transaction<'_>, id: &str, to: WorkspaceState) -> Result<()> {
    if cfg!(debug_assertions) {
        let from: Option<WorkspaceState> = tx
            .query_row(
                "SELECT state FROM workspaces WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(from) = from {
            assert!(
                from.may_become(to),
                "workspace {id}: {from} -> {to} is not a transition of the lifecycle"
            );
        }
    }
    Ok(())
}

/// How long a call waits for another process's write before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema version this pyro writes (`PRAGMA user_version`). [`SCHEMA`] is always the
/// newest schema; [`MIGRATIONS`] bring an older database up to it, one step per version.
pub const SCHEMA_VERSION: u32 = 2;

/// `(version, SQL)`: the SQL that turns a version-`version - 1` database into version `version`.
/// Version 1 is the schema of the first release, before versions were recorded.
const MIGRATIONS: &[(u32, &str)] = &[(
    2,
    "ALTER TABLE workspace_logs ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0",
)];

/// The version of a database, reading an unversioned one (`user_version` 0) by its shape: no
/// tables yet is a new database; tables from a pyro before versions were recorded are version 1,
/// or 2 where that pyro already added `interrupted`.
fn schema_version(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    let v: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if v != 0 {
        return Ok(Some(v));
    }
    let table = |name: &str| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])
    };
    if !table("sandboxes")? && !table("workspace_logs")? {
        return Ok(None);
    }
    // Without a log table, the schema's CREATE makes it in its newest shape.
    let logs_current = !table("workspace_logs")?
        || conn
            .prepare(
                "SELECT 1 FROM pragma_table_info('workspace_logs') WHERE name = 'interrupted'",
            )?
            .exists([])?;
    Ok(Some(if logs_current { 2 } else { 1 }))
}

/// Creates the schema of a new database, or migrates an older one to [`SCHEMA_VERSION`], in one
/// write transaction: another pyro opening the same database at the same moment waits, then
/// finds the work done.
fn migrate(conn: &mut Connection) -> Result<()> {
    // A current database needs no write: every pyro process opens the database, and a write
    // here (even of an unchanged `user_version`) would take the write lock each time and fail
    // every command, the one that would free space included, on a full disk.
    if schema_version(conn)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let tx = write_tx(conn)?;
    match schema_version(&tx)? {
        None => tx.execute_batch(SCHEMA)?,
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Error::InvalidConfig {
                source_name: "the state database".into(),
                message: format!(
                    "it has schema version {v}, made by a newer pyro; this one knows up to {SCHEMA_VERSION}: use the newer pyro, or another PYRO_HOME"
                ),
            })
        }
        Some(v) => {
            for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > v) {
                tx.execute_batch(sql).map_err(|e| Error::Store(Box::new(MigrationError(*to, e))))?;
            }
            // Tables added since (CREATE IF NOT EXISTS) need no step of their own.
            tx.execute_batch(SCHEMA)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Puts the database in WAL mode (it stays so once set). Switching needs an exclusive lock, and
/// SQLite answers `SQLITE_BUSY` at once rather than calling the busy handler when another
/// connection holds the file: several pyro processes opening a new database together (a burst
/// of `workspace create`s on a fresh `PYRO_HOME`) would fail with "database is locked". So this
/// reads the mode first (no lock needed) and retries the switch within the busy timeout.
fn set_wal(conn: &Connection) -> Result<()> {
    let mode = |c: &Connection| -> rusqlite::Result<String> {
        c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
    };
    let started = std::time::Instant::now();
    loop {
        let attempt = mode(conn).and_then(|m| {
            if m.eq_ignore_ascii_case("wal") {
                Ok(())
            } else {
                conn.pragma_update(None, "journal_mode", "WAL")
            }
        });
        match attempt {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r.map_err(Error::from),
        }
    }
}

/// A migration step that failed, with the version it was heading for.
#[derive(Debug)]
struct MigrationError(u32, rusqlite::Error);

impl std::fmt::Display for MigrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "migrating to schema version {}: {}", self.0, self.1)
    }
}

impl std::error::Error for MigrationError {}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .ctx(|| format!("create state directory {}", dir.display()))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
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
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        tx.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        // The lease and published ports go with the sandbox (a workspace's reset keeps its
        // record, so it keeps its address).
        tx.execute("DELETE FROM networks WHERE sandbox_id = ?1", params![id])?;
        tx.execute(
            "DELETE FROM published_ports WHERE sandbox_id = ?1",
            params![id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Leases a subnet slot for sandbox `id` with its network spec (JSON): `pick` chooses among
    /// the free slots, seeing the used ones, inside one write transaction, so two processes never
    /// get the same slot (the UNIQUE constraint would refuse it anyway).
    pub fn lease_network(
        &self,
        id: &str,
        spec_json: &str,
        pick: impl FnOnce(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>> {
        self.write_slot(pick, |tx, slot| {
            tx.execute(
                "INSERT INTO networks (sandbox_id, slot, spec, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, slot, spec_json, now_ms()],
            )
        })
    }

    /// Moves a sandbox's lease to another slot chosen by `pick` among the free ones (its own
    /// slot counts as used); `None` when there is none.
    pub fn move_network(
        &self,
        id: &str,
        pick: impl FnOnce(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>> {
        self.write_slot(pick, |tx, slot| {
            tx.execute(
                "UPDATE networks SET slot = ?2 WHERE sandbox_id = ?1",
                params![id, slot],
            )
        })
    }

    /// In one write transaction: lets `pick` choose a slot seeing the used ones, then `write`s it.
    fn write_slot(
        &self,
        pick: impl FnOnce(&std::collections::HashSet<u32>) -> Option<u32>,
        write: impl FnOnce(&rusqlite::Transaction<'_>, u32) -> rusqlite::Result<usize>,
    ) -> Result<Option<u32>> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let used = used_slots(&tx)?;
        let Some(slot) = pick(&used) else {
            return Ok(None);
        };
        write(&tx, slot)?;
        tx.commit()?;
        Ok(Some(slot))
    }

    /// A sandbox's lease: its slot and network spec (JSON).
    pub fn network(&self, id: &str) -> Result<Option<(u32, String)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT slot, spec FROM networks WHERE sandbox_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Every leased sandbox id.
    pub fn network_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT sandbox_id FROM networks")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a lease whose sandbox record is gone.
    pub fn forget_network(&self, id: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute("DELETE FROM networks WHERE sandbox_id = ?1", params![id])?;
        conn.execute(
            "DELETE FROM published_ports WHERE sandbox_id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Records a published port; `false` when that host address and port are already taken.
    pub fn add_published_port(&self, id: &str, p: &pyro_api::ports::PublishedPort) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO published_ports (sandbox_id, service, host_addr, host_port, guest_port) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, p.service, p.host_addr.to_string(), p.host_port, p.guest_port],
        )?;
        Ok(n == 1)
    }

    /// Published ports of a sandbox, optionally of one service only.
    pub fn published_ports(
        &self,
        id: &str,
        service: Option<&str>,
    ) -> Result<Vec<pyro_api::ports::PublishedPort>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT service, host_addr, host_port, guest_port FROM published_ports WHERE sandbox_id = ?1 AND (?2 IS NULL OR service = ?2) ORDER BY host_port",
        )?;
        let rows = st.query_map(params![id, service], |r| {
            let addr: String = r.get(1)?;
            Ok(pyro_api::ports::PublishedPort {
                service: r.get(0)?,
                host_addr: addr.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST),
                host_port: r.get(2)?,
                guest_port: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes the published ports of a sandbox (of one service, or all); returns how many.
    pub fn remove_published_ports(&self, id: &str, service: Option<&str>) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM published_ports WHERE sandbox_id = ?1 AND (?2 IS NULL OR service = ?2)",
            params![id, service],
        )?)
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

/// One recorded workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceRow {
    /// Id (the same as its sandbox's).
    pub id: String,
    /// Optional human name.
    pub name: Option<String>,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Environment name.
    pub environment: String,
    /// Environment manifest digest.
    pub environment_digest: String,
    /// Isolation level.
    pub isolation: String,
    /// Backend.
    pub backend: String,
    /// `creating`, `running`, `stopped`, `resetting` or `broken`.
    pub state: WorkspaceState,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Absolute lifetime from creation, seconds.
    pub ttl_s: Option<u64>,
    /// Idle lifetime from the last activity, seconds.
    pub idle_ttl_s: Option<u64>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms of the last call that touched it.
    pub last_activity_ms: i64,
    /// Unix ms when it was last stopped.
    pub stopped_at_ms: Option<i64>,
    /// Unix ms when its TTL stopped it.
    pub expired_at_ms: Option<i64>,
    /// Execs so far.
    pub command_count: u64,
    /// Resets so far.
    pub reset_count: u64,
    /// How it was seeded (JSON).
    pub seed: Option<serde_json::Value>,
}

/// One exec in a workspace's history. Commands are recorded, their output is not.
#[derive(Debug, Clone)]
pub struct LogRow {
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

/// One snapshot of a workspace.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
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

const WS_COLUMNS: &str = "id, name, labels, environment, environment_digest, isolation, backend, state, vcpus, mem_mib, ttl_s, idle_ttl_s, created_at_ms, last_activity_ms, stopped_at_ms, expired_at_ms, command_count, reset_count, seed";

fn row_to_ws(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkspaceRow> {
    let labels: String = row.get(2)?;
    let seed: Option<String> = row.get(18)?;
    Ok(WorkspaceRow {
        id: row.get(0)?,
        name: row.get(1)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        environment: row.get(3)?,
        environment_digest: row.get(4)?,
        isolation: row.get(5)?,
        backend: row.get(6)?,
        state: row.get(7)?,
        vcpus: row.get(8)?,
        mem_mib: row.get::<_, i64>(9)? as u64,
        ttl_s: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        idle_ttl_s: row.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        created_at_ms: row.get(12)?,
        last_activity_ms: row.get(13)?,
        stopped_at_ms: row.get(14)?,
        expired_at_ms: row.get(15)?,
        command_count: row.get::<_, i64>(16)? as u64,
        reset_count: row.get::<_, i64>(17)? as u64,
        seed: seed.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl Store {
    /// Records a new workspace.
    pub fn insert_workspace(&self, w: &WorkspaceRow) -> Result<()> {
        self.conn().execute(
            &format!("INSERT INTO workspaces ({WS_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"),
            params![
                w.id,
                w.name,
                serde_json::to_string(&w.labels).unwrap_or_else(|_| "{}".into()),
                w.environment,
                w.environment_digest,
                w.isolation,
                w.backend,
                w.state,
                w.vcpus,
                w.mem_mib as i64,
                w.ttl_s.map(|v| v as i64),
                w.idle_ttl_s.map(|v| v as i64),
                w.created_at_ms,
                w.last_activity_ms,
                w.stopped_at_ms,
                w.expired_at_ms,
                w.command_count as i64,
                w.reset_count as i64,
                w.seed.as_ref().map(|s| s.to_string()),
            ],
        )?;
        Ok(())
    }

    /// One workspace by id or unique name.
    pub fn workspace(&self, id_or_name: &str) -> Result<Option<WorkspaceRow>> {
        let conn = self.conn();
        let by_id = conn
            .query_row(
                &format!("SELECT {WS_COLUMNS} FROM workspaces WHERE id = ?1"),
                params![id_or_name],
                row_to_ws,
            )
            .optional()?;
        if by_id.is_some() {
            return Ok(by_id);
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT {WS_COLUMNS} FROM workspaces WHERE name = ?1"
        ))?;
        let rows = stmt
            .query_map(params![id_or_name], row_to_ws)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(if rows.len() == 1 {
            rows.into_iter().next()
        } else {
            None
        })
    }

    /// Every workspace, oldest first.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {WS_COLUMNS} FROM workspaces ORDER BY created_at_ms"
        ))?;
        let rows = stmt
            .query_map([], row_to_ws)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Replaces a workspace's mutable fields.
    pub fn update_workspace(&self, w: &WorkspaceRow) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        check_transition(&tx, &w.id, w.state)?;
        tx.execute(
            "UPDATE workspaces SET name = ?2, labels = ?3, state = ?4, ttl_s = ?5, idle_ttl_s = ?6, last_activity_ms = ?7,
                stopped_at_ms = ?8, expired_at_ms = ?9, reset_count = ?10, environment_digest = ?11 WHERE id = ?1",
            params![
                w.id,
                w.name,
                serde_json::to_string(&w.labels).unwrap_or_else(|_| "{}".into()),
                w.state,
                w.ttl_s.map(|v| v as i64),
                w.idle_ttl_s.map(|v| v as i64),
                w.last_activity_ms,
                w.stopped_at_ms,
                w.expired_at_ms,
                w.reset_count as i64,
                w.environment_digest,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets a workspace's state.
    pub fn set_workspace_state(&self, id: &str, state: WorkspaceState) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        check_transition(&tx, id, state)?;
        tx.execute(
            "UPDATE workspaces SET state = ?2 WHERE id = ?1",
            params![id, state],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks activity now.
    pub fn touch_workspace(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE workspaces SET last_activity_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Appends an exec to a workspace's history in one transaction with its command count.
    pub fn append_log(&self, id: &str, mut log: LogRow) -> Result<LogRow> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM workspace_logs WHERE workspace_id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        log.seq = seq as u64;
        tx.execute(
            "INSERT INTO workspace_logs (workspace_id, seq, started_at_ms, command, cwd, exit_code,
                signal, timed_out, duration_ms, stdout_bytes, stderr_bytes, interrupted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                id,
                seq,
                log.started_at_ms,
                log.command,
                log.cwd,
                log.exit_code,
                log.signal,
                log.timed_out,
                log.duration_ms as i64,
                log.stdout_bytes as i64,
                log.stderr_bytes as i64,
                log.interrupted
            ],
        )?;
        tx.execute("UPDATE workspaces SET command_count = command_count + 1, last_activity_ms = ?2 WHERE id = ?1", params![id, now_ms()])?;
        tx.commit()?;
        Ok(log)
    }

    /// A workspace's history.
    pub fn logs(&self, id: &str) -> Result<Vec<LogRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT seq, started_at_ms, command, cwd, exit_code, signal, timed_out, duration_ms, stdout_bytes, stderr_bytes, interrupted FROM workspace_logs WHERE workspace_id = ?1 ORDER BY seq")?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(LogRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    started_at_ms: r.get(1)?,
                    command: r.get(2)?,
                    cwd: r.get(3)?,
                    exit_code: r.get(4)?,
                    signal: r.get(5)?,
                    timed_out: r.get(6)?,
                    duration_ms: r.get::<_, i64>(7)? as u64,
                    stdout_bytes: r.get::<_, i64>(8)? as u64,
                    stderr_bytes: r.get::<_, i64>(9)? as u64,
                    interrupted: r.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records (or replaces) a snapshot.
    pub fn put_snapshot(&self, id: &str, s: &SnapshotRow) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO snapshots VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                s.name,
                s.kind,
                s.created_at_ms,
                s.entries as i64,
                s.bytes as i64
            ],
        )?;
        Ok(())
    }

    /// A workspace's snapshots.
    pub fn snapshots(&self, id: &str) -> Result<Vec<SnapshotRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, kind, created_at_ms, entries, bytes FROM snapshots WHERE workspace_id = ?1 ORDER BY created_at_ms")?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(SnapshotRow {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    entries: r.get::<_, i64>(3)? as u64,
                    bytes: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Forgets a snapshot.
    pub fn delete_snapshot(&self, id: &str, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM snapshots WHERE workspace_id = ?1 AND name = ?2",
            params![id, name],
        )? == 1)
    }

    /// Forgets a workspace, its history and its snapshots, in one transaction.
    pub fn delete_workspace(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        for table in ["workspace_logs", "snapshots"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE workspace_id = ?1"),
                params![id],
            )?;
        }
        tx.execute("DELETE FROM workspaces WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    /// Sets (or clears) a sandbox's owner.
    pub fn set_owner(&self, id: &str, owner: Option<ProcessId>) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET owner_pid = ?2, owner_start = ?3 WHERE id = ?1",
            params![
                id,
                owner.map(|o| o.pid as i64),
                owner.map(|o| o.start as i64)
            ],
        )?;
        Ok(())
    }

    /// Marks a sandbox stopped (no runtime process).
    pub fn set_stopped(&self, id: &str) -> Result<()> {
        self.conn().execute("UPDATE sandboxes SET state = 'stopped', runtime_pid = NULL, runtime_start = NULL WHERE id = ?1", params![id])?;
        Ok(())
    }
}

const COLUMNS: &str = "id, kind, isolation, backend, environment, environment_digest, state, owner_pid, owner_start, runtime_pid, runtime_start, state_dir, run_dir, created_at_ms";

/// The subnet slots leased now, read inside the caller's transaction.
fn used_slots(tx: &rusqlite::Transaction<'_>) -> Result<std::collections::HashSet<u32>> {
    let mut st = tx.prepare("SELECT slot FROM networks")?;
    let rows = st.query_map([], |r| r.get::<_, u32>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

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

/// The network's leases and published ports live in this database.
impl pyro_net::LeaseStore for Store {
    fn lease_slot(
        &self,
        id: &str,
        spec_json: &str,
        pick: &mut dyn FnMut(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>> {
        self.lease_network(id, spec_json, pick)
    }

    fn move_slot(
        &self,
        id: &str,
        pick: &mut dyn FnMut(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>> {
        self.move_network(id, pick)
    }

    fn leased(&self, id: &str) -> Result<Option<(u32, String)>> {
        self.network(id)
    }

    fn published_ports(&self, id: &str) -> Result<Vec<pyro_api::ports::PublishedPort>> {
        Store::published_ports(self, id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, owner: Option<ProcessId>) -> SandboxRecord {
        SandboxRecord::creating(
            id.into(),
            SandboxKind::Run,
            "container",
            BackendKind::Container,
            "debian:12",
            "sha256:00",
            "/s".into(),
            "/r".into(),
            owner,
        )
    }

    #[test]
    fn a_history_from_before_interrupted_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyro.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE workspace_logs (workspace_id TEXT NOT NULL, seq INTEGER NOT NULL,
                started_at_ms INTEGER NOT NULL, command TEXT NOT NULL, cwd TEXT NOT NULL,
                exit_code INTEGER NOT NULL, signal INTEGER, timed_out INTEGER NOT NULL,
                duration_ms INTEGER NOT NULL, stdout_bytes INTEGER NOT NULL,
                stderr_bytes INTEGER NOT NULL, PRIMARY KEY (workspace_id, seq));
             INSERT INTO workspace_logs VALUES ('w', 1, 0, 'true', '/workspace', 0, NULL, 0, 1, 0, 0);",
        )
        .unwrap();
        drop(old);
        let store = Store::open(&path).unwrap();
        // Opening again finds the column there already.
        let store2 = Store::open(&path).unwrap();
        let row = LogRow {
            seq: 0,
            started_at_ms: 0,
            command: "sleep 9".into(),
            cwd: "/workspace".into(),
            exit_code: 143,
            signal: Some(15),
            timed_out: false,
            duration_ms: 5,
            stdout_bytes: 0,
            stderr_bytes: 0,
            interrupted: true,
        };
        store2.append_log("w", row).unwrap();
        let logs = store.logs("w").unwrap();
        assert_eq!(
            logs.iter().map(|l| l.interrupted).collect::<Vec<_>>(),
            [false, true]
        );
    }

    /// The first release's schema: today's without what later versions added.
    fn schema_v1() -> String {
        let v1 = SCHEMA.replace("    interrupted INTEGER NOT NULL DEFAULT 0,\n", "");
        assert_ne!(v1, SCHEMA, "the v1 fixture must differ from today's schema");
        v1
    }

    fn user_version(path: &Path) -> u32 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_version_1_database_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyro.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&schema_v1()).unwrap();
        old.execute_batch(
            "INSERT INTO sandboxes VALUES ('aaaaaaaaaaaa', 'workspace', 'container', 'container',
                 'debian:12', 'sha256:00', 'running', NULL, NULL, NULL, NULL, '/s', '/r', 5);
             INSERT INTO workspaces (id, name, labels, environment, environment_digest, isolation,
                 backend, state, vcpus, mem_mib, created_at_ms, last_activity_ms)
                 VALUES ('aaaaaaaaaaaa', 'demo', '{}', 'debian:12', 'sha256:00', 'container',
                 'container', 'running', 1, 1024, 5, 6);
             INSERT INTO workspace_logs VALUES ('aaaaaaaaaaaa', 1, 0, 'true', '/workspace', 0,
                 NULL, 0, 1, 0, 0);",
        )
        .unwrap();
        drop(old);
        assert_eq!(user_version(&path), 0);
        let store = Store::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        assert_eq!(
            store.get("aaaaaaaaaaaa").unwrap().unwrap().state,
            SandboxState::Running
        );
        let w = store.workspace("demo").unwrap().unwrap();
        assert_eq!((w.id.as_str(), w.mem_mib), ("aaaaaaaaaaaa", 1024));
        let logs = store.logs("aaaaaaaaaaaa").unwrap();
        assert_eq!((logs.len(), logs[0].interrupted), (1, false));
        drop(store);
        // A second open finds nothing to do.
        Store::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    #[test]
    fn a_new_database_gets_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyro.db");
        Store::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    #[test]
    fn a_database_from_a_newer_pyro_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyro.db");
        Store::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(&path)
            .err()
            .expect("a newer schema must be refused");
        assert_eq!(err.kind(), "invalid_config");
        assert!(err.to_string().contains("newer pyro"), "{err}");
        assert_eq!(user_version(&path), SCHEMA_VERSION + 1);
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
        assert_eq!(got.state, SandboxState::Running);
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
