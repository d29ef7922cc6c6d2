//! Allowed roots for host paths that MCP clients pass (`seed_path`, `source_path`,
//! `output_path`). A client is a remote party: without this check it could import any file the
//! server's user can read, or write anywhere that user can write.
//!
//! Paths are resolved (symlinks included) before they are compared, so a link inside a root
//! that points outside it is refused too. A path that does not exist yet (an export's output)
//! is checked through its parent directory, which must exist.

use std::path::{Component, Path, PathBuf};

/// Why a host path was refused.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The path resolves outside every allowed root.
    #[error("host path {path:?} is outside the allowed roots ({roots})")]
    Outside {
        /// The path as given.
        path: String,
        /// The roots, comma-separated.
        roots: String,
    },
    /// The path (or, for an output, its parent) cannot be resolved.
    #[error("host path {path:?} cannot be resolved: {source}")]
    Unresolvable {
        /// The path as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The path is empty or names no file (`/`, `..`).
    #[error("host path {0:?} names no file")]
    Invalid(String),
}

/// Directories under which client-supplied host paths must lie.
#[derive(Debug, Clone)]
pub struct AllowedRoots {
    /// Canonical roots; relative paths are resolved against the first.
    roots: Vec<PathBuf>,
}

impl AllowedRoots {
    /// Roots from the given directories; each must exist. The first one is the base for
    /// relative paths (the server's working directory by default).
    pub fn new(dirs: &[PathBuf]) -> std::io::Result<AllowedRoots> {
        let roots = dirs
            .iter()
            .map(|d| d.canonicalize())
            .collect::<std::io::Result<Vec<_>>>()?;
        if roots.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "at least one allowed root is needed",
            ));
        }
        Ok(AllowedRoots { roots })
    }

    /// The canonical roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn joined(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn absolute(&self, given: &str) -> Result<PathBuf, RootError> {
        if given.is_empty() || given.contains('\0') {
            return Err(RootError::Invalid(given.into()));
        }
        let p = Path::new(given);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.roots[0].join(p)
        })
    }

    fn inside(&self, given: &str, resolved: PathBuf) -> Result<PathBuf, RootError> {
        if self.roots.iter().any(|r| resolved.starts_with(r)) {
            Ok(resolved)
        } else {
            Err(RootError::Outside {
                path: given.into(),
                roots: self.joined(),
            })
        }
    }

    /// An existing path to read from (a seed or a sync source), resolved.
    pub fn check_existing(&self, given: &str) -> Result<PathBuf, RootError> {
        let p = self.absolute(given)?;
        let resolved = p.canonicalize().map_err(|source| RootError::Unresolvable {
            path: given.into(),
            source,
        })?;
        self.inside(given, resolved)
    }

    /// A path to create (an export's output): its parent must exist and lie inside a root. The
    /// last component itself is kept as given, so an existing symlink there is seen (and
    /// refused) by the export rather than followed.
    pub fn check_output(&self, given: &str) -> Result<PathBuf, RootError> {
        let p = self.absolute(given)?;
        let name = match p.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => return Err(RootError::Invalid(given.into())),
        };
        let parent = p.parent().ok_or_else(|| RootError::Invalid(given.into()))?;
        let parent = parent
            .canonicalize()
            .map_err(|source| RootError::Unresolvable {
                path: given.into(),
                source,
            })?;
        let resolved = parent.join(name);
        // A symlink in the last place could point anywhere; refuse it rather than guess.
        if let Ok(target) = resolved.canonicalize() {
            self.inside(given, target)?;
        }
        self.inside(given, resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_under_a_root() -> std::io::Result<()> {
        let base = tempfile::tempdir()?;
        let root = base.path().join("root");
        let other = base.path().join("other");
        std::fs::create_dir_all(root.join("seed"))?;
        std::fs::create_dir_all(&other)?;
        std::os::unix::fs::symlink(&other, root.join("escape"))?;
        let roots = AllowedRoots::new(std::slice::from_ref(&root))?;
        let root = root.canonicalize()?;

        assert_eq!(roots.check_existing("seed").ok(), Some(root.join("seed")));
        let abs = root.join("seed").display().to_string();
        assert!(roots.check_existing(&abs).is_ok());
        let out = other.display().to_string();
        assert!(matches!(
            roots.check_existing(&out),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_existing("escape"),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_existing("../other"),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_existing("missing"),
            Err(RootError::Unresolvable { .. })
        ));

        assert_eq!(
            roots.check_output("out.tar").ok(),
            Some(root.join("out.tar"))
        );
        assert!(matches!(
            roots.check_output("escape/x"),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_output("escape"),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_output("../x"),
            Err(RootError::Outside { .. })
        ));
        assert!(matches!(
            roots.check_output("seed/.."),
            Err(RootError::Invalid(_))
        ));
        assert!(matches!(roots.check_output(""), Err(RootError::Invalid(_))));
        Ok(())
    }
}
