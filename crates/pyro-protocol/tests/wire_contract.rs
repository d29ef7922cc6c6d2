//! The wire contract, frozen: one example of every request, response, payload record and frame
//! kind, serialized exactly as it goes on the wire and snapshotted (`tests/snapshots/`), plus a
//! guard that pins a fingerprint of all of it to [`PROTOCOL_VERSION`].
//!
//! Every example sets every optional field, so a renamed or removed field shows in the
//! snapshot. The `*_name` functions match without a wildcard arm, so a new variant does not
//! compile until it is named here, and `every_variant_has_an_example` asks serde itself for the
//! variants each enum accepts, so a named variant without an example fails too.
//!
//! When a snapshot changes: review it (`INSTA_UPDATE=always` rewrites it), decide with
//! `VERSIONING.md` whether the change breaks old peers, bump [`PROTOCOL_VERSION`] if it does,
//! and pin the new fingerprint in `wire_fingerprint_is_pinned_to_the_protocol_version`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use pyro_protocol::*;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

/// The fingerprint of every example's wire form for [`PROTOCOL_VERSION`]. A change to either
/// side of this pair is deliberate: see the failure message of the guard test.
const PINNED: (u32, &str) = (
    2,
    "82eca4cb9ee427c4473cc0bdbae42880cfcc18552693fee59e9452c4cda51a1e",
);

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn exec_request() -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo hi; cat".into()],
        env: map(&[("LANG", "C.UTF-8")]),
        cwd: Some("/workspace/src".into()),
        timeout_ms: Some(30_000),
        max_stdout: 1 << 20,
        max_stderr: 65_536,
        user: Some("1000:1000".into()),
        stdin: true,
    }
}

fn shell_info() -> ShellInfo {
    ShellInfo {
        shell_id: "s1".into(),
        pid: 42,
        state: "exited".into(),
        exit_code: Some(130),
        cwd: "/workspace".into(),
        cols: 120,
        rows: 40,
        total_bytes: 4096,
        buffer_start: 1024,
    }
}

fn service_info() -> ServiceInfo {
    ServiceInfo {
        name: "web".into(),
        state: "failed".into(),
        pid: Some(77),
        exit_code: Some(1),
        reason: Some("exited with code 1".into()),
        restarts: 2,
        command: "python3 -m http.server 8080".into(),
        restart: "on-failure".into(),
        started_at_ms: 1_700_000_000_000,
        ready_at_ms: Some(1_700_000_000_250),
    }
}

/// The wire name of a request; no wildcard arm, so a new variant needs a line here.
fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Exec(_) => "exec",
        Request::Ping => "ping",
        Request::Shutdown => "shutdown",
        Request::ReadFile { .. } => "read_file",
        Request::WriteFile { .. } => "write_file",
        Request::Remove { .. } => "remove",
        Request::List { .. } => "list",
        Request::Hash { .. } => "hash",
        Request::ArchiveOut { .. } => "archive_out",
        Request::ArchiveIn { .. } => "archive_in",
        Request::ShellOpen(_) => "shell_open",
        Request::ShellRead { .. } => "shell_read",
        Request::ShellWrite { .. } => "shell_write",
        Request::ShellSignal { .. } => "shell_signal",
        Request::ShellClose { .. } => "shell_close",
        Request::ShellList => "shell_list",
        Request::ServiceStart(_) => "service_start",
        Request::ServiceStatus { .. } => "service_status",
        Request::ServiceList => "service_list",
        Request::ServiceLogs { .. } => "service_logs",
        Request::ServiceStop { .. } => "service_stop",
        Request::SecretsInstall { .. } => "secrets_install",
    }
}

/// The wire name of a response; no wildcard arm, so a new variant needs a line here.
fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Hello(_) => "hello",
        Response::ExecDone(_) => "exec_done",
        Response::Pong => "pong",
        Response::Ok => "ok",
        Response::ReadDone { .. } => "read_done",
        Response::Written { .. } => "written",
        Response::ListDone { .. } => "list_done",
        Response::Hashes { .. } => "hashes",
        Response::ArchiveDone { .. } => "archive_done",
        Response::Shell(_) => "shell",
        Response::ShellOutput { .. } => "shell_output",
        Response::Shells { .. } => "shells",
        Response::Service(_) => "service",
        Response::Services { .. } => "services",
        Response::ServiceLogs { .. } => "service_logs",
        Response::Error { .. } => "error",
    }
}

/// The wire name of a readiness probe; no wildcard arm, so a new variant needs a line here.
fn readiness_name(r: &Readiness) -> &'static str {
    match r {
        Readiness::File { .. } => "file",
        Readiness::Tcp { .. } => "tcp",
        Readiness::Http { .. } => "http",
        Readiness::Command { .. } => "command",
    }
}

/// A frame kind's name; no wildcard arm, so a new kind needs a line here.
fn frame_name(k: FrameKind) -> &'static str {
    match k {
        FrameKind::Json => "json",
        FrameKind::Stdout => "stdout",
        FrameKind::Stderr => "stderr",
        FrameKind::Data => "data",
    }
}

fn readiness_examples() -> Vec<Readiness> {
    vec![
        Readiness::File {
            path: "/workspace/.ready".into(),
        },
        Readiness::Tcp {
            address: "127.0.0.1:8080".into(),
        },
        Readiness::Http {
            url: "http://127.0.0.1:8080/health".into(),
        },
        Readiness::Command {
            command: "test -S /run/app.sock".into(),
        },
    ]
}

fn service_start(readiness: Readiness) -> ServiceStart {
    ServiceStart {
        name: "web".into(),
        argv: vec!["python3".into(), "-m".into(), "http.server".into()],
        cwd: Some("/workspace/site".into()),
        env: map(&[("PORT", "8080")]),
        readiness: Some(readiness),
        ready_timeout_ms: 30_000,
        ready_interval_ms: Some(250),
        restart: "on-failure".into(),
        user: Some("www-data".into()),
    }
}

fn request_examples() -> Vec<Request> {
    vec![
        Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
        Request::Exec(exec_request()),
        Request::Ping,
        Request::Shutdown,
        Request::ReadFile {
            path: "src/main.rs".into(),
            max_bytes: 1 << 20,
        },
        Request::WriteFile {
            path: "src/main.rs".into(),
            mode: Some(0o755),
            max_bytes: 1 << 20,
        },
        Request::Remove {
            path: "build".into(),
        },
        Request::List {
            path: ".".into(),
            recursive: true,
            max_entries: 100_000,
        },
        Request::Hash {
            paths: vec!["a.txt".into(), "dir".into()],
        },
        Request::ArchiveOut {
            path: "/workspace".into(),
        },
        Request::ArchiveIn {
            dest: "/workspace".into(),
            clear: true,
            max_bytes: 1 << 30,
            max_entries: 1_000_000,
        },
        Request::ShellOpen(ShellOpen {
            cwd: Some("/workspace".into()),
            cols: 120,
            rows: 40,
            env: map(&[("TOKEN", "secret-value")]),
            user: Some("dev".into()),
        }),
        Request::ShellRead {
            shell_id: "s1".into(),
            cursor: 1024,
            max_bytes: 65_536,
        },
        Request::ShellWrite {
            shell_id: "s1".into(),
            input: "ls -l\n".into(),
        },
        Request::ShellSignal {
            shell_id: "s1".into(),
            signal: "INT".into(),
        },
        Request::ShellClose {
            shell_id: "s1".into(),
        },
        Request::ShellList,
        Request::ServiceStart(service_start(Readiness::Http {
            url: "http://127.0.0.1:8080/health".into(),
        })),
        Request::ServiceStatus { name: "web".into() },
        Request::ServiceList,
        Request::ServiceLogs {
            name: "web".into(),
            tail_lines: Some(200),
        },
        Request::ServiceStop {
            name: "web".into(),
            grace_ms: 5_000,
        },
        Request::SecretsInstall {
            secrets: map(&[("API_TOKEN", "t0ken"), ("DB_PASSWORD", "hunter2")]),
        },
    ]
}

fn response_examples() -> Vec<Response> {
    vec![
        Response::Hello(AgentInfo {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            pid1: true,
        }),
        Response::ExecDone(ExecOutcome {
            exit_code: Some(0),
            signal: Some(9),
            timed_out: true,
            stdout_truncated: true,
            stderr_truncated: false,
            stdout_bytes: 2_000_000,
            stderr_bytes: 12,
            duration_ms: 1_234,
        }),
        Response::Pong,
        Response::Ok,
        Response::ReadDone {
            size: 4096,
            truncated: true,
        },
        Response::Written { bytes: 512 },
        Response::ListDone {
            count: 3,
            truncated: false,
        },
        Response::Hashes {
            sha256: vec![
                Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
                None,
            ],
        },
        Response::ArchiveDone {
            entries: 10,
            bytes: 20_480,
        },
        Response::Shell(shell_info()),
        Response::ShellOutput {
            shell: shell_info(),
            cursor: 1024,
            next_cursor: 4096,
            dropped: 512,
        },
        Response::Shells {
            shells: vec![shell_info()],
        },
        Response::Service(service_info()),
        Response::Services {
            services: vec![service_info()],
        },
        Response::ServiceLogs {
            service: service_info(),
            stdout: "listening on 8080\n".into(),
            stderr: "GET /health 200\n".into(),
            truncated: true,
        },
        Response::Error {
            kind: "bad_request".into(),
            message: "unknown request type".into(),
        },
    ]
}

/// Records that travel inside `Data` frames (directory entries, one JSON object per line) or
/// inside other messages (readiness probes).
fn record_examples() -> Vec<(String, String)> {
    let entry = |kind: &str, link: Option<&str>| Entry {
        path: format!("dir/{kind}"),
        kind: kind.into(),
        size: 42,
        mode: 0o644,
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: 1_700_000_001_123_456_789,
        ino: 1234,
        link_target: link.map(String::from),
    };
    let mut out = vec![
        ("entry (file)".to_string(), wire(&entry("file", None))),
        (
            "entry (symlink)".to_string(),
            wire(&entry("symlink", Some("../target"))),
        ),
    ];
    for r in readiness_examples() {
        out.push((format!("readiness ({})", readiness_name(&r)), wire(&r)));
    }
    out
}

/// A message's wire form: the JSON payload of its frame, as `write_json` encodes it.
fn wire<T: Serialize>(msg: &T) -> String {
    String::from_utf8(serde_json::to_vec(msg).unwrap()).unwrap()
}

/// Each example decodes back to itself, so both directions of the contract hold.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: &T) {
    let back: T = serde_json::from_str(&wire(msg)).unwrap();
    assert_eq!(&back, msg);
}

fn requests_text() -> String {
    request_examples()
        .iter()
        .map(|r| format!("{}\n  {}\n", request_name(r), wire(r)))
        .collect()
}

fn responses_text() -> String {
    response_examples()
        .iter()
        .map(|r| format!("{}\n  {}\n", response_name(r), wire(r)))
        .collect()
}

fn records_text() -> String {
    record_examples()
        .iter()
        .map(|(name, w)| format!("{name}\n  {w}\n"))
        .collect()
}

/// Every frame kind, byte for byte (the header in hex, then the payload with bytes outside
/// printable ASCII escaped), plus the limits and defaults that belong to the wire.
fn frames_text() -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = format!(
        "HEADER_LEN = {HEADER_LEN}\nMAX_FRAME_LEN = {MAX_FRAME_LEN}\n\
         DEFAULT_OUTPUT_CAP = {DEFAULT_OUTPUT_CAP}\nCANCEL_GRACE_MS = {CANCEL_GRACE_MS}\n"
    );
    for kind in frame_kinds() {
        let payload: &[u8] = match kind {
            FrameKind::Json => br#"{"type":"ping"}"#,
            FrameKind::Stdout => b"out\xff\n",
            FrameKind::Stderr => b"err\n",
            FrameKind::Data => b"chunk",
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, kind, payload).unwrap();
        out.push_str(&format!(
            "{} (tag {})\n  header {}  payload {}\n",
            frame_name(kind),
            kind.tag(),
            hex(&buf[..HEADER_LEN]),
            buf[HEADER_LEN..].escape_ascii(),
        ));
    }
    let mut end = Vec::new();
    write_frame(&mut end, FrameKind::Data, b"").unwrap();
    out.push_str(&format!("end of a host stream\n  header {}\n", hex(&end)));
    out
}

/// Every kind `from_tag` accepts, in tag order.
fn frame_kinds() -> Vec<FrameKind> {
    (0..=u8::MAX).filter_map(FrameKind::from_tag).collect()
}

/// The variant names serde accepts for an internally tagged enum, read from its own error for
/// an unknown tag ("unknown variant `x`, expected one of `a`, `b`").
fn serde_variants<T: DeserializeOwned + std::fmt::Debug>(tag: &str) -> BTreeSet<String> {
    let err = serde_json::from_str::<T>(&format!(r#"{{"{tag}":"\u0000no such variant"}}"#))
        .unwrap_err()
        .to_string();
    let list = err
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected serde error: {err}"));
    list.split(',')
        .map(|s| {
            s.split('`')
                .nth(1)
                .unwrap_or_else(|| panic!("unexpected serde error: {err}"))
                .to_string()
        })
        .collect()
}

#[test]
fn every_variant_has_an_example() {
    let names = |v: Vec<&str>| v.into_iter().map(String::from).collect::<BTreeSet<_>>();
    let requests = request_examples();
    let responses = response_examples();
    assert_eq!(
        names(requests.iter().map(request_name).collect()),
        serde_variants::<Request>("type"),
        "every Request variant needs exactly one example in request_examples()"
    );
    assert_eq!(requests.len(), serde_variants::<Request>("type").len());
    assert_eq!(
        names(responses.iter().map(response_name).collect()),
        serde_variants::<Response>("type"),
        "every Response variant needs exactly one example in response_examples()"
    );
    assert_eq!(responses.len(), serde_variants::<Response>("type").len());
    assert_eq!(
        names(readiness_examples().iter().map(readiness_name).collect()),
        serde_variants::<Readiness>("kind"),
        "every Readiness variant needs an example in readiness_examples()"
    );
    // The names above are the serde tags; check that they are what goes on the wire.
    for r in &requests {
        let v: serde_json::Value = serde_json::from_str(&wire(r)).unwrap();
        assert_eq!(v["type"], request_name(r));
    }
    for r in &responses {
        let v: serde_json::Value = serde_json::from_str(&wire(r)).unwrap();
        assert_eq!(v["type"], response_name(r));
    }
    assert_eq!(frame_kinds().len(), 4, "a new frame kind needs a payload");
}

#[test]
fn every_example_round_trips() {
    request_examples().iter().for_each(round_trips);
    response_examples().iter().for_each(round_trips);
    readiness_examples().iter().for_each(round_trips);
    for kind in frame_kinds() {
        assert_eq!(FrameKind::from_tag(kind.tag()), Some(kind));
    }
}

#[test]
fn requests_on_the_wire() {
    insta::assert_snapshot!("requests", requests_text());
}

#[test]
fn responses_on_the_wire() {
    insta::assert_snapshot!("responses", responses_text());
}

#[test]
fn records_on_the_wire() {
    insta::assert_snapshot!("records", records_text());
}

#[test]
fn frames_on_the_wire() {
    insta::assert_snapshot!("frames", frames_text());
}

#[test]
fn wire_fingerprint_is_pinned_to_the_protocol_version() {
    let mut h = Sha256::new();
    for (name, text) in [
        ("requests", requests_text()),
        ("responses", responses_text()),
        ("records", records_text()),
        ("frames", frames_text()),
    ] {
        h.update(format!("== {name}\n{text}"));
    }
    let fingerprint = hex::encode(h.finalize());
    let pinned = (PROTOCOL_VERSION, fingerprint.as_str());
    if PROTOCOL_VERSION == PINNED.0 {
        assert!(
            pinned == PINNED,
            "the wire form of pyro-protocol's messages changed (its fingerprint is now \
             {fingerprint}) but PROTOCOL_VERSION is still {PROTOCOL_VERSION}.\n\
             Review the snapshot diff (tests/snapshots/). If old peers cannot read the new form \
             (a field removed or renamed, a meaning or the framing changed: see \
             crates/pyro-protocol/VERSIONING.md), bump PROTOCOL_VERSION in \
             crates/pyro-protocol/src/lib.rs, add a line to VERSIONING.md's History, run this \
             test again and pin the fingerprint it prints for the new version in PINNED ({}). \
             Only a change VERSIONING.md calls compatible (an optional field with a serde \
             default, a new request type) keeps the version: then pin ({PROTOCOL_VERSION}, \
             \"{fingerprint}\") and say why in the commit",
            file!(),
        );
    } else {
        assert!(
            pinned == PINNED,
            "PROTOCOL_VERSION is now {PROTOCOL_VERSION}; pin the new pair in PINNED ({}): \
             ({PROTOCOL_VERSION}, \"{fingerprint}\")",
            file!(),
        );
    }
}
