//! End-to-end `pyro run` on the vm-emulated level: real QEMU (TCG) boots of the real guest
//! kernel, the real agent as PID 1 from its initramfs, and debian:12's ext4 image. Boots under
//! emulation are slow, so each test boots as few VMs as it can and checks several things per
//! boot. Without QEMU, vhost-device-vsock, the guest kernel or the static agent the tests say why
//! they skipped (and fail instead under PYRO_TEST_VM=1, as in CI). No test asserts speed.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::time::Duration;

use util::{signal, start_long_run, vm_tests_enabled, vm_traces, TestPyro};

macro_rules! require_vm {
    () => {
        if !vm_tests_enabled(module_path!()) {
            return;
        }
    };
}

fn run_vm(p: &TestPyro, extra: &[&str], cmd: &[&str]) -> (std::process::Output, serde_json::Value) {
    let mut args = vec!["run", "debian:12", "--isolation", "vm-emulated"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    p.json(&args)
}

#[test]
fn vm_emulated_runs_git_passes_exit_codes_times_out_and_leaves_nothing() {
    require_vm!();
    let p = TestPyro::new();

    // Boot 1: the README's command, the guest's view of itself, and exit code passthrough.
    let script = "git --version; echo root=$(findmnt -no FSTYPE /); \
                  echo disks=$(cat /sys/block/vd*/ro | tr -d '\\n'); \
                  echo pid1=$(cat /proc/1/comm); echo lo=$(cat /sys/class/net/lo/flags); \
                  echo hi > /etc/written && cat /etc/written; exit 7";
    let (out, v) = run_vm(&p, &[], &["sh", "-c", script]);
    let so = v["stdout"].as_str().unwrap_or_default();
    assert_eq!(out.status.code(), Some(7), "{v}");
    assert_eq!(v["exit_code"], 7, "{v}");
    assert_eq!(v["isolation"], "vm-emulated");
    assert_eq!(v["backend"], "qemu");
    assert!(so.starts_with("git version 2."), "{so}");
    assert!(so.contains("root=overlay"), "{so}");
    // One read-only disk (the shared environment image) and one writable one.
    assert!(so.contains("disks=10") || so.contains("disks=01"), "{so}");
    assert!(
        so.contains("pid1=init"),
        "the agent is PID 1 (run as /init): {so}"
    );
    assert!(so.contains("\nhi\n"), "{so}");
    // Loopback is up (IFF_UP | IFF_LOOPBACK), as on the container level.
    assert!(so.contains("lo=0x9"), "{so}");
    assert_eq!(v["cleanup"]["deleted"], true, "{v}");
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());

    // Boot 2: a timeout kills the command, keeps partial output, and the VM still goes away.
    let (out, v) = run_vm(
        &p,
        &["--timeout", "3"],
        &["sh", "-c", "echo before; sleep 300"],
    );
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(out.status.code(), Some(124), "{v}");
    assert_eq!(v["stdout"], "before\n");
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());
    // The environment image was written once and is shared; nothing of the runs is in it.
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn a_killed_pyro_leaves_a_vm_that_gc_removes_and_sigterm_removes_it_at_once() {
    require_vm!();
    let p = TestPyro::new();
    let (mut child, id) = start_long_run(
        &p,
        "vm-emulated",
        "echo READY; sleep 600",
        Duration::from_secs(300),
    );
    // As root, QEMU drops to the sandbox's own uid with no capabilities once the VM is set up,
    // and vhost-device-vsock (which maps all guest memory) runs under it from the start.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for vmm in ["qemu-system", "vhost-device-vsock"] {
        if !root {
            break;
        }
        let helper = util::processes_mentioning(&format!("/sandboxes/{id}/"))
            .into_iter()
            .find(|l| l.contains(vmm))
            .unwrap_or_else(|| panic!("{vmm} process"));
        let pid: u32 = helper
            .trim_start_matches("pid ")
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap()
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let uids = field("Uid:");
        assert!(
            uids.iter().all(|u| u != "0"),
            "{vmm} runs as root: {uids:?}"
        );
        assert_eq!(
            field("CapEff:"),
            ["0000000000000000"],
            "{vmm} keeps capabilities"
        );
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let traces = vm_traces(&p, &id);
    assert!(
        traces.iter().any(|t| t.contains("qemu-system"))
            && traces.iter().any(|t| t.contains("vhost-device-vsock")),
        "a SIGKILLed pyro cannot clean up; the VM should still run: {traces:?}"
    );
    let (o, v) = p.json(&["gc"]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());

    // SIGTERM to pyro: it removes the VM itself and exits 143.
    let (mut child, id) = start_long_run(
        &p,
        "vm-emulated",
        "echo READY; sleep 600",
        Duration::from_secs(300),
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn doctor_boot_boots_a_test_vm_and_removes_it() {
    require_vm!();
    let p = TestPyro::new();
    let (out, v) = p.json(&["doctor", "--boot"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let boots = v["vm"]["test_boots"].as_array().unwrap();
    let b = boots.iter().find(|b| b["level"] == "vm-emulated").unwrap();
    assert_eq!(b["ok"], true, "{b}");
    assert!(b["boot_ms"].as_u64().is_some(), "{b}");
    assert!(v["vm"]["kernel"].is_string(), "{v}");
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn a_workspace_lives_in_a_vm_across_stop_start_and_reset() {
    require_vm!();
    let p = TestPyro::new();
    let seed = p.dir.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("a.txt"), "seeded\n").unwrap();
    let ws = |args: &[&str]| {
        let mut a = vec!["workspace"];
        a.extend_from_slice(args);
        let (out, v) = p.json(&a);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {v}");
        v
    };
    let v = ws(&[
        "create",
        "debian:12",
        "--isolation",
        "vm-emulated",
        "--seed-path",
        seed.to_str().unwrap(),
        "--secret",
        "TOKEN=vm-secret-42",
    ]);
    let id = v["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(v["isolation"], "vm-emulated");
    assert_eq!(v["backend"], "qemu");
    let v = ws(&[
        "exec",
        &id,
        "--secret-env",
        "TOKEN",
        "--",
        "sh",
        "-c",
        "cat a.txt; echo t=$TOKEN; echo made > b.txt; cat /proc/1/comm",
    ]);
    // PID 1 is the agent, started as /init from its initramfs.
    assert_eq!(v["stdout"], "seeded\nt=[REDACTED]\ninit\n", "{v}");
    let d = ws(&["diff", &id]);
    assert_eq!(d["summary"]["added"], 1, "{d}");
    // A shell and a service live in the guest agent here too.
    let sh = ws(&["shell", "open", &id, "--secret-env", "TOKEN"])["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    ws(&[
        "shell",
        "write",
        &id,
        &sh,
        "--input",
        "cd /tmp; echo in-vm:$TOKEN:$PWD",
    ]);
    let mut seen = String::new();
    for _ in 0..20 {
        seen.push_str(
            ws(&[
                "shell",
                "read",
                &id,
                &sh,
                "--plain",
                "--wait-for-idle-ms",
                "500",
            ])["output"]
                .as_str()
                .unwrap(),
        );
        if seen.contains("in-vm:[REDACTED]:/tmp") {
            break;
        }
    }
    assert!(seen.contains("in-vm:[REDACTED]:/tmp"), "{seen}");
    let v = ws(&[
        "service",
        "start",
        &id,
        "svc",
        "--ready-command",
        "test -e /tmp/ok",
        "--",
        "sh",
        "-c",
        "touch /tmp/ok; exec sleep 600",
    ]);
    assert_eq!(v["state"], "ready", "{v}");
    // Stop keeps the writable disk; start boots a new VM on it.
    assert_eq!(ws(&["stop", &id])["state"], "stopped");
    assert!(
        vm_traces(&p, &id).iter().all(|t| t == "state dir"),
        "{:?}",
        vm_traces(&p, &id)
    );
    assert_eq!(ws(&["start", &id])["state"], "running");
    assert_eq!(ws(&["exec", &id, "--", "cat", "b.txt"])["stdout"], "made\n");
    // Reset: a fresh VM with the baseline (and the secret installed again).
    ws(&["reset", &id]);
    let v = ws(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "ls; test -e /run/pyro-secrets/TOKEN && echo secret-back",
    ]);
    assert_eq!(v["stdout"], "a.txt\nsecret-back\n", "{v}");
    ws(&["delete", &id]);
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

/// Over vsock the agent sees the host hang up differently than on a Unix socket (the vsock
/// backend resets the guest's end); both must stop the command. Stdin crosses it as well.
#[test]
fn a_vm_workspace_exec_reads_stdin_and_stops_on_sigint() {
    require_vm!();
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let p = TestPyro::new();
    let ws = |args: &[&str]| {
        let mut a = vec!["workspace"];
        a.extend_from_slice(args);
        let (out, v) = p.json(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{v}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        v
    };
    let v = ws(&["create", "debian:12", "--isolation", "vm-emulated"]);
    let id = v["workspace_id"].as_str().unwrap().to_string();
    let mut child = p
        .cmd(&["workspace", "exec", &id, "--", "wc -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&vec![b'x'; 3 << 20])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3145728\n");

    let slow = "sleep 300 & echo $! > /workspace/pid; echo READY; wait";
    let mut child = p
        .cmd(&["workspace", "exec", &id, "--timeout", "600", "--", slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "READY\n");
    signal(&child, libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let probe = "kill -0 $(cat pid) 2>/dev/null && echo alive || echo gone";
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while ws(&["exec", &id, "--", probe])["stdout"] != "gone\n" {
        assert!(
            std::time::Instant::now() < until,
            "the command outlived pyro"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = ws(&["logs", &id]);
    assert!(
        logs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["command"] == slow && e["interrupted"] == true),
        "{logs}"
    );
    ws(&["delete", &id]);
    assert_eq!(vm_traces(&p, &id), Vec::<String>::new());
}
