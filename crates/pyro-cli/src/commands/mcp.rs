//! `pyro mcp serve`: build the server configuration from flags and hand over to `pyro-mcp`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::McpCommand;

/// Resolves on SIGINT or SIGTERM, so the server can clean up before exiting.
fn termination() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

pub async fn mcp(pyro: pyro::Pyro, c: McpCommand) -> anyhow::Result<ExitCode> {
    let McpCommand::Serve(a) = c;
    // A bad PYRO_ISOLATION or config file stops the server now, not at a client's first call.
    let (level, source) = pyro::user_config::default_isolation()?;
    eprintln!(
        "[mcp] default_isolation={level} from={}",
        serde_json::to_value(source)?.as_str().unwrap_or("unknown")
    );
    let profile: pyro_mcp::Profile = a.profile.parse()?;
    let mut dirs = vec![std::env::current_dir().context("read the working directory")?];
    dirs.extend(a.allow_root);
    let roots = pyro_mcp::AllowedRoots::new(&dirs).context("an --allow-root directory")?;
    let config = pyro_mcp::ServeConfig {
        profile,
        roots,
        reap_interval: Duration::from_secs(a.reap_interval),
    };
    let shutdown = termination()?;
    match a.http {
        None => pyro_mcp::serve_stdio(pyro, config, shutdown).await?,
        Some(addr) => {
            let addr = addr.parse().with_context(|| {
                format!("--http {addr:?} is not an address like 127.0.0.1:8765")
            })?;
            let http = pyro_mcp::HttpConfig {
                addr,
                bearer_token: a.bearer_token,
                allowed_origins: a.allow_origin,
            };
            let announce = |bound| {
                // On stderr: stdout stays free, and tests read the bound port from here.
                eprintln!("[mcp] listening=http://{bound}{}", pyro_mcp::http::MCP_PATH);
            };
            pyro_mcp::serve_http(pyro, config, http, announce, shutdown).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
