//! PTY shells that outlive the connection (and the pyro process) that opened them.
//!
//! Output goes into a bounded ring buffer addressed by absolute byte cursors: a reader that
//! falls behind is told how many bytes it missed instead of silently getting a shifted stream.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pyro_protocol::{ShellInfo, ShellOpen};

use crate::exec::BASE_ENV;
use crate::files::{err, FileError, Root};
use crate::reaper::{self, Exit};

/// Bytes of output kept per shell.
pub const RING_BYTES: usize = 1 << 20;
/// Most shells per sandbox.
const MAX_SHELLS: usize = 64;

struct Ring {
    buf: VecDeque<u8>,
    /// Absolute cursor of `buf[0]`.
    start: u64,
}

impl Ring {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        let over = self.buf.len().saturating_sub(RING_BYTES);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

struct Shell {
    info: Mutex<ShellInfo>,
    ring: Mutex<Ring>,
    master: Mutex<std::fs::File>,
}

type Table = Mutex<HashMap<String, Arc<Shell>>>;

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn get(id: &str) -> Result<Arc<Shell>, FileError> {
    lock(table())
        .get(id)
        .cloned()
        .ok_or_else(|| err("not_found", format!("no shell {id:?}")))
}

fn snapshot(s: &Shell) -> ShellInfo {
    let mut info = lock(&s.info).clone();
    let ring = lock(&s.ring);
    info.total_bytes = ring.end();
    info.buffer_start = ring.start;
    info
}

/// Opens a shell: bash (or sh) on a new PTY, in its own session, in `cwd`.
pub fn open(root: &Root, req: &ShellOpen) -> Result<ShellInfo, FileError> {
    if lock(table()).len() >= MAX_SHELLS {
        return Err(err(
            "too_large",
            format!("at most {MAX_SHELLS} shells per sandbox"),
        ));
    }
    let cwd = match &req.cwd {
        Some(c) => {
            let rel = root.relative(c)?;
            root.path.join(rel)
        }
        None => root.path.clone(),
    };
    if !cwd.is_dir() {
        return Err(err(
            "bad_path",
            format!("{}: not a directory", cwd.display()),
        ));
    }
    let ws = nix::pty::Winsize {
        ws_row: req.rows.max(1),
        ws_col: req.cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let creds = crate::user::resolve(req.user.as_deref(), Path::new("/"))
        .map_err(|e| err("bad_request", e))?;
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| err("io", format!("openpty: {e}")))?;
    let (program, args): (&str, &[&str]) = if Path::new("/bin/bash").exists() {
        ("/bin/bash", &["--noprofile", "--norc", "-i"])
    } else {
        ("/bin/sh", &["-i"])
    };
    let slave: OwnedFd = pty.slave;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| err("io", format!("pty: {e}")))
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&cwd)
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .env("TERM", "xterm-256color")
        .env("PS1", "pyro$ ")
        .env("PROMPT_COMMAND", "")
        .envs(creds.iter().flat_map(|c| c.env()))
        .envs(&req.env)
        .stdin(dup(&slave)?)
        .stdout(dup(&slave)?)
        .stderr(dup(&slave)?);
    // SAFETY: pthread_sigmask, setsid and ioctl(TIOCSCTTY) are async-signal-safe and touch no
    // parent memory.
    unsafe {
        cmd.pre_exec(|| {
            // PID 1 blocks TERM/INT/PWR for its signal thread, and a forked child keeps that
            // mask through exec (posix_spawn resets it, fork does not): clear it, or Ctrl-C
            // would never reach the shell's jobs.
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // After the session and terminal are set up, which needs root's privileges.
    if let Some(c) = &creds {
        c.apply(&mut cmd);
    }
    let child = cmd
        .spawn()
        .map_err(|e| err("io", format!("start {program}: {e}")))?;
    drop(slave);
    let pid = child.id() as i32;
    reaper::want(pid);
    drop(child);
    let master = std::fs::File::from(pty.master);
    let reader = master
        .try_clone()
        .map_err(|e| err("io", format!("pty: {e}")))?;
    let id = format!("sh-{}", unique());
    let info = ShellInfo {
        shell_id: id.clone(),
        pid,
        state: "running".into(),
        exit_code: None,
        cwd: cwd.to_string_lossy().into_owned(),
        cols: ws.ws_col,
        rows: ws.ws_row,
        total_bytes: 0,
        buffer_start: 0,
    };
    let shell = Arc::new(Shell {
        info: Mutex::new(info),
        ring: Mutex::new(Ring {
            buf: VecDeque::new(),
            start: 0,
        }),
        master: Mutex::new(master),
    });
    lock(table()).insert(id.clone(), shell.clone());
    std::thread::spawn({
        let shell = shell.clone();
        move || pump(reader, &shell)
    });
    std::thread::spawn({
        let shell = shell.clone();
        move || {
            let code = match reaper::wait_for(pid) {
                Exit::Code(c) => c,
                Exit::Signal(s) => 128 + s,
            };
            let mut info = lock(&shell.info);
            info.state = "exited".into();
            info.exit_code = Some(code);
        }
    });
    Ok(snapshot(&shell))
}

fn pump(mut reader: std::fs::File, shell: &Shell) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => lock(&shell.ring).push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO once every process holding the slave side is gone.
            Err(_) => return,
        }
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Output from `cursor`: (bytes, where they start, next cursor, dropped bytes, info).
pub fn read(
    id: &str,
    cursor: u64,
    max: u64,
) -> Result<(Vec<u8>, u64, u64, u64, ShellInfo), FileError> {
    let shell = get(id)?;
    let ring = lock(&shell.ring);
    let from = cursor.clamp(ring.start, ring.end());
    let dropped = ring.start.saturating_sub(cursor);
    let offset = (from - ring.start) as usize;
    let n = (ring.buf.len() - offset).min(max as usize);
    let bytes: Vec<u8> = ring.buf.range(offset..offset + n).copied().collect();
    drop(ring);
    Ok((bytes, from, from + n as u64, dropped, snapshot(&shell)))
}

/// Types input into a shell.
pub fn write(id: &str, input: &str) -> Result<ShellInfo, FileError> {
    let shell = get(id)?;
    if lock(&shell.info).state != "running" {
        return Err(err("bad_request", format!("shell {id} is not running")));
    }
    lock(&shell.master)
        .write_all(input.as_bytes())
        .map_err(|e| err("io", format!("write to shell {id}: {e}")))?;
    Ok(snapshot(&shell))
}

fn parse_signal(name: &str) -> Result<Signal, FileError> {
    let n = name.trim().trim_start_matches("SIG").to_ascii_uppercase();
    Ok(match n.as_str() {
        "INT" => Signal::SIGINT,
        "TERM" => Signal::SIGTERM,
        "KILL" => Signal::SIGKILL,
        "HUP" => Signal::SIGHUP,
        "QUIT" => Signal::SIGQUIT,
        "TSTP" => Signal::SIGTSTP,
        "CONT" => Signal::SIGCONT,
        "USR1" => Signal::SIGUSR1,
        "USR2" => Signal::SIGUSR2,
        _ => {
            return Err(err(
                "bad_request",
                format!(
                "unsupported signal {name:?} (INT, TERM, KILL, HUP, QUIT, TSTP, CONT, USR1, USR2)"
            ),
            ))
        }
    })
}

/// Sends a signal: INT, QUIT and TSTP are typed as their control characters (^C, ^\\, ^Z),
/// so the terminal delivers them to the foreground job exactly as a keyboard would; the others
/// go to the shell's whole session.
pub fn signal(id: &str, name: &str) -> Result<ShellInfo, FileError> {
    let sig = parse_signal(name)?;
    let shell = get(id)?;
    let pid = lock(&shell.info).pid;
    let key: Option<&[u8]> = match sig {
        Signal::SIGINT => Some(b"\x03"),
        Signal::SIGQUIT => Some(b"\x1c"),
        Signal::SIGTSTP => Some(b"\x1a"),
        _ => None,
    };
    match key {
        Some(k) => lock(&shell.master)
            .write_all(k)
            .map_err(|e| err("io", format!("signal shell {id}: {e}")))?,
        None => {
            let _ = killpg(Pid::from_raw(pid), sig);
        }
    }
    Ok(snapshot(&shell))
}

/// Closes a shell: HUP to its session, then KILL; forgets it.
pub fn close(id: &str) -> Result<ShellInfo, FileError> {
    let shell = get(id)?;
    let pid = lock(&shell.info).pid;
    let _ = killpg(Pid::from_raw(pid), Signal::SIGHUP);
    let _ = killpg(Pid::from_raw(pid), Signal::SIGCONT);
    for _ in 0..50 {
        if lock(&shell.info).state != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    lock(table()).remove(id);
    let mut info = snapshot(&shell);
    if info.state == "running" {
        info.state = "closed".into();
    }
    Ok(info)
}

/// Every shell.
pub fn list() -> Vec<ShellInfo> {
    let shells: Vec<Arc<Shell>> = lock(table()).values().cloned().collect();
    let mut out: Vec<ShellInfo> = shells.iter().map(|s| snapshot(s)).collect();
    out.sort_by(|a, b| a.shell_id.cmp(&b.shell_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_absolute_cursors() {
        let mut r = Ring {
            buf: VecDeque::new(),
            start: 0,
        };
        r.push(&vec![b'a'; RING_BYTES]);
        r.push(b"xyz");
        assert_eq!(r.start, 3);
        assert_eq!(r.end(), RING_BYTES as u64 + 3);
    }

    #[test]
    fn signals_parse_with_or_without_sig() {
        assert_eq!(parse_signal("int").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("SEGV").is_err());
    }
}
