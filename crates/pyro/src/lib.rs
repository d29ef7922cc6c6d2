//! pyro: isolated, disposable Linux sandboxes for coding agents.
//!
//! The [`Pyro`] facade is the one door into the library: the CLI, the MCP server and SDK users
//! all call it. It keeps state in SQLite ([`store`]), prepares environments as OCI images
//! ([`env`](mod@env)), and drives sandboxes through one [`backend::Backend`] trait. Every sandbox runs the
//! same guest agent as PID 1, reached over a Unix socket with the `pyro-protocol` wire format.
//!
//! # Using it as an SDK
//!
//! - [`Pyro`] is async (Tokio); [`blocking::Pyro`] wraps it for code without a runtime. Both
//!   offer the same operations with the same request and result types, and the results
//!   serialize to the objects `pyro … --json` prints and the MCP tools return.
//! - One-shot runs: [`Pyro::run`] with a [`RunRequest`] gives a [`RunResult`]; the sandbox is
//!   gone afterwards, whatever happened.
//! - Workspaces, one sandbox kept across calls: [`Pyro::workspace_create`] with a
//!   [`CreateWorkspace`], then `workspace_exec`, `workspace_file_*`, `workspace_diff`,
//!   `workspace_patch_apply`, snapshots, `workspace_reset` and `workspace_delete`.
//! - Errors are one [`Error`] enum with a stable [`Error::kind`] and an [`Error::hint`].
//! - Sandboxes need an isolation level this host can give ([`Pyro::levels`]); today that is
//!   `container` (root and runc). Nothing falls back silently to a weaker level.
//!
//! Runnable examples: `examples/one_shot.rs` and `examples/workspace_session.rs` in the
//! repository (`cargo run --example one_shot`).
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
//!
//! A workspace session, blocking:
//!
//! ```no_run
//! use pyro::{blocking::Pyro, Config, CreateWorkspace, ExecOptions, Isolation};
//!
//! # fn main() -> pyro::Result<()> {
//! let pyro = Pyro::open(Config::from_env())?;
//! let mut req = CreateWorkspace::new("debian:12");
//! req.isolation = Some(Isolation::Container);
//! let ws = pyro.workspace_create(&req)?;
//! pyro.workspace_file_write(&ws.workspace_id, "notes.md", b"# notes\n")?;
//! let argv = ["cat".to_string(), "notes.md".to_string()];
//! let out = pyro.workspace_exec(&ws.workspace_id, &argv, &ExecOptions::default())?;
//! assert_eq!(out.stdout, "# notes\n");
//! println!("{}", pyro.workspace_diff(&ws.workspace_id)?.patch);
//! pyro.workspace_delete(&ws.workspace_id)?;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod blocking;
pub mod cancel;
mod context;
pub mod doctor;
pub mod embedded_agent;
mod engine;
pub mod facade;
mod gc;
pub mod observer;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod vm_calls;
pub mod workspace;

pub use pyro_api::{error, ids, limits, paths, procinfo, user_config};
pub use pyro_backend as backend;
pub use pyro_backend::agent_client;
pub use pyro_image as env;
pub use pyro_image::unpack;
pub use pyro_net as network;
pub use pyro_store as store;

pub use agent_client::{OutputSink, OutputStream};
pub use backend::Isolation;
pub use cancel::Outcome;
pub use error::{Error, Result};
pub use facade::{Config, EnvFetched, GcReport, Pyro};
pub use pyro_api::{BackendKind, SandboxState, VmState, WorkspaceState};
pub use run::{Observer, Quiet, RunRequest, RunResult};
pub use sandbox::{ExecOptions, Stdin, StdinStream};
pub use vm_calls::{CreateVm, VmDeleteResult, VmInfo, VmReapReport};
pub use workspace::{CreateWorkspace, Seed, UpdateWorkspace, WorkspaceExecResult, WorkspaceInfo};
