//! Whether Firecracker boots pyro's guest on this host, as a real test boot (`pyro doctor
//! --boot`) found, remembered per host and kernel. `microvm` uses Firecracker unless a test boot
//! here saw it fail, and then QEMU with KVM: a host whose KVM runs QEMU guests but not
//! Firecracker's (an old kernel, a missing KVM capability) still gets its microVMs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One remembered test boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootCheck {
    /// The backend that was booted.
    pub backend: String,
    /// Whether the guest reached the agent's handshake.
    pub boots: bool,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Why not, when not.
    pub error: Option<String>,
}

fn file_identity(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}:{}",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            )
        }
        Err(_) => format!("{}:missing", p.display()),
    }
}

/// What a test boot's verdict depends on: the host kernel and CPU, the guest kernel, the VMM.
pub fn key(kernel: &Path, vmm: &Path) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or_default()
        .to_string();
    let mut h = Sha256::new();
    for part in [
        release.trim().to_string(),
        cpu,
        file_identity(kernel),
        file_identity(vmm),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

fn path(cache: &Path, key: &str) -> PathBuf {
    cache.join("boot-checks").join(format!("{key}.json"))
}

/// The remembered verdict for `key`, if a test boot was made.
pub fn recorded(cache: &Path, key: &str) -> Option<BootCheck> {
    let text = std::fs::read_to_string(path(cache, key)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Remembers a test boot's verdict (best effort: a cache that cannot be written only means the
/// next doctor boots again).
pub fn record(cache: &Path, key: &str, check: &BootCheck) {
    let p = path(cache, key);
    let Some(dir) = p.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    if let Ok(json) = serde_json::to_vec_pretty(check) {
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_remembered_per_kernel_and_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let vmm = dir.path().join("firecracker");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&vmm, b"f").unwrap();
        let k = key(&kernel, &vmm);
        assert_eq!(k, key(&kernel, &vmm), "stable");
        assert!(recorded(dir.path(), &k).is_none());
        let check = BootCheck {
            backend: "firecracker".into(),
            boots: false,
            at_ms: 1,
            error: Some("no handshake".into()),
        };
        record(dir.path(), &k, &check);
        assert_eq!(recorded(dir.path(), &k), Some(check));
        // Another kernel is another question.
        std::fs::write(&kernel, b"kernel 2").unwrap();
        assert_ne!(key(&kernel, &vmm), k);
    }
}
