//! The container level: the environment's root filesystem under a per-sandbox overlay, started
//! by runc (an established OCI runtime; no namespace code of our own) with every namespace
//! including user and network, a minimal capability set, the seccomp profile in
//! `resources/seccomp/container.json`, `no_new_privs`, and cgroup limits through whatever
//! cgroup version the host has.
//!
//! Layout: the writable layer lives in the sandbox's state directory (under `$PYRO_HOME`), while
//! the bundle, the overlay mount point and the agent socket live in its run directory (under
//! `$PYRO_RUN_DIR`), because the container's root is an unprivileged host uid that must be able
//! to traverse every path runc mounts from, and home directories are usually `0700`.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};
use crate::{Backend, CleanupReport, Isolation, LimitsReport, Resources, SandboxSpec, Started};
use pyro_api::procinfo::ProcessId;
use pyro_api::sandbox::SandboxRecord;

/// The seccomp profile, loaded in this one place.
pub const SECCOMP_PROFILE: &str = include_str!("../../../resources/seccomp/container.json");

/// The host uid (and gid) the container's root maps to; 65536 ids from here are mapped.
pub const UID_SHIFT: u32 = 100_000;
const UID_RANGE: u32 = 65_536;

/// Capabilities kept inside the container: enough for package managers and ordinary builds
/// (file ownership, setuid to service users, binding low ports), nothing that reaches the host.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
];

/// Where the agent and its socket appear inside the container.
const GUEST_AGENT: &str = "/.pyro/bin/pyro-agent";
const GUEST_SOCK_DIR: &str = "/.pyro/sock";
const SOCKET_NAME: &str = "agent.sock";

fn backend_err(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "container",
        message: message.into(),
    }
}

/// The runc-driven container backend.
#[derive(Debug, Clone)]
pub struct ContainerBackend {
    runc: PathBuf,
    /// runc's own state directory (`--root`), kept apart from any other runc user.
    runc_root: PathBuf,
    /// Where copies of the agent binary live (traversable by the mapped root).
    agent_dir: PathBuf,
}

/// The runc binary pyro uses: `$PYRO_RUNC`, else `runc` on PATH.
pub fn find_runc() -> Option<PathBuf> {
    if let Some(p) = pyro_api::paths::var_os(pyro_api::paths::Var::Runc) {
        // An explicit choice that does not exist is "not found", not a fallback to PATH.
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
}

impl ContainerBackend {
    /// A backend using `runc`, with runtime state under `run_root` (`$PYRO_RUN_DIR`).
    pub fn new(runc: PathBuf, run_root: &Path) -> ContainerBackend {
        ContainerBackend {
            runc,
            runc_root: run_root.join("runc"),
            agent_dir: run_root.join("agent"),
        }
    }

    fn runc_cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.runc_root);
        c.stdin(Stdio::null());
        c
    }

    /// Copies the agent where the container's root can reach it, once per agent build.
    fn stage_agent(&self, agent: &Path) -> Result<PathBuf> {
        crate::stage_executable(agent, &self.agent_dir, "pyro-agent")
    }
}

/// The agent socket of a sandbox, from its run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("sock").join(SOCKET_NAME)
}

/// The OCI runtime configuration for one sandbox.
pub fn oci_config(id: &str, agent: &Path, sock_dir: &Path, res: &Resources) -> Result<Value> {
    let seccomp: Value = serde_json::from_str(SECCOMP_PROFILE)
        .map_err(|e| backend_err(format!("seccomp profile: {e}")))?;
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    let period: u64 = 100_000;
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [GUEST_AGENT, "--listen", format!("unix:{GUEST_SOCK_DIR}/{SOCKET_NAME}"), "--workdir", "/workspace"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": format!("pyro-{id}"),
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
            {"destination": GUEST_AGENT, "type": "bind", "source": agent, "options": ["rbind", "ro", "nosuid", "nodev"]},
            {"destination": GUEST_SOCK_DIR, "type": "bind", "source": sock_dir, "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]}
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": UID_SHIFT, "size": UID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": UID_SHIFT, "size": UID_RANGE}],
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}
            ],
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": res.mem_mib * 1024 * 1024, "swap": res.mem_mib * 1024 * 1024},
                "pids": {"limit": res.pids},
                "cpu": {"quota": u64::from(res.vcpus) * period, "period": period}
            },
            "cgroupsPath": format!("/pyro/{id}"),
            "seccomp": seccomp,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    }))
}

/// Which cgroup layout the host has: `v2` (unified), `v1` (legacy or hybrid), or `none`.
pub fn cgroup_version() -> &'static str {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => "v2",
        Ok(_)
            if Path::new("/sys/fs/cgroup/memory").is_dir()
                || Path::new("/sys/fs/cgroup/pids").is_dir() =>
        {
            "v1"
        }
        _ => "none",
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads back the limits the kernel enforces for a sandbox's cgroup.
fn read_limits(id: &str, res: &Resources) -> LimitsReport {
    let version = cgroup_version();
    let mut r = LimitsReport {
        cgroup: version.into(),
        ..Default::default()
    };
    let (mem, pids, cpu) = match version {
        "v2" => {
            let d = PathBuf::from(format!("/sys/fs/cgroup/pyro/{id}"));
            let cpu = std::fs::read_to_string(d.join("cpu.max"))
                .ok()
                .and_then(|s| {
                    let mut it = s.split_whitespace();
                    let q: f64 = it.next()?.parse().ok()?;
                    let p: f64 = it.next()?.parse().ok()?;
                    Some(q / p)
                });
            (
                read_u64(&d.join("memory.max")),
                read_u64(&d.join("pids.max")),
                cpu,
            )
        }
        "v1" => {
            let g = |ctrl: &str, file: &str| {
                read_u64(&PathBuf::from(format!(
                    "/sys/fs/cgroup/{ctrl}/pyro/{id}/{file}"
                )))
            };
            let cpu = match (g("cpu", "cpu.cfs_quota_us"), g("cpu", "cpu.cfs_period_us")) {
                (Some(q), Some(p)) if p > 0 => Some(q as f64 / p as f64),
                _ => None,
            };
            (
                g("memory", "memory.limit_in_bytes"),
                g("pids", "pids.max"),
                cpu,
            )
        }
        _ => (None, None, None),
    };
    r.memory_bytes = mem;
    r.pids_max = pids;
    r.cpus = cpu;
    if mem != Some(res.mem_mib * 1024 * 1024) {
        r.not_applied.push(format!(
            "memory: asked {} MiB, cgroup {version} reports {mem:?}",
            res.mem_mib
        ));
    }
    if pids != Some(res.pids) {
        r.not_applied.push(format!(
            "pids: asked {}, cgroup {version} reports {pids:?}",
            res.pids
        ));
    }
    if cpu.is_none() {
        r.not_applied.push(format!(
            "cpu: asked {} CPUs, cgroup {version} reports no quota",
            res.vcpus
        ));
    }
    r
}

#[async_trait::async_trait]
impl Backend for ContainerBackend {
    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Container
    }

    fn isolation(&self) -> Isolation {
        Isolation::Container
    }

    fn uid_shift(&self) -> u32 {
        UID_SHIFT
    }

    fn network_link(&self) -> Option<pyro_net::LinkKind> {
        Some(pyro_net::LinkKind::Veth)
    }

    async fn start(&self, spec: &SandboxSpec<'_>) -> Result<Started> {
        let agent = self.stage_agent(spec.agent)?;
        crate::make_traversable_dir(spec.run_dir)?;
        if let Some(parent) = spec.run_dir.parent() {
            crate::make_traversable_dir(parent)?;
            if let Some(root) = parent.parent() {
                crate::make_traversable_dir(root)?;
            }
        }
        let upper = spec.state_dir.join("upper");
        let work = spec.state_dir.join("work");
        let rootfs = spec.run_dir.join("rootfs");
        let sock_dir = spec.run_dir.join("sock");
        for d in [&upper, &work, &rootfs, &sock_dir] {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        // The overlay's root and /workspace belong to the container's root user.
        let ws = upper.join("workspace");
        std::fs::create_dir_all(&ws).ctx(|| format!("create {}", ws.display()))?;
        for d in [&upper, &ws, &sock_dir] {
            chown(d, Some(UID_SHIFT), Some(UID_SHIFT)).ctx(|| format!("chown {}", d.display()))?;
        }
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700))
            .ctx(|| "chmod socket dir".into())?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .ctx(|| "chmod upper dir".into())?;

        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            spec.rootfs.display(),
            upper.display(),
            work.display()
        );
        // overlayfs splits its options on ',' and lower dirs on ':'.
        if [spec.rootfs, &upper, &work]
            .iter()
            .any(|p| p.to_string_lossy().contains([',', ':']))
        {
            return Err(backend_err("overlay paths may not contain ',' or ':'"));
        }
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| backend_err(format!("mount overlay on {}: {e}", rootfs.display())))?;

        let config = oci_config(spec.id, &agent, &sock_dir, &spec.resources)?;
        let config_path = spec.run_dir.join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).map_err(|e| backend_err(e.to_string()))?,
        )
        .ctx(|| format!("write {}", config_path.display()))?;

        let console = spec.state_dir.join("console.log");
        let out =
            std::fs::File::create(&console).ctx(|| format!("create {}", console.display()))?;
        let err = out.try_clone().ctx(|| "clone console log handle".into())?;
        let pid_file = spec.run_dir.join("init.pid");
        let status = self
            .runc_cmd()
            .arg("--log")
            .arg(spec.state_dir.join("runc.log"))
            .args(["run", "--detach", "--pid-file"])
            .arg(&pid_file)
            .arg("--bundle")
            .arg(spec.run_dir)
            .arg(spec.id)
            .stdout(out)
            .stderr(err)
            .status()
            .await
            .map_err(|e| backend_err(format!("cannot run {}: {e}", self.runc.display())))?;
        if !status.success() {
            let log = std::fs::read_to_string(spec.state_dir.join("runc.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(backend_err(format!(
                "runc run failed ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
            )));
        }
        let runtime = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .and_then(ProcessId::of);
        if let Some(plan) = spec.network {
            // The agent is already listening, but nothing runs a command before the host has
            // finished here, so the network is in place before any guest program can use it.
            let pid = runtime
                .map(|p| p.pid)
                .ok_or_else(|| backend_err("the container's init pid is unknown"))?;
            pyro_net::link::create_veth(plan, pid).await?;
        }
        Ok(Started {
            runtime,
            endpoint: crate::Endpoint::Unix(socket_path(spec.run_dir)),
            limits: read_limits(spec.id, &spec.resources),
            ready: None,
        })
    }

    fn endpoint(&self, record: &SandboxRecord) -> crate::Endpoint {
        crate::Endpoint::Unix(socket_path(&record.run_dir))
    }

    async fn stop(&self, record: &SandboxRecord) -> CleanupReport {
        let mut errors = Vec::new();
        // Killing the container's init ends its pid namespace and so every process in it. We
        // do it ourselves, by pidfd (immune to pid reuse), and wait for the exit: `runc delete
        // --force` does the same but sleeps in 100 ms steps.
        let killed = record.runtime.filter(ProcessId::is_alive).is_some_and(|p| {
            pyro_api::procinfo::signal_and_wait(p, libc::SIGKILL, Duration::from_secs(10))
        });
        let mut args = vec!["delete"];
        if !killed {
            args.push("--force");
        }
        args.push(&record.id);
        match self
            .runc_cmd()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let msg = String::from_utf8_lossy(&o.stderr);
                if !msg.contains("does not exist") && !msg.contains("not found") {
                    errors.push(format!("runc delete: {}", msg.trim()));
                }
            }
            Err(e) => errors.push(format!("runc delete: {e}")),
        }
        // If runc's state was lost, the init process may still be alive: kill it by identity.
        if let Some(p) = record.runtime.filter(ProcessId::is_alive) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        remove_cgroups(&record.id);
        // After the kill: the veth pair dies with the container's network namespace, so only
        // the table (and a link whose namespace is still being torn down) is left to remove.
        errors.extend(pyro_net::link::teardown(&record.id, &record.state_dir).await);
        let rootfs = record.run_dir.join("rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errors.push(format!("unmount {}: {e}", rootfs.display())),
        }
        for dir in [&record.run_dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
            }
        }
        CleanupReport {
            deleted: errors.is_empty(),
            reason: String::new(),
            errors,
        }
    }
}

/// Removes the sandbox's cgroups if runc did not (an empty cgroup is removed with rmdir).
fn remove_cgroups(id: &str) {
    let mut dirs = vec![PathBuf::from(format!("/sys/fs/cgroup/pyro/{id}"))];
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            dirs.push(c.path().join("pyro").join(id));
        }
    }
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        let res = Resources {
            vcpus: 2,
            mem_mib: 512,
            pids: 256,
        };
        oci_config(
            "abc123abc123",
            Path::new("/run/pyro/agent/a"),
            Path::new("/run/pyro/s/sock"),
            &res,
        )
        .unwrap()
    }

    #[test]
    fn every_namespace_is_new_including_user_and_network() {
        let c = config();
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "network", "ipc", "uts", "mount", "user", "cgroup"] {
            assert!(ns.contains(&want), "{want} namespace missing");
        }
        assert_eq!(c["linux"]["uidMappings"][0]["hostID"], UID_SHIFT);
    }

    #[test]
    fn privileges_are_minimal() {
        let c = config();
        assert_eq!(c["process"]["noNewPrivileges"], true);
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        for forbidden in [
            "CAP_SYS_ADMIN",
            "CAP_NET_ADMIN",
            "CAP_SYS_MODULE",
            "CAP_SYS_PTRACE",
            "CAP_NET_RAW",
            "CAP_MKNOD",
        ] {
            assert!(!caps.iter().any(|c| c == forbidden), "{forbidden} kept");
        }
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied: Vec<&str> = c["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for s in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "kexec_load",
            "init_module",
        ] {
            assert!(denied.contains(&s), "{s} not denied");
        }
    }

    #[test]
    fn limits_follow_resources() {
        let c = config();
        assert_eq!(
            c["linux"]["resources"]["memory"]["limit"],
            512u64 * 1024 * 1024
        );
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 256);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(c["process"]["args"][0], GUEST_AGENT);
    }
}
