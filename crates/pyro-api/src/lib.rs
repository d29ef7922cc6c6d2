//! pyro's vocabulary, at the bottom of the crate graph: the [`Error`] every operation returns
//! (with its stable kinds and hints), the isolation levels and resources, every default and
//! limit the front doors share ([`limits`]), where pyro keeps things and every environment
//! variable it reads ([`paths`]), and the user's config file ([`user_config`]).
//!
//! It never touches a sandbox, the state database or the network: everything above it may
//! depend on it, and it depends on nothing of pyro's.

pub mod error;
pub mod ids;
pub mod isolation;
pub mod limits;
pub mod paths;
pub mod ports;
pub mod procinfo;
pub mod sandbox;
pub mod state;
pub mod user_config;

pub use error::{Error, Result};
pub use isolation::{Isolation, Resources};
pub use state::{BackendKind, SandboxState, VmState, WorkspaceState};
