//! The agent binary over a real Unix socket, outside any sandbox: exec semantics, caps,
//! timeouts, stdin, cancelling by hanging up, concurrency and the version handshake.

#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pyro_protocol::{
    read_frame, write_frame, write_json, ExecOutcome, ExecRequest, FrameKind, Request, Response,
    PROTOCOL_VERSION,
};

type Exec = (Vec<u8>, Vec<u8>, Result<ExecOutcome, String>);

/// Reads an exec's output frames and its answer.
fn read_exec(s: &mut UnixStream) -> Exec {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let (k, p) = read_frame(s).unwrap();
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

    fn exec(&self, req: ExecRequest) -> Exec {
        let mut s = self.connect();
        write_json(&mut s, &Request::Exec(req)).unwrap();
        read_exec(&mut s)
    }

    /// Like `exec`, sending `input` as stdin from another thread while output is read, as the
    /// host does.
    fn exec_stdin(&self, mut req: ExecRequest, input: Vec<u8>) -> Exec {
        req.stdin = true;
        let mut s = self.connect();
        write_json(&mut s, &Request::Exec(req)).unwrap();
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for c in input.chunks(200_000) {
                if write_frame(&mut w, FrameKind::Data, c).is_err() {
                    return;
                }
            }
            let _ = write_frame(&mut w, FrameKind::Data, &[]);
        });
        read_exec(&mut s)
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
        stdin: false,
    }
}

/// How many live processes on this machine run exactly `args` (zombies aside).
fn running(args: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() == args {
            n += 1;
        }
    }
    n
}

/// Waits up to `limit` for `cond`.
fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn stdin_is_streamed_while_output_is_forwarded() {
    let a = Agent::start();
    // More than any pipe buffer in both directions: `cat` blocks on output unless the agent
    // forwards it while it is still feeding stdin.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut r = req(&["cat"]);
    r.max_stdout = u64::MAX;
    let (out, _, o) = a.exec_stdin(r, input.clone());
    let o = o.unwrap();
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(out.len(), input.len());
    assert!(out == input, "stdin came back changed");
    // Empty stdin is an immediate end of file.
    let (out, _, _) = a.exec_stdin(req(&["wc", "-c"]), Vec::new());
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
    // Without stdin the command reads /dev/null, as before.
    let (out, _, _) = a.exec(req(&["wc", "-c"]));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
}

#[test]
fn stdin_nobody_reads_hangs_nothing() {
    let a = Agent::start();
    let big = vec![b'x'; 8 << 20];
    let t = Instant::now();
    let (_, _, o) = a.exec_stdin(req(&["true"]), big.clone());
    assert_eq!(o.unwrap().exit_code, Some(0));
    // A background job keeps the stdin pipe open but never reads it: the exec still ends,
    // long before the job does.
    let (_, _, o) = a.exec_stdin(req(&["sh", "-c", "sleep 8 >/dev/null 2>&1 & exit 3"]), big);
    assert_eq!(o.unwrap().exit_code, Some(3));
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn hanging_up_cancels_the_command_term_first_then_kill() {
    let a = Agent::start();
    let marker = a.workdir().join("got-term");
    // A command that notes TERM and stops, with a job of its group that ignores TERM.
    let script = format!(
        "(trap '' TERM; exec sleep 6076) & \
         trap 'echo yes > {}; exit 0' TERM; \
         echo started; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut s = a.connect();
    write_json(&mut s, &Request::Exec(req(&["sh", "-c", &script]))).unwrap();
    let (k, p) = read_frame(&mut s).unwrap();
    assert_eq!((k, p.as_slice()), (FrameKind::Stdout, &b"started\n"[..]));
    // The background job may print nothing before it execs: wait for it rather than race it.
    assert!(
        eventually(Duration::from_secs(5), || running("sleep 6076") == 1),
        "the TERM-ignoring job never started"
    );
    let t = Instant::now();
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || marker.exists()),
        "the command did not get TERM"
    );
    assert!(
        eventually(Duration::from_secs(8), || running("sleep 6076") == 0),
        "the TERM-ignoring job outlived the grace period"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "KILL came before the grace period: {:?}",
        t.elapsed()
    );
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
