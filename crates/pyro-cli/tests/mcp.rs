//! `pyro mcp serve` driven by the official MCP Python SDK (`mcp` on PyPI), a client pyro did
//! not write, over stdio and streamable HTTP. The client lives in `mcp_client/client.py`; each
//! scenario asserts as it goes. The tests need a Python with `mcp` installed, named by
//! `$PYRO_TEST_PYTHON` (scripts/test makes one); without it they say why they skip, and fail
//! instead under PYRO_TEST_CONTAINER=1, as in CI. Scenarios that start sandboxes also need
//! root and runc.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use util::{container_tests_enabled, stderr, stdout, TestPyro};

/// The Python that has the MCP SDK, if the tests can run.
fn python(test: &str) -> Option<PathBuf> {
    let why = match std::env::var_os("PYRO_TEST_PYTHON") {
        Some(p) if PathBuf::from(&p).exists() => return Some(PathBuf::from(p)),
        Some(p) => format!(
            "PYRO_TEST_PYTHON={} does not exist",
            PathBuf::from(p).display()
        ),
        None => "PYRO_TEST_PYTHON is not set (scripts/test sets it up)".to_string(),
    };
    if std::env::var("PYRO_TEST_CONTAINER").as_deref() == Ok("1") {
        panic!("{test}: MCP client tests are required (PYRO_TEST_CONTAINER=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// Runs one client scenario against the `pyro` under test, in `p`'s directory (the server's
/// allowed root), and fails with the client's output if it fails.
fn scenario(p: &TestPyro, python: &PathBuf, name: &str, transport: &str, extra: &[&str]) {
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client/client.py");
    let mut c = Command::new(python);
    c.arg(&client)
        .args([name, transport, "--pyro", env!("CARGO_BIN_EXE_pyro")])
        .args(extra)
        .current_dir(p.dir.path())
        .env("PYRO_HOME", &p.home)
        .env("PYRO_CACHE_DIR", util::shared_cache())
        .env("PYRO_CONFIG", p.config_file())
        .env_remove("PYRO_ISOLATION")
        .env_remove("PYRO_MCP_TOKEN");
    if let Some(a) = util::agent() {
        c.env("PYRO_AGENT", a);
    }
    let out = c.output().expect("spawn the python client");
    assert!(
        out.status.success(),
        "client scenario {name} over {transport} failed\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Waits until no sandbox of `p` is left, or fails naming what is.
fn assert_no_leftovers(p: &TestPyro) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = p.leftovers();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

macro_rules! mcp_test {
    ($name:ident, $scenario:literal, $transport:literal, containers = $containers:literal) => {
        #[test]
        fn $name() {
            let Some(py) = python(stringify!($name)) else {
                return;
            };
            if $containers && !container_tests_enabled(stringify!($name)) {
                return;
            }
            let p = TestPyro::new();
            scenario(&p, &py, $scenario, $transport, &[]);
            assert_no_leftovers(&p);
        }
    };
}

mcp_test!(
    the_seeds_tool_calls_run_unchanged_over_stdio,
    "seed",
    "stdio",
    containers = true
);
mcp_test!(
    shells_services_and_secrets_over_stdio,
    "interactive",
    "stdio",
    containers = true
);
mcp_test!(
    shells_services_and_secrets_over_http,
    "interactive",
    "http",
    containers = true
);
mcp_test!(
    profiles_list_their_tools_over_stdio,
    "profiles",
    "stdio",
    containers = false
);
mcp_test!(
    profiles_list_their_tools_over_http,
    "profiles",
    "http",
    containers = false
);
mcp_test!(
    bad_input_is_a_clean_tool_error_over_stdio,
    "errors",
    "stdio",
    containers = false
);
mcp_test!(
    bad_input_is_a_clean_tool_error_over_http,
    "errors",
    "http",
    containers = false
);
mcp_test!(
    http_needs_the_bearer_token_when_one_is_set,
    "auth",
    "http",
    containers = false
);
mcp_test!(
    vm_run_and_a_workspace_story_over_stdio,
    "story",
    "stdio",
    containers = true
);
mcp_test!(
    the_vm_lifecycle_over_stdio,
    "vm",
    "stdio",
    containers = true
);
mcp_test!(the_vm_lifecycle_over_http, "vm", "http", containers = true);
mcp_test!(
    a_killed_servers_vms_are_reaped_by_the_next_pyro,
    "killed",
    "http",
    containers = true
);
mcp_test!(
    vm_run_and_a_workspace_story_over_http,
    "story",
    "http",
    containers = true
);
mcp_test!(
    a_cancelled_workspace_exec_stops_the_command_and_is_logged,
    "cancel",
    "stdio",
    containers = true
);
mcp_test!(
    a_client_gone_mid_run_leaves_no_sandbox_over_stdio,
    "disconnect",
    "stdio",
    containers = true
);
mcp_test!(
    a_client_gone_mid_run_leaves_no_sandbox_over_http,
    "disconnect",
    "http",
    containers = true
);

#[test]
fn a_server_without_pyro_isolation_uses_the_configured_level() {
    let Some(py) = python("a_server_without_pyro_isolation_uses_the_configured_level") else {
        return;
    };
    if !container_tests_enabled("a_server_without_pyro_isolation_uses_the_configured_level") {
        return;
    }
    let p = TestPyro::new();
    std::fs::write(p.config_file(), "isolation = \"container\"\n").unwrap();
    scenario(&p, &py, "config_default", "stdio", &[]);
    assert_no_leftovers(&p);
}

#[test]
fn http_on_a_public_address_is_refused_without_a_token() {
    let p = TestPyro::new();
    let out = p
        .cmd(&["mcp", "serve", "--http", "0.0.0.0:0"])
        .env_remove("PYRO_MCP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without a bearer token"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_profile_is_refused() {
    let p = TestPyro::new();
    let out = p.run(&["mcp", "serve", "--profile", "everything"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown MCP profile"),
        "stderr: {}",
        stderr(&out)
    );
}

/// The README's snippets for registering the server in Claude Code, Codex and OpenCode parse
/// as the JSON or TOML those clients read, and start `pyro mcp serve`.
#[test]
fn readme_client_snippets_parse() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("\n## MCP")
        .nth(1)
        .expect("README has an `## MCP` section");
    let section = section.split("\n## ").next().unwrap();
    let blocks = |lang: &str| -> Vec<String> {
        section
            .split(&format!("```{lang}\n"))
            .skip(1)
            .map(|b| b.split("\n```").next().unwrap().to_string())
            .collect()
    };
    let json = blocks("json");
    let toml_blocks = blocks("toml");
    assert_eq!(json.len(), 2, "two JSON snippets (Claude Code, OpenCode)");
    assert_eq!(toml_blocks.len(), 1, "one TOML snippet (Codex)");

    let claude: serde_json::Value = serde_json::from_str(&json[0]).expect("Claude Code JSON");
    let server = &claude["mcpServers"]["pyro"];
    assert_eq!(server["command"], "pyro");
    assert_eq!(server["args"][0], "mcp");
    assert_eq!(server["args"][1], "serve");

    let opencode: serde_json::Value = serde_json::from_str(&json[1]).expect("OpenCode JSON");
    let server = &opencode["mcp"]["pyro"];
    assert_eq!(server["type"], "local");
    assert_eq!(server["command"][0], "pyro");
    assert_eq!(server["command"][1], "mcp");
    assert_eq!(server["enabled"], true);

    let codex: toml::Value = toml::from_str(&toml_blocks[0]).expect("Codex TOML");
    let server = &codex["mcp_servers"]["pyro"];
    assert_eq!(server["command"].as_str(), Some("pyro"));
    assert_eq!(server["args"][0].as_str(), Some("mcp"));

    // The CLI line for Claude Code names the same command.
    assert!(section.contains("claude mcp add pyro -- pyro mcp serve"));
}

/// One HTTP/1.1 POST of an MCP `initialize` to `url`, as a browser page would send it
/// (with `Origin` when given); returns the status code.
fn post_initialize(url: &str, origin: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (hostport, path) = rest.split_once('/').expect("a path");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"browser","version":"0"}}}"#;
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {hostport}\r\n{origin}Content-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

#[test]
fn http_refuses_foreign_browser_origins() {
    use std::io::BufRead;
    // The server starts only with a usable default level.
    if !container_tests_enabled("http_refuses_foreign_browser_origins") {
        return;
    }
    let p = TestPyro::new();
    std::fs::write(p.config_file(), "isolation = \"container\"\n").unwrap();
    let mut child = p
        .cmd(&[
            "mcp",
            "serve",
            "--http",
            "127.0.0.1:0",
            "--allow-origin",
            "https://inspector.example",
        ])
        .env_remove("PYRO_MCP_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "the server exited");
        if let Some(u) = line.trim().split("listening=").nth(1) {
            break u.to_string();
        }
    };
    // A page on another site: refused before the MCP layer, whatever the body.
    assert_eq!(post_initialize(&url, Some("https://evil.example")), 403);
    assert_eq!(post_initialize(&url, Some("null")), 403);
    assert_eq!(
        post_initialize(&url, Some("http://localhost.evil.example")),
        403
    );
    // Loopback pages (the MCP Inspector), a named origin, and non-browser clients get through.
    assert_eq!(post_initialize(&url, Some("http://localhost:6274")), 200);
    assert_eq!(
        post_initialize(&url, Some("https://inspector.example")),
        200
    );
    assert_eq!(post_initialize(&url, None), 200);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
