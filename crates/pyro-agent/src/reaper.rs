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

#[cfg(test)]
mod tests {
    //! The registry driven directly, with real children of the test process. Only the last
    //! test starts the reaper thread; the others play its part by calling `file`, or leave the
    //! reaping to `wait_for`. Fake pids are negative, so they never meet a real child's.

    use std::process::Command;

    use nix::sys::signal::Signal;

    use super::*;

    // Reaped through the registry, never through `Child::wait`, as exec does.
    #[allow(clippy::zombie_processes)]
    fn spawn(line: &str) -> i32 {
        let child = Command::new("/bin/sh").arg("-c").arg(line).spawn().unwrap();
        child.id() as i32
    }

    fn is_filed(pid: i32) -> bool {
        registry()
            .filed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&pid)
    }

    fn is_wanted(pid: i32) -> bool {
        registry()
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pid)
    }

    #[test]
    fn wait_statuses_map_to_exits() {
        let p = Pid::from_raw(42);
        assert_eq!(to_exit(WaitStatus::Exited(p, 3)), Some((42, Exit::Code(3))));
        assert_eq!(
            to_exit(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((42, Exit::Signal(libc::SIGKILL)))
        );
        assert_eq!(
            to_exit(WaitStatus::Signaled(p, Signal::SIGSEGV, true)),
            Some((42, Exit::Signal(libc::SIGSEGV)))
        );
        assert_eq!(to_exit(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(to_exit(WaitStatus::Continued(p)), None);
        assert_eq!(to_exit(WaitStatus::StillAlive), None);
    }

    #[test]
    fn wait_for_reaps_its_own_child_when_nobody_else_has() {
        #[track_caller]
        fn check(line: &str, want_exit: Exit) {
            let pid = spawn(line);
            want(pid);
            assert_eq!(wait_for(pid), want_exit, "{line}");
            assert!(!is_wanted(pid), "{line}: still wanted");
            assert!(!is_filed(pid), "{line}: still filed");
        }
        check("exit 0", Exit::Code(0));
        check("exit 7", Exit::Code(7));
        check("kill -TERM $$", Exit::Signal(libc::SIGTERM));
        check("kill -KILL $$", Exit::Signal(libc::SIGKILL));
    }

    #[test]
    fn wait_for_takes_a_status_the_reaper_filed() {
        let pid = spawn("exit 9");
        want(pid);
        // Play the reaper: reap the child and file its status before the exec asks.
        let (p, exit) = to_exit(waitpid(Pid::from_raw(pid), None).unwrap()).unwrap();
        assert_eq!(p, pid);
        file(pid, exit);
        assert!(is_filed(pid));
        assert_eq!(wait_for(pid), Exit::Code(9));
        assert!(!is_filed(pid) && !is_wanted(pid));
    }

    #[test]
    fn wait_for_waits_for_a_status_filed_later() {
        let pid = -1001;
        want(pid);
        let filer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            file(pid, Exit::Signal(libc::SIGTERM));
        });
        assert_eq!(wait_for(pid), Exit::Signal(libc::SIGTERM));
        filer.join().unwrap();
        assert!(!is_wanted(pid));
    }

    #[test]
    fn unwanted_statuses_expire_and_wanted_ones_stay() {
        let old = Instant::now()
            .checked_sub(UNWANTED_TTL + Duration::from_secs(1))
            .expect("the monotonic clock is older than the TTL");
        let (unwanted, wanted, fresh) = (-2001, -2002, -2003);
        want(wanted);
        {
            let mut filed = registry().filed.lock().unwrap();
            filed.insert(unwanted, (Exit::Code(1), old));
            filed.insert(wanted, (Exit::Code(2), old));
            filed.insert(fresh, (Exit::Code(3), Instant::now()));
        }
        // Filing anything sweeps the expired statuses.
        file(-2004, Exit::Code(4));
        assert!(!is_filed(unwanted), "an old unwanted status is kept");
        assert!(is_filed(wanted) && is_filed(fresh) && is_filed(-2004));
        assert_eq!(wait_for(wanted), Exit::Code(2));
    }

    #[test]
    fn the_reaper_thread_reaps_every_child_and_files_it() {
        start();
        // A child nobody asked for is still reaped (no zombie is left) and filed.
        let stray = spawn("exit 3");
        let until = Instant::now() + Duration::from_secs(20);
        while !is_filed(stray) {
            assert!(Instant::now() < until, "the stray child was never reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::fs::metadata(format!("/proc/{stray}")).is_err());
        // A wanted child gets its own status, whoever reaps it first.
        for code in 0..5 {
            let pid = spawn(&format!("exit {code}"));
            want(pid);
            assert_eq!(wait_for(pid), Exit::Code(code));
        }
    }
}
