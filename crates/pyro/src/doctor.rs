//! `pyro doctor`: honest checks of what this host can do, and which isolation levels it gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::backend::container::{cgroup_version, find_runc};
use crate::backend::firecracker::{find_firecracker, find_jailer, jail_problems};
use crate::backend::qemu::{find_qemu, find_vhost_vsock};
use crate::backend::vmm::find_kernel;
use crate::backend::Isolation;
use crate::facade::{find_agent, is_static_binary, LevelStatus, Pyro};

/// A tool looked up on the host.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    /// Whether it was found.
    pub found: bool,
    /// Where.
    pub path: Option<PathBuf>,
    /// The first line of its version output.
    pub version: Option<String>,
}

/// KVM device checks.
#[derive(Debug, Clone, Serialize)]
pub struct Kvm {
    /// `/dev/kvm` exists.
    pub exists: bool,
    /// It can be opened for reading.
    pub readable: bool,
    /// It can be opened for writing.
    pub writable: bool,
    /// Whether a test VM booted; `None` when no boot was attempted, with `boot_note` saying why.
    pub test_boot: Option<bool>,
    /// Whether the CPU advertises hardware virtualization (vmx/svm); without it a `/dev/kvm`
    /// is a paravirtual KVM that cannot boot pyro's guest.
    pub hardware_virtualization: bool,
    /// Why no test boot was attempted.
    pub boot_note: Option<String>,
}

/// The agent binary.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCheck {
    /// Where it is.
    pub path: Option<PathBuf>,
    /// Where it comes from: `PYRO_AGENT`, `embedded` (carried by this build) or `found`.
    pub source: Option<&'static str>,
    /// The embedded agent's sha256, when this build carries one.
    pub embedded_sha256: Option<&'static str>,
    /// Whether it is statically linked (needed for images without glibc).
    pub static_binary: bool,
}

/// A directory pyro writes.
#[derive(Debug, Clone, Serialize)]
pub struct DirCheck {
    /// The path.
    pub path: PathBuf,
    /// Whether pyro can create and write it.
    pub writable: bool,
}

/// Host networking facts.
#[derive(Debug, Clone, Serialize)]
pub struct Networking {
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// IPv4 forwarding is on.
    pub ip_forward: bool,
    /// The `nft` tool.
    pub nft: bool,
    /// Network namespaces can be made (root or user namespaces).
    pub netns: bool,
    /// The `ip` tool (iproute2).
    pub ip: bool,
    /// The address pool sandboxes' subnets come from.
    pub pool: String,
    /// Whether sandboxes can be given a network (`--network`, network policies).
    pub usable: bool,
    /// What is missing, when not.
    pub missing: Option<String>,
}

/// What the VM levels need beyond KVM.
#[derive(Debug, Clone, Serialize)]
pub struct VmCheck {
    /// The guest kernel `scripts/build-kernel` made for this version, if any.
    pub kernel: Option<PathBuf>,
    /// `vhost-device-vsock`, QEMU's vsock backend.
    pub vhost_device_vsock: Tool,
    /// Whether the host has `/dev/vhost-vsock` (pyro uses vhost-device-vsock either way).
    pub dev_vhost_vsock: bool,
    /// Test boots made on request (`pyro doctor --boot`), one per usable VM level.
    pub test_boots: Vec<TestBoot>,
}

/// One test boot of a VM level: kernel, initramfs agent and transport, to the agent's handshake.
#[derive(Debug, Clone, Serialize)]
pub struct TestBoot {
    /// The level booted.
    pub level: Isolation,
    /// The VMM that served it.
    pub backend: Option<&'static str>,
    /// Whether the agent answered.
    pub ok: bool,
    /// From start to the agent's handshake, in milliseconds.
    pub boot_ms: Option<u64>,
    /// What went wrong.
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// `linux-x86_64` and the kernel release.
    pub platform: String,
    /// Kernel release.
    pub kernel: String,
    /// Whether pyro runs as root.
    pub root: bool,
    /// Isolation levels, strongest first.
    pub isolation_levels: Vec<LevelStatus>,
    /// Whether at least one level is usable.
    pub ok: bool,
    /// KVM.
    pub kvm: Kvm,
    /// Firecracker.
    pub firecracker: Tool,
    /// Jailer.
    pub jailer: Tool,
    /// QEMU.
    pub qemu: Tool,
    /// The VM levels' other pieces, and test boots.
    pub vm: VmCheck,
    /// runc (the container runtime).
    pub runc: Tool,
    /// `v1`, `v2` or `none`.
    pub cgroup: String,
    /// Whether unprivileged user namespaces are allowed (`user.max_user_namespaces` > 0).
    pub user_namespaces: bool,
    /// Whether the kernel has overlayfs.
    pub overlayfs: bool,
    /// mmdebstrap (environment builds).
    pub mmdebstrap: Tool,
    /// mkfs.ext4 (VM root filesystems).
    pub mkfs_ext4: Tool,
    /// The agent.
    pub agent: AgentCheck,
    /// State, cache and runtime directories.
    pub dirs: Vec<DirCheck>,
    /// Networking.
    pub networking: Networking,
    /// The level sandboxes get when none is asked for, and how to change it.
    pub default_isolation: DefaultLevel,
    /// Problems worth fixing, one line each.
    pub issues: Vec<String>,
}

/// The default isolation level: what it is, where it comes from, whether this host gives it.
#[derive(Debug, Clone, Serialize)]
pub struct DefaultLevel {
    /// The level in effect (`None` when `PYRO_ISOLATION` or the config file is unusable).
    pub level: Option<Isolation>,
    /// Where it comes from: `environment` (PYRO_ISOLATION), `config_file` or `built_in`.
    pub source: Option<crate::user_config::Source>,
    /// The config file read for it.
    pub config_file: PathBuf,
    /// Whether this host gives that level.
    pub usable: bool,
    /// The strongest level this host gives.
    pub strongest_usable: Option<Isolation>,
    /// The one command that makes the strongest usable level the default, when the default
    /// is not usable here.
    pub set_default: Option<String>,
    /// Why the default could not be read, if it could not.
    pub error: Option<String>,
}

/// The default level against the levels this host gives.
fn default_level(levels: &[LevelStatus]) -> DefaultLevel {
    let strongest = levels.iter().find(|l| l.usable).map(|l| l.level);
    let (level, source, error) = match crate::user_config::default_isolation() {
        Ok((l, s)) => (Some(l), Some(s), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    let usable = level.is_some_and(|d| levels.iter().any(|l| l.level == d && l.usable));
    let set_default = match (usable, strongest, source) {
        (false, Some(best), Some(crate::user_config::Source::Environment)) => {
            Some(format!("export PYRO_ISOLATION={best}"))
        }
        (false, Some(best), _) => Some(format!("pyro config set isolation {best}")),
        _ => None,
    };
    DefaultLevel {
        level,
        source,
        config_file: crate::user_config::path(),
        usable,
        strongest_usable: strongest,
        set_default,
        error,
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/sbin", "/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn tool_at(path: Option<PathBuf>, version_arg: &str) -> Tool {
    let version = path.as_ref().and_then(|p| {
        let out = Command::new(p).arg(version_arg).output().ok()?;
        let text = if out.stdout.is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        String::from_utf8_lossy(&text)
            .lines()
            .next()
            .map(|l| l.trim().to_string())
    });
    Tool {
        found: path.is_some(),
        path,
        version,
    }
}

fn can_open(path: &str, write: bool) -> bool {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .is_ok()
}

/// What stops the jailed microvm level, which pyro uses when it is root and the jailer is found:
/// a nodev run directory, or no cgroup memory controller (`jail_problems`).
fn jail_issues(run_dir: &Path) -> Vec<String> {
    let jailed = nix::unistd::geteuid().is_root()
        && find_firecracker()
            .as_deref()
            .and_then(find_jailer)
            .is_some();
    if !jailed {
        return Vec::new();
    }
    jail_problems(run_dir)
        .into_iter()
        .map(|p| format!("microvm (jailed): {p}"))
        .collect()
}

fn dir_writable(p: &Path) -> bool {
    if std::fs::create_dir_all(p).is_err() {
        return false;
    }
    let probe = p.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

impl Pyro {
    /// Checks the host. Never fails: what cannot be checked is reported as missing.
    pub fn doctor(&self) -> DoctorReport {
        let cfg = self.config();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let levels = self.levels();
        let ok = levels.iter().any(|l| l.usable);
        let exists = Path::new("/dev/kvm").exists();
        let kvm = Kvm {
            exists,
            readable: exists && can_open("/dev/kvm", false),
            writable: exists && can_open("/dev/kvm", true),
            test_boot: None,
            hardware_virtualization: std::fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")),
            boot_note: Some(
                "no test VM booted (pyro doctor --boot boots one per usable VM level)".into(),
            ),
        };
        let vm = VmCheck {
            kernel: find_kernel(),
            vhost_device_vsock: tool_at(find_vhost_vsock(), "--version"),
            dev_vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            test_boots: Vec::new(),
        };
        let (agent_path, source) = match &cfg.agent {
            Some(p) => (Some(p.clone()), Some("PYRO_AGENT")),
            None => match crate::embedded_agent::install(&cfg.paths.cache) {
                Some(Ok(p)) => (Some(p), Some("embedded")),
                _ => {
                    let found = find_agent();
                    let source = found.as_ref().map(|_| "found");
                    (found, source)
                }
            },
        };
        let agent = AgentCheck {
            static_binary: agent_path.as_deref().is_some_and(is_static_binary),
            path: agent_path,
            source,
            embedded_sha256: crate::embedded_agent::digest(),
        };
        let dirs: Vec<DirCheck> = [&cfg.paths.home, &cfg.paths.cache, &cfg.paths.run]
            .into_iter()
            .map(|p| DirCheck {
                path: p.clone(),
                writable: dir_writable(p),
            })
            .collect();
        let root = nix::unistd::geteuid().is_root();
        let user_namespaces = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
        let facts = crate::network::addr::HostFacts::read();
        let net_check = crate::network::check_host(crate::network::LinkKind::Veth);
        let networking = Networking {
            tun: facts.tun,
            ip_forward: facts.ip_forward,
            nft: facts.nft.is_some(),
            netns: root || user_namespaces,
            ip: facts.ip.is_some(),
            pool: crate::network::addr::pool()
                .map(|p| p.to_string())
                .unwrap_or_else(|e| e.to_string()),
            usable: net_check.is_ok(),
            missing: net_check.err().map(|e| e.to_string()),
        };
        let mut issues = Vec::new();
        for l in levels.iter().filter(|l| !l.usable) {
            issues.push(format!(
                "{}: {}",
                l.level,
                l.reason.clone().unwrap_or_default()
            ));
        }
        if agent.path.is_some() && !agent.static_binary {
            issues.push("the pyro-agent binary is not statically linked; images without glibc will not run it (unset PYRO_AGENT to use the agent built into pyro)".into());
        }
        for d in dirs.iter().filter(|d| !d.writable) {
            issues.push(format!("{} is not writable", d.path.display()));
        }
        issues.extend(jail_issues(&cfg.paths.run));
        let mmdebstrap = tool_at(which("mmdebstrap"), "--version");
        if !mmdebstrap.found {
            issues.push("mmdebstrap is missing, so environments cannot be built (apt-get install mmdebstrap)".into());
        }
        let default_isolation = default_level(&levels);
        if let Some(e) = &default_isolation.error {
            issues.push(format!("the default isolation level cannot be read: {e}"));
        } else if let (Some(level), false) = (default_isolation.level, default_isolation.usable) {
            let fix = match &default_isolation.set_default {
                Some(cmd) => {
                    format!("; make the strongest usable level the default once with `{cmd}`")
                }
                None => String::new(),
            };
            issues.push(format!(
                "the default isolation level, {level}, is not usable on this host, so every call must name a level{fix}"
            ));
        }
        DoctorReport {
            default_isolation,
            platform: format!("linux-{}", std::env::consts::ARCH),
            kernel,
            root,
            ok,
            isolation_levels: levels,
            kvm,
            // Where the backend looks, so doctor never says "not found" for the build it uses.
            firecracker: tool_at(find_firecracker(), "--version"),
            jailer: tool_at(
                find_firecracker().as_deref().and_then(find_jailer),
                "--version",
            ),
            qemu: tool_at(find_qemu(), "--version"),
            vm,
            runc: tool_at(cfg.runc.clone().or_else(find_runc), "--version"),
            cgroup: cgroup_version().into(),
            user_namespaces,
            overlayfs: std::fs::read_to_string("/proc/filesystems")
                .unwrap_or_default()
                .contains("overlay"),
            mmdebstrap,
            mkfs_ext4: tool_at(which("mkfs.ext4"), "-V"),
            agent,
            dirs,
            networking,
            issues,
        }
    }

    /// [`Pyro::doctor`] plus a real test boot of every usable VM level: the guest kernel, the
    /// agent from its initramfs and the vsock transport, up to the agent's handshake, on an empty
    /// root image (no environment needed). A level that fails its boot is reported as such.
    pub async fn doctor_with_boot(&self) -> DoctorReport {
        let mut r = self.doctor();
        let usable: Vec<Isolation> = r
            .isolation_levels
            .iter()
            .filter(|l| l.usable && l.level != Isolation::Container)
            .map(|l| l.level)
            .collect();
        for level in usable {
            let firecracker = level == Isolation::Microvm && self.microvm_prefers_firecracker();
            let mut boot = self.test_boot_report(level).await;
            if firecracker {
                // The verdict decides which VMM serves `microvm` from now on (per host and
                // kernel); after a failure, QEMU with KVM gets its own test boot.
                self.record_firecracker_boot(boot.ok, boot.error.clone());
                if !boot.ok && !self.microvm_prefers_firecracker() {
                    let error = boot.error.clone().unwrap_or_default();
                    r.issues.push(format!(
                        "microvm: Firecracker failed its test boot ({error}); microvm uses QEMU with KVM on this host from now on"
                    ));
                    r.vm.test_boots.push(boot);
                    boot = self.test_boot_report(level).await;
                }
            }
            if !boot.ok {
                r.issues.push(format!(
                    "{level}: the test boot failed: {}",
                    boot.error.clone().unwrap_or_default()
                ));
            }
            if level == Isolation::Microvm {
                r.kvm.test_boot = Some(boot.ok);
                r.kvm.boot_note = None;
            }
            r.vm.test_boots.push(boot);
        }
        if r.kvm.test_boot.is_none() {
            r.kvm.boot_note = Some("microvm is not usable here, so no KVM test boot".into());
        }
        r
    }

    async fn test_boot_report(&self, level: Isolation) -> TestBoot {
        let backend = self.backend_for(level).ok().map(|b| b.name());
        match self.test_boot(level).await {
            Ok(ms) => TestBoot {
                level,
                backend,
                ok: true,
                boot_ms: Some(ms),
                error: None,
            },
            Err(e) => TestBoot {
                level,
                backend,
                ok: false,
                boot_ms: None,
                error: Some(e.to_string()),
            },
        }
    }

    async fn test_boot(&self, level: Isolation) -> crate::error::Result<u64> {
        let backend = self.backend_for(level)?;
        let inner = self.inner.clone();
        let image =
            tokio::task::spawn_blocking(move || empty_root_image(&inner.config.paths.cache))
                .await
                .map_err(|e| crate::error::Error::InvalidRequest(format!("task failed: {e}")))??;
        let env = crate::env::ResolvedEnv {
            name: "doctor-test-boot".into(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            layers: Vec::new(),
        };
        let resources = crate::backend::Resources {
            vcpus: 1,
            mem_mib: 256,
            pids: 64,
        };
        let mut sb = crate::sandbox::Sandbox::create(
            self.inner.ctx.clone(),
            backend,
            &env,
            &image,
            resources,
        )
        .await?;
        let ms = sb.create_ms + sb.boot_ms;
        let report = sb.destroy("post_exec").await;
        if !report.deleted {
            return Err(crate::error::Error::InvalidRequest(format!(
                "test VM not fully removed: {}",
                report.errors.join("; ")
            )));
        }
        Ok(ms)
    }
}

/// A nearly empty ext4 image (only mount points) for test boots, made once in the cache.
fn empty_root_image(cache: &Path) -> crate::error::Result<PathBuf> {
    let dir = cache.join("images");
    let target = dir.join("doctor-root.ext4");
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| crate::error::Error::io(format!("create {}", dir.display()), e))?;
    let tree = dir.join(format!(".tmp-doctor-tree-{}", std::process::id()));
    let tmp = dir.join(format!(".tmp-doctor-{}", std::process::id()));
    // The mount points the agent mounts on, present as in any real root filesystem.
    for d in ["proc", "sys", "dev", "tmp", "run", "workspace"] {
        std::fs::create_dir_all(tree.join(d))
            .map_err(|e| crate::error::Error::io(format!("create {}", tree.display()), e))?;
    }
    let made = crate::env::mkfs_ext4(Some(&tree), &tmp, 16 << 20, 16);
    let _ = std::fs::remove_dir_all(&tree);
    made?;
    // 0644 whatever the umask, like environment images: a jailed Firecracker opens it as its uid.
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    std::fs::set_permissions(&tmp, mode)
        .map_err(|e| crate::error::Error::io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &target)
        .map_err(|e| crate::error::Error::io(format!("install {}", target.display()), e))?;
    Ok(target)
}
