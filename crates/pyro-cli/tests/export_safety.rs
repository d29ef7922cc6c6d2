//! `pyro workspace export` against a hostile guest, through the real `pyro` binary, on the
//! container level and on vm-emulated: the guest plants setuid, setgid and sticky bits, a fifo,
//! a device node, a unix socket, a hard link to a file outside the exported directory and a
//! symlink out of the tree; the host must get plain files owned by the calling user, nothing
//! special, nothing written through a symlink, limits that refuse the whole export, and a
//! pre-existing symlink at `--output` replaced, never written through. Crafted archives that a
//! real guest's agent would never send are covered by the unit tests in `pyro::unpack`.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;
use util::{container_tests_enabled, stderr, vm_tests_enabled, TestPyro};

/// The guest's tricks, run in /workspace. Each optional one says whether it worked.
const TRICKS: &str = r#"set -e
mkdir -p out/sticky out/sgiddir
cp /bin/sh out/suid && chmod 4755 out/suid
cp /bin/sh out/sgid && chmod 2755 out/sgid
printf x > out/all && chmod 6777 out/all
chmod 1777 out/sticky
chmod 2775 out/sgiddir
printf data > out/plain && chmod 640 out/plain
printf secret > outside.txt && ln outside.txt out/hardlink
ln -s /etc out/etc-link
mkfifo out/fifo
if mknod out/null c 1 3 2>/dev/null; then echo mknod=yes; else echo mknod=no; fi
if perl -MSocket -e 'socket(S, AF_UNIX, SOCK_STREAM, 0) or die; bind(S, pack_sockaddr_un("out/sock")) or die' 2>/dev/null; then echo sock=yes; else echo sock=no; fi
if ln /etc/passwd out/passwd-link 2>/dev/null; then echo passwd-link=yes; else echo passwd-link=no; fi
"#;

fn create(p: &TestPyro, isolation: &str) -> String {
    let (out, v) = p.json(&["workspace", "create", "debian:12", "--isolation", isolation]);
    assert_eq!(out.status.code(), Some(0), "create: {v}\n{}", stderr(&out));
    v["workspace_id"].as_str().unwrap().to_string()
}

fn export(p: &TestPyro, args: &[&str]) -> (Option<i32>, Value) {
    let mut a = vec!["workspace", "export"];
    a.extend_from_slice(args);
    let (out, v) = p.json(&a);
    (out.status.code(), v)
}

fn export_ok(p: &TestPyro, args: &[&str]) -> Value {
    let (code, v) = export(p, args);
    assert_eq!(code, Some(0), "export {args:?}: {v}");
    v
}

fn export_fails(p: &TestPyro, args: &[&str]) -> Value {
    let (code, v) = export(p, args);
    assert_eq!(code, Some(1), "export {args:?} should have failed: {v}");
    assert!(v["error"]["hint"].is_string(), "errors carry a hint: {v}");
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// Mode (all 12 permission bits) and owner of a path, not following a symlink.
fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// Everything a hostile guest tries, checked on one workspace of the given level.
fn hostile_guest_cannot_plant_special_files(level: &str) {
    let mut p = TestPyro::new();
    let host = tempfile::tempdir().unwrap();
    let id = create(&p, level);
    let (out, v) = p.json(&["workspace", "exec", &id, "--", "sh", "-c", TRICKS]);
    assert_eq!(v["exit_code"], 0, "tricks: {v}\n{}", stderr(&out));
    let said = v["stdout"].as_str().unwrap().to_string();
    for (trick, what) in [
        ("mknod=", "a device node"),
        ("sock=", "a unix socket"),
        ("passwd-link=", "a hard link to /etc/passwd"),
    ] {
        if said.contains(&format!("{trick}no")) {
            eprintln!("{level}: the guest could not make {what}; that trick is not exercised here");
        }
    }

    // Root runs the tests, so the caller is root: everything is 0:0 and plain.
    let caller = (0, 0);
    let dir = host.path().join("dir");
    let v = export_ok(&p, &[&id, "out", "--output", dir.to_str().unwrap()]);
    assert_eq!(v["artifact_type"], "directory", "{v}");
    assert!(v["skipped_count"].is_u64(), "{v}");
    let expected = [
        ("", 0o755),
        ("suid", 0o755),
        ("sgid", 0o755),
        ("all", 0o777),
        ("sticky", 0o777),
        ("sgiddir", 0o775),
        ("plain", 0o640),
        ("hardlink", 0o644),
    ];
    for (path, mode) in expected {
        let (m, uid, gid) = mode_owner(&dir.join(path));
        assert_eq!(m, mode, "{level}: mode of {path:?} is {m:o}");
        assert_eq!((uid, gid), caller, "{level}: owner of {path:?}");
    }
    assert_eq!(std::fs::read(dir.join("plain")).unwrap(), b"data");
    // The hard link arrives as its own file with the content: nothing is linked on the host.
    let hl = std::fs::symlink_metadata(dir.join("hardlink")).unwrap();
    assert_eq!(hl.nlink(), 1);
    assert_eq!(std::fs::read(dir.join("hardlink")).unwrap(), b"secret");
    if said.contains("passwd-link=yes") {
        let pw = std::fs::symlink_metadata(dir.join("passwd-link")).unwrap();
        assert!(pw.is_file() && pw.nlink() == 1, "{level}: {pw:?}");
        assert_eq!(mode_owner(&dir.join("passwd-link")).1, 0);
    }
    // The symlink is a symlink, owned by the caller, and was never followed.
    let link = std::fs::symlink_metadata(dir.join("etc-link")).unwrap();
    assert!(link.file_type().is_symlink(), "{level}");
    assert_eq!((link.uid(), link.gid()), caller);
    assert_eq!(
        std::fs::read_link(dir.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    // No fifo, device or socket on the host.
    for special in ["fifo", "null", "sock"] {
        assert!(
            std::fs::symlink_metadata(dir.join(special)).is_err(),
            "{level}: {special} reached the host"
        );
    }

    // Under sudo the files belong to the user who ran sudo.
    p.env("SUDO_UID", "4321").env("SUDO_GID", "4322");
    let sudo_dir = host.path().join("sudo-dir");
    export_ok(&p, &[&id, "out", "--output", sudo_dir.to_str().unwrap()]);
    for (path, mode) in expected {
        let (m, uid, gid) = mode_owner(&sudo_dir.join(path));
        assert_eq!(m, mode, "{level}: mode of {path:?} is {m:o}");
        assert_eq!((uid, gid), (4321, 4322), "{level}: owner of {path:?}");
    }
    let link = std::fs::symlink_metadata(sudo_dir.join("etc-link")).unwrap();
    assert_eq!((link.uid(), link.gid()), (4321, 4322));
    // And a single file exported alone: plain and the sudo user's too.
    let file = host.path().join("suid-file");
    let v = export_ok(&p, &[&id, "out/suid", "--output", file.to_str().unwrap()]);
    assert_eq!(v["artifact_type"], "file", "{v}");
    assert_eq!(mode_owner(&file), (0o755, 4321, 4322), "{level}");
    let file = host.path().join("all-file");
    export_ok(&p, &[&id, "out/all", "--output", file.to_str().unwrap()]);
    assert_eq!(mode_owner(&file), (0o777, 4321, 4322), "{level}");
    p.envs.clear();

    // Over the limits: refused whole, nothing at the output, nothing staged left beside it.
    let before = names(host.path());
    for (flag, value, says) in [
        ("--max-entries", "3", "more than 3 entries"),
        ("--max-bytes", "1000", "more than 1000 bytes"),
    ] {
        let small = host.path().join("small");
        let v = export_fails(
            &p,
            &[&id, "out", "--output", small.to_str().unwrap(), flag, value],
        );
        assert_eq!(v["error"]["kind"], "export_too_large", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
        assert_eq!(names(host.path()), before, "{level}: {flag} left something");
    }
    // A refused export over an existing output (even with --force) leaves it as it was.
    let v = export_fails(
        &p,
        &[
            &id,
            "out",
            "--output",
            dir.to_str().unwrap(),
            "--force",
            "--max-bytes",
            "1000",
        ],
    );
    assert_eq!(v["error"]["kind"], "export_too_large", "{v}");
    assert_eq!(std::fs::read(dir.join("plain")).unwrap(), b"data");
    assert_eq!(names(host.path()), before);

    // A symlink already at --output is never written through: refused without --force, and
    // replaced (its target untouched) with it.
    let victim = host.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "keep").unwrap();
    let link = host.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let v = export_fails(&p, &[&id, "out", "--output", link.to_str().unwrap()]);
    assert_eq!(v["error"]["kind"], "already_exists", "{v}");
    export_ok(
        &p,
        &[&id, "out", "--output", link.to_str().unwrap(), "--force"],
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_dir());
    assert_eq!(mode_owner(&link.join("suid")), (0o755, 0, 0));
    assert_eq!(names(&victim), ["keep"]);
    let file_link = host.path().join("file-link");
    std::os::unix::fs::symlink(victim.join("keep"), &file_link).unwrap();
    export_ok(
        &p,
        &[
            &id,
            "out/suid",
            "--output",
            file_link.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(std::fs::symlink_metadata(&file_link).unwrap().is_file());
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "keep"
    );

    let (out, v) = p.json(&["workspace", "delete", &id]);
    assert_eq!(out.status.code(), Some(0), "delete: {v}");
}

#[test]
fn container_guest_cannot_plant_special_files_through_export() {
    if !container_tests_enabled(module_path!()) {
        return;
    }
    hostile_guest_cannot_plant_special_files("container");
}

#[test]
fn vm_guest_cannot_plant_special_files_through_export() {
    if !vm_tests_enabled(module_path!()) {
        return;
    }
    hostile_guest_cannot_plant_special_files("vm-emulated");
}
