//! pyro's MCP server: the [`pyro::Pyro`] facade's operations as MCP tools, served over stdio or
//! streamable HTTP with [rmcp](https://docs.rs/rmcp), the official Rust MCP SDK.
//!
//! Which tools exist depends on the [`Profile`]. Every tool maps its parameters to a facade
//! request, calls the facade and returns the facade's result object as structured content
//! (the same object `pyro … --json` prints), with a one-line summary; failures are MCP tool
//! errors carrying `{"error": {kind, message, hint}}`. Host paths from clients must lie under
//! [`AllowedRoots`]. While serving, expired workspaces are reaped in the background, and a
//! call abandoned by its client removes the sandbox it made.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pyro = pyro::Pyro::open(pyro::Config::from_env()).await?;
//! let config = pyro_mcp::ServeConfig {
//!     profile: pyro_mcp::Profile::WorkspaceCore,
//!     roots: pyro_mcp::AllowedRoots::new(&[std::env::current_dir()?])?,
//!     reap_interval: std::time::Duration::from_secs(60),
//! };
//! pyro_mcp::serve_stdio(pyro, config, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod http;
pub mod params;
pub mod profile;
pub mod render;
pub mod roots;
mod tools;

use std::time::Duration;

pub use http::{serve_http, HttpConfig};
pub use profile::Profile;
pub use roots::AllowedRoots;
pub use tools::PyroTools;

/// How long shutdown waits for calls still running to finish and clean up after themselves.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What every transport needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Which tools to offer.
    pub profile: Profile,
    /// Where client-supplied host paths may point.
    pub roots: AllowedRoots,
    /// How often expired workspaces are reaped.
    pub reap_interval: Duration,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The MCP session could not start (a broken handshake, a closed pipe).
    #[error("mcp session: {0}")]
    Session(String),
    /// The HTTP listener could not start or failed.
    #[error("http server on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback address was asked for without a bearer token.
    #[error("refusing to serve MCP on non-loopback address {0} without a bearer token")]
    TokenRequired(String),
}

/// Reaps expired workspaces and VMs every `interval` until dropped (the task is aborted with it).
struct Reaper(tokio::task::JoinHandle<()>);

impl Reaper {
    fn start(pyro: pyro::Pyro, interval: Duration) -> Reaper {
        Reaper(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pyro.reap_expired().await {
                    Ok(r) if !r.stopped.is_empty() || !r.deleted.is_empty() => {
                        tracing::info!(stopped = ?r.stopped, deleted = ?r.deleted, "expired workspaces");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("reaping expired workspaces: {e}"),
                }
                match pyro.vm_reap_expired().await {
                    Ok(r) if r.count > 0 => {
                        tracing::info!(deleted = ?r.deleted_vm_ids, "expired VMs")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("reaping expired VMs: {e}"),
                }
            }
        }))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// After the transport closed: let abandoned calls finish cleaning up, then remove anything
/// this process still owns (a run interrupted before its sandbox was announced).
async fn shut_down(pyro: &pyro::Pyro, tools: &PyroTools) {
    tools.in_flight().drained(DRAIN_LIMIT).await;
    match pyro.cleanup_owned().await {
        Ok(r) if !r.removed.is_empty() => {
            tracing::info!(removed = ?r.removed, "cleaned up at exit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cleaning up at exit: {e}"),
    }
}

/// Stdin that reports its end: a client that goes away closes its end of the pipe, and calls
/// in progress should stop then, not after rmcp's drain period.
struct EofWatch<R> {
    inner: R,
    closed: tokio_util::sync::CancellationToken,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofWatch<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            std::task::Poll::Ready(Ok(()))
                if buf.filled().len() == before && buf.remaining() > 0 =>
            {
                self.closed.cancel()
            }
            std::task::Poll::Ready(Err(_)) => self.closed.cancel(),
            _ => {}
        }
        r
    }
}

/// Serves MCP over stdin/stdout until the client closes stdin or `shutdown` completes (the
/// CLI passes SIGINT/SIGTERM). Calls still running then are cancelled and cleaned up.
pub async fn serve_stdio(
    pyro: pyro::Pyro,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    use rmcp::ServiceExt;
    let _reaper = Reaper::start(pyro.clone(), config.reap_interval);
    let closed = tokio_util::sync::CancellationToken::new();
    let tools =
        PyroTools::new(pyro.clone(), config.profile, config.roots).with_closed(closed.clone());
    let (stdin, stdout) = rmcp::transport::stdio();
    let running = tools
        .clone()
        .serve((
            EofWatch {
                inner: stdin,
                closed: closed.clone(),
            },
            stdout,
        ))
        .await
        .map_err(|e| ServeError::Session(e.to_string()))?;
    let ct = running.cancellation_token();
    tokio::select! {
        quit = running.waiting() => {
            if let Err(e) = quit {
                tracing::warn!("mcp session ended abnormally: {e}");
            }
        }
        () = shutdown => {
            closed.cancel();
            ct.cancel();
        }
    }
    shut_down(&pyro, &tools).await;
    Ok(())
}
