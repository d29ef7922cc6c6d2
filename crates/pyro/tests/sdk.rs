//! The Rust SDK end to end: `pyro::blocking::Pyro` (which drives the async `pyro::Pyro`) runs a
//! one-shot command, a workspace session and the VM lifecycle in real debian:12 containers.
//! These need root, runc and the static agent; without them each test says why it skipped (and
//! fails instead under PYRO_TEST_CONTAINER=1, as in CI).

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};

use pyro::blocking::Pyro;
use pyro::{Config, CreateVm, CreateWorkspace, ExecOptions, Isolation, RunRequest};

/// `$PYRO_AGENT` when set; otherwise the SDK uses the agent built into it.
fn agent() -> Option<PathBuf> {
    std::env::var_os("PYRO_AGENT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A blocking SDK on a private state directory and the shared environment cache, or `None`
/// (with the reason printed) when containers cannot run here.
fn sdk(test: &str, home: &Path) -> Option<Pyro> {
    let mut config = Config::from_env();
    config.paths.home = home.to_path_buf();
    config.agent = agent();
    let pyro = Pyro::open(config).unwrap();
    let container = pyro
        .levels()
        .into_iter()
        .find(|l| l.level == Isolation::Container)
        .unwrap();
    match container.reason {
        None => Some(pyro),
        Some(why) if std::env::var("PYRO_TEST_CONTAINER").as_deref() == Ok("1") => {
            panic!("{test}: container tests are required (PYRO_TEST_CONTAINER=1) but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set PYRO_TEST_CONTAINER=1 to make this a failure)");
            None
        }
    }
}

fn argv(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| a.to_string()).collect()
}

#[test]
fn a_one_shot_run_through_the_blocking_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pyro) = sdk("a_one_shot_run_through_the_blocking_sdk", dir.path()) else {
        return;
    };
    let mut req = RunRequest::new("debian:12", argv(&["sh", "-c", "echo sdk; exit 7"]));
    req.isolation = Some(Isolation::Container);
    let r = pyro.run(&req).unwrap();
    assert_eq!((r.stdout.as_str(), r.exit_code), ("sdk\n", 7));
    assert!(r.cleanup.deleted, "{:?}", r.cleanup);
    // The same object the CLI prints with --json.
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["exit_code"], 7);
}

#[test]
fn a_workspace_session_through_the_blocking_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pyro) = sdk("a_workspace_session_through_the_blocking_sdk", dir.path()) else {
        return;
    };
    let mut req = CreateWorkspace::new("debian:12");
    req.isolation = Some(Isolation::Container);
    let ws = pyro.workspace_create(&req).unwrap();
    let id = ws.workspace_id.clone();
    pyro.workspace_file_write(&id, "a.txt", b"one\n").unwrap();
    let out = pyro
        .workspace_exec(&id, &argv(&["cat", "a.txt"]), &ExecOptions::default())
        .unwrap();
    assert_eq!(out.stdout, "one\n");
    assert_eq!(pyro.workspace_diff(&id).unwrap().summary.added, 1);
    pyro.workspace_snapshot_create(&id, "one").unwrap();
    pyro.workspace_reset(&id, None).unwrap();
    assert!(pyro
        .workspace_file_list(&id, "/workspace", false)
        .unwrap()
        .entries
        .is_empty());
    assert!(pyro.workspace_delete(&id).unwrap().deleted);
    assert!(pyro.workspace_status(&id).is_err());
}

#[test]
fn the_vm_lifecycle_through_the_blocking_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pyro) = sdk("the_vm_lifecycle_through_the_blocking_sdk", dir.path()) else {
        return;
    };
    let mut req = CreateVm::new("debian:12");
    req.isolation = Some(Isolation::Container);
    let vm = pyro.vm_create(&req).unwrap();
    assert_eq!(vm.state, pyro::VmState::Created);
    assert_eq!(
        pyro.vm_start(&vm.vm_id).unwrap().state,
        pyro::VmState::Started
    );
    let r = pyro
        .vm_exec(&vm.vm_id, &argv(&["uname", "-s"]), &ExecOptions::default())
        .unwrap();
    assert_eq!(r.stdout, "Linux\n");
    assert!(r.cleanup.deleted);
    assert!(pyro.vm_status(&vm.vm_id).is_err(), "vm_exec deletes the VM");
    assert!(pyro.vm_list().unwrap().is_empty());
}

#[test]
fn a_dropped_exec_future_stops_the_command_and_is_logged() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let Some(pyro) = sdk(
        "a_dropped_exec_future_stops_the_command_and_is_logged",
        dir.path(),
    ) else {
        return;
    };
    let mut req = CreateWorkspace::new("debian:12");
    req.isolation = Some(Isolation::Container);
    let id = pyro.workspace_create(&req).unwrap().workspace_id;
    // Stdin given as bytes reaches the command.
    let opts = ExecOptions {
        stdin: pyro::Stdin::Bytes(b"abc".to_vec()),
        ..ExecOptions::default()
    };
    let out = pyro.workspace_exec(&id, &argv(&["cat"]), &opts).unwrap();
    assert_eq!(out.stdout, "abc");

    // A caller's timeout drops the exec future mid-command.
    let slow = argv(&["sleep 300 & echo $! > pid; wait"]);
    let opts = ExecOptions {
        timeout: Duration::from_secs(600),
        ..ExecOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(3),
            pyro.as_async().workspace_exec(&id, &slow, &opts, None),
        )
        .await
    });
    assert!(r.is_err(), "the exec should still have been running");
    // Recorded by the time the drop returned.
    let last = pyro.workspace_logs(&id).unwrap().pop().unwrap();
    assert!(last.interrupted, "{last:?}");
    assert_eq!((last.exit_code, last.signal), (143, Some(15)));
    // And the command is really gone, background job and all.
    let probe = argv(&["kill -0 $(cat pid) 2>/dev/null && echo alive || echo gone"]);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = pyro
            .workspace_exec(&id, &probe, &ExecOptions::default())
            .unwrap();
        if r.stdout == "gone\n" {
            break;
        }
        assert!(Instant::now() < until, "the command outlived its future");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pyro.workspace_delete(&id).unwrap().deleted);
}
