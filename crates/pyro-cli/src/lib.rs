//! The `pyro` command line: parse, call the library, print. No business logic lives here.
//!
//! It is a library so that one CLI serves two front doors: the `pyro` binary, and the `pyro`
//! command of the Python package, which calls [`main_from`] inside its extension module (the
//! wheel then carries a single native file, agent included).

mod cli;
mod cli_common;
mod cli_host;
mod cli_kernel;
mod cli_workspace;
mod commands;
mod output;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::Parser;

/// The command that starts this pyro, where it is not the running executable (under Python,
/// that is the interpreter; the console script is what `pyro host connect` must write).
static SELF_COMMAND: OnceLock<PathBuf> = OnceLock::new();

/// Runs the CLI on `args` (the program name first). `self_command` is the command that starts
/// this pyro when that is not the running executable.
pub fn main_from(args: Vec<OsString>, self_command: Option<PathBuf>) -> ExitCode {
    if let Some(c) = self_command {
        let _ = SELF_COMMAND.set(c);
    }
    let json = cli::Cli::json_requested(&args);
    let args = match cli::Cli::try_parse_from(&args) {
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
        // Colour only for a terminal: logs piped to a file or a program stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
