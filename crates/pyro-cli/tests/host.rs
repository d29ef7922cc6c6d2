//! `pyro host connect|print-config|doctor`: each client's real config format, written into a
//! temporary HOME, parsed back, written again without change, backed up, with the rest of the
//! file kept. Where the client's own CLI is installed (`scripts/setup --mcp-clients` puts
//! Claude Code, Codex and OpenCode in ~/.cache/pyro/npm), that client lists pyro's entry, run
//! with the temporary HOME and no network but loopback; Claude Code and OpenCode also start the
//! server and complete the MCP handshake with it.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use util::{stderr, stdout, TestPyro};

/// A pyro installation whose HOME is a fresh directory of its own.
struct Host {
    pyro: TestPyro,
    home: PathBuf,
}

impl Host {
    fn new() -> Host {
        let mut pyro = TestPyro::new();
        let home = pyro.dir.path().join("user-home");
        std::fs::create_dir_all(&home).unwrap();
        pyro.env("HOME", home.to_str().unwrap());
        Host { pyro, home }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.pyro.cmd(args);
        // The clients' own overrides of where their files live must not leak in.
        for v in [
            "CLAUDE_CONFIG_DIR",
            "CODEX_HOME",
            "XDG_CONFIG_HOME",
            "PYRO_ISOLATION",
        ] {
            c.env_remove(v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "pyro {args:?} failed\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn file(&self, client: &str) -> PathBuf {
        self.home.join(match client {
            "claude-code" => ".claude.json",
            "codex" => ".codex/config.toml",
            "opencode" => ".config/opencode/opencode.json",
            _ => unreachable!(),
        })
    }

    fn write(&self, client: &str, text: &str) {
        let f = self.file(client);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }

    fn read(&self, client: &str) -> String {
        std::fs::read_to_string(self.file(client)).unwrap()
    }

    fn backups(&self, client: &str) -> Vec<PathBuf> {
        let f = self.file(client);
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        let mut b: Vec<PathBuf> = std::fs::read_dir(f.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("{name}.pyro-bak-"))
            })
            .collect();
        b.sort();
        b
    }
}

/// This pyro, as the entry must name it.
fn exe() -> String {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_pyro"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// pyro's entry as (command, args, env), read from each client's format.
fn entry(h: &Host, client: &str) -> (String, Vec<String>, Value) {
    let text = h.read(client);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    match client {
        "claude-code" => {
            let v: Value = serde_json::from_str(&text).unwrap();
            let e = &v["mcpServers"]["pyro"];
            assert_eq!(e["type"], "stdio", "{text}");
            (
                e["command"].as_str().unwrap().to_owned(),
                strings(&e["args"]),
                e["env"].clone(),
            )
        }
        "opencode" => {
            let v: Value = serde_json::from_str(&text).unwrap();
            let e = &v["mcp"]["pyro"];
            assert_eq!(e["type"], "local", "{text}");
            assert_eq!(e["enabled"], true, "{text}");
            let mut command = strings(&e["command"]);
            let args = command.split_off(1);
            let env = e.get("environment").cloned().unwrap_or(Value::Null);
            (command.remove(0), args, env)
        }
        "codex" => {
            let v: toml::Table = text.parse().unwrap();
            let e = v["mcp_servers"]["pyro"].as_table().unwrap();
            let args = e["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let env = match e.get("env") {
                Some(t) => serde_json::to_value(t).unwrap(),
                None => Value::Null,
            };
            (e["command"].as_str().unwrap().to_owned(), args, env)
        }
        _ => unreachable!(),
    }
}

const CLIENTS: [&str; 3] = ["claude-code", "codex", "opencode"];

#[test]
fn connect_writes_each_clients_format_with_the_configured_level() {
    let h = Host::new();
    // No level named anywhere: the entry leaves it to the server (the config file, or microvm).
    for client in CLIENTS {
        let v = h.json(&["host", "connect", client]);
        assert_eq!(v["action"], "created", "{v}");
        assert_eq!(v["backup"], Value::Null, "{v}");
        let (command, args, env) = entry(&h, client);
        assert_eq!(command, exe());
        assert_eq!(args, ["mcp", "serve"]);
        assert!(
            env.is_null() || env.as_object().unwrap().is_empty(),
            "{client}: {env}"
        );
    }
    // The config file names a level: the entry carries it as PYRO_ISOLATION.
    h.run(&["config", "set", "isolation", "container"]);
    for client in CLIENTS {
        let v = h.json(&["host", "connect", client, "--profile", "workspace-full"]);
        assert_eq!(v["action"], "updated", "{v}");
        assert_eq!(v["isolation"]["source"], "config_file", "{v}");
        let (command, args, env) = entry(&h, client);
        assert_eq!(command, exe());
        assert_eq!(args, ["mcp", "serve", "--profile", "workspace-full"]);
        assert_eq!(env["PYRO_ISOLATION"], "container", "{client}");
    }
    // So does PYRO_ISOLATION, and --isolation wins over both.
    let out = h
        .cmd(&["host", "print-config", "codex", "--json"])
        .env("PYRO_ISOLATION", "vm-emulated")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entry"]["env"]["PYRO_ISOLATION"], "vm-emulated", "{v}");
    assert_eq!(v["isolation"]["source"], "environment", "{v}");
    let v = h.json(&["host", "print-config", "codex", "--isolation", "microvm"]);
    assert_eq!(v["entry"]["env"]["PYRO_ISOLATION"], "microvm", "{v}");
}

#[test]
fn connect_keeps_the_rest_of_the_file_backs_it_up_and_is_idempotent() {
    let h = Host::new();
    let claude = "{\n  \"numStartups\": 7,\n  \"projects\": {\"/src\": {\"mcpServers\": {}}},\n  \"mcpServers\": {\n    \"other\": {\n      \"type\": \"stdio\",\n      \"command\": \"other-server\",\n      \"args\": []\n    }\n  },\n  \"zzz\": [1, 2]\n}\n";
    let codex = "# my settings\nmodel = \"o3\"  # keep this comment\n\n[mcp_servers.other]\ncommand = \"other-server\"\n\n[profiles.fast]\nmodel = \"o4-mini\"\n";
    let opencode = "{\n  \"$schema\": \"https://opencode.ai/config.json\",\n  \"theme\": \"tokyonight\",\n  \"mcp\": {\n    \"other\": {\"type\": \"remote\", \"url\": \"https://example.com/mcp\"}\n  }\n}\n";
    h.write("claude-code", claude);
    h.write("codex", codex);
    h.write("opencode", opencode);
    for (client, before) in [
        ("claude-code", claude),
        ("codex", codex),
        ("opencode", opencode),
    ] {
        let v = h.json(&["host", "connect", client]);
        assert_eq!(v["action"], "added", "{v}");
        assert_eq!(v["changed"], true, "{v}");
        let backups = h.backups(client);
        assert_eq!(backups.len(), 1, "{client}: {backups:?}");
        assert_eq!(v["backup"], backups[0].to_str().unwrap());
        assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), before);
        let after = h.read(client);
        assert_eq!(entry(&h, client).0, exe());

        // A second run changes nothing and makes no backup.
        let out = h.run(&["host", "connect", client]);
        assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
        let v = h.json(&["host", "connect", client]);
        assert_eq!(v["action"], "unchanged", "{v}");
        assert_eq!(v["changed"], false, "{v}");
        assert_eq!(h.read(client), after);
        assert_eq!(h.backups(client).len(), 1);
    }
    // Everything else is still there, as it was.
    let v: Value = serde_json::from_str(&h.read("claude-code")).unwrap();
    assert_eq!(v["numStartups"], 7);
    assert_eq!(v["zzz"], serde_json::json!([1, 2]));
    assert!(v["projects"]["/src"]["mcpServers"].is_object());
    assert_eq!(v["mcpServers"]["other"]["command"], "other-server");
    let text = h.read("claude-code");
    assert!(text.starts_with("{\n  \"numStartups\": 7,\n  \"projects\": {\"/src\": {\"mcpServers\": {}}},\n  \"mcpServers\": {\n    \"other\": {\n      \"type\": \"stdio\","), "{text}");
    let text = h.read("codex");
    assert!(
        text.starts_with("# my settings\nmodel = \"o3\"  # keep this comment\n"),
        "{text}"
    );
    let v: toml::Table = text.parse().unwrap();
    assert_eq!(
        v["mcp_servers"]["other"]["command"].as_str(),
        Some("other-server")
    );
    assert_eq!(v["profiles"]["fast"]["model"].as_str(), Some("o4-mini"));
    let v: Value = serde_json::from_str(&h.read("opencode")).unwrap();
    assert_eq!(v["theme"], "tokyonight");
    assert_eq!(v["mcp"]["other"]["url"], "https://example.com/mcp");

    // A changed level updates the entry, after another backup.
    let v = h.json(&["host", "connect", "codex", "--isolation", "container"]);
    assert_eq!(v["action"], "updated", "{v}");
    assert_eq!(h.backups("codex").len(), 2);
    assert_eq!(entry(&h, "codex").2["PYRO_ISOLATION"], "container");
}

#[test]
fn dry_run_writes_nothing() {
    let h = Host::new();
    let v = h.json(&["host", "connect", "opencode", "--dry-run"]);
    assert_eq!(v["action"], "created", "{v}");
    assert_eq!(v["changed"], false, "{v}");
    assert!(!h.file("opencode").exists());
    let out = h.run(&["host", "connect", "opencode", "--dry-run"]);
    assert!(
        stdout(&out).contains("\"type\": \"local\""),
        "{}",
        stdout(&out)
    );
    assert!(!h.file("opencode").exists());
}

#[test]
fn a_file_pyro_cannot_parse_is_left_alone_with_a_hint() {
    let h = Host::new();
    let jsonc = "{\n  // a comment\n  \"theme\": \"x\",\n}\n";
    h.write("opencode", jsonc);
    let out = h
        .cmd(&["host", "connect", "opencode", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "client_config_invalid", "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("pyro host print-config opencode"),
        "{v}"
    );
    assert_eq!(h.read("opencode"), jsonc);
    assert!(h.backups("opencode").is_empty());

    h.write("claude-code", "[1, 2]");
    let out = h.cmd(&["host", "connect", "claude-code"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a JSON object"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: "), "{}", stderr(&out));
    let out = h.cmd(&["host", "connect", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = h
        .cmd(&["host", "connect", "codex", "--isolation", "docker"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn print_config_is_what_connect_writes() {
    let h = Host::new();
    for client in CLIENTS {
        let v = h.json(&["host", "print-config", client, "--isolation", "container"]);
        assert_eq!(v["path"], h.file(client).to_str().unwrap(), "{v}");
        assert_eq!(v["entry"]["command"], exe());
        let snippet = v["snippet"].as_str().unwrap();
        let out = h.run(&["host", "print-config", client, "--isolation", "container"]);
        assert_eq!(stdout(&out).trim_end(), snippet);
        assert!(
            !h.file(client).exists(),
            "print-config wrote {client}'s file"
        );
        // The snippet is a whole config file: written as one, it reads back as connect's entry.
        h.write(client, snippet);
        let (command, args, env) = entry(&h, client);
        assert_eq!(command, exe());
        assert_eq!(args, ["mcp", "serve"]);
        assert_eq!(env["PYRO_ISOLATION"], "container");
        let v = h.json(&["host", "connect", client, "--isolation", "container"]);
        assert_eq!(v["action"], "unchanged", "{client}: {v}");
    }
    let v = h.json(&["host", "print-config", "claude-code", "--project"]);
    assert!(v["path"].as_str().unwrap().ends_with("/.mcp.json"), "{v}");
}

#[test]
fn doctor_reports_each_client() {
    let h = Host::new();
    let v = h.json(&["host", "doctor"]);
    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3, "{v}");
    for c in clients {
        assert_eq!(c["exists"], false, "{c}");
        assert_eq!(c["entry_present"], false, "{c}");
        assert_eq!(c["ok"], false, "{c}");
    }
    h.run(&["config", "set", "isolation", "container"]);
    h.run(&["host", "connect", "claude-code"]);
    h.run(&["host", "connect", "opencode", "--isolation", "vm-emulated"]);
    // Codex's entry points at a pyro that is gone.
    h.write(
        "codex",
        "[mcp_servers.pyro]\ncommand = \"/nonexistent/pyro\"\nargs = [\"mcp\", \"serve\"]\n",
    );
    let v = h.json(&["host", "doctor"]);
    let by = |name: &str| {
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == name && c["scope"] == "user")
            .unwrap()
            .clone()
    };
    let claude = by("claude-code");
    assert_eq!(claude["ok"], true, "{claude}");
    assert_eq!(claude["same_pyro"], true, "{claude}");
    assert_eq!(claude["command_exists"], true, "{claude}");
    assert_eq!(claude["isolation"]["level"], "container", "{claude}");
    assert_eq!(claude["isolation"]["source"], "entry", "{claude}");
    let opencode = by("opencode");
    assert_eq!(opencode["ok"], true, "{opencode}");
    assert_eq!(opencode["isolation"]["level"], "vm-emulated", "{opencode}");
    let codex = by("codex");
    assert_eq!(codex["ok"], false, "{codex}");
    assert_eq!(codex["entry_present"], true, "{codex}");
    assert_eq!(codex["command_exists"], false, "{codex}");
    assert_eq!(codex["same_pyro"], false, "{codex}");
    // Without PYRO_ISOLATION in the entry, the server will read the config file.
    assert_eq!(codex["isolation"]["source"], "config_file", "{codex}");
    assert_eq!(codex["isolation"]["level"], "container", "{codex}");
    assert!(
        codex["problems"][0]
            .as_str()
            .unwrap()
            .contains("/nonexistent/pyro"),
        "{codex}"
    );
    let out = h.run(&["host", "doctor"]);
    let text = stdout(&out);
    assert!(
        text.contains("ok: runs this pyro, isolation container (from entry)"),
        "{text}"
    );
    assert!(text.contains("not an executable file"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The clients' own CLIs

/// Where `scripts/setup --mcp-clients` installs the clients' npm packages.
fn client_bin(name: &str) -> Result<PathBuf, String> {
    let prefix = std::env::var_os("PYRO_TEST_NPM_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/pyro/npm")
        });
    let bin = prefix.join("node_modules/.bin").join(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is not installed (scripts/setup --mcp-clients installs it)",
            bin.display()
        ))
    }
}

/// The client's CLI, or why this test skips (a failure with PYRO_TEST_MCP_CLIENTS=1).
fn require_client(test: &str, name: &str) -> Option<PathBuf> {
    let why = match client_bin(name) {
        Ok(b) => match unshare_prefix() {
            Ok(_) => return Some(b),
            Err(e) => e,
        },
        Err(e) => e,
    };
    if std::env::var("PYRO_TEST_MCP_CLIENTS").as_deref() == Ok("1") {
        panic!("{test}: the real MCP clients are required (PYRO_TEST_MCP_CLIENTS=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (set PYRO_TEST_MCP_CLIENTS=1 to make this a failure)");
    None
}

/// How to run a client with no network but loopback: a new network namespace (through a user
/// namespace when not root).
fn unshare_prefix() -> Result<Vec<&'static str>, String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let prefix: Vec<&str> = if root {
        vec!["unshare", "--net", "--"]
    } else {
        vec!["unshare", "--map-root-user", "--net", "--"]
    };
    let probe = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg("true")
        .output()
        .map_err(|e| format!("cannot run unshare to cut the client off the network: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "unshare cannot make a network namespace here: {}",
            stderr(&probe).trim()
        ));
    }
    Ok(prefix)
}

/// Runs a client's CLI with the temporary HOME, only loopback, and the environment the server
/// it starts needs to find this test's state.
fn run_client(h: &Host, bin: &Path, args: &[&str]) -> Output {
    run_client_in(h, &h.home, bin, args, &[])
}

/// [`run_client`] in the directory `cwd`, where a project's config file may be.
fn run_client_in(
    h: &Host,
    cwd: &Path,
    bin: &Path,
    args: &[&str],
    envs: &[(&str, &Path)],
) -> Output {
    let prefix = unshare_prefix().unwrap();
    let script = "ip link set lo up 2>/dev/null; exec timeout 120 \"$@\"";
    let mut c = Command::new(prefix[0]);
    c.args(&prefix[1..])
        .args(["sh", "-c", script, "sh"])
        .arg(bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &h.home)
        .env("PYRO_HOME", &h.pyro.home)
        .env("PYRO_CACHE_DIR", &h.pyro.cache)
        .env("PYRO_CONFIG", h.pyro.config_file())
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .envs(envs.iter().copied())
        .current_dir(cwd);
    if let Some(a) = util::agent() {
        c.env("PYRO_AGENT", a);
    }
    let out = c.output().unwrap();
    eprintln!(
        "{} {args:?}:\n{}{}",
        bin.display(),
        stdout(&out),
        stderr(&out)
    );
    out
}

#[test]
fn real_claude_code_lists_and_connects_to_pyro() {
    let Some(claude) = require_client("real_claude_code_lists_and_connects_to_pyro", "claude")
    else {
        return;
    };
    let h = Host::new();
    h.write("claude-code", "{\n  \"numStartups\": 1\n}\n");
    h.run(&["host", "connect", "claude-code", "--isolation", "container"]);
    let out = run_client(&h, &claude, &["mcp", "list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("pyro: "))
        .unwrap_or_else(|| panic!("claude mcp list shows no pyro: {text}"));
    assert!(line.contains(&format!("{} mcp serve", exe())), "{line}");
    // Claude Code started `pyro mcp serve` and completed the MCP handshake with it.
    assert!(line.contains("Connected"), "{line}");
    let out = run_client(&h, &claude, &["mcp", "get", "pyro"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("PYRO_ISOLATION=container"), "{text}");
    assert!(text.contains("User config"), "{text}");

    // A project's .mcp.json (in a HOME without the user's entry): listed, waiting for the
    // user's approval as Claude Code does.
    let h = Host::new();
    let project = h.home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let out = h
        .cmd(&["host", "connect", "claude-code", "--project"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(project.join(".mcp.json").exists());
    let out = run_client_in(&h, &project, &claude, &["mcp", "get", "pyro"], &[]);
    let text = stdout(&out);
    assert!(text.contains("Project config"), "{text}");
    assert!(text.contains(&format!("Command: {}", exe())), "{text}");
}

#[test]
fn real_codex_lists_pyro() {
    let Some(codex) = require_client("real_codex_lists_pyro", "codex") else {
        return;
    };
    let h = Host::new();
    h.write("codex", "model = \"o3\"\n");
    h.run(&["host", "connect", "codex", "--isolation", "container"]);
    let out = run_client(&h, &codex, &["mcp", "list", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pyro = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pyro")
        .unwrap_or_else(|| panic!("codex mcp list shows no pyro: {v}"));
    assert_eq!(pyro["enabled"], true, "{pyro}");
    assert_eq!(pyro["transport"]["type"], "stdio", "{pyro}");
    assert_eq!(pyro["transport"]["command"], exe(), "{pyro}");
    assert_eq!(
        pyro["transport"]["args"],
        serde_json::json!(["mcp", "serve"])
    );
    assert_eq!(pyro["transport"]["env"]["PYRO_ISOLATION"], "container");

    // $CODEX_HOME moves Codex's file, for pyro as for Codex.
    let h = Host::new();
    let codex_home = h.home.join("elsewhere");
    let out = h
        .cmd(&["host", "connect", "codex"])
        .env("CODEX_HOME", &codex_home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(codex_home.join("config.toml").exists());
    let out = run_client_in(
        &h,
        &h.home,
        &codex,
        &["mcp", "list", "--json"],
        &[("CODEX_HOME", &codex_home)],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "pyro", "{v}");
    assert_eq!(v[0]["transport"]["command"], exe(), "{v}");
}

#[test]
fn real_opencode_lists_and_connects_to_pyro() {
    let Some(opencode) = require_client("real_opencode_lists_and_connects_to_pyro", "opencode")
    else {
        return;
    };
    let h = Host::new();
    h.run(&["host", "connect", "opencode", "--isolation", "container"]);
    let out = run_client(&h, &opencode, &["mcp", "list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let at = text
        .find("pyro")
        .unwrap_or_else(|| panic!("opencode mcp list shows no pyro: {text}"));
    let rest = &text[at..];
    assert!(rest.contains(&format!("{} mcp serve", exe())), "{text}");
    assert!(
        rest.starts_with("pyro") && rest.contains("connected"),
        "{text}"
    );

    // A project's opencode.json.
    let h = Host::new();
    let project = h.home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let out = h
        .cmd(&["host", "connect", "opencode", "--project"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(project.join("opencode.json").exists());
    let out = run_client_in(&h, &project, &opencode, &["mcp", "list"], &[]);
    assert!(stdout(&out).contains("connected"), "{}", stdout(&out));
}
