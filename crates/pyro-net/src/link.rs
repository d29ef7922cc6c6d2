//! Making and removing a sandbox's links and rules on the host (iproute2 and nftables).

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::addr::find_program;
use super::{host_ifname, marker, rules, LinkKind, NetPlan};
use crate::error::{Error, Result};

fn net_err(message: impl Into<String>) -> Error {
    Error::Network(message.into())
}

/// Runs a program with `input` on stdin; fails with its stderr.
async fn run(program: &str, args: &[&str], input: &str) -> Result<()> {
    let path = find_program(program)
        .ok_or_else(|| Error::NetworkUnavailable(format!("`{program}` is not installed")))?;
    let mut child = tokio::process::Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| net_err(format!("cannot run {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| net_err(format!("{program}: write input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| net_err(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(net_err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            err.trim()
        )))
    }
}

/// Runs `ip -batch -` with these commands, in the network namespace of `netns_pid` if given.
async fn ip_batch(netns_pid: Option<i32>, commands: &str) -> Result<()> {
    match netns_pid {
        None => run("ip", &["-batch", "-"], commands).await,
        Some(pid) => {
            let ns = format!("--net=/proc/{pid}/ns/net");
            let ip = find_program("ip")
                .ok_or_else(|| Error::NetworkUnavailable("`ip` is not installed".into()))?;
            let ip = ip.to_string_lossy().into_owned();
            run("nsenter", &[&ns, "--", &ip, "-batch", "-"], commands).await
        }
    }
}

fn set_if_sysctl(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    std::fs::write(&path, value).map_err(|e| net_err(format!("write {path}: {e}")))
}

/// Settings of the host end: no IPv6 at all (no link-local path to the host), and loopback
/// sources allowed out (published ports reached from the host's 127.0.0.1 are NATed onto it).
fn tune_host_end(ifname: &str) -> Result<()> {
    set_if_sysctl("ipv6", ifname, "disable_ipv6", "1")?;
    set_if_sysctl("ipv4", ifname, "route_localnet", "1")
}

/// Creates the veth pair of a container sandbox: the host end with the gateway address, the
/// other end as `eth0` in the namespace of `pid` with the guest address and default route. The
/// container has no CAP_NET_ADMIN, so its root cannot change any of it.
pub async fn create_veth(plan: &NetPlan, pid: i32) -> Result<()> {
    let i = &plan.host_interface;
    let m = plan.mtu;
    ip_batch(
        None,
        &format!(
            "link add {i} mtu {m} type veth peer name eth0 mtu {m} netns {pid}\naddr add {}/{} dev {i}\n",
            plan.gateway,
            plan.subnet.prefix_len()
        ),
    )
    .await?;
    tune_host_end(i)?;
    ip_batch(None, &format!("link set {i} up\n")).await?;
    ip_batch(
        Some(pid),
        &format!(
            "addr add {}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n",
            plan.guest_ip,
            plan.subnet.prefix_len(),
            plan.gateway
        ),
    )
    .await
}

/// Creates the tap of a VM sandbox (the VMM opens it by name; the guest's agent configures its
/// own end from the kernel command line).
pub async fn create_tap(plan: &NetPlan) -> Result<()> {
    let i = &plan.host_interface;
    ip_batch(
        None,
        &format!(
            "tuntap add dev {i} mode tap\nlink set {i} mtu {}\naddr add {}/{} dev {i}\n",
            plan.mtu,
            plan.gateway,
            plan.subnet.prefix_len()
        ),
    )
    .await?;
    tune_host_end(i)?;
    ip_batch(None, &format!("link set {i} up\n")).await
}

/// The VM's tap inside a jailed VMM's network namespace.
pub const JAIL_TAP: &str = "tap0";

/// Connects a VM whose VMM lives in its own network namespace (pinned at `netns`): inside it, a
/// bridge joins the VM's tap (owned by `tap_owner`, the VMM's uid, so it can open it) to one end
/// of a veth whose other end is the sandbox's host interface. The namespace is a plain layer-2
/// passage: addresses, routes and rules are all on the host end, as for the other link kinds,
/// and the veth dies with the namespace.
pub async fn create_bridged(plan: &NetPlan, netns: &Path, tap_owner: u32) -> Result<()> {
    let i = &plan.host_interface;
    let m = plan.mtu;
    let ns = format!("--net={}", netns.display());
    let ip = find_program("ip")
        .ok_or_else(|| Error::NetworkUnavailable("`ip` is not installed".into()))?;
    let ip = ip.to_string_lossy().into_owned();
    // `netns 1`: the namespace of the host's init, which nsenter (entering the network namespace
    // only) still sees as pid 1.
    run(
        "nsenter",
        &[&ns, "--", &ip, "-batch", "-"],
        &format!(
            "link add veth0 mtu {m} type veth peer name {i} mtu {m} netns 1
             link add br0 mtu {m} type bridge
             tuntap add dev {JAIL_TAP} mode tap user {tap_owner} group {tap_owner}
             link set {JAIL_TAP} mtu {m}
             link set veth0 master br0
link set {JAIL_TAP} master br0
             link set veth0 up
link set {JAIL_TAP} up
link set br0 up
link set lo up
"
        ),
    )
    .await?;
    ip_batch(
        None,
        &format!(
            "addr add {}/{} dev {i}
",
            plan.gateway,
            plan.subnet.prefix_len()
        ),
    )
    .await?;
    tune_host_end(i)?;
    ip_batch(
        None,
        &format!(
            "link set {i} up
"
        ),
    )
    .await
}

/// Installs (or replaces) the sandbox's nftables table.
pub async fn apply_rules(plan: &NetPlan) -> Result<()> {
    run("nft", &["-f", "-"], &rules::ruleset(plan)).await
}

/// Whether a link exists on the host.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Removes one link by name; a missing link is not an error.
async fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match ip_batch(None, &format!("link del {name}\n")).await {
        Err(_) if !link_exists(name) => Ok(()),
        other => other,
    }
}

/// Removes one nftables table; a missing table is not an error.
async fn delete_table(table: &str) -> Result<()> {
    // Creating it first makes the delete succeed whether or not it existed.
    run(
        "nft",
        &["-f", "-"],
        &format!("table inet {table} {{}}\ndelete table inet {table}\n"),
    )
    .await
}

/// Removes everything a sandbox's network made on the host (both link kinds, its table) if its
/// marker says it had one; then the marker. Errors are returned for the cleanup report.
pub async fn teardown(id: &str, state_dir: &Path) -> Vec<String> {
    let m = marker(state_dir);
    if !m.exists() {
        return Vec::new();
    }
    let errors = remove_all(id).await;
    if errors.is_empty() {
        let _ = std::fs::remove_file(&m);
    }
    errors
}

/// Removes both possible links and the table of sandbox `id`.
pub async fn remove_all(id: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = delete_table(&rules::table_name(id)).await {
        errors.push(e.to_string());
    }
    for kind in [LinkKind::Veth, LinkKind::Tap] {
        if let Err(e) = delete_link(&host_ifname(id, kind)).await {
            errors.push(e.to_string());
        }
    }
    errors
}
