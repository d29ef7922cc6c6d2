//! The engine context that operations borrow: the [`Context`] every sandbox shares, the
//! environment cache and this process's live VMs. [`Pyro`] is a handle on it; the operations
//! (`run`, `vm`, `workspace`, `gc`, the facade's environment and level calls) are `impl Pyro`
//! blocks in their own modules, above this one.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::{Backend, Isolation};
use crate::context::Context;
use crate::env::{EnvCache, ImageDefaults, ResolvedEnv};
use crate::sandbox::Sandbox;

/// Everything one [`Pyro`] owns.
pub(crate) struct Engine {
    pub ctx: Arc<Context>,
    pub envs: EnvCache,
    /// The started VMs of this process (see `vm_calls`).
    pub vms: LiveVms,
}

impl Deref for Engine {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// The pyro library. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Pyro {
    pub(crate) inner: Arc<Engine>,
}

/// What [`Pyro::prepare`] found for a new sandbox.
pub(crate) struct Prepared {
    pub level: Isolation,
    pub backend: Arc<dyn Backend>,
    pub env: ResolvedEnv,
    pub rootfs: PathBuf,
    /// How commands run in the environment (its image config).
    pub defaults: ImageDefaults,
    /// Set when `allow_host_compat` put the sandbox on another level than the one asked for.
    pub warning: Option<String>,
}

/// The started VMs of this process, by id.
#[derive(Default)]
pub(crate) struct LiveVms(pub(crate) tokio::sync::Mutex<std::collections::HashMap<String, LiveVm>>);

/// A started VM: its sandbox, and how commands run in its environment.
pub(crate) struct LiveVm {
    pub(crate) sb: Sandbox,
    pub(crate) defaults: ImageDefaults,
}
