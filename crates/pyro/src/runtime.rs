//! `pyro runtime install`: the pinned Firecracker and jailer, checked against pinned sha256 sums
//! and installed where the Firecracker backend looks (`~/.cache/pyro/firecracker/`).
//!
//! Sources: `--from` a directory holding `firecracker` and `jailer` (what
//! `../shared/tools/fetch-firecracker DIR` produces) or the upstream release tarball
//! (`firecracker-v1.12.1-x86_64.tgz`); without `--from`, the upstream release is downloaded with
//! `curl`. Either way nothing is installed unless both binaries match the pinned sums.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// The pinned Firecracker release.
pub const FIRECRACKER_VERSION: &str = "v1.12.1";
/// sha256 of the pinned `firecracker` binary (x86_64, static).
pub const FIRECRACKER_SHA256: &str =
    "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930";
/// sha256 of the pinned `jailer` binary (x86_64, static).
pub const JAILER_SHA256: &str = "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5";
/// Where the upstream release tarball is.
pub const RELEASE_URL: &str = "https://github.com/firecracker-microvm/firecracker/releases/download/v1.12.1/firecracker-v1.12.1-x86_64.tgz";

/// What was installed.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInstall {
    /// The version.
    pub version: &'static str,
    /// The installed firecracker.
    pub firecracker: PathBuf,
    /// The installed jailer.
    pub jailer: PathBuf,
    /// Whether the binaries were already installed with the right sums.
    pub already_installed: bool,
}

fn err(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "firecracker",
        message: message.into(),
    }
}

/// The install directory: `~/.cache/pyro/firecracker`.
pub fn install_dir() -> PathBuf {
    crate::paths::home_dir().join(".cache/pyro/firecracker")
}

fn sha256_file(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(b)))
}

/// Finds `name` (or `name-v1.12.1-x86_64`, as in the release tarball) under `dir`, recursively.
fn find_binary(dir: &Path, name: &str) -> Option<PathBuf> {
    let alt = format!("{name}-{FIRECRACKER_VERSION}-x86_64");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = find_binary(&p, name) {
                return Some(f);
            }
        } else if ft.is_file() {
            let n = e.file_name();
            if n == name || n.to_string_lossy() == alt {
                return Some(p);
            }
        }
    }
    None
}

/// Installs the pinned Firecracker and jailer from `from` (a directory or a release `.tgz`), or
/// downloads the upstream release when `from` is `None`.
pub fn install(from: Option<&Path>) -> Result<RuntimeInstall> {
    let dest = install_dir();
    let (fc_dst, jl_dst) = (dest.join("firecracker"), dest.join("jailer"));
    if sha256_file(&fc_dst).as_deref() == Some(FIRECRACKER_SHA256)
        && sha256_file(&jl_dst).as_deref() == Some(JAILER_SHA256)
    {
        return Ok(RuntimeInstall {
            version: FIRECRACKER_VERSION,
            firecracker: fc_dst,
            jailer: jl_dst,
            already_installed: true,
        });
    }
    std::fs::create_dir_all(&dest).ctx(|| format!("create {}", dest.display()))?;
    let scratch = dest.join(format!(".tmp-{}", pyro_api::ids::unique_suffix()));
    std::fs::create_dir_all(&scratch).ctx(|| format!("create {}", scratch.display()))?;
    let result = install_into(from, &scratch, &fc_dst, &jl_dst);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn install_into(
    from: Option<&Path>,
    scratch: &Path,
    fc_dst: &Path,
    jl_dst: &Path,
) -> Result<RuntimeInstall> {
    let src_dir = match from {
        Some(p) if p.is_dir() => p.to_path_buf(),
        other => {
            let tgz = match other {
                Some(p) => p.to_path_buf(),
                None => {
                    let t = scratch.join("release.tgz");
                    let st = Command::new("curl")
                        .args(["-fsSL", "--proto", "=https", "-o"])
                        .arg(&t)
                        .arg(RELEASE_URL)
                        .status()
                        .map_err(|e| err(format!("run curl: {e}")))?;
                    if !st.success() {
                        return Err(err(format!(
                            "download {RELEASE_URL} failed ({st}); use --from with a local copy"
                        )));
                    }
                    t
                }
            };
            let out = scratch.join("x");
            std::fs::create_dir_all(&out).ctx(|| format!("create {}", out.display()))?;
            let st = Command::new("tar")
                .arg("-xzf")
                .arg(&tgz)
                .arg("-C")
                .arg(&out)
                .arg("--no-same-owner")
                .status()
                .map_err(|e| err(format!("run tar: {e}")))?;
            if !st.success() {
                return Err(err(format!("unpack {} failed ({st})", tgz.display())));
            }
            out
        }
    };
    let mut installed = Vec::new();
    for (name, want, dst) in [
        ("firecracker", FIRECRACKER_SHA256, fc_dst),
        ("jailer", JAILER_SHA256, jl_dst),
    ] {
        let src = find_binary(&src_dir, name)
            .ok_or_else(|| err(format!("no {name} binary in {}", src_dir.display())))?;
        let got = sha256_file(&src).unwrap_or_default();
        if got != want {
            return Err(err(format!(
                "{} has sha256 {got}, not the pinned {FIRECRACKER_VERSION} {want}",
                src.display()
            )));
        }
        let tmp = scratch.join(format!("{name}.new"));
        let bytes = std::fs::read(&src).ctx(|| format!("read {}", src.display()))?;
        let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", tmp.display()))?;
        installed.push((tmp, dst.to_path_buf()));
    }
    // Both verified; only now replace what was there.
    for (tmp, dst) in installed {
        std::fs::rename(&tmp, &dst).ctx(|| format!("install {}", dst.display()))?;
    }
    Ok(RuntimeInstall {
        version: FIRECRACKER_VERSION,
        firecracker: fc_dst.to_path_buf(),
        jailer: jl_dst.to_path_buf(),
        already_installed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_with_the_wrong_sum_is_refused_and_nothing_installed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(src.join("firecracker"), b"not firecracker")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(src.join("jailer"), b"not jailer").unwrap_or_else(|e| panic!("{e}"));
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{e}"));
        let (fc, jl) = (dir.path().join("fc"), dir.path().join("jl"));
        let e = install_into(Some(&src), &scratch, &fc, &jl)
            .err()
            .unwrap_or_else(|| panic!("accepted a wrong binary"));
        assert!(e.to_string().contains("not the pinned"), "{e}");
        assert!(!fc.exists() && !jl.exists());
    }

    #[test]
    fn release_tarball_names_are_found() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("release-v1.12.1-x86_64");
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(sub.join("jailer-v1.12.1-x86_64"), b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            find_binary(dir.path(), "jailer"),
            Some(sub.join("jailer-v1.12.1-x86_64"))
        );
        assert_eq!(find_binary(dir.path(), "firecracker"), None);
    }
}
