//! The command-line surface: clap types only. Dispatch lives in `commands`.

use clap::{Args, Parser, Subcommand};

/// pyro: run commands for coding agents in isolated, disposable Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "pyro", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the chosen subcommand asked for JSON output.
    pub fn json_requested(&self) -> bool {
        match &self.command {
            Command::Run(a) => a.json,
            Command::Env(e) => match &e.command {
                EnvCommand::List(o) | EnvCommand::Prune(o) => o.json,
                EnvCommand::Inspect(a) => a.out.json,
                EnvCommand::Build(a) => a.out.json,
            },
            Command::Doctor(a) => a.out.json,
            Command::Gc(o) => o.json,
            Command::Bench(a) => a.json,
            Command::Runtime(r) => match &r.command {
                RuntimeCommand::Install(a) => a.out.json,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command in a fresh sandbox, then delete the sandbox.
    ///
    /// The command's stdout and stderr pass through, and its exit code becomes pyro's
    /// (124 on timeout, 128+N when signal N ended it).
    Run(RunArgs),
    /// Environments: list, inspect, build, prune.
    Env(EnvArgs),
    /// Check what this host can do and which isolation levels it gives.
    Doctor(DoctorArgs),
    /// Remove sandboxes left behind by pyro processes that died.
    Gc(OutputArgs),
    /// Measure one-shot runs and exec round trips on this host.
    Bench(BenchArgs),
    /// VM runtime pieces: the pinned Firecracker and jailer.
    Runtime(RuntimeArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Install the pinned Firecracker and jailer (sha256-checked) into ~/.cache/pyro/firecracker.
    Install(RuntimeInstallArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeInstallArgs {
    /// A directory holding `firecracker` and `jailer`, or the release tarball; default: download
    /// the upstream release.
    #[arg(long)]
    pub from: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also boot a test VM at each usable VM level (about a second under emulation).
    #[arg(long)]
    pub boot: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Environment, e.g. debian:12 (see `pyro env list`).
    pub environment: String,
    /// Isolation level: microvm, vm-emulated or container [default: $PYRO_ISOLATION or microvm].
    #[arg(long)]
    pub isolation: Option<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mem: u64,
    /// Seconds before the command's whole process group is killed.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Extra environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bytes of stdout and of stderr to keep, each.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_output_bytes: u64,
    /// Fail instead of building an environment that is not built yet.
    #[arg(long)]
    pub no_build: bool,
    /// Print the result object as JSON on stdout instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// The catalog: every environment, built or not, with digest and size.
    List(OutputArgs),
    /// One environment in detail.
    Inspect(EnvNameArgs),
    /// Build an environment from its recipe with mmdebstrap (cached by recipe hash).
    Build(EnvBuildArgs),
    /// Remove cached blobs and root filesystems nothing uses.
    Prune(OutputArgs),
}

#[derive(Debug, Args)]
pub struct EnvNameArgs {
    /// Environment name.
    pub name: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct EnvBuildArgs {
    /// Environment name.
    pub name: String,
    /// Build again even if the cache holds this recipe's build.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Environment to measure with.
    #[arg(long, default_value = "debian:12")]
    pub env: String,
    /// Isolation level to measure.
    #[arg(long, default_value = "container")]
    pub isolation: String,
    /// Samples per measurement.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
