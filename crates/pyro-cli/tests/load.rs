//! Load: many workspaces created at once, exec storms from several processes at once, and
//! snapshot, reset, exec and delete racing on one workspace. Nothing may fail, deadlock or lose a
//! record: every exec is in its workspace's history, every workspace is listed, and SQLite's
//! busy handling holds with many writers. Each run prints exec latencies (p50/p99, whole
//! `pyro workspace exec` processes) and the host memory used; nothing asserts speed.
//!
//! CI-sized by default. A long run: `PYRO_LOAD_WORKSPACES=50 PYRO_LOAD_CLIENTS=10
//! PYRO_LOAD_EXECS=200 cargo nextest run -p pyro-cli --test load --no-capture` (and
//! `PYRO_LOAD_VM_WORKSPACES=4 PYRO_LOAD_VM_CLIENTS=10 PYRO_LOAD_VM_EXECS=200` for vm-emulated).

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::{require_containers, stderr, TestPyro};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// MemAvailable in MiB.
fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates `n` workspaces at once (one `pyro` process each); all must succeed.
fn create_at_once(p: &Arc<TestPyro>, level: &str, n: usize) -> Vec<String> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let p = p.clone();
            let level = level.to_string();
            std::thread::spawn(move || {
                let name = format!("load-{i}");
                let (out, v) = p.json(&[
                    "workspace",
                    "create",
                    "debian:12",
                    "--isolation",
                    &level,
                    "--name",
                    &name,
                    "--mem",
                    "256",
                ]);
                assert!(out.status.success(), "create {name}: {v}\n{}", stderr(&out));
                v["workspace_id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// `clients` processes at a time, each running `execs` execs over the workspaces in turn;
/// returns every latency, and checks that each exec ran and was recorded.
/// The workspace-lock waits an exec logged (`waited_ms=N`), in milliseconds.
fn lock_waits(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("workspace lock"))
        .filter_map(|l| {
            l.split("waited_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Latencies of every exec, and every lock wait they logged (ms).
fn exec_storm(
    p: &Arc<TestPyro>,
    ids: &[String],
    clients: usize,
    execs: usize,
) -> (Vec<Duration>, Vec<u64>) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let waits: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sent: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (p, ids, latencies, sent, waits) = (
                p.clone(),
                ids.to_vec(),
                latencies.clone(),
                sent.clone(),
                waits.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..execs {
                    let id = &ids[(c * 7 + i) % ids.len()];
                    let t = Instant::now();
                    let out = p
                        .cmd(&["workspace", "exec", id, "--", "echo", &format!("{c}-{i}")])
                        .env("PYRO_LOG", "pyro::workspace=debug")
                        .output()
                        .unwrap();
                    let took = t.elapsed();
                    waits.lock().unwrap().extend(lock_waits(&stderr(&out)));
                    assert!(
                        out.status.success(),
                        "exec {c}-{i} on {id}: {}",
                        stderr(&out)
                    );
                    assert_eq!(util::stdout(&out), format!("{c}-{i}\n"));
                    latencies.lock().unwrap().push(took);
                    *sent.lock().unwrap().entry(id.clone()).or_default() += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Nothing lost: each workspace's history holds every exec sent to it.
    for (id, n) in sent.lock().unwrap().iter() {
        let (_, v) = p.json(&["workspace", "logs", id]);
        let logged = v["entries"].as_array().map_or(0, Vec::len) as u64;
        assert_eq!(logged, *n, "{id}: {n} execs sent, {logged} recorded");
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let mut w = waits.lock().unwrap().clone();
    w.sort_unstable();
    (l, w)
}

/// Snapshots, resets and execs race on one workspace; then two deletes race. Each call either
/// succeeds or fails with a clear error (never a database or internal error), and the
/// workspace ends consistent.
fn race_on_one(p: &Arc<TestPyro>, id: &str) {
    let ops: Vec<Vec<String>> = (0..4)
        .flat_map(|i| {
            [
                vec![
                    "workspace".into(),
                    "snapshot".into(),
                    "create".into(),
                    id.into(),
                    format!("r{i}"),
                ],
                vec!["workspace".into(), "reset".into(), id.into()],
                vec![
                    "workspace".into(),
                    "exec".into(),
                    id.into(),
                    "--".into(),
                    "touch".into(),
                    format!("f{i}"),
                ],
            ]
        })
        .collect();
    let handles: Vec<_> = ops
        .into_iter()
        .map(|args| {
            let p = p.clone();
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let (out, v) = p.json(&refs);
                if !out.status.success() {
                    let kind = v["error"]["kind"].as_str().unwrap_or("none").to_string();
                    assert!(
                        !["state_error", "internal", "io_error", "none"].contains(&kind.as_str()),
                        "{args:?} failed badly: {v}\n{}",
                        stderr(&out)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (out, v) = p.json(&["workspace", "status", id]);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let out = p.run(&["workspace", "exec", id, "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, v) = p.json(&["workspace", "snapshot", "list", id]);
    assert!(out.status.success(), "{v}");
    let deletes: Vec<_> = (0..2)
        .map(|_| {
            let (p, id) = (p.clone(), id.to_string());
            std::thread::spawn(move || p.json(&["workspace", "delete", &id]))
        })
        .collect();
    let results: Vec<_> = deletes.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(o, _)| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one delete wins: {results:?}");
    let (_, loser) = results.iter().find(|(o, _)| !o.status.success()).unwrap();
    assert_eq!(loser["error"]["kind"], "workspace_not_found", "{loser}");
}

fn campaign(level: &str, workspaces: usize, clients: usize, execs: usize) {
    let p = Arc::new(TestPyro::new());
    let before = mem_available_mib();
    let t = Instant::now();
    let ids = create_at_once(&p, level, workspaces);
    let created_in = t.elapsed();
    let (_, v) = p.json(&["workspace", "list"]);
    assert_eq!(
        v["count"], workspaces as u64,
        "every workspace is listed: {v}"
    );
    let used = before.saturating_sub(mem_available_mib());
    let (l, waits) = exec_storm(&p, &ids, clients, execs);
    assert!(!waits.is_empty(), "no exec logged its lock wait");
    race_on_one(&p, &ids[0]);
    eprintln!(
        "load {level}: {workspaces} workspaces created at once in {:.1} s, {} MiB of host memory \
         in use with them; {clients} clients x {execs} execs: p50 {} ms, p99 {} ms, 0 errors; \
         workspace-lock waits: {} of {} over 1 ms, longest {} ms",
        created_in.as_secs_f64(),
        used,
        percentile(&l, 0.5).as_millis(),
        percentile(&l, 0.99).as_millis(),
        waits.iter().filter(|w| **w > 1).count(),
        waits.len(),
        waits.last().copied().unwrap_or(0)
    );
    for id in &ids[1..] {
        let out = p.run(&["workspace", "delete", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let left = p.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn load_on_the_container_level() {
    require_containers!();
    campaign(
        "container",
        knob("PYRO_LOAD_WORKSPACES", 10),
        knob("PYRO_LOAD_CLIENTS", 4),
        knob("PYRO_LOAD_EXECS", 25),
    );
}

#[test]
fn load_on_vm_emulated() {
    if !util::vm_tests_enabled(module_path!()) {
        return;
    }
    campaign(
        "vm-emulated",
        knob("PYRO_LOAD_VM_WORKSPACES", 3),
        knob("PYRO_LOAD_VM_CLIENTS", 2),
        knob("PYRO_LOAD_VM_EXECS", 10),
    );
}
