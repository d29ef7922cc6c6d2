//! `pyro runtime install`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli::{RuntimeArgs, RuntimeCommand};
use crate::output::print_json;

pub async fn runtime(pyro: &Pyro, a: RuntimeArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        RuntimeCommand::Install(i) => {
            let r = pyro.runtime_install(i.from).await?;
            if i.out.json {
                print_json(&r)?;
            } else {
                let what = if r.already_installed {
                    "already installed"
                } else {
                    "installed"
                };
                println!(
                    "firecracker {} {what}: {} (jailer {})",
                    r.version,
                    r.firecracker.display(),
                    r.jailer.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
