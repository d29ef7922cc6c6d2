//! PID 1 in a virtual machine, before the request server starts.
//!
//! The kernel starts the agent as `/init` from a tiny initramfs that holds nothing else, so the
//! environment's image is never written to. The agent then finds its two disks by their
//! read-only flag (the VMMs give no stable order): the environment's shared ext4 image, which the
//! VMM attaches read-only, and the sandbox's own empty writable disk. It joins them in an
//! overlay, moves that over `/` (what `switch_root` does) and carries on as PID 1 there. Its
//! settings come from the kernel command line (`pyro.port=N`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The vsock port the agent listens on unless the command line says otherwise.
pub const DEFAULT_PORT: u32 = 1024;

/// What the kernel command line asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The vsock port to listen on.
    pub port: u32,
    /// The guest's network (`pyro.net=`), when the sandbox has one.
    pub net: Option<crate::net::NetConfig>,
}

/// Reads `pyro.*` settings from a kernel command line; unknown or malformed ones are ignored
/// (the host wrote the line, and the defaults work).
pub fn parse_cmdline(cmdline: &str) -> VmConfig {
    let mut cfg = VmConfig {
        port: DEFAULT_PORT,
        net: None,
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("pyro.port=") {
            if let Ok(p) = v.parse() {
                cfg.port = p;
            }
        } else if let Some(v) = word.strip_prefix("pyro.net=") {
            cfg.net = crate::net::NetConfig::parse(v);
        }
    }
    cfg
}

fn step(what: &str, r: nix::Result<()>) -> Result<(), String> {
    r.map_err(|e| format!("vm init: {what}: {e}"))
}

fn mount_fs(fstype: &str, target: &str, flags: MsFlags, data: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    step(
        &format!("mount {fstype} on {target}"),
        mount(Some(fstype), target, Some(fstype), flags, Some(data)),
    )
}

/// The virtio disks (`/sys/block/vd*`), each with whether it is read-only.
fn virtio_disks() -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let ro = std::fs::read_to_string(e.path().join("ro")).is_ok_and(|s| s.trim() == "1");
        out.push((Path::new("/dev").join(&name), ro));
    }
    out.sort();
    out
}

/// Picks the read-only (environment) and the writable (sandbox) disk.
pub fn pick_disks(disks: &[(PathBuf, bool)]) -> Option<(PathBuf, PathBuf)> {
    let ro = disks.iter().find(|(_, ro)| *ro)?.0.clone();
    let rw = disks.iter().find(|(_, ro)| !*ro)?.0.clone();
    Some((ro, rw))
}

/// Mounts the root filesystem and switches into it. Returns the command line's settings.
pub fn boot() -> Result<VmConfig, String> {
    // First, so that a failure below still ends the VM instead of halting it.
    crate::init::set_vm();
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755")?;
    mount_fs("proc", "/proc", MsFlags::empty(), "")?;
    mount_fs("sysfs", "/sys", MsFlags::empty(), "")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("vm init: read /proc/cmdline: {e}"))?;
    let cfg = parse_cmdline(&cmdline);

    // virtio-blk probes synchronously during boot, but give a slow (emulated) probe a moment.
    let until = Instant::now() + Duration::from_secs(5);
    let (lower, upper) = loop {
        let disks = virtio_disks();
        if let Some(pair) = pick_disks(&disks) {
            break pair;
        }
        if Instant::now() >= until {
            return Err(format!(
                "vm init: need one read-only and one writable virtio disk, found {disks:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lower_s = lower.to_string_lossy();
    let upper_s = upper.to_string_lossy();
    let _ = std::fs::create_dir_all("/.pyro/lower");
    step(
        "mount the environment image",
        mount(
            Some(lower_s.as_ref()),
            "/.pyro/lower",
            Some("ext4"),
            MsFlags::MS_RDONLY,
            Some("noload"),
        ),
    )?;
    let _ = std::fs::create_dir_all("/.pyro/rw");
    step(
        "mount the writable disk",
        mount(
            Some(upper_s.as_ref()),
            "/.pyro/rw",
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        ),
    )?;
    for d in ["/.pyro/rw/upper", "/.pyro/rw/work", "/.pyro/root"] {
        std::fs::create_dir_all(d).map_err(|e| format!("vm init: create {d}: {e}"))?;
    }
    mount_fs_from(
        "overlay",
        "/.pyro/root",
        "lowerdir=/.pyro/lower,upperdir=/.pyro/rw/upper,workdir=/.pyro/rw/work",
    )?;
    // The real root gets its own /proc, /sys and /dev from init::setup_mounts afterwards.
    for m in ["/proc", "/sys", "/dev"] {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
    std::env::set_current_dir("/.pyro/root").map_err(|e| format!("vm init: chdir: {e}"))?;
    step(
        "move the overlay to /",
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    step("chroot", nix::unistd::chroot("."))?;
    std::env::set_current_dir("/").map_err(|e| format!("vm init: chdir /: {e}"))?;
    let _ = nix::unistd::sethostname("pyro");
    if let Err(e) = crate::net::link_up("lo") {
        eprintln!("pyro-agent: vm init: bring up lo: {e} (continuing)");
    }
    if let Some(net) = &cfg.net {
        // virtio-net probes during boot, before init runs; a sandbox that asked for a network
        // and cannot have one must fail loudly, so the error ends the boot.
        crate::net::configure("eth0", net).map_err(|e| format!("vm init: configure eth0: {e}"))?;
    }
    Ok(cfg)
}

fn mount_fs_from(fstype: &str, target: &str, data: &str) -> Result<(), String> {
    step(
        &format!("mount {fstype} on {target}"),
        mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::empty(),
            Some(data),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_port_is_read_and_junk_ignored() {
        assert_eq!(parse_cmdline("console=ttyS0 quiet").port, DEFAULT_PORT);
        assert_eq!(parse_cmdline("quiet pyro.port=5005 x").port, 5005);
        assert_eq!(parse_cmdline("pyro.port=nope").port, DEFAULT_PORT);
        assert!(parse_cmdline("quiet").net.is_none());
        let n = parse_cmdline("pyro.net=10.213.0.6/30,10.213.0.5,1400 quiet")
            .net
            .unwrap();
        assert_eq!(n.mtu, 1400);
    }

    #[test]
    fn disks_are_told_apart_by_the_read_only_flag() {
        let d = vec![
            (PathBuf::from("/dev/vda"), false),
            (PathBuf::from("/dev/vdb"), true),
        ];
        assert_eq!(
            pick_disks(&d),
            Some((PathBuf::from("/dev/vdb"), PathBuf::from("/dev/vda")))
        );
        assert_eq!(pick_disks(&d[..1]), None);
    }
}
