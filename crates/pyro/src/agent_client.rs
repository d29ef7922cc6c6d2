//! The host side of the agent protocol: one connection per call, a version handshake on each,
//! and output frames handed to a sink as they arrive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_protocol::{
    decode_header, encode_header, AgentInfo, ExecOutcome, ExecRequest, FrameKind, Request,
    Response, HEADER_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A client for one sandbox's agent socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
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

async fn read_frame(s: &mut UnixStream) -> Result<(FrameKind, Vec<u8>)> {
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

fn refused(kind: String, message: String) -> Error {
    Error::AgentRefused { kind, message }
}

impl AgentClient {
    /// A client for the agent listening at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> AgentClient {
        AgentClient {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects and does the version handshake.
    async fn open(&self) -> Result<(UnixStream, AgentInfo)> {
        let mut s = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| Error::Agent(format!("connect {}: {e}", self.socket.display())))?;
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
        loop {
            match self.open().await {
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

    /// Runs a command. Output frames go to `sink` as they arrive. The request is sent once and
    /// never retried: a command may not be idempotent.
    pub async fn exec(&self, req: &ExecRequest, sink: &mut dyn OutputSink) -> Result<ExecOutcome> {
        let (mut s, _) = self.open().await?;
        write_msg(&mut s, &Request::Exec(req.clone())).await?;
        loop {
            match read_frame(&mut s).await? {
                (FrameKind::Stdout, b) => sink.output(OutputStream::Stdout, &b),
                (FrameKind::Stderr, b) => sink.output(OutputStream::Stderr, &b),
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
