//! `pyro kernel`: clap types only.

use clap::{Args, Subcommand};

use crate::cli_common::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// The guest kernels in the kernel cache, and which one VMs boot.
    List(OutputArgs),
    /// A kernel artifact in a registry, from its manifest (nothing is downloaded).
    Inspect(KernelRefArgs),
    /// Pull a guest kernel into the kernel cache, every blob sha256-checked.
    ///
    /// Without a reference: the catalog's kernel, $PYRO_REGISTRY/kernel:<fragment hash>, checked
    /// against --digest or its pin ("kernel" in the pins file); refused without either.
    Pull(KernelPullArgs),
    /// Push the guest kernel VMs boot (built by scripts/build-kernel, or pulled) as an OCI
    /// artifact.
    Push(KernelRefArgs),
}

#[derive(Debug, Args)]
pub struct KernelRefArgs {
    /// REGISTRY/REPOSITORY:TAG.
    pub reference: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct KernelPullArgs {
    /// REGISTRY/REPOSITORY:TAG or …@sha256:…; default: the catalog's kernel.
    pub reference: Option<String>,
    /// The manifest digest the artifact must have (sha256:…); overrides the pin.
    #[arg(long)]
    pub digest: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}
