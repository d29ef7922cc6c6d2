//! `pyro doctor`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli::OutputArgs;
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

pub fn doctor(pyro: &Pyro, o: OutputArgs) -> anyhow::Result<ExitCode> {
    let r = pyro.doctor();
    if o.json {
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
        let boot = match r.kvm.test_boot {
            Some(b) => yn(b).to_string(),
            None => format!(
                "not attempted ({})",
                r.kvm.boot_note.clone().unwrap_or_default()
            ),
        };
        println!(
            "KVM: exists={} readable={} writable={} test_boot={boot}",
            yn(r.kvm.exists),
            yn(r.kvm.readable),
            yn(r.kvm.writable)
        );
        tool("firecracker", &r.firecracker);
        tool("jailer", &r.jailer);
        tool("qemu", &r.qemu);
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
                "agent: {} (static: {})",
                p.display(),
                yn(r.agent.static_binary)
            ),
            None => println!("agent: not found"),
        }
        for d in &r.dirs {
            println!("dir: {} (writable: {})", d.path.display(), yn(d.writable));
        }
        let n = &r.networking;
        println!(
            "Networking: tun={} ip_forward={} nft={} netns={}",
            yn(n.tun),
            yn(n.ip_forward),
            yn(n.nft),
            yn(n.netns)
        );
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
