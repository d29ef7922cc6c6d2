//! One file per command: map arguments to a library request, call the facade, render.

mod bench;
mod doctor;
mod env;
mod gc;
mod run;
mod runtime;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let pyro = pyro::Pyro::open(pyro::Config::from_env()).await?;
    match cli.command {
        Command::Run(a) => run::run(&pyro, a).await,
        Command::Env(a) => env::env(&pyro, a).await,
        Command::Doctor(a) => doctor::doctor(&pyro, a).await,
        Command::Gc(o) => gc::gc(&pyro, o).await,
        Command::Bench(a) => bench::bench(&pyro, a).await,
        Command::Runtime(a) => runtime::runtime(&pyro, a).await,
    }
}
