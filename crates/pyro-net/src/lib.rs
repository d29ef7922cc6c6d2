//! Sandbox networking: no network by default, NAT egress on request, egress allow-lists, and
//! published ports.
//!
//! Every sandbox with a network gets a lease: a `/30` from a pool (`$PYRO_NET_POOL`, default
//! [`addr::DEFAULT_POOL`]), recorded in the state database before anything exists, so two
//! sandboxes never share a subnet and a later `pyro gc` knows what a killed pyro left. The host
//! end is a veth (container level; its peer becomes `eth0` in the sandbox's network namespace) or
//! a tap (VMs; the agent configures `eth0` from the kernel command line). One nftables table per
//! sandbox (`inet pyro_<id>`) holds all of its rules: guests never reach the host's own
//! addresses, other sandboxes or link-local metadata addresses under any policy; allow-lists
//! drop everything else; refused connections are logged with a per-sandbox prefix and read back
//! from the kernel log ([`refused`]).
//!
//! Links and addresses are made with iproute2 and rules with `nft -f` (one atomic transaction per
//! table): both are on every host that can route, and their text forms are what an operator reads
//! when debugging, which a netlink library would hide.

pub mod addr;
pub mod link;
pub mod refused;
pub mod rules;

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub(crate) use pyro_api::error;

/// What a sandbox may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// Loopback only (the default).
    #[default]
    #[serde(rename = "off")]
    Off,
    /// Outbound connections through NAT (all destinations, or the allow-list when one is given).
    #[serde(rename = "egress")]
    Egress,
    /// Egress, and services may publish ports on the host.
    #[serde(rename = "egress+published-ports")]
    EgressPublishedPorts,
}

impl NetworkPolicy {
    /// The policy's name as used on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::Off => "off",
            NetworkPolicy::Egress => "egress",
            NetworkPolicy::EgressPublishedPorts => "egress+published-ports",
        }
    }
}

impl std::fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NetworkPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<NetworkPolicy> {
        match s {
            "off" => Ok(NetworkPolicy::Off),
            "egress" => Ok(NetworkPolicy::Egress),
            "egress+published-ports" => Ok(NetworkPolicy::EgressPublishedPorts),
            _ => Err(Error::InvalidRequest(format!(
                "unknown network policy {s:?} (expected off, egress or egress+published-ports)"
            ))),
        }
    }
}

/// Most entries in one allow-list.
pub const MAX_ALLOW: usize = 64;

/// One allow-list entry: a host name or an IPv4 address/CIDR, optionally one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRule {
    /// The name or CIDR as given.
    pub host: String,
    /// The one port allowed (TCP and UDP); every port when absent.
    pub port: Option<u16>,
}

impl AllowRule {
    /// The entry as a CIDR when it is one (a bare address is a `/32`).
    pub fn cidr(&self) -> Option<Ipv4Net> {
        if let Ok(a) = self.host.parse::<Ipv4Addr>() {
            return Some(Ipv4Net::from(a));
        }
        self.host.parse::<Ipv4Net>().ok().map(|n| n.trunc())
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl std::str::FromStr for AllowRule {
    type Err = Error;
    /// `NAME`, `NAME:PORT`, `ADDR[/PREFIX]` or `ADDR[/PREFIX]:PORT` (IPv4 only).
    fn from_str(s: &str) -> Result<AllowRule> {
        let bad = |why: &str| {
            Error::InvalidRequest(format!(
                "bad --allow-host {s:?}: {why} (expected NAME|CIDR[:PORT], e.g. deb.debian.org:80 or 10.0.0.0/8)"
            ))
        };
        if s.matches(':').count() > 1 {
            return Err(bad("only IPv4 addresses and CIDRs are supported"));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| bad("the port is not a number"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let rule = AllowRule { host, port };
        if rule.cidr().is_none() {
            if rule.host.contains('/') || rule.host.parse::<std::net::Ipv6Addr>().is_ok() {
                return Err(bad("only IPv4 addresses and CIDRs are supported"));
            }
            if !valid_hostname(&rule.host) {
                return Err(bad("not a host name"));
            }
        }
        Ok(rule)
    }
}

/// What network a sandbox asked for, as recorded with its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The policy.
    pub policy: NetworkPolicy,
    /// When not empty, egress reaches only these destinations.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

impl NetworkSpec {
    /// No network.
    pub fn off() -> NetworkSpec {
        NetworkSpec::default()
    }

    /// Egress to everything.
    pub fn egress() -> NetworkSpec {
        NetworkSpec {
            policy: NetworkPolicy::Egress,
            allow: Vec::new(),
        }
    }

    /// Whether the sandbox gets no interface but loopback.
    pub fn is_off(&self) -> bool {
        self.policy == NetworkPolicy::Off
    }

    /// A spec from the front doors' parts: a `--network` flag, a policy name (which wins), and
    /// `--allow-host` entries.
    pub fn from_parts(
        network: bool,
        policy: Option<&str>,
        allow: &[String],
    ) -> Result<NetworkSpec> {
        let policy = match policy {
            Some(p) => p.parse()?,
            None if network => NetworkPolicy::Egress,
            None => NetworkPolicy::Off,
        };
        let allow = allow
            .iter()
            .map(|h| h.parse())
            .collect::<Result<Vec<AllowRule>>>()?;
        NetworkSpec { policy, allow }.validated()
    }

    /// Checks the request; an allow-list asks for egress, so it lifts `off` to `egress`.
    pub fn validated(mut self) -> Result<NetworkSpec> {
        if self.allow.len() > MAX_ALLOW {
            return Err(Error::InvalidRequest(format!(
                "at most {MAX_ALLOW} --allow-host entries"
            )));
        }
        if !self.allow.is_empty() && self.policy == NetworkPolicy::Off {
            self.policy = NetworkPolicy::Egress;
        }
        Ok(self)
    }
}

/// How the sandbox's end of the network is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// A veth pair into the container's network namespace.
    Veth,
    /// A tap device a VMM attaches to.
    Tap,
    /// A veth into the VMM's own network namespace, bridged there to the VM's tap (Firecracker
    /// under its jailer, whose namespace holds nothing else).
    Bridged,
}

/// The host-side interface name of a sandbox: `pyv<id>` (veth) or `pyt<id>` (tap); 15 bytes.
pub fn host_ifname(id: &str, kind: LinkKind) -> String {
    match kind {
        LinkKind::Veth | LinkKind::Bridged => format!("pyv{id}"),
        LinkKind::Tap => format!("pyt{id}"),
    }
}

/// A locally administered MAC address for the guest, derived from the sandbox id.
pub fn guest_mac(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .chain(std::iter::repeat('0'))
        .take(10)
        .collect();
    let mut mac = String::from("02");
    for i in (0..10).step_by(2) {
        mac.push(':');
        mac.push_str(&hex[i..i + 2]);
    }
    mac
}

/// One allow-list entry resolved to addresses at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedAllow {
    /// The name it came from, for the guest's `/etc/hosts` (absent for CIDRs).
    pub name: Option<String>,
    /// The addresses.
    pub nets: Vec<Ipv4Net>,
    /// The one port allowed, if any.
    pub port: Option<u16>,
}

pub use pyro_api::ports::PublishedPort;

/// What the network needs of the state database, and nothing more: a sandbox's lease of one
/// address slot (with its spec as JSON), and the ports published from it. The state database
/// implements it; the network never sees SQL.
pub trait LeaseStore: Send + Sync {
    /// Leases a free slot for `id` (chosen by `pick` from the slots in use) with its spec;
    /// `None` when `pick` found none.
    fn lease_slot(
        &self,
        id: &str,
        spec_json: &str,
        pick: &mut dyn FnMut(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>>;
    /// Moves `id`'s lease to another free slot chosen by `pick`.
    fn move_slot(
        &self,
        id: &str,
        pick: &mut dyn FnMut(&std::collections::HashSet<u32>) -> Option<u32>,
    ) -> Result<Option<u32>>;
    /// `id`'s slot and spec, if it holds a lease.
    fn leased(&self, id: &str) -> Result<Option<(u32, String)>>;
    /// The ports published from `id`.
    fn published_ports(&self, id: &str) -> Result<Vec<PublishedPort>>;
}

/// A request to publish a port: `GUEST`, `HOST:GUEST` or `ADDR:HOST:GUEST` (host port 0 or
/// absent: any free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Host address (default 127.0.0.1).
    pub host_addr: Ipv4Addr,
    /// Host port, 0 for any free one.
    pub host_port: u16,
    /// Port in the sandbox.
    pub guest_port: u16,
}

impl std::str::FromStr for PublishRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<PublishRequest> {
        let bad = |why: &str| {
            Error::InvalidRequest(format!(
                "bad --publish {s:?}: {why} (expected [ADDR:]HOST_PORT:GUEST_PORT or GUEST_PORT)"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad("ports are numbers"));
        let (addr, host, guest) = match parts.as_slice() {
            [g] => (Ipv4Addr::LOCALHOST, 0, port(g)?),
            [h, g] => (Ipv4Addr::LOCALHOST, port(h)?, port(g)?),
            [a, h, g] => (
                a.parse().map_err(|_| bad("the address must be IPv4"))?,
                port(h)?,
                port(g)?,
            ),
            _ => return Err(bad("too many ':'")),
        };
        if guest == 0 {
            return Err(bad("the guest port must be 1-65535"));
        }
        if host != 0 && host < 1025 {
            return Err(bad(
                "the host port must be 1025-65535 (or 0 for any free port)",
            ));
        }
        Ok(PublishRequest {
            host_addr: addr,
            host_port: host,
            guest_port: guest,
        })
    }
}

/// Everything one sandbox's network needs, derived from its lease at each boot.
#[derive(Debug, Clone, Serialize)]
pub struct NetPlan {
    /// The sandbox id.
    #[serde(skip)]
    pub id: String,
    /// The policy.
    pub policy: NetworkPolicy,
    /// The allow-list as asked for (empty: every destination).
    pub allow: Vec<AllowRule>,
    /// Veth or tap.
    pub link: LinkKind,
    /// The host-side interface.
    pub host_interface: String,
    /// The sandbox's `/30`.
    pub subnet: Ipv4Net,
    /// The host end's address (the guest's default gateway).
    pub gateway: Ipv4Addr,
    /// The guest's address.
    pub guest_ip: Ipv4Addr,
    /// The link MTU (the host uplink's).
    pub mtu: u32,
    /// Resolvers the guest uses (the host's; none under an allow-list).
    pub resolvers: Vec<Ipv4Addr>,
    /// The allow-list, resolved.
    #[serde(skip)]
    pub allowed: Vec<ResolvedAllow>,
    /// The whole address pool (other sandboxes live here).
    #[serde(skip)]
    pub pool: Ipv4Net,
    /// Ports forwarded from the host.
    pub published_ports: Vec<PublishedPort>,
}

impl NetPlan {
    /// The nftables table of this sandbox.
    pub fn table(&self) -> String {
        rules::table_name(&self.id)
    }

    /// The guest's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        let mut s = String::from("# written by pyro\n");
        if self.resolvers.is_empty() {
            // Under an allow-list no resolver is reachable: names resolve from /etc/hosts only,
            // and a lookup of any other name is refused at once instead of timing out.
            s.push_str(&format!(
                "nameserver {}\noptions attempts:1 timeout:1\n",
                self.gateway
            ));
        }
        for r in &self.resolvers {
            s.push_str(&format!("nameserver {r}\n"));
        }
        s
    }

    /// The guest's `/etc/hosts` (its own name is added in the guest): loopback and each allowed
    /// name pinned to the addresses the host resolved, the only ones its rules let through.
    pub fn hosts(&self) -> String {
        let mut s = String::from(
            "# written by pyro\n127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        );
        for a in &self.allowed {
            if let Some(name) = &a.name {
                for n in &a.nets {
                    s.push_str(&format!("{} {name}\n", n.addr()));
                }
            }
        }
        s
    }

    /// The kernel command-line argument the VM agent configures `eth0` from.
    pub fn kernel_arg(&self) -> String {
        format!(
            "pyro.net={}/{},{},{}",
            self.guest_ip,
            self.subnet.prefix_len(),
            self.gateway,
            self.mtu
        )
    }
}

/// The command (run by the agent, as `sh -lc`) that writes the guest's resolver and hosts files,
/// with the variables it reads. An image's `/etc/resolv.conf` may be a link into a directory
/// that does not exist, so it is replaced, not written through.
pub fn guest_files_command(
    plan: &NetPlan,
) -> (Vec<String>, std::collections::BTreeMap<String, String>) {
    let script = "rm -f /etc/resolv.conf && printf '%s' \"$PYRO_NET_RESOLV\" > /etc/resolv.conf && { printf '%s' \"$PYRO_NET_HOSTS\"; echo \"$PYRO_NET_IP $(uname -n)\"; } > /etc/hosts";
    let env = [
        ("PYRO_NET_RESOLV", plan.resolv_conf()),
        ("PYRO_NET_HOSTS", plan.hosts()),
        ("PYRO_NET_IP", plan.guest_ip.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (vec!["sh".into(), "-c".into(), script.to_string()], env)
}

/// Leases a subnet for a new sandbox and records what network it asked for.
pub fn lease(store: &dyn LeaseStore, id: &str, spec: &NetworkSpec) -> Result<()> {
    let pool = addr::pool()?;
    let routes = addr::host_routes(&[]);
    let json = serde_json::to_string(spec).map_err(|e| Error::Network(e.to_string()))?;
    match store.lease_slot(id, &json, &mut |used| addr::free_slot(pool, used, &routes))? {
        Some(_) => Ok(()),
        None => Err(Error::NetworkUnavailable(format!(
            "the sandbox address pool {pool} has no free /{} left that does not overlap a host route (set PYRO_NET_POOL)",
            addr::SLOT_PREFIX
        ))),
    }
}

/// Holds the host-wide network lock: links are made, and leases checked against the host's
/// routes, by one pyro at a time, whatever `$PYRO_HOME` each uses.
pub struct HostLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the host-wide network lock (`/run/pyro-net.lock`), waiting for it.
pub async fn host_lock() -> Result<HostLock> {
    tokio::task::spawn_blocking(|| {
        let path = "/run/pyro-net.lock";
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {path}"), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(|f| HostLock { _file: f })
            .map_err(|(_, e)| Error::Network(format!("lock {path}: {e}")))
    })
    .await
    .map_err(|e| Error::Network(format!("lock task: {e}")))?
}

/// Under the host lock, before a sandbox's link is made: if its leased subnet now overlaps a
/// route of the host (another installation's sandbox, a network that appeared since), the lease
/// moves to a free slot. Its address may change across a stop; nothing else depends on it.
pub fn settle_lease(store: &dyn LeaseStore, id: &str) -> Result<()> {
    let Some((slot, _)) = store.leased(id)? else {
        return Ok(());
    };
    let pool = addr::pool()?;
    let own = [
        host_ifname(id, LinkKind::Veth),
        host_ifname(id, LinkKind::Tap),
    ];
    let routes = addr::host_routes(&own);
    let clash = |s: u32| {
        addr::slot_subnet(pool, s).is_none_or(|n| {
            routes
                .iter()
                .any(|r| r.contains(&n.network()) || n.contains(&r.network()))
        })
    };
    if !clash(slot) {
        return Ok(());
    }
    match store.move_slot(id, &mut |used| addr::free_slot(pool, used, &routes))? {
        Some(_) => Ok(()),
        None => Err(Error::NetworkUnavailable(format!(
            "the sandbox address pool {pool} has no free /{} left that does not overlap a host route (set PYRO_NET_POOL)",
            addr::SLOT_PREFIX
        ))),
    }
}

/// A sandbox's lease as recorded: its slot and the network it asked for.
fn recorded(store: &dyn LeaseStore, id: &str) -> Result<Option<(u32, NetworkSpec)>> {
    let Some((slot, json)) = store.leased(id)? else {
        return Ok(None);
    };
    let spec = serde_json::from_str(&json)
        .map_err(|e| Error::Network(format!("sandbox {id}: bad recorded network: {e}")))?;
    Ok(Some((slot, spec)))
}

/// The recorded network spec of a sandbox (`off` when it has none).
pub fn spec_of(store: &dyn LeaseStore, id: &str) -> Result<NetworkSpec> {
    Ok(recorded(store, id)?.map_or_else(NetworkSpec::off, |(_, spec)| spec))
}

/// The plan of a leased sandbox as of now (allow-listed names resolved again, published ports
/// as recorded); `None` when it has no network.
pub async fn plan(store: &dyn LeaseStore, id: &str, link: LinkKind) -> Result<Option<NetPlan>> {
    let Some((slot, spec)) = recorded(store, id)? else {
        return Ok(None);
    };
    if spec.is_off() {
        return Ok(None);
    }
    let pool = addr::pool()?;
    let subnet = addr::slot_subnet(pool, slot).ok_or_else(|| {
        Error::Network(format!(
            "sandbox {id}'s lease (slot {slot}) lies outside the pool {pool}: was PYRO_NET_POOL changed?"
        ))
    })?;
    let (gateway, guest_ip) = addr::ends(subnet);
    let allowed = resolve(&spec.allow).await?;
    let resolvers = if spec.allow.is_empty() {
        addr::resolvers()
    } else {
        Vec::new()
    };
    Ok(Some(NetPlan {
        id: id.to_string(),
        policy: spec.policy,
        allow: spec.allow,
        link,
        host_interface: host_ifname(id, link),
        subnet,
        gateway,
        guest_ip,
        mtu: addr::uplink_mtu(),
        resolvers,
        allowed,
        pool,
        published_ports: store.published_ports(id)?,
    }))
}

/// A sandbox's network as every front door shows it (read from its lease; nothing resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NetworkInfo {
    /// The policy.
    pub policy: NetworkPolicy,
    /// The allow-list as given (empty: every destination, under egress).
    pub allow: Vec<String>,
    /// The guest's address.
    pub guest_ip: Option<Ipv4Addr>,
    /// The host end's address (the guest's gateway).
    pub gateway: Option<Ipv4Addr>,
    /// The sandbox's subnet.
    pub subnet: Option<Ipv4Net>,
    /// The host-side interface.
    pub host_interface: Option<String>,
    /// Ports forwarded from the host.
    pub published_ports: Vec<PublishedPort>,
}

/// The network of sandbox `id` as recorded (`link`: how its backend connects it).
pub fn network_info(
    store: &dyn LeaseStore,
    id: &str,
    link: Option<LinkKind>,
) -> Result<NetworkInfo> {
    let Some((slot, spec)) = recorded(store, id)? else {
        return Ok(NetworkInfo::default());
    };
    let subnet = addr::pool().ok().and_then(|p| addr::slot_subnet(p, slot));
    let ends = subnet.map(addr::ends);
    Ok(NetworkInfo {
        policy: spec.policy,
        allow: spec.allow.iter().map(ToString::to_string).collect(),
        guest_ip: ends.map(|e| e.1),
        gateway: ends.map(|e| e.0),
        subnet,
        host_interface: link.map(|l| host_ifname(id, l)),
        published_ports: store.published_ports(id)?,
    })
}

/// Resolves allow-listed names with the host's resolver (IPv4 only).
async fn resolve(allow: &[AllowRule]) -> Result<Vec<ResolvedAllow>> {
    let mut out = Vec::new();
    for rule in allow {
        if let Some(net) = rule.cidr() {
            out.push(ResolvedAllow {
                name: None,
                nets: vec![net],
                port: rule.port,
            });
            continue;
        }
        let addrs = tokio::net::lookup_host((rule.host.as_str(), 0))
            .await
            .map_err(|e| {
                Error::Network(format!("cannot resolve allowed host {}: {e}", rule.host))
            })?;
        let mut nets: Vec<Ipv4Net> = addrs
            .filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(Ipv4Net::from(v4)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        nets.sort();
        nets.dedup();
        if nets.is_empty() {
            return Err(Error::Network(format!(
                "allowed host {} has no IPv4 address",
                rule.host
            )));
        }
        out.push(ResolvedAllow {
            name: Some(rule.host.clone()),
            nets,
            port: rule.port,
        });
    }
    Ok(out)
}

/// Records on disk, before anything is made, that sandbox `state_dir` has a network.
pub fn write_marker(state_dir: &Path, plan: &NetPlan) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::io(format!("create {}", state_dir.display()), e))?;
    let json = serde_json::to_vec_pretty(plan).map_err(|e| Error::Network(e.to_string()))?;
    let m = marker(state_dir);
    std::fs::write(&m, json).map_err(|e| Error::io(format!("write {}", m.display()), e))
}

/// A plan for unit tests: sandbox `abcdefabcdef` on `10.213.0.4/30` of the default pool.
#[cfg(test)]
pub(crate) fn sample_plan(policy: NetworkPolicy) -> NetPlan {
    NetPlan {
        id: "abcdefabcdef".into(),
        policy,
        allow: vec![],
        link: LinkKind::Veth,
        host_interface: host_ifname("abcdefabcdef", LinkKind::Veth),
        subnet: "10.213.0.4/30".parse().expect("subnet"),
        gateway: "10.213.0.5".parse().expect("gateway"),
        guest_ip: "10.213.0.6".parse().expect("guest"),
        mtu: 1500,
        resolvers: vec!["10.255.255.53".parse().expect("resolver")],
        allowed: vec![],
        pool: "10.213.0.0/16".parse().expect("pool"),
        published_ports: vec![],
    }
}

/// Where a sandbox's network is recorded on disk before anything of it exists; teardown runs
/// only where this file is present, so sandboxes without a network pay nothing.
pub fn marker(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("network.json")
}

/// Checks that this host can give a sandbox a network over `link`, with a hint for each miss.
pub fn check_host(link: LinkKind) -> Result<()> {
    let facts = addr::HostFacts::read();
    let mut missing = Vec::new();
    if facts.ip.is_none() {
        missing.push("the `ip` command (iproute2) is not installed".to_string());
    }
    if facts.nft.is_none() {
        missing.push("the `nft` command (nftables) is not installed".to_string());
    }
    if !facts.ip_forward {
        missing.push("IPv4 forwarding is off (net.ipv4.ip_forward = 0)".to_string());
    }
    if link != LinkKind::Veth && !facts.tun {
        missing.push("/dev/net/tun is missing".to_string());
    }
    if !facts.root {
        missing.push("making interfaces and firewall rules needs root".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NetworkUnavailable(missing.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_rules_parse_names_cidrs_and_ports() {
        let r: AllowRule = "Deb.Debian.org:80".parse().unwrap();
        assert_eq!(r.host, "deb.debian.org");
        assert_eq!(r.port, Some(80));
        assert!(r.cidr().is_none());
        let r: AllowRule = "10.1.2.0/24".parse().unwrap();
        assert_eq!(r.cidr().unwrap().to_string(), "10.1.2.0/24");
        assert_eq!(r.port, None);
        let r: AllowRule = "192.0.2.7:443".parse().unwrap();
        assert_eq!(r.cidr().unwrap().to_string(), "192.0.2.7/32");
        for bad in [
            "",
            "a..b",
            "-x.org",
            "x.org:0",
            "x.org:99999",
            "::1",
            "1.2.3.4/40",
            "a b",
        ] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_allow_list_lifts_off_to_egress() {
        let s = NetworkSpec {
            policy: NetworkPolicy::Off,
            allow: vec!["x.org".parse().unwrap()],
        };
        assert_eq!(s.validated().unwrap().policy, NetworkPolicy::Egress);
        assert!(NetworkSpec::off().validated().unwrap().is_off());
    }

    #[test]
    fn policies_round_trip() {
        for p in [
            NetworkPolicy::Off,
            NetworkPolicy::Egress,
            NetworkPolicy::EgressPublishedPorts,
        ] {
            assert_eq!(p.as_str().parse::<NetworkPolicy>().unwrap(), p);
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{}\"", p.as_str()));
        }
        assert!("on".parse::<NetworkPolicy>().is_err());
    }

    #[test]
    fn publish_requests_parse() {
        let p: PublishRequest = "8080".parse().unwrap();
        assert_eq!((p.host_port, p.guest_port), (0, 8080));
        let p: PublishRequest = "18080:80".parse().unwrap();
        assert_eq!(
            (p.host_addr, p.host_port, p.guest_port),
            (Ipv4Addr::LOCALHOST, 18080, 80)
        );
        let p: PublishRequest = "0.0.0.0:18080:80".parse().unwrap();
        assert_eq!(p.host_addr, Ipv4Addr::UNSPECIFIED);
        for bad in ["0", "80:0", "22:80", "x:1:2", "1:2:3:4", "::1:80:80"] {
            assert!(bad.parse::<PublishRequest>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn guest_files_follow_the_plan() {
        let mut plan = sample_plan(NetworkPolicy::Egress);
        plan.mtu = 1400;
        plan.resolvers = vec![];
        plan.allowed = vec![ResolvedAllow {
            name: Some("deb.debian.org".into()),
            nets: vec!["203.0.113.80/32".parse().unwrap()],
            port: Some(80),
        }];
        assert_eq!(plan.host_interface.len(), 15);
        assert!(plan.resolv_conf().contains("nameserver 10.213.0.5"));
        assert!(plan.hosts().contains("203.0.113.80 deb.debian.org\n"));
        assert_eq!(plan.kernel_arg(), "pyro.net=10.213.0.6/30,10.213.0.5,1400");
        assert_eq!(guest_mac("abcdefabcdef"), "02:ab:cd:ef:ab:cd");
        assert_eq!(guest_mac("x"), "02:00:00:00:00:00");
    }
}
