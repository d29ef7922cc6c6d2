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
