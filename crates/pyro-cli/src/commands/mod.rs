//! One file per command: map arguments to a library request, call the facade, render.

mod bench;
mod config;
mod doctor;
mod env;
mod gc;
mod host;
mod kernel;
mod mcp;
mod ollama;
mod run;
mod runtime;
mod workspace;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // The config file is edited without opening the state database.
    // The config file, and MCP clients' config files, are edited without opening the state
    // database.
    let command = match cli.command {
        Command::Config(c) => return config::config(c),
        Command::Host(c) => return host::host(c),
        other => other,
    };
    let pyro = pyro::Pyro::open(pyro::Config::from_env()).await?;
    match command {
        Command::Run(a) => run::run(&pyro, a).await,
        Command::Env(a) => env::env(&pyro, a).await,
        Command::Doctor(a) => doctor::doctor(&pyro, a).await,
        Command::Gc(o) => gc::gc(&pyro, o).await,
        Command::Bench(a) => bench::bench(&pyro, a).await,
        Command::Workspace(c) => workspace::workspace(&pyro, c).await,
        Command::Mcp(c) => mcp::mcp(pyro, c).await,
        Command::Runtime(a) => runtime::runtime(&pyro, a).await,
        Command::Kernel(c) => kernel::kernel(&pyro, c).await,
        Command::Demo(a) => match a.command {
            Some(crate::cli_host::DemoCommand::Ollama(o)) => ollama::ollama(pyro, o).await,
            None => run::demo(&pyro, a).await,
        },
        Command::Config(c) => config::config(c),
        Command::Host(c) => host::host(c),
    }
}

/// Passes guest output straight through to our own stdout and stderr.
pub struct Passthrough;

impl pyro::OutputSink for Passthrough {
    fn output(&mut self, stream: pyro::OutputStream, bytes: &[u8]) {
        use std::io::Write;
        // A closed stdout (e.g. `| head`) must not abort the call: the sandbox still gets
        // cleaned up and the exit code still reported.
        let _ = match stream {
            pyro::OutputStream::Stdout => std::io::stdout()
                .lock()
                .write_all(bytes)
                .and_then(|_| std::io::stdout().flush()),
            pyro::OutputStream::Stderr => std::io::stderr().lock().write_all(bytes),
        };
    }
}

/// A flag's value, else the default from the config file (or built in).
pub fn or_default<T>(flag: Option<T>, default: fn() -> pyro::Result<T>) -> pyro::Result<T> {
    match flag {
        Some(v) => Ok(v),
        None => default(),
    }
}

/// The stdin a `run` or `workspace exec` command gets: ours, streamed as it is read, when it
/// is a pipe or a file; nothing with `--no-stdin`, or when it is a terminal (a command would
/// seem to hang waiting on the keyboard, and typing would not reach it as a user expects).
pub fn command_stdin(no_stdin: bool) -> anyhow::Result<pyro::Stdin> {
    use std::io::IsTerminal;
    if no_stdin || std::io::stdin().is_terminal() {
        return Ok(pyro::Stdin::Null);
    }
    // A thread of our own does the blocking reads, through a pipe the runtime can poll: tokio's
    // own stdin reads on a thread that cannot be cancelled, so a command that ended without
    // reading its input would keep pyro from exiting until the input ended. This thread is
    // detached and dies with the process; a read-ahead of one pipe buffer is all it holds.
    let (r, mut w) = std::io::pipe()?;
    std::thread::spawn(move || std::io::copy(&mut std::io::stdin().lock(), &mut w));
    let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r.into())?;
    Ok(pyro::Stdin::stream(r))
}

/// Says on stderr which captured streams a `--json` result cut at the cap, so that a cut is
/// visible without reading the JSON.
pub fn warn_truncated(tag: &str, streams: &[(&str, bool)], cap: u64) {
    for (name, cut) in streams {
        if *cut {
            eprintln!("[{tag}] warning: {name} truncated at {cap} bytes (--max-output-bytes)");
        }
    }
}

/// Parses repeated `KEY=VALUE` flags (split at the first `=`).
pub fn parse_pairs(
    flag: &str,
    pairs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            // A usage error (kind invalid_request, exit 2), like every other malformed flag.
            let (k, v) = p.split_once('=').ok_or_else(|| {
                pyro::Error::InvalidRequest(format!("{flag} {p:?} is not KEY=VALUE"))
            })?;
            Ok((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals() {
        let m = parse_pairs("--env", &["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x=y");
        assert_eq!(m["C"], "");
        assert!(parse_pairs("--env", &["NOEQUALS".into()]).is_err());
    }
}

/// The exit code of the signal that interrupted a command (130 for SIGINT, 143 for SIGTERM),
/// readable once the future of [`interrupt_signal`] has resolved.
#[derive(Clone, Default)]
pub struct SignalCode(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl SignalCode {
    /// 128 plus the signal's number; 130 if read before any signal came.
    pub fn get(&self) -> u8 {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => 130,
            c => c,
        }
    }
}

/// A future that resolves on SIGINT or SIGTERM, for the library's `*_or_cancel` calls, and the
/// exit code the signal calls for.
pub fn interrupt_signal() -> std::io::Result<(impl std::future::Future<Output = ()>, SignalCode)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let code = SignalCode::default();
    let set = code.clone();
    let fired = async move {
        let c = tokio::select! {
            _ = sigint.recv() => 130,
            _ = sigterm.recv() => 143,
        };
        set.0.store(c, std::sync::atomic::Ordering::Relaxed);
    };
    Ok((fired, code))
}

/// Reports a call the library stopped on a signal (`phase=interrupted`, what it removed) and
/// gives the exit code the signal calls for.
pub fn interrupted(tag: &str, report: &pyro::GcReport, code: &SignalCode) -> ExitCode {
    crate::output::phase_line(
        tag,
        &[
            ("phase", "interrupted".into()),
            ("removed", report.removed.join(",")),
            ("errors", report.errors.len().to_string()),
        ],
    );
    ExitCode::from(code.get())
}
