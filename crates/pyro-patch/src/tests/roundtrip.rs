use super::{patch_tree, Tree};
use crate::{parse, unified_diff, MODE_FILE};

/// `plan(parse(unified_diff(old, new)))` applied to `old` gives exactly `new`.
fn roundtrip(old: Option<&[u8]>, new: Option<&[u8]>) {
    let diff = unified_diff("dir/f.txt", old, new, None, None);
    let mut tree = Tree::new();
    if let Some(o) = old {
        tree.insert("dir/f.txt".into(), (o.to_vec(), MODE_FILE));
    }
    let out = patch_tree(&tree, &diff).unwrap_or_else(|e| {
        panic!("{e}\nold={old:?}\nnew={new:?}\ndiff:\n{diff}");
    });
    let got = out.get("dir/f.txt").map(|(c, _)| c.as_slice());
    assert_eq!(got, new, "old={old:?}\nnew={new:?}\ndiff:\n{diff}");
}

fn both(old: &str, new: &str) {
    roundtrip(Some(old.as_bytes()), Some(new.as_bytes()));
    roundtrip(Some(new.as_bytes()), Some(old.as_bytes()));
}

#[test]
fn simple_cases() {
    both("a\nb\nc\n", "a\nB\nc\n");
    both("", "a\n");
    both("", "a");
    both("", "\n");
    both("a\n", "a");
    both("a", "b");
    both("a\nb", "a\nb\n");
    both("a\nb", "a\nc");
    both("\n", "\n\n");
    both("\n\n\n", "");
    both("x\n", "x\n\n");
    both(
        "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n",
        "a\nb\nc\nd\nE\nf\ng\nh\ni\nj",
    );
    both("same\n", "same\n");
}

#[test]
fn crlf_and_unicode() {
    both("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n");
    both("a\r\nb\r\n", "a\r\nb");
    both("a\r\nb\r\n", "a\nb\n");
    both("a\rb\n", "a\rc\n");
    both("héllo\nwörld\n", "héllo\nwörld 🌍\n");
    both("日本語\n", "日本語\n中文");
    both(
        " leading\n+plus\n-minus\n\\backslash\n",
        "+plus\n-minus\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n",
    );
}

#[test]
fn add_and_delete() {
    for s in ["", "a", "a\n", "\n", "a\r\nb", "x\ny\nz\n"] {
        roundtrip(None, Some(s.as_bytes()));
        roundtrip(Some(s.as_bytes()), None);
    }
}

#[test]
fn large_file() {
    let old: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let new: String = (0..5000)
        .filter(|i| i % 97 != 0)
        .map(|i| {
            if i % 13 == 0 {
                format!("changed {i}\n")
            } else {
                format!("line {i}\n")
            }
        })
        .collect();
    both(&old, &new);
    both(&old, &format!("{old}tail"));
}

#[test]
fn mode_only_diff_round_trips() {
    let diff = unified_diff(
        "run.sh",
        Some(b"x\n"),
        Some(b"x\n"),
        Some(0o100644),
        Some(0o100755),
    );
    assert_eq!(
        diff,
        "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n"
    );
    let mut tree = Tree::new();
    tree.insert("run.sh".into(), (b"x\n".to_vec(), 0o100644));
    let out = patch_tree(&tree, &diff).unwrap();
    assert_eq!(out["run.sh"], (b"x\n".to_vec(), 0o100755));
}

#[test]
fn quoted_path_round_trips() {
    let path = "sp ace/q\"é\tx.txt";
    let diff = unified_diff(path, Some(b"a\n"), Some(b"b\n"), None, None);
    assert!(
        diff.starts_with("diff --git \"a/sp ace/q\\\"\\303\\251\\tx.txt\""),
        "{diff}"
    );
    let mut tree = Tree::new();
    tree.insert(path.into(), (b"a\n".to_vec(), MODE_FILE));
    let out = patch_tree(&tree, &diff).unwrap();
    assert_eq!(out[path].0, b"b\n");
    let spaced = unified_diff("a b.txt", Some(b"a\n"), Some(b"b\n"), None, None);
    assert!(spaced.contains("--- a/a b.txt\t\n"), "{spaced}");
    let mut tree = Tree::new();
    tree.insert("a b.txt".into(), (b"a\n".to_vec(), MODE_FILE));
    assert_eq!(patch_tree(&tree, &spaced).unwrap()["a b.txt"].0, b"b\n");
}

#[test]
fn binary_is_detected() {
    let d = unified_diff(
        "img.png",
        Some(b"\x89PNG\0\x01"),
        Some(b"\x89PNG\0\x02"),
        None,
        None,
    );
    assert!(
        d.ends_with("Binary files a/img.png and b/img.png differ\n"),
        "{d}"
    );
    let d = unified_diff("x.bin", None, Some(&[0xff, 0xfe]), None, None);
    assert!(
        d.ends_with("Binary files /dev/null and b/x.bin differ\n"),
        "{d}"
    );
    assert!(matches!(parse(&d), Err(crate::PatchError::Binary { path }) if path == "x.bin"));
    assert!(!crate::is_binary("plain text é".as_bytes()));
}

#[test]
fn no_change_is_empty() {
    assert_eq!(unified_diff("x", Some(b"a"), Some(b"a"), None, None), "");
    assert_eq!(unified_diff("x", None, None, None, None), "");
    assert!(parse("").unwrap().is_empty());
}

/// A tiny linear congruential generator: deterministic, dependency-free.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    pub(crate) fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

const WORDS: &[&str] = &["a", "b", "c", "", "}", "fn x() {", "a\r", "é", " ", "\t-"];

pub(crate) fn random_text(rng: &mut Lcg, lines: usize) -> String {
    let mut s = String::new();
    for i in 0..lines {
        s.push_str(WORDS[rng.below(WORDS.len() as u64)]);
        if i + 1 < lines || rng.below(3) != 0 {
            s.push('\n');
        }
    }
    s
}

pub(crate) fn mutate(rng: &mut Lcg, text: &str) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    for _ in 0..rng.below(6) {
        let at = rng.below(lines.len() as u64 + 1);
        match rng.below(4) {
            0 if at < lines.len() => {
                lines.remove(at);
            }
            1 if at < lines.len() => {
                let nl = if lines[at].ends_with('\n') { "\n" } else { "" };
                lines[at] = format!("{}{nl}", WORDS[rng.below(WORDS.len() as u64)]);
            }
            _ => lines.insert(at, format!("{}\n", WORDS[rng.below(WORDS.len() as u64)])),
        }
    }
    let mut s: String = lines.concat();
    // Toggle the final newline now and then.
    if rng.below(4) == 0 {
        if s.ends_with('\n') {
            s.pop();
        } else {
            s.push('\n');
        }
    }
    s
}

#[test]
fn randomized_round_trips() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..3000 {
        let len = rng.below(30);
        let old = random_text(&mut rng, len);
        let new = mutate(&mut rng, &old);
        roundtrip(Some(old.as_bytes()), Some(new.as_bytes()));
        if rng.below(20) == 0 {
            roundtrip(None, Some(new.as_bytes()));
            roundtrip(Some(old.as_bytes()), None);
        }
    }
}
