//! The static guest agent carried inside this library (see `build.rs`), installed once per
//! build into the cache so that backends can copy or boot it like any file.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

#[cfg(pyro_embedded_agent)]
const AGENT: Option<(&[u8], &str)> = Some((
    include_bytes!(concat!(env!("OUT_DIR"), "/pyro-agent")),
    env!("PYRO_EMBEDDED_AGENT_SHA256"),
));
#[cfg(not(pyro_embedded_agent))]
const AGENT: Option<(&[u8], &str)> = None;

/// The embedded agent's sha256 (hex), when this build carries one.
pub fn digest() -> Option<&'static str> {
    AGENT.map(|(_, d)| d)
}

/// Writes the embedded agent to `<cache>/agent/pyro-agent-<digest prefix>` unless it is there
/// already, and returns that path; `None` when this build carries no agent.
pub fn install(cache: &Path) -> Option<Result<PathBuf>> {
    let (bytes, digest) = AGENT?;
    Some(install_bytes(cache, bytes, digest))
}

fn install_bytes(cache: &Path, bytes: &[u8], digest: &str) -> Result<PathBuf> {
    let dir = cache.join("agent");
    let path = dir.join(format!("pyro-agent-{}", &digest[..digest.len().min(16)]));
    // The name carries the content's hash; a file of the right size there is this agent (a
    // partial write never gets the name: it is renamed into place).
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile_in(&dir)?;
    tmp.1
        .write_all(bytes)
        .and_then(|()| tmp.1.sync_all())
        .ctx(|| format!("write {}", tmp.0.display()))?;
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", tmp.0.display()))?;
    std::fs::rename(&tmp.0, &path).ctx(|| format!("install {}", path.display()))?;
    Ok(path)
}

/// A new file in `dir` that no other process writes to.
fn tempfile_in(dir: &Path) -> Result<(PathBuf, std::fs::File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(".tmp-agent-{}-{nanos}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(|| format!("create {}", path.display()))?;
    Ok((path, f))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn installs_once_and_replaces_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = install_bytes(dir.path(), b"\x7fELF agent", "abcdef0123456789ff").unwrap();
        assert!(p.ends_with("agent/pyro-agent-abcdef0123456789"));
        assert_eq!(std::fs::read(&p).unwrap(), b"\x7fELF agent");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // A truncated file under the name (a crash mid-copy by an older build) is rewritten.
        std::fs::write(&p, b"\x7fELF").unwrap();
        let again = install_bytes(dir.path(), b"\x7fELF agent", "abcdef0123456789ff").unwrap();
        assert_eq!(std::fs::read(again).unwrap(), b"\x7fELF agent");
    }

    #[test]
    fn this_build_carries_a_static_agent() {
        // The workspace builds embed the agent unless PYRO_EMBED_AGENT=0 said otherwise.
        if option_env!("PYRO_EMBED_AGENT").is_some_and(|v| v == "0") {
            eprintln!("SKIPPED: built with PYRO_EMBED_AGENT=0");
            return;
        }
        let (bytes, digest) = AGENT.expect("an embedded agent");
        assert!(bytes.starts_with(b"\x7fELF"));
        assert_eq!(digest.len(), 64);
        let dir = tempfile::tempdir().unwrap();
        let p = install(dir.path()).unwrap().unwrap();
        assert!(crate::context::is_static_binary(&p));
    }
}
