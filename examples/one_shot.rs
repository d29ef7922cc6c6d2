//! A one-shot run with the blocking SDK: one command in a fresh sandbox, gone afterwards.
//!
//! `cargo run --example one_shot [-- COMMAND…]` (as root, with runc; builds `debian:12` on
//! first use). Exits with a message, and status 0, when this host cannot run containers.

use pyro::blocking::Pyro;
use pyro::{Config, Isolation, RunRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pyro = Pyro::open(Config::from_env())?;
    let container = pyro
        .levels()
        .into_iter()
        .find(|l| l.level == Isolation::Container);
    if let Some(why) = container.and_then(|l| l.reason) {
        eprintln!("skipping: the container level is not usable here: {why}");
        return Ok(());
    }

    let mut command: Vec<String> = std::env::args().skip(1).collect();
    if command.is_empty() {
        command = vec!["sh".into(), "-c".into(), "uname -sr; git --version".into()];
    }
    let mut req = RunRequest::new("debian:12", command);
    req.isolation = Some(Isolation::Container);
    req.build_missing = true;
    let result = pyro.run(&req)?;

    print!("{}", result.stdout);
    eprint!("{}", result.stderr);
    eprintln!(
        "exit code {} in {} ms; sandbox {} deleted: {}",
        result.exit_code, result.timing.total_ms, result.sandbox_id, result.cleanup.deleted
    );
    Ok(())
}
