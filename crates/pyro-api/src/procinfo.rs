//! Process identity that survives pid reuse: a pid is only "the same process" when its start
//! time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) matches too. Signals go
//! through pidfds, so a process that exited and whose pid was reused is never hit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A process known by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> ProcessId {
        let pid = std::process::id() as i32;
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Looks up a live process by pid.
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start| ProcessId { pid, start })
    }

    /// Whether this exact process is still alive (and not a zombie).
    pub fn is_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                parse_stat(&stat).is_some_and(|(state, start)| start == self.start && state != 'Z')
            }
            Err(_) => false,
        }
    }
}

/// The start time of a live process.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Parses the state letter and start time out of a `/proc/<pid>/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 19 fields further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Sends `signal` to a process through a pidfd (immune to pid reuse) and waits up to `timeout`
/// for it to exit. True when it is gone.
pub fn signal_and_wait(p: ProcessId, signal: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) };
    if fd < 0 {
        return !p.is_alive();
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names the process we opened; check it is still the one we recorded.
    if !p.is_alive() {
        return true;
    }
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return !p.is_alive();
    }
    wait_exit(&fd, timeout)
}

/// Waits until the process behind a pidfd exits, up to `timeout`.
fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    n == 1
}

/// Waits up to `timeout` for a process to exit by itself. True when it is gone.
pub fn wait_gone(p: ProcessId, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) };
    if fd < 0 {
        return !p.is_alive();
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !p.is_alive() {
        return true;
    }
    wait_exit(&fd, timeout)
}

/// Ends a process: SIGTERM, up to `grace` to exit, then SIGKILL. True when it is gone.
pub fn terminate(p: ProcessId, grace: Duration) -> bool {
    signal_and_wait(p, libc::SIGTERM, grace)
        || signal_and_wait(p, libc::SIGKILL, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
    }

    #[test]
    fn current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        assert!(!ProcessId {
            start: me.start + 1,
            ..me
        }
        .is_alive());
        assert!(!ProcessId {
            pid: i32::MAX,
            start: 0
        }
        .is_alive());
    }
}
