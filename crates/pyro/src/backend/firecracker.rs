//! The Firecracker backend (isolation `microvm`): the pinned Firecracker build, driven through
//! its API socket (so that snapshots can be added on the same channel), booting the same guest
//! kernel and initramfs agent as the QEMU backend, with the environment's read-only ext4 image
//! and a sparse writable disk as virtio block devices and Firecracker's hybrid vsock, which is the
//! transport the QEMU backend reproduces with vhost-device-vsock.
//!
//! Not done yet: the jailer. Firecracker runs unjailed (as the calling user, in pyro's
//! namespaces), and pyro logs a warning saying so. Graceful stop is the agent's power-off: the
//! guest resets (`reboot=k`), which Firecracker turns into its own exit; Ctrl-Alt-Del would need
//! an i8042 driver the guest kernel leaves out to boot faster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::backend::qemu::destroy_vm;
use crate::backend::vm::{self, vm_err, AGENT_PORT, VSOCK_SOCKET};
use crate::backend::{
    Backend, CleanupReport, Endpoint, Isolation, LimitsReport, SandboxSpec, Started,
};
use crate::error::{IoContext, Result};
use crate::store::SandboxRecord;

const NAME: &str = "firecracker";

/// The API socket in a sandbox's run directory.
pub const API_SOCKET: &str = "firecracker.sock";

/// Largest API response read; Firecracker's are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Boot arguments: a quiet serial console, a reset on reboot (Firecracker exits on it), no
/// probing of devices the guest kernel does not have.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 quiet";

/// `firecracker`: `$PYRO_FIRECRACKER`, else PATH, else `~/.cache/pyro/firecracker/` (where
/// `scripts/setup --vm` installs the pinned build).
pub fn find_firecracker() -> Option<PathBuf> {
    vm::find_tool("firecracker", "PYRO_FIRECRACKER").or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        Some(home.join(".cache/pyro/firecracker/firecracker")).filter(|p| p.is_file())
    })
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    firecracker: PathBuf,
    kernel: PathBuf,
    cache: PathBuf,
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
    /// A backend using `firecracker` and the guest `kernel`; `cache` holds initramfs images.
    pub fn new(firecracker: PathBuf, kernel: PathBuf, cache: PathBuf) -> FirecrackerBackend {
        FirecrackerBackend {
            firecracker,
            kernel,
            cache,
        }
    }

    /// Configures the VM through the API and starts it.
    async fn configure(
        &self,
        api_sock: &Path,
        spec: &SandboxSpec<'_>,
        initrd: &Path,
        rw_disk: &Path,
        vsock: &Path,
    ) -> Result<()> {
        put(
            api_sock,
            "/boot-source",
            json!({
                "kernel_image_path": self.kernel,
                "initrd_path": initrd,
                "boot_args": format!("{BOOT_ARGS} pyro.port={AGENT_PORT}"),
            }),
        )
        .await?;
        put(
            api_sock,
            "/machine-config",
            json!({"vcpu_count": spec.resources.vcpus, "mem_size_mib": spec.resources.mem_mib, "smt": false}),
        )
        .await?;
        put(
            api_sock,
            "/drives/env",
            json!({"drive_id": "env", "path_on_host": spec.rootfs, "is_root_device": false, "is_read_only": true}),
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
    fn name(&self) -> &'static str {
        NAME
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

    async fn start(&self, spec: &SandboxSpec<'_>) -> Result<Started> {
        vm::make_private_dirs(&[spec.run_dir, spec.state_dir])?;
        let initrd = vm::initramfs(&self.cache, spec.agent)?;
        let rw_disk = spec.state_dir.join("rw.ext4");
        vm::make_scratch_disk(&rw_disk)?;
        let api_sock = spec.run_dir.join(API_SOCKET);
        let vsock = spec.run_dir.join(VSOCK_SOCKET);
        tracing::warn!(
            "firecracker runs without the jailer (not implemented yet): no chroot, uid or cgroup confinement of the VMM"
        );
        // The guest's serial console is Firecracker's stdout.
        let console_path = spec.state_dir.join("console.log");
        let console = std::fs::File::create(&console_path)
            .ctx(|| format!("create {}", console_path.display()))?;
        let log_path = spec.state_dir.join("firecracker.log");
        let log =
            std::fs::File::create(&log_path).ctx(|| format!("create {}", log_path.display()))?;
        let child = tokio::process::Command::new(&self.firecracker)
            .arg("--api-sock")
            .arg(&api_sock)
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
        let runtime = child
            .id()
            .and_then(|pid| vm::record_process(spec.run_dir, "firecracker", pid));
        if !vm::wait_for_path(&api_sock, runtime, Duration::from_secs(10)).await {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(vm_err(
                NAME,
                format!("firecracker did not open its API socket: {}", text.trim()),
            ));
        }
        self.configure(&api_sock, spec, &initrd, &rw_disk, &vsock)
            .await?;
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
                not_applied: vec![
                    "pids: bounded by the VM's memory, not counted (the guest kernel has no cgroups)"
                        .into(),
                    "vmm: Firecracker runs without the jailer (not implemented yet)".into(),
                ],
            },
        })
    }

    async fn destroy(&self, record: &SandboxRecord) -> CleanupReport {
        destroy_vm(record).await
    }
}
