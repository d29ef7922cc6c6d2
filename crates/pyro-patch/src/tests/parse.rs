use crate::{parse, HunkLine, PatchError, PatchKind};

#[test]
fn git_modify_with_index_and_multiple_hunks() {
    let p = "diff --git a/src/lib.rs b/src/lib.rs\nindex 3b18e51..4c5d2a1 100644\n--- a/src/lib.rs\n+++ b/src/lib.rs\n\
             @@ -1,2 +1,2 @@ fn main() {\n-a\n+b\n c\n@@ -10 +10 @@\n-x\n+y\n";
    let fps = parse(p).unwrap();
    assert_eq!(fps.len(), 1);
    let f = &fps[0];
    assert_eq!(f.kind, PatchKind::Modify);
    assert_eq!(f.old_path.as_deref(), Some("src/lib.rs"));
    assert_eq!(f.new_path.as_deref(), Some("src/lib.rs"));
    assert_eq!((f.old_mode, f.new_mode), (None, None));
    assert_eq!(f.hunks.len(), 2);
    assert_eq!(f.hunks[0].section, "fn main() {");
    assert_eq!(
        f.hunks[0].lines,
        vec![
            HunkLine::Remove("a".into()),
            HunkLine::Add("b".into()),
            HunkLine::Context("c".into())
        ]
    );
    let h = &f.hunks[1];
    assert_eq!(
        (h.old_start, h.old_count, h.new_start, h.new_count),
        (10, 1, 10, 1)
    );
    assert_eq!(h.header(), "@@ -10 +10 @@");
}

#[test]
fn new_deleted_and_mode_headers() {
    let p = "diff --git a/run.sh b/run.sh\nnew file mode 100755\nindex 0000000..e69de29\n\
             diff --git a/old.txt b/old.txt\ndeleted file mode 100644\nindex 1..0\n--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n\
             diff --git a/m b/m\nold mode 100644\nnew mode 100755\n";
    let fps = parse(p).unwrap();
    assert_eq!(fps.len(), 3);
    assert_eq!(fps[0].kind, PatchKind::Add);
    assert_eq!(fps[0].new_path.as_deref(), Some("run.sh"));
    assert_eq!(fps[0].old_path, None);
    assert_eq!(fps[0].new_mode, Some(0o100755));
    assert_eq!(fps[1].kind, PatchKind::Delete);
    assert_eq!(fps[1].old_path.as_deref(), Some("old.txt"));
    assert_eq!(fps[1].old_mode, Some(0o100644));
    assert_eq!(fps[2].kind, PatchKind::Modify);
    assert_eq!(
        (fps[2].old_mode, fps[2].new_mode),
        (Some(0o100644), Some(0o100755))
    );
    assert!(fps[2].hunks.is_empty());
}

#[test]
fn renames_and_quoted_paths() {
    let p = "diff --git \"a/sp ace\\303\\251\" \"b/n\\\"ew\"\nsimilarity index 100%\n\
             rename from \"sp ace\\303\\251\"\nrename to \"n\\\"ew\"\n";
    let fps = parse(p).unwrap();
    assert_eq!(fps[0].kind, PatchKind::Rename);
    assert_eq!(fps[0].old_path.as_deref(), Some("sp aceé"));
    assert_eq!(fps[0].new_path.as_deref(), Some("n\"ew"));
    let p = "diff --git a/x y b/x y\nindex 1..2 100644\n--- a/x y\t\n+++ b/x y\t\n@@ -1 +1 @@\n-1\n+2\n";
    assert_eq!(parse(p).unwrap()[0].new_path.as_deref(), Some("x y"));
}

#[test]
fn plain_unified_diffs() {
    let p = "Some explanation from the agent.\n\n--- a/x.txt\t2024-01-01 00:00:00\n+++ b/x.txt\t2024-01-02\n\
             @@ -1,3 +1,3 @@\n a\n-b\n+c\n \n--- /dev/null\n+++ b/new\n@@ -0,0 +1 @@\n+n\n\\ No newline at end of file\n";
    let fps = parse(p).unwrap();
    assert_eq!(fps.len(), 2);
    assert_eq!(fps[0].kind, PatchKind::Modify);
    assert_eq!(fps[0].hunks[0].lines[3], HunkLine::Context(String::new()));
    assert_eq!(fps[1].kind, PatchKind::Add);
    assert!(fps[1].hunks[0].new_no_newline);
    assert!(!fps[1].hunks[0].old_no_newline);
}

#[test]
fn binary_patches_are_refused() {
    let p =
        "diff --git a/i.png b/i.png\nindex 1..2 100644\nBinary files a/i.png and b/i.png differ\n";
    assert_eq!(
        parse(p).unwrap_err(),
        PatchError::Binary {
            path: "i.png".into()
        }
    );
    let p = "diff --git a/i.png b/i.png\nnew file mode 100644\nindex 0..2\nGIT binary patch\nliteral 5\nMcmZ?\n\nliteral 0\n";
    let err = parse(p).unwrap_err();
    assert_eq!(err.to_string(), "binary patch for i.png is not supported");
}

#[test]
fn path_traversal_is_refused() {
    for (p, bad) in [
        ("--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-x\n+y\n", "../etc/passwd"),
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-x\n+y\n", "/etc/passwd"),
        ("diff --git a/ok b/sub/../../x\nsimilarity index 100%\nrename from ok\nrename to sub/../../x\n", "sub/../../x"),
        ("--- /dev/null\n+++ \"b/a\\000b\"\n@@ -0,0 +1 @@\n+x\n", "a\0b"),
    ] {
        match parse(p) {
            Err(PatchError::InvalidPath { path, .. }) => assert_eq!(path, bad),
            other => panic!("{p:?}: {other:?}"),
        }
    }
    let err = parse("--- /dev/null\n+++ b//abs\n@@ -0,0 +1 @@\n+x\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid path \"/abs\": absolute paths are not allowed"
    );
}

#[test]
fn malformed_patches() {
    assert_eq!(
        parse("just some text\n").unwrap_err(),
        PatchError::NoChanges
    );
    let truncated = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n";
    assert!(matches!(parse(truncated), Err(PatchError::Parse { .. })));
    let too_long = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n+c\n";
    let err = parse(too_long).unwrap_err();
    assert!(
        err.to_string()
            .contains("more lines than its header counts"),
        "{err}"
    );
    let orphan = "@@ -1 +1 @@\n-a\n+b\n";
    assert!(matches!(
        parse(orphan),
        Err(PatchError::Parse { line: 1, .. })
    ));
    assert!(matches!(
        parse("--- a/f\n+++ b/f\n@@ -x +1 @@\n"),
        Err(PatchError::Parse { line: 3, .. })
    ));
}

#[test]
fn unsupported_features() {
    let p = "diff --git a/l b/l\nnew file mode 120000\nindex 0..1\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n";
    assert!(matches!(parse(p), Err(PatchError::Unsupported { what, .. }) if what == "symlinks"));
    let p = "diff --git a/a b/c\nsimilarity index 100%\ncopy from a\ncopy to c\n";
    assert!(matches!(parse(p), Err(PatchError::Unsupported { .. })));
}
