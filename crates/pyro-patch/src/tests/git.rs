//! Fixtures from the real `git` binary: git makes the diff, we parse and
//! apply it, and the result must equal git's working tree. The reverse
//! direction checks that `git apply` accepts what `unified_diff` writes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::{patch_tree, Tree};
use crate::{parse, unified_diff, PatchKind, MODE_EXECUTABLE, MODE_FILE};

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "-q"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=pyro",
                "-c",
                "user.email=pyro@example.com",
                "-c",
                "core.autocrlf=false",
                "-c",
                "core.quotePath=true",
                "-c",
                "diff.noprefix=false",
                "-c",
                "diff.mnemonicPrefix=false",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    fn write(&self, p: &str, content: &[u8]) {
        let path = self.path(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn chmod(&self, p: &str, mode: u32) {
        fs::set_permissions(self.path(p), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn commit(&self) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", "baseline"]);
    }

    /// The working tree as path -> (content, git mode), `.git` excluded.
    fn tree(&self) -> Tree {
        let mut out = Tree::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }

    /// Stages everything and returns `git diff --cached` with rename detection.
    fn staged_diff(&self) -> String {
        self.git(&["add", "-A"]);
        self.git(&["diff", "--cached", "-M", "--no-color", "--no-ext-diff"])
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Tree) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let exec = entry.metadata().unwrap().permissions().mode() & 0o111 != 0;
            let mode = if exec { MODE_EXECUTABLE } else { MODE_FILE };
            out.insert(rel, (fs::read(&path).unwrap(), mode));
        }
    }
}

fn numbered(n: usize, tag: &str) -> String {
    (1..=n).map(|i| format!("{tag} line {i}\n")).collect()
}

/// Builds a baseline, lets `change` modify the work tree, then checks that
/// applying git's diff to the baseline gives git's tree. Returns the diff.
fn check(setup: impl FnOnce(&Repo), change: impl FnOnce(&Repo)) -> String {
    let repo = Repo::new();
    setup(&repo);
    repo.commit();
    let before = repo.tree();
    change(&repo);
    let diff = repo.staged_diff();
    let after = repo.tree();
    let got = patch_tree(&before, &diff).unwrap_or_else(|e| panic!("{e}\n{diff}"));
    assert_eq!(got, after, "git diff:\n{diff}");
    diff
}

#[test]
fn git_modifications_adds_and_deletes() {
    let diff = check(
        |r| {
            r.write("src/main.rs", numbered(60, "main").as_bytes());
            r.write("gone.txt", b"bye\nbye\n");
            r.write("gone-nonl.txt", b"no newline");
            r.write("empty-gone", b"");
            r.write("docs/readme.md", b"# title\n\ntext\n");
        },
        |r| {
            let text = numbered(60, "main")
                .replace("main line 5\n", "changed 5\n")
                .replace("main line 30\n", "inserted\nmain line 30\n")
                .replace("main line 55\n", "");
            r.write("src/main.rs", text.as_bytes());
            fs::remove_file(r.path("gone.txt")).unwrap();
            fs::remove_file(r.path("gone-nonl.txt")).unwrap();
            fs::remove_file(r.path("empty-gone")).unwrap();
            r.write("new/dir/file.txt", b"fresh\ncontent");
            r.write("new-empty", b"");
            r.write("docs/readme.md", b"# title\n\ntext\nmore\n");
        },
    );
    assert_eq!(diff.matches("@@ -").count(), 7, "{diff}");
}

#[test]
fn git_newline_at_eof_changes() {
    check(
        |r| {
            r.write("add-nl", b"a\nb");
            r.write("drop-nl", b"a\nb\n");
            r.write("both-nonl", b"1\n2\n3\n4\n5\n6\n7\n8\n9\nlast");
            r.write("only-nl", b"\n");
        },
        |r| {
            r.write("add-nl", b"a\nb\n");
            r.write("drop-nl", b"a\nb");
            r.write("both-nonl", b"one\n2\n3\n4\n5\n6\n7\n8\n9\nlast");
            r.write("only-nl", b"\n\n");
        },
    );
}

#[test]
fn git_crlf_and_unicode_paths() {
    let diff = check(
        |r| {
            r.write("win.txt", b"one\r\ntwo\r\nthree\r\n");
            r.write("sp ace/café \"q\".txt", b"x\n");
            r.write("tab\there", b"t\n");
        },
        |r| {
            r.write("win.txt", b"one\r\nTWO\r\nthree\r\nfour\r\n");
            r.write("sp ace/café \"q\".txt", b"y\n");
            r.write("tab\there", b"u\n");
        },
    );
    assert!(
        diff.contains("\"a/sp ace/caf\\303\\251 \\\"q\\\".txt\""),
        "{diff}"
    );
}

#[test]
fn git_renames_and_modes() {
    let body = numbered(20, "r");
    let diff = check(
        |r| {
            r.write("old-name.txt", body.as_bytes());
            r.write("moved-and-edited.txt", numbered(20, "m").as_bytes());
            r.write("script.sh", b"#!/bin/sh\necho hi\n");
            r.write("tool.sh", b"#!/bin/sh\necho a\n");
            r.write("was-exec", b"x\n");
            r.chmod("was-exec", 0o755);
        },
        |r| {
            fs::create_dir_all(r.path("dir")).unwrap();
            fs::rename(r.path("old-name.txt"), r.path("dir/new-name.txt")).unwrap();
            fs::remove_file(r.path("moved-and-edited.txt")).unwrap();
            let edited = numbered(20, "m").replace("m line 10\n", "edited\n");
            r.write("edited-target.txt", edited.as_bytes());
            r.chmod("script.sh", 0o755);
            r.write("tool.sh", b"#!/bin/sh\necho b\n");
            r.chmod("tool.sh", 0o755);
            r.chmod("was-exec", 0o644);
            r.write("new-exec", b"#!/bin/sh\n");
            r.chmod("new-exec", 0o755);
        },
    );
    let fps = parse(&diff).unwrap();
    let kinds: Vec<(PatchKind, usize)> = fps.iter().map(|f| (f.kind, f.hunks.len())).collect();
    assert!(diff.contains("rename from old-name.txt"), "{diff}");
    assert!(diff.contains("similarity index 100%"), "{diff}");
    assert!(diff.contains("old mode 100644\nnew mode 100755"), "{diff}");
    assert!(kinds.contains(&(PatchKind::Rename, 0)), "{kinds:?}");
    assert!(kinds.contains(&(PatchKind::Rename, 1)), "{kinds:?}");
}

/// Runs `git apply` on our diff in a repo holding `old`, and compares the
/// resulting file with `new`.
fn git_accepts(old: Option<&[u8]>, new: Option<&[u8]>, old_mode: u32, new_mode: u32) {
    let repo = Repo::new();
    if let Some(o) = old {
        repo.write("f.txt", o);
        repo.chmod("f.txt", old_mode & 0o777);
    }
    repo.commit();
    let modes = old.and(new).map(|_| (Some(old_mode), Some(new_mode)));
    let (om, nm) = modes.unwrap_or((old.map(|_| old_mode), new.map(|_| new_mode)));
    let diff = unified_diff("f.txt", old, new, om, nm);
    let patch_file = repo.dir.path().join(".git").join("pyro-test.diff");
    fs::write(&patch_file, &diff).unwrap();
    repo.git(&["apply", "--whitespace=nowarn", patch_file.to_str().unwrap()]);
    let tree = repo.tree();
    match new {
        Some(n) => {
            assert_eq!(tree["f.txt"].0, n, "diff:\n{diff}");
            assert_eq!(tree["f.txt"].1, new_mode, "diff:\n{diff}");
        }
        None => assert!(!tree.contains_key("f.txt"), "diff:\n{diff}"),
    }
}

#[test]
fn git_apply_accepts_our_diffs() {
    type Case = (Option<&'static [u8]>, Option<&'static [u8]>);
    let cases: &[Case] = &[
        (Some(b"a\nb\nc\n"), Some(b"a\nB\nc\n")),
        (Some(b"a\nb"), Some(b"a\nb\n")),
        (Some(b"a\nb\n"), Some(b"a\nc")),
        (Some(b"one\r\ntwo\r\n"), Some(b"one\r\n2\r\n")),
        (None, Some(b"new\nfile")),
        (None, Some(b"")),
        (Some(b"old\n"), None),
        (Some(b""), Some(b"now text\n")),
    ];
    for (old, new) in cases {
        git_accepts(*old, *new, MODE_FILE, MODE_FILE);
    }
    let long = numbered(100, "x");
    let long_new = long
        .replace("x line 50\n", "fifty\n")
        .replace("x line 1\n", "");
    git_accepts(
        Some(long.as_bytes()),
        Some(long_new.as_bytes()),
        MODE_FILE,
        MODE_FILE,
    );
    git_accepts(Some(b"s\n"), Some(b"s\n"), MODE_FILE, MODE_EXECUTABLE);
    git_accepts(Some(b"s\n"), Some(b"t\n"), MODE_EXECUTABLE, MODE_FILE);
    git_accepts(None, Some(b"#!/bin/sh\n"), MODE_FILE, MODE_EXECUTABLE);
}

#[test]
fn git_format_patch_mail_applies() {
    let repo = Repo::new();
    repo.write("a.txt", numbered(10, "a").as_bytes());
    repo.write("b.txt", b"b\n");
    repo.commit();
    let before = repo.tree();
    repo.write(
        "a.txt",
        numbered(10, "a").replace("a line 9\n", "nine\n").as_bytes(),
    );
    fs::remove_file(repo.path("b.txt")).unwrap();
    repo.write("c.txt", b"c\n");
    repo.git(&["add", "-A"]);
    repo.git(&[
        "commit",
        "-q",
        "-m",
        "subject line\n\nbody text\n--- not a diff",
    ]);
    let mail = repo.git(&["format-patch", "-1", "--stdout", "-M"]);
    assert!(mail.contains("\n-- \n"), "{mail}");
    let got = patch_tree(&before, &mail).unwrap_or_else(|e| panic!("{e}\n{mail}"));
    assert_eq!(got, repo.tree());
}

#[test]
fn git_diff_with_function_context_and_offsets() {
    // The diff is taken against one version, then applied to a drifted one.
    let repo = Repo::new();
    let base: String = (0..50)
        .map(|i| format!("fn f{i}() {{\n    body {i}\n}}\n"))
        .collect();
    repo.write("lib.rs", base.as_bytes());
    repo.commit();
    let new = base
        .replace("    body 3\n", "    changed 3\n")
        .replace("    body 40\n", "    changed 40\n");
    repo.write("lib.rs", new.as_bytes());
    let diff = repo.staged_diff();
    let drift = "// header\n// more\n";
    let mut tree = Tree::new();
    tree.insert(
        "lib.rs".into(),
        (format!("{drift}{base}").into_bytes(), MODE_FILE),
    );
    let got = patch_tree(&tree, &diff).unwrap_or_else(|e| panic!("{e}\n{diff}"));
    assert_eq!(got["lib.rs"].0, format!("{drift}{new}").into_bytes());
}

/// Random edits: git's own diffs must apply with our engine, and our diffs
/// must apply with `git apply`, both giving exactly the new text.
#[test]
fn git_randomized_both_directions() {
    use super::roundtrip::{mutate, random_text, Lcg};
    let repo = Repo::new();
    repo.commit();
    let patch_file = repo.dir.path().join(".git").join("pyro-test.diff");
    let patch_path = patch_file.to_str().unwrap().to_string();
    let mut rng = Lcg(0xd1ff);
    for _ in 0..80 {
        let len = rng.below(25);
        let old = random_text(&mut rng, len);
        let new = mutate(&mut rng, &old);

        // git's diff -> our apply.
        repo.write("f.txt", old.as_bytes());
        repo.git(&["add", "f.txt"]);
        repo.write("f.txt", new.as_bytes());
        let diff = repo.git(&["diff", "--no-color", "--no-ext-diff", "--", "f.txt"]);
        let mut tree = Tree::new();
        tree.insert("f.txt".into(), (old.clone().into_bytes(), MODE_FILE));
        let got = patch_tree(&tree, &diff).unwrap_or_else(|e| panic!("{e}\n{diff}"));
        assert_eq!(got["f.txt"].0, new.as_bytes(), "git diff:\n{diff}");
        // Zero-context hunks (`git diff -U0`) place insertions by position alone.
        let diff0 = repo.git(&["diff", "-U0", "--no-color", "--no-ext-diff", "--", "f.txt"]);
        let got = patch_tree(&tree, &diff0).unwrap_or_else(|e| panic!("{e}\n{diff0}"));
        assert_eq!(got["f.txt"].0, new.as_bytes(), "git diff -U0:\n{diff0}");

        // Our diff -> git apply.
        repo.write("f.txt", old.as_bytes());
        let ours = unified_diff(
            "f.txt",
            Some(old.as_bytes()),
            Some(new.as_bytes()),
            None,
            None,
        );
        if ours.is_empty() {
            continue;
        }
        fs::write(&patch_file, &ours).unwrap();
        repo.git(&["apply", "--whitespace=nowarn", &patch_path]);
        let applied = fs::read(repo.path("f.txt")).unwrap();
        assert_eq!(applied, new.as_bytes(), "our diff:\n{ours}");
    }
}
