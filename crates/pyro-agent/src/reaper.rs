//! Collects the exit status of every child, and of orphans re-parented to us as PID 1.
//!
//! As PID 1 the agent must reap every zombie in the sandbox, but a blanket `waitpid(-1)` would
//! also steal the status of the commands it runs on purpose. So one thread reaps everything and
//! files each status here; an exec that wants its own child's status either reaps it directly
//! (`waitpid(pid)`) or finds it filed, whichever happens first.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the status of a pid nobody asked for is kept.
const UNWANTED_TTL: Duration = Duration::from_secs(30);

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

struct Registry {
    /// Statuses reaped by the reaper thread, with when they were filed. A child can end before
    /// its exec marks it wanted, so every status is filed and unwanted ones expire.
    filed: Mutex<HashMap<i32, (Exit, Instant)>>,
    changed: Condvar,
    /// Pids whose status an exec is waiting for.
    wanted: Mutex<std::collections::HashSet<i32>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        filed: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
        wanted: Mutex::new(Default::default()),
    })
}

fn to_exit(s: WaitStatus) -> Option<(i32, Exit)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig as i32))),
        _ => None,
    }
}

/// Starts the reaper thread. Call once, before spawning any child.
pub fn start() {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(s) => {
                    if let Some((pid, exit)) = to_exit(s) {
                        file(pid, exit);
                    }
                }
                // No children right now: nothing to reap until an exec spawns one, and an exec
                // can reap its own child, so a short sleep costs no latency.
                Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        })
        .expect("spawning the reaper thread");
}

fn file(pid: i32, exit: Exit) {
    let r = registry();
    let wanted = r.wanted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut filed = r.filed.lock().unwrap_or_else(|e| e.into_inner());
    filed.retain(|p, (_, at)| wanted.contains(p) || at.elapsed() < UNWANTED_TTL);
    filed.insert(pid, (exit, Instant::now()));
    drop(filed);
    r.changed.notify_all();
}

/// Marks a pid as one whose status will be asked for. Call right after spawning.
pub fn want(pid: i32) {
    registry()
        .wanted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
}

/// Waits for a wanted child's status, reaping it directly if the reaper has not.
pub fn wait_for(pid: i32) -> Exit {
    let r = registry();
    loop {
        {
            let mut filed = r.filed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((exit, _)) = filed.remove(&pid) {
                r.wanted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pid);
                return exit;
            }
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(s) => {
                if let Some((_, exit)) = to_exit(s) {
                    r.wanted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&pid);
                    return exit;
                }
            }
            // The reaper took it (or is about to file it): wait for the filing.
            Err(Errno::ECHILD) => {}
            Err(_) => {}
        }
        let filed = r.filed.lock().unwrap_or_else(|e| e.into_inner());
        let _ = r
            .changed
            .wait_timeout(filed, Duration::from_millis(5))
            .unwrap_or_else(|e| e.into_inner());
    }
}
