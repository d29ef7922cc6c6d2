//! The wire protocol between the pyro host and the pyro guest agent.
//!
//! One connection carries one call. The client opens with [`Request::Hello`] carrying
//! [`PROTOCOL_VERSION`]; the agent answers [`Response::Hello`] (or [`Response::Error`] with kind
//! `protocol_version`), then the client sends exactly one request and reads frames until the
//! final response. See `VERSIONING.md` beside this crate for the compatibility rules.
//!
//! Framing: every frame is a one-byte [`FrameKind`], a big-endian `u32` payload length, and the
//! payload. Control messages are JSON ([`FrameKind::Json`]); command output travels as raw bytes
//! ([`FrameKind::Stdout`], [`FrameKind::Stderr`]) so binary output needs no re-encoding. No
//! payload may exceed [`MAX_FRAME_LEN`]; both sides refuse larger frames before allocating.
//!
//! During an exec the host keeps its side of the connection open: closing it (or the connection
//! breaking) while the command runs cancels the command.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this build. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest payload a frame may carry (1 MiB): big enough for any control message and for
/// output chunks, small enough that a hostile peer cannot make the other side allocate much.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// The default cap on each of stdout and stderr kept for one exec (1 MiB).
pub const DEFAULT_OUTPUT_CAP: u64 = 1 << 20;

/// Length of a frame header: kind byte plus `u32` length.
pub const HEADER_LEN: usize = 5;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A JSON-encoded [`Request`] or [`Response`].
    Json,
    /// Raw bytes the command wrote to stdout.
    Stdout,
    /// Raw bytes the command wrote to stderr.
    Stderr,
    /// A chunk of a byte stream: file content, a tar archive, JSON lines of directory entries,
    /// or a command's stdin. A stream sent by the host ends with an empty `Data` frame.
    Data,
}

impl FrameKind {
    /// The byte that tags this kind on the wire.
    pub fn tag(self) -> u8 {
        match self {
            FrameKind::Json => 0,
            FrameKind::Stdout => 1,
            FrameKind::Stderr => 2,
            FrameKind::Data => 3,
        }
    }

    /// The kind for a tag byte, if it is one.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(FrameKind::Json),
            1 => Some(FrameKind::Stdout),
            2 => Some(FrameKind::Stderr),
            3 => Some(FrameKind::Data),
            _ => None,
        }
    }
}

/// Errors in framing or decoding.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o error on the agent connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame declared a payload larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge(u32),
    /// A frame had an unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A JSON payload did not decode.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the connection before a complete frame.
    #[error("connection closed by peer")]
    Closed,
}

/// Builds the header for a frame.
pub fn encode_header(kind: FrameKind, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [kind.tag(), l[0], l[1], l[2], l[3]]
}

/// Parses and checks a frame header.
pub fn decode_header(h: [u8; HEADER_LEN]) -> Result<(FrameKind, u32), ProtocolError> {
    let kind = FrameKind::from_tag(h[0]).ok_or(ProtocolError::UnknownKind(h[0]))?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok((kind, len))
}

/// Writes one frame to a blocking stream. Payloads over [`MAX_FRAME_LEN`] are split by the
/// caller; this refuses them.
pub fn write_frame<W: Write>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let len = u32::try_from(payload.len()).map_err(|_| ProtocolError::FrameTooLarge(u32::MAX))?;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    w.write_all(&encode_header(kind, len))?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Writes a JSON message as one frame.
pub fn write_json<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let bytes = serde_json::to_vec(msg)?;
    write_frame(w, FrameKind::Json, &bytes)
}

/// Reads one frame from a blocking stream.
pub fn read_frame<R: Read>(r: &mut R) -> Result<(FrameKind, Vec<u8>), ProtocolError> {
    let mut h = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut h)?;
    let (kind, len) = decode_header(h)?;
    let mut buf = vec![0u8; len as usize];
    read_exact_or_closed(r, &mut buf)?;
    Ok((kind, buf))
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            ProtocolError::Io(e)
        }
    })
}

/// A message from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Opens every connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// Run a command and stream its output. With [`ExecRequest::stdin`], the command's stdin
    /// follows as `Data` frames ending with an empty one. Closing the connection before
    /// [`Response::ExecDone`] cancels the command: TERM to its process group, KILL after
    /// [`CANCEL_GRACE_MS`].
    Exec(ExecRequest),
    /// Answer with [`Response::Pong`]; used to prove readiness.
    Ping,
    /// Stop every process and power off (or, outside PID 1, exit).
    Shutdown,
    /// Send a file's content as `Data` frames (at most `max_bytes`), then [`Response::ReadDone`].
    ReadFile {
        /// Path, absolute or relative to the workspace; must stay inside the workspace.
        path: String,
        /// Most bytes to send.
        max_bytes: u64,
    },
    /// Receive a file's content as `Data` frames ending with an empty one, write it atomically
    /// (temp file + rename), then answer [`Response::Written`].
    WriteFile {
        /// Path inside the workspace.
        path: String,
        /// Permission bits for a new file (default 0644; an existing file keeps its own).
        mode: Option<u32>,
        /// Most bytes accepted.
        max_bytes: u64,
    },
    /// Remove a file, link or (recursively) directory inside the workspace.
    Remove {
        /// Path inside the workspace.
        path: String,
    },
    /// Walk a directory and send one JSON [`Entry`] per line in `Data` frames, then
    /// [`Response::ListDone`].
    List {
        /// Directory (or file) inside the workspace.
        path: String,
        /// Descend into subdirectories.
        recursive: bool,
        /// Most entries to send.
        max_entries: u64,
    },
    /// Hash files; answers [`Response::Hashes`] in the same order (`None` for non-files).
    Hash {
        /// Paths inside the workspace.
        paths: Vec<String>,
    },
    /// Send a tar archive of a path as `Data` frames, then [`Response::ArchiveDone`].
    ArchiveOut {
        /// Path inside the workspace.
        path: String,
    },
    /// Receive a tar archive as `Data` frames ending with an empty one and unpack it under
    /// `dest`; every entry is checked and nothing is moved into place unless all are good.
    ArchiveIn {
        /// Destination directory inside the workspace.
        dest: String,
        /// Empty `dest` first (restoring a snapshot).
        clear: bool,
        /// Most bytes of file content accepted.
        max_bytes: u64,
        /// Most entries accepted.
        max_entries: u64,
    },
    /// Open a PTY shell.
    ShellOpen(ShellOpen),
    /// Send output from `cursor` (at most `max_bytes`) as `Data` frames, then
    /// [`Response::ShellOutput`].
    ShellRead {
        /// The shell.
        shell_id: String,
        /// Absolute cursor to read from.
        cursor: u64,
        /// Most bytes to send.
        max_bytes: u64,
    },
    /// Write input to a shell.
    ShellWrite {
        /// The shell.
        shell_id: String,
        /// Bytes to type.
        input: String,
    },
    /// Send a signal: `INT` goes to the terminal's foreground process group (like Ctrl-C),
    /// others to the shell's whole session.
    ShellSignal {
        /// The shell.
        shell_id: String,
        /// `INT`, `TERM`, `KILL`, `HUP`, `QUIT`, `TSTP`, `CONT`, `USR1`, `USR2`.
        signal: String,
    },
    /// Close a shell (HUP, then KILL).
    ShellClose {
        /// The shell.
        shell_id: String,
    },
    /// List shells.
    ShellList,
    /// Start a service and wait until it is ready (or fails).
    ServiceStart(ServiceStart),
    /// One service.
    ServiceStatus {
        /// Name.
        name: String,
    },
    /// Every service.
    ServiceList,
    /// A service's logs, the last `tail_lines` lines of each stream (all when `None`).
    ServiceLogs {
        /// Name.
        name: String,
        /// Lines per stream.
        tail_lines: Option<u64>,
    },
    /// Stop a service: TERM to its process group, KILL after `grace_ms`.
    ServiceStop {
        /// Name.
        name: String,
        /// Grace period.
        grace_ms: u64,
    },
    /// Write secret files to `/run/pyro-secrets/NAME` (0400, on tmpfs), replacing the set.
    SecretsInstall {
        /// Name → value.
        secrets: BTreeMap<String, String>,
    },
}

/// Terminal size and program environment for a new shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellOpen {
    /// Working directory (default the workspace).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Extra environment variables (e.g. mapped secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run the shell as this user (see [`ExecRequest::user`]); `None` runs it as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A shell as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellInfo {
    /// Id, unique within the sandbox.
    pub shell_id: String,
    /// The shell's pid in the sandbox.
    pub pid: i32,
    /// `running` or `exited`.
    pub state: String,
    /// Exit code (or 128+signal) once exited.
    pub exit_code: Option<i32>,
    /// Working directory it started in.
    pub cwd: String,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Bytes of output produced so far (the absolute cursor of the end of the buffer).
    pub total_bytes: u64,
    /// Absolute cursor of the oldest byte still in the ring buffer.
    pub buffer_start: u64,
}

/// How a service proves it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Readiness {
    /// A file exists (path inside the workspace).
    File {
        /// The path.
        path: String,
    },
    /// A TCP connect succeeds.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// An HTTP GET answers 200–399.
    Http {
        /// `http://host:port/path`.
        url: String,
    },
    /// A command exits 0.
    Command {
        /// Shell command line.
        command: String,
    },
}

/// A service to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStart {
    /// Unique name.
    pub name: String,
    /// Command argv (run by `sh -lc` over its [`command_line`]).
    pub argv: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Readiness probe; none means ready once started.
    #[serde(default)]
    pub readiness: Option<Readiness>,
    /// How long to wait for readiness.
    pub ready_timeout_ms: u64,
    /// Milliseconds between readiness probes; absent: the agent's own pace (100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_interval_ms: Option<u64>,
    /// `never` or `on-failure`.
    pub restart: String,
    /// Run the service (and a command readiness probe) as this user (see
    /// [`ExecRequest::user`]); `None` runs it as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A service as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Name.
    pub name: String,
    /// `starting`, `ready`, `exited`, `failed` or `stopped`.
    pub state: String,
    /// Current or last pid.
    pub pid: Option<i32>,
    /// Exit code (or 128+signal) of the last run.
    pub exit_code: Option<i32>,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// Restarts so far under `on-failure`.
    pub restarts: u32,
    /// The shell command line.
    pub command: String,
    /// Restart policy.
    pub restart: String,
    /// Unix ms of the first start.
    pub started_at_ms: i64,
    /// Unix ms it became ready.
    pub ready_at_ms: Option<i64>,
}

/// One directory entry, as listed by [`Request::List`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the listed directory (`.` for the directory itself is never sent).
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes (files), else 0.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Change time, nanoseconds since the epoch (cannot be set by programs, so it reveals
    /// rewrites that kept size and mtime).
    pub ctime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// How long a cancelled command's process group has between TERM and KILL, in milliseconds.
pub const CANCEL_GRACE_MS: u64 = 2000;

/// How to run one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command; the agent turns it into one line with [`command_line`] and runs it with
    /// `sh -lc`.
    pub argv: Vec<String>,
    /// Extra environment variables, on top of the agent's base environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; defaults to the agent's workspace directory (`/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the whole process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout to forward; the rest is read and dropped. `u64::MAX` forwards all of it
    /// (a host that streams output on and keeps only a bounded part).
    #[serde(default = "default_cap")]
    pub max_stdout: u64,
    /// Bytes of stderr to forward; the rest is read and dropped.
    #[serde(default = "default_cap")]
    pub max_stderr: u64,
    /// Run as this user: `user`, `uid`, `user:group` or `uid:gid`, as an OCI image config's
    /// `User`; names are looked up in the sandbox's `/etc/passwd` and `/etc/group`. `None`
    /// (or empty) runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The command's stdin follows the request as `Data` frames, ending with an empty one.
    /// Without it the command reads from `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

fn default_cap() -> u64 {
    DEFAULT_OUTPUT_CAP
}

/// How a command ended. Output arrived earlier as stdout/stderr frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// The exit code, when the command exited normally.
    pub exit_code: Option<i32>,
    /// The terminating signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Whether the timeout fired and the process group was killed.
    pub timed_out: bool,
    /// Whether stdout went over its cap.
    pub stdout_truncated: bool,
    /// Whether stderr went over its cap.
    pub stderr_truncated: bool,
    /// Total bytes the command wrote to stdout, kept or not.
    pub stdout_bytes: u64,
    /// Total bytes the command wrote to stderr, kept or not.
    pub stderr_bytes: u64,
    /// Wall time from spawn to the end of output, in milliseconds.
    pub duration_ms: u64,
}

/// Facts the agent reports in its hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Whether the agent runs as PID 1.
    pub pid1: bool,
}

/// A message from the agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello(AgentInfo),
    /// Final message of an exec.
    ExecDone(ExecOutcome),
    /// Answer to [`Request::Ping`].
    Pong,
    /// The request was accepted and carried out (for example a shutdown).
    Ok,
    /// A file was sent.
    ReadDone {
        /// The file's full size.
        size: u64,
        /// Whether only the first `max_bytes` were sent.
        truncated: bool,
    },
    /// A file was written.
    Written {
        /// Bytes written.
        bytes: u64,
    },
    /// A listing ended.
    ListDone {
        /// Entries sent.
        count: u64,
        /// Whether `max_entries` cut it short.
        truncated: bool,
    },
    /// Hex sha256 per requested path.
    Hashes {
        /// In request order; `None` where the path is not a regular file.
        sha256: Vec<Option<String>>,
    },
    /// An archive was sent or unpacked.
    ArchiveDone {
        /// Entries in the archive.
        entries: u64,
        /// Bytes of file content.
        bytes: u64,
    },
    /// A shell.
    Shell(ShellInfo),
    /// Output of a shell read (the bytes came as `Data` frames).
    ShellOutput {
        /// The shell.
        shell: ShellInfo,
        /// Where the returned bytes start (later than asked when older bytes were dropped).
        cursor: u64,
        /// The cursor to read from next.
        next_cursor: u64,
        /// Bytes between the asked cursor and `cursor` that the ring buffer had dropped.
        dropped: u64,
    },
    /// Shells.
    Shells {
        /// All shells.
        shells: Vec<ShellInfo>,
    },
    /// A service.
    Service(ServiceInfo),
    /// Services.
    Services {
        /// All services.
        services: Vec<ServiceInfo>,
    },
    /// Service logs.
    ServiceLogs {
        /// The service.
        service: ServiceInfo,
        /// Stdout text (lossy UTF-8).
        stdout: String,
        /// Stderr text (lossy UTF-8).
        stderr: String,
        /// Whether older lines were left out.
        truncated: bool,
    },
    /// The request failed.
    Error {
        /// A stable machine-readable kind, such as `protocol_version`, `bad_request`, `spawn`.
        kind: String,
        /// A human-readable message.
        message: String,
    },
}

/// The shell command line `sh -lc` runs for a command.
///
/// Several arguments are joined with POSIX quoting ([`join_argv`]), so each stays one word. A
/// single argument is the command line itself, as written: `["echo $((6*7)) | cat"]` runs a
/// pipeline, where quoting would look for a program named after the whole string. For one plain
/// word (`["ls"]`) both readings are the same. An empty single argument stays quoted (`''`).
///
/// Returns `None` when an argument holds a NUL byte, which no shell string can carry.
pub fn command_line(argv: &[String]) -> Option<String> {
    match argv {
        [one] if !one.is_empty() => (!one.contains('\0')).then(|| one.clone()),
        _ => join_argv(argv),
    }
}

/// POSIX-quotes an argv into one shell command line, the way `shlex.join` does.
///
/// Returns `None` when an argument holds a NUL byte, which no shell string can carry.
pub fn join_argv(argv: &[String]) -> Option<String> {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        if a.contains('\0') {
            return None;
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&quote(a));
    }
    Some(out)
}

/// Quotes one word for a POSIX shell. Safe words pass through unchanged so that command lines
/// stay readable in logs; everything else is single-quoted.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if safe {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r#"'"'"'"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_json(&mut buf, &Request::Ping).unwrap();
        write_frame(&mut buf, FrameKind::Stdout, b"\xff\x00bytes").unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap();
        assert_eq!(k, FrameKind::Json);
        assert_eq!(
            serde_json::from_slice::<Request>(&p).unwrap(),
            Request::Ping
        );
        let (k, p) = read_frame(&mut r).unwrap();
        assert_eq!(k, FrameKind::Stdout);
        assert_eq!(p, b"\xff\x00bytes");
        assert!(matches!(read_frame(&mut r), Err(ProtocolError::Closed)));
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_before_allocating() {
        let h = encode_header(FrameKind::Json, MAX_FRAME_LEN + 1);
        assert!(matches!(
            decode_header(h),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        let mut h = encode_header(FrameKind::Json, 1);
        h[0] = 9;
        assert!(matches!(
            decode_header(h),
            Err(ProtocolError::UnknownKind(9))
        ));
    }

    #[test]
    fn quoting_matches_posix_shell_rules() {
        let check = |argv: &[&str], want: &str| {
            let v: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            assert_eq!(join_argv(&v).unwrap(), want);
        };
        check(&["git", "--version"], "git --version");
        check(&["echo", "a b"], "echo 'a b'");
        check(&["echo", "it's"], r#"echo 'it'"'"'s'"#);
        check(&["echo", ""], "echo ''");
        check(
            &["echo", "$(rm -rf /)", ";", "|"],
            "echo '$(rm -rf /)' ';' '|'",
        );
        assert!(join_argv(&["a\0b".to_string()]).is_none());
    }

    #[test]
    fn a_single_argument_is_a_command_line() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&v(&["echo $((6*7)) | cat"])).unwrap(),
            "echo $((6*7)) | cat"
        );
        assert_eq!(command_line(&v(&["ls"])).unwrap(), "ls");
        assert_eq!(command_line(&v(&[""])).unwrap(), "''");
        assert_eq!(
            command_line(&v(&["printf", "%s\n", "a b"])).unwrap(),
            "printf '%s\n' 'a b'"
        );
        assert!(command_line(&v(&["a\0b"])).is_none());
    }

    #[test]
    fn exec_request_defaults_caps() {
        let r: ExecRequest = serde_json::from_str(r#"{"argv":["true"]}"#).unwrap();
        assert_eq!(r.max_stdout, DEFAULT_OUTPUT_CAP);
        assert_eq!(r.max_stderr, DEFAULT_OUTPUT_CAP);
        assert!(r.env.is_empty());
        // A request from before stdin existed means "no stdin".
        assert!(!r.stdin);
    }
}
