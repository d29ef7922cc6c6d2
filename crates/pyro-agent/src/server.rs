//! Serves host requests: one thread per connection, one call per connection.

use std::io::{self, BufReader, BufWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyro_protocol::{
    read_frame, write_json, AgentInfo, FrameKind, Request, Response, PROTOCOL_VERSION,
};

use crate::archive::{self, DataReader};
use crate::exec;
use crate::files;
use crate::{services, shells};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// What the server needs to know about its sandbox.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Default working directory for exec (`/workspace`).
    pub workdir: PathBuf,
    /// Whether this agent is PID 1 (and so must power off on shutdown).
    pub pid1: bool,
}

/// Where the agent accepts host connections.
#[derive(Debug)]
pub enum Listener {
    /// A Unix socket (the container level: bind-mounted to the host).
    Unix(UnixListener),
    /// An `AF_VSOCK` socket (the VM levels: the VMM bridges it to a Unix socket on the host).
    Vsock(OwnedFd),
}

impl Listener {
    /// Listens on `AF_VSOCK` port `port` for any CID.
    pub fn vsock(port: u32) -> io::Result<Listener> {
        use nix::sys::socket::{
            bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
        };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
        Ok(Listener::Vsock(fd))
    }

    /// Waits for the next connection.
    ///
    /// A vsock connection is handed on as a `UnixStream`: std's stream type is only a wrapper
    /// around a connected stream socket's fd (read, write, dup, shutdown), which is all the
    /// server uses, so one code path serves both transports.
    fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
            Listener::Vsock(fd) => {
                let c = nix::sys::socket::accept4(
                    fd.as_raw_fd(),
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                )?;
                // SAFETY: accept4 returned a fresh fd that nothing else owns.
                Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(c) }))
            }
        }
    }
}

/// Tells the host the agent is listening, by connecting out to the host (vsock CID 2) on `port`
/// and closing again: the VMM bridges that to a Unix socket the host listens on. The host waits
/// for this before its first connection, because a connection made while the guest's vsock
/// driver is still starting can be lost by the vsock backend, and that stalls it. Best effort,
/// on its own thread: an old host without the listener just refuses.
pub fn announce_ready(port: u32) {
    std::thread::spawn(move || {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
        let Ok(fd) = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) else {
            return;
        };
        if connect(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_HOST, port)).is_ok() {
            let _ = nix::unistd::write(&fd, b"READY\n");
        }
    });
}

/// Accepts connections until a shutdown request; then stops everything and returns (or powers
/// off when PID 1).
pub fn serve(listener: impl Into<Listener>, config: ServerConfig) -> io::Result<()> {
    let listener: Listener = listener.into();
    let active = Arc::new(AtomicUsize::new(0));
    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel::<()>();
    let cfg = Arc::new(config);
    std::thread::spawn({
        let cfg = cfg.clone();
        move || {
            if shutdown_rx.recv().is_ok() {
                shutdown(&cfg);
            }
        }
    });
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer went away between connect and accept: not the listener's fault.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        while active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        active.fetch_add(1, Ordering::AcqRel);
        let active = active.clone();
        let cfg = cfg.clone();
        let shutdown_tx = shutdown_tx.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, &cfg, &shutdown_tx) {
                eprintln!("pyro-agent: connection failed: {e}");
            }
            active.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

impl ServerConfig {
    fn root(&self) -> files::Root {
        files::Root {
            path: self.workdir.clone(),
        }
    }
}

fn shutdown(cfg: &ServerConfig) {
    if cfg.pid1 {
        crate::init::power_off();
    }
    std::process::exit(0);
}

fn error(kind: &str, message: impl Into<String>) -> Response {
    Response::Error {
        kind: kind.into(),
        message: message.into(),
    }
}

fn handle(
    stream: UnixStream,
    cfg: &ServerConfig,
    shutdown_tx: &std::sync::mpsc::Sender<()>,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let to_io = |e: pyro_protocol::ProtocolError| io::Error::other(e.to_string());

    let first = read_request(&mut reader);
    match first {
        Ok(Request::Hello { protocol_version }) if protocol_version == PROTOCOL_VERSION => {
            let info = AgentInfo {
                protocol_version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                pid1: cfg.pid1,
            };
            write_json(&mut writer, &Response::Hello(info)).map_err(to_io)?;
        }
        Ok(Request::Hello { protocol_version }) => {
            let msg =
                format!("host speaks protocol {protocol_version}, agent speaks {PROTOCOL_VERSION}");
            return write_json(&mut writer, &error("protocol_version", msg)).map_err(to_io);
        }
        Ok(_) => {
            return write_json(
                &mut writer,
                &error("bad_request", "a connection must open with hello"),
            )
            .map_err(to_io)
        }
        Err(e) => return write_json(&mut writer, &error("bad_request", e)).map_err(to_io),
    }

    let response = match read_request(&mut reader) {
        Err(e) => error("bad_request", e),
        Ok(Request::Hello { .. }) => error("bad_request", "hello was already sent"),
        Ok(Request::Ping) => Response::Pong,
        // The exec owns the rest of the connection's reading side: stdin and the host's hang-up.
        Ok(Request::Exec(req)) => match exec::run(&req, &cfg.workdir, reader, &mut writer) {
            Ok(outcome) => Response::ExecDone(outcome),
            Err(exec::ExecError::BadRequest(m)) => error("bad_request", m),
            Err(e @ exec::ExecError::Spawn(_)) => error("spawn", e.to_string()),
        },
        Ok(Request::ReadFile { path, max_bytes }) => {
            match files::read_file(&cfg.root(), &path, max_bytes, &mut writer) {
                Ok((size, truncated)) => Response::ReadDone { size, truncated },
                Err(e) => error(e.kind, e.message),
            }
        }
        Ok(Request::WriteFile {
            path,
            mode,
            max_bytes,
        }) => {
            let mut data = DataReader::new(&mut reader);
            let r = files::write_file(&cfg.root(), &path, mode, max_bytes, &mut data);
            data.drain();
            match r {
                Ok(bytes) => Response::Written { bytes },
                Err(e) => error(e.kind, e.message),
            }
        }
        Ok(Request::Remove { path }) => match files::remove(&cfg.root(), &path) {
            Ok(()) => Response::Ok,
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::List {
            path,
            recursive,
            max_entries,
        }) => match files::list(&cfg.root(), &path, recursive, max_entries, &mut writer) {
            Ok((count, truncated)) => Response::ListDone { count, truncated },
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::Hash { paths }) => match files::hash(&cfg.root(), &paths) {
            Ok(sha256) => Response::Hashes { sha256 },
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::ArchiveOut { path }) => {
            match archive::archive_out(&cfg.root(), &path, &mut writer) {
                Ok((entries, bytes)) => Response::ArchiveDone { entries, bytes },
                Err(e) => error(e.kind, e.message),
            }
        }
        Ok(Request::ArchiveIn {
            dest,
            clear,
            max_bytes,
            max_entries,
        }) => {
            let mut data = DataReader::new(&mut reader);
            let r = archive::archive_in(
                &cfg.root(),
                &dest,
                clear,
                archive::InLimits {
                    max_bytes,
                    max_entries,
                },
                &mut data,
            );
            data.drain();
            match r {
                Ok((entries, bytes)) => Response::ArchiveDone { entries, bytes },
                Err(e) => error(e.kind, e.message),
            }
        }
        Ok(Request::ShellOpen(req)) => match shells::open(&cfg.root(), &req) {
            Ok(info) => Response::Shell(info),
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::ShellRead {
            shell_id,
            cursor,
            max_bytes,
        }) => match shells::read(&shell_id, cursor, max_bytes) {
            Ok((bytes, cursor, next_cursor, dropped, shell)) => {
                for chunk in bytes.chunks(256 * 1024) {
                    pyro_protocol::write_frame(&mut writer, FrameKind::Data, chunk)
                        .map_err(to_io)?;
                }
                Response::ShellOutput {
                    shell,
                    cursor,
                    next_cursor,
                    dropped,
                }
            }
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::ShellWrite { shell_id, input }) => shells::write(&shell_id, &input)
            .map_or_else(|e| error(e.kind, e.message), Response::Shell),
        Ok(Request::ShellSignal { shell_id, signal }) => shells::signal(&shell_id, &signal)
            .map_or_else(|e| error(e.kind, e.message), Response::Shell),
        Ok(Request::ShellClose { shell_id }) => {
            shells::close(&shell_id).map_or_else(|e| error(e.kind, e.message), Response::Shell)
        }
        Ok(Request::ShellList) => Response::Shells {
            shells: shells::list(),
        },
        Ok(Request::ServiceStart(req)) => services::start(&cfg.root(), &req)
            .map_or_else(|e| error(e.kind, e.message), Response::Service),
        Ok(Request::ServiceStatus { name }) => {
            services::status(&name).map_or_else(|e| error(e.kind, e.message), Response::Service)
        }
        Ok(Request::ServiceList) => Response::Services {
            services: services::list(),
        },
        Ok(Request::ServiceLogs { name, tail_lines }) => match services::logs(&name, tail_lines) {
            Ok((service, stdout, stderr, truncated)) => Response::ServiceLogs {
                service,
                stdout,
                stderr,
                truncated,
            },
            Err(e) => error(e.kind, e.message),
        },
        Ok(Request::ServiceStop { name, grace_ms }) => {
            services::stop(&name, std::time::Duration::from_millis(grace_ms))
                .map_or_else(|e| error(e.kind, e.message), Response::Service)
        }
        Ok(Request::SecretsInstall { secrets }) => {
            match services::install_secrets(std::path::Path::new("/run/pyro-secrets"), &secrets) {
                Ok(()) => Response::Ok,
                Err(e) => error(e.kind, e.message),
            }
        }
        Ok(Request::Shutdown) => {
            write_json(&mut writer, &Response::Ok).map_err(to_io)?;
            let _ = shutdown_tx.send(());
            return Ok(());
        }
    };
    write_json(&mut writer, &response).map_err(to_io)
}

fn read_request(r: &mut impl io::Read) -> Result<Request, String> {
    match read_frame(r) {
        Ok((FrameKind::Json, payload)) => {
            serde_json::from_slice(&payload).map_err(|e| format!("malformed request: {e}"))
        }
        Ok((kind, _)) => Err(format!("unexpected {kind:?} frame from host")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! `handle` over one end of a socketpair, the test playing the host on the other: the
    //! handshake, each kind of bad input, and the dispatch of requests that need no PID 1.
    //! Shutdown is only a message on the channel here; `serve`'s thread would power off.

    use std::io::{Read, Write};
    use std::sync::mpsc::{channel, Receiver};
    use std::thread::JoinHandle;

    use pyro_protocol::{encode_header, write_frame, ExecRequest, HEADER_LEN, MAX_FRAME_LEN};

    use super::*;

    struct Conn {
        host: UnixStream,
        agent: JoinHandle<io::Result<()>>,
        shutdown: Receiver<()>,
        dir: tempfile::TempDir,
    }

    fn connect() -> Conn {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig {
            workdir: dir.path().to_path_buf(),
            pid1: false,
        };
        let (host, agent) = UnixStream::pair().unwrap();
        let (tx, shutdown) = channel();
        let agent = std::thread::spawn(move || handle(agent, &cfg, &tx));
        Conn {
            host,
            agent,
            shutdown,
            dir,
        }
    }

    impl Conn {
        fn send(&mut self, req: &Request) {
            write_json(&mut self.host, req).unwrap();
        }

        fn data(&mut self, bytes: &[u8]) {
            write_frame(&mut self.host, FrameKind::Data, bytes).unwrap();
        }

        /// The frames before the answer, and the answer.
        fn answer(&mut self) -> (Vec<(FrameKind, Vec<u8>)>, Response) {
            let mut frames = Vec::new();
            loop {
                let (kind, payload) = read_frame(&mut self.host).unwrap();
                if kind == FrameKind::Json {
                    return (frames, serde_json::from_slice(&payload).unwrap());
                }
                frames.push((kind, payload));
            }
        }

        fn call(&mut self, req: &Request) -> (Vec<(FrameKind, Vec<u8>)>, Response) {
            self.send(req);
            self.answer()
        }

        fn hello(&mut self) {
            let (frames, r) = self.call(&Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            });
            assert!(frames.is_empty());
            assert!(matches!(r, Response::Hello(_)), "{r:?}");
        }

        /// The host hangs up as a host does after the answer; the agent's side ends, and sends
        /// nothing more. (An exec's stdin reader holds the connection until the host hangs up.)
        fn finished(mut self) -> io::Result<()> {
            let _ = self.host.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            self.host.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
            self.agent.join().unwrap()
        }
    }

    #[track_caller]
    fn assert_error(r: &Response, kind: &str, message: &str) {
        match r {
            Response::Error {
                kind: k,
                message: m,
            } => {
                assert_eq!(k, kind, "{m}");
                assert!(m.contains(message), "{m:?} lacks {message:?}");
            }
            other => panic!("expected a {kind} error, got {other:?}"),
        }
    }

    #[test]
    fn hello_answers_with_the_agents_versions_then_one_call() {
        let mut c = connect();
        let (_, r) = c.call(&Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        });
        let Response::Hello(info) = r else {
            panic!("{r:?}")
        };
        assert_eq!(info.protocol_version, PROTOCOL_VERSION);
        assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(!info.pid1);
        let (frames, r) = c.call(&Request::Ping);
        assert!(frames.is_empty());
        assert!(matches!(r, Response::Pong), "{r:?}");
        // One call per connection: the agent closes it after the answer.
        c.finished().unwrap();
    }

    #[test]
    fn a_bad_opening_is_answered_with_an_error_and_the_end() {
        #[track_caller]
        fn check(opening: &[u8], kind: &str, message: &str) {
            let mut c = connect();
            c.host.write_all(opening).unwrap();
            let (frames, r) = c.answer();
            assert!(frames.is_empty());
            assert_error(&r, kind, message);
            c.finished().unwrap();
        }
        let json = |r: &Request| {
            let mut v = Vec::new();
            write_json(&mut v, r).unwrap();
            v
        };
        let frame = |kind: FrameKind, payload: &[u8]| {
            let mut v = Vec::new();
            write_frame(&mut v, kind, payload).unwrap();
            v
        };
        check(
            &json(&Request::Hello {
                protocol_version: PROTOCOL_VERSION + 1,
            }),
            "protocol_version",
            &format!(
                "host speaks protocol {}, agent speaks {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            ),
        );
        check(
            &json(&Request::Hello {
                protocol_version: 0,
            }),
            "protocol_version",
            "host speaks protocol 0",
        );
        check(
            &json(&Request::Ping),
            "bad_request",
            "a connection must open with hello",
        );
        check(
            &frame(FrameKind::Stdout, b"x"),
            "bad_request",
            "unexpected Stdout frame from host",
        );
        check(
            &frame(FrameKind::Data, b""),
            "bad_request",
            "unexpected Data frame from host",
        );
        check(
            &frame(FrameKind::Json, b"{not json"),
            "bad_request",
            "malformed request",
        );
        check(
            &frame(FrameKind::Json, br#"{"type":"launch"}"#),
            "bad_request",
            "malformed request: unknown variant `launch`",
        );
        check(
            &frame(FrameKind::Json, br#"{"type":"hello"}"#),
            "bad_request",
            "missing field `protocol_version`",
        );
        let mut unknown_kind = [0u8; HEADER_LEN];
        unknown_kind[0] = 9;
        check(&unknown_kind, "bad_request", "unknown frame kind 9");
        check(
            &encode_header(FrameKind::Json, MAX_FRAME_LEN + 1),
            "bad_request",
            "exceeds the limit",
        );
    }

    #[test]
    fn a_host_that_closes_before_hello_gets_an_error_not_a_hang() {
        let mut c = connect();
        c.host.shutdown(std::net::Shutdown::Write).unwrap();
        let (_, r) = c.answer();
        assert_error(&r, "bad_request", "connection closed by peer");
        c.finished().unwrap();
    }

    #[test]
    fn a_bad_second_request_is_answered_with_an_error() {
        #[track_caller]
        fn check(second: &[u8], message: &str) {
            let mut c = connect();
            c.hello();
            c.host.write_all(second).unwrap();
            let (_, r) = c.answer();
            assert_error(&r, "bad_request", message);
            c.finished().unwrap();
        }
        let mut hello = Vec::new();
        write_json(
            &mut hello,
            &Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        check(&hello, "hello was already sent");
        let mut data = Vec::new();
        write_frame(&mut data, FrameKind::Data, b"stray").unwrap();
        check(&data, "unexpected Data frame from host");
        let mut junk = Vec::new();
        write_frame(&mut junk, FrameKind::Json, b"[]").unwrap();
        check(&junk, "malformed request");
    }

    fn exec_req(line: &str) -> ExecRequest {
        ExecRequest {
            argv: vec![line.into()],
            env: Default::default(),
            cwd: None,
            timeout_ms: None,
            max_stdout: 1 << 20,
            max_stderr: 1 << 20,
            user: None,
            stdin: false,
        }
    }

    #[test]
    fn exec_streams_output_then_answers_with_the_outcome() {
        let mut c = connect();
        c.hello();
        let (frames, r) = c.call(&Request::Exec(exec_req("pwd -P; echo oops >&2; exit 2")));
        let Response::ExecDone(o) = r else {
            panic!("{r:?}")
        };
        assert_eq!(o.exit_code, Some(2));
        let text = |k: FrameKind| -> String {
            frames
                .iter()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        // The default working directory is the workspace.
        let workdir = c.dir.path().canonicalize().unwrap();
        assert_eq!(text(FrameKind::Stdout), format!("{}\n", workdir.display()));
        assert_eq!(text(FrameKind::Stderr), "oops\n");
        c.finished().unwrap();
    }

    #[test]
    fn exec_problems_are_error_answers() {
        let mut c = connect();
        c.hello();
        let mut r = exec_req("true");
        r.argv.clear();
        let (_, r) = c.call(&Request::Exec(r));
        assert_error(&r, "bad_request", "command is empty");
        c.finished().unwrap();

        let mut c = connect();
        c.hello();
        let mut r = exec_req("true");
        r.cwd = Some("/no/such/dir".into());
        let (_, r) = c.call(&Request::Exec(r));
        assert_error(&r, "bad_request", "/no/such/dir does not exist");
        c.finished().unwrap();
    }

    /// One call on a fresh connection to the same workspace.
    fn call_in(dir: &std::path::Path, req: &Request, data: Option<&[u8]>) -> (Vec<u8>, Response) {
        let cfg = ServerConfig {
            workdir: dir.to_path_buf(),
            pid1: false,
        };
        let (host, agent) = UnixStream::pair().unwrap();
        let (tx, _rx) = channel();
        let agent = std::thread::spawn(move || handle(agent, &cfg, &tx));
        let mut c = Conn {
            host,
            agent,
            shutdown: channel().1,
            dir: tempfile::tempdir().unwrap(),
        };
        c.hello();
        c.send(req);
        if let Some(d) = data {
            if !d.is_empty() {
                c.data(d);
            }
            c.data(&[]);
        }
        let (frames, r) = c.answer();
        c.finished().unwrap();
        let bytes = frames
            .into_iter()
            .inspect(|(k, _)| assert_eq!(*k, FrameKind::Data))
            .flat_map(|(_, p)| p)
            .collect();
        (bytes, r)
    }

    #[test]
    fn file_requests_are_dispatched_to_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (_, r) = call_in(
            d,
            &Request::WriteFile {
                path: "sub/a.txt".into(),
                mode: Some(0o640),
                max_bytes: 1024,
            },
            Some(b"hello"),
        );
        assert!(matches!(r, Response::Written { bytes: 5 }), "{r:?}");
        assert_eq!(std::fs::read(d.join("sub/a.txt")).unwrap(), b"hello");

        let (bytes, r) = call_in(
            d,
            &Request::ReadFile {
                path: "sub/a.txt".into(),
                max_bytes: 3,
            },
            None,
        );
        assert_eq!(bytes, b"hel");
        assert!(
            matches!(
                r,
                Response::ReadDone {
                    size: 5,
                    truncated: true
                }
            ),
            "{r:?}"
        );

        let (_, r) = call_in(
            d,
            &Request::Hash {
                paths: vec!["sub/a.txt".into(), "missing".into()],
            },
            None,
        );
        let Response::Hashes { sha256 } = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            sha256,
            vec![
                Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into()),
                None
            ]
        );

        let (listing, r) = call_in(
            d,
            &Request::List {
                path: "sub".into(),
                recursive: false,
                max_entries: 100,
            },
            None,
        );
        assert!(
            matches!(
                r,
                Response::ListDone {
                    count: 1,
                    truncated: false
                }
            ),
            "{r:?}"
        );
        assert!(String::from_utf8_lossy(&listing).contains("a.txt"));

        let (_, r) = call_in(
            d,
            &Request::Remove {
                path: "sub/a.txt".into(),
            },
            None,
        );
        assert!(matches!(r, Response::Ok), "{r:?}");
        assert!(!d.join("sub/a.txt").exists());
    }

    #[test]
    fn file_errors_keep_their_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (_, r) = call_in(
            d,
            &Request::ReadFile {
                path: "../outside".into(),
                max_bytes: 10,
            },
            None,
        );
        assert_error(&r, "bad_path", "outside the workspace");
        let (_, r) = call_in(
            d,
            &Request::Remove {
                path: "missing".into(),
            },
            None,
        );
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
        // A refused write still reads the rest of its data, so the answer arrives.
        let (_, r) = call_in(
            d,
            &Request::WriteFile {
                path: "big".into(),
                mode: None,
                max_bytes: 4,
            },
            Some(&[b'x'; 100_000]),
        );
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
        assert!(!d.join("big").exists());
    }

    #[test]
    fn shell_and_service_requests_for_unknown_ids_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for req in [
            Request::ServiceStatus {
                name: "no-such-service".into(),
            },
            Request::ServiceStop {
                name: "no-such-service".into(),
                grace_ms: 10,
            },
            Request::ServiceLogs {
                name: "no-such-service".into(),
                tail_lines: None,
            },
        ] {
            let (_, r) = call_in(d, &req, None);
            assert_error(&r, "not_found", "no service \"no-such-service\"");
        }
        for req in [
            Request::ShellRead {
                shell_id: "no-such-shell".into(),
                cursor: 0,
                max_bytes: 10,
            },
            Request::ShellClose {
                shell_id: "no-such-shell".into(),
            },
        ] {
            let (_, r) = call_in(d, &req, None);
            assert!(matches!(r, Response::Error { .. }), "{r:?}");
        }
        let (_, r) = call_in(d, &Request::ServiceList, None);
        assert!(matches!(r, Response::Services { .. }), "{r:?}");
        let (_, r) = call_in(d, &Request::ShellList, None);
        assert!(matches!(r, Response::Shells { .. }), "{r:?}");
    }

    #[test]
    fn shutdown_answers_ok_then_asks_the_server_to_stop() {
        let mut c = connect();
        c.hello();
        let (_, r) = c.call(&Request::Shutdown);
        assert!(matches!(r, Response::Ok), "{r:?}");
        let rx = std::mem::replace(&mut c.shutdown, channel().1);
        c.finished().unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("no shutdown was asked for");
    }

    #[test]
    fn other_calls_never_ask_for_shutdown() {
        let mut c = connect();
        c.hello();
        let _ = c.call(&Request::Ping);
        let rx = std::mem::replace(&mut c.shutdown, channel().1);
        c.finished().unwrap();
        // The sender is gone with the connection's thread, and nothing was sent.
        assert!(rx.recv().is_err());
    }
}
