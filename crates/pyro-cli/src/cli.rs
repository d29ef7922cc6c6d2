//! The command-line surface: clap types only. Dispatch lives in `commands`.

use clap::{Args, Parser, Subcommand};

pub use crate::cli_common::OutputArgs;

/// pyro: run commands for coding agents in isolated, disposable Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "pyro", version, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether `--json` was given to pyro (not to the guest command after `--`). Read from the
    /// raw arguments so that errors raised before dispatch are rendered as JSON too.
    pub fn json_requested(args: &[std::ffi::OsString]) -> bool {
        args.iter()
            .skip(1)
            .take_while(|a| *a != "--")
            .any(|a| a == "--json")
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command in a fresh sandbox, then delete the sandbox.
    ///
    /// The command's stdout and stderr pass through, and its exit code becomes pyro's
    /// (124 on timeout, 128+N when signal N ended it).
    Run(RunArgs),
    /// Environments: list, inspect, build, pull, push, prune.
    Env(EnvArgs),
    /// Check what this host can do and which isolation levels it gives.
    Doctor(DoctorArgs),
    /// Remove sandboxes left behind by pyro processes that died.
    Gc(OutputArgs),
    /// Measure one-shot runs and exec round trips on this host.
    Bench(BenchArgs),
    /// Persistent workspaces: one sandbox kept alive across many calls.
    #[command(subcommand)]
    Workspace(crate::cli_workspace::WorkspaceCommand),
    /// The MCP server, for agents and MCP clients.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// VM runtime pieces: the pinned Firecracker and jailer.
    Runtime(RuntimeArgs),
    /// Prove the one-shot lifecycle on this host: `git --version` in a fresh debian:12 sandbox
    /// (with --network: `apt-get update` through the sandbox's own network). `pyro demo
    /// ollama`: a model drives the same run through an OpenAI-compatible chat API.
    Demo(DemoArgs),
    /// The guest kernel of the VM levels as an OCI artifact: list, inspect, pull, push.
    #[command(subcommand)]
    Kernel(crate::cli_kernel::KernelCommand),
    /// Your defaults (isolation level, resources, timeout), set once in
    /// ~/.config/pyro/config.toml ($PYRO_CONFIG). Flags and PYRO_* variables override them.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Register pyro's MCP server with an MCP client (Claude Code, Codex, OpenCode), print
    /// the entry, or check the entries.
    #[command(subcommand)]
    Host(crate::cli_host::HostCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the file's path, what it sets, and the isolation level in effect.
    Show(OutputArgs),
    /// Set a key: isolation, vcpu_count, mem_mib or timeout_seconds.
    Set(ConfigSetArgs),
    /// Remove a key, so its built-in default applies again.
    Unset(ConfigKeyArgs),
}

#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    /// The key: isolation, vcpu_count, mem_mib or timeout_seconds.
    pub key: String,
    /// Its value, e.g. container.
    pub value: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ConfigKeyArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve pyro's tools over MCP: stdio by default, streamable HTTP with --http.
    ///
    /// Over HTTP the endpoint is http://ADDR/mcp. Loopback addresses need no token; any other
    /// address is refused unless a bearer token is set (--bearer-token or $PYRO_MCP_TOKEN).
    Serve(McpServeArgs),
}

#[derive(Debug, Args)]
pub struct McpServeArgs {
    /// Tool profile: vm-run (vm_run only), workspace-core, or workspace-full (everything).
    #[arg(long, default_value = "workspace-core")]
    pub profile: String,
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8765) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Bearer token HTTP clients must send (required for non-loopback addresses).
    #[arg(long, env = "PYRO_MCP_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// A browser origin allowed to call the HTTP server besides loopback ones (which always
    /// are), e.g. https://inspector.example; requests from any other Origin get 403.
    /// Repeatable.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Another directory host paths from clients (seed_path, source_path, output_path) may
    /// lie under; the working directory always may. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub allow_root: Vec<std::path::PathBuf>,
    /// Seconds between sweeps for expired workspaces and VMs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub reap_interval: u64,
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
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: Option<crate::cli_host::DemoCommand>,
    /// Give the sandbox egress and fetch the Debian package lists through it.
    #[arg(long)]
    pub network: bool,
    /// Isolation level [default: $PYRO_ISOLATION, else the config file's, else microvm].
    #[arg(long)]
    pub isolation: Option<String>,
    /// Print the result object as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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
pub struct RunArgs {
    /// Environment, e.g. debian:12 (see `pyro env list`), or an OCI image reference such as
    /// 127.0.0.1:5000/python:3.12 (pulled first if missing).
    pub environment: String,
    /// Isolation level: microvm, vm-emulated or container [default: $PYRO_ISOLATION, else the
    /// config file's `isolation` (see `pyro config`), else microvm].
    #[arg(long)]
    pub isolation: Option<String>,
    /// Virtual CPUs [default: the config file's vcpu_count, else 1].
    #[arg(long, alias = "vcpu-count")]
    pub vcpu: Option<u32>,
    /// Memory in MiB [default: the config file's mem_mib, else 1024].
    #[arg(long, alias = "mem-mib")]
    pub mem: Option<u64>,
    /// Seconds before the command's whole process group is killed [default: the config
    /// file's timeout_seconds, else 30].
    #[arg(long, alias = "timeout-seconds")]
    pub timeout: Option<u64>,
    /// pyro-mcp's VM lifetime, 60-3600 (accepted and checked; the sandbox is deleted as soon as
    /// the command ends anyway).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(60..=3600))]
    pub ttl_seconds: Option<u64>,
    /// Accept weaker isolation than asked for: when the level asked for (or the default) is
    /// not usable here, run at the strongest level that is (a container if no VM level is),
    /// with a warning. Never unsandboxed on the host.
    #[arg(long)]
    pub allow_host_compat: bool,
    /// Extra environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bytes of stdout and of stderr to keep, each.
    #[arg(long, default_value_t = pyro::limits::CLI_OUTPUT_BYTES)]
    pub max_output_bytes: u64,
    /// Fail instead of building (or pulling) an environment that is not in the cache yet.
    #[arg(long)]
    pub no_build: bool,
    /// Give the sandbox outbound network access through NAT (policy `egress`); without it the
    /// sandbox has loopback only.
    #[arg(long)]
    pub network: bool,
    /// Allow egress only to this host name or IPv4 CIDR, optionally one port, e.g.
    /// deb.debian.org:80 (repeatable; implies --network; everything else is refused).
    #[arg(long = "allow-host", value_name = "NAME|CIDR[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// Print the result object as JSON on stdout instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// Give the command no stdin (end of file at once). Without it, pyro's stdin is passed on
    /// when it is a pipe or a file (never a terminal).
    #[arg(long)]
    pub no_stdin: bool,
    /// The command and its arguments, after `--`; a single argument is a shell command line
    /// (`-- 'make test | tail'`).
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
    /// Pull an environment from an OCI registry: a catalog name from $PYRO_REGISTRY (checked
    /// against its pin or --digest), or any image reference containing '/'. A catalog name no
    /// published image is pinned for is built from its recipe instead (--no-build refuses).
    Pull(EnvPullArgs),
    /// Push an installed environment to an OCI registry (the manifest digest is kept).
    Push(EnvPushArgs),
}

#[derive(Debug, Args)]
pub struct EnvPullArgs {
    /// A catalog name (debian:12) or an image reference (127.0.0.1:5000/python:3.12).
    pub target: String,
    /// The manifest digest the content must have (sha256:…); overrides the pin.
    #[arg(long)]
    pub digest: Option<String>,
    /// Refuse (not_pinned) instead of building a catalog environment that no published image
    /// is pinned for.
    #[arg(long)]
    pub no_build: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct EnvPushArgs {
    /// The installed environment: a catalog name or a pulled image reference.
    pub name: String,
    /// Where to push it: REGISTRY/REPOSITORY:TAG.
    pub reference: String,
    #[command(flatten)]
    pub out: OutputArgs,
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
