//! Chaos: random operations on a level, with pyro SIGKILLed at random moments (the CLI mid-call,
//! and the MCP server mid-tool-call), then `pyro gc` and a count of everything a sandbox can
//! leave on the host: processes, mounts, cgroups, runc state, run-dir entries, taps and veths,
//! nftables tables, state directories and database rows (sandboxes, workspaces, leases). Every
//! workspace that survives must still work (a stopped one after `start`), or be `broken` with
//! an error that names the way out, and `delete` must clear it. Then the guest side: the agent
//! (container) or the VMM (vm-emulated) killed under a live workspace must give a clear error
//! and a workspace that `reset` brings back.
//!
//! Operations: create (with and without a seed), run, exec, sync push, snapshot, reset,
//! service start, shell open, env pull, stop, start, delete, and an MCP tool call.
//!
//! CI-sized by default (16 trials on the container level, 6 on vm-emulated). A long run:
//! `PYRO_CHAOS_TRIALS=200 PYRO_CHAOS_VM_TRIALS=40 cargo nextest run -p pyro-cli --test chaos
//! --no-capture`; `PYRO_CHAOS_SEED` replays a run (each prints its seed and a report).

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::{processes_mentioning, require_containers, stderr, TestPyro};

/// A small xorshift generator: a run is replayed from its printed seed, and no dependency is
/// needed for that.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One campaign: a private state directory and a private run directory, so that every trace
/// found there is the campaign's own.
struct Campaign {
    p: TestPyro,
    run_dir: tempfile::TempDir,
    level: &'static str,
    rng: Rng,
    /// Every sandbox id seen during the campaign (records, state and run directories).
    ids: BTreeSet<String>,
    /// How long after its start a call may be killed.
    kill_window_ms: u64,
    trials: u64,
    kills: u64,
    seed_dir: PathBuf,
}

impl Campaign {
    fn new(level: &'static str, kill_window_ms: u64) -> Campaign {
        let seed = knob(
            "PYRO_CHAOS_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        eprintln!("chaos {level}: seed {seed} (PYRO_CHAOS_SEED={seed} replays it)");
        // Under /run like the default run directory: the container's mapped root must traverse
        // it, which a directory in a 0700 home would not allow.
        let run_dir = tempfile::Builder::new()
            .prefix("pyro-chaos-")
            .tempdir_in("/run")
            .unwrap();
        let mut p = TestPyro::new();
        p.env("PYRO_RUN_DIR", run_dir.path().to_str().unwrap());
        let seed_dir = p.dir.path().join("seed");
        std::fs::create_dir_all(seed_dir.join("src")).unwrap();
        std::fs::write(
            seed_dir.join("src/main.c"),
            "int main(void) { return 0; }\n",
        )
        .unwrap();
        Campaign {
            p,
            run_dir,
            level,
            rng: Rng::new(seed),
            ids: BTreeSet::new(),
            kill_window_ms,
            trials: 0,
            kills: 0,
            seed_dir,
        }
    }

    fn workspaces(&self) -> Vec<(String, String)> {
        let (_, v) = self.p.json(&["workspace", "list"]);
        v["workspaces"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|w| {
                (
                    w["workspace_id"].as_str().unwrap_or_default().to_string(),
                    w["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Sandbox ids this campaign has made so far, wherever they show.
    fn collect_ids(&mut self) {
        for dir in [
            self.p.home.join("sandboxes"),
            self.run_dir.path().join("sandboxes"),
        ] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                self.ids
                    .insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        for table in ["sandboxes", "workspaces"] {
            self.ids.extend(util::db_column(&self.p.home, table, "id"));
        }
    }

    /// One random operation, killed at a random moment if it is still running then.
    fn trial(&mut self) {
        let all = self.workspaces();
        let of = |state: &str| -> Vec<String> {
            all.iter()
                .filter(|(_, s)| s == state)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let (ws, stopped) = (of("running"), of("stopped"));
        let pick = |rng: &mut Rng| ws[rng.below(ws.len() as u64) as usize].clone();
        let n = self.rng.next();
        let level = self.level;
        let args: Vec<String> = match (self.rng.below(14), ws.is_empty()) {
            (0 | 1, _) | (_, true) => {
                let mut a = vec!["workspace", "create", "debian:12", "--isolation", level];
                if n.is_multiple_of(2) {
                    a.extend(["--seed-path", self.seed_dir.to_str().unwrap()]);
                }
                a.into_iter().map(String::from).collect()
            }
            (2, _) => ["run", "debian:12", "--isolation", level, "--"]
                .into_iter()
                .map(String::from)
                .chain(["sh".into(), "-c".into(), format!("echo {n}; sleep 0.3")])
                .collect(),
            (3, _) => vec![
                "workspace".into(),
                "exec".into(),
                pick(&mut self.rng),
                "--".into(),
                "sh".into(),
                "-c".into(),
                format!("echo {n} >> /workspace/log; sleep 0.2"),
            ],
            (4, _) => vec![
                "workspace".into(),
                "sync".into(),
                "push".into(),
                pick(&mut self.rng),
                self.seed_dir.to_str().unwrap().into(),
                "--dest".into(),
                format!("pushed-{n}"),
            ],
            (5, _) => vec![
                "workspace".into(),
                "snapshot".into(),
                "create".into(),
                pick(&mut self.rng),
                format!("s{n}"),
            ],
            (6, _) => vec!["workspace".into(), "reset".into(), pick(&mut self.rng)],
            (7, _) => vec![
                "workspace".into(),
                "service".into(),
                "start".into(),
                pick(&mut self.rng),
                format!("svc{}", n % 1000),
                "--".into(),
                "sleep".into(),
                "1000".into(),
            ],
            (8, _) => vec![
                "workspace".into(),
                "shell".into(),
                "open".into(),
                pick(&mut self.rng),
            ],
            (9, _) => vec!["env".into(), "pull".into(), "debian:12".into()],
            (10, _) => vec!["workspace".into(), "stop".into(), pick(&mut self.rng)],
            (11, _) if !stopped.is_empty() => {
                let id = stopped[self.rng.below(stopped.len() as u64) as usize].clone();
                vec!["workspace".into(), "start".into(), id]
            }
            (12, _) if ws.len() > 2 => {
                vec!["workspace".into(), "delete".into(), pick(&mut self.rng)]
            }
            _ => {
                // The MCP server, killed while a tool call runs.
                return self.mcp_trial(&ws, n);
            }
        };
        let child = self
            .p
            .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.kill_at_random(child, &args.join(" "));
    }

    fn mcp_trial(&mut self, ws: &[String], n: u64) {
        let call = match ws.first() {
            Some(id) if n.is_multiple_of(2) => {
                serde_json::json!({"name": "workspace_exec", "arguments":
                {"workspace_id": id, "command": "sleep 1; echo done"}})
            }
            _ => serde_json::json!({"name": "vm_run", "arguments":
                {"environment": "debian:12", "command": "sleep 1", "isolation": self.level}}),
        };
        let mut child = self
            .p
            .cmd(&["mcp", "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let lines = [
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params":
                {"protocolVersion": "2025-03-26", "capabilities": {},
                 "clientInfo": {"name": "chaos", "version": "1"}}}),
            serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}),
        ];
        for l in lines {
            let _ = writeln!(stdin, "{l}");
        }
        // stdin stays open: closing it would end the session cleanly, not by a kill.
        self.kill_at_random(child, "mcp serve");
        drop(stdin);
    }

    /// Kills `child` at a random moment; one that ends first must have succeeded (a name
    /// picked twice at random aside).
    fn kill_at_random(&mut self, mut child: Child, what: &str) {
        self.trials += 1;
        let at = Instant::now() + Duration::from_millis(self.rng.below(self.kill_window_ms));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(
                    status.success() || err.contains("already exists"),
                    "`pyro {what}` failed: {err}"
                );
                break;
            }
            if Instant::now() >= at {
                util::signal(&child, libc::SIGKILL);
                let _ = child.wait();
                self.kills += 1;
                eprintln!("chaos {}: killed `pyro {what}`", self.level);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect_ids();
    }

    /// After gc: every workspace works, or is broken with a way out; then all are deleted.
    fn check_survivors(&mut self) {
        let out = self.p.run(&["gc", "--json"]);
        assert!(out.status.success(), "gc failed: {}", stderr(&out));
        for (id, state) in self.workspaces() {
            match state.as_str() {
                "running" => {
                    let out = self.p.run(&["workspace", "exec", &id, "--", "true"]);
                    assert!(
                        out.status.success(),
                        "{id} (running) cannot exec: {}",
                        stderr(&out)
                    );
                }
                "stopped" => {
                    let out = self.p.run(&["workspace", "start", &id]);
                    assert!(
                        out.status.success(),
                        "{id} (stopped) cannot start: {}",
                        stderr(&out)
                    );
                    let out = self.p.run(&["workspace", "exec", &id, "--", "true"]);
                    assert!(
                        out.status.success(),
                        "{id} (restarted) cannot exec: {}",
                        stderr(&out)
                    );
                }
                "broken" => {
                    let (out, v) = self.p.json(&["workspace", "exec", &id, "--", "true"]);
                    assert!(!out.status.success());
                    let hint = v["error"]["hint"].as_str().unwrap_or_default();
                    assert!(hint.contains("reset"), "{id} broken without a way out: {v}");
                }
                other => panic!("{id} is left {other:?} after gc"),
            }
            let out = self.p.run(&["workspace", "delete", &id]);
            assert!(
                out.status.success(),
                "{id} ({state}) cannot be deleted: {}",
                stderr(&out)
            );
        }
    }

    /// Everything the campaign's sandboxes could have left; empty when all is clean.
    fn leftovers(&mut self) -> Vec<String> {
        let out = self.p.run(&["gc", "--json"]);
        assert!(out.status.success(), "gc failed: {}", stderr(&out));
        self.collect_ids();
        let mut left = self.p.leftovers();
        for table in ["workspaces", "networks"] {
            let rows = util::db_column(&self.p.home, table, "rowid");
            if !rows.is_empty() {
                left.push(format!("{} {table} rows", rows.len()));
            }
        }
        let run = self.run_dir.path();
        for sub in ["sandboxes", "runc"] {
            for e in std::fs::read_dir(run.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(format!("run dir entry {}", e.path().display()));
            }
        }
        let home = self.p.home.to_string_lossy().into_owned();
        let run_s = run.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines() {
            if m.contains(&home) || m.contains(&run_s) {
                left.push(format!("mount {m}"));
            }
        }
        left.extend(
            processes_mentioning(&home)
                .into_iter()
                .map(|p| format!("process {p}")),
        );
        left.extend(
            processes_mentioning(&run_s)
                .into_iter()
                .map(|p| format!("process {p}")),
        );
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        let tables = Command::new("nft").args(["list", "tables"]).output();
        let tables = tables
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in &self.ids {
            for ctrl in ["pids", "memory", "cpu", "cpuacct", "freezer"] {
                let cg = format!("/sys/fs/cgroup/{ctrl}/pyro/{id}");
                if Path::new(&cg).exists() {
                    left.push(format!("cgroup {cg}"));
                }
            }
            if Path::new(&format!("/sys/fs/cgroup/pyro/{id}")).exists() {
                left.push(format!("cgroup v2 pyro/{id}"));
            }
            for link in [format!("pyv{id}"), format!("pyt{id}")] {
                if links.contains(&format!(" {link}:")) || links.contains(&format!(" {link}@")) {
                    left.push(format!("link {link}"));
                }
            }
            if tables.contains(&format!("pyro_{id}")) {
                left.push(format!("nftables table pyro_{id}"));
            }
        }
        left
    }

    fn report(&self, left: &[String]) {
        eprintln!(
            "chaos {}: {} trials, {} kills, {} sandboxes seen, {} leftovers",
            self.level,
            self.trials,
            self.kills,
            self.ids.len(),
            left.len()
        );
    }
}

/// The guest side dies under a live workspace: exec fails with a clear error, and reset
/// brings the workspace back (delete would clear it otherwise).
fn kill_the_guest_side(c: &mut Campaign, victim: impl Fn(&str) -> Vec<u32>) {
    let (out, v) =
        c.p.json(&["workspace", "create", "debian:12", "--isolation", c.level]);
    assert!(out.status.success(), "create: {v}");
    let id = v["workspace_id"].as_str().unwrap().to_string();
    c.ids.insert(id.clone());
    // A command in flight when the guest side dies must end with an error, not wait out its
    // timeout (a dead VMM's vsock backend may hold the connection open).
    let mut in_flight =
        c.p.cmd(&[
            "workspace",
            "exec",
            &id,
            "--timeout",
            "600",
            "--json",
            "--",
            "sleep",
            "500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pids = victim(&id);
    assert!(!pids.is_empty(), "found nothing to kill for {id}");
    for pid in pids {
        // SAFETY: kill(2) on a pid just read from the host; it may be gone already.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = in_flight.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            util::signal(&in_flight, libc::SIGKILL);
            let _ = in_flight.wait();
            panic!("an exec in flight when the guest side died never ended");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut in_flight.stdout.take().unwrap(), &mut out).unwrap();
    assert!(!status.success(), "the in-flight exec succeeded: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(v["error"]["message"].is_string(), "no clear error: {out}");
    let (out, v) = c.p.json(&["workspace", "exec", &id, "--", "true"]);
    assert!(
        !out.status.success(),
        "exec succeeded on a dead sandbox: {v}"
    );
    let e = &v["error"];
    assert!(
        e["kind"].is_string() && !e["message"].as_str().unwrap_or("").is_empty(),
        "no clear error: {v}"
    );
    let out = c.p.run(&["workspace", "reset", &id]);
    assert!(
        out.status.success(),
        "reset after the guest died: {}",
        stderr(&out)
    );
    let out = c.p.run(&["workspace", "exec", &id, "--", "true"]);
    assert!(out.status.success(), "exec after reset: {}", stderr(&out));
    let out = c.p.run(&["workspace", "delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
}

fn campaign(level: &'static str, trials: u64, kill_window_ms: u64) -> Campaign {
    let mut c = Campaign::new(level, kill_window_ms);
    for _ in 0..trials {
        c.trial();
    }
    c.check_survivors();
    c
}

#[test]
fn chaos_on_the_container_level_leaves_nothing() {
    require_containers!();
    let mut c = campaign("container", knob("PYRO_CHAOS_TRIALS", 16), 300);
    kill_the_guest_side(&mut c, |id| {
        // The agent is the container's PID 1: the first process of its cgroup.
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/pyro/{id}/cgroup.procs"))
            .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/pyro/{id}/cgroup.procs")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .take(1)
            .collect()
    });
    let left = c.leftovers();
    c.report(&left);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

#[test]
fn chaos_on_vm_emulated_leaves_nothing() {
    if !util::vm_tests_enabled(module_path!()) {
        return;
    }
    let mut c = campaign("vm-emulated", knob("PYRO_CHAOS_VM_TRIALS", 6), 1500);
    kill_the_guest_side(&mut c, |id| {
        processes_mentioning(&format!("/sandboxes/{id}/"))
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .filter_map(|p| p.strip_prefix("pid ")?.split(':').next()?.parse().ok())
            .collect()
    });
    let left = c.leftovers();
    c.report(&left);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
