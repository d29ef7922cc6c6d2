//! Keeps ARCHITECTURE.md's code map true, and the crate boundaries it states: every crate and
//! every top-level module is named in the map, no crate depends on what the map says it must
//! never, and no `PYRO_*` variable is read outside `pyro_api::paths`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("crates"))
        .expect("crates/")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The map's section for one crate: from its `### \`crates/NAME\`` heading to the next heading.
fn section<'a>(map: &'a str, krate: &str) -> Option<&'a str> {
    let head = format!("### `crates/{krate}`");
    let start = map.find(&head)? + head.len();
    let end = map[start..].find("\n#").map_or(map.len(), |i| start + i);
    Some(&map[start..end])
}

/// Top-level modules of a crate: `src/NAME.rs` and `src/NAME/` (binaries' and test dirs aside).
fn modules(krate: &str) -> BTreeSet<String> {
    let src = root().join("crates").join(krate).join("src");
    fs::read_dir(&src)
        .expect("src/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if path.is_dir() {
                let skip = ["bin", "tests", "snapshots"].contains(&name.as_str());
                (!skip).then_some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (!["lib", "main"].contains(&stem)).then(|| stem.to_string())
            }
        })
        .collect()
}

#[test]
fn every_crate_and_module_is_in_the_code_map() {
    let map = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for krate in crates() {
        let Some(text) = section(&map, &krate) else {
            missing.push(format!(
                "crate {krate} has no `### \\`crates/{krate}\\`` section"
            ));
            continue;
        };
        for m in modules(&krate) {
            if !text.contains(&format!("`{m}`")) && !text.contains(&format!("`{m} ")) {
                missing.push(format!("{krate}: module `{m}` is not named in its section"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md is out of date:\n{}",
        missing.join("\n")
    );
}

/// The crates a crate lists under `[dependencies]` (not dev or build dependencies).
fn dependencies(krate: &str) -> BTreeSet<String> {
    let text = fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml"))
        .expect("Cargo.toml");
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.starts_with('#') {
            if let Some(name) = line.split(['=', '.', ' ']).next().filter(|n| !n.is_empty()) {
                deps.insert(name.to_string());
            }
        }
    }
    deps
}

#[test]
fn no_crate_depends_on_what_the_map_forbids() {
    // (crate, what it must never depend on), as ARCHITECTURE.md's "Never" lines say.
    let rules: &[(&str, &[&str])] = &[
        (
            "pyro-api",
            &[
                "pyro",
                "pyro-store",
                "pyro-image",
                "pyro-net",
                "pyro-backend",
                "pyro-protocol",
            ],
        ),
        ("pyro-protocol", &["pyro-api", "pyro", "tokio"]),
        ("pyro-patch", &["pyro-api", "pyro", "tokio"]),
        (
            "pyro-image",
            &["pyro-store", "pyro-net", "pyro-backend", "pyro", "rusqlite"],
        ),
        (
            "pyro-net",
            &[
                "pyro-store",
                "pyro-backend",
                "pyro-image",
                "pyro",
                "rusqlite",
            ],
        ),
        ("pyro-store", &["pyro-backend", "pyro-image", "pyro"]),
        ("pyro-backend", &["pyro-store", "rusqlite", "pyro"]),
        (
            "pyro-agent",
            &["pyro", "pyro-api", "pyro-backend", "pyro-store"],
        ),
        ("pyro", &["pyro-mcp", "pyro-cli"]),
        ("pyro-mcp", &["pyro-cli"]),
    ];
    let mut broken = Vec::new();
    for (krate, never) in rules {
        let deps = dependencies(krate);
        for n in *never {
            if deps.contains(*n) {
                broken.push(format!("{krate} depends on {n}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "crate boundaries broken:\n{}",
        broken.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn pyro_variables_are_read_in_one_place() {
    let allowed = root().join("crates/pyro-api/src/paths.rs");
    let mut offenders = Vec::new();
    for krate in crates() {
        let mut files = Vec::new();
        rust_files(&root().join("crates").join(&krate).join("src"), &mut files);
        for f in files {
            if f == allowed {
                continue;
            }
            let text = fs::read_to_string(&f).unwrap_or_default();
            for pat in ["var(\"PYRO_", "var_os(\"PYRO_", "from_env(\"PYRO_"] {
                if text.contains(pat) {
                    offenders.push(format!("{} reads {pat}…", f.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "read PYRO_* variables through pyro_api::paths::var (a Var documented in ENV_VARS):\n{}",
        offenders.join("\n")
    );
}
