//! Faults: a `PYRO_HOME` and an export target on tiny tmpfs mounts, so that creating with a
//! seed, snapshotting and exporting hit ENOSPC; a guest that fills its disk; a damaged state
//! database. Each must fail cleanly: a clear error, nothing half-written, and the workspace
//! still usable.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::{require_containers, stderr, TestPyro};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", stderr(&out));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A pyro whose `PYRO_HOME` is on a tmpfs of `size` (the environment cache stays shared).
fn pyro_on_tmpfs(size: &str) -> (Tmpfs, TestPyro) {
    let fs = Tmpfs::new(size);
    let mut p = TestPyro::new();
    p.home = fs.path().join("home");
    (fs, p)
}

/// A host directory holding `mib` MiB of incompressible data.
fn big_seed(p: &TestPyro, mib: usize) -> PathBuf {
    let dir = p.dir.path().join("big-seed");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", &format!("count={mib}")])
        .arg(format!("of={}", dir.join("blob").display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    dir
}

fn error_kind(v: &serde_json::Value) -> String {
    v["error"]["kind"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_seed_larger_than_the_home_fails_cleanly() {
    require_containers!();
    let (_fs, p) = pyro_on_tmpfs("24m");
    let seed = big_seed(&p, 40);
    let (out, v) = p.try_create_workspace(&["--seed-path", seed.to_str().unwrap()]);
    assert!(!out.status.success(), "created on a full disk: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("No space left") || message.contains("space"),
        "the error does not say the disk is full: {v}"
    );
    let (_, list) = p.json(&["workspace", "list"]);
    assert_eq!(list["count"], 0, "a half-made workspace is listed: {list}");
    let left = p.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The space is back: a workspace without the seed fits.
    let (id, _) = p.create_workspace(&[]);
    let out = p.run(&["workspace", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_full_disk_fails_snapshots_and_exports_cleanly_and_the_workspace_goes_on() {
    require_containers!();
    let (_fs, p) = pyro_on_tmpfs("48m");
    let (id, _) = p.create_workspace(&[]);
    // The guest fills its disk (the container's writable layer lives in PYRO_HOME): its own
    // write fails, and nothing else does.
    let (out, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "dd if=/dev/urandom of=/workspace/blob bs=1M count=200 2>&1; ls -l /workspace/blob",
    ]);
    assert!(out.status.code().is_some(), "{v}");
    let size = v["stdout"].as_str().unwrap_or_default().to_string();
    assert!(
        size.contains("No space left"),
        "the guest's write did not hit the full disk: {v}"
    );
    // A snapshot needs room in PYRO_HOME too: refused cleanly, nothing listed.
    let (out, v) = p.json(&["workspace", "snapshot", "create", &id, "full"]);
    assert!(!out.status.success(), "a snapshot on a full disk: {v}");
    assert!(!error_kind(&v).is_empty(), "{v}");
    let (_, snaps) = p.json(&["workspace", "snapshot", "list", &id]);
    let names: Vec<_> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["baseline"],
        "a half-made snapshot is listed: {snaps}"
    );
    // An export to a disk too small for it: refused, and nothing of it left there.
    let target = Tmpfs::new("4m");
    let output = target.path().join("out");
    let (out, v) = p.json(&[
        "workspace",
        "export",
        &id,
        "/workspace",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "an export onto a full disk: {v}");
    let left: Vec<_> = std::fs::read_dir(target.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "a half-written export was left: {left:?}");
    // The workspace goes on once the guest frees its space.
    let out = p.run(&["workspace", "exec", &id, "--", "rm", "/workspace/blob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["workspace", "snapshot", "create", &id, "after"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["workspace", "exec", &id, "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["workspace", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = p.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_damaged_state_database_is_a_clear_error() {
    let p = TestPyro::new();
    std::fs::create_dir_all(&p.home).unwrap();
    std::fs::write(
        p.home.join("pyro.db"),
        b"this is not a database, it was cut short",
    )
    .unwrap();
    let (out, v) = p.json(&["workspace", "list"]);
    assert_eq!(out.status.code(), Some(1), "{v}\n{}", stderr(&out));
    assert_eq!(error_kind(&v), "state_error", "{v}");
    let hint = v["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("pyro.db"), "no way out: {v}");
}

#[test]
fn a_workspace_whose_files_were_deleted_is_refused_and_reset_rebuilds_it() {
    require_containers!();
    let p = TestPyro::new();
    let (id, _) = p.create_workspace(&[]);
    let out = p.run(&["workspace", "stop", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(p.home.join("sandboxes").join(&id)).unwrap();
    // Starting would give an empty /workspace without a word: refused, with the way out.
    let (out, v) = p.json(&["workspace", "start", &id]);
    assert!(!out.status.success(), "started without its files: {v}");
    assert_eq!(error_kind(&v), "workspace_damaged", "{v}\n{}", stderr(&out));
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("reset"),
        "{v}"
    );
    let (_, status) = p.json(&["workspace", "status", &id]);
    assert_eq!(status["state"], "broken", "{status}");
    // Its snapshots live apart from the lost files: reset rebuilds it from the baseline.
    let out = p.run(&["workspace", "reset", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["workspace", "exec", &id, "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["workspace", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = p.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_environment_build_onto_a_full_cache_fails_cleanly() {
    require_containers!();
    let cache = Tmpfs::new("64m");
    let mut p = TestPyro::new();
    p.cache = cache.path().to_path_buf();
    let (out, v) = p.json(&["env", "build", "debian:12-base"]);
    // pyro itself reports the failure (mmdebstrap signals its whole process group when it
    // fails; pyro used to die with it, by SIGHUP, leaving its scratch files).
    assert_eq!(out.status.code(), Some(1), "{v}\n{}", stderr(&out));
    assert_eq!(error_kind(&v), "build_failed", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("No space left"), "{v}");
    // Nothing half-built is installed or left: only the build's log and its lock file.
    let (_, list) = p.json(&["env", "list"]);
    let base = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "debian:12-base")
        .cloned()
        .unwrap();
    assert_eq!(base["installed"], false, "{base}");
    let mut left = Vec::new();
    for top in std::fs::read_dir(cache.path()).unwrap().flatten() {
        let name = top.file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "logs" | "locks" => {}
            "tmp" => left.extend(
                std::fs::read_dir(top.path())
                    .unwrap()
                    .flatten()
                    .map(|e| e.path().display().to_string()),
            ),
            _ => left.push(name),
        }
    }
    assert!(
        left.is_empty(),
        "half-built files left in the cache: {left:?}"
    );
}
