//! Arguments every command group shares (the leaf of the CLI's argument modules).

use clap::Args;

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}
