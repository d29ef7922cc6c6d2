//! The host side of the agent protocol: one connection per call, a version handshake on each,
//! and output frames handed to a sink as they arrive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_protocol::{
    decode_header, encode_header, AgentInfo, Entry, ExecOutcome, ExecRequest, FrameKind, Request,
    Response, HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives command output as it arrives.
pub trait OutputSink: Send {
    /// One chunk of output.
    fn output(&mut self, stream: OutputStream, bytes: &[u8]);
}

/// Where a sandbox's agent is reached from the host. Both are Unix sockets; the VMs add the
/// hybrid-vsock handshake in front of the agent protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket the agent listens on itself (the container level).
    Unix(PathBuf),
    /// A VMM's hybrid-vsock Unix socket (Firecracker's vsock device, or the `vhost-device-vsock`
    /// backend for QEMU): each connection opens with `CONNECT <port>\n` and an `OK …\n` reply.
    HybridVsock {
        /// The host-side Unix socket.
        uds: PathBuf,
        /// The guest vsock port the agent listens on.
        port: u32,
    },
}

impl Endpoint {
    /// The host Unix socket either way.
    pub fn path(&self) -> &Path {
        match self {
            Endpoint::Unix(p) | Endpoint::HybridVsock { uds: p, .. } => p,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::HybridVsock { uds, port } => {
                write!(f, "{} (vsock port {port})", uds.display())
            }
        }
    }
}

/// How long the first readiness attempt may take before a fresh connection is tried.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// The most one readiness attempt may take.
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// Longest `OK …\n` reply accepted to a `CONNECT`: Firecracker answers `OK <u32>\n`.
const MAX_CONNECT_REPLY: usize = 32;

/// Opens a hybrid-vsock connection: sends `CONNECT <port>\n` and accepts any `OK <n>\n` reply.
/// The number differs between VMMs (vhost-device-vsock echoes the guest port, Firecracker names
/// a host-side port of its own), so only the prefix is checked. The reply is read byte by byte so
/// that nothing after the newline, which belongs to the agent, is consumed.
pub async fn hybrid_vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut s = UnixStream::connect(uds)
        .await
        .map_err(|e| Error::Agent(format!("connect {}: {e}", uds.display())))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| Error::Agent(format!("vsock CONNECT: {e}")))?;
    let mut line = Vec::with_capacity(MAX_CONNECT_REPLY);
    loop {
        let mut b = [0u8; 1];
        let n = s
            .read(&mut b)
            .await
            .map_err(|e| Error::Agent(format!("vsock CONNECT reply: {e}")))?;
        if n == 0 {
            // The VMM closes the stream when nothing listens on the port (yet).
            return Err(Error::Agent(format!(
                "vsock port {port}: no listener in the guest (yet)"
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_CONNECT_REPLY {
            return Err(Error::Agent("vsock CONNECT reply too long".into()));
        }
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(Error::Agent(format!(
            "vsock CONNECT refused: {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

/// A client for one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: Endpoint,
}

async fn write_msg(s: &mut UnixStream, msg: &Request) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| Error::Agent(format!("encode request: {e}")))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::Agent("request too large".into()))?;
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&encode_header(FrameKind::Json, len));
    buf.extend_from_slice(&body);
    s.write_all(&buf)
        .await
        .map_err(|e| Error::Agent(format!("send request: {e}")))
}

async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> Result<(FrameKind, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)
        .await
        .map_err(|e| Error::Agent(format!("connection lost: {e}")))?;
    let (kind, len) = decode_header(h).map_err(|e| Error::Agent(e.to_string()))?;
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)
        .await
        .map_err(|e| Error::Agent(format!("connection lost: {e}")))?;
    Ok((kind, body))
}

async fn read_response(s: &mut UnixStream) -> Result<Response> {
    match read_frame(s).await? {
        (FrameKind::Json, body) => serde_json::from_slice(&body)
            .map_err(|e| Error::Agent(format!("malformed response: {e}"))),
        (k, _) => Err(Error::Agent(format!("unexpected {k:?} frame"))),
    }
}

async fn write_data(s: &mut (impl AsyncWrite + Unpin), chunk: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(HEADER_LEN + chunk.len());
    buf.extend_from_slice(&encode_header(FrameKind::Data, chunk.len() as u32));
    buf.extend_from_slice(chunk);
    s.write_all(&buf)
        .await
        .map_err(|e| Error::Agent(format!("send data: {e}")))
}

fn unexpected(what: &str, r: Response) -> Error {
    match r {
        Response::Error { kind, message } => refused(kind, message),
        other => Error::Agent(format!("unexpected reply to {what}: {other:?}")),
    }
}

fn refused(kind: String, message: String) -> Error {
    Error::AgentRefused { kind, message }
}

/// Reads an exec's output frames into `sink` until its answer.
async fn read_exec(
    rd: &mut (impl AsyncRead + Unpin),
    sink: &mut dyn OutputSink,
) -> Result<ExecOutcome> {
    loop {
        match read_frame(rd).await? {
            (FrameKind::Stdout, b) => sink.output(OutputStream::Stdout, &b),
            (FrameKind::Stderr, b) => sink.output(OutputStream::Stderr, &b),
            (FrameKind::Data, _) => {
                return Err(Error::Agent("unexpected data frame during exec".into()))
            }
            (FrameKind::Json, b) => {
                let resp: Response = serde_json::from_slice(&b)
                    .map_err(|e| Error::Agent(format!("malformed response: {e}")))?;
                return match resp {
                    Response::ExecDone(o) => Ok(o),
                    Response::Error { kind, message } => Err(refused(kind, message)),
                    other => Err(Error::Agent(format!("unexpected reply to exec: {other:?}"))),
                };
            }
        }
    }
}

/// Streams a command's stdin as `Data` frames, ending with an empty one. A source that fails
/// to read ends the stream there (the command sees end of file) rather than the exec: the
/// command is already running. A failed send means the connection is gone, which the output
/// side reports.
async fn send_stdin(src: &mut (dyn AsyncRead + Unpin + Send), wr: &mut (impl AsyncWrite + Unpin)) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading the command's stdin failed, ending it there: {e}");
                0
            }
        };
        if write_data(wr, &buf[..n]).await.is_err() || n == 0 {
            return;
        }
    }
}

impl AgentClient {
    /// A client for the agent listening at a Unix socket.
    pub fn new(socket: impl Into<PathBuf>) -> AgentClient {
        AgentClient::at(Endpoint::Unix(socket.into()))
    }

    /// A client for the agent at `endpoint`.
    pub fn at(endpoint: Endpoint) -> AgentClient {
        AgentClient { endpoint }
    }

    /// Where the agent is reached.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The host socket path.
    pub fn socket(&self) -> &Path {
        self.endpoint.path()
    }

    /// Connects and does the version handshake.
    async fn open(&self) -> Result<(UnixStream, AgentInfo)> {
        let mut s = match &self.endpoint {
            Endpoint::Unix(p) => UnixStream::connect(p)
                .await
                .map_err(|e| Error::Agent(format!("connect {}: {e}", p.display())))?,
            Endpoint::HybridVsock { uds, port } => hybrid_vsock_connect(uds, *port).await?,
        };
        write_msg(
            &mut s,
            &Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        )
        .await?;
        match read_response(&mut s).await? {
            Response::Hello(info) => Ok((s, info)),
            Response::Error { kind, message } => Err(refused(kind, message)),
            other => Err(Error::Agent(format!(
                "unexpected reply to hello: {other:?}"
            ))),
        }
    }

    /// Waits until the agent answers a handshake and a ping. Connection attempts are retried
    /// (nothing has been sent yet, so retrying is safe) until `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<AgentInfo> {
        let until = Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        let mut attempt_timeout = FIRST_ATTEMPT_TIMEOUT;
        loop {
            // Each attempt is bounded, and short: a vsock backend may accept a connection whose
            // request to the guest is lost while the guest's vsock driver is still starting, and
            // then never answers it. Nothing but the handshake has been sent, so a fresh
            // connection is safe; the bound grows in case the guest is merely slow.
            let left = until.saturating_duration_since(Instant::now());
            let bound = attempt_timeout.min(left).max(Duration::from_millis(1));
            let attempt = match tokio::time::timeout(bound, self.open()).await {
                Ok(r) => r,
                Err(_) => {
                    attempt_timeout = (attempt_timeout * 2).min(MAX_ATTEMPT_TIMEOUT);
                    Err(Error::Agent("no answer to the handshake".into()))
                }
            };
            match attempt {
                Ok((mut s, info)) => {
                    write_msg(&mut s, &Request::Ping).await?;
                    return match read_response(&mut s).await? {
                        Response::Pong => Ok(info),
                        other => Err(Error::Agent(format!("unexpected reply to ping: {other:?}"))),
                    };
                }
                Err(e @ Error::AgentRefused { .. }) => return Err(e),
                Err(e) if Instant::now() >= until => {
                    return Err(Error::Agent(format!(
                        "agent not ready after {} ms: {e}",
                        timeout.as_millis()
                    )))
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// Runs a command. Output frames go to `sink` as they arrive; `stdin`, when given, is sent
    /// to the command as it is read, at the same time. The request is sent once and never
    /// retried: a command may not be idempotent.
    ///
    /// Dropping the returned future closes the connection, and the agent then stops the
    /// command (TERM to its process group, KILL after a grace period).
    pub async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<ExecOutcome> {
        let (mut s, _) = self.open().await?;
        let mut req = req.clone();
        req.stdin = stdin.is_some();
        write_msg(&mut s, &Request::Exec(req)).await?;
        let (mut rd, mut wr) = s.split();
        let pump = async {
            if let Some(src) = stdin {
                send_stdin(src, &mut wr).await;
            }
            // Keep the connection open: the agent takes its end as a cancel.
            std::future::pending::<std::convert::Infallible>().await
        };
        // Whatever happens to stdin, the answer ends the call; output is read all along, so
        // neither direction waits on the other.
        tokio::select! {
            r = read_exec(&mut rd, sink) => r,
            never = pump => match never {},
        }
    }

    /// Sends a request and collects `Data` frames into `out` (up to `cap` bytes kept) until the
    /// final response.
    async fn request_data(
        &self,
        req: &Request,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        cap: u64,
    ) -> Result<Response> {
        let (mut s, _) = self.open().await?;
        write_msg(&mut s, req).await?;
        let mut kept = 0u64;
        loop {
            match read_frame(&mut s).await? {
                (FrameKind::Data, b) => {
                    let room = cap.saturating_sub(kept).min(b.len() as u64) as usize;
                    if room > 0 {
                        out.write_all(&b[..room])
                            .await
                            .map_err(|e| Error::io("write received data", e))?;
                        kept += room as u64;
                    }
                }
                (FrameKind::Json, b) => {
                    return serde_json::from_slice(&b)
                        .map_err(|e| Error::Agent(format!("malformed response: {e}")));
                }
                (k, _) => return Err(Error::Agent(format!("unexpected {k:?} frame"))),
            }
        }
    }

    /// Sends a request followed by a byte stream as `Data` frames, then reads the response.
    async fn request_upload(
        &self,
        req: &Request,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Response> {
        let (mut s, _) = self.open().await?;
        write_msg(&mut s, req).await?;
        let mut buf = vec![0u8; (256 * 1024).min(MAX_FRAME_LEN as usize)];
        let sent: Result<()> = async {
            loop {
                let n = src
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io("read upload source", e))?;
                write_data(&mut s, &buf[..n]).await?;
                if n == 0 {
                    return Ok(());
                }
            }
        }
        .await;
        // Even if sending failed (the agent may have refused and closed), its answer says why.
        match read_frame(&mut s).await {
            Ok((FrameKind::Json, b)) => serde_json::from_slice(&b)
                .map_err(|e| Error::Agent(format!("malformed response: {e}"))),
            Ok((k, _)) => Err(Error::Agent(format!("unexpected {k:?} frame"))),
            Err(e) => Err(sent.err().unwrap_or(e)),
        }
    }

    /// Reads up to `max` bytes of a file: (content, full size, truncated).
    pub async fn read_file(&self, path: &str, max: u64) -> Result<(Vec<u8>, u64, bool)> {
        let mut buf = Vec::new();
        match self
            .request_data(
                &Request::ReadFile {
                    path: path.into(),
                    max_bytes: max,
                },
                &mut buf,
                max,
            )
            .await?
        {
            Response::ReadDone { size, truncated } => Ok((buf, size, truncated)),
            other => Err(unexpected("read", other)),
        }
    }

    /// Writes a file atomically from `src` (at most `max` bytes).
    pub async fn write_file(
        &self,
        path: &str,
        mode: Option<u32>,
        max: u64,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64> {
        match self
            .request_upload(
                &Request::WriteFile {
                    path: path.into(),
                    mode,
                    max_bytes: max,
                },
                src,
            )
            .await?
        {
            Response::Written { bytes } => Ok(bytes),
            other => Err(unexpected("write", other)),
        }
    }

    /// Removes a path (recursively for directories).
    pub async fn remove(&self, path: &str) -> Result<()> {
        let mut sink = tokio::io::sink();
        match self
            .request_data(&Request::Remove { path: path.into() }, &mut sink, 0)
            .await?
        {
            Response::Ok => Ok(()),
            other => Err(unexpected("remove", other)),
        }
    }

    /// Lists a path: (entries, truncated).
    pub async fn list(&self, path: &str, recursive: bool, max: u64) -> Result<(Vec<Entry>, bool)> {
        let mut buf = Vec::new();
        let resp = self
            .request_data(
                &Request::List {
                    path: path.into(),
                    recursive,
                    max_entries: max,
                },
                &mut buf,
                512 << 20,
            )
            .await?;
        match resp {
            Response::ListDone { truncated, .. } => {
                let entries = buf
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(serde_json::from_slice)
                    .collect::<std::result::Result<Vec<Entry>, _>>()
                    .map_err(|e| Error::Agent(format!("malformed listing: {e}")))?;
                Ok((entries, truncated))
            }
            other => Err(unexpected("list", other)),
        }
    }

    /// sha256 of each path (None where not a regular file), batched to keep frames small.
    pub async fn hash(&self, paths: &[String]) -> Result<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(2000) {
            let mut sink = tokio::io::sink();
            match self
                .request_data(
                    &Request::Hash {
                        paths: chunk.to_vec(),
                    },
                    &mut sink,
                    0,
                )
                .await?
            {
                Response::Hashes { sha256 } if sha256.len() == chunk.len() => out.extend(sha256),
                other => return Err(unexpected("hash", other)),
            }
        }
        Ok(out)
    }

    /// Streams a tar of `path` into `out`: (entries, content bytes).
    pub async fn archive_out(
        &self,
        path: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(u64, u64)> {
        match self
            .request_data(&Request::ArchiveOut { path: path.into() }, out, u64::MAX)
            .await?
        {
            Response::ArchiveDone { entries, bytes } => Ok((entries, bytes)),
            other => Err(unexpected("archive", other)),
        }
    }

    /// Streams a tar from `src` to be unpacked under `dest`: (entries, content bytes).
    pub async fn archive_in(
        &self,
        dest: &str,
        clear: bool,
        max_bytes: u64,
        max_entries: u64,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(u64, u64)> {
        match self
            .request_upload(
                &Request::ArchiveIn {
                    dest: dest.into(),
                    clear,
                    max_bytes,
                    max_entries,
                },
                src,
            )
            .await?
        {
            Response::ArchiveDone { entries, bytes } => Ok((entries, bytes)),
            other => Err(unexpected("unpack", other)),
        }
    }

    /// Sends a request with no data stream and returns the agent's answer; agent errors become
    /// [`Error::AgentRefused`].
    pub async fn call(&self, req: &Request) -> Result<Response> {
        let mut sink = tokio::io::sink();
        match self.request_data(req, &mut sink, 0).await? {
            Response::Error { kind, message } => Err(refused(kind, message)),
            other => Ok(other),
        }
    }

    /// Reads shell output from `cursor`: (bytes, the answer).
    pub async fn shell_read(
        &self,
        shell_id: &str,
        cursor: u64,
        max: u64,
    ) -> Result<(Vec<u8>, Response)> {
        let mut buf = Vec::new();
        let req = Request::ShellRead {
            shell_id: shell_id.into(),
            cursor,
            max_bytes: max,
        };
        match self.request_data(&req, &mut buf, max).await? {
            r @ Response::ShellOutput { .. } => Ok((buf, r)),
            other => Err(unexpected("shell read", other)),
        }
    }

    /// Asks the agent to stop every process and power off.
    pub async fn shutdown(&self) -> Result<()> {
        let (mut s, _) = self.open().await?;
        write_msg(&mut s, &Request::Shutdown).await?;
        match read_response(&mut s).await? {
            Response::Ok => Ok(()),
            Response::Error { kind, message } => Err(refused(kind, message)),
            other => Err(Error::Agent(format!(
                "unexpected reply to shutdown: {other:?}"
            ))),
        }
    }
}
