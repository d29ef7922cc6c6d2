//! End-to-end `pyro workspace …` on the container level, through the real `pyro` binary: a
//! real debian:12 sandbox kept alive across calls, seeded from a real git repository, patched
//! with real `git diff` output, snapshotted, reset, exported and deleted; hostile paths and
//! archives; two pyro processes at once; pyro killed mid-call; a 10,000-file diff. Container
//! tests need root and runc; without them each says why it skipped (and fails instead under
//! PYRO_TEST_CONTAINER=1, as in CI).

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{host_traces, stderr, stdout, TestPyro};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pyro workspace create debian:12 --isolation container --json EXTRA…`; returns the id.
fn create(p: &TestPyro, extra: &[&str]) -> (String, Value) {
    p.create_workspace(extra)
}

/// `pyro workspace SUB… --json`, asserting success.
fn ok(p: &TestPyro, args: &[&str]) -> Value {
    let mut a = vec!["workspace"];
    a.extend_from_slice(args);
    let (out, v) = p.json(&a);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pyro {a:?} failed: {v}\nstderr: {}",
        stderr(&out)
    );
    v
}

/// `pyro workspace SUB… --json`, asserting failure; returns the error kind and the envelope.
fn fails(p: &TestPyro, args: &[&str]) -> (String, Value) {
    let mut a = vec!["workspace"];
    a.extend_from_slice(args);
    let (out, v) = p.json(&a);
    let kind = v["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no error envelope: {v}"))
        .to_string();
    // A request refused as malformed is a usage error (2); anything else exits 1.
    let code = if kind == "invalid_request" { 2 } else { 1 };
    assert_eq!(
        out.status.code(),
        Some(code),
        "pyro {a:?} should have failed with {code}: {v}\nstderr: {}",
        stderr(&out)
    );
    (kind, v)
}

/// Runs `sh -c CMD` in the workspace; returns the exec result (any exit code).
fn sh(p: &TestPyro, id: &str, cmd: &str) -> Value {
    let (out, v) = p.json(&["workspace", "exec", id, "--", "sh", "-c", cmd]);
    assert!(
        v["exit_code"].is_i64(),
        "exec gave no result: {v}\nstderr: {}",
        stderr(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(v["exit_code"].as_i64().unwrap().clamp(0, 255) as i32)
    );
    v
}

/// Runs `sh -c CMD` in the workspace, asserting exit 0; returns stdout.
fn sh_ok(p: &TestPyro, id: &str, cmd: &str) -> String {
    let v = sh(p, id, cmd);
    assert_eq!(v["exit_code"], 0, "`{cmd}` failed: {v}");
    v["stdout"].as_str().unwrap().to_string()
}

/// `file read --content-only`: the exact bytes.
fn read(p: &TestPyro, id: &str, path: &str) -> Vec<u8> {
    let out = p.run(&["workspace", "file", "read", id, path, "--content-only"]);
    assert_eq!(out.status.code(), Some(0), "read {path}: {}", stderr(&out));
    out.stdout
}

fn read_str(p: &TestPyro, id: &str, path: &str) -> String {
    String::from_utf8(read(p, id, path)).unwrap()
}

/// Every path under /workspace with its kind, size and link target (a listing to compare).
fn tree(p: &TestPyro, id: &str) -> BTreeSet<String> {
    let v = ok(p, &["file", "list", id, "/workspace", "--recursive"]);
    assert_eq!(v["truncated"], false);
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let size = if e["kind"] == "dir" {
                0
            } else {
                e["size"].as_u64().unwrap()
            };
            format!(
                "{} {} {} {}",
                e["path"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                size,
                e["link_target"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Names of the processes in the sandbox (debian:12 has no procps: read /proc).
fn processes(p: &TestPyro, id: &str) -> Vec<String> {
    sh_ok(p, id, "cat /proc/[0-9]*/comm 2>/dev/null | sort")
        .lines()
        .map(str::to_string)
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Pyro Test",
            "-c",
            "user.email=test@pyro.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn python(script: &str, args: &[&Path]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn entries_by_status(diff: &Value) -> BTreeSet<(String, String)> {
    diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn assert_no_traces(p: &TestPyro, id: &str) {
    assert_eq!(
        host_traces(id),
        Vec::<String>::new(),
        "workspace {id} left traces"
    );
    assert_eq!(p.leftovers(), Vec::<String>::new());
    assert!(
        !p.home.join("workspaces").join(id).exists(),
        "the workspace's snapshot directory is still there"
    );
}

fn delete(p: &TestPyro, id: &str) {
    let v = ok(p, &["delete", id]);
    assert_eq!(v["deleted"], true, "{v}");
    assert_no_traces(p, id);
}

/// Deletes every workspace of the installation when a test panics, so that a failing test
/// leaves no running sandbox or mount behind.
struct Cleanup<'a>(&'a TestPyro);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let out = self.0.run(&["workspace", "list", "--json"]);
        let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
            return;
        };
        for w in v["workspaces"].as_array().into_iter().flatten() {
            if let Some(id) = w["workspace_id"].as_str() {
                let _ = self.0.run(&["workspace", "delete", id]);
            }
        }
        let _ = self.0.run(&["gc"]);
    }
}

fn sigkill(child: &std::process::Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

fn list_ids(p: &TestPyro, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["list"];
    a.extend_from_slice(extra);
    let v = ok(p, &a);
    let ids: Vec<String> = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workspace_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(v["count"], ids.len(), "{v}");
    ids
}

// ---------------------------------------------------------------------------------------------
// 1. The whole story
// ---------------------------------------------------------------------------------------------

#[test]
fn a_git_repo_is_seeded_patched_snapshotted_reset_exported_and_deleted() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();

    // A small git repository on the host.
    let repo = host.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("a.txt"), "one\ntwo\nthree\nfour\nfive\n").unwrap();
    std::fs::write(repo.join("del.txt"), "bye\n").unwrap();
    std::fs::write(repo.join("nonl.txt"), "no newline").unwrap();
    std::fs::create_dir(repo.join("src")).unwrap();
    std::fs::write(repo.join("src/lib.sh"), "echo lib\n").unwrap();
    std::fs::write(repo.join("src/util.sh"), "echo util\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial commit"]);

    let (id, v) = create(&p, &["--seed-path", repo.to_str().unwrap()]);
    assert_eq!(v["seed"]["mode"], "directory", "{v}");
    let baseline_tree = tree(&p, &id);
    assert!(
        baseline_tree.iter().any(|l| l.starts_with(".git/HEAD ")),
        "{baseline_tree:?}"
    );

    // git works inside on the seeded .git.
    let log = sh_ok(&p, &id, "git log --oneline");
    assert!(log.trim_end().ends_with("initial commit"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    // --no-optional-locks: `git status` would otherwise refresh .git/index, which diff would
    // (rightly) report.
    let status = sh_ok(&p, &id, "git --no-optional-locks status --porcelain");
    assert_eq!(status, "", "a freshly seeded repository is clean");

    // A file written through pyro.
    let v = ok(
        &p,
        &[
            "file",
            "write",
            &id,
            "notes/todo.txt",
            "--text",
            "remember\n",
        ],
    );
    assert_eq!(v["bytes_written"], 9, "{v}");
    assert_eq!(read_str(&p, &id, "notes/todo.txt"), "remember\n");
    assert_eq!(read_str(&p, &id, "/workspace/notes/todo.txt"), "remember\n");

    // A patch made on the host by real git: modify, add, delete, and no trailing newline.
    std::fs::write(repo.join("a.txt"), "one\nTWO\nthree\nfour\nfive\nsix\n").unwrap();
    std::fs::write(repo.join("new.txt"), "brand new\n").unwrap();
    std::fs::remove_file(repo.join("del.txt")).unwrap();
    std::fs::write(repo.join("nonl.txt"), "still no newline").unwrap();
    git(&repo, &["add", "-A"]);
    let patch = git(&repo, &["diff", "--cached"]);
    assert!(patch.contains("\\ No newline at end of file"), "{patch}");
    let patch_file = host.path().join("change.patch");
    std::fs::write(&patch_file, &patch).unwrap();
    let v = ok(
        &p,
        &[
            "patch",
            "apply",
            &id,
            "--patch-file",
            patch_file.to_str().unwrap(),
        ],
    );
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["summary"]["total"], 4, "{v}");
    assert_eq!(v["summary"]["added"], 1, "{v}");
    assert_eq!(v["summary"]["modified"], 2, "{v}");
    assert_eq!(v["summary"]["deleted"], 1, "{v}");
    assert_eq!(
        entries_by_status(&v),
        set(&[
            ("modified", "a.txt"),
            ("added", "new.txt"),
            ("deleted", "del.txt"),
            ("modified", "nonl.txt"),
        ])
    );
    assert_eq!(
        read_str(&p, &id, "a.txt"),
        "one\nTWO\nthree\nfour\nfive\nsix\n"
    );
    assert_eq!(read_str(&p, &id, "new.txt"), "brand new\n");
    assert_eq!(read_str(&p, &id, "nonl.txt"), "still no newline");
    let (kind, v) = fails(&p, &["file", "read", &id, "del.txt"]);
    assert_eq!(kind, "not_found", "{v}");
    // git inside sees exactly the host's change (plus the file written through pyro).
    let status = sh_ok(&p, &id, "git --no-optional-locks status --porcelain");
    assert_eq!(
        status, " M a.txt\n D del.txt\n M nonl.txt\n?? new.txt\n?? notes/\n",
        "{status}"
    );

    // diff against the baseline.
    let d = ok(&p, &["diff", &id]);
    assert_eq!(d["changed"], true, "{d}");
    assert_eq!(d["truncated"], false);
    assert_eq!(
        entries_by_status(&d),
        set(&[
            ("modified", "a.txt"),
            ("deleted", "del.txt"),
            ("added", "new.txt"),
            ("modified", "nonl.txt"),
            ("added", "notes/todo.txt"),
        ]),
        "{d}"
    );
    assert_eq!(d["summary"]["total"], 5, "{d}");
    assert_eq!(d["summary"]["added"], 2);
    assert_eq!(d["summary"]["modified"], 2);
    assert_eq!(d["summary"]["deleted"], 1);
    let paths: Vec<&str> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries are sorted");
    let text = d["patch"].as_str().unwrap();
    for hunk in [
        "diff --git a/a.txt b/a.txt",
        "-two\n+TWO\n",
        "+six\n",
        "diff --git a/del.txt b/del.txt",
        "-bye\n",
        "+++ b/new.txt",
        "+brand new\n",
        "-no newline\n\\ No newline at end of file\n+still no newline\n\\ No newline at end of file\n",
        "+remember\n",
    ] {
        assert!(text.contains(hunk), "diff patch lacks {hunk:?}:\n{text}");
    }

    // Snapshot s1, then break things: files and a background process.
    let v = ok(&p, &["snapshot", "create", &id, "s1"]);
    assert_eq!(v["snapshot"]["name"], "s1", "{v}");
    let s1_tree = tree(&p, &id);
    let s1_a = read(&p, &id, "a.txt");
    let v = ok(&p, &["snapshot", "list", &id]);
    let names: BTreeSet<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["baseline", "s1"]), "{v}");

    sh_ok(
        &p,
        &id,
        "rm -rf a.txt new.txt .git src notes && echo junk > junk.txt && chmod +x nonl.txt",
    );
    let bg = sh(
        &p,
        &id,
        "setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null & echo started",
    );
    assert_eq!(bg["exit_code"], 0, "{bg}");
    assert!(
        processes(&p, &id).iter().any(|c| c == "sleep"),
        "the background sleep should be running"
    );
    assert_ne!(tree(&p, &id), s1_tree);

    let v = ok(&p, &["reset", &id, "--snapshot", "s1"]);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["reset_count"], 1, "{v}");
    assert_eq!(
        tree(&p, &id),
        s1_tree,
        "after reset to s1 the tree is exactly s1's"
    );
    assert_eq!(read(&p, &id, "a.txt"), s1_a);
    assert_eq!(read_str(&p, &id, "notes/todo.txt"), "remember\n");
    let (kind, _) = fails(&p, &["file", "read", &id, "junk.txt"]);
    assert_eq!(kind, "not_found");
    let procs = processes(&p, &id);
    assert!(
        !procs.iter().any(|c| c == "sleep"),
        "processes survived the reset: {procs:?}"
    );
    let log = sh_ok(&p, &id, "git log --oneline");
    assert!(log.contains("initial commit"), "{log}");

    // Reset to the baseline: no changes at all.
    let v = ok(&p, &["reset", &id]);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["reset_count"], 2, "{v}");
    let d = ok(&p, &["diff", &id]);
    assert_eq!(d["changed"], false, "{d}");
    assert_eq!(d["entries"], serde_json::json!([]), "{d}");
    assert_eq!(d["summary"]["total"], 0);
    assert_eq!(d["patch"], "");
    assert_eq!(tree(&p, &id), baseline_tree);
    assert_eq!(read_str(&p, &id, "del.txt"), "bye\n");
    assert_eq!(read_str(&p, &id, "nonl.txt"), "no newline");

    // Export a directory, a file and an archive; never over an existing output unless forced.
    let out_dir = host.path().join("out-dir");
    let v = ok(
        &p,
        &["export", &id, ".", "--output", out_dir.to_str().unwrap()],
    );
    assert_eq!(v["artifact_type"], "directory", "{v}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("a.txt")).unwrap(),
        "one\ntwo\nthree\nfour\nfive\n"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("nonl.txt")).unwrap(),
        "no newline"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("src/lib.sh")).unwrap(),
        "echo lib\n"
    );
    assert!(out_dir.join(".git/HEAD").is_file());
    // The exported repository is the same repository.
    assert!(git(&out_dir, &["log", "--oneline"]).contains("initial commit"));

    let out_tar = host.path().join("src.tar");
    let v = ok(
        &p,
        &["export", &id, "src", "--output", out_tar.to_str().unwrap()],
    );
    assert_eq!(v["artifact_type"], "archive", "{v}");
    let listing = Command::new("tar")
        .arg("tvf")
        .arg(&out_tar)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('-') && l.ends_with("lib.sh")),
        "{listing}"
    );
    let tar_x = host.path().join("tar-x");
    std::fs::create_dir(&tar_x).unwrap();
    assert!(Command::new("tar")
        .arg("xf")
        .arg(&out_tar)
        .arg("-C")
        .arg(&tar_x)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::read_to_string(tar_x.join("lib.sh")).unwrap(),
        "echo lib\n"
    );

    // Never over an existing output unless forced. (Exporting a single file is covered by
    // `exporting_a_single_file_gives_that_file`.)
    let out_file = host.path().join("a-copy.txt");
    std::fs::write(&out_file, "host edit").unwrap();
    let tar_bytes = std::fs::read(&out_tar).unwrap();
    for out in [&out_dir, &out_file, &out_tar] {
        for what in ["a.txt", "src"] {
            let (kind, v) = fails(
                &p,
                &["export", &id, what, "--output", out.to_str().unwrap()],
            );
            assert_eq!(kind, "already_exists", "{v}");
        }
    }
    assert!(
        out_dir.join(".git/HEAD").is_file(),
        "a refused export must not touch the output"
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "host edit");
    assert_eq!(std::fs::read(&out_tar).unwrap(), tar_bytes);
    let v = ok(
        &p,
        &[
            "export",
            &id,
            "src",
            "--output",
            out_dir.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(v["artifact_type"], "directory", "{v}");
    assert!(out_dir.join("lib.sh").is_file());
    assert!(
        !out_dir.join(".git").exists(),
        "--force replaces the directory"
    );
    let v = ok(
        &p,
        &[
            "export",
            &id,
            "src",
            "--output",
            out_file.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(v["artifact_type"], "directory", "{v}");
    assert_eq!(
        std::fs::read_to_string(out_file.join("lib.sh")).unwrap(),
        "echo lib\n"
    );

    // Delete: nothing left anywhere.
    assert_eq!(list_ids(&p, &[]), vec![id.clone()]);
    delete(&p, &id);
    assert_eq!(list_ids(&p, &[]), Vec::<String>::new());
    let (kind, _) = fails(&p, &["status", &id]);
    assert_eq!(kind, "workspace_not_found");
}

#[test]
fn exporting_a_single_file_gives_that_file() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let (id, _) = create(&p, &[]);
    sh_ok(
        &p,
        &id,
        "mkdir -p sub && printf 'hello\\n' > sub/a.txt && chmod 750 sub/a.txt",
    );

    // To a host file: the file, with its content and permissions.
    let out_file = host.path().join("a-copy.txt");
    let v = ok(
        &p,
        &[
            "export",
            &id,
            "sub/a.txt",
            "--output",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(v["artifact_type"], "file", "{v}");
    assert_eq!(v["entry_count"], 1, "{v}");
    let m = std::fs::symlink_metadata(&out_file).unwrap();
    assert!(m.is_file(), "exported as {:?}", m.file_type());
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "hello\n");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777,
        0o750
    );

    // To a .tar: one regular file entry with the content, not a link.
    let out_tar = host.path().join("a.tar");
    let v = ok(
        &p,
        &[
            "export",
            &id,
            "sub/a.txt",
            "--output",
            out_tar.to_str().unwrap(),
        ],
    );
    assert_eq!(v["artifact_type"], "archive", "{v}");
    let listing = Command::new("tar")
        .arg("tvf")
        .arg(&out_tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        listing.starts_with("-rwxr-x---") && listing.trim_end().ends_with(" a.txt"),
        "the archive should hold the regular file a.txt: {listing}"
    );

    // A directory holding a single file is still a directory.
    let out_dir = host.path().join("sub-dir");
    let v = ok(
        &p,
        &["export", &id, "sub", "--output", out_dir.to_str().unwrap()],
    );
    assert_eq!(v["artifact_type"], "directory", "{v}");
    assert!(
        out_dir.is_dir(),
        "a one-file directory was exported as a file"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("a.txt")).unwrap(),
        "hello\n"
    );

    // Refused without --force, replaced with it.
    std::fs::write(&out_file, "host edit").unwrap();
    let (kind, v) = fails(
        &p,
        &[
            "export",
            &id,
            "sub/a.txt",
            "--output",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(kind, "already_exists", "{v}");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "host edit");
    ok(
        &p,
        &[
            "export",
            &id,
            "sub/a.txt",
            "--output",
            out_file.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "hello\n");
    delete(&p, &id);
}

// ---------------------------------------------------------------------------------------------
// 2. Lifecycle
// ---------------------------------------------------------------------------------------------

#[test]
fn names_labels_stop_start_and_logs() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, v) = create(
        &p,
        &["--name", "web-1", "--label", "team=a", "--label", "tier=x"],
    );
    assert_eq!(v["name"], "web-1");
    assert_eq!(v["labels"], serde_json::json!({"team": "a", "tier": "x"}));
    let (other, _) = create(&p, &["--label", "team=b"]);

    // Names are unique.
    let (kind, _) = fails(
        &p,
        &[
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "web-1",
        ],
    );
    assert_eq!(kind, "already_exists");

    assert_eq!(list_ids(&p, &["--label", "team=a"]), vec![id.clone()]);
    assert_eq!(list_ids(&p, &["--label", "team=b"]), vec![other.clone()]);
    assert_eq!(
        list_ids(&p, &["--label", "team=a", "--label", "tier=x"]),
        vec![id.clone()]
    );
    assert_eq!(
        list_ids(&p, &["--label", "team=a", "--label", "tier=y"]),
        Vec::<String>::new()
    );
    assert_eq!(list_ids(&p, &[]).len(), 2);

    let v = ok(&p, &["status", "web-1"]);
    assert_eq!(v["workspace_id"], id.as_str());
    assert_eq!(v["state"], "running");

    let v = ok(
        &p,
        &[
            "update",
            "web-1",
            "--label",
            "tier=y",
            "--label",
            "new=1",
            "--clear-label",
            "team",
            "--name",
            "web-2",
        ],
    );
    assert_eq!(v["name"], "web-2", "{v}");
    assert_eq!(
        v["labels"],
        serde_json::json!({"tier": "y", "new": "1"}),
        "{v}"
    );
    let (kind, _) = fails(&p, &["status", "web-1"]);
    assert_eq!(kind, "workspace_not_found");
    assert_eq!(ok(&p, &["status", "web-2"])["labels"]["tier"], "y");
    assert_eq!(list_ids(&p, &["--label", "team=a"]), Vec::<String>::new());
    assert_eq!(list_ids(&p, &["--label", "tier=y"]), vec![id.clone()]);

    // Commands by name, with their exit codes.
    assert_eq!(
        sh_ok(&p, "web-2", "echo kept > kept.txt && echo one"),
        "one\n"
    );
    assert_eq!(sh(&p, "web-2", "echo failing >&2; exit 3")["exit_code"], 3);
    let v = ok(&p, &["exec", &id, "--cwd", "/tmp", "--", "pwd"]);
    assert_eq!(v["stdout"], "/tmp\n");

    // Stopped: no exec, no files; the files are kept for the start.
    let v = ok(&p, &["stop", "web-2"]);
    assert_eq!(v["state"], "stopped", "{v}");
    let (kind, v) = fails(&p, &["exec", "web-2", "--", "true"]);
    assert_eq!(kind, "workspace_not_running", "{v}");
    let (kind, _) = fails(&p, &["file", "read", &id, "kept.txt"]);
    assert_eq!(kind, "workspace_not_running");
    assert_eq!(list_ids(&p, &["--state", "stopped"]), vec![id.clone()]);
    assert!(
        host_traces(&id).iter().all(|t| t != "runc state"),
        "{:?}",
        host_traces(&id)
    );

    let v = ok(&p, &["start", "web-2"]);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(read_str(&p, &id, "kept.txt"), "kept\n");
    assert_eq!(sh_ok(&p, &id, "cat kept.txt"), "kept\n");

    // The history, in order, with exit codes.
    let v = ok(&p, &["logs", "web-2"]);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(v["count"], entries.len());
    let got: Vec<(u64, String, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["command"].as_str().unwrap().to_string(),
                e["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "sh -c 'echo kept > kept.txt && echo one'".to_string(), 0),
            (2, "sh -c 'echo failing >&2; exit 3'".to_string(), 3),
            (3, "pwd".to_string(), 0),
            (4, "sh -c 'cat kept.txt'".to_string(), 0),
        ],
        "{v}"
    );
    assert_eq!(entries[2]["cwd"], "/tmp");
    assert_eq!(entries[0]["cwd"], "/workspace");
    assert_eq!(ok(&p, &["status", &id])["command_count"], 4);
    // The other workspace has its own history.
    assert_eq!(ok(&p, &["logs", &other])["count"], 0);

    // Human output names it too.
    let out = p.run(&["workspace", "status", "web-2"]);
    assert!(stdout(&out).contains("Name: web-2"), "{}", stdout(&out));

    // The first delete leaves the other workspace alone.
    let v = ok(&p, &["delete", "web-2"]);
    assert_eq!(v["deleted"], true, "{v}");
    assert_eq!(host_traces(&id), Vec::<String>::new());
    assert_eq!(list_ids(&p, &[]), vec![other.clone()]);
    assert_eq!(sh_ok(&p, &other, "echo still"), "still\n");
    delete(&p, &other);
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn paths_leading_out_of_the_workspace_are_refused() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    sh_ok(
        &p,
        &id,
        "ln -s /etc /workspace/etc-link && ln -s ../../etc/passwd rel-link && mkdir sub",
    );
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../etc/passwd",
        "/workspace/../etc/passwd",
        "etc-link/passwd",
        "/workspace/etc-link/passwd",
        "rel-link",
        "etc-link",
    ] {
        let (kind, v) = fails(&p, &["file", "read", &id, path]);
        assert_eq!(kind, "invalid_path", "reading {path}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().contains("root:x:0"),
            "{v}"
        );
    }
    for path in [
        "../escape.txt",
        "/etc/evil",
        "/tmp/evil",
        "etc-link/evil",
        "sub/../../evil",
    ] {
        let (kind, v) = fails(&p, &["file", "write", &id, path, "--text", "pwned"]);
        assert_eq!(kind, "invalid_path", "writing {path}: {v}");
    }
    let (kind, v) = fails(&p, &["file", "list", &id, "etc-link"]);
    assert_eq!(kind, "invalid_path", "{v}");
    let (kind, v) = fails(&p, &["file", "list", &id, "/"]);
    assert_eq!(kind, "invalid_path", "{v}");
    // Nothing was written anywhere, and the link targets are intact.
    assert_eq!(
        sh_ok(
            &p,
            &id,
            "for f in /escape.txt /etc/evil /tmp/evil /evil; do test -e $f && echo $f; done; \
             head -c 5 /etc/passwd; echo; readlink rel-link"
        ),
        "root:\n../../etc/passwd\n"
    );
    // Writing to a link that leads out either is refused or replaces the link itself: it never
    // writes through it.
    let (out, v) = p.json(&[
        "workspace",
        "file",
        "write",
        &id,
        "rel-link",
        "--text",
        "pwned",
    ]);
    if out.status.code() == Some(0) {
        assert_eq!(read_str(&p, &id, "rel-link"), "pwned", "{v}");
    } else {
        assert_eq!(v["error"]["kind"], "invalid_path", "{v}");
    }
    assert_eq!(sh_ok(&p, &id, "head -c 5 /etc/passwd"), "root:");
    // Inside paths still work, absolute or not.
    ok(
        &p,
        &[
            "file",
            "write",
            &id,
            "/workspace/sub/ok.txt",
            "--text",
            "ok",
        ],
    );
    assert_eq!(read_str(&p, &id, "sub/../sub/ok.txt"), "ok");
    delete(&p, &id);
}

#[test]
fn hostile_archives_are_refused_and_leave_the_workspace_unchanged() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let (id, _) = create(&p, &[]);
    sh_ok(
        &p,
        &id,
        "echo original > keep.txt && mkdir d && echo x > d/x",
    );
    let before = tree(&p, &id);

    let dotdot = host.path().join("dotdot.tar");
    let absolute = host.path().join("absolute.tar");
    let link_out = host.path().join("link-out.tar");
    let link_out_rel = host.path().join("link-out-rel.tar");
    let script = r#"
import io, sys, tarfile
def add_file(t, name, data=b"pwned\n"):
    i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
def add_link(t, name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)
with tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT) as t:
    add_file(t, "good.txt", b"good\n")
    add_file(t, "keep.txt", b"overwritten\n")
    add_file(t, "../escape.txt")
with tarfile.open(sys.argv[2], "w", format=tarfile.GNU_FORMAT) as t:
    add_file(t, "good.txt", b"good\n")
    add_file(t, "/tmp/abs-escape.txt")
with tarfile.open(sys.argv[3], "w", format=tarfile.GNU_FORMAT) as t:
    add_file(t, "good.txt", b"good\n")
    add_link(t, "etc-link", "/etc")
    add_file(t, "etc-link/evil")
with tarfile.open(sys.argv[4], "w", format=tarfile.GNU_FORMAT) as t:
    add_file(t, "good.txt", b"good\n")
    add_link(t, "up", "../..")
    add_file(t, "up/tmp/rel-evil")
"#;
    python(script, &[&dotdot, &absolute, &link_out, &link_out_rel]);

    for (tar, dest) in [
        (&dotdot, None),
        (&absolute, None),
        (&link_out, None),
        (&link_out_rel, None),
        (&dotdot, Some("d")),
        (&link_out, Some("/workspace/new-dir")),
    ] {
        let mut args = vec!["sync", "push", &id, tar.to_str().unwrap()];
        if let Some(d) = dest {
            args.extend(["--dest", d]);
        }
        let (kind, v) = fails(&p, &args);
        assert_eq!(kind, "unsafe_archive", "pushing {}: {v}", tar.display());
        assert_eq!(
            tree(&p, &id),
            before,
            "a refused {} changed the workspace",
            tar.display()
        );
    }
    assert_eq!(read_str(&p, &id, "keep.txt"), "original\n");
    assert_eq!(
        sh_ok(
            &p,
            &id,
            "for f in /escape.txt /workspace/../escape.txt /tmp/abs-escape.txt /etc/evil /tmp/rel-evil /rel-evil; do \
             test -e $f && echo $f; done; ls -a / | grep pyro-staging; true"
        ),
        ""
    );
    // Not even a half-unpacked staging directory is visible in /workspace.
    assert!(!before.iter().any(|l| l.contains("pyro-staging")));
    // keep.txt and d/x (directories are not diff entries).
    assert_eq!(ok(&p, &["diff", &id])["summary"]["total"], 2);

    // A seed is checked the same way.
    let (kind, v) = fails(
        &p,
        &[
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--seed-path",
            link_out.to_str().unwrap(),
        ],
    );
    assert_eq!(kind, "unsafe_archive", "{v}");
    assert_eq!(
        list_ids(&p, &[]),
        vec![id.clone()],
        "a refused seed leaves no workspace"
    );
    delete(&p, &id);
}

#[test]
fn good_directories_and_tarballs_sync_in_with_a_destination() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let (id, _) = create(&p, &[]);

    let dir = host.path().join("src");
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    std::fs::write(dir.join("top.txt"), "top\n").unwrap();
    std::fs::write(dir.join("nested/deeper/x.sh"), "#!/bin/sh\necho x\n").unwrap();
    std::fs::set_permissions(
        dir.join("nested/deeper/x.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("top.txt", dir.join("inner-link")).unwrap();
    let v = ok(
        &p,
        &[
            "sync",
            "push",
            &id,
            dir.to_str().unwrap(),
            "--dest",
            "pushed/dir",
        ],
    );
    assert_eq!(v["destination"], "pushed/dir", "{v}");
    assert!(v["entry_count"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(read_str(&p, &id, "pushed/dir/top.txt"), "top\n");
    assert_eq!(read_str(&p, &id, "pushed/dir/inner-link"), "top\n");
    assert_eq!(sh_ok(&p, &id, "pushed/dir/nested/deeper/x.sh"), "x\n");

    let tgz = host.path().join("bundle.tar.gz");
    python(
        r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as t:
    for name, data in [("bundle/a.txt", b"A\n"), ("bundle/b/c.txt", b"C\n")]:
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
"#,
        &[&tgz],
    );
    let v = ok(
        &p,
        &[
            "sync",
            "push",
            &id,
            tgz.to_str().unwrap(),
            "--dest",
            "/workspace/from-tgz",
        ],
    );
    assert_eq!(v["bytes_written"], 4, "{v}");
    assert_eq!(read_str(&p, &id, "from-tgz/bundle/a.txt"), "A\n");
    assert_eq!(read_str(&p, &id, "from-tgz/bundle/b/c.txt"), "C\n");

    // Pushing again merges (the earlier files stay) and overwrites what the archive carries.
    std::fs::write(dir.join("top.txt"), "top v2\n").unwrap();
    ok(
        &p,
        &[
            "sync",
            "push",
            &id,
            dir.to_str().unwrap(),
            "--dest",
            "pushed/dir",
        ],
    );
    assert_eq!(read_str(&p, &id, "pushed/dir/top.txt"), "top v2\n");
    assert_eq!(read_str(&p, &id, "from-tgz/bundle/a.txt"), "A\n");

    // A destination outside the workspace is refused.
    let (kind, v) = fails(
        &p,
        &["sync", "push", &id, tgz.to_str().unwrap(), "--dest", "/etc"],
    );
    assert_eq!(kind, "invalid_path", "{v}");
    let (kind, v) = fails(
        &p,
        &["sync", "push", &id, tgz.to_str().unwrap(), "--dest", "../x"],
    );
    assert_eq!(kind, "invalid_path", "{v}");
    delete(&p, &id);
}

#[test]
fn a_patch_that_does_not_apply_changes_nothing() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let (id, _) = create(&p, &[]);
    sh_ok(
        &p,
        &id,
        "printf 'one\\ntwo\\nthree\\n' > first.txt && printf 'alpha\\nbeta\\ngamma\\n' > second.txt",
    );
    let before = tree(&p, &id);
    // The first file's hunk applies; the second's context is wrong.
    let patch = "\
diff --git a/first.txt b/first.txt
--- a/first.txt
+++ b/first.txt
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
diff --git a/second.txt b/second.txt
--- a/second.txt
+++ b/second.txt
@@ -1,3 +1,3 @@
 alpha
-BETA-THAT-IS-NOT-THERE
+beta2
 gamma
diff --git a/third.txt b/third.txt
new file mode 100644
--- /dev/null
+++ b/third.txt
@@ -0,0 +1 @@
+third
";
    let pf = host.path().join("bad.patch");
    std::fs::write(&pf, patch).unwrap();
    let (kind, v) = fails(
        &p,
        &["patch", "apply", &id, "--patch-file", pf.to_str().unwrap()],
    );
    assert_eq!(kind, "patch_failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("second.txt"),
        "the error should name the file: {msg}"
    );
    assert!(
        msg.contains("hunk") || msg.contains("@@ -1,3 +1,3 @@"),
        "the error should name the hunk: {msg}"
    );
    assert_eq!(read_str(&p, &id, "first.txt"), "one\ntwo\nthree\n");
    assert_eq!(read_str(&p, &id, "second.txt"), "alpha\nbeta\ngamma\n");
    assert_eq!(tree(&p, &id), before, "all or nothing");

    // Garbage is not a patch either.
    let gf = host.path().join("garbage.patch");
    std::fs::write(&gf, "this is not a patch\n").unwrap();
    let out = p.run(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch-file",
        gf.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(tree(&p, &id), before);

    // The good part alone applies, read from stdin.
    let good: String = patch
        .split("diff --git a/second.txt")
        .next()
        .unwrap()
        .to_string();
    let mut child = p
        .cmd(&["workspace", "patch", "apply", &id, "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(good.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(read_str(&p, &id, "first.txt"), "one\nTWO\nthree\n");
    // Applying it twice fails: the context is gone.
    let gp = host.path().join("good.patch");
    std::fs::write(&gp, &good).unwrap();
    let (kind, _) = fails(
        &p,
        &["patch", "apply", &id, "--patch-file", gp.to_str().unwrap()],
    );
    assert_eq!(kind, "patch_failed");
    assert_eq!(read_str(&p, &id, "first.txt"), "one\nTWO\nthree\n");
    delete(&p, &id);
}

#[test]
fn big_files_are_read_capped_and_bad_names_and_ids_are_refused() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    sh_ok(&p, &id, "head -c 50000000 /dev/zero | tr '\\0' a > big.bin");
    let v = ok(&p, &["file", "read", &id, "big.bin"]);
    assert_eq!(
        v["truncated"],
        true,
        "{}",
        &v.to_string()[..300.min(v.to_string().len())]
    );
    assert_eq!(v["size_bytes"], 50_000_000u64);
    assert_eq!(v["max_bytes"], 65536);
    assert_eq!(v["content"].as_str().unwrap().len(), 65536);
    assert!(v["content"].as_str().unwrap().bytes().all(|b| b == b'a'));
    let v = ok(&p, &["file", "read", &id, "big.bin", "--max-bytes", "10"]);
    assert_eq!(v["content"], "aaaaaaaaaa");
    assert_eq!(v["truncated"], true);
    let out = p.run(&[
        "workspace",
        "file",
        "read",
        &id,
        "big.bin",
        "--content-only",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), 65536);
    let (kind, _) = fails(
        &p,
        &[
            "file",
            "read",
            &id,
            "big.bin",
            "--max-bytes",
            "999999999999",
        ],
    );
    assert_eq!(kind, "invalid_request");
    // A small file is not truncated.
    ok(&p, &["file", "write", &id, "small.txt", "--text", "tiny"]);
    let v = ok(&p, &["file", "read", &id, "small.txt"]);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["content"], "tiny");

    // Snapshot names are names, not paths; the baseline is not theirs to change.
    for bad in ["../x", "/x", "a/b", ".hidden", ""] {
        let (kind, v) = fails(&p, &["snapshot", "create", &id, bad]);
        assert_eq!(kind, "invalid_request", "snapshot {bad:?}: {v}");
    }
    let (kind, _) = fails(&p, &["snapshot", "create", &id, "baseline"]);
    assert_eq!(kind, "invalid_request");
    let (kind, v) = fails(&p, &["snapshot", "delete", &id, "baseline"]);
    assert_eq!(kind, "invalid_request", "{v}");
    let (kind, _) = fails(&p, &["snapshot", "delete", &id, "../x"]);
    assert_eq!(kind, "invalid_request");
    let (kind, _) = fails(&p, &["reset", &id, "--snapshot", "nope"]);
    assert_eq!(kind, "invalid_request");
    assert!(!p.home.join("workspaces").join("x.json").exists());
    assert!(!p.home.join("workspaces").join(&id).join("x.json").exists());
    let v = ok(&p, &["snapshot", "list", &id]);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["snapshots"][0]["name"], "baseline");
    // The reset still works: the baseline survived every attempt on it.
    ok(&p, &["reset", &id]);
    let (kind, _) = fails(&p, &["file", "read", &id, "big.bin"]);
    assert_eq!(kind, "not_found");

    // Unknown workspaces, by id or name.
    for cmd in [
        vec!["status", "0123456789ab"],
        vec!["exec", "0123456789ab", "--", "true"],
        vec!["file", "read", "no-such-name", "x"],
        vec!["diff", "no-such-name"],
        vec!["delete", "0123456789ab"],
        vec!["reset", "0123456789ab"],
    ] {
        let (kind, v) = fails(&p, &cmd);
        assert_eq!(kind, "workspace_not_found", "{cmd:?}: {v}");
    }
    delete(&p, &id);
}

/// Needs no containers: lookups of workspaces that do not exist.
#[test]
fn an_unknown_workspace_is_workspace_not_found() {
    let p = TestPyro::new();
    for cmd in [
        vec!["workspace", "status", "0123456789ab"],
        vec!["workspace", "logs", "nope"],
        vec!["workspace", "snapshot", "list", "nope"],
    ] {
        let (out, v) = p.json(&cmd);
        assert_eq!(out.status.code(), Some(1), "{v}");
        assert_eq!(v["error"]["kind"], "workspace_not_found", "{cmd:?}: {v}");
    }
    let (out, v) = p.json(&["workspace", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["count"], 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn two_pyro_processes_exec_at_once() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    let spawn = |cmd: &str| {
        p.cmd(&["workspace", "exec", &id, "--json", "--", "sh", "-c", cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let t = Instant::now();
    let a = spawn("sleep 2; echo A");
    let b = spawn("echo B");
    let b = b.wait_with_output().unwrap();
    let b_took = t.elapsed();
    let a = a.wait_with_output().unwrap();
    for (o, want) in [(&a, "A\n"), (&b, "B\n")] {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["stdout"], want, "{v}");
        assert_eq!(v["exit_code"], 0);
    }
    eprintln!("concurrent exec: B finished after {b_took:?} while A slept 2 s");
    let v = ok(&p, &["logs", &id]);
    assert_eq!(v["count"], 2, "{v}");
    let cmds: BTreeSet<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        cmds,
        BTreeSet::from(["sh -c 'sleep 2; echo A'", "sh -c 'echo B'"]),
        "{v}"
    );
    let seqs: BTreeSet<u64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, BTreeSet::from([1, 2]), "{v}");
    delete(&p, &id);
}

#[test]
fn stop_waits_for_a_running_exec() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    let exec = p
        .cmd(&[
            "workspace",
            "exec",
            &id,
            "--json",
            "--",
            "sh",
            "-c",
            "touch started; sleep 3; echo finished",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command runs inside (so its call holds the workspace).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let out = p.run(&["workspace", "file", "read", &id, "started", "--json"]);
        if out.status.code() == Some(0) {
            break;
        }
        assert!(Instant::now() < until, "the exec never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let stop = ok(&p, &["stop", &id]);
    let stop_took = t.elapsed();
    assert_eq!(stop["state"], "stopped", "{stop}");
    let out = exec.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the exec was cut: {}",
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stdout"], "finished\n", "{v}");
    assert_eq!(v["exit_code"], 0);
    assert!(
        stop_took > Duration::from_millis(1500),
        "stop returned after {stop_took:?}, before the 3 s exec could finish"
    );
    let v = ok(&p, &["logs", &id]);
    assert_eq!(v["entries"][0]["exit_code"], 0, "{v}");
    ok(&p, &["start", &id]);
    assert_eq!(read_str(&p, &id, "started"), "");
    delete(&p, &id);
}

// ---------------------------------------------------------------------------------------------
// 5. Crash safety
// ---------------------------------------------------------------------------------------------

#[test]
fn pyro_killed_during_sync_push_leaves_all_or_nothing() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    // 200 files of 1 MB in big/.
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    let chunk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for i in 0..200 {
        std::fs::write(src.join(format!("big/f{i:03}")), &chunk).unwrap();
    }
    let want_md5 = String::from_utf8(
        Command::new("sh")
            .arg("-c")
            .arg("cat big/* | md5sum")
            .current_dir(&src)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let (id, _) = create(&p, &[]);
    sh_ok(&p, &id, "echo before > before.txt");

    // Killed early (while pyro archives the directory), while the agent is unpacking (staging
    // seen on the host through the sandbox's root filesystem), and late.
    let rootfs = std::path::PathBuf::from("/run/pyro/sandboxes")
        .join(&id)
        .join("rootfs");
    let staging_in_progress = || {
        std::fs::read_dir(&rootfs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().starts_with(".pyro-staging")
                    && std::fs::read_dir(e.path().join("big"))
                        .map(|d| d.count() > 0)
                        .unwrap_or(false)
            })
    };
    for when in ["300ms", "mid-unpack", "1500ms"] {
        sh_ok(&p, &id, "rm -rf big");
        let mut child = p
            .cmd(&[
                "workspace",
                "sync",
                "push",
                &id,
                src.to_str().unwrap(),
                "--json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match when {
            "mid-unpack" => {
                let until = Instant::now() + Duration::from_secs(60);
                while !staging_in_progress() {
                    if child.try_wait().unwrap().is_some() {
                        eprintln!("NOTE: the push finished before any staging was seen");
                        break;
                    }
                    assert!(Instant::now() < until, "no staging directory ever appeared");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            d => std::thread::sleep(Duration::from_millis(
                d.trim_end_matches("ms").parse().unwrap(),
            )),
        }
        sigkill(&child);
        let status = child.wait().unwrap();
        eprintln!("sync push killed at {when}: {status:?}");

        // The next call works; the push happened wholly or not at all.
        let out = sh_ok(
            &p,
            &id,
            "ls -a /workspace; echo --; if [ -d big ]; then ls big | wc -l; else echo 0; fi",
        );
        let (listing, count) = out.split_once("--\n").unwrap();
        assert!(
            !listing.contains("pyro-staging"),
            "half-unpacked staging visible: {listing}"
        );
        let count: u32 = count.trim().parse().unwrap();
        assert!(
            count == 0 || count == 200,
            "{count} of 200 files arrived after a kill at {when}"
        );
        if count == 200 {
            assert_eq!(sh_ok(&p, &id, "cat big/* | md5sum"), want_md5);
        }
        eprintln!("after the kill at {when}: {count} files in /workspace/big");
        // The agent notices the dropped connection and removes its staging beside /workspace
        // too (give it a moment: it may still be reading when the next call comes).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let stray = sh_ok(&p, &id, "ls -a / | grep pyro-staging; true");
            if stray.is_empty() {
                break;
            }
            assert!(
                Instant::now() < until,
                "staging left beside /workspace after a kill at {when}: {stray}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(read_str(&p, &id, "before.txt"), "before\n");
    }
    // And a push that is not killed still works.
    let v = ok(&p, &["sync", "push", &id, src.to_str().unwrap()]);
    assert_eq!(v["bytes_written"], 200_000_000u64, "{v}");
    assert_eq!(sh_ok(&p, &id, "ls big | wc -l").trim(), "200");

    let (out, v) = p.json(&["gc"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    delete(&p, &id);
    assert!(
        !p.home.join("workspaces").join(&id).exists(),
        "temporary upload files outlived the workspace"
    );
}

#[test]
fn pyro_killed_during_reset_is_recoverable() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let seed = host.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("base.txt"), "base\n").unwrap();
    // Some weight, so the restore takes a moment.
    let chunk = vec![7u8; 1 << 20];
    std::fs::create_dir(seed.join("blobs")).unwrap();
    for i in 0..40 {
        std::fs::write(seed.join(format!("blobs/b{i}")), &chunk).unwrap();
    }
    let (id, _) = create(&p, &["--seed-path", seed.to_str().unwrap()]);
    let baseline = tree(&p, &id);
    sh_ok(&p, &id, "echo changed > base.txt; echo extra > extra.txt");

    // Killed while the sandbox is being recreated, while the snapshot is being restored (its
    // staging seen on the host through the sandbox's root filesystem), and late.
    let rootfs = std::path::PathBuf::from("/run/pyro/sandboxes")
        .join(&id)
        .join("rootfs");
    let restoring = || {
        std::fs::read_dir(&rootfs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".pyro-staging"))
    };
    for when in ["150ms", "mid-restore", "400ms"] {
        let mut child = p
            .cmd(&["workspace", "reset", &id, "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match when {
            "mid-restore" => {
                let until = Instant::now() + Duration::from_secs(60);
                while !restoring() {
                    if child.try_wait().unwrap().is_some() {
                        eprintln!("NOTE: the reset finished before its restore was seen");
                        break;
                    }
                    assert!(Instant::now() < until, "the reset never restored");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            d => std::thread::sleep(Duration::from_millis(
                d.trim_end_matches("ms").parse().unwrap(),
            )),
        }
        sigkill(&child);
        let st = child.wait().unwrap();
        let v = ok(&p, &["status", &id]);
        let state = v["state"].as_str().unwrap().to_string();
        eprintln!("reset killed at {when} ({st:?}): state {state}");
        assert!(
            state == "broken" || state == "running",
            "after a killed reset the state is {state}: {v}"
        );
        if state == "running" {
            // The reset finished before the kill: it must have done its whole job.
            assert_eq!(tree(&p, &id), baseline);
            sh_ok(&p, &id, "echo changed > base.txt; echo extra > extra.txt");
        } else {
            let (kind, v) = fails(&p, &["exec", &id, "--", "true"]);
            assert_eq!(kind, "workspace_not_running", "{v}");
        }
    }

    let v = ok(&p, &["reset", &id]);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(tree(&p, &id), baseline);
    assert_eq!(read_str(&p, &id, "base.txt"), "base\n");
    assert_eq!(ok(&p, &["diff", &id])["changed"], false);
    assert_eq!(sh_ok(&p, &id, "echo alive"), "alive\n");

    let (out, v) = p.json(&["gc"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    // gc must not take a healthy workspace.
    assert_eq!(ok(&p, &["status", &id])["state"], "running");
    delete(&p, &id);
}

// ---------------------------------------------------------------------------------------------
// 6. Diff at scale
// ---------------------------------------------------------------------------------------------

#[test]
fn a_diff_of_ten_thousand_files_reports_exactly_the_ten_changed() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let host = tempfile::tempdir().unwrap();
    let seed = host.path().join("seed");
    std::fs::create_dir_all(seed.join("d")).unwrap();
    for i in 1..=10_000 {
        std::fs::write(seed.join(format!("d/f{i}")), format!("{i}\n")).unwrap();
    }
    let t = Instant::now();
    let (id, _) = create(&p, &["--seed-path", seed.to_str().unwrap()]);
    eprintln!("create with a 10,000-file seed: {:?}", t.elapsed());

    let d = ok(&p, &["diff", &id]);
    assert_eq!(d["changed"], false, "{}", d["summary"]);
    eprintln!(
        "diff of an unchanged 10,000-file workspace: duration_ms={}",
        d["duration_ms"]
    );

    sh_ok(
        &p,
        &id,
        "for i in 1 2 3 500 1000 2500 5000 7777 9999 10000; do echo changed >> d/f$i; done",
    );
    for round in ["first", "second"] {
        let t = Instant::now();
        let d = ok(&p, &["diff", &id]);
        eprintln!(
            "{round} diff after changing 10 of 10,000 files: duration_ms={} (wall {:?})",
            d["duration_ms"],
            t.elapsed()
        );
        assert_eq!(d["summary"]["modified"], 10, "{}", d["summary"]);
        assert_eq!(d["summary"]["added"], 0);
        assert_eq!(d["summary"]["deleted"], 0);
        assert_eq!(d["summary"]["total"], 10);
        let paths: BTreeSet<&str> = d["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        let want: BTreeSet<String> = [1, 2, 3, 500, 1000, 2500, 5000, 7777, 9999, 10000]
            .iter()
            .map(|i| format!("d/f{i}"))
            .collect();
        assert_eq!(paths, want.iter().map(String::as_str).collect());
        assert!(d["patch"].as_str().unwrap().contains("+changed\n"));
        assert!(d["duration_ms"].is_u64());
    }
    delete(&p, &id);
}

/// Waits for a child up to `limit`, killing it (and failing) if it does not exit.
fn wait_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= until {
            sigkill(child);
            panic!("pyro did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_signal_to_workspace_exec_stops_the_command_and_logs_it() {
    require_containers!();
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    let slow = "sleep 300 & echo $! > /workspace/pid; echo READY; wait";
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        use std::io::BufRead;
        let mut child = p
            .cmd(&["workspace", "exec", &id, "--timeout", "600", "--", slow])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "READY\n");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_within(&mut child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(code));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains("phase=interrupted"), "{err}");
        // The command's whole process group is gone (TERM, or KILL after the grace period).
        let pid = read_str(&p, &id, "pid").trim().to_string();
        let probe = format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone");
        let until = Instant::now() + Duration::from_secs(10);
        while sh_ok(&p, &id, &probe) != "gone\n" {
            assert!(Instant::now() < until, "the guest command outlived pyro");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let logs = ok(&p, &["logs", &id]);
    let stopped: Vec<&Value> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["command"] == slow)
        .collect();
    assert_eq!(stopped.len(), 2, "{logs}");
    for e in stopped {
        assert_eq!(e["interrupted"], true, "{e}");
        assert_eq!(e["exit_code"], 143, "{e}");
        assert_eq!(e["signal"], 15, "{e}");
    }
    // The probes ran to completion and say so.
    assert!(logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["interrupted"] == false));
    delete(&p, &id);
}

#[test]
fn workspace_exec_reads_piped_stdin_and_streams_all_output() {
    require_containers!();
    use std::io::Write;
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    let (id, _) = create(&p, &[]);
    let piped = |flags: &[&str], cmd: &str, input: &[u8]| {
        let mut args = vec!["workspace", "exec", &id];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", cmd]);
        let mut child = p
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = piped(&[], "cat > in.txt; wc -c < in.txt", b"hello\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "6\n");
    assert_eq!(read_str(&p, &id, "in.txt"), "hello\n");
    let out = piped(&["--no-stdin"], "cat", b"hello\n");
    assert_eq!(stdout(&out), "");
    // All of a big output is passed through; captured, it is cut with a warning.
    let three_mib = "head -c 3145728 /dev/zero";
    let out = p.run(&["workspace", "exec", &id, "--", three_mib]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 3 << 20);
    let (out, v) = p.json(&["workspace", "exec", &id, "--", three_mib]);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20);
    assert!(
        stderr(&out).contains(
            "[workspace-exec] warning: output truncated at 1048576 bytes (--max-output-bytes)"
        ),
        "{}",
        stderr(&out)
    );
    delete(&p, &id);
}

#[test]
fn a_signal_during_workspace_create_deletes_the_half_made_workspace() {
    require_containers!();
    use std::io::BufRead;
    let p = TestPyro::new();
    let _cleanup = Cleanup(&p);
    // A seed big enough that the create is still uploading it when the signal comes.
    let seed = p.dir.path().join("seed");
    for i in 0..200 {
        let d = seed.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..20 {
            std::fs::write(d.join(format!("f{j}")), vec![b'x'; 4096]).unwrap();
        }
    }
    let seed_arg = seed.display().to_string();
    let mut child = p
        .cmd(&[
            "workspace",
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--seed-path",
            &seed_arg,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("create ended before its seed phase: {seen}");
        }
        seen.push_str(&line);
        if line.contains("phase=seed") {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_within(&mut child, Duration::from_secs(60));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    if status.code() == Some(0) {
        // The create won the race and finished: then it must be whole and listed.
        let list = ok(&p, &["list"]);
        assert_eq!(
            list["workspaces"].as_array().map(Vec::len),
            Some(1),
            "{list}"
        );
        return;
    }
    eprintln!("interrupted mid-create: {}", rest.trim());
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("phase=interrupted"), "{rest}");
    let list = ok(&p, &["list"]);
    assert_eq!(list["workspaces"], serde_json::json!([]), "{list}");
    let sandboxes = p.home.join("sandboxes");
    let left = std::fs::read_dir(&sandboxes)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        left,
        0,
        "sandbox directories left in {}",
        sandboxes.display()
    );
}
