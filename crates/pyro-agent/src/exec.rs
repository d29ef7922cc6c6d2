//! Runs one command: `sh -lc` over its command line, in its own process group, with stdin fed
//! from the host, output streamed to the host up to a cap, and a timeout that kills the whole
//! group. The host going away (closing the connection) cancels the command: TERM to the group,
//! KILL after a grace period.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pyro_protocol::{command_line, quote, ExecOutcome, ExecRequest, FrameKind, CANCEL_GRACE_MS};

use crate::reaper::{self, Exit};

/// The environment every command starts from, before the request's own variables.
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LANG", "C.UTF-8"),
];

/// The command line a login shell (`sh -lc`) runs for `line`. A login shell's profile resets
/// `PATH` (Debian's and Alpine's `/etc/profile` do), so a `PATH` the request sets (an image's
/// own, or the caller's) is set again after it, before the command.
pub fn login_line(env: &BTreeMap<String, String>, line: &str) -> String {
    match env.get("PATH") {
        Some(path) => format!("PATH={}; export PATH; {line}", quote(path)),
        None => line.to_owned(),
    }
}

/// After the command's main process ends, how long to wait for its pipes to close. Background
/// jobs that keep the pipes open past this are left running, but their output is no longer read.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Why an exec could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request itself was invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The shell could not be started.
    #[error("cannot start /bin/sh: {0}")]
    Spawn(io::Error),
}

/// Where output frames go; the server passes the connection.
pub trait FrameSink {
    /// Sends one frame; an error means the host has gone away.
    fn send(&mut self, kind: FrameKind, bytes: &[u8]) -> io::Result<()>;
}

impl<W: Write> FrameSink for W {
    fn send(&mut self, kind: FrameKind, bytes: &[u8]) -> io::Result<()> {
        pyro_protocol::write_frame(self, kind, bytes).map_err(|e| match e {
            pyro_protocol::ProtocolError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }
}

struct Stream {
    fd: OwnedFd,
    kind: FrameKind,
    cap: u64,
    total: u64,
    open: bool,
}

impl Stream {
    fn truncated(&self) -> bool {
        self.total > self.cap
    }
}

/// Runs a command, streaming output frames to `sink`, and returns how it ended.
///
/// `host` is the rest of the connection from the host: it carries the command's stdin (when
/// the request asks for it) and its end means the host has gone, which cancels the command. It
/// is read on a thread of its own, so that neither a command that never reads its stdin nor a
/// host slow to read output can stall the other direction.
pub fn run<R: Read + Send + 'static>(
    req: &ExecRequest,
    default_cwd: &Path,
    host: R,
    sink: &mut dyn FrameSink,
) -> Result<ExecOutcome, ExecError> {
    if req.argv.is_empty() {
        return Err(ExecError::BadRequest("command is empty".into()));
    }
    let line = command_line(&req.argv).ok_or_else(|| {
        ExecError::BadRequest("command arguments may not contain NUL bytes".into())
    })?;
    let cwd = req.cwd.as_deref().map(Path::new).unwrap_or(default_cwd);
    if !cwd.is_dir() {
        return Err(ExecError::BadRequest(format!(
            "working directory {} does not exist",
            cwd.display()
        )));
    }
    for k in req.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ExecError::BadRequest(format!(
                "invalid environment variable name {k:?}"
            )));
        }
    }

    let creds =
        crate::user::resolve(req.user.as_deref(), Path::new("/")).map_err(ExecError::BadRequest)?;

    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-lc")
        .arg(login_line(&req.env, &line))
        .current_dir(cwd)
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .envs(creds.iter().flat_map(|c| c.env()))
        .envs(&req.env)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = &creds {
        c.apply(&mut cmd);
    }
    // A new process group, so a timeout can kill the command and everything it started. Not
    // `setsid` in a pre_exec hook: that forces fork+exec, while a process group lets std use
    // posix_spawn (vfork-like), which is markedly cheaper under nested virtualization.
    cmd.process_group(0);
    let start = Instant::now();
    // Both ends close on exec: the command must not hold them, or their hang-ups would never
    // come.
    let (cancel_r, cancel_w) = io::pipe().map_err(ExecError::Spawn)?;
    let (stop_r, stop_w) = io::pipe().map_err(ExecError::Spawn)?;
    let mut child = cmd.spawn().map_err(ExecError::Spawn)?;
    let pid = child.id() as i32;
    reaper::want(pid);
    let pidfd = pidfd_open(pid);
    let stdin = child.stdin.take().map(OwnedFd::from);
    if let Some(fd) = &stdin {
        set_nonblocking(fd.as_raw_fd());
    }
    std::thread::spawn(move || serve_host(host, stdin, cancel_w.into(), stop_r.into()));
    let cancel_r = OwnedFd::from(cancel_r);

    let mut streams = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        streams.push(Stream {
            fd: out.into(),
            kind: FrameKind::Stdout,
            cap: req.max_stdout,
            total: 0,
            open: true,
        });
    }
    if let Some(err) = child.stderr.take() {
        streams.push(Stream {
            fd: err.into(),
            kind: FrameKind::Stderr,
            cap: req.max_stderr,
            total: 0,
            open: true,
        });
    }
    // The child is reaped through the reaper, never through `Child::wait`.
    drop(child);
    for s in &streams {
        set_nonblocking(s.fd.as_raw_fd());
    }

    let deadline = req.timeout_ms.map(|ms| start + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut exited = pidfd.is_none();
    let mut drain_until: Option<Instant> = None;
    // When the host went away; the group got TERM then and gets KILL once the grace is over.
    let mut host_gone: Option<Instant> = None;
    let grace = Duration::from_millis(CANCEL_GRACE_MS);
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        if !timed_out && deadline.is_some_and(|d| now >= d) {
            timed_out = true;
        }
        let kill = timed_out || host_gone.is_some_and(|t| now >= t + grace);
        if kill {
            // Keep killing: a fork bomb may add members between two kills.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let any_open = streams.iter().any(|s| s.open);
        if exited && (!any_open || drain_until.is_some_and(|d| now >= d)) {
            break;
        }
        if !exited && !any_open && pidfd.is_none() {
            break;
        }

        let mut wait = Duration::from_secs(3600);
        if let Some(d) = deadline.filter(|_| !timed_out) {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if let Some(d) = drain_until {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if kill {
            wait = wait.min(Duration::from_millis(20));
        } else if let Some(t) = host_gone {
            wait = wait.min((t + grace).saturating_duration_since(now));
        }

        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        for s in streams.iter().filter(|s| s.open) {
            fds.push(libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let pidfd_slot = match (&pidfd, exited) {
            (Some(p), false) => {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let cancel_slot = host_gone.is_none().then(|| {
            fds.push(libc::pollfd {
                fd: cancel_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.len() - 1
        });
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if let Some(i) = pidfd_slot {
            if fds[i].revents != 0 {
                exited = true;
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
        }
        if cancel_slot.is_some_and(|i| fds[i].revents != 0) {
            host_gone = Some(cancel(pid));
        }
        for pfd in fds.iter().filter(|p| p.revents != 0) {
            let Some(s) = streams
                .iter_mut()
                .find(|s| s.open && s.fd.as_raw_fd() == pfd.fd)
            else {
                continue;
            };
            // Read until the pipe is empty so that a chatty command is not throttled by poll.
            loop {
                match read_fd(s.fd.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        s.open = false;
                        break;
                    }
                    Ok(n) => {
                        let keep = s.cap.saturating_sub(s.total).min(n as u64) as usize;
                        s.total += n as u64;
                        if keep > 0
                            && host_gone.is_none()
                            && sink.send(s.kind, &buf[..keep]).is_err()
                        {
                            // Nobody is listening any more: stop the command.
                            host_gone = Some(cancel(pid));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        s.open = false;
                        break;
                    }
                }
            }
        }
        if !exited && pidfd.is_none() && streams.iter().all(|s| !s.open) {
            exited = true;
        }
    }
    // Stops a stdin write that waits on a command which never reads.
    drop(stop_w);
    let exit = reaper::wait_for(pid);
    let duration_ms = start.elapsed().as_millis() as u64;
    if let Some(t) = host_gone {
        // The main process is gone, but members of its group that ignore TERM (and hold no
        // output pipe) may not be: they get KILL when the grace is over. Nobody waits for this
        // connection's answer any more, so this thread can wait. The group id is the reaped
        // leader's pid, which the kernel does not hand out again within seconds.
        let pg = Pid::from_raw(pid);
        if killpg(pg, None).is_ok() {
            std::thread::sleep((t + grace).saturating_duration_since(Instant::now()));
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
    let (exit_code, signal) = match exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    let find = |k: FrameKind| streams.iter().find(|s| s.kind == k);
    let out = find(FrameKind::Stdout);
    let err = find(FrameKind::Stderr);
    Ok(ExecOutcome {
        exit_code,
        signal,
        timed_out,
        stdout_truncated: out.is_some_and(Stream::truncated),
        stderr_truncated: err.is_some_and(Stream::truncated),
        stdout_bytes: out.map_or(0, |s| s.total),
        stderr_bytes: err.map_or(0, |s| s.total),
        duration_ms,
    })
}

/// Asks a cancelled command's process group to stop, and says when that was.
fn cancel(pid: i32) -> Instant {
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    Instant::now()
}

/// Reads the host's side of an exec until it ends: `Data` frames go to the command's stdin
/// (an empty one closes it), anything else is ignored. Returning drops `_cancel`, and its
/// hang-up tells the exec loop the host is gone (when the command still runs, that cancels it;
/// after the answer it means nothing). `stop` hangs up once the exec is over, so that a write to
/// a stdin nobody reads (a background job may hold it open) gives up instead of blocking
/// forever.
fn serve_host<R: Read>(mut host: R, mut stdin: Option<OwnedFd>, _cancel: OwnedFd, stop: OwnedFd) {
    loop {
        match pyro_protocol::read_frame(&mut host) {
            Ok((FrameKind::Data, b)) if b.is_empty() => stdin = None,
            Ok((FrameKind::Data, b)) => {
                if let Some(fd) = &stdin {
                    if !write_stdin(fd, &b, &stop) {
                        // The command closed its stdin (or the exec is over): the rest of the
                        // stream is read and dropped, as a pipe's reader would see it.
                        stdin = None;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Writes all of `bytes` to the non-blocking stdin pipe, waiting while it is full; false when
/// the command will not read any more (EPIPE) or `stop` hung up.
fn write_stdin(fd: &OwnedFd, mut bytes: &[u8], stop: &OwnedFd) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {}
            _ => return false,
        }
        let mut fds = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
    }
    true
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the file is borrowed only for this call; `ManuallyDrop` keeps it from closing fd.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    f.read(buf)
}

#[cfg(test)]
mod tests {
    //! `run` driven directly: the host's side of the connection is one end of a socketpair, and
    //! the frames the command sends are collected in memory. The commands are real child
    //! processes of the test; without the reaper thread, `reaper::wait_for` reaps them itself.

    use std::io::Cursor;
    use std::os::unix::net::UnixStream;

    use pyro_protocol::{read_frame, write_frame, DEFAULT_OUTPUT_CAP};

    use super::*;

    fn req(line: &str) -> ExecRequest {
        ExecRequest {
            argv: vec![line.into()],
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            max_stdout: DEFAULT_OUTPUT_CAP,
            max_stderr: DEFAULT_OUTPUT_CAP,
            user: None,
            stdin: false,
        }
    }

    /// What a command sent, and how it ended.
    #[derive(Debug)]
    struct Ran {
        out: Vec<u8>,
        err: Vec<u8>,
        outcome: ExecOutcome,
    }

    fn frames(bytes: &[u8]) -> Vec<(FrameKind, Vec<u8>)> {
        let mut c = Cursor::new(bytes);
        let mut v = Vec::new();
        while (c.position() as usize) < bytes.len() {
            v.push(read_frame(&mut c).unwrap());
        }
        v
    }

    fn split(bytes: &[u8], outcome: ExecOutcome) -> Ran {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for (k, p) in frames(bytes) {
            match k {
                FrameKind::Stdout => out.extend(p),
                FrameKind::Stderr => err.extend(p),
                other => panic!("unexpected {other:?} frame from an exec"),
            }
        }
        Ran { out, err, outcome }
    }

    /// Runs `req` with the host staying connected throughout; `input`, when given, is sent as
    /// the command's stdin (then end of file) from a thread of its own.
    fn run_with(req: &ExecRequest, input: Option<Vec<u8>>) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let (host, agent) = UnixStream::pair().unwrap();
        let writer = input.map(|input| {
            let mut host = host.try_clone().unwrap();
            std::thread::spawn(move || {
                for chunk in input.chunks(64 * 1024) {
                    if write_frame(&mut host, FrameKind::Data, chunk).is_err() {
                        return;
                    }
                }
                let _ = write_frame(&mut host, FrameKind::Data, &[]);
            })
        });
        let mut sink = Vec::new();
        let outcome = run(req, dir.path(), agent, &mut sink).unwrap();
        // Hanging up after the answer means nothing any more.
        let _ = host.shutdown(std::net::Shutdown::Both);
        if let Some(w) = writer {
            w.join().unwrap();
        }
        split(&sink, outcome)
    }

    fn exec(line: &str) -> Ran {
        run_with(&req(line), None)
    }

    #[test]
    fn exit_codes_and_signals_are_reported_apart() {
        #[track_caller]
        fn check(line: &str, exit_code: Option<i32>, signal: Option<i32>) {
            let r = exec(line);
            assert_eq!(
                (r.outcome.exit_code, r.outcome.signal),
                (exit_code, signal),
                "{line}"
            );
            assert!(!r.outcome.timed_out, "{line}");
        }
        check("true", Some(0), None);
        check("exit 3", Some(3), None);
        check("exit 255", Some(255), None);
        check("no-such-command-here 2>/dev/null", Some(127), None);
        check("kill -TERM $$", None, Some(libc::SIGTERM));
        check("kill -KILL $$", None, Some(libc::SIGKILL));
    }

    #[test]
    fn stdout_and_stderr_are_separate_streams() {
        let r = exec("echo out; echo err >&2; printf more");
        assert_eq!(r.out, b"out\nmore");
        assert_eq!(r.err, b"err\n");
        assert_eq!(r.outcome.stdout_bytes, 8);
        assert_eq!(r.outcome.stderr_bytes, 4);
        assert!(!r.outcome.stdout_truncated && !r.outcome.stderr_truncated);
    }

    #[test]
    fn output_is_capped_per_stream_and_counted_in_full() {
        #[track_caller]
        fn check(bytes: u64, cap: u64, sent: u64, truncated: bool) {
            let mut rq = req(&format!(
                "head -c {bytes} /dev/zero; head -c 10 /dev/zero >&2"
            ));
            rq.max_stdout = cap;
            rq.max_stderr = 4;
            let r = run_with(&rq, None);
            assert_eq!(r.out.len() as u64, sent, "{bytes} bytes, cap {cap}");
            assert_eq!(r.outcome.stdout_bytes, bytes, "{bytes} bytes, cap {cap}");
            assert_eq!(r.outcome.stdout_truncated, truncated, "{bytes}, cap {cap}");
            assert_eq!((r.err.len(), r.outcome.stderr_bytes), (4, 10));
            assert!(r.outcome.stderr_truncated);
            assert_eq!(r.outcome.exit_code, Some(0));
        }
        check(0, 10, 0, false);
        check(10, 10, 10, false);
        check(11, 10, 10, true);
        check(300_000, 1000, 1000, true);
        check(300_000, 0, 0, true);
        check(300_000, DEFAULT_OUTPUT_CAP, 300_000, false);
    }

    #[test]
    fn output_is_binary_safe() {
        let r = exec(r"printf '\000\377\n\001'");
        assert_eq!(r.out, b"\0\xff\n\x01");
    }

    #[test]
    fn stdin_is_fed_from_data_frames_and_closed_by_an_empty_one() {
        let mut rq = req("cat; echo done");
        rq.stdin = true;
        let r = run_with(&rq, Some(b"hello\nworld\n".to_vec()));
        assert_eq!(r.out, b"hello\nworld\ndone\n");

        // More than a pipe holds, so writes wait for the command to read.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut rq = req("cat");
        rq.stdin = true;
        let r = run_with(&rq, Some(big.clone()));
        assert_eq!(r.out, big);
    }

    #[test]
    fn without_stdin_the_command_reads_end_of_file() {
        let r = exec("cat; echo eof");
        assert_eq!(r.out, b"eof\n");
        assert_eq!(r.outcome.exit_code, Some(0));
    }

    #[test]
    fn stdin_the_command_never_reads_stalls_nothing() {
        let mut rq = req("exit 4");
        rq.stdin = true;
        let r = run_with(&rq, Some(vec![b'x'; 2 << 20]));
        assert_eq!(r.outcome.exit_code, Some(4));
    }

    #[test]
    fn the_environment_is_the_base_then_the_request() {
        let mut rq = req("echo \"$HOME $LANG $USER $FOO\"; echo \"$PATH\"");
        rq.env.insert("FOO".into(), "bar baz".into());
        rq.env.insert("HOME".into(), "/home/x".into());
        rq.env.insert("PATH".into(), "/opt/x:/bin:/usr/bin".into());
        let r = run_with(&rq, None);
        assert_eq!(
            String::from_utf8_lossy(&r.out),
            "/home/x C.UTF-8 root bar baz\n/opt/x:/bin:/usr/bin\n"
        );
    }

    #[test]
    fn the_command_runs_in_the_requested_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        let mut rq = req("pwd -P");
        rq.cwd = Some(cwd.display().to_string());
        let r = run_with(&rq, None);
        assert_eq!(
            String::from_utf8_lossy(&r.out).trim_end(),
            cwd.display().to_string()
        );
    }

    #[test]
    fn login_line_sets_a_requested_path_again() {
        let mut env = BTreeMap::new();
        assert_eq!(login_line(&env, "ls -l"), "ls -l");
        env.insert("PATH".into(), "/a b:/c".into());
        assert_eq!(
            login_line(&env, "ls -l"),
            "PATH='/a b:/c'; export PATH; ls -l"
        );
    }

    #[test]
    fn bad_requests_are_refused_before_anything_runs() {
        #[track_caller]
        fn check(rq: ExecRequest, want: &str) {
            let dir = tempfile::tempdir().unwrap();
            let (_host, agent) = UnixStream::pair().unwrap();
            let mut sink = Vec::new();
            match run(&rq, dir.path(), agent, &mut sink) {
                Err(ExecError::BadRequest(m)) => assert!(m.contains(want), "{m:?} vs {want:?}"),
                other => panic!("expected a bad request, got {other:?}"),
            }
            assert!(sink.is_empty());
        }
        let mut empty = req("x");
        empty.argv.clear();
        check(empty, "command is empty");
        check(req("a\0b"), "NUL");
        let mut cwd = req("true");
        cwd.cwd = Some("/no/such/dir/here".into());
        check(cwd, "working directory /no/such/dir/here does not exist");
        for name in ["", "A=B", "A\0"] {
            let mut env = req("true");
            env.env.insert(name.into(), "v".into());
            check(env, "invalid environment variable name");
        }
    }

    /// Whether `pid` is gone (or only a zombie waiting for its new parent to reap it).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    fn eventually(cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_timeout_kills_the_whole_group_and_keeps_partial_output() {
        let mut rq = req("sleep 60 & echo $!; echo partial >&2; wait");
        rq.timeout_ms = Some(300);
        let r = run_with(&rq, None);
        assert!(r.outcome.timed_out);
        assert_eq!(r.outcome.signal, Some(libc::SIGKILL));
        assert_eq!(r.outcome.exit_code, None);
        assert_eq!(r.err, b"partial\n");
        let bg: i32 = String::from_utf8_lossy(&r.out).trim().parse().unwrap();
        assert!(eventually(|| gone(bg)), "background job {bg} survived");
    }

    /// A sink that records frames, and hangs up the host's end once the command has written.
    struct HangUpOnOutput {
        host: Option<UnixStream>,
        bytes: Vec<u8>,
    }

    impl Write for HangUpOnOutput {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            // Called once per frame, after the whole frame is written.
            self.host = None;
            Ok(())
        }
    }

    /// Runs `line` and hangs up once it has written its first output.
    fn cancelled(line: &str) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let (host, agent) = UnixStream::pair().unwrap();
        let mut sink = HangUpOnOutput {
            host: Some(host),
            bytes: Vec::new(),
        };
        let outcome = run(&req(line), dir.path(), agent, &mut sink).unwrap();
        split(&sink.bytes, outcome)
    }

    #[test]
    fn hanging_up_sends_term_to_the_group() {
        let r = cancelled("echo started; sleep 60");
        assert_eq!(r.out, b"started\n");
        assert_eq!(r.outcome.signal, Some(libc::SIGTERM));
        assert!(!r.outcome.timed_out);
    }

    #[test]
    fn hanging_up_kills_a_group_that_ignores_term_after_the_grace() {
        let r = cancelled("trap '' TERM; echo started; while :; do sleep 0.05; done");
        assert_eq!(r.outcome.signal, Some(libc::SIGKILL));
        // KILL comes only once the grace is over (a lower bound: nothing here is timed).
        assert!(
            r.outcome.duration_ms >= CANCEL_GRACE_MS,
            "{}",
            r.outcome.duration_ms
        );
    }

    #[test]
    fn hanging_up_before_any_output_cancels_too() {
        let dir = tempfile::tempdir().unwrap();
        let (host, agent) = UnixStream::pair().unwrap();
        drop(host);
        let mut sink = Vec::new();
        let outcome = run(&req("sleep 60"), dir.path(), agent, &mut sink).unwrap();
        assert!(outcome.signal.is_some(), "{outcome:?}");
        assert!(!outcome.timed_out);
    }

    /// A host that stopped reading: every frame fails.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sink_that_fails_cancels_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (_host, agent) = UnixStream::pair().unwrap();
        let outcome = run(&req("yes"), dir.path(), agent, &mut Gone).unwrap();
        assert_eq!(outcome.signal, Some(libc::SIGTERM));
        assert!(outcome.stdout_bytes > 0);
    }

    #[test]
    fn a_background_job_holding_the_pipes_does_not_hold_the_answer() {
        let r = exec("sleep 60 & echo $!");
        assert_eq!(r.outcome.exit_code, Some(0));
        let bg: i32 = String::from_utf8_lossy(&r.out).trim().parse().unwrap();
        let _ = nix::sys::signal::kill(Pid::from_raw(bg), Signal::SIGKILL);
    }
}
