use super::{patch_tree, Tree};
use crate::{apply_file, parse, plan, unified_diff, Action, PatchError, PatchKind, MODE_FILE};

fn tree(files: &[(&str, &str)]) -> Tree {
    files
        .iter()
        .map(|(p, c)| (p.to_string(), (c.as_bytes().to_vec(), MODE_FILE)))
        .collect()
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn failing_second_hunk_names_it_and_plans_nothing() {
    let old = numbered(30);
    let new = old
        .replace("line 3\n", "line three\n")
        .replace("line 20\n", "line twenty\n");
    let diff = unified_diff(
        "src/main.rs",
        Some(old.as_bytes()),
        Some(new.as_bytes()),
        None,
        None,
    );
    let other = unified_diff("ok.txt", Some(b"x\n"), Some(b"y\n"), None, None);
    // The second hunk's context no longer exists in the file.
    let drifted = old.replace("line 19\n", "line nineteen\n");
    let t = tree(&[("ok.txt", "x\n"), ("src/main.rs", &drifted)]);
    let patch = format!("{other}{diff}");
    let err = patch_tree(&t, &patch).unwrap_err();
    match &err {
        PatchError::HunkFailed {
            path,
            hunk,
            header,
            reason,
        } => {
            assert_eq!(path, "src/main.rs");
            assert_eq!(*hunk, 2);
            assert_eq!(header, "@@ -17,7 +17,7 @@");
            assert_eq!(reason, "context not found");
        }
        e => panic!("unexpected error {e:?}"),
    }
    assert_eq!(
        err.to_string(),
        "hunk 2 of src/main.rs (@@ -17,7 +17,7 @@) does not apply: context not found"
    );
    // plan returns no changes at all, not even for the file that applied.
    let fps = parse(&patch).unwrap();
    let mut read = |p: &str| t.get(p).map(|(c, _)| c.clone());
    assert!(plan(&fps, &mut read).is_err());
}

#[test]
fn offset_hunks_still_apply() {
    let old = numbered(40);
    let new = old
        .replace("line 10\n", "line ten\n")
        .replace("line 30\n", "line thirty\n");
    let diff = unified_diff("f", Some(old.as_bytes()), Some(new.as_bytes()), None, None);
    // Five lines added at the top, two removed in the middle, since the diff was made.
    let shifted = format!(
        "h1\nh2\nh3\nh4\nh5\n{}",
        old.replace("line 20\nline 21\n", "")
    );
    let expected = format!(
        "h1\nh2\nh3\nh4\nh5\n{}",
        new.replace("line 20\nline 21\n", "")
    );
    let out = patch_tree(&tree(&[("f", &shifted)]), &diff).unwrap();
    assert_eq!(String::from_utf8(out["f"].0.clone()).unwrap(), expected);
    // Lines removed before the hunk: it is found earlier.
    let earlier = old.replace("line 1\nline 2\n", "");
    let out = patch_tree(&tree(&[("f", &earlier)]), &diff).unwrap();
    assert_eq!(
        String::from_utf8(out["f"].0.clone()).unwrap(),
        new.replace("line 1\nline 2\n", "")
    );
}

#[test]
fn adding_an_existing_file_is_refused() {
    let diff = unified_diff("new.txt", None, Some(b"hello\n"), None, None);
    let err = patch_tree(&tree(&[("new.txt", "already\n")]), &diff).unwrap_err();
    assert_eq!(
        err,
        PatchError::AlreadyExists {
            path: "new.txt".into()
        }
    );
    assert_eq!(err.to_string(), "new.txt already exists");
}

#[test]
fn missing_files_are_refused() {
    let diff = unified_diff("gone.txt", Some(b"a\n"), Some(b"b\n"), None, None);
    assert_eq!(
        patch_tree(&Tree::new(), &diff).unwrap_err(),
        PatchError::Missing {
            path: "gone.txt".into()
        }
    );
    let del = unified_diff("gone.txt", Some(b"a\n"), None, None, None);
    assert_eq!(
        patch_tree(&Tree::new(), &del).unwrap_err(),
        PatchError::Missing {
            path: "gone.txt".into()
        }
    );
}

#[test]
fn delete_checks_content() {
    let del = unified_diff("f", Some(b"a\nb\n"), None, None, None);
    let err = patch_tree(&tree(&[("f", "a\nb\nc\n")]), &del).unwrap_err();
    assert_eq!(err, PatchError::DeleteMismatch { path: "f".into() });
    // Deleting an empty file (no hunks) requires the file to be empty.
    let del_empty = unified_diff("f", Some(b""), None, None, None);
    assert!(!del_empty.contains("@@"));
    assert!(patch_tree(&tree(&[("f", "")]), &del_empty)
        .unwrap()
        .is_empty());
    assert_eq!(
        patch_tree(&tree(&[("f", "x")]), &del_empty).unwrap_err(),
        PatchError::DeleteMismatch { path: "f".into() }
    );
}

#[test]
fn crlf_files_stay_crlf_with_lf_patches() {
    let patch = "--- a/w.txt\n+++ b/w.txt\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n+B2\n c\n";
    let out = patch_tree(&tree(&[("w.txt", "a\r\nb\r\nc\r\n")]), patch).unwrap();
    assert_eq!(out["w.txt"].0, b"a\r\nB\r\nB2\r\nc\r\n");
    // A patch sent with CRLF line endings applies to an LF file and keeps LF.
    let crlf_patch = patch.replace('\n', "\r\n");
    let out = patch_tree(&tree(&[("w.txt", "a\nb\nc\n")]), &crlf_patch).unwrap();
    assert_eq!(out["w.txt"].0, b"a\nB\nB2\nc\n");
}

#[test]
fn no_newline_handling() {
    // Add a final newline.
    let p = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n";
    assert_eq!(
        patch_tree(&tree(&[("f", "a\nb")]), p).unwrap()["f"].0,
        b"a\nb\n"
    );
    // The same patch does not apply when the file already has the newline.
    assert!(matches!(
        patch_tree(&tree(&[("f", "a\nb\n")]), p),
        Err(PatchError::HunkFailed { hunk: 1, .. })
    ));
    // Remove it.
    let p = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+b\n\\ No newline at end of file\n";
    assert_eq!(
        patch_tree(&tree(&[("f", "a\nb\n")]), p).unwrap()["f"].0,
        b"a\nb"
    );
    // Context line without newline on both sides, change above it.
    let p = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n-a\n+A\n b\n\\ No newline at end of file\n";
    assert_eq!(
        patch_tree(&tree(&[("f", "a\nb")]), p).unwrap()["f"].0,
        b"A\nb"
    );
}

#[test]
fn apply_file_directly() {
    let fps = parse("--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1,2 @@\n+x\n+y\n").unwrap();
    assert_eq!(fps[0].kind, PatchKind::Add);
    assert_eq!(apply_file(&fps[0], None).unwrap(), Some(b"x\ny\n".to_vec()));
    assert_eq!(
        apply_file(&fps[0], Some(b"")).unwrap_err(),
        PatchError::AlreadyExists {
            path: "n.txt".into()
        }
    );
    let fps = parse("--- a/n.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-x\n-y\n").unwrap();
    assert_eq!(fps[0].kind, PatchKind::Delete);
    assert_eq!(apply_file(&fps[0], Some(b"x\ny\n")).unwrap(), None);
}

#[test]
fn sequential_patches_see_earlier_results() {
    let patch =
        "diff --git a/a.txt b/b.txt\nsimilarity index 90%\nrename from a.txt\nrename to b.txt\n\
                 --- a/a.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-1\n+2\n\
                 --- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-2\n+3\n";
    let fps = parse(patch).unwrap();
    let t = tree(&[("a.txt", "1\n")]);
    let mut read = |p: &str| t.get(p).map(|(c, _)| c.clone());
    let changes = plan(&fps, &mut read).unwrap();
    assert_eq!(changes.len(), 2);
    assert!(matches!(&changes[0].action, Action::Rename { from, .. } if from == "a.txt"));
    assert_eq!(changes[0].paths(), vec!["a.txt", "b.txt"]);
    let out = patch_tree(&t, patch).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out["b.txt"].0, b"3\n");
}

#[test]
fn rename_onto_existing_file_is_refused() {
    let patch = "diff --git a/a b/b\nsimilarity index 100%\nrename from a\nrename to b\n";
    assert_eq!(
        patch_tree(&tree(&[("a", "1\n"), ("b", "2\n")]), patch).unwrap_err(),
        PatchError::AlreadyExists { path: "b".into() }
    );
}

#[test]
fn hunks_out_of_range_fail_cleanly() {
    let p = "--- a/f\n+++ b/f\n@@ -100,3 +100,3 @@\n x\n-y\n+z\n w\n";
    let err = patch_tree(&tree(&[("f", "a\n")]), p).unwrap_err();
    assert!(
        matches!(err, PatchError::HunkFailed { hunk: 1, .. }),
        "{err}"
    );
    // Pure insertion far past the end of the file is clamped to the end.
    let p = "--- a/f\n+++ b/f\n@@ -100,0 +101 @@\n+z\n";
    assert_eq!(
        patch_tree(&tree(&[("f", "a\n")]), p).unwrap()["f"].0,
        b"a\nz\n"
    );
}

#[test]
fn header_only_modify_plans_nothing() {
    let t = tree(&[("x", "1\n")]);
    let fps = parse("diff --git a/x b/x\nindex 1..2 100644\n").unwrap();
    let mut read = |p: &str| t.get(p).map(|(c, _)| c.clone());
    assert!(plan(&fps, &mut read).unwrap().is_empty());
}

#[test]
fn hand_built_inconsistent_patch_is_refused() {
    let fp = crate::FilePatch {
        old_path: Some("a".into()),
        new_path: None,
        kind: PatchKind::Rename,
        old_mode: None,
        new_mode: None,
        hunks: Vec::new(),
    };
    let mut read = |_: &str| Some(Vec::new());
    let err = plan(&[fp], &mut read).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid file patch for a: rename patch without new path"
    );
}
