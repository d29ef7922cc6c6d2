//! Builds the guest agent as a static binary and embeds it, so that `pyro` (the CLI, or any
//! program using this library) is one self-contained executable: copying it onto PATH or
//! `cargo install` keeps every level working, and a dynamically linked `pyro-agent` that a plain
//! workspace build leaves beside it is never picked up.
//!
//! No crate builds one crate of a workspace for another target from a build script, so this runs
//! cargo itself: the agent is built with `+crt-static` (it runs in images without glibc and as a
//! VM's PID 1 with nothing else in its initramfs) for the target this library is built for, in its
//! own target directory (the outer build holds the lock on its own).
//!
//! `PYRO_EMBED_AGENT` changes this: a path embeds that (already static) agent instead; `0`
//! embeds nothing, and pyro then needs `PYRO_AGENT` at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn main() {
    println!("cargo::rerun-if-env-changed=PYRO_EMBED_AGENT");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out.join("pyro-agent");
    let choice = std::env::var("PYRO_EMBED_AGENT").unwrap_or_default();
    let agent = match choice.as_str() {
        "0" | "off" | "no" => None,
        "" => Some(build_agent(&out)),
        path => {
            println!("cargo::rerun-if-changed={path}");
            Some(PathBuf::from(path))
        }
    };
    match agent {
        Some(src) => {
            let bytes = std::fs::read(&src).unwrap_or_else(|e| {
                panic!("cannot read the agent {} to embed it: {e}", src.display())
            });
            std::fs::write(&embedded, &bytes)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", embedded.display()));
            // The file name it is installed under at run time, so nothing is hashed there.
            let digest = hex::encode(Sha256::digest(&bytes));
            println!("cargo::rustc-env=PYRO_EMBEDDED_AGENT_SHA256={digest}");
            println!("cargo::rustc-cfg=pyro_embedded_agent");
        }
        None => {
            let _ = std::fs::remove_file(&embedded);
        }
    }
    println!("cargo::rustc-check-cfg=cfg(pyro_embedded_agent)");
}

/// Runs `cargo build` for the agent and returns the built binary.
fn build_agent(out: &Path) -> PathBuf {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let agent_dir = manifest_dir.join("../pyro-agent");
    let protocol_dir = manifest_dir.join("../pyro-protocol");
    let workspace = manifest_dir.join("../..");
    for p in [
        agent_dir.join("src"),
        agent_dir.join("Cargo.toml"),
        protocol_dir.join("src"),
        protocol_dir.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo::rerun-if-changed={}", p.display());
    }
    let target = std::env::var("TARGET").expect("set by cargo");
    // OUT_DIR is <target dir>[/<triple>]/<profile>/build/<pkg>-<hash>/out: one agent build
    // beside the profiles serves debug and release alike.
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|d| d.join("pyro-agent-embed"))
        .unwrap_or_else(|| out.join("pyro-agent-embed"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "-p",
            "pyro-agent",
            "--target",
            &target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host binary, and a lint driver (clippy) wrapping
        // it must not wrap this build.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    if workspace.join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest agent: {e}"));
    if !status.success() {
        panic!(
            "building the static guest agent failed ({status}); set PYRO_EMBED_AGENT to a built \
             static agent to embed it instead"
        );
    }
    target_dir.join(&target).join("release").join("pyro-agent")
}
