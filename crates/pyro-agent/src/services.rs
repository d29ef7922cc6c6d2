//! Long-running services: started in their own process group, supervised (optionally restarted
//! on failure), with readiness probes and rotated, capped logs under `/run/pyro-services`
//! (outside the workspace, so they never show up in diff or export).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pyro_protocol::{command_line, Readiness, ServiceInfo, ServiceStart};

use crate::exec::{login_line, BASE_ENV};
use crate::files::{err, FileError, Root};
use crate::reaper::{self, Exit};
use crate::user::Credentials;

/// Where service logs live.
pub const LOG_DIR: &str = "/run/pyro-services";
/// A log file is rotated (to `.1`) when it reaches this size; at most two generations exist.
pub const LOG_ROTATE_BYTES: u64 = 1 << 20;
/// Most restarts under `on-failure`.
const MAX_RESTARTS: u32 = 10;
/// Most services per sandbox.
const MAX_SERVICES: usize = 64;

struct Service {
    info: Mutex<ServiceInfo>,
    spec: ServiceStart,
    cwd: PathBuf,
    /// Who it runs as (`None`: root).
    creds: Option<Credentials>,
    /// The directory its logs go to ([`LOG_DIR`]; a temporary one in tests).
    logs: PathBuf,
    /// Set by `stop`, so the supervisor does not restart it.
    stopping: Mutex<bool>,
}

type Table = Mutex<HashMap<String, Arc<Service>>>;

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !n.starts_with('.')
}

fn log_path(dir: &Path, name: &str, stream: &str) -> PathBuf {
    dir.join(format!("{name}.{stream}"))
}

fn is_running(s: &Service) -> bool {
    matches!(lock(&s.info).state.as_str(), "starting" | "ready")
}

/// Copies a pipe into a log file, rotating it at [`LOG_ROTATE_BYTES`].
fn log_pump(mut src: impl Read, path: PathBuf) {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    };
    let Some(mut f) = open(&path) else { return };
    let mut size = f.metadata().map_or(0, |m| m.len());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if size + n as u64 > LOG_ROTATE_BYTES {
            let _ = std::fs::rename(
                &path,
                path.with_extension(format!(
                    "{}.1",
                    path.extension().and_then(|e| e.to_str()).unwrap_or("log")
                )),
            );
            match open(&path) {
                Some(nf) => f = nf,
                None => return,
            }
            size = 0;
        }
        if f.write_all(&buf[..n]).is_err() {
            return;
        }
        size += n as u64;
    }
}

fn spawn(svc: &Arc<Service>) -> Result<i32, FileError> {
    let line = command_line(&svc.spec.argv)
        .ok_or_else(|| err("bad_request", "command arguments may not contain NUL bytes"))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-lc")
        .arg(login_line(&svc.spec.env, &line))
        .current_dir(&svc.cwd)
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .envs(svc.creds.iter().flat_map(Credentials::env))
        .envs(&svc.spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(c) = &svc.creds {
        c.apply(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| {
        err(
            "spawn",
            format!("cannot start service {}: {e}", svc.spec.name),
        )
    })?;
    let pid = child.id() as i32;
    reaper::want(pid);
    if let Some(out) = child.stdout.take() {
        let p = log_path(&svc.logs, &svc.spec.name, "stdout");
        std::thread::spawn(move || log_pump(out, p));
    }
    if let Some(e) = child.stderr.take() {
        let p = log_path(&svc.logs, &svc.spec.name, "stderr");
        std::thread::spawn(move || log_pump(e, p));
    }
    drop(child);
    {
        let mut info = lock(&svc.info);
        info.pid = Some(pid);
        info.exit_code = None;
    }
    let s = svc.clone();
    std::thread::spawn(move || supervise(s, pid));
    Ok(pid)
}

/// Waits for the service's process; records how it ended; restarts it under `on-failure`.
fn supervise(svc: Arc<Service>, pid: i32) {
    let code = match reaper::wait_for(pid) {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    };
    // The whole group goes with its leader.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let stopping = *lock(&svc.stopping);
    let restart = {
        let mut info = lock(&svc.info);
        info.exit_code = Some(code);
        if stopping {
            info.state = "stopped".into();
            false
        } else if svc.spec.restart == "on-failure" && code != 0 && info.restarts < MAX_RESTARTS {
            info.restarts += 1;
            info.state = "starting".into();
            info.reason = Some(format!("restarting after exit code {code}"));
            true
        } else {
            if info.state == "starting" {
                info.reason = Some(format!("exited with code {code} before it was ready"));
                info.state = "failed".into();
            } else {
                info.state = "exited".into();
            }
            false
        }
    };
    if restart {
        std::thread::sleep(Duration::from_millis(500));
        if *lock(&svc.stopping) {
            lock(&svc.info).state = "stopped".into();
            return;
        }
        if spawn(&svc).is_ok() {
            // Readiness is not re-probed after a restart: the service counts as running.
            let mut info = lock(&svc.info);
            if info.state == "starting" {
                info.state = "ready".into();
            }
        } else {
            lock(&svc.info).state = "failed".into();
        }
    }
}

fn probe(root: &Root, svc: &Service, r: &Readiness) -> bool {
    match r {
        // Any path in the guest: a service may well signal readiness in /tmp or /run. Only
        // its existence is looked at, inside the sandbox's own filesystem; a relative path is
        // under the workspace.
        Readiness::File { path } if path.starts_with('/') => Path::new(path).exists(),
        Readiness::File { path } => root
            .relative(path)
            .is_ok_and(|rel| root.path.join(rel).exists()),
        Readiness::Tcp { address } => address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()),
        Readiness::Http { url } => http_ok(url),
        Readiness::Command { command } => {
            let mut c = Command::new("/bin/sh");
            c.arg("-lc")
                .arg(login_line(&svc.spec.env, command))
                .current_dir(&svc.cwd)
                .env_clear()
                .envs(BASE_ENV.iter().copied())
                .envs(svc.creds.iter().flat_map(Credentials::env))
                .envs(&svc.spec.env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            if let Some(creds) = &svc.creds {
                creds.apply(&mut c);
            }
            let Ok(child) = c.spawn() else { return false };
            let pid = child.id() as i32;
            reaper::want(pid);
            drop(child);
            matches!(reaper::wait_for(pid), Exit::Code(0))
        }
    }
}

/// A minimal `GET` over HTTP/1.0: the agent must not depend on a TLS or HTTP stack just to
/// see a status line from a local dev server.
fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let Some(a) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

/// Starts a service and waits for readiness. On failure the error carries the log tail.
pub fn start(root: &Root, req: &ServiceStart) -> Result<ServiceInfo, FileError> {
    start_in(root, req, Path::new(LOG_DIR))
}

/// [`start`], with the service's logs in `logs`.
fn start_in(root: &Root, req: &ServiceStart, logs: &Path) -> Result<ServiceInfo, FileError> {
    if !valid_name(&req.name) {
        return Err(err(
            "bad_request",
            format!(
                "invalid service name {:?} (1-64 of A-Z a-z 0-9 - _ .)",
                req.name
            ),
        ));
    }
    if req.argv.is_empty() {
        return Err(err("bad_request", "command is required after `--`"));
    }
    if !matches!(req.restart.as_str(), "never" | "on-failure") {
        return Err(err(
            "bad_request",
            format!(
                "restart policy must be never or on-failure, not {:?}",
                req.restart
            ),
        ));
    }
    let cwd = match &req.cwd {
        Some(c) => root.path.join(root.relative(c)?),
        None => root.path.clone(),
    };
    if !cwd.is_dir() {
        return Err(err(
            "bad_path",
            format!("{}: not a directory", cwd.display()),
        ));
    }
    let creds = crate::user::resolve(req.user.as_deref(), Path::new("/"))
        .map_err(|e| err("bad_request", e))?;
    std::fs::create_dir_all(logs)
        .map_err(|e| err("io", format!("create {}: {e}", logs.display())))?;
    let svc = {
        let mut t = lock(table());
        if let Some(old) = t.get(&req.name) {
            if is_running(old) {
                return Err(err(
                    "bad_request",
                    format!("service {} is already running", req.name),
                ));
            }
        }
        if t.len() >= MAX_SERVICES && !t.contains_key(&req.name) {
            return Err(err(
                "too_large",
                format!("at most {MAX_SERVICES} services per sandbox"),
            ));
        }
        // A fresh start gets fresh logs.
        for stream in ["stdout", "stderr", "stdout.1", "stderr.1"] {
            let _ = std::fs::remove_file(log_path(logs, &req.name, stream));
        }
        let info = ServiceInfo {
            name: req.name.clone(),
            state: "starting".into(),
            pid: None,
            exit_code: None,
            reason: None,
            restarts: 0,
            command: command_line(&req.argv).unwrap_or_default(),
            restart: req.restart.clone(),
            started_at_ms: now_ms(),
            ready_at_ms: None,
        };
        let svc = Arc::new(Service {
            info: Mutex::new(info),
            spec: req.clone(),
            cwd,
            creds,
            logs: logs.to_path_buf(),
            stopping: Mutex::new(false),
        });
        t.insert(req.name.clone(), svc.clone());
        svc
    };
    spawn(&svc)?;
    let deadline = Instant::now() + Duration::from_millis(req.ready_timeout_ms);
    loop {
        let state = lock(&svc.info).state.clone();
        if state == "failed" || state == "exited" {
            let code = lock(&svc.info).exit_code.unwrap_or(-1);
            return Err(err(
                "service_failed",
                format!(
                    "service {} exited with code {code} before it was ready; log tail:\n{}",
                    req.name,
                    tail_text(logs, &req.name, 20)
                ),
            ));
        }
        let ready = match &req.readiness {
            None => true,
            Some(r) => probe(root, &svc, r),
        };
        if ready {
            let mut info = lock(&svc.info);
            if info.state == "starting" {
                info.state = "ready".into();
                info.ready_at_ms = Some(now_ms());
            }
            return Ok(info.clone());
        }
        if Instant::now() >= deadline {
            let _ = stop(&req.name, Duration::from_secs(2));
            {
                let mut info = lock(&svc.info);
                info.state = "failed".into();
                info.reason = Some("readiness_timeout".into());
            }
            return Err(err(
                "service_not_ready",
                format!(
                    "service {} was not ready after {} ms; log tail:\n{}",
                    req.name,
                    req.ready_timeout_ms,
                    tail_text(logs, &req.name, 20)
                ),
            ));
        }
        // The caller's pace, kept from spinning and never sleeping past the deadline (one last
        // probe then runs at the deadline itself).
        let pace = Duration::from_millis(req.ready_interval_ms.unwrap_or(100).clamp(10, 60_000));
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(pace.min(left).max(Duration::from_millis(1)));
    }
}

fn tail_text(dir: &Path, name: &str, lines: u64) -> String {
    let (out, _) = tail(dir, name, "stdout", Some(lines));
    let (e, _) = tail(dir, name, "stderr", Some(lines));
    format!("[stdout]\n{out}[stderr]\n{e}")
}

/// The last `lines` lines of a stream (both generations), and whether older lines were cut.
fn tail(dir: &Path, name: &str, stream: &str, lines: Option<u64>) -> (String, bool) {
    let mut all = std::fs::read(log_path(dir, name, &format!("{stream}.1"))).unwrap_or_default();
    let rotated = !all.is_empty();
    all.extend(std::fs::read(log_path(dir, name, stream)).unwrap_or_default());
    let text = String::from_utf8_lossy(&all).into_owned();
    match lines {
        None => (text, rotated),
        Some(n) => {
            let parts: Vec<&str> = text.split_inclusive('\n').collect();
            let keep = parts.len().saturating_sub(n as usize);
            (parts[keep..].concat(), rotated || keep > 0)
        }
    }
}

fn get(name: &str) -> Result<Arc<Service>, FileError> {
    lock(table())
        .get(name)
        .cloned()
        .ok_or_else(|| err("not_found", format!("no service {name:?}")))
}

/// One service.
pub fn status(name: &str) -> Result<ServiceInfo, FileError> {
    let info = lock(&get(name)?.info).clone();
    Ok(info)
}

/// Every service.
pub fn list() -> Vec<ServiceInfo> {
    let mut v: Vec<ServiceInfo> = lock(table())
        .values()
        .map(|s| lock(&s.info).clone())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// A service's logs.
pub fn logs(
    name: &str,
    tail_lines: Option<u64>,
) -> Result<(ServiceInfo, String, String, bool), FileError> {
    let svc = get(name)?;
    let info = lock(&svc.info).clone();
    let (out, t1) = tail(&svc.logs, name, "stdout", tail_lines);
    let (e, t2) = tail(&svc.logs, name, "stderr", tail_lines);
    Ok((info, out, e, t1 || t2))
}

/// Stops a service: TERM to its group, KILL after `grace`.
pub fn stop(name: &str, grace: Duration) -> Result<ServiceInfo, FileError> {
    let svc = get(name)?;
    *lock(&svc.stopping) = true;
    let pid = lock(&svc.info).pid;
    if let Some(pid) = pid.filter(|_| is_running(&svc)) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let until = Instant::now() + grace;
        while is_running(&svc) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut reason = "sigterm";
        if is_running(&svc) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            reason = "sigkill";
            let until = Instant::now() + Duration::from_secs(5);
            while is_running(&svc) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut info = lock(&svc.info);
        info.state = "stopped".into();
        info.reason = Some(reason.into());
    }
    let info = lock(&svc.info).clone();
    Ok(info)
}

/// Writes the secret files under `/run/pyro-secrets` (tmpfs), 0400, replacing the set.
pub fn install_secrets(
    dir: &Path,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Result<(), FileError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| err("io", format!("create {}: {e}", dir.display())))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for (name, value) in secrets {
        if !valid_name(name) {
            return Err(err("bad_request", format!("invalid secret name {name:?}")));
        }
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&p)
            .map_err(|e| err("io", format!("{}: {e}", p.display())))?;
        f.write_all(value.as_bytes())
            .map_err(|e| err("io", format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Services as real process groups of the test, with their logs in a temporary directory
    //! (`start_in`). The service table is global, so every test names its services apart.

    use std::collections::BTreeMap;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Sandbox {
        root: Root,
        logs: tempfile::TempDir,
        _workspace: tempfile::TempDir,
    }

    fn sandbox() -> Sandbox {
        let workspace = tempfile::tempdir().unwrap();
        Sandbox {
            root: Root {
                path: workspace.path().to_path_buf(),
            },
            logs: tempfile::tempdir().unwrap(),
            _workspace: workspace,
        }
    }

    fn spec(name: &str, line: &str) -> ServiceStart {
        ServiceStart {
            name: name.into(),
            argv: vec![line.into()],
            cwd: None,
            env: BTreeMap::new(),
            readiness: None,
            ready_timeout_ms: 20_000,
            ready_interval_ms: None,
            restart: "never".into(),
            user: None,
        }
    }

    impl Sandbox {
        fn start(&self, req: &ServiceStart) -> Result<ServiceInfo, FileError> {
            start_in(&self.root, req, self.logs.path())
        }
    }

    /// Waits (generously) until `cond` holds for the service's status.
    #[track_caller]
    fn until(name: &str, cond: impl Fn(&ServiceInfo) -> bool) -> ServiceInfo {
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            let info = status(name).unwrap();
            if cond(&info) {
                return info;
            }
            assert!(Instant::now() < limit, "{name} never got there: {info:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn until_logged(name: &str, text: &str) -> String {
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, out, _, _) = logs(name, None).unwrap();
            if out.contains(text) {
                return out;
            }
            assert!(
                Instant::now() < limit,
                "{name} never logged {text:?}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        for ok in ["web", "a", "db-1", "x_y.z", &"n".repeat(64)] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"n".repeat(65),
            "..",
            "a\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_starts() {
        let sb = sandbox();
        #[track_caller]
        fn check(sb: &Sandbox, req: ServiceStart, kind: &str, message: &str) {
            let e = sb.start(&req).unwrap_err();
            assert_eq!(e.kind, kind, "{}", e.message);
            assert!(
                e.message.contains(message),
                "{:?} lacks {message:?}",
                e.message
            );
            assert!(status(&req.name).is_err(), "{} was recorded", req.name);
        }
        check(
            &sb,
            spec("a/b", "true"),
            "bad_request",
            "invalid service name",
        );
        let mut empty = spec("bad-empty", "true");
        empty.argv.clear();
        check(&sb, empty, "bad_request", "command is required");
        let mut restart = spec("bad-restart", "true");
        restart.restart = "always".into();
        check(
            &sb,
            restart,
            "bad_request",
            "restart policy must be never or on-failure, not \"always\"",
        );
        let mut outside = spec("bad-cwd-outside", "true");
        outside.cwd = Some("../elsewhere".into());
        check(&sb, outside, "bad_path", "leads outside the workspace");
        let mut missing = spec("bad-cwd-missing", "true");
        missing.cwd = Some("nope".into());
        check(&sb, missing, "bad_path", "not a directory");
    }

    #[test]
    fn a_service_runs_logs_and_stops_with_term() {
        let sb = sandbox();
        let mut req = spec("web", "echo hello; echo \"$GREETING\" >&2; exec sleep 60");
        req.env.insert("GREETING".into(), "hi there".into());
        let info = sb.start(&req).unwrap();
        assert_eq!(info.state, "ready");
        assert!(info.pid.is_some() && info.ready_at_ms.is_some());
        assert_eq!(info.restart, "never");
        assert!(list().iter().any(|s| s.name == "web"));
        until_logged("web", "hello\n");
        let (_, _, err, truncated) = logs("web", None).unwrap();
        assert_eq!(err, "hi there\n");
        assert!(!truncated);

        // A second start of a running service is refused.
        let e = sb.start(&req).unwrap_err();
        assert!(e.message.contains("already running"), "{}", e.message);

        let stopped = stop("web", Duration::from_secs(20)).unwrap();
        assert_eq!(stopped.state, "stopped");
        assert_eq!(stopped.reason.as_deref(), Some("sigterm"));
        let info = until("web", |i| i.exit_code.is_some());
        assert_eq!(info.exit_code, Some(128 + libc::SIGTERM));
        assert_eq!(info.state, "stopped");

        // Once stopped it may start again, with fresh logs.
        let mut again = req.clone();
        again.argv = vec!["echo second; exec sleep 60".into()];
        sb.start(&again).unwrap();
        let out = until_logged("web", "second\n");
        assert!(!out.contains("hello"), "{out:?}");
        stop("web", Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn stop_kills_a_service_that_ignores_term_after_the_grace() {
        let sb = sandbox();
        let req = spec(
            "stubborn",
            "trap '' TERM; echo up; while :; do sleep 0.05; done",
        );
        sb.start(&req).unwrap();
        until_logged("stubborn", "up\n");
        let stopped = stop("stubborn", Duration::from_millis(200)).unwrap();
        assert_eq!(stopped.state, "stopped");
        assert_eq!(stopped.reason.as_deref(), Some("sigkill"));
        let info = until("stubborn", |i| i.exit_code.is_some());
        assert_eq!(info.exit_code, Some(128 + libc::SIGKILL));
    }

    #[test]
    fn stopping_a_service_that_already_exited_signals_nothing() {
        let sb = sandbox();
        sb.start(&spec("done", "exit 0")).unwrap();
        until("done", |i| i.state == "exited");
        let info = stop("done", Duration::from_millis(10)).unwrap();
        assert_eq!(info.state, "exited");
        assert_eq!(info.reason, None);
        assert_eq!(
            stop("missing", Duration::ZERO).unwrap_err().kind,
            "not_found"
        );
    }

    #[test]
    fn on_failure_restarts_up_to_the_limit() {
        let sb = sandbox();
        let mut req = spec("flaky", "echo run >> runs; exit 3");
        req.restart = "on-failure".into();
        sb.start(&req).unwrap();
        let info = until("flaky", |i| !is_running_state(&i.state));
        assert_eq!(info.state, "exited");
        assert_eq!(info.restarts, MAX_RESTARTS);
        assert_eq!(info.exit_code, Some(3));
        let runs = std::fs::read_to_string(sb.root.path.join("runs")).unwrap();
        assert_eq!(runs.lines().count() as u32, MAX_RESTARTS + 1);
    }

    #[test]
    fn success_and_restart_never_are_not_restarted() {
        let sb = sandbox();
        let mut ok = spec("ok-once", "exit 0");
        ok.restart = "on-failure".into();
        sb.start(&ok).unwrap();
        let info = until("ok-once", |i| i.state == "exited");
        assert_eq!((info.restarts, info.exit_code), (0, Some(0)));

        sb.start(&spec("fail-once", "sleep 0.2; exit 5")).unwrap();
        let info = until("fail-once", |i| i.state == "exited");
        assert_eq!((info.restarts, info.exit_code), (0, Some(5)));
    }

    fn is_running_state(state: &str) -> bool {
        matches!(state, "starting" | "ready")
    }

    #[test]
    fn start_waits_for_readiness() {
        let sb = sandbox();
        let mut req = spec("slow", "sleep 0.3; touch ready-now; exec sleep 60");
        req.readiness = Some(Readiness::File {
            path: "ready-now".into(),
        });
        let info = sb.start(&req).unwrap();
        assert_eq!(info.state, "ready");
        assert!(sb.root.path.join("ready-now").exists());
        stop("slow", Duration::from_secs(20)).unwrap();
    }

    /// The caller's probe interval is kept, and a long one never sleeps past the timeout.
    #[test]
    fn the_probe_interval_is_the_callers_within_the_timeout() {
        let sb = sandbox();
        let mut req = spec("paced", "sleep 0.2; touch paced-ready; exec sleep 60");
        req.readiness = Some(Readiness::File {
            path: "paced-ready".into(),
        });
        req.ready_interval_ms = Some(20);
        assert_eq!(sb.start(&req).unwrap().state, "ready");
        stop("paced", Duration::from_secs(20)).unwrap();

        let mut req = spec("slow-pace", "exec sleep 60");
        req.readiness = Some(Readiness::File {
            path: "never-there".into(),
        });
        req.ready_interval_ms = Some(60_000);
        req.ready_timeout_ms = 300;
        let t = Instant::now();
        assert_eq!(sb.start(&req).unwrap_err().kind, "service_not_ready");
        // A liveness bound, not a speed claim: a 60 s pace would have slept a minute.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }

    #[test]
    fn a_service_never_ready_is_stopped_and_reported_with_its_log_tail() {
        let sb = sandbox();
        let mut req = spec("never-ready", "echo waiting; exec sleep 60");
        req.readiness = Some(Readiness::File {
            path: "never".into(),
        });
        req.ready_timeout_ms = 300;
        // The log is written by a thread of its own: try again until the tail has the output.
        let mut tries = 0;
        let e = loop {
            let e = sb.start(&req).unwrap_err();
            tries += 1;
            if e.message.contains("waiting") || tries == 20 {
                break e;
            }
        };
        assert_eq!(e.kind, "service_not_ready");
        assert!(
            e.message
                .starts_with("service never-ready was not ready after 300 ms; log tail:\n"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("[stdout]\nwaiting\n[stderr]\n"),
            "{}",
            e.message
        );
        let info = until("never-ready", |i| i.exit_code.is_some());
        assert_eq!(info.state, "failed");
        assert_eq!(info.reason.as_deref(), Some("readiness_timeout"));
    }

    #[test]
    fn a_service_that_exits_before_it_is_ready_fails_to_start() {
        let sb = sandbox();
        let mut req = spec("crashes", "echo boom; exit 3");
        req.readiness = Some(Readiness::File {
            path: "never".into(),
        });
        let e = sb.start(&req).unwrap_err();
        assert_eq!(e.kind, "service_failed");
        assert!(
            e.message
                .contains("service crashes exited with code 3 before it was ready"),
            "{}",
            e.message
        );
        let info = status("crashes").unwrap();
        assert_eq!(info.state, "failed");
        assert_eq!(
            info.reason.as_deref(),
            Some("exited with code 3 before it was ready")
        );
        until_logged("crashes", "boom\n");
    }

    fn prober(cwd: &Path, env: &[(&str, &str)]) -> Service {
        let mut spec = spec("probe", "true");
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Service {
            info: Mutex::new(ServiceInfo {
                name: "probe".into(),
                state: "starting".into(),
                pid: None,
                exit_code: None,
                reason: None,
                restarts: 0,
                command: "true".into(),
                restart: "never".into(),
                started_at_ms: 0,
                ready_at_ms: None,
            }),
            spec,
            cwd: cwd.to_path_buf(),
            creds: None,
            logs: cwd.to_path_buf(),
            stopping: Mutex::new(false),
        }
    }

    #[test]
    fn file_readiness_looks_in_the_guest_or_the_workspace() {
        let sb = sandbox();
        let svc = prober(&sb.root.path, &[]);
        std::fs::write(sb.root.path.join("here"), "").unwrap();
        let abs = sb.root.path.join("here").display().to_string();
        #[track_caller]
        fn check(sb: &Sandbox, svc: &Service, path: &str, ready: bool) {
            let r = Readiness::File { path: path.into() };
            assert_eq!(probe(&sb.root, svc, &r), ready, "{path}");
        }
        check(&sb, &svc, "here", true);
        check(&sb, &svc, "./here", true);
        check(&sb, &svc, &abs, true);
        check(&sb, &svc, "missing", false);
        check(&sb, &svc, "/no/such/file", false);
        check(&sb, &svc, "../here", false);
    }

    #[test]
    fn tcp_readiness_is_a_connect() {
        let sb = sandbox();
        let svc = prober(&sb.root.path, &[]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let tcp = |a: &str| probe(&sb.root, &svc, &Readiness::Tcp { address: a.into() });
        assert!(tcp(&open));
        assert!(!tcp(&closed));
        assert!(!tcp("not an address"));
    }

    /// A one-connection-at-a-time HTTP server answering every request with `status_line`.
    fn http_server(status_line: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(format!("{status_line}\r\n\r\n").as_bytes());
            }
        });
        addr
    }

    #[test]
    fn http_readiness_wants_a_2xx_or_3xx_status() {
        #[track_caller]
        fn check(status_line: &'static str, path: &str, ready: bool) {
            let sb = sandbox();
            let svc = prober(&sb.root.path, &[]);
            let url = format!("http://{}{path}", http_server(status_line));
            assert_eq!(http_ok(&url), ready, "{status_line} at {url}");
            assert_eq!(
                probe(&sb.root, &svc, &Readiness::Http { url: url.clone() }),
                ready,
                "{url}"
            );
        }
        check("HTTP/1.0 200 OK", "/health", true);
        check("HTTP/1.1 204 No Content", "", true);
        check("HTTP/1.0 302 Found", "/", true);
        check("HTTP/1.0 404 Not Found", "/", false);
        check("HTTP/1.0 500 Internal Server Error", "/", false);
        check("garbage", "/", false);
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!http_ok(&format!("http://{closed}/")));
        assert!(!http_ok("https://127.0.0.1/"));
        assert!(!http_ok("ftp://x/"));
    }

    #[test]
    fn command_readiness_runs_in_the_services_directory_and_environment() {
        let sb = sandbox();
        std::fs::write(sb.root.path.join("marker"), "").unwrap();
        let svc = prober(&sb.root.path, &[("MODE", "up")]);
        let cmd = |c: &str| probe(&sb.root, &svc, &Readiness::Command { command: c.into() });
        assert!(cmd("true"));
        assert!(!cmd("false"));
        assert!(!cmd("exit 2"));
        assert!(cmd("test -f marker"));
        assert!(cmd("test \"$MODE\" = up"));
        assert!(!cmd("test \"$MODE\" = down"));
    }

    #[test]
    fn tails_span_both_generations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(log_path(d, "s", "stdout"), "c\nd\n").unwrap();
        assert_eq!(tail(d, "s", "stdout", None), ("c\nd\n".into(), false));
        assert_eq!(tail(d, "s", "stdout", Some(2)), ("c\nd\n".into(), false));
        assert_eq!(tail(d, "s", "stdout", Some(1)), ("d\n".into(), true));
        std::fs::write(log_path(d, "s", "stdout.1"), "a\nb\n").unwrap();
        assert_eq!(tail(d, "s", "stdout", None), ("a\nb\nc\nd\n".into(), true));
        assert_eq!(tail(d, "s", "stdout", Some(3)), ("b\nc\nd\n".into(), true));
        assert_eq!(tail(d, "s", "stderr", Some(3)), (String::new(), false));
        assert_eq!(tail_text(d, "s", 1), "[stdout]\nd\n[stderr]\n".to_string());
    }

    #[test]
    fn logs_rotate_at_the_limit_keeping_two_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "s", "stdout");
        let first = vec![b'a'; LOG_ROTATE_BYTES as usize];
        log_pump(std::io::Cursor::new(first), path.clone());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), LOG_ROTATE_BYTES);
        assert!(!log_path(dir.path(), "s", "stdout.1").exists());
        // Appends, as a restarted service's pump does; the next byte over the limit rotates.
        log_pump(std::io::Cursor::new(b"more\n".to_vec()), path.clone());
        assert_eq!(std::fs::read(&path).unwrap(), b"more\n");
        let old = log_path(dir.path(), "s", "stdout.1");
        assert_eq!(std::fs::metadata(&old).unwrap().len(), LOG_ROTATE_BYTES);
        // A rotation replaces the older generation; no byte is lost from the newest two, and
        // neither file grows past the limit.
        log_pump(
            std::io::Cursor::new(vec![b'b'; LOG_ROTATE_BYTES as usize]),
            path.clone(),
        );
        let old_bytes = std::fs::read(&old).unwrap();
        let new_len = std::fs::metadata(&path).unwrap().len();
        assert!(old_bytes.starts_with(b"more\nb"));
        assert!(old_bytes.len() as u64 <= LOG_ROTATE_BYTES && new_len <= LOG_ROTATE_BYTES);
        assert_eq!(old_bytes.len() as u64 + new_len, LOG_ROTATE_BYTES + 5);
    }

    #[test]
    fn secrets_replace_the_set_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        install_secrets(&secrets, &set(&[("TOKEN", "t0p"), ("db.pass", "pw")])).unwrap();
        assert_eq!(
            std::fs::read_to_string(secrets.join("TOKEN")).unwrap(),
            "t0p"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secrets), 0o700);
        assert_eq!(mode(&secrets.join("TOKEN")), 0o400);
        install_secrets(&secrets, &set(&[("OTHER", "x")])).unwrap();
        assert!(!secrets.join("TOKEN").exists());
        assert_eq!(std::fs::read_to_string(secrets.join("OTHER")).unwrap(), "x");
        let e = install_secrets(&secrets, &set(&[("../escape", "x")])).unwrap_err();
        assert_eq!(e.kind, "bad_request");
        assert!(!dir.path().join("escape").exists());
    }
}
