//! Firecracker's jailer, as pyro drives it: the per-sandbox chroot layout with the kernel,
//! initramfs and disks bind-mounted in (nothing copied), its own uid/gid ([`JAIL_UID`]), a memory
//! limit in its own cgroup (v1 or v2), a new pid namespace and a new, empty network namespace;
//! and what a host must give for all of that (no `nodev` run directory, a cgroup memory
//! controller), checked before a start and reported by `pyro doctor`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::firecracker::API_SOCKET;
use crate::vmm::{self, vm_err, VSOCK_SOCKET};
use crate::SandboxSpec;

const NAME: &str = "firecracker";

/// The uid and gid a jailed Firecracker runs as: outside the container level's range
/// (100000..165536), so the two levels never share an owner.
pub const JAIL_UID: u32 = 165_536;

/// Memory the VMM itself may use on top of the guest's, in the jail's cgroup limit.
const VMM_OVERHEAD: u64 = 128 << 20;

/// `jailer`: `$PYRO_JAILER`, else next to `firecracker`.
pub fn find_jailer(firecracker: &Path) -> Option<PathBuf> {
    if let Some(p) = pyro_api::paths::var_os(pyro_api::paths::Var::Jailer) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    firecracker
        .parent()
        .map(|d| d.join("jailer"))
        .filter(|p| p.is_file())
}

/// Where things are for one sandbox: host paths, and the paths Firecracker is given (inside its
/// chroot when jailed).
pub(crate) struct Layout {
    pub(crate) api_sock: PathBuf,
    pub(crate) vsock_host: PathBuf,
    pub(crate) chroot: Option<PathBuf>,
}

impl Layout {
    pub(crate) fn new(run_dir: &Path, id: &str, jailed: bool) -> Layout {
        if jailed {
            let chroot = run_dir
                .join("jail")
                .join("firecracker")
                .join(id)
                .join("root");
            Layout {
                api_sock: chroot.join("api.sock"),
                vsock_host: chroot.join(VSOCK_SOCKET),
                chroot: Some(chroot),
            }
        } else {
            Layout {
                api_sock: run_dir.join(API_SOCKET),
                vsock_host: run_dir.join(VSOCK_SOCKET),
                chroot: None,
            }
        }
    }

    /// The path Firecracker is given for a host file that appears in the jail as `/name`.
    pub(crate) fn guest_path(&self, host: &Path, name: &str) -> PathBuf {
        if self.chroot.is_some() {
            PathBuf::from("/").join(name)
        } else {
            host.to_path_buf()
        }
    }
}

/// Whether `path` (or, while it does not exist yet, its nearest existing parent) is on a
/// filesystem mounted `nodev`, where device nodes cannot be opened. The jailer makes `/dev/kvm`
/// in Firecracker's chroot under the run directory, so a nodev run directory (a tmpfs `/run` or
/// `/tmp` often is) fails the boot with "Error creating KVM object: Permission denied".
pub fn on_nodev_mount(path: &Path) -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    path.ancestors()
        .find_map(|p| statvfs(p).ok())
        .is_some_and(|s| s.flags().contains(FsFlags::ST_NODEV))
}

/// The cgroup v2 root the jailer makes the VMM's cgroup under.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether a cgroup v2 controller list file (`cgroup.controllers`, `cgroup.subtree_control`)
/// of the root cgroup names `controller`.
fn root_cgroup_lists(file: &str, controller: &str) -> bool {
    std::fs::read_to_string(Path::new(CGROUP_ROOT).join(file))
        .is_ok_and(|s| s.split_whitespace().any(|c| c == controller))
}

/// What would stop the jailer from starting a VMM whose sandbox run directory is under
/// `run_dir`, one sentence each (empty when nothing is in the way). Reads only; a cgroup v2
/// memory controller that exists but is not passed on to child cgroups is not a problem, since
/// [`enable_jail_cgroup`] turns it on before a jailed start.
pub fn jail_problems(run_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if on_nodev_mount(run_dir) {
        problems.push(format!(
            "the run directory {} is on a nodev mount, where the jailer's /dev/kvm cannot be opened (\"Error creating KVM object: Permission denied\"); set PYRO_RUN_DIR to a directory on a filesystem mounted without nodev",
            run_dir.display()
        ));
    }
    match crate::container::cgroup_version() {
        "none" => problems.push(format!(
            "no cgroup filesystem is mounted at {CGROUP_ROOT}, so the jailer cannot limit the VMM's memory (mount -t cgroup2 none {CGROUP_ROOT})"
        )),
        "v2" if !root_cgroup_lists("cgroup.controllers", "memory") => problems.push(format!(
            "the cgroup v2 memory controller is missing ({CGROUP_ROOT}/cgroup.controllers has no memory), so the jailer cannot limit the VMM's memory"
        )),
        _ => {}
    }
    problems
}

/// Passes the cgroup v2 memory controller on to child cgroups (`+memory` in the root's
/// `cgroup.subtree_control`) when the root has it but does not yet, as on a host without
/// systemd: the jailer's `memory.max` needs it. Nothing to do on cgroup v1 or when it is on.
fn enable_jail_cgroup() -> Result<()> {
    if crate::container::cgroup_version() != "v2"
        || root_cgroup_lists("cgroup.subtree_control", "memory")
        || !root_cgroup_lists("cgroup.controllers", "memory")
    {
        return Ok(());
    }
    let control = Path::new(CGROUP_ROOT).join("cgroup.subtree_control");
    std::fs::write(&control, "+memory").map_err(|e| {
        vm_err(
            NAME,
            format!(
                "enable the cgroup memory controller for the jailer ({}): {e}",
                control.display()
            ),
        )
    })
}

/// Bind-mounts `src` onto a new empty file `dst` (read-only when asked).
fn bind_file(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::File::create(dst).ctx(|| format!("create {}", dst.display()))?;
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| vm_err(NAME, format!("bind {} into the jail: {e}", src.display())))?;
    if read_only {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| vm_err(NAME, format!("make {} read-only: {e}", dst.display())))?;
    }
    Ok(())
}

/// Creates a new, empty network namespace and pins it at `path` (a bind mount of the namespace
/// file), for the jailer's `--netns`. Made on a short-lived thread so pyro's own stays put.
fn new_netns(path: &Path) -> Result<()> {
    std::fs::File::create(path).ctx(|| format!("create {}", path.display()))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> std::result::Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("pin the network namespace: {e}"))
    })
    .join()
    .map_err(|_| vm_err(NAME, "network namespace thread panicked"))?
    .map_err(|e| vm_err(NAME, e))
}

/// Starts the jailer: chroot, uid/gid, cgroup memory limit, new pid and network namespaces.
/// Its stdout (Firecracker's, the guest console) goes to `console`.
pub(crate) async fn spawn(
    jailer: &Path,
    firecracker: &Path,
    spec: &SandboxSpec<'_>,
    lay: &Layout,
    files: &[(&Path, &str, bool)],
    console: std::fs::File,
    log: std::fs::File,
) -> Result<Option<pyro_api::procinfo::ProcessId>> {
    let problems = jail_problems(spec.run_dir);
    if !problems.is_empty() {
        return Err(vm_err(NAME, problems.join("; ")));
    }
    enable_jail_cgroup()?;
    let chroot = lay.chroot.as_deref().unwrap_or(spec.run_dir);
    std::fs::create_dir_all(chroot).ctx(|| format!("create {}", chroot.display()))?;
    for (src, name, ro) in files {
        bind_file(src, &chroot.join(name), *ro)?;
    }
    let netns = spec.run_dir.join("netns");
    new_netns(&netns)?;
    if let Some(plan) = spec.network {
        pyro_net::link::create_bridged(plan, &netns, JAIL_UID).await?;
    }
    let limit = (spec.resources.mem_mib << 20) + VMM_OVERHEAD;
    let (version, cgroup) = if crate::container::cgroup_version() == "v2" {
        ("2", format!("memory.max={limit}"))
    } else {
        ("1", format!("memory.limit_in_bytes={limit}"))
    };
    let jail_base = spec.run_dir.join("jail");
    let status = tokio::process::Command::new(jailer)
        .arg("--id")
        .arg(spec.id)
        .arg("--exec-file")
        .arg(firecracker)
        .args([
            "--uid",
            &JAIL_UID.to_string(),
            "--gid",
            &JAIL_UID.to_string(),
        ])
        .arg("--chroot-base-dir")
        .arg(&jail_base)
        .args(["--cgroup-version", version, "--cgroup", &cgroup])
        .arg("--new-pid-ns")
        .arg("--netns")
        .arg(&netns)
        .args(["--", "--api-sock", "/api.sock", "--level", "Warning"])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(log)
        .process_group(0)
        .status()
        .await
        .map_err(|e| vm_err(NAME, format!("cannot start {}: {e}", jailer.display())))?;
    if !status.success() {
        return Err(vm_err(NAME, format!("jailer failed ({status})")));
    }
    // With a new pid namespace the jailer forks Firecracker, writes its pid here and exits.
    let pid_file = chroot.join("firecracker.pid");
    if !vmm::wait_for_path(&pid_file, None, Duration::from_secs(10)).await {
        return Err(vm_err(NAME, "the jailer wrote no firecracker.pid"));
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| vm_err(NAME, "unreadable firecracker.pid"))?;
    Ok(vmm::record_process(spec.run_dir, "firecracker", pid))
}
