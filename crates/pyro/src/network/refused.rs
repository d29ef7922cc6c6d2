//! Refused connections, read back from the kernel log where each sandbox's `refuse` chain
//! writes them with its own prefix (nftables' `log` statement; the kernel log is the one place a
//! packet decision can be recorded without a daemon of ours in the data path).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use serde::Serialize;

use super::rules::log_prefix;

/// One connection attempt the sandbox's rules refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// When, as an RFC 3339 UTC time.
    pub at: String,
    /// `tcp`, `udp`, `icmp`, … (lowercase, as the kernel names it).
    pub protocol: String,
    /// Source address (the guest).
    pub source: String,
    /// Destination address.
    pub destination: String,
    /// Destination port, for TCP and UDP.
    pub port: Option<u16>,
}

/// Most refusals returned (newest kept).
pub const MAX_REFUSALS: usize = 200;

/// The refusals of sandbox `id` still in the kernel log, oldest first. Empty when the log cannot
/// be read (not root, or `dmesg_restrict`).
pub fn read(id: &str) -> Vec<Refusal> {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let prefix = log_prefix(id);
    let boot_ms = boot_time_ms();
    let mut out = Vec::new();
    // Each read returns one record; EAGAIN ends the buffer; EPIPE means records were
    // overwritten while reading, and reading simply goes on.
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(r) = parse_record(&rec, &prefix, boot_ms) {
                    out.push(r);
                    if out.len() > MAX_REFUSALS {
                        out.remove(0);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Wall-clock time of boot in Unix milliseconds (kernel log stamps count from boot).
fn boot_time_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_ms = ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000;
    crate::store::now_ms() - mono_ms
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses one `/dev/kmsg` record (`prio,seq,usec,flags;message`).
fn parse_record(rec: &str, prefix: &str, boot_ms: i64) -> Option<Refusal> {
    let (head, msg) = rec.split_once(';')?;
    let msg = msg.lines().next()?;
    let rest = msg.strip_prefix(prefix)?;
    let usec: i64 = head.split(',').nth(2)?.parse().ok()?;
    let at_ms = boot_ms + usec / 1000;
    Some(Refusal {
        at: crate::env::rfc3339((at_ms.max(0) / 1000) as u64),
        protocol: field(rest, "PROTO")
            .unwrap_or(if rest.contains("SRC=") { "ip" } else { "ipv6" })
            .to_ascii_lowercase(),
        source: field(rest, "SRC").unwrap_or("").to_string(),
        destination: field(rest, "DST").unwrap_or("").to_string(),
        port: field(rest, "DPT").and_then(|p| p.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_records_become_refusals() {
        let rec = "6,1234,5000000,-;pyro-abcdefabcdef refused: IN=pyvabcdefabcdef OUT=eth0 MAC=aa SRC=10.213.0.6 DST=203.0.113.80 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF PROTO=TCP SPT=40000 DPT=443 WINDOW=64240 RES=0x00 SYN URGP=0 \n";
        let r = parse_record(rec, &log_prefix("abcdefabcdef"), 1_000_000_000_000).unwrap();
        assert_eq!(r.protocol, "tcp");
        assert_eq!(r.source, "10.213.0.6");
        assert_eq!(r.destination, "203.0.113.80");
        assert_eq!(r.port, Some(443));
        assert!(r.at.starts_with("2001-09-09T01:46:45"), "{}", r.at);
        assert!(parse_record(rec, &log_prefix("000000000000"), 0).is_none());
    }
}
