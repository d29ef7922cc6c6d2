//! The CLI's public contract, frozen with insta: `--help`, human output, `--json` results and
//! error envelopes of the main commands, each recorded as exit code, stdout and stderr in
//! `tests/snapshots/contract__*.snap`. Ids, timestamps, durations, digests, pids and temporary
//! paths are replaced by placeholders (`pyro_snapshot`'s filters), so a snapshot changes only
//! when what pyro prints changes.
//!
//! A changed snapshot fails the test. If the change is meant, rewrite the snapshots with
//! `INSTA_UPDATE=always cargo nextest run -p pyro-cli --test contract` and review the diff
//! (`git diff crates/pyro-cli/tests/snapshots`) as a change to the public interface.
//!
//! Tests without sandboxes run anywhere; the others need root and runc and say why they
//! skipped (they fail instead under `PYRO_TEST_CONTAINER=1`, as in CI).

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::process::Output;
use std::time::{Duration, Instant};

use util::{stderr, TestPyro};

/// A regex matching `s` literally.
fn literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The arguments as one shell command line, for the snapshot's header.
fn shell_words(args: &[&str]) -> String {
    let safe = |a: &str| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b))
    };
    args.iter()
        .map(|a| {
            if safe(a) {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r#"'"'"'"#))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What varies from run to run, and its placeholder. Applied in order, after the
/// installation's own paths.
const FILTERS: &[(&str, &str)] = &[
    // Digests and content hashes (before ids: a digest is hex too).
    (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
    (r"\b[0-9a-f]{64}\b", "[HASH]"),
    // Points in time: Unix milliseconds in JSON, RFC 3339 in text.
    (
        r#""(created_at_ms|last_activity_ms|expires_at_ms|expired_at_ms|started_at_ms|ready_at_ms)": \d+"#,
        r#""$1": "[TIMESTAMP]""#,
    ),
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
    // Durations.
    (
        r#""(duration_ms|create_ms|boot_ms|exec_ms|cleanup_ms|total_ms)": \d+"#,
        r#""$1": "[MS]""#,
    ),
    (r"\b(duration_ms|total_ms)=\d+", "$1=[MS]"),
    // Workspace and sandbox ids (12 hex characters).
    (r"\b[0-9a-f]{12}\b", "[ID]"),
    // Process ids inside the sandbox.
    (r#""pid": \d+"#, r#""pid": "[PID]""#),
    (r"\bpid=\d+", "pid=[PID]"),
    // The host's cgroup version.
    (r#""cgroup": "v[12]""#, r#""cgroup": "[CGROUP]""#),
];

/// Runs `pyro ARGS` and snapshots its exit code, stdout and stderr as `name`.
fn pyro_snapshot(p: &TestPyro, name: &str, args: &[&str]) -> Output {
    pyro_snapshot_with(p, name, args, &[])
}

/// [`pyro_snapshot`] with extra filters for values only this command leaves undetermined.
fn pyro_snapshot_with(p: &TestPyro, name: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let out = p.run(args);
    snapshot_output(p, name, args, &out, extra);
    out
}

/// Snapshots an output already taken.
fn snapshot_output(p: &TestPyro, name: &str, args: &[&str], out: &Output, extra: &[(&str, &str)]) {
    let mut settings = insta::Settings::clone_current();
    settings.set_description(format!("pyro {}", shell_words(args)));
    settings.set_omit_expression(true);
    settings.add_filter(&literal(&p.dir.path().display().to_string()), "[TMP]");
    settings.add_filter(&literal(&p.cache.display().to_string()), "[CACHE]");
    for (re, with) in extra.iter().chain(FILTERS) {
        settings.add_filter(re, *with);
    }
    let text = format!(
        "exit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.status
            .code()
            .map_or_else(|| "none (signal)".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// Builds debian:12 first if it is missing, so no build progress shows up in a snapshot.
fn ensure_debian(p: &TestPyro) {
    let out = p.run(&["env", "build", "debian:12", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The workspace's id, from `create --json`.
fn id_of(out: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["workspace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no workspace: {v}\n{}", stderr(out)))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Without sandboxes
// ---------------------------------------------------------------------------------------------

#[test]
fn help_text() {
    let p = TestPyro::new();
    pyro_snapshot(&p, "help", &["--help"]);
    pyro_snapshot(&p, "help_workspace", &["workspace", "--help"]);
    pyro_snapshot(&p, "help_run", &["run", "--help"]);
}

#[test]
fn usage_errors() {
    let p = TestPyro::new();
    pyro_snapshot(&p, "usage_missing_argument", &["run"]);
    // clap refuses these before pyro can honour --json: plain text on stderr.
    pyro_snapshot(&p, "usage_missing_argument_json", &["run", "--json"]);
    pyro_snapshot(&p, "usage_unknown_subcommand", &["workspace", "bogus"]);
}

#[test]
fn error_envelopes() {
    let p = TestPyro::new();
    let status = ["workspace", "status", "nope"];
    pyro_snapshot(&p, "error_workspace_not_found", &status);
    pyro_snapshot(
        &p,
        "error_workspace_not_found_json",
        &["workspace", "status", "nope", "--json"],
    );
    pyro_snapshot(
        &p,
        "error_workspace_not_found_exec_json",
        &["workspace", "exec", "nope", "--json", "--", "true"],
    );
    let mem0 = [
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--mem",
        "0",
        "--",
        "true",
    ];
    pyro_snapshot(&p, "error_invalid_request", &mem0);
    pyro_snapshot(
        &p,
        "error_invalid_request_json",
        &[&mem0[..6], &["--json", "--", "true"]].concat(),
    );
    pyro_snapshot(
        &p,
        "error_invalid_isolation_json",
        &[
            "run",
            "debian:12",
            "--isolation",
            "bogus",
            "--json",
            "--",
            "true",
        ],
    );
    pyro_snapshot(
        &p,
        "error_invalid_state_json",
        &["workspace", "list", "--state", "bogus", "--json"],
    );
    pyro_snapshot(
        &p,
        "error_unknown_environment",
        &["env", "inspect", "nosuch"],
    );
    pyro_snapshot(
        &p,
        "error_unknown_environment_json",
        &["env", "inspect", "nosuch", "--json"],
    );
    // A malformed KEY=VALUE is refused by the CLI itself, with the generic kind.
    pyro_snapshot(
        &p,
        "error_not_key_value_json",
        &[
            "run",
            "debian:12",
            "--isolation",
            "container",
            "--env",
            "NOEQUALS",
            "--json",
            "--",
            "true",
        ],
    );
}

#[test]
fn config_show_set_and_errors() {
    let p = TestPyro::new();
    pyro_snapshot(&p, "config_show_no_file", &["config", "show"]);
    pyro_snapshot(
        &p,
        "config_show_no_file_json",
        &["config", "show", "--json"],
    );
    pyro_snapshot(
        &p,
        "config_set",
        &["config", "set", "isolation", "container"],
    );
    pyro_snapshot(
        &p,
        "config_set_json",
        &["config", "set", "mem_mib", "2048", "--json"],
    );
    pyro_snapshot(&p, "config_show", &["config", "show"]);
    pyro_snapshot(&p, "config_show_json", &["config", "show", "--json"]);
    pyro_snapshot(
        &p,
        "config_unset_json",
        &["config", "unset", "mem_mib", "--json"],
    );
    pyro_snapshot(
        &p,
        "error_invalid_config_key_json",
        &["config", "set", "nokey", "1", "--json"],
    );
    pyro_snapshot(
        &p,
        "error_invalid_config_value_json",
        &["config", "set", "isolation", "bogus", "--json"],
    );
    std::fs::write(p.config_file(), "isolation = \"bogus\"\n").unwrap();
    pyro_snapshot(&p, "error_invalid_config_file", &["config", "show"]);
    pyro_snapshot(
        &p,
        "error_invalid_config_file_json",
        &["config", "show", "--json"],
    );
}

#[test]
fn env_list_and_empty_state() {
    // A cache of its own: every catalog environment "not installed", whatever this host built.
    let p = TestPyro::with_private_cache();
    pyro_snapshot(&p, "env_list", &["env", "list"]);
    pyro_snapshot(&p, "env_list_json", &["env", "list", "--json"]);
    pyro_snapshot(&p, "workspace_list_empty", &["workspace", "list"]);
    pyro_snapshot(
        &p,
        "workspace_list_empty_json",
        &["workspace", "list", "--json"],
    );
}

// ---------------------------------------------------------------------------------------------
// With container sandboxes
// ---------------------------------------------------------------------------------------------

const GUEST: &str = "echo out; echo err >&2; exit 3";

#[test]
fn run_output() {
    require_containers!();
    let p = TestPyro::new();
    ensure_debian(&p);
    let run = ["run", "debian:12", "--isolation", "container"];
    pyro_snapshot(&p, "run", &[&run[..], &["--", "sh", "-c", GUEST]].concat());
    pyro_snapshot(
        &p,
        "run_json",
        &[&run[..], &["--json", "--", "sh", "-c", GUEST]].concat(),
    );
    pyro_snapshot(
        &p,
        "error_unknown_environment_run_json",
        &[
            "run",
            "nosuch:env",
            "--isolation",
            "container",
            "--json",
            "--",
            "true",
        ],
    );
    // A cache of its own, where nothing is built.
    let empty = TestPyro::with_private_cache();
    pyro_snapshot(
        &empty,
        "error_environment_not_built_json",
        &[
            "run",
            "debian:12",
            "--isolation",
            "container",
            "--no-build",
            "--json",
            "--",
            "true",
        ],
    );
}

#[test]
fn workspace_human_output() {
    require_containers!();
    let p = TestPyro::new();
    ensure_debian(&p);
    let out = pyro_snapshot(
        &p,
        "workspace_create",
        &[
            "workspace",
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "human",
            "--label",
            "team=core",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    pyro_snapshot(&p, "workspace_list", &["workspace", "list"]);
    pyro_snapshot(&p, "workspace_status", &["workspace", "status", "human"]);
    pyro_snapshot(
        &p,
        "workspace_exec",
        &["workspace", "exec", "human", "--", "sh", "-c", GUEST],
    );
    pyro_snapshot(
        &p,
        "workspace_file_write",
        &[
            "workspace",
            "file",
            "write",
            "human",
            "notes.txt",
            "--text",
            "one\ntwo\n",
        ],
    );
    pyro_snapshot(
        &p,
        "workspace_file_read",
        &["workspace", "file", "read", "human", "notes.txt"],
    );
    pyro_snapshot(&p, "workspace_diff", &["workspace", "diff", "human"]);
    pyro_snapshot(&p, "workspace_logs", &["workspace", "logs", "human"]);
    pyro_snapshot(&p, "workspace_delete", &["workspace", "delete", "human"]);
    pyro_snapshot(
        &p,
        "error_workspace_not_found_after_delete",
        &["workspace", "exec", "human", "--", "true"],
    );
}

#[test]
fn workspace_json_results() {
    require_containers!();
    let p = TestPyro::new();
    ensure_debian(&p);
    let out = pyro_snapshot(
        &p,
        "workspace_create_json",
        &w(&[
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "story",
            "--label",
            "team=core",
        ]),
    );
    let id = id_of(&out);
    pyro_snapshot(&p, "workspace_list_json", &w(&["list"]));
    pyro_snapshot(&p, "workspace_status_json", &w(&["status", "story"]));
    pyro_snapshot(
        &p,
        "workspace_exec_json",
        &[&w(&["exec", "story"])[..], &["--", "sh", "-c", GUEST]].concat(),
    );
    pyro_snapshot(
        &p,
        "workspace_file_write_json",
        &w(&[
            "file",
            "write",
            "story",
            "notes.txt",
            "--text",
            "one\ntwo\n",
        ]),
    );
    pyro_snapshot(
        &p,
        "workspace_file_read_json",
        &w(&["file", "read", "story", "notes.txt"]),
    );
    pyro_snapshot(&p, "workspace_diff_json", &w(&["diff", "story"]));
    pyro_snapshot(
        &p,
        "workspace_snapshot_create_json",
        &w(&["snapshot", "create", "story", "first"]),
    );
    pyro_snapshot(
        &p,
        "workspace_snapshot_list_json",
        &w(&["snapshot", "list", "story"]),
    );
    pyro_snapshot(
        &p,
        "workspace_reset_json",
        &w(&["reset", "story", "--snapshot", "first"]),
    );
    pyro_snapshot(&p, "workspace_stop_json", &w(&["stop", "story"]));
    pyro_snapshot(
        &p,
        "error_workspace_not_running_json",
        &[&w(&["exec", "story"])[..], &["--", "true"]].concat(),
    );
    pyro_snapshot(&p, "workspace_start_json", &w(&["start", "story"]));
    pyro_snapshot(&p, "workspace_logs_json", &w(&["logs", "story"]));
    pyro_snapshot(
        &p,
        "workspace_snapshot_delete_json",
        &w(&["snapshot", "delete", "story", "first"]),
    );

    // Error kinds a running workspace gives cheaply.
    pyro_snapshot(
        &p,
        "error_already_exists_json",
        &w(&[
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "story",
        ]),
    );
    pyro_snapshot(
        &p,
        "error_already_exists",
        &[
            "workspace",
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "story",
        ],
    );
    pyro_snapshot(
        &p,
        "error_invalid_name_json",
        &w(&[
            "create",
            "debian:12",
            "--isolation",
            "container",
            "--name",
            "bad name",
        ]),
    );
    pyro_snapshot(
        &p,
        "error_file_not_found_json",
        &w(&["file", "read", "story", "missing.txt"]),
    );
    pyro_snapshot(
        &p,
        "error_invalid_path_json",
        &w(&["file", "read", "story", "../../etc/passwd"]),
    );
    let patch = p.dir.path().join("bad.patch");
    std::fs::write(
        &patch,
        "--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1 @@\n-nothing like this\n+three\n",
    )
    .unwrap();
    pyro_snapshot(
        &p,
        "error_patch_failed_json",
        &w(&[
            "patch",
            "apply",
            "story",
            "--patch-file",
            patch.to_str().unwrap(),
        ]),
    );
    pyro_snapshot(&p, "workspace_delete_json", &w(&["delete", &id]));
}

/// `workspace ARGS… --json`.
fn w<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["workspace"][..], args, &["--json"]].concat()
}

/// Reads shell `sh` of workspace `ws` until its output ends with `tail` (a prompt after the
/// command's output), so that the snapshot that follows sees settled bytes.
fn wait_for_shell(p: &TestPyro, ws: &str, sh: &str, tail: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = p.json(&["workspace", "shell", "read", ws, sh, "--plain"]);
        if v["output"].as_str().is_some_and(|o| o.ends_with(tail)) {
            return;
        }
        assert!(Instant::now() < until, "shell output never settled: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn workspace_shells_and_services() {
    require_containers!();
    let p = TestPyro::new();
    ensure_debian(&p);
    let out = p.run(&[
        "workspace",
        "create",
        "debian:12",
        "--isolation",
        "container",
        "--name",
        "svc",
        "--json",
    ]);
    id_of(&out);
    // How many bytes a shell has produced when a call returns depends on timing.
    let cursors: &[(&str, &str)] = &[
        (r#""(total_bytes|next_cursor)": \d+"#, r#""$1": "[N]""#),
        (r"\bnext_cursor=\d+", "next_cursor=[N]"),
    ];
    let shell = |name: &str, args: &[&str]| {
        let a = [&["workspace", "shell"][..], args].concat();
        pyro_snapshot_with(&p, name, &a, cursors)
    };
    shell("shell_open_json", &["open", "svc", "--json"]);
    shell(
        "shell_write_json",
        &["write", "svc", "sh-1", "--input", "echo hi", "--json"],
    );
    wait_for_shell(&p, "svc", "sh-1", "hi\npyro$ ");
    pyro_snapshot(
        &p,
        "shell_read_json",
        &[
            "workspace",
            "shell",
            "read",
            "svc",
            "sh-1",
            "--plain",
            "--json",
        ],
    );
    pyro_snapshot(
        &p,
        "shell_read",
        &["workspace", "shell", "read", "svc", "sh-1", "--plain"],
    );
    shell("shell_list_json", &["list", "svc", "--json"]);
    shell("shell_close", &["close", "svc", "sh-1"]);

    let service = |name: &str, args: &[&str]| {
        let a = [&["workspace", "service"][..], args].concat();
        pyro_snapshot(&p, name, &a)
    };
    service(
        "service_start_json",
        &[
            "start",
            "svc",
            "web",
            "--ready-file",
            "/tmp/ready",
            "--json",
            "--",
            "sh",
            "-c",
            "echo started; touch /tmp/ready; exec sleep 600",
        ],
    );
    service("service_list", &["list", "svc"]);
    service("service_list_json", &["list", "svc", "--json"]);
    service("service_status", &["status", "svc", "web"]);
    service("service_logs_json", &["logs", "svc", "web", "--json"]);
    service("service_stop_json", &["stop", "svc", "web", "--json"]);
    service(
        "error_service_not_found_json",
        &["status", "svc", "nope", "--json"],
    );
}
