//! pyro: isolated, disposable Linux sandboxes for coding agents.
//!
//! The [`Pyro`] facade is the one door into the library: the CLI, the MCP server and SDK users
//! all call it. It keeps state in SQLite ([`store`]), prepares environments as OCI images
//! ([`env`]), and drives sandboxes through one [`backend::Backend`] trait. Every sandbox runs the
//! same guest agent as PID 1, reached over a Unix socket with the `pyro-protocol` wire format.
//!
//! ```no_run
//! # async fn demo() -> pyro::Result<()> {
//! use pyro::{Config, Pyro, RunRequest, Isolation, Quiet};
//! let pyro = Pyro::open(Config::from_env()).await?;
//! let mut req = RunRequest::new("debian:12", vec!["git".into(), "--version".into()]);
//! req.isolation = Some(Isolation::Container);
//! let result = pyro.run(&req, std::sync::Arc::new(Quiet), None).await?;
//! println!("{} (exit {})", result.stdout.trim(), result.exit_code);
//! # Ok(()) }
//! ```

pub mod agent_client;
pub mod backend;
pub mod bench;
pub mod doctor;
pub mod env;
pub mod error;
pub mod facade;
pub mod paths;
pub mod procinfo;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod store;

pub use agent_client::{OutputSink, OutputStream};
pub use backend::Isolation;
pub use error::{Error, Result};
pub use facade::{Config, GcReport, Pyro};
pub use run::{Observer, Quiet, RunRequest, RunResult};
