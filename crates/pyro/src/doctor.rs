//! `pyro doctor`: honest checks of what this host can do, and which isolation levels it gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::backend::container::{cgroup_version, find_runc};
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
    /// Why no test boot was attempted.
    pub boot_note: Option<String>,
}

/// The agent binary.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCheck {
    /// Where it is.
    pub path: Option<PathBuf>,
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
    /// Problems worth fixing, one line each.
    pub issues: Vec<String>,
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
            boot_note: Some(
                "no VM backend in this version of pyro, so no test VM was booted".into(),
            ),
        };
        let agent_path = cfg.agent.clone().or_else(find_agent);
        let agent = AgentCheck {
            static_binary: agent_path.as_deref().is_some_and(is_static_binary),
            path: agent_path,
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
        let networking = Networking {
            tun: Path::new("/dev/net/tun").exists(),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .is_ok_and(|s| s.trim() == "1"),
            nft: which("nft").is_some(),
            netns: root || user_namespaces,
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
            issues.push("the pyro-agent binary is not statically linked; images without glibc will not run it (run scripts/build-agent)".into());
        }
        for d in dirs.iter().filter(|d| !d.writable) {
            issues.push(format!("{} is not writable", d.path.display()));
        }
        let mmdebstrap = tool_at(which("mmdebstrap"), "--version");
        if !mmdebstrap.found {
            issues.push("mmdebstrap is missing, so environments cannot be built (apt-get install mmdebstrap)".into());
        }
        DoctorReport {
            platform: format!("linux-{}", std::env::consts::ARCH),
            kernel,
            root,
            ok,
            isolation_levels: levels,
            kvm,
            firecracker: tool_at(which("firecracker"), "--version"),
            jailer: tool_at(which("jailer"), "--version"),
            qemu: tool_at(which("qemu-system-x86_64"), "--version"),
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
}
