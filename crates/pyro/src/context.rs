//! The configuration and the context every sandbox borrows (see [`Context`]).

use std::path::{Path, PathBuf};

use crate::backend::container::find_runc;
use crate::env::RegistrySettings;
use crate::error::{Error, Result};
use crate::paths::{var, var_path, Paths, Var};
use crate::procinfo::ProcessId;
use crate::store::Store;

/// How to set up a [`Pyro`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where state, cache and runtime files go.
    pub paths: Paths,
    /// The agent binary; `None` finds it (see [`find_agent`]).
    pub agent: Option<PathBuf>,
    /// The runc binary; `None` finds it (`$PYRO_RUNC`, then PATH).
    pub runc: Option<PathBuf>,
    /// Debian mirror for environment builds; `None` uses `$PYRO_DEBIAN_MIRROR` or mmdebstrap's.
    pub debian_mirror: Option<String>,
    /// Registries: where catalog environments are pulled from, plain-HTTP registries, pins.
    pub registry: RegistrySettings,
}

impl Config {
    /// Configuration from the environment variables listed in [`crate::paths::ENV_VARS`].
    pub fn from_env() -> Config {
        Config {
            paths: Paths::from_env(),
            agent: var_path(Var::Agent),
            runc: None,
            debian_mirror: var(Var::DebianMirror),
            registry: RegistrySettings::from_env(),
        }
    }
}

/// Finds the statically linked agent: next to the running executable, or in the Cargo target
/// directory where `scripts/build-agent` puts it (for runs from a source checkout).
pub fn find_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let triple = "x86_64-unknown-linux-gnu";
    let mut candidates = vec![dir.join("pyro-agent")];
    // target/<profile>/pyro and target/<profile>/deps/<test binary>.
    for up in [dir.parent(), dir.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
    {
        for profile in ["release", "debug"] {
            candidates.push(up.join(triple).join(profile).join("pyro-agent"));
        }
    }
    // A plain `cargo build` also leaves a dynamically linked agent beside `pyro`; prefer the
    // static one, which runs in any image.
    let found: Vec<PathBuf> = candidates.into_iter().filter(|p| p.is_file()).collect();
    found
        .iter()
        .find(|p| is_static_binary(p))
        .or(found.first())
        .cloned()
}

/// Whether an ELF binary is statically linked (has no program interpreter).
pub fn is_static_binary(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    // A dynamic executable names its interpreter in `.interp`, right after the headers.
    let head = &bytes[..bytes.len().min(8192)];
    bytes.starts_with(b"\x7fELF") && !head.windows(12).any(|w| w == b"/lib64/ld-li")
}

/// Why no agent could be used: only a build made with `PYRO_EMBED_AGENT=0` gets here.
const AGENT_MISSING: &str = "this pyro was built without its guest agent (PYRO_EMBED_AGENT=0) and none was found: set PYRO_AGENT to a static pyro-agent (scripts/build-agent builds one)";

/// What every sandbox borrows: the configuration, the state database and this process's
/// identity. It knows nothing of environments, runs or workspaces.
pub(crate) struct Context {
    pub config: Config,
    pub store: Store,
    pub me: ProcessId,
}

impl Context {
    /// The runc binary: configured, `$PYRO_RUNC`, or PATH.
    pub fn runc(&self) -> Option<PathBuf> {
        self.config.runc.clone().or_else(find_runc)
    }

    /// The agent sandboxes run: `PYRO_AGENT` (or the configured path), else the one this build
    /// carries, else (a build without one) a static agent beside the executable.
    pub fn agent_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.config.agent {
            return Ok(p.clone());
        }
        if let Some(installed) = crate::embedded_agent::install(&self.config.paths.cache) {
            return installed;
        }
        find_agent().ok_or_else(|| Error::Backend {
            backend: "container",
            message: AGENT_MISSING.into(),
        })
    }
}
