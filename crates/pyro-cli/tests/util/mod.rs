//! Test harness: runs the real `pyro` binary against a private `$PYRO_HOME`, a shared
//! environment cache, and the statically built agent.

#![allow(clippy::unwrap_used, missing_docs)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub mod registry;

/// Returns from the calling test when container tests cannot run here (saying why), or fails
/// it under `PYRO_TEST_CONTAINER=1`: see [`container_tests_enabled`].
#[allow(unused_macros)]
macro_rules! require_containers {
    () => {
        if !$crate::util::container_tests_enabled(module_path!()) {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_containers;

/// Why container tests cannot run here, if they cannot.
pub fn container_prerequisites() -> Option<String> {
    if !nix_is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/usr/sbin/runc").exists()
        && !Path::new("/usr/bin/runc").exists()
        && std::env::var_os("PYRO_RUNC").is_none()
    {
        return Some("runc is not installed".into());
    }
    None
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether container tests should run. With `PYRO_TEST_CONTAINER=1` (set by scripts/test and CI)
/// missing prerequisites are a failure; otherwise the test says why it skipped.
pub fn container_tests_enabled(test: &str) -> bool {
    match container_prerequisites() {
        None => true,
        Some(why) if std::env::var("PYRO_TEST_CONTAINER").as_deref() == Ok("1") => {
            panic!("{test}: container tests are required (PYRO_TEST_CONTAINER=1) but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set PYRO_TEST_CONTAINER=1 to make this a failure)");
            false
        }
    }
}

/// An agent to use instead of the one built into pyro: `$PYRO_AGENT`, when set. Tests run
/// the embedded agent otherwise, as users do.
pub fn agent() -> Option<PathBuf> {
    std::env::var_os("PYRO_AGENT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The shared environment cache, so each environment is built once per machine.
pub fn shared_cache() -> PathBuf {
    std::env::var_os("PYRO_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/pyro")
        })
}

/// A private pyro installation: its own state directory, the shared cache.
pub struct TestPyro {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    /// `$PYRO_CACHE_DIR`: the shared cache unless [`TestPyro::with_private_cache`].
    pub cache: PathBuf,
    /// Extra environment variables for every command.
    pub envs: Vec<(String, String)>,
}

impl TestPyro {
    pub fn new() -> TestPyro {
        TestPyro::with_home_name("home")
    }

    /// A state directory whose path holds the given (possibly hostile) name.
    pub fn with_home_name(name: &str) -> TestPyro {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join(name);
        TestPyro {
            dir,
            home,
            cache: shared_cache(),
            envs: Vec::new(),
        }
    }

    /// An installation with its own, empty environment cache.
    pub fn with_private_cache() -> TestPyro {
        let mut p = TestPyro::new();
        p.cache = p.dir.path().join("cache");
        p
    }

    /// The config file (`PYRO_CONFIG`) of this installation; absent until a test writes it.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Sets an environment variable for every later command.
    pub fn env(&mut self, key: &str, value: impl Into<String>) -> &mut TestPyro {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pyro"));
        c.args(args)
            .env("PYRO_HOME", &self.home)
            .env("PYRO_CACHE_DIR", &self.cache)
            .env_remove("PYRO_ISOLATION")
            .env_remove("PYRO_REGISTRY")
            .env_remove("PYRO_PINS")
            // The user's own defaults never leak into a test; a test may write this file.
            .env("PYRO_CONFIG", self.config_file())
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(a) = agent() {
            c.env("PYRO_AGENT", a);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn pyro")
    }

    /// Runs with `--json` appended to the pyro arguments (before `--`), parsing stdout.
    pub fn json(&self, args: &[&str]) -> (Output, Value) {
        let mut a: Vec<&str> = Vec::new();
        let split = args.iter().position(|x| *x == "--").unwrap_or(args.len());
        a.extend(&args[..split]);
        a.push("--json");
        a.extend(&args[split..]);
        let out = self.run(&a);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }

    /// Sandbox records and directories left in this installation.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.home.join("sandboxes")) {
            left.extend(
                rd.flatten()
                    .map(|e| format!("state dir {}", e.path().display())),
            );
        }
        let records = db_column(&self.home, "sandboxes", "id");
        if !records.is_empty() {
            left.push(format!("{} sandbox records", records.len()));
        }
        left
    }
}

impl Drop for TestPyro {
    /// A test that failed midway leaves its workspaces running, and once its temporary
    /// `$PYRO_HOME` is gone nothing could find them again: delete them (and collect anything
    /// else left) while the state still exists. Quiet: cleanup never fails a test.
    fn drop(&mut self) {
        if !self.home.join("pyro.db").exists() {
            return;
        }
        let listed = self
            .cmd(&["workspace", "list", "--json"])
            .stderr(Stdio::null())
            .output();
        let ids: Vec<String> = listed
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|v| v["workspaces"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|w| w["workspace_id"].as_str().map(String::from))
            .collect();
        for id in ids {
            let _ = self
                .cmd(&["workspace", "delete", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self
            .cmd(&["gc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl TestPyro {
    /// `pyro workspace create debian:12 --isolation container --json EXTRA…`, whatever it
    /// answers.
    pub fn try_create_workspace(&self, extra: &[&str]) -> (Output, Value) {
        let mut args = vec![
            "workspace",
            "create",
            "debian:12",
            "--isolation",
            "container",
        ];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// [`TestPyro::try_create_workspace`], asserting that it made a running workspace;
    /// returns its id and the result.
    pub fn create_workspace(&self, extra: &[&str]) -> (String, Value) {
        let (out, v) = self.try_create_workspace(extra);
        assert_eq!(
            out.status.code(),
            Some(0),
            "create failed: {v}\n{}",
            stderr(&out)
        );
        assert_eq!(v["state"], "running", "{v}");
        (v["workspace_id"].as_str().unwrap().to_string(), v)
    }
}

/// Whether a sandbox with this id still has any trace on the host: runc state, an overlay
/// mount, a run directory, or processes.
pub fn host_traces(id: &str) -> Vec<String> {
    let mut t = Vec::new();
    let run = PathBuf::from("/run/pyro");
    if run.join("runc").join(id).exists() {
        t.push("runc state".into());
    }
    if run.join("sandboxes").join(id).exists() {
        t.push("run dir".into());
    }
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&format!("/sandboxes/{id}/"))
    {
        t.push("mount".into());
    }
    for ctrl in ["pids", "memory", "cpu"] {
        if Path::new(&format!("/sys/fs/cgroup/{ctrl}/pyro/{id}")).exists() {
            t.push(format!("{ctrl} cgroup"));
        }
    }
    t
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Why the vm-emulated level cannot run here, if it cannot: pyro's own verdict (`pyro doctor`),
/// so the tests and the product agree on what a usable level is.
pub fn vm_emulated_prerequisites() -> Option<String> {
    let (_, v) = TestPyro::new().json(&["doctor"]);
    let level = v["isolation_levels"]
        .as_array()?
        .iter()
        .find(|l| l["level"] == "vm-emulated")?
        .clone();
    if level["usable"] == true {
        None
    } else {
        Some(level["reason"].as_str().unwrap_or("unknown").to_string())
    }
}

/// Whether VM tests should run. With `PYRO_TEST_VM=1` (set by scripts/test and CI, which install
/// QEMU, vhost-device-vsock and the guest kernel) missing prerequisites are a failure; otherwise
/// the test says why it skipped.
pub fn vm_tests_enabled(test: &str) -> bool {
    match vm_emulated_prerequisites() {
        None => true,
        Some(why) if std::env::var("PYRO_TEST_VM").as_deref() == Ok("1") => {
            panic!("{test}: VM tests are required (PYRO_TEST_VM=1) but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set PYRO_TEST_VM=1 to make this a failure)");
            false
        }
    }
}

/// Live processes (other than zombies) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !zombie
            && cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        {
            found.push(format!(
                "pid {pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Every trace a VM sandbox can leave on the host: VMM and vsock-backend processes, its run
/// directory (sockets) and its state directory (writable disk, console log).
pub fn vm_traces(p: &TestPyro, id: &str) -> Vec<String> {
    let mut t = processes_mentioning(&format!("/sandboxes/{id}/"));
    let run = PathBuf::from(std::env::var_os("PYRO_RUN_DIR").unwrap_or_else(|| "/run/pyro".into()));
    if run.join("sandboxes").join(id).exists() {
        t.push("run dir".into());
    }
    if p.home.join("sandboxes").join(id).exists() {
        t.push("state dir".into());
    }
    t
}

/// Starts `pyro run debian:12 --isolation LEVEL -- sh -c GUEST` whose guest prints `READY` once
/// running, and waits (up to `wait`) until the sandbox id is announced and READY has arrived.
/// Both output streams keep being drained so pyro never blocks on them.
pub fn start_long_run(
    p: &TestPyro,
    isolation: &str,
    guest: &str,
    wait: std::time::Duration,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = p
        .cmd(&[
            "run",
            "debian:12",
            "--isolation",
            isolation,
            "--timeout",
            "600",
            "--",
            "sh",
            "-c",
            guest,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pyro");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut id = String::new();
    let until = std::time::Instant::now() + wait;
    let mut line = String::new();
    while std::time::Instant::now() < until {
        line.clear();
        if err.read_line(&mut line).expect("read stderr") == 0 {
            break;
        }
        if let Some(rest) = line.strip_prefix("[run] phase=exec sandbox=") {
            id = rest.trim().to_string();
            break;
        }
    }
    assert!(!id.is_empty(), "no sandbox id seen");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut l = String::new();
    out.read_line(&mut l).expect("read stdout");
    assert_eq!(l, "READY\n");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, id)
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// One column of a table in the state database under `home`, read-only (empty if there is
/// no database or no such table yet).
pub fn db_column(home: &Path, table: &str, column: &str) -> Vec<String> {
    let db = home.join("pyro.db");
    if !db.exists() {
        return Vec::new();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys\n\
             c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n\
             try:\n    rows = c.execute(f'select {sys.argv[3]} from {sys.argv[2]}').fetchall()\n\
             except sqlite3.OperationalError:\n    rows = []\n\
             print('\\n'.join(str(r[0]) for r in rows))",
        ])
        .arg(&db)
        .arg(table)
        .arg(column)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}
