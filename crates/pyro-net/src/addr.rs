//! Addresses: the pool sandboxes' subnets come from, which slots are free of the host's own
//! routes, and the host facts a plan needs (resolvers, uplink MTU, tools, forwarding).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// The pool when `$PYRO_NET_POOL` is not set: 16,384 sandboxes of a `/30` each.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// Each sandbox's subnet: host end, guest, network and broadcast addresses.
pub const SLOT_PREFIX: u8 = 30;

/// The pool: `$PYRO_NET_POOL` (an IPv4 CIDR of at most `/29`), else [`DEFAULT_POOL`].
pub fn pool() -> Result<Ipv4Net> {
    let s = pyro_api::paths::var(pyro_api::paths::Var::NetPool)
        .unwrap_or_else(|| DEFAULT_POOL.to_string());
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| Error::InvalidRequest(format!("PYRO_NET_POOL {s:?} is not an IPv4 CIDR")))?;
    if net.prefix_len() > SLOT_PREFIX - 1 {
        return Err(Error::InvalidRequest(format!(
            "PYRO_NET_POOL {s:?} is too small: it must hold at least two /{SLOT_PREFIX} subnets"
        )));
    }
    Ok(net.trunc())
}

/// How many sandbox subnets the pool holds.
pub fn slot_count(pool: Ipv4Net) -> u32 {
    1u32 << (SLOT_PREFIX - pool.prefix_len())
}

/// The subnet of slot `slot`.
pub fn slot_subnet(pool: Ipv4Net, slot: u32) -> Option<Ipv4Net> {
    if slot >= slot_count(pool) {
        return None;
    }
    let base = u32::from(pool.network()) + slot * 4;
    Ipv4Net::new(Ipv4Addr::from(base), SLOT_PREFIX).ok()
}

/// The host end (gateway) and guest addresses of a subnet.
pub fn ends(subnet: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let n = u32::from(subnet.network());
    (Ipv4Addr::from(n + 1), Ipv4Addr::from(n + 2))
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The lowest free slot that no other host route overlaps, so a sandbox never shadows a network
/// the host already uses (the seed's hashed subnets collided).
pub fn free_slot(pool: Ipv4Net, used: &HashSet<u32>, routes: &[Ipv4Net]) -> Option<u32> {
    (0..slot_count(pool)).find(|s| {
        !used.contains(s)
            && slot_subnet(pool, *s).is_some_and(|n| !routes.iter().any(|r| overlaps(*r, n)))
    })
}

/// The host's IPv4 routes other than the default route, from `/proc/net/route` (addresses there
/// are little-endian hex), leaving out those on `except` (a sandbox's own links). Other
/// sandboxes' links are included: another pyro installation (another `$PYRO_HOME`) shares the
/// host, and its subnets are only visible here.
pub fn host_routes(except: &[String]) -> Vec<Ipv4Net> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    parse_routes(&text, except)
}

fn parse_routes(text: &str, except: &[String]) -> Vec<Ipv4Net> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_le_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, mask) = (f.first()?, hex(f.get(1)?)?, hex(f.get(7)?)?);
            if except.iter().any(|e| e == iface) {
                return None;
            }
            let prefix = u32::from(mask).count_ones() as u8;
            (prefix > 0)
                .then(|| Ipv4Net::new(dest, prefix).ok())
                .flatten()
        })
        .collect()
}

/// The interface of the host's default route, from `/proc/net/route`.
fn uplink() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_string())
    })
}

/// The MTU for sandbox links: the uplink's (so guests never send what the host cannot), else
/// 1500.
pub fn uplink_mtu() -> u32 {
    uplink()
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|m: &u32| (576..=65535).contains(m))
        .unwrap_or(1500)
}

/// The host's IPv4 resolvers that a guest can use through NAT. A loopback stub (systemd-resolved)
/// is useless to a guest, so its upstream list is read instead.
pub fn resolvers() -> Vec<Ipv4Addr> {
    let parse = |path: &str| -> Vec<Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver"))
                    .then(|| w.next()?.parse::<Ipv4Addr>().ok())
                    .flatten()
            })
            .collect()
    };
    let mut r: Vec<Ipv4Addr> = parse("/etc/resolv.conf")
        .into_iter()
        .filter(|a| !a.is_loopback())
        .collect();
    if r.is_empty() {
        r = parse("/run/systemd/resolve/resolv.conf")
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
    }
    r
}

/// What this host offers for sandbox networking.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `ip` (iproute2).
    pub ip: Option<PathBuf>,
    /// `nft` (nftables).
    pub nft: Option<PathBuf>,
    /// `net.ipv4.ip_forward` is 1.
    pub ip_forward: bool,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// Running as root.
    pub root: bool,
}

/// A program on PATH or in the sbin directories (often missing from a user's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl HostFacts {
    /// Reads the facts now.
    pub fn read() -> HostFacts {
        HostFacts {
            ip: find_program("ip"),
            nft: find_program("nft"),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .is_ok_and(|s| s.trim() == "1"),
            tun: std::path::Path::new("/dev/net/tun").exists(),
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_30s() {
        let p: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(slot_count(p), 16384);
        assert_eq!(slot_subnet(p, 0).unwrap().to_string(), "10.213.0.0/30");
        assert_eq!(slot_subnet(p, 1).unwrap().to_string(), "10.213.0.4/30");
        assert_eq!(
            slot_subnet(p, 16383).unwrap().to_string(),
            "10.213.255.252/30"
        );
        assert!(slot_subnet(p, 16384).is_none());
        let (gw, guest) = ends(slot_subnet(p, 1).unwrap());
        assert_eq!(
            (gw.to_string(), guest.to_string()),
            ("10.213.0.5".into(), "10.213.0.6".into())
        );
    }

    #[test]
    fn free_slots_skip_used_ones_and_host_routes() {
        let p: Ipv4Net = "10.213.0.0/28".parse().unwrap();
        let used: HashSet<u32> = [0].into_iter().collect();
        let routes: Vec<Ipv4Net> = vec!["10.213.0.4/31".parse().unwrap()];
        assert_eq!(free_slot(p, &used, &routes), Some(2));
        let all: HashSet<u32> = (0..4).collect();
        assert_eq!(free_slot(p, &all, &[]), None);
        // A host route covering the whole pool leaves nothing.
        assert_eq!(free_slot(p, &used, &["10.0.0.0/8".parse().unwrap()]), None);
    }

    #[test]
    fn routes_are_read_from_proc_format() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
pyvabcdefabcdef\t0000D50A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n";
        let r = parse_routes(text, &["pyvabcdefabcdef".to_string()]);
        assert_eq!(r, vec!["192.0.2.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(parse_routes(text, &[]).len(), 2);
    }
}
