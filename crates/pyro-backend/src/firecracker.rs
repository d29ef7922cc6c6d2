//! The Firecracker backend (isolation `microvm`): the pinned Firecracker build, driven through
//! its API socket (so that snapshots can be added on the same channel), booting the same guest
//! kernel and initramfs agent as the QEMU backend, with the environment's read-only ext4 image
//! and a sparse writable disk as virtio block devices and Firecracker's hybrid vsock, which is the
//! transport the QEMU backend reproduces with vhost-device-vsock.
//!
//! As root, Firecracker runs under the pinned jailer: a chroot in the sandbox's run directory
//! (`jail/firecracker/<id>/root`) into which the kernel, initramfs and both disks are
//! bind-mounted (the environment image read-only; nothing is copied, so create time does not
//! grow with the image), its own uid/gid ([`JAIL_UID`]), a memory limit in its own cgroup (v1 or
//! v2, whichever the host has), a new pid namespace and a new, empty network namespace. Not as
//! root, it runs unjailed and pyro warns. Graceful stop is the agent's power-off: the guest
//! resets (`reboot=k`), which Firecracker turns into its own exit; Ctrl-Alt-Del would need an
//! i8042 driver that the guest kernel leaves out to boot faster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{IoContext, Result};
use crate::qemu::destroy_vm;
use crate::vmm::{self, vm_err, AGENT_PORT, VSOCK_SOCKET};
use crate::{Backend, CleanupReport, Endpoint, Isolation, LimitsReport, SandboxSpec, Started};
use pyro_api::sandbox::SandboxRecord;

const NAME: &str = "firecracker";

/// The API socket in a sandbox's run directory.
pub const API_SOCKET: &str = "firecracker.sock";

/// Largest API response read; Firecracker's are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Boot arguments: a quiet serial console, a reset on reboot (Firecracker exits on it), no
/// probing of devices the guest kernel does not have.
/// `random.trust_cpu=on`: the guest kernel is built from `tinyconfig`, which leaves
/// `RANDOM_TRUST_CPU` off, so without it the guest's CRNG waits for entropy a VM barely has.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 quiet random.trust_cpu=on";

/// `firecracker`: `$PYRO_FIRECRACKER`, else PATH, else `~/.cache/pyro/firecracker/` (where
/// `scripts/setup --vm` installs the pinned build).
pub fn find_firecracker() -> Option<PathBuf> {
    vmm::find_tool("firecracker", pyro_api::paths::Var::Firecracker).or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        Some(home.join(".cache/pyro/firecracker/firecracker")).filter(|p| p.is_file())
    })
}

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

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    firecracker: PathBuf,
    jailer: Option<PathBuf>,
    kernel: PathBuf,
    cache: PathBuf,
}

/// Where things are for one sandbox: host paths, and the paths Firecracker is given (inside its
/// chroot when jailed).
struct Layout {
    api_sock: PathBuf,
    vsock_host: PathBuf,
    chroot: Option<PathBuf>,
}

impl Layout {
    fn new(run_dir: &Path, id: &str, jailed: bool) -> Layout {
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
    fn guest_path(&self, host: &Path, name: &str) -> PathBuf {
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

/// One request to Firecracker's API over its Unix socket; returns the status code and body.
/// Firecracker keeps connections alive whatever the client asks, so the response is read up to
/// the end of its headers and then exactly `Content-Length` body bytes (capped).
pub async fn api(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    let err = |m: String| vm_err(NAME, format!("API {method} {path}: {m}"));
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|e| vm_err(NAME, format!("connect {}: {e}", socket.display())))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(err("response headers too long".into()));
        }
        let n = s.read(&mut chunk).await.map_err(|e| err(e.to_string()))?;
        if n == 0 {
            return Err(err("connection closed before a response".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err("malformed response".into()))?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(MAX_RESPONSE);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.len().min(head_end + len);
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end..end]).into_owned(),
    ))
}

/// A `PUT` that must succeed (`204 No Content`).
async fn put(socket: &Path, path: &str, body: Value) -> Result<()> {
    let (status, text) = api(socket, "PUT", path, Some(&body)).await?;
    if status / 100 != 2 {
        return Err(vm_err(
            NAME,
            format!("API PUT {path} answered {status}: {}", text.trim()),
        ));
    }
    Ok(())
}

impl FirecrackerBackend {
    /// A backend using `firecracker` (under `jailer` when given) and the guest `kernel`;
    /// `cache` holds initramfs images.
    pub fn new(
        firecracker: PathBuf,
        jailer: Option<PathBuf>,
        kernel: PathBuf,
        cache: PathBuf,
    ) -> FirecrackerBackend {
        FirecrackerBackend {
            firecracker,
            jailer,
            kernel,
            cache,
        }
    }

    /// Whether this backend jails Firecracker (root and a jailer are both needed).
    pub fn jailed(&self) -> bool {
        self.jailer.is_some() && nix::unistd::geteuid().is_root()
    }

    /// Starts the jailer: chroot, uid/gid, cgroup memory limit, new pid and network namespaces.
    /// Its stdout (Firecracker's, the guest console) goes to `console`.
    async fn spawn_jailed(
        &self,
        jailer: &Path,
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
            .arg(&self.firecracker)
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

    /// Configures the VM through the API and starts it.
    async fn configure(
        &self,
        lay: &Layout,
        spec: &SandboxSpec<'_>,
        initrd: &Path,
        rw_disk: &Path,
    ) -> Result<()> {
        let api_sock = lay.api_sock.as_path();
        let kernel = lay.guest_path(&self.kernel, "vmlinux");
        let initrd = lay.guest_path(initrd, "initrd.cpio");
        let env = lay.guest_path(spec.rootfs, "env.ext4");
        let rw_disk = lay.guest_path(rw_disk, "rw.ext4");
        let vsock = lay.guest_path(&lay.vsock_host, VSOCK_SOCKET);
        let mut boot_args = format!("{BOOT_ARGS} pyro.port={AGENT_PORT}");
        if let Some(plan) = spec.network {
            boot_args.push(' ');
            boot_args.push_str(&plan.kernel_arg());
        }
        put(
            api_sock,
            "/boot-source",
            json!({
                "kernel_image_path": kernel,
                "initrd_path": initrd,
                "boot_args": boot_args,
            }),
        )
        .await?;
        if let Some(plan) = spec.network {
            // Jailed, the tap is the one in the VMM's own namespace; unjailed, the host's.
            let tap = if lay.chroot.is_some() {
                pyro_net::link::JAIL_TAP.to_string()
            } else {
                plan.host_interface.clone()
            };
            put(
                api_sock,
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": tap, "guest_mac": pyro_net::guest_mac(spec.id)}),
            )
            .await?;
        }
        put(
            api_sock,
            "/machine-config",
            json!({"vcpu_count": spec.resources.vcpus, "mem_size_mib": spec.resources.mem_mib, "smt": false}),
        )
        .await?;
        put(
            api_sock,
            "/drives/env",
            json!({"drive_id": "env", "path_on_host": env, "is_root_device": false, "is_read_only": true}),
        )
        .await?;
        put(
            api_sock,
            "/drives/rw",
            json!({"drive_id": "rw", "path_on_host": rw_disk, "is_root_device": false, "is_read_only": false}),
        )
        .await?;
        put(
            api_sock,
            "/vsock",
            json!({"guest_cid": 3, "uds_path": vsock}),
        )
        .await?;
        put(
            api_sock,
            "/actions",
            json!({"action_type": "InstanceStart"}),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Backend for FirecrackerBackend {
    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Firecracker
    }

    fn isolation(&self) -> Isolation {
        Isolation::Microvm
    }

    fn uid_shift(&self) -> u32 {
        0
    }

    fn wants_ext4_image(&self) -> bool {
        true
    }

    fn network_link(&self) -> Option<pyro_net::LinkKind> {
        Some(if self.jailed() {
            pyro_net::LinkKind::Bridged
        } else {
            pyro_net::LinkKind::Tap
        })
    }

    async fn start(&self, spec: &SandboxSpec<'_>) -> Result<Started> {
        vmm::make_private_dirs(&[spec.run_dir, spec.state_dir])?;
        let initrd = vmm::initramfs(&self.cache, spec.agent)?;
        let rw_disk = spec.state_dir.join("rw.ext4");
        vmm::ensure_scratch_disk(&rw_disk)?;
        let jailed = self.jailed();
        let lay = Layout::new(spec.run_dir, spec.id, jailed);
        // The guest's serial console is Firecracker's stdout.
        let console_path = spec.state_dir.join("console.log");
        let console = std::fs::File::create(&console_path)
            .ctx(|| format!("create {}", console_path.display()))?;
        let log_path = spec.state_dir.join("firecracker.log");
        let log =
            std::fs::File::create(&log_path).ctx(|| format!("create {}", log_path.display()))?;
        if let Some(chroot) = &lay.chroot {
            std::fs::create_dir_all(chroot).ctx(|| format!("create {}", chroot.display()))?;
        }
        let ready = vmm::ready_listener(&lay.vsock_host)?;
        let runtime = match (&self.jailer, jailed) {
            (Some(jailer), true) => {
                std::os::unix::fs::chown(&rw_disk, Some(JAIL_UID), Some(JAIL_UID))
                    .ctx(|| format!("chown {}", rw_disk.display()))?;
                let files: [(&Path, &str, bool); 4] = [
                    (&self.kernel, "vmlinux", true),
                    (&initrd, "initrd.cpio", true),
                    (spec.rootfs, "env.ext4", true),
                    (&rw_disk, "rw.ext4", false),
                ];
                self.spawn_jailed(jailer, spec, &lay, &files, console, log)
                    .await?
            }
            _ => {
                if let Some(plan) = spec.network {
                    pyro_net::link::create_tap(plan).await?;
                }
                tracing::warn!(
                    "firecracker runs without the jailer (not root, or no jailer): no chroot, uid, cgroup or namespace confinement of the VMM"
                );
                let child = tokio::process::Command::new(&self.firecracker)
                    .arg("--api-sock")
                    .arg(&lay.api_sock)
                    .arg("--id")
                    .arg(spec.id)
                    .args(["--level", "Warning"])
                    .stdin(Stdio::null())
                    .stdout(console)
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .map_err(|e| {
                        vm_err(
                            NAME,
                            format!("cannot start {}: {e}", self.firecracker.display()),
                        )
                    })?;
                child
                    .id()
                    .and_then(|pid| vmm::record_process(spec.run_dir, "firecracker", pid))
            }
        };
        if !vmm::wait_for_path(&lay.api_sock, runtime, Duration::from_secs(10)).await {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(vm_err(
                NAME,
                format!("firecracker did not open its API socket: {}", text.trim()),
            ));
        }
        self.configure(&lay, spec, &initrd, &rw_disk).await?;
        let mut not_applied = vec![
            "pids: bounded by the VM's memory, not counted (the guest kernel has no cgroups)"
                .to_string(),
        ];
        if !jailed {
            not_applied.push("vmm: Firecracker runs without the jailer (needs root)".into());
        }
        let vsock = lay.vsock_host.clone();
        Ok(Started {
            runtime,
            endpoint: Endpoint::HybridVsock {
                uds: vsock,
                port: AGENT_PORT,
            },
            limits: LimitsReport {
                cgroup: "none".into(),
                memory_bytes: Some(spec.resources.mem_mib << 20),
                pids_max: None,
                cpus: Some(f64::from(spec.resources.vcpus)),
                not_applied,
            },
            ready: Some(ready),
        })
    }

    fn endpoint(&self, record: &SandboxRecord) -> Endpoint {
        Endpoint::HybridVsock {
            uds: layout_of(record).vsock_host,
            port: AGENT_PORT,
        }
    }

    async fn stop(&self, record: &SandboxRecord) -> CleanupReport {
        let lay = layout_of(record);
        let report = destroy_vm(record, &lay.vsock_host, true).await;
        remove_jail_cgroups(&record.id);
        report
    }

    async fn destroy(&self, record: &SandboxRecord) -> CleanupReport {
        let lay = layout_of(record);
        let report = destroy_vm(record, &lay.vsock_host, false).await;
        remove_jail_cgroups(&record.id);
        report
    }
}

/// The layout a recorded sandbox was started with: jailed or not is decided by what exists, so
/// a later `pyro gc` gets it right too.
fn layout_of(record: &SandboxRecord) -> Layout {
    let jailed = Layout::new(&record.run_dir, &record.id, true);
    if jailed.chroot.as_ref().is_some_and(|c| c.exists()) {
        jailed
    } else {
        Layout::new(&record.run_dir, &record.id, false)
    }
}

/// Removes the jailer's cgroup (v1: one per controller; v2: one), empty once Firecracker is
/// gone.
fn remove_jail_cgroups(id: &str) {
    let mut dirs = vec![PathBuf::from(format!("/sys/fs/cgroup/firecracker/{id}"))];
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(
            ctrls
                .flatten()
                .map(|c| c.path().join("firecracker").join(id)),
        );
    }
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_not_made_yet_is_judged_by_its_parent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let later = tmp.path().join("not/made/yet");
        assert_eq!(on_nodev_mount(&later), on_nodev_mount(tmp.path()));
    }
}
