//! What the two VM backends share: the guest kernel, the agent's initramfs, the per-sandbox
//! writable disk, the helper tools, and the bookkeeping that lets a later `pyro gc` find and end
//! every process a VM sandbox started.
//!
//! The guest boots the kernel built by `scripts/build-kernel` (one `vmlinux` for both VMMs)
//! with an initramfs holding only the agent as `/init`; the environment's read-only ext4 image
//! and a sparse writable disk are attached as virtio block devices, and the agent builds the
//! overlay root from them (`pyro-agent`'s `vm` module). The host reaches the agent through a
//! hybrid-vsock Unix socket.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use pyro_api::paths::{var_path, Var};
use pyro_api::procinfo::ProcessId;
pub use pyro_api::procinfo::{signal_and_wait, terminate, wait_gone};

pub use pyro_image::kernel::{find_kernel, kernel_dir, KERNEL_FRAGMENT};

/// The file name of a VM sandbox's writable disk in its state directory.
pub const RW_DISK: &str = "rw.ext4";

/// The guest vsock port the agent listens on (passed as `pyro.port=` on the kernel command line).
pub const AGENT_PORT: u32 = 1024;

/// The host port the agent announces readiness on: a guest-initiated connection, which the VMM
/// delivers to the Unix socket `<vsock socket>_<port>`.
pub const READY_PORT: u32 = AGENT_PORT + 1;

/// Listens where the VMM delivers the agent's readiness announcement, before the VMM starts.
/// Mode 0666: the VMM or vsock backend may run under an unprivileged uid; the directory it
/// lives in is what keeps others out.
pub fn ready_listener(
    vsock_uds: &Path,
) -> Result<std::sync::Arc<std::os::unix::net::UnixListener>> {
    let path = PathBuf::from(format!("{}_{READY_PORT}", vsock_uds.display()));
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path)
        .ctx(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .ctx(|| format!("chmod {}", path.display()))?;
    l.set_nonblocking(true)
        .ctx(|| format!("set {} non-blocking", path.display()))?;
    Ok(std::sync::Arc::new(l))
}

/// Waits until the agent announced itself on `ready` (or `timeout` passes, or the VMM exits).
pub async fn wait_announced(
    ready: &std::os::unix::net::UnixListener,
    vmm: Option<ProcessId>,
    timeout: Duration,
) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        match ready.accept() {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::Agent(format!("readiness socket: {e}"))),
        }
        if vmm.is_some_and(|p| !p.is_alive()) {
            return Err(Error::Agent(
                "the VMM exited before the agent started".into(),
            ));
        }
        if Instant::now() >= until {
            return Err(Error::Agent(format!(
                "the agent did not announce itself within {} ms",
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Size of each sandbox's writable disk. The file is sparse: only what the guest writes takes
/// space on the host.
pub const SCRATCH_DISK_BYTES: u64 = 8 << 30;

/// Files in a VM sandbox's run directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The file listing the host processes a VM sandbox started (`name pid start` lines).
pub const PROCS_FILE: &str = "procs";

/// Finds a helper program: `$<env_var>` when set (must exist), else PATH, else the directories
/// where `scripts/setup --vm` and `cargo install` put things.
pub fn find_tool(name: &str, env_var: Var) -> Option<PathBuf> {
    if let Some(p) = var_path(env_var) {
        return Some(p).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            pyro_api::paths::home_dir().join(".cache/pyro/cargo/bin"),
            pyro_api::paths::home_dir().join(".cargo/bin"),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo`. Under TCG the guest's TSC is the host's,
/// and telling the guest kernel (`tsc_early_khz=`) avoids a calibration against the emulated PIT
/// that hangs the boot under load (research/qemu-tcg-probe.md).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

/// Appends one newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, 0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An uncompressed newc initramfs holding the agent as `/init` and `/dev/console` (which the
/// kernel opens for init's stdio before anything is mounted). Uncompressed, because
/// decompressing costs more than reading under emulation.
pub fn initramfs_bytes(agent: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(agent.len() + 1024);
    let dirs = ["dev", "proc", "sys", ".pyro"];
    let mut ino = 1;
    for d in dirs {
        cpio_entry(&mut out, ino, d, 0o040_755, (0, 0), &[]);
        ino += 1;
    }
    cpio_entry(&mut out, ino, "dev/console", 0o020_600, (5, 1), &[]);
    cpio_entry(&mut out, ino + 1, "init", 0o100_755, (0, 0), agent);
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// The initramfs for `agent`, made once per agent binary under `<cache>/initramfs/` (written to
/// a temporary file and renamed, so it is complete or absent).
pub fn initramfs(cache: &Path, agent: &Path) -> Result<PathBuf> {
    // Keyed by the binary's identity and mtime, so a sandbox start does not read and hash it.
    let meta = std::fs::metadata(agent).ctx(|| format!("read agent {}", agent.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "{}:{}:{}:{}:{mtime}",
        agent.display(),
        meta.dev(),
        meta.ino(),
        meta.len()
    );
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let dir = cache.join("initramfs");
    let target = dir.join(format!("{}.cpio", &digest[..32]));
    if target.is_file() {
        return Ok(target);
    }
    let bytes = std::fs::read(agent).ctx(|| format!("read agent {}", agent.display()))?;
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}", pyro_api::ids::unique_suffix()));
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(&initramfs_bytes(&bytes))
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", tmp.display()))?;
    // 0644 whatever the umask: a jailed Firecracker reads it as its own uid (bind-mounted).
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .ctx(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).ctx(|| format!("install {}", target.display()))?;
    Ok(target)
}

/// Creates a sandbox's empty writable disk: a sparse file with an ext4 filesystem. Its cost does
/// not depend on the environment's size.
pub fn make_scratch_disk(path: &Path) -> Result<()> {
    pyro_image::mkfs_ext4(None, path, SCRATCH_DISK_BYTES, 0)
}

/// The sandbox's writable disk: kept when a stopped sandbox starts again (a workspace's files
/// live there), made fresh otherwise.
pub fn ensure_scratch_disk(path: &Path) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    make_scratch_disk(path)
}

/// Creates a VM sandbox's private directories (0700: they hold its sockets and disk).
pub fn make_private_dirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod {}", d.display()))?;
    }
    Ok(())
}

/// Records a started helper process in the sandbox's run directory, so a later `pyro gc` finds
/// it by pid and start time.
pub fn record_process(run_dir: &Path, name: &str, pid: u32) -> Option<ProcessId> {
    let p = ProcessId::of(pid as i32)?;
    let line = format!("{name} {} {}\n", p.pid, p.start);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(PROCS_FILE))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    Some(p)
}

/// The processes recorded by [`record_process`].
pub fn recorded_processes(run_dir: &Path) -> Vec<(String, ProcessId)> {
    let text = std::fs::read_to_string(run_dir.join(PROCS_FILE)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let pid = w.next()?.parse().ok()?;
            let start = w.next()?.parse().ok()?;
            Some((name, ProcessId { pid, start }))
        })
        .collect()
}

/// Live processes whose command line mentions `dir` (a sandbox's unique run directory). This
/// catches a helper started just before its owner was killed, before it could be recorded.
pub fn processes_mentioning(dir: &Path) -> Vec<ProcessId> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id() as i32;
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            if let Some(p) = ProcessId::of(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// Waits until `path` exists (a helper's socket), the helper is still alive, or `timeout`.
pub async fn wait_for_path(path: &Path, helper: Option<ProcessId>, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= until || helper.is_some_and(|p| !p.is_alive()) {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Ends every process a VM sandbox started and removes its run directory, and its state
/// directory (the writable disk) unless `state_dir` is `None` (a stop that keeps it); what could
/// not be done is returned. Used by both VM backends' `stop` and `destroy`.
pub fn remove_vm_sandbox(run_dir: &Path, state_dir: Option<&Path>, errors: &mut Vec<String>) {
    for (name, p) in recorded_processes(run_dir) {
        if p.is_alive() && !terminate(p, Duration::from_secs(2)) {
            errors.push(format!("{name} (pid {}) did not exit", p.pid));
        }
    }
    for p in processes_mentioning(run_dir) {
        if !terminate(p, Duration::from_secs(2)) {
            errors.push(format!("pid {} did not exit", p.pid));
        }
    }
    // Bind mounts into a jail (kernel, disks, network namespace): detach them before removing
    // the directory, so that nothing is deleted through them.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = run_dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                errors.push(format!("unmount {m}: {e}"));
            }
        }
    }
    for dir in std::iter::once(run_dir).chain(state_dir) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
        }
    }
}

/// What a VM enforces of `resources`: its memory and vCPUs, no cgroup; `more` adds what this
/// VMM could not apply beside the process count.
pub fn vm_limits(resources: &crate::Resources, more: Option<String>) -> crate::LimitsReport {
    let mut not_applied = vec![
        "pids: bounded by the VM's memory, not counted (the guest kernel has no cgroups)".into(),
    ];
    not_applied.extend(more);
    crate::LimitsReport {
        cgroup: "none".into(),
        memory_bytes: Some(resources.mem_mib << 20),
        pids_max: None,
        cpus: Some(f64::from(resources.vcpus)),
        not_applied,
    }
}

/// A backend error.
pub fn vm_err(backend: &'static str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_is_newc_with_init_and_console() {
        let img = initramfs_bytes(b"\x7fELFagent");
        assert!(img.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&img);
        assert!(text.contains("dev/console\0"));
        assert!(text.contains("init\0"));
        assert!(text.contains("\x7fELFagent"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(img.len() % 4, 0);
    }

    #[test]
    fn recorded_processes_round_trip_and_skip_junk() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let me = record_process(dir.path(), "self", std::process::id());
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(PROCS_FILE))
            .and_then(|mut f| f.write_all(b"garbage\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = recorded_processes(dir.path());
        assert_eq!(got.len(), 1);
        assert_eq!(Some(got[0].1), me);
    }

    #[test]
    fn host_tsc_is_read_on_x86() {
        if cfg!(target_arch = "x86_64") {
            assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
        }
    }
}
