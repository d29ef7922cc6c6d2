//! pyro: isolated, disposable Linux sandboxes for coding agents.
//!
//! The [`Pyro`] facade is the one door into the library: the CLI, the MCP server and SDK users
//! all call it. It keeps state in SQLite ([`store`]), prepares environments as OCI images
//! ([`env`]), and drives sandboxes through one [`backend::Backend`] trait. Every sandbox runs the
//! same guest agent as PID 1, reached over a Unix socket with the `pyro-protocol` wire format.

pub mod env;
pub mod error;
pub mod paths;

pub use error::{Error, Result};
