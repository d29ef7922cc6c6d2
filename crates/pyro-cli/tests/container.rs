//! End-to-end `pyro run` on the container level: real debian:12 root filesystems, real runc,
//! the real agent. These need root and runc; without them each test says why it skipped (and
//! fails instead under PYRO_TEST_CONTAINER=1, as in CI).

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::time::Duration;

use base64::Engine;
use util::{host_traces, signal, start_long_run, stderr, stdout, TestPyro};

fn run_json(p: &TestPyro, cmd: &[&str]) -> (std::process::Output, serde_json::Value) {
    let mut args = vec!["run", "debian:12", "--isolation", "container", "--"];
    args.extend_from_slice(cmd);
    p.json(&args)
}

fn assert_gone(p: &TestPyro, v: &serde_json::Value) {
    let id = v["sandbox_id"].as_str().expect("sandbox_id");
    assert_eq!(v["cleanup"]["deleted"], true, "cleanup: {}", v["cleanup"]);
    assert_eq!(
        host_traces(id),
        Vec::<String>::new(),
        "sandbox {id} left traces"
    );
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn git_version_runs_in_debian_12_with_a_structured_result() {
    require_containers!();
    let p = TestPyro::new();
    let out = p.run(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--",
        "git",
        "--version",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("git version 2.39"),
        "stdout: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("[run] phase=create"), "{err}");
    assert!(err.contains("isolation=container"), "{err}");

    let (out, v) = run_json(&p, &["sh", "-c", "cat /etc/debian_version; echo oops >&2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(v["stdout"].as_str().unwrap().starts_with("12."), "{v}");
    assert_eq!(v["stderr"], "oops\n");
    assert_eq!(v["environment"], "debian:12");
    assert_eq!(v["isolation"], "container");
    assert_eq!(v["backend"], "container");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["timed_out"], false);
    for k in ["create_ms", "boot_ms", "exec_ms", "total_ms"] {
        assert!(v["timing"][k].is_u64(), "timing.{k} missing: {v}");
    }
    assert!(v["environment_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_gone(&p, &v);
}

#[test]
fn guest_exit_code_becomes_pyros_and_the_sandbox_is_still_removed() {
    require_containers!();
    let p = TestPyro::new();
    let (out, v) = run_json(&p, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(v["exit_code"], 7);
    assert_gone(&p, &v);
}

#[test]
fn command_not_found_exits_127_like_a_shell() {
    require_containers!();
    let p = TestPyro::new();
    let (out, v) = run_json(&p, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(v["stderr"].as_str().unwrap().contains("not found"));
    assert_gone(&p, &v);
}

#[test]
fn arguments_with_shell_metacharacters_are_passed_literally() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = run_json(
        &p,
        &[
            "printf",
            "%s|",
            "$(touch /tmp/pwned)",
            ";",
            "&&",
            "it's",
            "a b",
        ],
    );
    assert_eq!(v["stdout"], "$(touch /tmp/pwned)|;|&&|it's|a b|");
    let (_, v) = run_json(
        &p,
        &["sh", "-c", "test -e /tmp/pwned && echo yes || echo no"],
    );
    assert_eq!(v["stdout"], "no\n");
}

#[test]
fn a_state_path_with_shell_metacharacters_works() {
    require_containers!();
    // overlayfs cannot take ',' or ':' in its paths, so those are refused cleanly elsewhere;
    // everything else a shell would interpret must just work.
    let p = TestPyro::with_home_name("we ird $(touch x);'\"&|");
    let (out, v) = run_json(&p, &["echo", "ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(v["stdout"], "ok\n");
    assert_gone(&p, &v);
    assert!(!p.dir.path().join("x").exists());
}

#[test]
fn non_utf8_output_is_recoverable_from_json() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = run_json(&p, &["printf", "a\\377\\000b"]);
    let exact = base64::engine::general_purpose::STANDARD
        .decode(v["stdout_base64"].as_str().expect("stdout_base64"))
        .unwrap();
    assert_eq!(exact, b"a\xff\x00b");
    assert_eq!(v["stdout"], "a\u{fffd}\u{0}b");
    // Human mode passes the raw bytes through untouched.
    let out = p.run(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--",
        "printf",
        "a\\377b",
    ]);
    assert_eq!(out.stdout, b"a\xffb");
}

#[test]
fn a_hundred_megabytes_of_output_is_capped_and_memory_stays_bounded() {
    require_containers!();
    let p = TestPyro::new();
    let (out, v) = run_json(&p, &["head", "-c", "100000000", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["truncated"], true);
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20);
    // Peak memory of the pyro process (the only child this test waited for).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let max_rss_mib = ru.ru_maxrss / 1024;
    assert!(
        max_rss_mib < 64,
        "pyro used {max_rss_mib} MiB for 100 MB of output"
    );
    assert_gone(&p, &v);
}

#[test]
fn timeout_kills_the_command_keeps_partial_output_and_leaves_nothing() {
    require_containers!();
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "echo started; trap '' TERM; sleep 600 & sleep 600",
    ]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(v["timed_out"], true);
    assert_eq!(v["stdout"], "started\n");
    assert_gone(&p, &v);
}

#[test]
fn unknown_environment_is_a_clear_error_and_leaves_nothing() {
    let p = TestPyro::new();
    let (out, v) = p.json(&[
        "run",
        "debian:99; rm -rf /",
        "--isolation",
        "container",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let kind = v["error"]["kind"].as_str().unwrap();
    // Without container prerequisites the isolation check may answer first; both are clean.
    assert!(
        kind == "unknown_environment" || kind == "isolation_unavailable",
        "{v}"
    );
    if kind == "unknown_environment" {
        assert!(v["error"]["hint"].as_str().unwrap().contains("debian:12"));
    }
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn empty_command_is_a_usage_error() {
    let p = TestPyro::new();
    let (out, v) = p.json(&["run", "debian:12", "--isolation", "container"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("command is required"),
        "{v}"
    );
    assert_eq!(v["error"]["kind"], "invalid_request");
}

#[test]
fn asking_for_a_level_the_host_cannot_give_names_the_ones_it_can() {
    let p = TestPyro::new();
    let (_, d) = p.json(&["doctor"]);
    let microvm_usable = d["isolation_levels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["level"] == "microvm" && l["usable"] == true);
    if microvm_usable {
        eprintln!(
            "SKIPPED: this host can give microvm, so there is no unavailable level to ask for"
        );
        return;
    }
    let (out, v) = p.json(&["run", "debian:12", "--isolation", "microvm", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "isolation_unavailable");
    assert!(v["error"]["message"].as_str().unwrap().contains("microvm"));
    if util::container_prerequisites().is_none() {
        assert!(
            v["error"]["hint"].as_str().unwrap().contains("container"),
            "{v}"
        );
    }
    // The default level is microvm too: nothing falls back silently.
    let (out, v) = p.json(&["run", "debian:12", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "isolation_unavailable");
}

#[test]
fn the_sandbox_has_no_network_but_loopback() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = run_json(&p, &["sh", "-c", "ls /sys/class/net; echo routes=$(tail -n +2 /proc/net/route | wc -l); getent ahosts deb.debian.org && echo RESOLVED || echo unreachable"]);
    assert_eq!(v["stdout"], "lo\nroutes=0\nunreachable\n", "{v}");
}

#[test]
fn deleting_usr_does_not_touch_the_environment() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = run_json(
        &p,
        &[
            "sh",
            "-c",
            "rm -rf /usr/bin/git /usr/lib/git-core && ! command -v git && echo deleted",
        ],
    );
    assert_eq!(v["stdout"], "deleted\n", "{v}");
    let (out, v) = run_json(&p, &["git", "--version"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(v["stdout"].as_str().unwrap().starts_with("git version"));
}

#[test]
fn a_fork_bomb_hits_the_pids_limit_and_the_host_is_unaffected() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--timeout",
        "5",
        "--",
        "bash",
        "-c",
        "b() { b | b & }; b; sleep 3; echo survived",
    ]);
    assert_eq!(v["limits"]["pids_max"], 1024, "{v}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("retry: Resource temporarily unavailable")
            || v["stderr"].as_str().unwrap().contains("fork"),
        "the pids limit never bit: {v}"
    );
    assert_gone(&p, &v);
    // The host still forks fine and the next sandbox works.
    let (out, v) = run_json(&p, &["echo", "fine"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["stdout"], "fine\n");
}

#[test]
fn the_sandbox_runs_unprivileged_with_seccomp_and_no_new_privs() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = run_json(&p, &["sh", "-c", "id -u; awk '{print $2}' /proc/self/uid_map; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t ' ' '; grep CapEff /proc/self/status | tr -s '\\t ' ' '; unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-denied; mkdir -p /mnt/x; mount -t tmpfs none /mnt/x 2>/dev/null && echo mount-ok || echo mount-denied; hostname"]);
    let out = v["stdout"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(
        lines[1], "100000",
        "root must map to an unprivileged host uid: {out}"
    );
    assert_eq!(lines[2], "NoNewPrivs: 1");
    assert_eq!(lines[3], "Seccomp: 2");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT
    assert_eq!(lines[4], "CapEff: 00000000000405fb", "{out}");
    assert_eq!(lines[5], "unshare-denied");
    assert_eq!(lines[6], "mount-denied");
    assert!(lines[7].starts_with("pyro-"), "{out}");
}

#[test]
fn limits_are_applied_and_reported() {
    require_containers!();
    let p = TestPyro::new();
    let (_, v) = p.json(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--mem",
        "256",
        "--vcpu",
        "2",
        "--",
        "true",
    ]);
    let l = &v["limits"];
    assert_eq!(l["memory_bytes"], 256u64 * 1024 * 1024, "{v}");
    assert_eq!(l["cpus"], 2.0);
    assert_eq!(l["pids_max"], 1024);
    assert!(l["cgroup"] == "v1" || l["cgroup"] == "v2");
    assert_eq!(l["not_applied"], serde_json::json!([]));
}

/// Signals a running `pyro run` and checks it exits with `code` leaving nothing behind.
fn assert_signal_cleans_up(guest: &str, sig: i32, code: i32) {
    let p = TestPyro::new();
    let (mut child, id) = start_long_run(&p, "container", guest, Duration::from_secs(120));
    signal(&child, sig);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code));
    assert_eq!(host_traces(&id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn sigterm_to_pyro_removes_a_sandbox_whose_guest_ignores_sigterm() {
    require_containers!();
    assert_signal_cleans_up(
        "trap '' TERM INT; echo READY; while :; do sleep 1; done",
        libc::SIGTERM,
        143,
    );
}

#[test]
fn sigint_to_pyro_removes_the_sandbox() {
    require_containers!();
    assert_signal_cleans_up("echo READY; sleep 600", libc::SIGINT, 130);
}

#[test]
fn a_killed_pyro_leaves_a_sandbox_that_gc_removes() {
    require_containers!();
    let p = TestPyro::new();
    let (mut child, id) = start_long_run(
        &p,
        "container",
        "echo READY; sleep 600",
        Duration::from_secs(120),
    );
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(
        !host_traces(&id).is_empty(),
        "a SIGKILLed pyro cannot clean up; the test expects traces"
    );
    let (out, v) = p.json(&["gc"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    // `Pyro::open` sweeps before the explicit gc runs, so the sandbox is gone either way.
    assert_eq!(host_traces(&id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

/// `pyro run … -- CMD…` in human mode, with `input` piped to its stdin (`None`: /dev/null).
fn run_piped(p: &TestPyro, flags: &[&str], cmd: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut args = vec!["run", "debian:12", "--isolation", "container"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    let mut child = p
        .cmd(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // From a thread: the command may stop reading (or never start) before all of it is written.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn piped_stdin_reaches_the_command_unless_no_stdin() {
    require_containers!();
    let p = TestPyro::new();
    let out = run_piped(&p, &[], &["cat"], b"hi\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");
    let out = run_piped(&p, &["--no-stdin"], &["cat"], b"hi\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    // Streamed, not buffered: more than any pipe holds, and its hash comes out right.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let out = run_piped(&p, &[], &["sha256sum"], &big);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    assert_eq!(stdout(&out), format!("{want}  -\n"));
    // A command that never reads its stdin ends as usual.
    let out = run_piped(&p, &["--json"], &["true"], &big);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn passed_through_output_is_whole_and_a_capped_result_says_so() {
    require_containers!();
    let p = TestPyro::new();
    let three_mib = "head -c 3145728 /dev/zero | tr '\\0' x";
    let out = p.run(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--",
        three_mib,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 3 << 20);
    assert!(out.stdout.iter().all(|b| *b == b'x'));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    // Captured, the result is cut at the cap, and stderr says so.
    let (out, v) = run_json(&p, &[three_mib]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20);
    assert!(
        stderr(&out)
            .contains("[run] warning: stdout truncated at 1048576 bytes (--max-output-bytes)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_single_argument_is_a_shell_command_line() {
    require_containers!();
    let p = TestPyro::new();
    let (out, v) = run_json(&p, &["echo $((6*7)) | cat"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["stdout"], "42\n");
    assert_eq!(v["command"], "echo $((6*7)) | cat");
    let (_, v) = run_json(&p, &["printf \"%s\\n\" \"a b\""]);
    assert_eq!(v["stdout"], "a b\n", "{v}");
    // Several arguments keep their quoting: each is one word.
    let (_, v) = run_json(&p, &["printf", "%s\\n", "a b", "$HOME"]);
    assert_eq!(v["stdout"], "a b\n$HOME\n", "{v}");
    assert_eq!(v["command"], "printf '%s\\n' 'a b' '$HOME'");
}

/// The escape attempts once checked by hand: host files, devices, mounts and other sandboxes'
/// processes are out of reach from inside a sandbox.
#[test]
fn host_files_devices_mounts_and_other_sandboxes_are_out_of_reach() {
    require_containers!();
    let p = TestPyro::new();
    // A secret on the host, and a process of another sandbox (a workspace service).
    let secret = p.dir.path().join("host-secret.txt");
    std::fs::write(&secret, "host-only\n").unwrap();
    let (ws, _) = p.create_workspace(&[]);
    let (out, v) = p.json(&[
        "workspace",
        "service",
        "start",
        &ws,
        "other",
        "--",
        "sleep 4321",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let probe = [
        format!("cat {} 2>/dev/null || echo no-host-file", secret.display()),
        // Exactly the service's command line, which this probe's own does not equal.
        "for f in /proc/[0-9]*/cmdline; do [ \"$(tr '\\0' ' ' < $f)\" = 'sleep 4321 ' ] && echo seen; done | wc -l".into(),
        "mknod /tmp/disk b 8 0 2>/dev/null && echo mknod-ok || echo mknod-denied".into(),
        "ls /dev | tr '\\n' ' '; echo".into(),
        "tr '\\0' ' ' < /proc/1/cmdline; echo".into(),
        "mount -o remount,rw / 2>/dev/null && echo remount-ok || echo remount-denied".into(),
    ]
    .join("; ");
    // The same probe inside the service's own workspace does see it (the probe works).
    let (_, own) = p.json(&["workspace", "exec", &ws, "--", "sh", "-c", &probe]);
    let own_lines: Vec<String> = own["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(own_lines.get(1).map(String::as_str), Some("1"), "{own}");
    let (_, v) = run_json(&p, &["sh", "-c", &probe]);
    let stdout = v["stdout"].as_str().unwrap_or_default().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{v}");
    assert_eq!(lines[0], "no-host-file", "{stdout}");
    assert_eq!(
        lines[1], "0",
        "another sandbox's process is visible: {stdout}"
    );
    assert_eq!(lines[2], "mknod-denied", "{stdout}");
    // Only the usual pseudo-devices: no disks, no /dev/kvm, no /dev/mem.
    for dev in lines[3].split_whitespace() {
        assert!(
            [
                "console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                "stderr", "stdin", "stdout", "tty", "urandom", "zero"
            ]
            .contains(&dev),
            "unexpected device /dev/{dev}: {stdout}"
        );
    }
    assert!(
        lines[4].contains("pyro-agent"),
        "PID 1 is not the agent: {stdout}"
    );
    assert_eq!(lines[5], "remount-denied", "{stdout}");
    let (out, _) = p.json(&["workspace", "delete", &ws]);
    assert_eq!(out.status.code(), Some(0));
}
