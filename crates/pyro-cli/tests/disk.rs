//! `pyro workspace disk list|read|export`: a stopped workspace's disk read offline, through the
//! real `pyro` binary, on the container level and on vm-emulated. The guest deletes a file of
//! its environment (a whiteout), replaces a directory of it (an opaque directory), and plants
//! links that point out of its root; offline, the host must see the tree the guest saw, resolve
//! links inside the guest's root only, refuse a running workspace, and leave it stopped and
//! startable.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use serde_json::Value;
use util::{container_tests_enabled, stderr, vm_tests_enabled, TestPyro};

/// What the guest changes, run in /workspace.
const CHANGES: &str = r#"set -e
mkdir -p src && printf 'print(1)\n' > src/app.py
rm /etc/issue
rm -rf /etc/apt && mkdir /etc/apt && echo fresh > /etc/apt/only.txt
ln -s ../../../../../etc/os-release climb
ln -s /etc/hostname abs
ln -s src/app.py main
"#;

fn error_kind(v: &Value) -> String {
    v["error"]["kind"].as_str().unwrap_or_default().to_string()
}

fn story(isolation: &str) {
    let p = TestPyro::new();
    let (out, v) = p.json(&["workspace", "create", "debian:12", "--isolation", isolation]);
    assert_eq!(out.status.code(), Some(0), "create: {v}\n{}", stderr(&out));
    let id = v["workspace_id"].as_str().unwrap().to_string();
    let out = p.run(&["workspace", "exec", &id, "--", CHANGES]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Running: refused, with the way out, and nothing touched.
    let (out, v) = p.json(&["workspace", "disk", "list", &id]);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(error_kind(&v), "workspace_not_stopped", "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("pyro workspace stop"),
        "{v}"
    );
    let out = p.run(&["workspace", "stop", &id]);
    assert!(out.status.success(), "{}", stderr(&out));

    let (out, v) = p.json(&["workspace", "disk", "list", &id, "--recursive"]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["path"], "/workspace", "{v}");
    let entries = v["entries"].as_array().unwrap();
    let find = |path: &str| entries.iter().find(|e| e["path"] == path).cloned();
    assert_eq!(find("src/app.py").unwrap()["kind"], "file", "{v}");
    assert_eq!(find("src/app.py").unwrap()["size"], 9, "{v}");
    assert_eq!(find("main").unwrap()["link_target"], "src/app.py", "{v}");
    assert_eq!(find("abs").unwrap()["link_target"], "/etc/hostname", "{v}");
    assert_eq!(find("src").unwrap()["kind"], "dir", "{v}");

    // Links resolve inside the guest's root: the host's /etc is never read.
    let (out, v) = p.json(&["workspace", "disk", "read", &id, "main"]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["content"], "print(1)\n", "{v}");
    assert_eq!(v["path"], "/workspace/main", "{v}");
    let (_, v) = p.json(&["workspace", "disk", "read", &id, "climb"]);
    assert!(
        v["content"]
            .as_str()
            .unwrap_or_default()
            .contains("bookworm"),
        "{v}"
    );

    // The environment's files, as the guest left them: a deleted file is gone, a replaced
    // directory holds only what the guest put there.
    let (out, v) = p.json(&["workspace", "disk", "read", &id, "/etc/issue"]);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(error_kind(&v), "not_found", "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("disk list"),
        "{v}"
    );
    let (_, v) = p.json(&["workspace", "disk", "list", &id, "/etc/apt"]);
    let names: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["only.txt"], "{v}");
    let (_, v) = p.json(&["workspace", "disk", "read", &id, "/etc/debian_version"]);
    assert!(
        v["content"].as_str().unwrap_or_default().starts_with("12."),
        "{v}"
    );
    let (_, v) = p.json(&[
        "workspace",
        "disk",
        "read",
        &id,
        "/etc/os-release",
        "--max-bytes",
        "5",
    ]);
    assert_eq!(
        (v["content"].as_str(), v["truncated"].as_bool()),
        (Some("PRETT"), Some(true))
    );
    let (out, v) = p.json(&["workspace", "disk", "read", &id, "src"]);
    assert_eq!(error_kind(&v), "invalid_request", "{v}\n{}", stderr(&out));

    // Human output as the seed's: the content, then a summary on stderr.
    let out = p.run(&["workspace", "disk", "read", &id, "src/app.py"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "print(1)\n");
    assert!(
        stderr(&out).contains("[workspace-disk-read]"),
        "{}",
        stderr(&out)
    );

    // Export: an ext4 image of the writable layer, owned by the caller, never over a file
    // without --force.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.ext4");
    let (out, v) = p.json(&[
        "workspace",
        "disk",
        "export",
        &id,
        "--output",
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["disk_format"], "ext4", "{v}");
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        v["bytes_written"].as_u64().unwrap()
    );
    let layer = v["layer_dir"].as_str().unwrap().to_string();
    let listing = std::process::Command::new("debugfs")
        .args([
            "-R",
            &format!("ls -p {}/workspace/src", layer.trim_end_matches('/')),
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("/app.py/9/"),
        "the image lacks the workspace's file: {}",
        String::from_utf8_lossy(&listing.stdout)
    );
    let (out, v) = p.json(&[
        "workspace",
        "disk",
        "export",
        &id,
        "--output",
        image.to_str().unwrap(),
    ]);
    assert_eq!(error_kind(&v), "already_exists", "{v}\n{}", stderr(&out));

    // Offline means offline: still stopped, and it starts with its files.
    let (_, v) = p.json(&["workspace", "status", &id]);
    assert_eq!(v["state"], "stopped", "{v}");
    let out = p.run(&["workspace", "start", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--",
        "cat main; cat /etc/apt/only.txt",
    ]);
    assert_eq!(v["stdout"], "print(1)\nfresh\n", "{v}");
    let out = p.run(&["workspace", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_stopped_container_workspaces_disk_is_read_offline() {
    if !container_tests_enabled(module_path!()) {
        return;
    }
    story("container");
}

#[test]
fn a_stopped_vm_workspaces_disk_is_read_offline() {
    if !vm_tests_enabled(module_path!()) {
        return;
    }
    story("vm-emulated");
}

#[test]
fn an_unknown_workspace_is_not_found() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["workspace", "disk", "list", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(error_kind(&v), "workspace_not_found", "{v}");
}
