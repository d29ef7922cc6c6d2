//! The `pyro` binary: parse, call the library, print. No business logic lives here.

mod cli;
mod cli_common;
mod cli_host;
mod cli_kernel;
mod cli_workspace;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let json = cli::Cli::json_requested();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        // With --json, a usage error is the same JSON envelope as every other error (kind
        // invalid_request, exit 2); help and version print as usual.
        Err(e) if json && e.use_stderr() => {
            return output::fail(json, &output::usage_error(&e.render().to_string()));
        }
        Err(e) => e.exit(),
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return output::fail(
                json,
                &anyhow::anyhow!("cannot start the async runtime: {e}"),
            )
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(code) => code,
        Err(e) => output::fail(json, &e),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(pyro::paths::Var::Log.name())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
