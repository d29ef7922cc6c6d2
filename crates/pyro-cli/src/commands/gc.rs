//! `pyro gc`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli::OutputArgs;
use crate::output::print_json;

pub async fn gc(pyro: &Pyro, o: OutputArgs) -> anyhow::Result<ExitCode> {
    // `Pyro::open` already swept once; a second sweep reports what is left.
    let r = pyro.gc().await?;
    if o.json {
        print_json(&r)?;
    } else {
        println!(
            "Removed {} sandboxes; {} in use; {} errors.",
            r.removed.len(),
            r.in_use.len(),
            r.errors.len()
        );
        for e in &r.errors {
            println!("- {e}");
        }
        if !r.stopped.is_empty() {
            println!(
                "Recorded as stopped (their sandbox had died; `pyro workspace start ID` brings them back): {}",
                r.stopped.join(", ")
            );
        }
    }
    Ok(if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
