//! The agent binary over a real Unix socket, outside any sandbox: exec semantics, caps,
//! timeouts, concurrency and the version handshake.

#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pyro_protocol::{
    read_frame, write_json, ExecOutcome, ExecRequest, FrameKind, Request, Response,
    PROTOCOL_VERSION,
};

struct Agent {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let work = dir.path().join("workspace");
        let child = Command::new(env!("CARGO_BIN_EXE_pyro-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--workdir")
            .arg(&work)
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < until, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(5));
        }
        Agent { child, sock, dir }
    }

    fn connect(&self) -> UnixStream {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        write_json(
            &mut s,
            &Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let (_, p) = read_frame(&mut s).unwrap();
        assert!(matches!(
            serde_json::from_slice(&p).unwrap(),
            Response::Hello(_)
        ));
        s
    }

    fn exec(&self, req: ExecRequest) -> (Vec<u8>, Vec<u8>, Result<ExecOutcome, String>) {
        let mut s = self.connect();
        write_json(&mut s, &Request::Exec(req)).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let (k, p) = read_frame(&mut s).unwrap();
            match k {
                FrameKind::Stdout => out.extend(p),
                FrameKind::Stderr => err.extend(p),
                FrameKind::Data => panic!("data frame during exec"),
                FrameKind::Json => {
                    return match serde_json::from_slice(&p).unwrap() {
                        Response::ExecDone(o) => (out, err, Ok(o)),
                        Response::Error { kind, message } => {
                            (out, err, Err(format!("{kind}: {message}")))
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }

    fn workdir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        timeout_ms: Some(20_000),
        max_stdout: 1 << 20,
        max_stderr: 1 << 20,
        user: None,
    }
}

#[test]
fn exec_runs_in_workdir_with_quoting_env_and_exit_code() {
    let a = Agent::start();
    let mut r = req(&["sh", "-c", "pwd; echo \"$FOO\"; echo 'it''s' >&2; exit 3"]);
    r.env.insert("FOO".into(), "a b;$(x)".into());
    let (out, err, o) = a.exec(r);
    let o = o.unwrap();
    let want = format!("{}\na b;$(x)\n", a.workdir().join("workspace").display());
    assert_eq!(String::from_utf8(out).unwrap(), want);
    assert_eq!(err, b"its\n");
    assert_eq!(o.exit_code, Some(3));
    assert!(!o.timed_out);
}

#[test]
fn a_requested_path_survives_the_login_profile() {
    let a = Agent::start();
    let tools = a.workdir().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let tool = tools.join("pyro-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", tools.display());
    let mut r = req(&["sh", "-c", "echo \"$PATH\"; pyro-test-tool"]);
    r.env.insert("PATH".into(), path.clone());
    let (out, err, o) = a.exec(r);
    assert_eq!(
        o.unwrap().exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{path}\ntool ran\n")
    );
}

#[test]
fn commands_run_as_the_requested_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: switching users needs root");
        return;
    }
    let a = Agent::start();
    let script = "id -u; id -g; echo \"$HOME $USER\"";
    let mut r = req(&["sh", "-c", script]);
    r.cwd = Some("/".into());
    r.user = Some("nobody".into());
    let (out, err, o) = a.exec(r);
    assert_eq!(
        o.unwrap().exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "65534\n65534\n/nonexistent nobody\n"
    );
    let mut r = req(&["sh", "-c", "id -u; id -g; echo \"$HOME\""]);
    r.cwd = Some("/".into());
    r.user = Some("4242:4343".into());
    let (out, _, o) = a.exec(r);
    assert_eq!(o.unwrap().exit_code, Some(0));
    assert_eq!(String::from_utf8(out).unwrap(), "4242\n4343\n/\n");
    let mut r = req(&["true"]);
    r.user = Some("no-such-user-xyz".into());
    let e = a.exec(r).2.unwrap_err();
    assert!(
        e.starts_with("bad_request") && e.contains("/etc/passwd"),
        "{e}"
    );
}

#[test]
fn command_not_found_is_127_and_missing_cwd_is_a_bad_request() {
    let a = Agent::start();
    let (_, err, o) = a.exec(req(&["no-such-command-xyz"]));
    assert_eq!(o.unwrap().exit_code, Some(127));
    assert!(String::from_utf8_lossy(&err).contains("not found"));
    let mut r = req(&["true"]);
    r.cwd = Some("/no/such/dir".into());
    assert!(a.exec(r).2.unwrap_err().starts_with("bad_request"));
    assert!(a.exec(req(&[])).2.unwrap_err().contains("empty"));
}

#[test]
fn output_is_capped_and_binary_safe() {
    let a = Agent::start();
    let mut r = req(&[
        "sh",
        "-c",
        "head -c 5000000 /dev/zero; printf '\\377\\000x' >&2",
    ]);
    r.max_stdout = 1000;
    let (out, err, o) = a.exec(r);
    let o = o.unwrap();
    assert_eq!(out.len(), 1000);
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout_bytes, 5_000_000);
    assert_eq!(err, b"\xff\x00x");
    assert!(!o.stderr_truncated);
}

#[test]
fn timeout_kills_the_group_and_keeps_partial_output() {
    let a = Agent::start();
    let mut r = req(&[
        "sh",
        "-c",
        "echo before; trap '' TERM; (sleep 6071; echo child) & sleep 6071",
    ]);
    r.timeout_ms = Some(300);
    let t = Instant::now();
    let (out, _, o) = a.exec(r);
    let o = o.unwrap();
    assert!(o.timed_out);
    assert_eq!(o.signal, Some(9));
    assert_eq!(out, b"before\n");
    assert!(t.elapsed() < Duration::from_secs(30));
    // Nothing from that group may still run: the backgrounded sleep is gone too (a duration no
    // other process on the host is likely to use).
    let (out, _, _) = a.exec(req(&[
        "sh",
        "-c",
        "ps -eo args 2>/dev/null | grep -c '^sleep 6071' || true",
    ]));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
}

#[test]
fn calls_are_served_concurrently() {
    let a = std::sync::Arc::new(Agent::start());
    let slow = std::thread::spawn({
        let a = a.clone();
        move || a.exec(req(&["sleep", "3"]))
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (out, _, _) = a.exec(req(&["echo", "fast"]));
    assert_eq!(out, b"fast\n");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a slow exec blocked another call"
    );
    slow.join().unwrap().2.unwrap();
}

#[test]
fn wrong_protocol_version_is_refused() {
    let a = Agent::start();
    let mut s = UnixStream::connect(&a.sock).unwrap();
    write_json(
        &mut s,
        &Request::Hello {
            protocol_version: PROTOCOL_VERSION + 1,
        },
    )
    .unwrap();
    let (_, p) = read_frame(&mut s).unwrap();
    match serde_json::from_slice(&p).unwrap() {
        Response::Error { kind, .. } => assert_eq!(kind, "protocol_version"),
        other => panic!("unexpected {other:?}"),
    }
}
