//! The CLI surface without sandboxes: help, doctor, the environment catalog, and errors.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::{stdout, TestPyro};

#[test]
fn help_lists_the_commands() {
    let p = TestPyro::new();
    let out = p.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    for cmd in ["run", "env", "doctor", "gc", "bench"] {
        assert!(stdout(&out).contains(cmd), "{cmd} missing from --help");
    }
    let out = p.run(&["run", "--help"]);
    for flag in ["--isolation", "--vcpu", "--mem", "--timeout", "--json"] {
        assert!(
            stdout(&out).contains(flag),
            "{flag} missing from run --help"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let p = TestPyro::new();
    assert_eq!(p.run(&["run"]).status.code(), Some(2));
    assert_eq!(p.run(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn doctor_reports_levels_honestly() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["doctor"]);
    let levels = v["isolation_levels"].as_array().unwrap();
    let level = |name: &str| levels.iter().find(|l| l["level"] == name).unwrap().clone();
    // Each VM level is either usable (served by a named backend) or says why not.
    for vm in ["microvm", "vm-emulated"] {
        let l = level(vm);
        if l["usable"] == true {
            assert_eq!(l["reason"], serde_json::Value::Null, "{l}");
            assert!(l["backend"].is_string(), "{l}");
        } else {
            assert!(!l["reason"].as_str().unwrap().is_empty(), "{l}");
        }
    }
    // microvm needs KVM with hardware virtualization; doctor says whether the CPU has it.
    if v["kvm"]["hardware_virtualization"] == false {
        assert_eq!(level("microvm")["usable"], false);
    }
    assert_eq!(v["kvm"]["test_boot"], serde_json::Value::Null);
    assert!(v["kvm"]["boot_note"].is_string());
    let container_ok = level("container")["usable"] == true;
    assert_eq!(
        container_ok,
        util::container_prerequisites().is_none(),
        "{v}"
    );
    assert_eq!(out.status.code(), Some(if container_ok { 0 } else { 1 }));
    assert_eq!(v["ok"], container_ok);
    for key in [
        "runc",
        "firecracker",
        "jailer",
        "qemu",
        "mmdebstrap",
        "mkfs_ext4",
        "cgroup",
        "networking",
        "agent",
        "dirs",
    ] {
        assert!(!v[key].is_null(), "{key} missing");
    }
}

#[test]
fn doctor_exits_nonzero_when_no_level_is_usable() {
    let p = TestPyro::new();
    let out = p
        .cmd(&["doctor"])
        .env("PYRO_RUNC", "/nonexistent/runc")
        // An explicit kernel that does not exist makes both VM levels unusable too.
        .env("PYRO_KERNEL", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("container    unavailable: runc was not found"),
        "{text}"
    );
    assert!(text.contains("Result: FAIL"));
    // And a run asking for the container level says why, naming no usable level.
    let (out, v) = {
        let o = p
            .cmd(&[
                "run",
                "debian:12",
                "--isolation",
                "container",
                "--json",
                "--",
                "true",
            ])
            .env("PYRO_RUNC", "/nonexistent/runc")
            .env("PYRO_KERNEL", "/nonexistent/vmlinux")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o, v)
    };
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "isolation_unavailable");
    assert!(
        v["error"]["hint"].as_str().unwrap().contains("pyro doctor"),
        "{v}"
    );
}

#[test]
fn env_list_shows_the_catalog() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["env", "list"]);
    assert_eq!(out.status.code(), Some(0));
    let envs = v["environments"].as_array().unwrap();
    let names: Vec<&str> = envs.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["debian:12", "debian:12-base", "debian:12-build"]);
    for e in envs {
        assert!(e["installed"].is_boolean());
        assert_eq!(
            e["installed"].as_bool().unwrap(),
            e["digest"].is_string(),
            "{e}"
        );
        assert_eq!(e["recipe_hash"].as_str().unwrap().len(), 64);
    }
    let human = stdout(&p.run(&["env", "list"]));
    assert!(human.contains("debian:12-build"));
}

#[test]
fn env_inspect_unknown_is_a_clear_error() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["env", "inspect", "ubuntu:24.04"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "unknown_environment");
    assert!(v["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("debian:12-base"));
    let out = p.run(&["env", "inspect", "ubuntu:24.04"]);
    let err = util::stderr(&out);
    assert!(
        err.starts_with("error: unknown environment \"ubuntu:24.04\"\nhint: "),
        "{err}"
    );
}

#[test]
fn env_inspect_describes_the_recipe() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["env", "inspect", "debian:12-build"]);
    assert_eq!(out.status.code(), Some(0));
    let pkgs: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for want in ["git", "build-essential", "pkg-config", "python3", "curl"] {
        assert!(pkgs.contains(&want), "{want} missing: {v}");
    }
    assert_eq!(v["suite"], "bookworm");
}

#[test]
fn runtime_install_refuses_binaries_that_are_not_the_pinned_build() {
    let p = TestPyro::new();
    let src = p.dir.path().join("fake-release");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("firecracker"), b"#!/bin/sh\n").unwrap();
    std::fs::write(src.join("jailer"), b"#!/bin/sh\n").unwrap();
    let home = p.dir.path().join("userhome");
    let out = p
        .cmd(&[
            "runtime",
            "install",
            "--from",
            src.to_str().unwrap(),
            "--json",
        ])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the pinned"),
        "{v}"
    );
    assert!(!home.join(".cache/pyro/firecracker/firecracker").exists());
}
