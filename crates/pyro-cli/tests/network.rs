//! Sandbox networking end to end on the container level (and `pyro run --network` on
//! vm-emulated): real veths and taps, real nftables rules, real debian:12 guests.
//!
//! Traffic goes only to this machine (loopback, the sandboxes' own addresses, the host ends of
//! their links) and to the Debian mirror and the Python package index this machine reaches.
//! That nothing else is reachable is proven by reading the nftables ruleset back, never by
//! probing another address.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::{container_tests_enabled, signal, stderr, vm_tests_enabled, TestPyro};

macro_rules! require_network {
    () => {
        if !container_tests_enabled(module_path!()) || !network_tests_enabled(module_path!()) {
            return;
        }
    };
}

/// Whether this host can give sandboxes a network (pyro's own verdict, from `pyro doctor`); with
/// PYRO_TEST_CONTAINER=1 (CI) a host that cannot is a failure.
fn network_tests_enabled(test: &str) -> bool {
    let (_, v) = TestPyro::new().json(&["doctor"]);
    if v["networking"]["usable"] == true {
        return true;
    }
    let why = v["networking"]["missing"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    if std::env::var("PYRO_TEST_CONTAINER").as_deref() == Ok("1") {
        panic!("{test}: networking is required (PYRO_TEST_CONTAINER=1) but {why}");
    }
    eprintln!("SKIPPED {test}: networking unavailable: {why}");
    false
}

/// The host links and nftables tables of sandbox `id` still present.
fn net_traces(id: &str) -> Vec<String> {
    let mut t = Vec::new();
    for prefix in ["pyv", "pyt"] {
        if std::path::Path::new(&format!("/sys/class/net/{prefix}{id}")).exists() {
            t.push(format!("link {prefix}{id}"));
        }
    }
    if ruleset(id).is_some() {
        t.push(format!("nft table pyro_{id}"));
    }
    t
}

/// The sandbox's nftables table as `nft` lists it.
fn ruleset(id: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", &format!("pyro_{id}")])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(p: &TestPyro, env: &str, net: &[&str], script: &str) -> Value {
    let mut args = vec!["run", env, "--isolation", "container", "--timeout", "300"];
    args.extend_from_slice(net);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let (out, v) = p.json(&args);
    assert!(v.get("error").is_none(), "{v} {}", stderr(&out));
    let id = v["sandbox_id"].as_str().unwrap();
    assert_eq!(v["cleanup"]["deleted"], true, "{v}");
    assert_eq!(net_traces(id), Vec::<String>::new());
    v
}

fn create_ws(p: &TestPyro, env: &str, extra: &[&str]) -> (String, Value) {
    let mut args = vec!["workspace", "create", env, "--isolation", "container"];
    args.extend_from_slice(extra);
    let (out, v) = p.json(&args);
    assert!(v.get("error").is_none(), "{v} {}", stderr(&out));
    (v["workspace_id"].as_str().unwrap().to_string(), v)
}

fn ws_exec(p: &TestPyro, id: &str, script: &str) -> Value {
    let (_, v) = p.json(&[
        "workspace",
        "exec",
        id,
        "--timeout",
        "120",
        "--",
        "sh",
        "-c",
        script,
    ]);
    v
}

/// Binds a server on the workspace's gateway address (the host end of its link), has the guest
/// try to connect, and checks it was refused and the server saw nothing; returns the port.
fn assert_gateway_unreachable(p: &TestPyro, w: &str, gw: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((gw, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let v = ws_exec(
        p,
        w,
        &format!(
            "timeout 10 bash -c 'echo hi > /dev/tcp/{gw}/{port}' && echo REACHED || echo REFUSED"
        ),
    );
    assert_eq!(v["stdout"], "REFUSED\n", "{v}");
    assert!(
        listener.accept().is_err(),
        "the host server saw a connection"
    );
    port
}

fn delete_ws(p: &TestPyro, id: &str) {
    let (_, v) = p.json(&["workspace", "delete", id]);
    assert_eq!(v["deleted"], true, "{v}");
    assert_eq!(net_traces(id), Vec::<String>::new());
}

#[test]
fn egress_reaches_the_debian_mirror_and_off_does_not() {
    require_network!();
    let p = TestPyro::new();
    let v = run(
        &p,
        "debian:12",
        &["--network"],
        "cat /etc/resolv.conf; apt-get update --error-on=any",
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["network"]["policy"], "egress");
    let resolv = v["stdout"].as_str().unwrap();
    // The guest uses the host's own resolver.
    let host_resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("nameserver ")
                .map(str::trim)
                .map(String::from)
        })
        .unwrap();
    assert!(
        resolv.contains(&format!("nameserver {host_resolver}")),
        "{resolv}"
    );

    let v = run(
        &p,
        "debian:12",
        &[],
        "ls /sys/class/net; apt-get -o Acquire::Retries=0 update --error-on=any",
    );
    assert_ne!(
        v["exit_code"], 0,
        "apt-get update worked without a network: {v}"
    );
    assert_eq!(
        v["stdout"].as_str().unwrap().lines().next(),
        Some("lo"),
        "{v}"
    );
    assert_eq!(v["network"]["policy"], "off");
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn an_allow_list_lets_apt_through_and_refuses_the_python_package_index() {
    require_network!();
    let p = TestPyro::new();
    let v = run(
        &p,
        "debian:12-build",
        &[
            "--allow-host",
            "deb.debian.org:80",
            "--allow-host",
            "security.debian.org:80",
        ],
        "apt-get update -qq --error-on=any && apt-get install -y -qq python3-pip >/dev/null && echo APT-OK && \
         pip download --no-deps --retries 0 --timeout 5 --dest /tmp six; echo pip=$?",
    );
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("APT-OK"), "{v}");
    assert!(
        out.contains("pip=1"),
        "pip download from PyPI was not refused: {v}"
    );
    assert_eq!(v["network"]["policy"], "egress");
    let refused = v["network"]["refused"].as_array().unwrap();
    assert!(!refused.is_empty(), "no refusal recorded: {v}");
    assert!(
        refused
            .iter()
            .all(|r| r["source"] == v["network"]["guest_ip"]),
        "{v}"
    );
}

#[test]
fn the_rules_refuse_the_host_link_local_other_sandboxes_and_everything_off_the_list() {
    require_network!();
    let p = TestPyro::new();
    let (a, info) = create_ws(&p, "debian:12", &["--network-policy", "egress"]);
    let (b, _) = create_ws(&p, "debian:12", &["--allow-host", "192.0.2.0/24:8080"]);
    let net = &info["network"];
    assert_eq!(net["policy"], "egress");
    let ifname = net["host_interface"].as_str().unwrap();
    let guest_ip = net["guest_ip"].as_str().unwrap();

    let rules = ruleset(&a).expect("table of a");
    for want in [
        format!("iifname \"{ifname}\" ct state established,related accept"),
        format!("iifname \"{ifname}\" jump refuse"),
        format!("iifname \"{ifname}\" meta nfproto ipv6 jump refuse"),
        format!("iifname \"{ifname}\" ip saddr != {guest_ip} jump refuse"),
        format!("oifname \"{ifname}\" drop"),
        "169.254.0.0/16".to_string(),
        format!("iifname \"{ifname}\" oifname \"pyv*\" jump refuse"),
        "reject with icmpx admin-prohibited".to_string(),
    ] {
        assert!(rules.contains(&want), "missing {want:?} in\n{rules}");
    }
    // The input hook (the host's own addresses) accepts nothing new from the sandbox.
    let input = &rules[rules.find("chain input").unwrap()..rules.find("chain forward_in").unwrap()];
    assert!(
        !input.contains(&format!("iifname \"{ifname}\" accept")),
        "{input}"
    );
    assert!(
        rules.contains(&format!("iifname \"{ifname}\" accept")),
        "egress accepts: {rules}"
    );

    // The allow-list sandbox accepts only its entry, then refuses the rest.
    let rules_b = ruleset(&b).expect("table of b");
    let out = &rules_b
        [rules_b.find("chain forward_out").unwrap()..rules_b.find("chain postrouting").unwrap()];
    let accepts: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_end().ends_with("accept") && !l.contains("policy"))
        .collect();
    assert_eq!(accepts.len(), 1, "only the entry is accepted: {out}");
    assert!(
        accepts[0].contains("ip daddr 192.0.2.0/24 meta l4proto { tcp, udp } th dport 8080 accept")
            || accepts[0].contains(
                "ip daddr { 192.0.2.0/24 } meta l4proto { tcp, udp } th dport 8080 accept"
            ),
        "{out}"
    );
    assert!(
        out.trim_end()
            .trim_end_matches('}')
            .trim_end()
            .ends_with("jump refuse"),
        "the rest is refused: {out}"
    );
    assert_eq!(
        p.json(&["workspace", "status", &b]).1["network"]["allow"][0],
        "192.0.2.0/24:8080"
    );
    delete_ws(&p, &a);
    delete_ws(&p, &b);
}

#[test]
fn a_guest_cannot_reach_its_gateway_or_another_sandbox() {
    require_network!();
    let p = TestPyro::new();
    let (a, info) = create_ws(&p, "debian:12", &["--network-policy", "egress"]);
    let (b, info_b) = create_ws(&p, "debian:12-build", &["--network-policy", "egress"]);
    let gw: Ipv4Addr = info["network"]["gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let b_ip = info_b["network"]["guest_ip"].as_str().unwrap().to_string();

    // A server on the host end of a's veth.
    let port = assert_gateway_unreachable(&p, &a, gw);

    // A server in b, reachable inside b itself, not from a.
    let (_, s) = p.json(&[
        "workspace",
        "service",
        "start",
        &b,
        "web",
        "--ready-tcp",
        "127.0.0.1:8000",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    ]);
    assert_eq!(s["state"], "ready", "{s}");
    let v = ws_exec(
        &p,
        &b,
        "timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/8000' && echo LOCAL-OK",
    );
    assert_eq!(v["stdout"], "LOCAL-OK\n", "{v}");
    let v = ws_exec(
        &p,
        &a,
        &format!("timeout 5 bash -c 'echo > /dev/tcp/{b_ip}/8000' && echo REACHED || echo REFUSED"),
    );
    assert_eq!(v["stdout"], "REFUSED\n", "{v}");
    // Each refusal is in the workspace's logs.
    let (_, logs) = p.json(&["workspace", "logs", &a]);
    let refused = logs["network_refused"]
        .as_array()
        .expect("network_refused in logs");
    // Kept in the workspace's own file after each exec, beyond the kernel log's memory.
    let kept = std::fs::read_to_string(
        p.home
            .join("workspaces")
            .join(&a)
            .join("network-refused.jsonl"),
    )
    .unwrap_or_default();
    assert!(kept.lines().count() >= 2, "refusals not kept: {kept}");
    for (dst, dport) in [(gw.to_string(), port), (b_ip.clone(), 8000)] {
        assert!(
            refused
                .iter()
                .any(|r| r["destination"] == dst.as_str() && r["port"] == dport),
            "no refusal of {dst}:{dport} in {logs}"
        );
    }
    delete_ws(&p, &a);
    delete_ws(&p, &b);
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn a_published_port_serves_a_guest_http_server_on_host_loopback() {
    require_network!();
    let p = TestPyro::new();
    let (w, _) = create_ws(
        &p,
        "debian:12-build",
        &["--network-policy", "egress+published-ports"],
    );
    ws_exec(&p, &w, "echo hello from the guest > /workspace/hello.txt");
    let (_, s) = p.json(&[
        "workspace",
        "service",
        "start",
        &w,
        "web",
        "--publish",
        "0:8000",
        "--ready-tcp",
        "127.0.0.1:8000",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
        "--directory",
        "/workspace",
    ]);
    assert_eq!(s["state"], "ready", "{s}");
    let pp = &s["published_ports"][0];
    assert_eq!(pp["host_addr"], "127.0.0.1");
    assert_eq!(pp["guest_port"], 8000);
    let port = pp["host_port"].as_u64().unwrap() as u16;
    assert!(http_get(port).unwrap().contains("hello from the guest"));

    // Unrelated calls leave it alone (the seed's `service logs` killed its proxies).
    p.json(&["workspace", "service", "logs", &w, "web"]);
    let (_, list) = p.json(&["workspace", "service", "list", &w]);
    assert_eq!(
        list["services"][0]["published_ports"][0]["host_port"], port,
        "{list}"
    );
    let (_, st) = p.json(&["workspace", "status", &w]);
    assert_eq!(
        st["network"]["published_ports"][0]["host_port"], port,
        "{st}"
    );
    assert!(http_get(port).unwrap().contains("hello from the guest"));

    // A workspace without the policy cannot publish.
    let (o, _) = create_ws(&p, "debian:12", &["--network-policy", "egress"]);
    let (out, e) = p.json(&[
        "workspace",
        "service",
        "start",
        &o,
        "web",
        "--publish",
        "8000",
        "--",
        "sleep",
        "60",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("egress+published-ports"),
        "{e}"
    );
    delete_ws(&p, &o);

    // Stopping the service withdraws the port.
    p.json(&["workspace", "service", "stop", &w, "web"]);
    let (_, st) = p.json(&["workspace", "status", &w]);
    assert_eq!(
        st["network"]["published_ports"],
        serde_json::json!([]),
        "{st}"
    );
    assert!(
        http_get(port).is_err(),
        "port {port} still forwarded after the service stopped"
    );
    delete_ws(&p, &w);
}

#[test]
fn a_stopped_workspace_gets_its_rules_back_on_start() {
    require_network!();
    let p = TestPyro::new();
    let (w, info) = create_ws(&p, "debian:12", &["--network-policy", "egress"]);
    p.json(&["workspace", "stop", &w]);
    assert_eq!(
        net_traces(&w),
        Vec::<String>::new(),
        "a stopped workspace keeps no links"
    );
    let (_, st) = p.json(&["workspace", "start", &w]);
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(
        st["network"]["guest_ip"], info["network"]["guest_ip"],
        "the lease is kept"
    );
    assert!(ruleset(&w).is_some(), "rules not restored");
    let v = ws_exec(
        &p,
        &w,
        "apt-get -o Acquire::Retries=0 update --error-on=any >/dev/null && echo NET-OK",
    );
    assert_eq!(v["stdout"], "NET-OK\n", "{v}");
    delete_ws(&p, &w);
}

#[test]
fn killing_pyro_mid_create_or_mid_run_and_gc_leave_no_link_or_table() {
    require_network!();
    let p = TestPyro::new();
    for kill_at in ["[run] phase=create", "[run] phase=exec"] {
        let mut child = p
            .cmd(&[
                "run",
                "debian:12",
                "--isolation",
                "container",
                "--network",
                "--timeout",
                "600",
                "--",
                "sh",
                "-c",
                "echo READY; sleep 600",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
                break;
            }
            if line.starts_with(kill_at) {
                break;
            }
        }
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        let (_, gc) = p.json(&["gc"]);
        assert!(gc["errors"].as_array().unwrap().is_empty(), "{gc}");
        // Whatever the killed pyro had recorded is gone, with its links and table.
        for id in gc["removed"].as_array().unwrap() {
            let id = id.as_str().unwrap();
            assert_eq!(net_traces(id), Vec::<String>::new(), "{kill_at}: {id}");
        }
        assert_eq!(p.leftovers(), Vec::<String>::new(), "{kill_at}");
    }
}

#[test]
fn doctor_reports_networking() {
    if !container_tests_enabled(module_path!()) {
        return;
    }
    let (_, v) = TestPyro::new().json(&["doctor"]);
    let n = &v["networking"];
    for k in ["tun", "ip_forward", "nft", "ip", "netns", "usable"] {
        assert!(n[k].is_boolean(), "networking.{k}: {v}");
    }
    assert!(n["pool"].as_str().unwrap().contains('/'), "{v}");
}

#[test]
fn bad_network_requests_are_refused_before_anything_is_made() {
    if !container_tests_enabled(module_path!()) {
        return;
    }
    let p = TestPyro::new();
    for (args, want) in [
        (vec!["--allow-host", "::1"], "IPv4"),
        (vec!["--allow-host", "x.org:0"], "port"),
    ] {
        let mut a = vec!["run", "debian:12", "--isolation", "container"];
        a.extend(args);
        a.extend(["--", "true"]);
        let (out, v) = p.json(&a);
        assert_ne!(out.status.code(), Some(0), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    let (out, v) = p.json(&[
        "workspace",
        "create",
        "debian:12",
        "--isolation",
        "container",
        "--network-policy",
        "on",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("network policy"),
        "{v}"
    );
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn vm_emulated_sandboxes_get_egress_through_a_tap() {
    if !vm_tests_enabled(module_path!()) || !network_tests_enabled(module_path!()) {
        return;
    }
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "run", "debian:12", "--isolation", "vm-emulated", "--network", "--timeout", "300", "--",
        "sh", "-c", "cat /proc/net/route; apt-get -o Acquire::Retries=0 update --error-on=any >/dev/null && echo NET-OK",
    ]);
    assert!(v.get("error").is_none(), "{v} {}", stderr(&out));
    assert!(v["stdout"].as_str().unwrap().contains("NET-OK"), "{v}");
    assert!(v["stdout"].as_str().unwrap().contains("eth0"), "{v}");
    let id = v["sandbox_id"].as_str().unwrap();
    assert_eq!(v["cleanup"]["deleted"], true, "{v}");
    assert_eq!(net_traces(id), Vec::<String>::new());
    let (_, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "vm-emulated",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net",
    ]);
    assert_eq!(v["stdout"], "lo\n", "{v}");
}

#[test]
fn vm_emulated_workspaces_publish_ports_and_cannot_reach_the_host() {
    if !vm_tests_enabled(module_path!()) || !network_tests_enabled(module_path!()) {
        return;
    }
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "workspace",
        "create",
        "debian:12",
        "--isolation",
        "vm-emulated",
        "--network-policy",
        "egress+published-ports",
    ]);
    assert!(v.get("error").is_none(), "{v} {}", stderr(&out));
    let w = v["workspace_id"].as_str().unwrap().to_string();
    assert!(
        v["network"]["host_interface"]
            .as_str()
            .unwrap()
            .starts_with("pyt"),
        "{v}"
    );
    let gw: Ipv4Addr = v["network"]["gateway"].as_str().unwrap().parse().unwrap();
    assert_gateway_unreachable(&p, &w, gw);

    // perl is in every Debian image (perl-base): a one-line HTTP server in the guest.
    let server = "perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>8000,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){<$c>; print $c \"HTTP/1.0 200 OK\\r\\n\\r\\nhello from the vm\\n\"; close $c}'";
    let (_, s) = p.json(&[
        "workspace",
        "service",
        "start",
        &w,
        "web",
        "--publish",
        "0:8000",
        "--ready-tcp",
        "127.0.0.1:8000",
        "--ready-timeout",
        "120",
        "--",
        "sh",
        "-c",
        server,
    ]);
    assert_eq!(s["state"], "ready", "{s}");
    let port = s["published_ports"][0]["host_port"].as_u64().unwrap() as u16;
    assert!(http_get(port).unwrap().contains("hello from the vm"));
    delete_ws(&p, &w);
    assert!(
        http_get(port).is_err(),
        "port {port} still forwarded after delete"
    );
}

#[test]
fn demo_proves_the_lifecycle_with_and_without_a_network() {
    require_network!();
    let p = TestPyro::new();
    let (out, v) = p.json(&["demo", "--isolation", "container"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(
        v["stdout"].as_str().unwrap().starts_with("git version"),
        "{v}"
    );
    assert_eq!(v["network"]["policy"], "off");
    let (out, v) = p.json(&["demo", "--isolation", "container", "--network"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["network"]["policy"], "egress");
    assert_eq!(
        net_traces(v["sandbox_id"].as_str().unwrap()),
        Vec::<String>::new()
    );
}
