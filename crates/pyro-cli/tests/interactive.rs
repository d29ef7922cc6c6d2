//! Shells, services and secrets on real debian:12 workspaces, through the `pyro` binary.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::time::Duration;

use serde_json::Value;
use util::TestPyro;

fn ws(p: &TestPyro, extra: &[&str]) -> String {
    p.create_workspace(extra).0
}

fn ok(p: &TestPyro, args: &[&str]) -> Value {
    let mut a = vec!["workspace"];
    a.extend_from_slice(args);
    let (out, v) = p.json(&a);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {v}");
    v
}

fn err_kind(p: &TestPyro, args: &[&str]) -> (String, Value) {
    let mut a = vec!["workspace"];
    a.extend_from_slice(args);
    let (out, v) = p.json(&a);
    let kind = v["error"]["kind"].as_str().unwrap().to_string();
    // A request refused as malformed is a usage error (2); anything else exits 1.
    let code = if kind == "invalid_request" { 2 } else { 1 };
    assert_eq!(out.status.code(), Some(code), "{args:?} should fail: {v}");
    (kind, v)
}

/// Reads a shell until idle, from a cursor; returns (output, next cursor).
fn read(p: &TestPyro, id: &str, shell: &str, cursor: u64) -> (String, u64) {
    let c = cursor.to_string();
    let v = ok(
        p,
        &[
            "shell",
            "read",
            id,
            shell,
            "--cursor",
            &c,
            "--plain",
            "--wait-for-idle-ms",
            "400",
        ],
    );
    (
        v["output"].as_str().unwrap().to_string(),
        v["next_cursor"].as_u64().unwrap(),
    )
}

/// Types a line and waits until `want` shows up in the output after `cursor`.
fn type_and_wait(
    p: &TestPyro,
    id: &str,
    shell: &str,
    input: &str,
    want: &str,
    cursor: &mut u64,
) -> String {
    ok(p, &["shell", "write", id, shell, "--input", input]);
    let mut all = String::new();
    for _ in 0..40 {
        let (out, next) = read(p, id, shell, *cursor);
        *cursor = next;
        all.push_str(&out);
        if all.contains(want) {
            return all;
        }
    }
    panic!("{want:?} never appeared; got {all:?}");
}

#[test]
fn a_shell_keeps_state_across_calls_from_different_processes_and_ctrl_c_interrupts() {
    require_containers!();
    let p = TestPyro::new();
    let id = ws(&p, &[]);
    let v = ok(&p, &["shell", "open", &id, "--cols", "100", "--rows", "20"]);
    let shell = v["shell_id"].as_str().unwrap().to_string();
    assert_eq!(v["state"], "running");
    let mut cursor = 0;
    // Each `pyro` invocation is its own process: cwd and variables live in the guest shell.
    type_and_wait(
        &p,
        &id,
        &shell,
        "cd /tmp && export GREETING=hello-from-shell",
        "pyro$",
        &mut cursor,
    );
    let out = type_and_wait(
        &p,
        &id,
        &shell,
        "echo \"$PWD $GREETING\"",
        "/tmp hello-from-shell",
        &mut cursor,
    );
    assert!(out.contains("/tmp hello-from-shell"), "{out}");
    // A background job survives between calls too.
    type_and_wait(
        &p,
        &id,
        &shell,
        "sleep 300 & echo job=$!",
        "job=",
        &mut cursor,
    );
    // Ctrl-C interrupts a running sleep in the foreground; $? is 130.
    ok(&p, &["shell", "write", &id, &shell, "--input", "sleep 600"]);
    std::thread::sleep(Duration::from_millis(500));
    ok(&p, &["shell", "signal", &id, &shell, "INT"]);
    let out = type_and_wait(&p, &id, &shell, "echo status=$?", "status=130", &mut cursor);
    assert!(out.contains("status=130"), "{out}");
    let list = ok(&p, &["shell", "list", &id]);
    assert_eq!(list["count"], 1);
    let v = ok(&p, &["shell", "close", &id, &shell]);
    assert_ne!(v["state"], "running");
    let (kind, _) = err_kind(&p, &["shell", "write", &id, &shell, "--input", "echo x"]);
    assert_eq!(kind, "not_found");
    ok(&p, &["delete", &id]);
}

#[test]
fn wait_for_idle_returns_after_output_settles_and_a_ring_overflow_is_reported() {
    require_containers!();
    let p = TestPyro::new();
    let id = ws(&p, &[]);
    let shell = ok(&p, &["shell", "open", &id])["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Output that keeps coming for ~1.5 s: an idle wait of 800 ms sees all of it.
    ok(
        &p,
        &[
            "shell",
            "write",
            &id,
            &shell,
            "--input",
            "for i in 1 2 3; do echo tick$i; sleep 0.5; done; echo done-ticking",
        ],
    );
    let v = ok(
        &p,
        &[
            "shell",
            "read",
            &id,
            &shell,
            "--wait-for-idle-ms",
            "800",
            "--plain",
        ],
    );
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("done-ticking"),
        "idle wait returned early: {out}"
    );
    // More than the 1 MiB ring: a reader at cursor 0 is told what it missed.
    ok(
        &p,
        &[
            "shell",
            "write",
            &id,
            &shell,
            "--input",
            "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end-of-flood",
        ],
    );
    let mut seen_end = false;
    for _ in 0..60 {
        let v = ok(
            &p,
            &[
                "shell",
                "read",
                &id,
                &shell,
                "--cursor",
                "0",
                "--max-chars",
                "1000",
            ],
        );
        if v["dropped"].as_u64().unwrap() > 0 && v["total_bytes"].as_u64().unwrap() > 3_000_000 {
            assert!(v["cursor"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(v["truncated"], true);
            seen_end = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(seen_end, "the overflow was never reported");
    ok(&p, &["delete", &id]);
}

#[test]
fn services_become_ready_by_every_probe_kind() {
    require_containers!();
    let p = TestPyro::new();
    // debian:12-build has python3 for real TCP and HTTP servers.
    let (out, v) = p.json(&[
        "workspace",
        "create",
        "debian:12-build",
        "--isolation",
        "container",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let id = v["workspace_id"].as_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "filesvc",
            vec!["--ready-file", "/workspace/ready.flag"],
            "sleep 0.3; touch /workspace/ready.flag; exec sleep 600",
        ),
        (
            "cmdsvc",
            vec!["--ready-command", "test -e /tmp/up"],
            "sleep 0.3; touch /tmp/up; exec sleep 600",
        ),
        (
            "tcpsvc",
            vec!["--ready-tcp", "127.0.0.1:7001"],
            "exec python3 -m http.server 7001 --bind 127.0.0.1 --directory /tmp",
        ),
        (
            "httpsvc",
            vec!["--ready-http", "http://127.0.0.1:7002/"],
            "exec python3 -m http.server 7002 --bind 127.0.0.1 --directory /tmp",
        ),
        ("nosvc", vec![], "exec sleep 600"),
    ];
    for (name, probe, cmd) in cases {
        let mut args = vec!["service", "start", &id, name];
        args.extend(probe.iter().copied());
        args.extend(["--", "sh", "-c", cmd]);
        let v = ok(&p, &args);
        assert_eq!(v["state"], "ready", "{name}: {v}");
        assert!(v["ready_at_ms"].is_i64(), "{v}");
    }
    // A port nobody opens: start fails with the readiness error once the timeout passes.
    let (kind, v) = err_kind(
        &p,
        &[
            "service",
            "start",
            &id,
            "deaf",
            "--ready-tcp",
            "127.0.0.1:7999",
            "--ready-timeout",
            "2",
            "--",
            "sh",
            "-c",
            "echo listening-nowhere; sleep 600",
        ],
    );
    assert_eq!(kind, "agent_refused", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("not ready after 2000 ms") && msg.contains("listening-nowhere"),
        "{msg}"
    );
    // Bad probe specs are refused before anything starts.
    let (kind, _) = err_kind(
        &p,
        &[
            "service",
            "start",
            &id,
            "x",
            "--ready-tcp",
            "nohostport",
            "--",
            "true",
        ],
    );
    assert_eq!(kind, "invalid_request");
    let list = ok(&p, &["service", "list", &id]);
    assert_eq!(list["running_service_count"], 5, "{list}");
    let v = ok(&p, &["service", "stop", &id, "filesvc"]);
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["reason"], "sigterm");
    // Service files live outside /workspace: the diff shows only the ready flag.
    let d = ok(&p, &["diff", &id]);
    let paths: Vec<&str> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["ready.flag"], "{d}");
    ok(&p, &["delete", &id]);
}

#[test]
fn a_service_that_is_never_ready_fails_with_its_log_tail_and_a_crash_shows_its_exit_code() {
    require_containers!();
    let p = TestPyro::new();
    let id = ws(&p, &[]);
    let (_, v) = err_kind(
        &p,
        &[
            "service",
            "start",
            &id,
            "slow",
            "--ready-file",
            "never",
            "--ready-timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo booting-slowly; echo warn-on-stderr >&2; sleep 600",
        ],
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("booting-slowly") && msg.contains("warn-on-stderr"),
        "{msg}"
    );
    let s = ok(&p, &["service", "status", &id, "slow"]);
    assert_eq!(s["state"], "failed");
    // A crash before readiness: exit code and log tail.
    let (_, v) = err_kind(
        &p,
        &[
            "service",
            "start",
            &id,
            "crash",
            "--ready-file",
            "never",
            "--",
            "sh",
            "-c",
            "echo dying; exit 3",
        ],
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{v}"
    );
    // A crash after readiness shows exited with its code.
    ok(
        &p,
        &[
            "service",
            "start",
            &id,
            "late",
            "--",
            "sh",
            "-c",
            "sleep 0.5; echo bye; exit 4",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let s = ok(&p, &["service", "status", &id, "late"]);
    assert_eq!(s["state"], "exited", "{s}");
    assert_eq!(s["exit_code"], 4);
    let logs = ok(&p, &["service", "logs", &id, "late"]);
    assert_eq!(logs["stdout"], "bye\n");
    // on-failure restarts it.
    ok(
        &p,
        &[
            "service",
            "start",
            &id,
            "flaky",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            "echo run; sleep 0.2; exit 1",
        ],
    );
    std::thread::sleep(Duration::from_millis(2500));
    let s = ok(&p, &["service", "status", &id, "flaky"]);
    assert!(s["restarts"].as_u64().unwrap() >= 2, "{s}");
    let logs = ok(&p, &["service", "logs", &id, "flaky", "--tail-lines", "1"]);
    assert_eq!(logs["stdout"], "run\n");
    assert_eq!(logs["truncated"], true);
    ok(&p, &["service", "stop", &id, "flaky"]);
    ok(&p, &["delete", &id]);
}

/// Runs a workspace command twice (human and `--json`), keeping both outputs; returns the exit
/// code and the human output.
fn capture(p: &TestPyro, outputs: &mut Vec<String>, args: &[&str]) -> (i32, String) {
    let mut a = vec!["workspace"];
    a.extend_from_slice(args);
    let out = p.run(&a);
    let human = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push(human.clone());
    let (_, v) = p.json(&a);
    outputs.push(v.to_string());
    (out.status.code().unwrap_or(-1), human)
}

fn grep_tree(dir: &std::path::Path, needle: &[u8], hits: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            grep_tree(&p, needle, hits);
        } else if m.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
}

#[test]
fn secrets_are_usable_in_the_guest_and_appear_nowhere_else() {
    require_containers!();
    let p = TestPyro::new();
    let secret = "s3cr3t-Value-9f2e";
    let file_secret = p.dir.path().join("token.txt");
    std::fs::write(&file_secret, "file-secret-77ab").unwrap();
    let spec = format!("API_KEY={secret}");
    let fspec = format!("FILE_TOKEN={}", file_secret.display());
    let id = ws(&p, &["--secret", &spec, "--secret-file", &fspec]);
    let mut outputs: Vec<String> = Vec::new();
    let status = capture(&p, &mut outputs, &["status", &id]);
    assert_eq!(status.0, 0);
    assert!(
        status.1.contains("API_KEY"),
        "names are shown: {}",
        status.1
    );
    // Installed on tmpfs, 0400, outside /workspace; usable through --secret-env.
    let (code, human) = capture(&p, &mut outputs, &["exec", &id, "--secret-env", "API_KEY=KEY", "--", "sh", "-c", "stat -c %a /run/pyro-secrets/API_KEY; test \"$KEY\" = \"$(cat /run/pyro-secrets/API_KEY)\" && echo matches; echo leak:$KEY"]);
    assert_eq!(code, 0);
    assert!(human.contains("400\nmatches\nleak:[REDACTED]\n"), "{human}");
    // Output the guest writes in two pieces, with a pause between, is still redacted.
    let (_, human) = capture(&p, &mut outputs, &["exec", &id, "--secret-env", "API_KEY", "--", "sh", "-c", "printf %s \"${API_KEY%????}\"; sleep 0.3; printf '%s\\n' \"${API_KEY#${API_KEY%????}}\""]);
    assert!(human.starts_with("[REDACTED]\n"), "{human}");
    // Files, diffs, shells, services and logs.
    capture(
        &p,
        &mut outputs,
        &[
            "exec",
            &id,
            "--secret-env",
            "API_KEY",
            "--secret-env",
            "FILE_TOKEN=FT",
            "--",
            "sh",
            "-c",
            "echo $API_KEY > leaked.txt; echo $FT >> leaked.txt",
        ],
    );
    let (_, human) = capture(&p, &mut outputs, &["file", "read", &id, "leaked.txt"]);
    assert!(human.starts_with("[REDACTED]\n[REDACTED]\n"), "{human}");
    capture(&p, &mut outputs, &["diff", &id]);
    let shell = p
        .json(&["workspace", "shell", "open", &id, "--secret-env", "API_KEY"])
        .1["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    capture(
        &p,
        &mut outputs,
        &[
            "shell",
            "write",
            &id,
            &shell,
            "--input",
            "echo shell:$API_KEY",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, human) = capture(
        &p,
        &mut outputs,
        &["shell", "read", &id, &shell, "--wait-for-idle-ms", "300"],
    );
    assert!(human.contains("shell:[REDACTED]"), "{human}");
    capture(
        &p,
        &mut outputs,
        &[
            "service",
            "start",
            &id,
            "svc",
            "--secret-env",
            "API_KEY",
            "--",
            "sh",
            "-c",
            "echo svc:$API_KEY; sleep 600",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, human) = capture(&p, &mut outputs, &["service", "logs", &id, "svc"]);
    assert!(human.contains("svc:[REDACTED]"), "{human}");
    capture(
        &p,
        &mut outputs,
        &[
            "service",
            "start",
            &id,
            "bad",
            "--secret-env",
            "API_KEY",
            "--ready-file",
            "x",
            "--ready-timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo err:$API_KEY; sleep 600",
        ],
    );
    capture(&p, &mut outputs, &["logs", &id]);
    capture(&p, &mut outputs, &["reset", &id]);
    let (_, human) = capture(
        &p,
        &mut outputs,
        &["exec", &id, "--", "cat", "/run/pyro-secrets/FILE_TOKEN"],
    );
    assert!(
        human.starts_with("[REDACTED]"),
        "secrets are installed again after reset: {human}"
    );
    assert!(outputs.iter().any(|o| o.contains("[REDACTED]")));
    // A name that does not exist is a clear error.
    let (kind, v) = err_kind(&p, &["exec", &id, "--secret-env", "NOPE", "--", "true"]);
    assert_eq!(kind, "invalid_request", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("NOPE"));

    for o in &outputs {
        assert!(
            !o.contains(secret) && !o.contains("file-secret-77ab"),
            "a secret leaked into output: {o}"
        );
    }
    // Nowhere in $PYRO_HOME but the 0600 secret files (the guest's own copy of /workspace
    // holds leaked.txt only until the reset above restored the baseline).
    let mut hits = Vec::new();
    grep_tree(&p.home, secret.as_bytes(), &mut hits);
    grep_tree(&p.home, b"file-secret-77ab", &mut hits);
    let allowed: Vec<String> = hits
        .iter()
        .filter(|h| h.contains(&format!("/secrets/{id}/")))
        .cloned()
        .collect();
    assert_eq!(
        hits, allowed,
        "secret values found outside the secret store"
    );
    assert_eq!(allowed.len(), 2, "{hits:?}");
    use std::os::unix::fs::PermissionsExt;
    for h in &allowed {
        assert_eq!(
            std::fs::metadata(h).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let dir = p.home.join("secrets").join(&id);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    ok(&p, &["delete", &id]);
    assert!(!dir.exists());
}
