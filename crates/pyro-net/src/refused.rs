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

/// Most refusals returned or kept (newest kept).
pub const MAX_REFUSALS: usize = 200;

/// A refusal with its kernel log sequence number, which orders records and tells new ones from
/// those already kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Kept {
    seq: u64,
    at: String,
    protocol: String,
    source: String,
    destination: String,
    port: Option<u16>,
}

impl From<Kept> for Refusal {
    fn from(k: Kept) -> Refusal {
        Refusal {
            at: k.at,
            protocol: k.protocol,
            source: k.source,
            destination: k.destination,
            port: k.port,
        }
    }
}

/// Moves the refusals of sandbox `id` from the kernel log (a ring buffer that forgets) into
/// `file` (JSON lines, the newest [`MAX_REFUSALS`] kept), and returns everything kept, oldest
/// first. Called after each workspace exec and when the logs are read, so a refusal outlives
/// the kernel's buffer.
pub fn keep(id: &str, file: &std::path::Path) -> Vec<Refusal> {
    let mut kept: Vec<Kept> = std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = kept.iter().map(|k| k.seq).max();
    let fresh: Vec<Kept> = read_records(id)
        .into_iter()
        .filter(|k| last.is_none_or(|l| k.seq > l))
        .collect();
    if !fresh.is_empty() {
        kept.extend(fresh);
        if kept.len() > MAX_REFUSALS {
            kept.drain(..kept.len() - MAX_REFUSALS);
        }
        let text: String = kept
            .iter()
            .filter_map(|k| serde_json::to_string(k).ok())
            .map(|l| l + "\n")
            .collect();
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
    kept.into_iter().map(Refusal::from).collect()
}

/// The refusals of sandbox `id` still in the kernel log, oldest first. Empty when the log cannot
/// be read (not root, or `dmesg_restrict`).
pub fn read(id: &str) -> Vec<Refusal> {
    read_records(id).into_iter().map(Refusal::from).collect()
}

fn read_records(id: &str) -> Vec<Kept> {
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
    pyro_api::ids::now_ms() - mono_ms
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses one `/dev/kmsg` record (`prio,seq,usec,flags;message`).
fn parse_record(rec: &str, prefix: &str, boot_ms: i64) -> Option<Kept> {
    let (head, msg) = rec.split_once(';')?;
    let msg = msg.lines().next()?;
    let rest = msg.strip_prefix(prefix)?;
    let seq: u64 = head.split(',').nth(1)?.parse().ok()?;
    let usec: i64 = head.split(',').nth(2)?.parse().ok()?;
    let at_ms = boot_ms + usec / 1000;
    Some(Kept {
        seq,
        at: pyro_api::ids::rfc3339((at_ms.max(0) / 1000) as u64),
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
        assert_eq!(r.seq, 1234);
        assert!(r.at.starts_with("2001-09-09T01:46:45"), "{}", r.at);
        assert!(parse_record(rec, &log_prefix("000000000000"), 0).is_none());
    }

    #[test]
    fn kept_refusals_are_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("network-refused.jsonl");
        let line = |seq: u64, port: u16| {
            format!(
                "{{\"seq\":{seq},\"at\":\"2026-01-01T00:00:00Z\",\"protocol\":\"tcp\",\"source\":\"10.0.0.2\",\"destination\":\"10.0.0.1\",\"port\":{port}}}\n"
            )
        };
        std::fs::write(&file, line(7, 22) + &line(9, 80) + "junk\n").unwrap();
        // No kernel record carries this id's prefix: only what was kept comes back.
        let r = keep("0000000000ff", &file);
        assert_eq!(
            r.iter().map(|r| r.port).collect::<Vec<_>>(),
            [Some(22), Some(80)]
        );
    }
}
