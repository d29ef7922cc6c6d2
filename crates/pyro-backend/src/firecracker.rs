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
use crate::jailer::{self, Layout};
pub use crate::jailer::{find_jailer, jail_problems, on_nodev_mount, JAIL_UID};
use crate::qemu::destroy_vm;
use crate::vmm::{self, vm_err, AGENT_PORT, VSOCK_SOCKET};
use crate::{Backend, CleanupReport, Endpoint, Isolation, SandboxSpec, Started};
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
        let installed = pyro_api::paths::home_dir().join(".cache/pyro/firecracker/firecracker");
        Some(installed).filter(|p| p.is_file())
    })
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    firecracker: PathBuf,
    jailer: Option<PathBuf>,
    kernel: PathBuf,
    cache: PathBuf,
}

/// Connects to Firecracker's API socket. The socket file appears at `bind()`, but connections
/// are refused until Firecracker calls `listen()`; under load a start can land in that gap
/// (seen nested under TCG), so a refused connection is tried again for a short while.
async fn connect(socket: &Path) -> Result<UnixStream> {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(vm_err(NAME, format!("connect {}: {e}", socket.display())));
            }
        }
    }
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
    let mut s = connect(socket).await?;
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
        let rw_disk = spec.state_dir.join(vmm::RW_DISK);
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
                jailer::spawn(jailer, &self.firecracker, spec, &lay, &files, console, log).await?
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
        let unjailed =
            (!jailed).then(|| "vmm: Firecracker runs without the jailer (needs root)".to_string());
        Ok(Started {
            runtime,
            endpoint: Endpoint::HybridVsock {
                uds: lay.vsock_host.clone(),
                port: AGENT_PORT,
            },
            limits: vmm::vm_limits(&spec.resources, unjailed),
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

    /// A socket that is bound but not yet listening refuses connections; `connect` waits for
    /// the listen instead of failing the start.
    #[tokio::test]
    async fn the_api_socket_is_retried_between_bind_and_listen() {
        use nix::sys::socket::{
            bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .map_err(|e| e.kind())
                .err(),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let listening = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            listen(&fd, Backlog::new(1).unwrap()).unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(fd);
        });
        assert!(connect(&path).await.is_ok());
        listening.abort();
    }

    #[test]
    fn a_run_directory_not_made_yet_is_judged_by_its_parent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let later = tmp.path().join("not/made/yet");
        assert_eq!(on_nodev_mount(&later), on_nodev_mount(tmp.path()));
    }
}
