//! The Firecracker backend against the real pinned Firecracker: its API socket is driven for
//! real (boot source, machine, drives, vsock, InstanceStart), the VM runs, and destroy leaves no
//! process or file behind. Whether the guest then reaches the agent depends on the host's KVM
//! (a paravirtual KVM without vmx/svm cannot run the guest's user space), so the agent is only
//! required to answer where the CPU has hardware virtualization.
//!
//! Needs /dev/kvm (without it the test skips, whatever PYRO_TEST_VM says), the pinned Firecracker
//! (`scripts/setup --vm`), the guest kernel and the static agent; without those the test says why
//! it skipped, and fails instead under PYRO_TEST_VM=1.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use pyro::agent_client::AgentClient;
use pyro::backend::firecracker::{
    api, find_firecracker, find_jailer, FirecrackerBackend, JAIL_UID,
};
use pyro::backend::vmm::{find_kernel, kvm_usable, processes_mentioning};
use pyro::backend::{Backend, Resources, SandboxSpec};
use pyro::store::{SandboxKind, SandboxRecord};

/// `$PYRO_AGENT`, else the agent built into the library, installed into the test cache.
fn agent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYRO_AGENT").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::temp_dir().join("pyro-test-agent");
    pyro::embedded_agent::install(&cache)?.ok()
}

fn prerequisites() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    if !kvm_usable() {
        return Err("/dev/kvm is missing or not usable".into());
    }
    let fc = find_firecracker().ok_or("firecracker is not installed (scripts/setup --vm)")?;
    let kernel = find_kernel().ok_or("the guest kernel is not built (scripts/build-kernel)")?;
    let agent = agent().ok_or("the static agent is not built (scripts/build-agent)")?;
    Ok((fc, kernel, agent))
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network plan on a free subnet of the default pool, as the facade would make one.
fn test_plan(id: &str) -> pyro::network::NetPlan {
    use pyro::network::{addr, host_ifname, LinkKind, NetPlan, NetworkPolicy};
    let pool = addr::pool().unwrap();
    let slot = addr::free_slot(pool, &Default::default(), &addr::host_routes(&[])).unwrap();
    let subnet = addr::slot_subnet(pool, slot).unwrap();
    let (gateway, guest_ip) = addr::ends(subnet);
    NetPlan {
        id: id.into(),
        policy: NetworkPolicy::Egress,
        allow: vec![],
        link: LinkKind::Bridged,
        host_interface: host_ifname(id, LinkKind::Bridged),
        subnet,
        gateway,
        guest_ip,
        mtu: addr::uplink_mtu(),
        resolvers: addr::resolvers(),
        allowed: vec![],
        pool,
        published_ports: vec![],
    }
}

fn hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_is_driven_through_its_api_and_destroyed_without_traces() {
    if !kvm_usable() {
        // A host property, not something CI can install: a skip even under PYRO_TEST_VM=1.
        eprintln!("SKIPPED firecracker test: /dev/kvm is missing or not usable on this host");
        return;
    }
    let (fc, kernel, agent) = match prerequisites() {
        Ok(p) => p,
        Err(why) if std::env::var("PYRO_TEST_VM").as_deref() == Ok("1") => {
            panic!("VM tests are required (PYRO_TEST_VM=1) but {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED firecracker test: {why} (set PYRO_TEST_VM=1 to make this a failure)"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let tree = dir.path().join("tree");
    for d in ["proc", "sys", "dev", "tmp", "run", "workspace"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let image = dir.path().join("root.ext4");
    pyro::env::mkfs_ext4(Some(&tree), &image, 16 << 20, 16).unwrap();
    // 12 characters, as pyro's ids: the host interface `pyv<id>` must fit in 15 bytes.
    let id = "fc0000000001";
    let run_dir = dir.path().join("run/sandboxes").join(id);
    let state_dir = dir.path().join("home/sandboxes").join(id);
    let jailer = find_jailer(&fc);
    let backend = FirecrackerBackend::new(fc, jailer, kernel, cache);
    let root = nix_is_root();
    // As root (jailed), the VM also gets a network: a veth from the host into the jail's own
    // namespace, bridged there to the VM's tap. The host lock keeps the subnet unshared.
    let lock = if root {
        Some(pyro::network::host_lock().await.unwrap())
    } else {
        None
    };
    let plan = root.then(|| test_plan(id));
    if let Some(plan) = &plan {
        // As the facade does: recorded on disk before any link exists, so destroy removes them.
        pyro::network::write_marker(&state_dir, plan).unwrap();
    }
    let spec = SandboxSpec {
        id,
        rootfs: &image,
        state_dir: &state_dir,
        run_dir: &run_dir,
        agent: &agent,
        resources: Resources {
            vcpus: 1,
            mem_mib: 128,
            pids: 64,
        },
        network: plan.as_ref(),
    };
    let started = backend.start(&spec).await;
    drop(lock);
    let mut record = SandboxRecord::creating(
        id.into(),
        SandboxKind::Run,
        "microvm",
        pyro::backend::BackendKind::Firecracker,
        "test",
        &format!("sha256:{}", "0".repeat(64)),
        state_dir.clone(),
        run_dir.clone(),
        None,
    );
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            backend.destroy(&record).await;
            panic!("start: {e}");
        }
    };
    record.runtime = started.runtime;
    assert!(started.runtime.is_some_and(|p| p.is_alive()));

    // As root the VMM is jailed: chroot in the run directory, its own uid, its own namespaces.
    let api_sock = if backend.jailed() {
        let chroot = run_dir.join("jail/firecracker").join(id).join("root");
        let pid = started.runtime.unwrap().pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        assert!(uid_line.contains(&JAIL_UID.to_string()), "{uid_line}");
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_ne!(
            net,
            std::fs::read_link("/proc/self/ns/net").unwrap(),
            "own netns"
        );
        let pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(
            pidns,
            std::fs::read_link("/proc/self/ns/pid").unwrap(),
            "own pid ns"
        );
        chroot.join("api.sock")
    } else {
        assert!(!root, "as root with a jailer the VMM must be jailed");
        run_dir.join("firecracker.sock")
    };
    // Every PUT was accepted and InstanceStart ran: the API reports a running instance.
    let (status, body) = api(&api_sock, "GET", "/", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["id"], id, "{info}");
    let (status, cfg) = api(&api_sock, "GET", "/vm/config", None).await.unwrap();
    assert_eq!(status, 200, "{cfg}");
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let drives = cfg["drives"].as_array().unwrap();
    assert!(
        drives
            .iter()
            .any(|d| d["drive_id"] == "env" && d["is_read_only"] == true),
        "{cfg}"
    );
    assert!(
        drives
            .iter()
            .any(|d| d["drive_id"] == "rw" && d["is_read_only"] == false),
        "{cfg}"
    );
    assert_eq!(cfg["vsock"]["guest_cid"], 3, "{cfg}");
    if let Some(plan) = &plan {
        let nic = &cfg["network-interfaces"][0];
        assert_eq!(nic["host_dev_name"], "tap0", "{cfg}");
        assert_eq!(nic["guest_mac"], pyro::network::guest_mac(id), "{cfg}");
        let args = cfg["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains(&plan.kernel_arg()), "{args}");
        let host_end = format!("/sys/class/net/{}", plan.host_interface);
        assert!(
            std::path::Path::new(&host_end).exists(),
            "no host end {host_end}"
        );
        let addrs = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &plan.host_interface])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&addrs.stdout).contains(&format!("{}/30", plan.gateway)),
            "{}",
            String::from_utf8_lossy(&addrs.stdout)
        );
    }

    if hardware_virtualization() {
        // A real KVM host: the guest must boot to the agent.
        let client = AgentClient::at(started.endpoint.clone());
        let info = client.wait_ready(Duration::from_secs(30)).await.unwrap();
        assert!(info.pid1);
    } else {
        eprintln!(
            "NOTE: no vmx/svm on this CPU (paravirtual KVM): the guest is started but cannot reach the agent here"
        );
    }

    let report = backend.destroy(&record).await;
    assert!(report.deleted, "{:?}", report.errors);
    if let Some(plan) = &plan {
        let host_end = format!("/sys/class/net/{}", plan.host_interface);
        assert!(!std::path::Path::new(&host_end).exists(), "{host_end} left");
    }
    assert!(!started.runtime.unwrap().is_alive());
    assert_eq!(processes_mentioning(&run_dir), Vec::new());
    assert!(!run_dir.exists() && !state_dir.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(run_dir.to_str().unwrap()),
        "bind mounts left"
    );
    for ctrl in ["memory", ""] {
        let cg = std::path::PathBuf::from("/sys/fs/cgroup")
            .join(ctrl)
            .join("firecracker")
            .join(id);
        assert!(!cg.exists(), "{} left", cg.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(run_dir.to_str().unwrap()),
        "bind mounts left"
    );
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/firecracker/{id}")).exists());
}
