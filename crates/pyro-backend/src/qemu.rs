//! The QEMU backend: `-M microvm` with KVM where `/dev/kvm` is usable (isolation `microvm`) and
//! TCG software emulation otherwise (isolation `vm-emulated`), using the command line proven in
//! research/qemu-tcg-probe.md.
//!
//! vsock goes through the rust-vmm `vhost-device-vsock` backend (a vhost-user device, since most
//! hosts without KVM also lack `/dev/vhost-vsock`), which exposes the guest's vsock as the same
//! hybrid-vsock Unix socket that Firecracker gives: one transport for both VMMs.
//!
//! Under TCG the guest kernel gets `tsc_early_khz=<host TSC>` and `nolapic_timer`, and the
//! machine keeps its PIT, PIC and RTC: without them the boot hangs in TSC calibration, sleeps
//! never return, or the kernel polls an absent CMOS clock for a second. The guest's power-off is
//! a reset (`reboot=t`) that `-no-reboot` turns into QEMU exiting.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::agent_client::AgentClient;
use crate::error::{IoContext, Result};
use crate::vmm::{self, vm_err, AGENT_PORT, VSOCK_SOCKET};
use crate::{Backend, CleanupReport, Endpoint, Isolation, SandboxSpec, Started};
use pyro_api::sandbox::SandboxRecord;

const NAME: &str = "qemu";

/// How long QEMU gets to exit after the agent was asked to power off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(3);

/// The QEMU backend, with KVM or TCG.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    qemu: PathBuf,
    vhost_vsock: PathBuf,
    kernel: PathBuf,
    cache: PathBuf,
    kvm: bool,
}

/// `qemu-system-x86_64`: `$PYRO_QEMU`, else PATH.
pub fn find_qemu() -> Option<PathBuf> {
    vmm::find_tool("qemu-system-x86_64", pyro_api::paths::Var::Qemu)
}

/// `vhost-device-vsock`: `$PYRO_VHOST_VSOCK`, else PATH, `~/.cache/pyro/cargo/bin`, `~/.cargo/bin`.
pub fn find_vhost_vsock() -> Option<PathBuf> {
    vmm::find_tool("vhost-device-vsock", pyro_api::paths::Var::VhostVsock)
}

impl QemuBackend {
    /// A QEMU backend; `kvm` picks `-accel kvm` (isolation `microvm`) or TCG (`vm-emulated`).
    pub fn new(
        qemu: PathBuf,
        vhost_vsock: PathBuf,
        kernel: PathBuf,
        cache: PathBuf,
        kvm: bool,
    ) -> QemuBackend {
        QemuBackend {
            qemu,
            vhost_vsock,
            kernel,
            cache,
            kvm,
        }
    }

    /// The kernel command line.
    fn cmdline(&self, net: Option<&pyro_net::NetPlan>) -> String {
        // random.trust_cpu=on: the tinyconfig-based guest kernel does not credit RDRAND
        // otherwise, and a guest process that needs random numbers early (Firecracker inside a
        // test host, for one) blocks for seconds waiting for entropy.
        let mut c = format!(
            "console=ttyS0 reboot=t panic=-1 quiet random.trust_cpu=on pyro.port={AGENT_PORT}"
        );
        if let Some(plan) = net {
            c.push(' ');
            c.push_str(&plan.kernel_arg());
        }
        if !self.kvm {
            if let Some(khz) = vmm::host_tsc_khz() {
                c.push_str(&format!(" tsc_early_khz={khz}"));
            }
            // The guest's TSC is the host's (constant) TSC; without this the clocksource
            // watchdog may judge it unstable against the emulated timers when the host is
            // loaded, and the emulated machine has no other good clocksource to fall back to.
            c.push_str(" nolapic_timer tsc=reliable");
        }
        c
    }

    /// QEMU's arguments for one sandbox.
    #[allow(clippy::too_many_arguments)]
    fn args(
        &self,
        spec: &SandboxSpec<'_>,
        initrd: &Path,
        rw_disk: &Path,
        vhost_sock: &Path,
        console: &Path,
    ) -> Result<Vec<String>> {
        for p in [
            spec.rootfs,
            rw_disk,
            vhost_sock,
            console,
            initrd,
            &self.kernel,
        ] {
            // QEMU splits option values on ','; no path we pass may contain one.
            if p.to_string_lossy().contains(',') {
                return Err(vm_err(NAME, format!("path {} contains ','", p.display())));
            }
        }
        let mem = spec.resources.mem_mib;
        let (accel, cpu) = if self.kvm {
            ("kvm", "host")
        } else {
            ("tcg", "max")
        };
        let d = |p: &Path| p.display().to_string();
        let as_root = nix::unistd::geteuid().is_root();
        let mut net = Vec::new();
        if let Some(plan) = spec.network {
            // The tap exists already (made by pyro, owned by root); QEMU only opens it by name.
            net = vec![
                "-netdev".into(),
                format!(
                    "tap,id=net0,ifname={},script=no,downscript=no",
                    plan.host_interface
                ),
                "-device".into(),
                format!(
                    "virtio-net-device,netdev=net0,mac={}",
                    pyro_net::guest_mac(spec.id)
                ),
            ];
        }
        let mut args: Vec<String> = vec![
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            format!("{mem}M"),
            "-smp".into(),
            spec.resources.vcpus.to_string(),
            "-M".into(),
            "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem".into(),
            // vhost-user needs guest memory the backend process can map.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            // QEMU's seccomp filter: no exec, no obsolete syscalls, no scheduler/resource games.
            // Privilege changes stay allowed only as root, because `-runas` (below) is itself
            // one: QEMU 7.2 installs the filter first and drops root afterwards.
            "-sandbox".into(),
            if as_root {
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny".into()
            } else {
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into()
            },
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", d(console)),
            "-no-reboot".into(),
            "-chardev".into(),
            format!("socket,id=vs,path={}", d(vhost_sock)),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vs".into(),
            "-drive".into(),
            format!(
                "id=env,file={},format=raw,if=none,readonly=on",
                d(spec.rootfs)
            ),
            "-device".into(),
            "virtio-blk-device,drive=env".into(),
            "-drive".into(),
            format!("id=rw,file={},format=raw,if=none,cache=unsafe", d(rw_disk)),
            "-device".into(),
            "virtio-blk-device,drive=rw".into(),
            "-kernel".into(),
            d(&self.kernel),
            "-initrd".into(),
            d(initrd),
            "-append".into(),
            self.cmdline(spec.network),
        ];
        args.extend(net);
        if as_root {
            // Everything (disks, kernel, sockets, tap, console file) is opened during set-up;
            // the guest then runs under the sandbox's own uid with no capabilities, so a guest
            // that escapes into QEMU is an unprivileged process that cannot signal other
            // sandboxes' VMMs.
            let uid = vmm_uid(spec.id);
            args.extend(["-runas".into(), format!("{uid}:{uid}")]);
        }
        Ok(args)
    }
}

/// Where a QEMU sandbox's vhost-user and hybrid-vsock sockets live.
fn socket_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("vsock")
}

/// The hybrid-vsock socket the host reaches a QEMU sandbox's agent through.
fn vsock_uds(run_dir: &Path) -> PathBuf {
    socket_dir(run_dir).join(VSOCK_SOCKET)
}

/// The uid (and gid) a sandbox's QEMU and vsock backend run under when pyro is root: one per
/// sandbox, from its id, in a range of its own (above the container level's 100000 + 65536 and
/// Firecracker's jail uid), so no two sandboxes' VMMs share an owner.
pub fn vmm_uid(id: &str) -> u32 {
    let n = id
        .get(..6)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    VMM_UID_BASE + n
}

/// The first uid of the range [`vmm_uid`] picks from (2^24 uids).
pub const VMM_UID_BASE: u32 = 1 << 30;

#[async_trait::async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Qemu
    }

    fn isolation(&self) -> Isolation {
        if self.kvm {
            Isolation::Microvm
        } else {
            Isolation::VmEmulated
        }
    }

    fn uid_shift(&self) -> u32 {
        0
    }

    fn wants_ext4_image(&self) -> bool {
        true
    }

    fn network_link(&self) -> Option<pyro_net::LinkKind> {
        Some(pyro_net::LinkKind::Tap)
    }

    async fn start(&self, spec: &SandboxSpec<'_>) -> Result<Started> {
        vmm::make_private_dirs(&[spec.run_dir, spec.state_dir])?;
        let initrd = vmm::initramfs(&self.cache, spec.agent)?;
        let rw_disk = spec.state_dir.join(vmm::RW_DISK);
        vmm::ensure_scratch_disk(&rw_disk)?;
        // vhost-device-vsock maps all guest memory and parses the guest's virtqueues, so as
        // root it too runs under the sandbox's own uid; its sockets live in a directory of
        // that uid, inside a run directory others may traverse but not list or write.
        let as_root = nix::unistd::geteuid().is_root();
        let sock_dir = socket_dir(spec.run_dir);
        vmm::make_private_dirs(&[&sock_dir])?;
        let uid = vmm_uid(spec.id);
        if as_root {
            std::os::unix::fs::chown(&sock_dir, Some(uid), Some(uid))
                .ctx(|| format!("chown {}", sock_dir.display()))?;
            std::fs::set_permissions(spec.run_dir, std::fs::Permissions::from_mode(0o711))
                .ctx(|| format!("chmod {}", spec.run_dir.display()))?;
        }
        let vhost_sock = sock_dir.join("vhost.sock");
        let vsock = vsock_uds(spec.run_dir);
        let console = spec.state_dir.join("console.log");
        let log = |name: &str| -> Result<std::fs::File> {
            let p = spec.state_dir.join(name);
            std::fs::File::create(&p).ctx(|| format!("create {}", p.display()))
        };

        let vlog = log("vhost-device-vsock.log")?;
        let mut helper = if as_root {
            // The sandbox's uid must reach the binary and its socket directory: a copy in the
            // run root (`cargo install` put the original under a 0700 home), and searchable
            // directories down to the sandbox's run directory.
            let sandboxes = spec.run_dir.parent().unwrap_or(spec.run_dir);
            let run_root = sandboxes.parent().unwrap_or(sandboxes);
            for d in [run_root, sandboxes] {
                crate::make_traversable_dir(d)?;
            }
            let bin = crate::stage_executable(
                &self.vhost_vsock,
                &run_root.join("bin"),
                "vhost-device-vsock",
            )?;
            let mut c = tokio::process::Command::new(bin);
            // std clears supplementary groups when a root parent changes the uid.
            c.uid(uid).gid(uid);
            c
        } else {
            tokio::process::Command::new(&self.vhost_vsock)
        };
        let helper = helper
            .arg("--vm")
            .arg(format!(
                "guest-cid=3,socket={},uds-path={}",
                vhost_sock.display(),
                vsock.display()
            ))
            .stdin(Stdio::null())
            .stdout(vlog.try_clone().ctx(|| "clone log handle".into())?)
            .stderr(vlog)
            // Its own process group: a Ctrl-C meant for pyro must not kill it before pyro's
            // cleanup runs (pyro ends it).
            .process_group(0)
            .spawn()
            .map_err(|e| {
                vm_err(
                    NAME,
                    format!("cannot start {}: {e}", self.vhost_vsock.display()),
                )
            })?;
        let helper_id = helper
            .id()
            .and_then(|pid| vmm::record_process(spec.run_dir, "vhost-device-vsock", pid));
        if !vmm::wait_for_path(&vhost_sock, helper_id, Duration::from_secs(10)).await {
            let text = std::fs::read_to_string(spec.state_dir.join("vhost-device-vsock.log"))
                .unwrap_or_default();
            return Err(vm_err(
                NAME,
                format!(
                    "vhost-device-vsock did not create its socket: {}",
                    text.trim()
                ),
            ));
        }

        let args = self.args(spec, &initrd, &rw_disk, &vhost_sock, &console)?;
        let ready = vmm::ready_listener(&vsock)?;
        if let Some(plan) = spec.network {
            pyro_net::link::create_tap(plan).await?;
        }
        let qlog = log("qemu.log")?;
        let child = tokio::process::Command::new(&self.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qlog.try_clone().ctx(|| "clone log handle".into())?)
            .stderr(qlog)
            .process_group(0)
            .spawn()
            .map_err(|e| vm_err(NAME, format!("cannot start {}: {e}", self.qemu.display())))?;
        let runtime = child
            .id()
            .and_then(|pid| vmm::record_process(spec.run_dir, "qemu", pid));
        if runtime.is_none() {
            let text = std::fs::read_to_string(spec.state_dir.join("qemu.log")).unwrap_or_default();
            return Err(vm_err(
                NAME,
                format!("qemu exited at once: {}", text.trim()),
            ));
        }
        Ok(Started {
            runtime,
            endpoint: Endpoint::HybridVsock {
                uds: vsock,
                port: AGENT_PORT,
            },
            limits: vmm::vm_limits(&spec.resources, None),
            ready: Some(ready),
        })
    }

    fn endpoint(&self, record: &SandboxRecord) -> Endpoint {
        Endpoint::HybridVsock {
            uds: vsock_uds(&record.run_dir),
            port: AGENT_PORT,
        }
    }

    async fn stop(&self, record: &SandboxRecord) -> CleanupReport {
        destroy_vm(record, &vsock_uds(&record.run_dir), true).await
    }

    async fn destroy(&self, record: &SandboxRecord) -> CleanupReport {
        destroy_vm(record, &vsock_uds(&record.run_dir), false).await
    }
}

/// Stops a VM sandbox gracefully where it can (the agent powers the guest off, which makes the
/// VMM exit), then ends whatever is left and removes its files (all of them, or all but its
/// state directory with `keep_state`).
pub(crate) async fn destroy_vm(
    record: &SandboxRecord,
    vsock: &Path,
    keep_state: bool,
) -> CleanupReport {
    let mut errors = Vec::new();
    let had_network = pyro_net::marker(&record.state_dir).exists();
    if let Some(vmm) = record.runtime.filter(|p| p.is_alive()) {
        let client = AgentClient::at(Endpoint::HybridVsock {
            uds: vsock.to_path_buf(),
            port: AGENT_PORT,
        });
        let asked = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
        if matches!(asked, Ok(Ok(()))) {
            let _ = tokio::task::spawn_blocking(move || vmm::wait_gone(vmm, POWER_OFF_GRACE)).await;
        }
    }
    let (run_dir, state_dir) = (record.run_dir.clone(), record.state_dir.clone());
    match tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        vmm::remove_vm_sandbox(
            &run_dir,
            (!keep_state).then_some(state_dir.as_path()),
            &mut errors,
        );
        errors
    })
    .await
    {
        Ok(e) => errors.extend(e),
        Err(e) => errors.push(format!("cleanup task failed: {e}")),
    }
    // The tap goes once the VMM holding it is gone.
    if had_network {
        let net_errors = pyro_net::link::remove_all(&record.id).await;
        if net_errors.is_empty() && keep_state {
            let _ = std::fs::remove_file(pyro_net::marker(&record.state_dir));
        }
        errors.extend(net_errors);
    }
    CleanupReport {
        deleted: errors.is_empty(),
        reason: String::new(),
        errors,
    }
}
