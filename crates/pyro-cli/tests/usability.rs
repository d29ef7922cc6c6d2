//! What a new user tripped on: an installed `pyro` that lost its agent, defaults set once in a
//! config file, concurrent callers on one workspace, and messages that pointed the wrong way.
//! Each test here failed before its fix.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use util::{stderr, stdout, TestPyro};

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(out),
            stderr(out)
        )
    })
}

/// `pyro workspace create debian:12 --isolation container --json EXTRA…`; returns the id.
fn create(p: &TestPyro, extra: &[&str]) -> String {
    p.create_workspace(extra).0
}

// ---------------------------------------------------------------------------------------------
// One self-contained executable
// ---------------------------------------------------------------------------------------------

/// `pyro` copied alone into a directory (as `cargo install` or a copy onto PATH does), with a
/// dynamically linked `pyro-agent` beside it (as a plain workspace build leaves one).
fn installed_copy(p: &TestPyro) -> std::path::PathBuf {
    let bin = p.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pyro = bin.join("pyro");
    std::fs::copy(env!("CARGO_BIN_EXE_pyro"), &pyro).unwrap();
    std::fs::copy("/bin/true", bin.join("pyro-agent")).unwrap();
    pyro
}

fn installed_cmd(p: &TestPyro, exe: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.args(args)
        .env("PYRO_HOME", &p.home)
        .env("PYRO_CACHE_DIR", &p.cache)
        .env("PYRO_CONFIG", p.config_file())
        .env_remove("PYRO_AGENT")
        .env_remove("PYRO_ISOLATION")
        .stdin(Stdio::null());
    c
}

#[test]
fn an_installed_pyro_carries_its_own_agent() {
    let p = TestPyro::new();
    let exe = installed_copy(&p);
    let out = installed_cmd(&p, &exe, &["doctor", "--json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["agent"]["source"], "embedded", "{}", v["agent"]);
    assert_eq!(v["agent"]["static_binary"], true, "{}", v["agent"]);
    assert!(v["agent"]["embedded_sha256"].as_str().unwrap().len() == 64);
    let issues = v["issues"].to_string();
    assert!(!issues.contains("pyro-agent"), "{issues}");

    require_containers!();
    let out = installed_cmd(
        &p,
        &exe,
        &[
            "run",
            "debian:12",
            "--isolation",
            "container",
            "--json",
            "--",
            "echo",
            "from-installed",
        ],
    )
    .output()
    .unwrap();
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["stdout"], "from-installed\n");
}

// ---------------------------------------------------------------------------------------------
// Defaults set once
// ---------------------------------------------------------------------------------------------

#[test]
fn config_set_show_and_unset() {
    let p = TestPyro::new();
    let out = p.run(&["config", "set", "isolation", "container"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(p.config_file()).unwrap();
    assert!(text.contains("isolation = \"container\""), "{text}");
    let (out, v) = p.json(&["config", "show"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["isolation"]["level"], "container", "{v}");
    assert_eq!(v["isolation"]["source"], "config_file", "{v}");
    // The variable wins over the file.
    let out = p
        .cmd(&["config", "show", "--json"])
        .env("PYRO_ISOLATION", "vm-emulated")
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["isolation"]["level"], "vm-emulated", "{v}");
    assert_eq!(v["isolation"]["source"], "environment", "{v}");
    // Bad keys and values are refused with what is valid, and the file is unchanged.
    let (out, v) = p.json(&["config", "set", "isolaton", "container"]);
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("valid keys"),
        "{v}"
    );
    let (out, v) = p.json(&["config", "set", "isolation", "kvm"]);
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert_eq!(std::fs::read_to_string(p.config_file()).unwrap(), text);
    let out = p.run(&["config", "unset", "isolation"]);
    assert_eq!(out.status.code(), Some(0));
    let (_, v) = p.json(&["config", "show"]);
    assert_eq!(v["isolation"]["source"], "built_in", "{v}");
    assert_eq!(v["isolation"]["level"], "microvm", "{v}");
}

#[test]
fn a_broken_config_file_is_an_error_naming_it() {
    let p = TestPyro::new();
    std::fs::write(p.config_file(), "isolation = \"contianer\"\n").unwrap();
    let (out, v) = p.json(&["run", "debian:12", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert_eq!(v["error"]["kind"], "invalid_config");
    let msg = v["error"]["message"].as_str().unwrap();
    let file = p.config_file().display().to_string();
    assert!(msg.starts_with(&format!("{file}: ")), "{msg}");
    assert_eq!(msg.matches(&file).count(), 1, "{msg}");
    assert!(msg.contains("contianer"), "{msg}");
    // The tool fixes what it refuses to read.
    let out = p.run(&["config", "set", "isolation", "container"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    require_containers!();
    let (out, v) = p.json(&["run", "debian:12", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["isolation"], "container");
}

#[test]
fn a_bad_pyro_isolation_is_named() {
    let p = TestPyro::new();
    let out = p
        .cmd(&["run", "debian:12", "--json", "--", "true"])
        .env("PYRO_ISOLATION", "vm")
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(2), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("PYRO_ISOLATION: "), "{msg}");
    assert!(msg.contains("unknown isolation level"), "{msg}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("PYRO_ISOLATION"),
        "{v}"
    );
}

#[test]
fn doctor_says_how_to_make_a_usable_level_the_default() {
    let p = TestPyro::new();
    let (_, v) = p.json(&["doctor"]);
    let d = &v["default_isolation"];
    assert_eq!(d["source"], "built_in", "{d}");
    let microvm_usable = v["isolation_levels"][0]["usable"] == true;
    let best = d["strongest_usable"].clone();
    if microvm_usable || best.is_null() {
        assert!(d["set_default"].is_null(), "{d}");
        return;
    }
    let cmd = d["set_default"].as_str().unwrap();
    assert_eq!(
        cmd,
        format!("pyro config set isolation {}", best.as_str().unwrap())
    );
    let text = stdout(&p.run(&["doctor"]));
    assert!(text.contains("Default level: microvm"), "{text}");
    assert!(text.contains(cmd), "{text}");
    // Running that one line makes doctor content.
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    assert_eq!(p.run(&args).status.code(), Some(0));
    let (_, v) = p.json(&["doctor"]);
    assert_eq!(v["default_isolation"]["usable"], true, "{v}");
    assert_eq!(v["default_isolation"]["source"], "config_file");
}

#[test]
fn the_configured_level_and_resources_apply_without_flags() {
    require_containers!();
    let p = TestPyro::new();
    std::fs::write(
        p.config_file(),
        "isolation = \"container\"\nmem_mib = 768\ntimeout_seconds = 1\n",
    )
    .unwrap();
    let (out, v) = p.json(&["run", "debian:12", "--", "sleep", "5"]);
    assert_eq!(v["isolation"], "container", "{v}\n{}", stderr(&out));
    assert_eq!(v["limits"]["memory_bytes"], 768u64 << 20, "{v}");
    assert_eq!(
        v["timed_out"], true,
        "the configured 1 s timeout applies: {v}"
    );
    // A flag still wins.
    let (out, v) = p.json(&[
        "run",
        "debian:12",
        "--mem",
        "512",
        "--timeout",
        "30",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["limits"]["memory_bytes"], 512u64 << 20, "{v}");
}

// ---------------------------------------------------------------------------------------------
// Concurrent callers on one workspace
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_execs_snapshots_and_writes_all_succeed_once() {
    require_containers!();
    let p = TestPyro::new();
    let id = create(&p, &[]);
    let (clients, per_client) = (6, 15);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for c in 0..clients {
            let (p, id) = (&p, &id);
            handles.push(s.spawn(move || {
                let mut failures = Vec::new();
                for i in 0..per_client {
                    let line = format!("echo {c}-{i} >> /workspace/appended");
                    let out = p.run(&["workspace", "exec", id, "--", "sh", "-c", &line]);
                    if out.status.code() != Some(0) {
                        failures.push(format!("exec {c}-{i}: {}", stderr(&out)));
                    }
                }
                failures
            }));
        }
        let (p2, id2) = (&p, &id);
        handles.push(s.spawn(move || {
            let mut failures = Vec::new();
            for i in 0..4 {
                let name = format!("snap{i}");
                let out = p2.run(&["workspace", "snapshot", "create", id2, &name]);
                if out.status.code() != Some(0) {
                    failures.push(format!("snapshot {i}: {}", stderr(&out)));
                }
            }
            for i in 0..8 {
                let path = format!("written-{i}.txt");
                let out = p2.run(&["workspace", "file", "write", id2, &path, "--text", "x"]);
                if out.status.code() != Some(0) {
                    failures.push(format!("file write {i}: {}", stderr(&out)));
                }
            }
            failures
        }));
        let failures: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    });
    // Every command ran exactly once, and every one is in the history.
    let (_, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--",
        "wc",
        "-l",
        "/workspace/appended",
    ]);
    let lines: usize = v["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines, clients * per_client);
    let (_, logs) = p.json(&["workspace", "logs", &id]);
    let entries = logs["entries"]
        .as_array()
        .or_else(|| logs["logs"].as_array())
        .unwrap_or_else(|| panic!("no log entries in {logs}"));
    let seqs: std::collections::BTreeSet<u64> = entries
        .iter()
        .map(|e| {
            e["sequence"]
                .as_u64()
                .or_else(|| e["seq"].as_u64())
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len(), entries.len(), "sequence numbers are unique");
    assert_eq!(entries.len(), clients * per_client + 1);
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_errors_from_the_library_exit_2() {
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--mem",
        "0",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert_eq!(v["error"]["kind"], "invalid_request");
    let (out, v) = p.json(&["workspace", "list", "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("bogus") && msg.contains("running"), "{msg}");
    let (out, v) = p.json(&["workspace", "list", "--state", "stopped"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
}

#[test]
fn a_missing_seed_path_is_said_once() {
    let p = TestPyro::new();
    let missing = p.dir.path().join("no-such-seed");
    let out = p.run(&[
        "workspace",
        "create",
        "debian:12",
        "--isolation",
        "container",
        "--seed-path",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let first = err.lines().next().unwrap();
    assert!(first.contains("does not exist"), "{err}");
    assert_eq!(first.matches("no-such-seed").count(), 1, "{err}");
    assert!(!err.contains("os error 2): No such file"), "{err}");
}

#[test]
fn workspace_messages_point_the_right_way() {
    require_containers!();
    let p = TestPyro::new();
    let id = create(&p, &["--name", "demo"]);

    // A taken name: the hint names what exists, not a --force flag that does not.
    let (out, v) = p.json(&[
        "workspace",
        "create",
        "debian:12",
        "--isolation",
        "container",
        "--name",
        "demo",
    ]);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["error"]["kind"], "already_exists");
    let hint = v["error"]["hint"].as_str().unwrap();
    assert!(
        !hint.contains("--force") && hint.contains("--name"),
        "{hint}"
    );

    // sync push of a single file puts that file in place.
    let file = p.dir.path().join("notes.txt");
    std::fs::write(&file, "pushed\n").unwrap();
    let (out, v) = p.json(&["workspace", "sync", "push", &id, file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    let (_, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--",
        "cat",
        "/workspace/notes.txt",
    ]);
    assert_eq!(v["stdout"], "pushed\n", "{v}");

    // Errors from the guest read as what happened, without internal words.
    let (out, v) = p.json(&["workspace", "file", "read", &id, "missing.txt"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("guest agent refused"), "{msg}");
    assert!(msg.contains("missing.txt"), "{msg}");

    // A readiness file anywhere in the guest works at once, not after the 30 s timeout.
    let t = std::time::Instant::now();
    let (out, v) = p.json(&[
        "workspace",
        "service",
        "start",
        &id,
        "web",
        "--ready-file",
        "/tmp/ready",
        "--ready-timeout",
        "20",
        "--",
        "sh",
        "-c",
        "touch /tmp/ready; exec sleep 300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["state"], "ready", "{v}");
    assert!(t.elapsed() < std::time::Duration::from_secs(15));

    // service status without --json says something on stdout.
    let out = p.run(&["workspace", "service", "status", &id, "web"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("web [ready] pid="), "{text}");
    assert!(text.contains("$ "), "{text}");
}

#[test]
fn doctor_finds_firecracker_where_setup_installs_it() {
    let p = TestPyro::new();
    let home = p.dir.path().join("fakehome");
    let fc_dir = home.join(".cache/pyro/firecracker");
    std::fs::create_dir_all(&fc_dir).unwrap();
    for (name, version) in [
        ("firecracker", "Firecracker v1.12.1"),
        ("jailer", "Jailer v1.12.1"),
    ] {
        let path = fc_dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = p
        .cmd(&["doctor", "--json"])
        .env("HOME", &home)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env_remove("PYRO_FIRECRACKER")
        .env_remove("PYRO_JAILER")
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["firecracker"]["found"], true, "{}", v["firecracker"]);
    assert_eq!(
        v["firecracker"]["path"],
        fc_dir.join("firecracker").display().to_string()
    );
    assert_eq!(v["jailer"]["found"], true, "{}", v["jailer"]);
}
