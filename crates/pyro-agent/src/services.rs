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
        std::thread::sleep(Duration::from_millis(100));
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
