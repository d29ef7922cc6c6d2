//! `pyro host` and `pyro demo ollama`: clap types only.

use clap::{Args, Subcommand, ValueEnum};

use crate::cli_common::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Write pyro's MCP server entry into a client's config file.
    ///
    /// The entry runs this pyro (its absolute path) with `mcp serve`. The file is backed up
    /// first, everything else in it is kept, and a second run changes nothing.
    Connect(HostConnectArgs),
    /// Print the entry `connect` would write, in the client's own format.
    PrintConfig(HostEntryArgs),
    /// For each client: its config file, pyro's entry there, and whether that entry runs this
    /// pyro, at which isolation level.
    Doctor(OutputArgs),
}

/// An MCP client pyro can register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostClient {
    /// Claude Code: `~/.claude.json` (`$CLAUDE_CONFIG_DIR/.claude.json`), or `.mcp.json`.
    ClaudeCode,
    /// Codex: `~/.codex/config.toml` (`$CODEX_HOME/config.toml`), or `.codex/config.toml`.
    Codex,
    /// OpenCode: `~/.config/opencode/opencode.json`, or `opencode.json`.
    Opencode,
}

#[derive(Debug, Args)]
pub struct HostEntryArgs {
    /// The client: claude-code, codex or opencode.
    pub client: HostClient,
    /// The tool profile the server offers: vm-run, workspace-core or workspace-full [default:
    /// the server's, workspace-core].
    #[arg(long)]
    pub profile: Option<String>,
    /// The isolation level the entry sets (PYRO_ISOLATION) [default: $PYRO_ISOLATION or the
    /// config file's `isolation` when either names one; otherwise none, and the server reads
    /// the config file when it starts].
    #[arg(long)]
    pub isolation: Option<String>,
    /// The client's project file in the current directory instead of the user's: Claude
    /// Code's .mcp.json (Claude asks to approve it on first use), Codex's .codex/config.toml
    /// (read only in a project Codex trusts), OpenCode's opencode.json.
    #[arg(long)]
    pub project: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct HostConnectArgs {
    #[command(flatten)]
    pub entry: HostEntryArgs,
    /// Say what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// A model drives pyro's `vm_run` tool through Ollama's OpenAI-compatible chat API.
    ///
    /// The model gets the MCP `vm_run` tool (its description and schema), asks for a command,
    /// pyro runs it in a sandbox exactly as the MCP server does, and the model answers from the
    /// result. Needs a running Ollama with the model pulled (`ollama pull llama3.2:3b`), or
    /// any server speaking the same API.
    Ollama(OllamaArgs),
}

#[derive(Debug, Args)]
pub struct OllamaArgs {
    /// The API's base URL; requests go to BASE/chat/completions.
    #[arg(long, default_value = "http://localhost:11434/v1")]
    pub base_url: String,
    /// The model.
    #[arg(long, default_value = "llama3.2:3b")]
    pub model: String,
    /// What to ask the model.
    #[arg(
        long,
        default_value = "Use the vm_run tool to run `git --version` in the debian:12 environment, then tell me which version of git it has."
    )]
    pub prompt: String,
    /// Isolation level of the sandbox, whatever the model asks for [default: $PYRO_ISOLATION,
    /// else the config file's, else microvm].
    #[arg(long)]
    pub isolation: Option<String>,
    /// Most requests to the model before giving up.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_rounds: u32,
    /// Seconds to wait for each answer of the model.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
    /// Also print each request's messages and each tool result in full on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print the transcript as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}
