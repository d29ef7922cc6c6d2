//! The nftables table of one sandbox, as `nft -f` text.
//!
//! The table is replaced whole in one transaction whenever anything changes (boot, a port
//! published or withdrawn), so it is always exactly what the plan says. Its base chains run just
//! before the usual filter priority: a drop or reject here is final whatever other tables on the
//! host say, while an accept here still leaves other tables their say.

use std::fmt::Write as _;

use super::{NetPlan, NetworkPolicy};

/// The log prefix of refused connections of sandbox `id` (read back by [`super::refused`]).
pub fn log_prefix(id: &str) -> String {
    format!("pyro-{id} refused: ")
}

/// The table's name: `pyro_<id>` in the `inet` family.
pub fn table_name(id: &str) -> String {
    format!("pyro_{id}")
}

/// The whole table for a plan: removes any older version of it and creates the new one.
pub fn ruleset(p: &NetPlan) -> String {
    let t = table_name(&p.id);
    let i = &p.host_interface;
    let mut s = String::new();
    // `table …{}` then `delete table …` makes the delete safe when the table does not exist yet.
    let _ = writeln!(
        s,
        "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{"
    );

    // Refusals are logged (rate-limited, so a guest cannot flood the kernel log) and rejected,
    // so the guest's program fails at once instead of waiting for a timeout.
    let _ = writeln!(
        s,
        "  chain refuse {{\n    limit rate 20/second burst 40 packets log prefix \"{}\" level info\n    reject with icmpx type admin-prohibited\n  }}",
        log_prefix(&p.id)
    );

    // The host itself (every one of its addresses, the gateway included): only replies to
    // connections the host opened (published ports) come back in.
    let _ = writeln!(
        s,
        "  chain input {{\n    type filter hook input priority filter - 5; policy accept;\n    iifname \"{i}\" ct state established,related accept\n    iifname \"{i}\" jump refuse\n  }}"
    );

    // Into the sandbox: replies, and connections to published ports; nothing else.
    let _ = writeln!(
        s,
        "  chain forward_in {{\n    type filter hook forward priority filter - 5; policy accept;\n    oifname \"{i}\" ct state established,related accept"
    );
    if !p.published_ports.is_empty() {
        let _ = writeln!(s, "    oifname \"{i}\" ct status dnat accept");
    }
    let _ = writeln!(s, "    oifname \"{i}\" drop\n  }}");
    // Out of the sandbox, decided before any other sandbox's `forward_in` (a lower priority
    // runs first), so a refusal is logged and answered by the sender's own table.
    let _ = writeln!(
        s,
        "  chain forward_out {{\n    type filter hook forward priority filter - 10; policy accept;"
    );
    // Out of the sandbox: never IPv6, never a spoofed source, never link-local (cloud metadata),
    // never another sandbox.
    let _ = writeln!(s, "    iifname \"{i}\" meta nfproto ipv6 jump refuse");
    let _ = writeln!(
        s,
        "    iifname \"{i}\" ip saddr != {} jump refuse",
        p.guest_ip
    );
    let _ = writeln!(
        s,
        "    iifname \"{i}\" ip daddr {{ 169.254.0.0/16, 127.0.0.0/8, 224.0.0.0/4, {} }} jump refuse",
        p.pool
    );
    // Other installations' sandboxes may use other pools: their links are refused by name.
    let _ = writeln!(
        s,
        "    iifname \"{i}\" oifname \"pyv*\" jump refuse\n    iifname \"{i}\" oifname \"pyt*\" jump refuse"
    );
    if p.policy != NetworkPolicy::Off {
        if p.allow.is_empty() {
            let _ = writeln!(s, "    iifname \"{i}\" accept");
        } else {
            for a in &p.allowed {
                if a.nets.is_empty() {
                    continue;
                }
                let nets: Vec<String> = a.nets.iter().map(|n| n.to_string()).collect();
                let set = nets.join(", ");
                match a.port {
                    Some(port) => {
                        let _ = writeln!(
                            s,
                            "    iifname \"{i}\" ip daddr {{ {set} }} meta l4proto {{ tcp, udp }} th dport {port} accept"
                        );
                    }
                    None => {
                        let _ = writeln!(s, "    iifname \"{i}\" ip daddr {{ {set} }} accept");
                    }
                }
            }
        }
    }
    let _ = writeln!(s, "    iifname \"{i}\" jump refuse\n  }}");

    // NAT: the sandbox's traffic leaves with the host's address; published ports reached from
    // the host's loopback arrive with the gateway's.
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {} oifname != \"{i}\" masquerade",
        p.subnet
    );
    if !p.published_ports.is_empty() {
        let _ = writeln!(s, "    oifname \"{i}\" ip saddr 127.0.0.0/8 masquerade");
    }
    let _ = writeln!(s, "  }}");

    if !p.published_ports.is_empty() {
        // Locally made connections pass the output hook; others pass prerouting.
        for (chain, hook) in [("output", "output"), ("prerouting", "prerouting")] {
            let _ = writeln!(
                s,
                "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;"
            );
            for pp in &p.published_ports {
                let dst = if pp.host_addr.is_unspecified() {
                    "fib daddr type local".to_string()
                } else {
                    format!("ip daddr {}", pp.host_addr)
                };
                if hook == "prerouting" && pp.host_addr.is_loopback() {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "    {dst} tcp dport {} dnat ip to {}:{}",
                    pp.host_port, p.guest_ip, pp.guest_port
                );
            }
            let _ = writeln!(s, "  }}");
        }
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::super::{PublishedPort, ResolvedAllow};
    use super::*;

    fn plan(policy: NetworkPolicy) -> NetPlan {
        super::super::sample_plan(policy)
    }

    #[test]
    fn egress_accepts_after_the_fixed_denials() {
        let r = ruleset(&plan(NetworkPolicy::Egress));
        let deny = r.find("169.254.0.0/16").unwrap();
        let accept = r.find("iifname \"pyvabcdefabcdef\" accept").unwrap();
        assert!(deny < accept, "{r}");
        assert!(r.contains("ip saddr 10.213.0.4/30 oifname != \"pyvabcdefabcdef\" masquerade"));
        assert!(r.contains("type filter hook input"));
        assert!(!r.contains("dnat"));
    }

    #[test]
    fn allow_lists_accept_only_their_entries() {
        let mut p = plan(NetworkPolicy::Egress);
        p.allow = vec!["deb.debian.org:80".parse().unwrap()];
        p.allowed = vec![ResolvedAllow {
            name: Some("deb.debian.org".into()),
            nets: vec!["203.0.113.80/32".parse().unwrap()],
            port: Some(80),
        }];
        let r = ruleset(&p);
        assert!(
            r.contains("ip daddr { 203.0.113.80/32 } meta l4proto { tcp, udp } th dport 80 accept")
        );
        assert!(!r.contains("iifname \"pyvabcdefabcdef\" accept"), "{r}");
    }

    #[test]
    fn published_ports_are_dnat_from_the_host() {
        let mut p = plan(NetworkPolicy::EgressPublishedPorts);
        p.published_ports = vec![PublishedPort {
            service: "web".into(),
            host_addr: "127.0.0.1".parse().unwrap(),
            host_port: 18080,
            guest_port: 8000,
        }];
        let r = ruleset(&p);
        assert!(r.contains("ip daddr 127.0.0.1 tcp dport 18080 dnat ip to 10.213.0.6:8000"));
        assert!(r.contains("ct status dnat accept"));
        assert!(r.contains("oifname \"pyvabcdefabcdef\" ip saddr 127.0.0.0/8 masquerade"));
    }
}
