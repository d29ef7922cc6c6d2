//! PID 1 duties: the mounts every sandbox needs, and a clean power-off.
//!
//! Under a container runtime most mounts already exist (the runtime made them and the agent has
//! no `CAP_SYS_ADMIN`), so each mount is made only where nothing is mounted yet, and a refused
//! mount is reported rather than fatal. In a VM the agent starts on a bare root and makes them all.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// One mount the sandbox needs.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    /// Filesystem type, e.g. `proc`.
    pub fstype: &'static str,
    /// Where it goes.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: &'static str,
}

/// The mounts PID 1 makes, in order.
pub fn required_mounts() -> Vec<MountSpec> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    vec![
        MountSpec {
            fstype: "proc",
            target: "/proc",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: "",
        },
        MountSpec {
            fstype: "sysfs",
            target: "/sys",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: "",
        },
        MountSpec {
            fstype: "devtmpfs",
            target: "/dev",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755",
        },
        MountSpec {
            fstype: "devpts",
            target: "/dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620",
        },
        MountSpec {
            fstype: "tmpfs",
            target: "/tmp",
            flags: nosuid_nodev,
            data: "mode=1777",
        },
        MountSpec {
            fstype: "tmpfs",
            target: "/run",
            flags: nosuid_nodev,
            data: "mode=0755",
        },
    ]
}

/// Mount points currently mounted, from `/proc/self/mountinfo` (field 5 of each line).
pub fn mounted_targets(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What happened to one required mount.
#[derive(Debug)]
pub enum MountOutcome {
    /// Something was already mounted there.
    AlreadyMounted,
    /// The agent mounted it.
    Mounted,
    /// The mount was refused; the sandbox carries on without it.
    Failed(nix::Error),
}

/// Makes every missing required mount and creates `/workspace`.
pub fn setup_mounts() -> Vec<(MountSpec, MountOutcome)> {
    let mut results = Vec::new();
    for spec in required_mounts() {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| mounted_targets(&m))
            .unwrap_or_default();
        let outcome = if mounted.iter().any(|t| t == spec.target) {
            MountOutcome::AlreadyMounted
        } else {
            let _ = std::fs::create_dir_all(spec.target);
            match mount(
                Some(spec.fstype),
                spec.target,
                Some(spec.fstype),
                spec.flags,
                Some(spec.data),
            ) {
                Ok(()) => MountOutcome::Mounted,
                Err(e) => MountOutcome::Failed(e),
            }
        };
        results.push((spec, outcome));
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    results
}

/// Whether any process other than this one and kernel threads (pid 2, `kthreadd`, and its
/// children) is left. Reads `/proc`; if it cannot, assumes some are.
fn user_processes_left() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let me = std::process::id();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || pid == 2 {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z");
        if ppid != Some(2) && !zombie {
            return true;
        }
    }
    false
}

/// Ends every other process in the sandbox: TERM, a grace period, then KILL.
pub fn kill_everything(grace: std::time::Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // kill(-1) reaches every process we may signal except ourselves.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until {
        // ESRCH means nothing is left to signal. In a VM kernel threads are always there to
        // "signal" (they ignore it), so look at the process table instead.
        if kill(Pid::from_raw(-1), None).is_err() || !user_processes_left() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
}

static IN_VM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this agent as PID 1 of a virtual machine (see [`power_off`]).
pub fn set_vm() {
    IN_VM.store(true, std::sync::atomic::Ordering::Release);
}

/// Powers off as PID 1: stop everything, flush disks, then leave.
///
/// In a VM that is `reboot(RB_AUTOBOOT)`: the guest kernel has no ACPI, so `RB_POWER_OFF` would
/// only halt the CPU and leave the VMM running; a reset makes both VMMs exit (QEMU runs with
/// `-no-reboot`, Firecracker always exits on the i8042 reset). Under a container runtime the call
/// is refused, and exiting PID 1 ends the sandbox just as well.
pub fn power_off() -> ! {
    kill_everything(std::time::Duration::from_millis(500));
    nix::unistd::sync();
    let mode = if IN_VM.load(std::sync::atomic::Ordering::Acquire) {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    let _ = nix::sys::reboot::reboot(mode);
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_targets_are_parsed_and_unescaped() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    23 1 0:22 / /my\\040dir rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounted_targets(info),
            vec!["/proc".to_string(), "/my dir".to_string()]
        );
    }

    #[test]
    fn required_mounts_cover_pid1_duties() {
        let targets: Vec<_> = required_mounts().iter().map(|m| m.target).collect();
        for t in ["/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/run"] {
            assert!(targets.contains(&t), "{t} missing");
        }
    }
}
