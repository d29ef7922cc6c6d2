//! `pyro doctor`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli::DoctorArgs;
use crate::output::print_json;

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn tool(name: &str, t: &pyro::doctor::Tool) {
    match (&t.path, &t.version) {
        (Some(p), Some(v)) => println!("{name}: {} ({v})", p.display()),
        (Some(p), None) => println!("{name}: {}", p.display()),
        _ => println!("{name}: not found"),
    }
}

pub async fn doctor(pyro: &Pyro, a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let r = if a.boot {
        pyro.doctor_with_boot().await
    } else {
        pyro.doctor()
    };
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "Platform: {} (kernel {}), root: {}",
            r.platform,
            r.kernel,
            yn(r.root)
        );
        println!("Isolation levels:");
        for l in &r.isolation_levels {
            match &l.reason {
                None => println!(
                    "  {:<12} usable (backend {})",
                    l.level.to_string(),
                    l.backend.unwrap_or("-")
                ),
                Some(why) => println!("  {:<12} unavailable: {why}", l.level.to_string()),
            }
        }
        let d = &r.default_isolation;
        match (d.level, &d.error) {
            (Some(level), _) => println!(
                "Default level: {level} (from {}; {})",
                match d.source {
                    Some(pyro::user_config::Source::Environment) => "PYRO_ISOLATION".to_string(),
                    Some(pyro::user_config::Source::ConfigFile) =>
                        d.config_file.display().to_string(),
                    _ => "the built-in default".to_string(),
                },
                if d.usable {
                    "usable here"
                } else {
                    "NOT usable here"
                }
            ),
            (None, Some(e)) => println!("Default level: unreadable: {e}"),
            (None, None) => {}
        }
        if let (Some(best), Some(cmd)) = (d.strongest_usable, &d.set_default) {
            println!("  this host gives {best}; make it the default once with: {cmd}");
        }
        let boot = match r.kvm.test_boot {
            Some(b) => yn(b).to_string(),
            None => format!(
                "not attempted ({})",
                r.kvm.boot_note.clone().unwrap_or_default()
            ),
        };
        println!(
            "KVM: exists={} readable={} writable={} hardware virtualization (vmx/svm)={} test_boot={boot}",
            yn(r.kvm.exists),
            yn(r.kvm.readable),
            yn(r.kvm.writable),
            yn(r.kvm.hardware_virtualization)
        );
        tool("firecracker", &r.firecracker);
        tool("jailer", &r.jailer);
        tool("qemu", &r.qemu);
        tool("vhost-device-vsock", &r.vm.vhost_device_vsock);
        match &r.vm.kernel {
            Some(k) => println!("guest kernel: {}", k.display()),
            None => println!("guest kernel: not built (scripts/build-kernel)"),
        }
        for b in &r.vm.test_boots {
            match (b.ok, b.boot_ms, &b.error) {
                (true, Some(ms), _) => {
                    println!("test boot {}: ok, agent answered in {ms} ms", b.level)
                }
                (_, _, Some(e)) => println!("test boot {}: FAILED: {e}", b.level),
                _ => println!("test boot {}: failed", b.level),
            }
        }
        tool("runc", &r.runc);
        tool("mmdebstrap", &r.mmdebstrap);
        tool("mkfs.ext4", &r.mkfs_ext4);
        println!(
            "cgroup: {}  user namespaces: {}  overlayfs: {}",
            r.cgroup,
            yn(r.user_namespaces),
            yn(r.overlayfs)
        );
        match &r.agent.path {
            Some(p) => println!(
                "agent: {} ({}, static: {})",
                p.display(),
                r.agent.source.unwrap_or("found"),
                yn(r.agent.static_binary)
            ),
            None => println!("agent: not found"),
        }
        for d in &r.dirs {
            println!("dir: {} (writable: {})", d.path.display(), yn(d.writable));
        }
        let n = &r.networking;
        println!(
            "Networking: tun={} ip_forward={} nft={} ip={} netns={} pool={} usable={}",
            yn(n.tun),
            yn(n.ip_forward),
            yn(n.nft),
            yn(n.ip),
            yn(n.netns),
            n.pool,
            yn(n.usable)
        );
        if let Some(m) = &n.missing {
            println!("  sandboxes get no network (--network fails): {m}");
        }
        if !r.issues.is_empty() {
            println!("Issues:");
            for i in &r.issues {
                println!("- {i}");
            }
        }
        println!(
            "Result: {}",
            if r.ok {
                "PASS (at least one isolation level is usable)"
            } else {
                "FAIL (no isolation level is usable)"
            }
        );
    }
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
