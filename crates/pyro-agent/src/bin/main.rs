//! `pyro-agent`: the guest agent binary. It only runs the init steps in order and then serves;
//! each failure names its step before exiting.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use pyro_agent::{init, reaper, server, vm_root};

const USAGE: &str = "usage: pyro-agent --listen unix:PATH|vsock:PORT [--workdir DIR]\n       \
                     (as PID 1 with no arguments: VM init, settings from /proc/cmdline)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyro-agent: {e}");
            if std::process::id() == 1 {
                init::power_off();
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen = None;
    let mut workdir = PathBuf::from("/workspace");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--workdir" => workdir = args.next().map(PathBuf::from).ok_or(USAGE)?,
            "--version" => {
                println!(
                    "pyro-agent {} (protocol {})",
                    env!("CARGO_PKG_VERSION"),
                    pyro_protocol::PROTOCOL_VERSION
                );
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let pid1 = std::process::id() == 1;
    let listen = match listen {
        Some(l) => l,
        // The kernel starts /init with no arguments: this is a VM. Build the root first.
        None if pid1 => format!("vsock:{}", vm_root::boot()?.port),
        None => return Err(USAGE.into()),
    };

    if pid1 {
        for (spec, outcome) in init::setup_mounts() {
            if let init::MountOutcome::Failed(e) = outcome {
                eprintln!(
                    "pyro-agent: init: mount {} on {}: {e} (continuing)",
                    spec.fstype, spec.target
                );
            }
        }
        signals::forward_termination();
    }
    std::fs::create_dir_all(&workdir)
        .map_err(|e| format!("init: create {}: {e}", workdir.display()))?;
    reaper::start();

    let listener = if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        server::Listener::Unix(
            UnixListener::bind(path).map_err(|e| format!("listen: bind {path}: {e}"))?,
        )
    } else if let Some(port) = listen.strip_prefix("vsock:") {
        let port: u32 = port
            .parse()
            .map_err(|_| format!("bad vsock port {port:?}\n{USAGE}"))?;
        let l =
            server::Listener::vsock(port).map_err(|e| format!("listen: vsock port {port}: {e}"))?;
        server::announce_ready(port.saturating_add(1));
        l
    } else {
        return Err(format!("unsupported listen address {listen:?}\n{USAGE}"));
    };
    server::serve(listener, server::ServerConfig { workdir, pid1 })
        .map_err(|e| format!("serve: {e}"))
}

mod signals {
    //! PID 1 gets no default signal actions, so TERM, INT and PWR from the runtime would be
    //! ignored; a thread waits for them and powers off.
    use nix::sys::signal::{SigSet, Signal};

    pub fn forward_termination() {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
            set.add(s);
        }
        // Blocked in this (main) thread before any other thread exists, so every thread inherits
        // the mask and only the waiter below receives them. Children get a clean mask from std.
        if set.thread_block().is_err() {
            return;
        }
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                pyro_agent::init::power_off();
            }
        });
    }
}
