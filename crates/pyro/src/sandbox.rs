//! One live sandbox owned by this process: created from an environment on a backend, reached
//! through its agent, and destroyed on every path. `run`, `bench` and (later) the low-level
//! lifecycle calls are built from this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyro_protocol::{ExecOutcome, ExecRequest};
use serde::Serialize;
use tokio::io::AsyncRead;

use crate::agent_client::{AgentClient, OutputSink, OutputStream};
use crate::backend::{Backend, CleanupReport, LimitsReport, Resources, SandboxSpec};
use crate::context::Context;
use crate::env::ResolvedEnv;
use crate::error::{Error, Result};
use crate::network::NetworkSpec;
use crate::store::{SandboxKind, SandboxRecord};

/// How long a started sandbox may take to answer its first handshake.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time the host waits beyond an exec's own timeout before giving up on the agent.
const EXEC_MARGIN: Duration = Duration::from_secs(15);

/// Resolves once the sandbox's own first process (the VMM, or the container's init) has
/// exited; never, when none is recorded.
async fn runtime_exited(runtime: Option<crate::procinfo::ProcessId>) {
    let Some(p) = runtime else {
        return std::future::pending().await;
    };
    while p.is_alive() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub use pyro_api::ids::new_id;

/// Output collected from one exec, capped on the host side too so a misbehaving agent cannot
/// make the host hold more than it asked for. Everything is passed on to `forward`: a stream
/// is not capped, only what is kept.
pub(crate) struct Collected<'a> {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    cap_out: usize,
    cap_err: usize,
    forward: Option<&'a mut dyn OutputSink>,
}

impl<'a> Collected<'a> {
    pub fn new(
        cap_out: u64,
        cap_err: u64,
        forward: Option<&'a mut dyn OutputSink>,
    ) -> Collected<'a> {
        Collected {
            stdout: Vec::new(),
            stderr: Vec::new(),
            cap_out: cap_out as usize,
            cap_err: cap_err as usize,
            forward,
        }
    }
}

impl OutputSink for Collected<'_> {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        let (buf, cap) = match stream {
            OutputStream::Stdout => (&mut self.stdout, self.cap_out),
            OutputStream::Stderr => (&mut self.stderr, self.cap_err),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if let Some(f) = self.forward.as_deref_mut() {
            f.output(stream, bytes);
        }
    }
}

/// A sandbox this process created and will destroy.
pub struct Sandbox {
    pub(crate) inner: Arc<Context>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) record: SandboxRecord,
    pub(crate) client: AgentClient,
    /// Limits the host enforced.
    pub limits: LimitsReport,
    /// Milliseconds from the start request until the backend returned.
    pub create_ms: u64,
    /// Milliseconds from then until the agent answered its handshake.
    pub boot_ms: u64,
    /// The sandbox's network as set up at this boot, if it has one.
    pub network: Option<crate::network::NetPlan>,
    destroyed: bool,
}

/// The result of one exec in a sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    /// How it ended.
    pub outcome: ExecOutcome,
    /// Kept stdout bytes.
    #[serde(skip)]
    pub stdout: Vec<u8>,
    /// Kept stderr bytes.
    #[serde(skip)]
    pub stderr: Vec<u8>,
}

/// What a command reads on its standard input.
#[derive(Clone, Default)]
pub enum Stdin {
    /// Nothing: the command reads end of file at once (`/dev/null`).
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// A stream, sent on as it is read while the command runs (nothing is held in memory),
    /// then end of file. It is read by one exec only: options cloned after an exec took it give
    /// the next command end of file.
    Stream(StdinStream),
}

impl Stdin {
    /// Stdin read from `r` as the command runs.
    pub fn stream(r: impl AsyncRead + Send + Unpin + 'static) -> Stdin {
        Stdin::Stream(StdinStream(Arc::new(std::sync::Mutex::new(Some(
            Box::new(r),
        )))))
    }

    /// The reader for one exec; `None` for no stdin.
    fn reader(&self) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
        match self {
            Stdin::Null => None,
            Stdin::Bytes(b) => Some(Box::new(std::io::Cursor::new(b.clone()))),
            Stdin::Stream(s) => Some(
                s.0.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_else(|| Box::new(tokio::io::empty())),
            ),
        }
    }
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stdin::Null => f.write_str("Null"),
            Stdin::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Stdin::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A stdin stream shared by clones of the options that carry it; see [`Stdin::Stream`].
#[derive(Clone)]
pub struct StdinStream(Arc<std::sync::Mutex<Option<Box<dyn AsyncRead + Send + Unpin>>>>);

/// Options for one exec.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Kill the process group after this long.
    pub timeout: Duration,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    /// Cap on kept stdout and on kept stderr, each: what the result holds. Output streamed to
    /// an [`OutputSink`] is not capped; only what is kept is.
    pub max_output_bytes: u64,
    /// The command's stdin.
    pub stdin: Stdin,
}

impl Default for ExecOptions {
    /// 30 seconds, no extra variables, `/workspace`, 1 MiB per stream, no stdin: what
    /// `pyro run` uses.
    fn default() -> ExecOptions {
        ExecOptions {
            timeout: Duration::from_secs(30),
            env: BTreeMap::new(),
            cwd: None,
            max_output_bytes: pyro_protocol::DEFAULT_OUTPUT_CAP,
            stdin: Stdin::Null,
        }
    }
}

impl Sandbox {
    /// Creates and starts a one-shot sandbox owned by this process, waiting until its agent
    /// answers. The record is written before anything else exists, and on any failure
    /// everything made so far is removed.
    pub(crate) async fn create(
        inner: Arc<Context>,
        backend: Arc<dyn Backend>,
        env: &ResolvedEnv,
        rootfs: &std::path::Path,
        resources: Resources,
    ) -> Result<Sandbox> {
        Sandbox::create_kind(
            inner,
            backend,
            env,
            rootfs,
            resources,
            SandboxKind::Run,
            new_id(),
            &NetworkSpec::off(),
        )
        .await
    }

    /// Like [`Sandbox::create`], with a given kind, id and network.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_kind(
        inner: Arc<Context>,
        backend: Arc<dyn Backend>,
        env: &ResolvedEnv,
        rootfs: &std::path::Path,
        resources: Resources,
        kind: SandboxKind,
        id: String,
        network: &NetworkSpec,
    ) -> Result<Sandbox> {
        if !network.is_off() {
            crate::backend::check_network(backend.as_ref())?;
        }
        let paths = &inner.config.paths;
        let record = SandboxRecord::creating(
            id.clone(),
            kind,
            backend.isolation().as_str(),
            backend.kind(),
            &env.name,
            &env.manifest_digest,
            paths.sandbox_state(&id),
            paths.sandbox_run(&id),
            Some(inner.me),
        );
        inner.store.insert(&record)?;
        if !network.is_off() {
            if let Err(e) = crate::network::lease(&inner.store, &id, network) {
                destroy_record(&inner, backend.as_ref(), &record, "error").await;
                return Err(e);
            }
        }
        match Sandbox::boot(
            inner.clone(),
            backend.clone(),
            record.clone(),
            rootfs,
            resources,
        )
        .await
        {
            Ok(sb) => Ok(sb),
            Err(e) => {
                destroy_record(&inner, backend.as_ref(), &record, "error").await;
                Err(e)
            }
        }
    }

    /// Starts an already recorded sandbox (new, or stopped with its writable layer kept) and
    /// waits for its agent. On failure its processes are stopped; its files are kept.
    pub(crate) async fn boot(
        inner: Arc<Context>,
        backend: Arc<dyn Backend>,
        record: SandboxRecord,
        rootfs: &std::path::Path,
        resources: Resources,
    ) -> Result<Sandbox> {
        match Sandbox::boot_once(
            inner.clone(),
            backend.clone(),
            record.clone(),
            rootfs,
            resources,
        )
        .await
        {
            // A software-emulated guest that never answered its first handshake is restarted
            // once: under heavy host load a TCG boot has been seen to hang (rarely) before its
            // agent starts. Nothing was sent to it, so a second boot is safe; its disk is kept.
            Err((e, true)) if backend.isolation() != crate::backend::Isolation::Container => {
                tracing::warn!(id = %record.id, "sandbox did not answer ({e}); booting it once more");
                Sandbox::boot_once(inner, backend, record, rootfs, resources)
                    .await
                    .map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One boot; on failure also says whether it was the agent that never answered.
    async fn boot_once(
        inner: Arc<Context>,
        backend: Arc<dyn Backend>,
        mut record: SandboxRecord,
        rootfs: &std::path::Path,
        resources: Resources,
    ) -> std::result::Result<Sandbox, (Error, bool)> {
        let agent = inner.agent_path().map_err(|e| (e, false))?;
        let t0 = Instant::now();
        // The host lock spans choosing the address and making the link, so two pyro
        // installations never give two sandboxes one subnet.
        let mut host_lock = None;
        let network = match backend.network_link() {
            Some(link)
                if inner
                    .store
                    .network(&record.id)
                    .map_err(|e| (e, false))?
                    .is_some() =>
            {
                host_lock = Some(crate::network::host_lock().await.map_err(|e| (e, false))?);
                crate::network::settle_lease(&inner.store, &record.id).map_err(|e| (e, false))?;
                crate::network::plan(&inner.store, &record.id, link)
                    .await
                    .map_err(|e| (e, false))?
            }
            _ => None,
        };
        if let Some(plan) = &network {
            crate::network::write_marker(&record.state_dir, plan).map_err(|e| (e, false))?;
        }
        let spec = SandboxSpec {
            id: &record.id,
            rootfs,
            state_dir: &record.state_dir,
            run_dir: &record.run_dir,
            agent: &agent,
            resources,
            network: network.as_ref(),
        };
        let started = match backend.start(&spec).await {
            Ok(s) => s,
            Err(e) => {
                backend.stop(&record).await;
                return Err((e, false));
            }
        };
        if let Some(plan) = &network {
            if let Err(e) = crate::network::link::apply_rules(plan).await {
                backend.stop(&record).await;
                return Err((e, false));
            }
        }
        drop(host_lock);
        let create_ms = t0.elapsed().as_millis() as u64;
        record.runtime = started.runtime;
        record.state = pyro_api::SandboxState::Running;
        inner
            .store
            .set_running(&record.id, started.runtime)
            .map_err(|e| (e, false))?;
        let client = AgentClient::at(started.endpoint.clone());
        let mut sb = Sandbox {
            inner,
            backend,
            record,
            client,
            limits: started.limits,
            create_ms,
            boot_ms: 0,
            network,
            destroyed: false,
        };
        let t1 = Instant::now();
        let ready: Result<()> = async {
            // A VM's agent announces itself first (see `vm::ready_listener`).
            if let Some(ready) = &started.ready {
                crate::backend::vmm::wait_announced(ready, sb.record.runtime, READY_TIMEOUT)
                    .await?;
            }
            sb.client.wait_ready(READY_TIMEOUT).await.map(|_| ())
        }
        .await;
        if let Err(e) = ready {
            let console = std::fs::read_to_string(sb.record.state_dir.join("console.log"))
                .unwrap_or_default();
            sb.backend.stop(&sb.record).await;
            sb.destroyed = true;
            let tail: String = console
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ");
            return Err((
                if tail.is_empty() {
                    e
                } else {
                    Error::Agent(format!("{e}; sandbox console: {tail}"))
                },
                true,
            ));
        }
        sb.boot_ms = t1.elapsed().as_millis() as u64;
        if let Some(plan) = sb.network.clone() {
            if let Err(e) = sb.configure_guest_network(&plan).await {
                sb.backend.stop(&sb.record).await;
                sb.destroyed = true;
                return Err((e, false));
            }
        }
        Ok(sb)
    }

    /// Writes the guest's resolver and hosts files for its network.
    async fn configure_guest_network(&self, plan: &crate::network::NetPlan) -> Result<()> {
        let (argv, env) = crate::network::guest_files_command(plan);
        let opts = ExecOptions {
            timeout: Duration::from_secs(30),
            env,
            cwd: Some("/".into()),
            max_output_bytes: 4096,
            ..ExecOptions::default()
        };
        let r = self.exec(&argv, &opts, None).await?;
        if r.outcome.exit_code != Some(0) {
            return Err(Error::Network(format!(
                "writing the guest's /etc/resolv.conf and /etc/hosts failed: {}",
                String::from_utf8_lossy(&r.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A handle on a running sandbox started by an earlier call (perhaps another process).
    pub(crate) fn attach(
        inner: Arc<Context>,
        backend: Arc<dyn Backend>,
        record: SandboxRecord,
    ) -> Sandbox {
        let client = AgentClient::at(backend.endpoint(&record));
        Sandbox {
            inner,
            backend,
            record,
            client,
            limits: LimitsReport::default(),
            create_ms: 0,
            boot_ms: 0,
            network: None,
            // Dropping a handle never affects the sandbox.
            destroyed: true,
        }
    }

    /// The agent client.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs one command, forwarding output to `forward` as it arrives.
    pub async fn exec(
        &self,
        argv: &[String],
        opts: &ExecOptions,
        forward: Option<&mut dyn OutputSink>,
    ) -> Result<ExecResult> {
        self.exec_as(argv, opts, None, forward).await
    }

    /// Like [`Sandbox::exec`], as `user` (an image config's `User`; `None` is root).
    pub(crate) async fn exec_as(
        &self,
        argv: &[String],
        opts: &ExecOptions,
        user: Option<&str>,
        forward: Option<&mut dyn OutputSink>,
    ) -> Result<ExecResult> {
        let cap = opts.max_output_bytes;
        // Output streamed on is streamed whole, so the agent forwards everything; without a
        // sink, the agent drops what is over the cap, so it never crosses the connection.
        let forward_cap = if forward.is_some() { u64::MAX } else { cap };
        let mut stdin = opts.stdin.reader();
        let req = ExecRequest {
            user: user.map(str::to_owned),
            argv: argv.to_vec(),
            env: opts.env.clone(),
            cwd: opts.cwd.clone(),
            timeout_ms: Some(opts.timeout.as_millis() as u64),
            max_stdout: forward_cap,
            max_stderr: forward_cap,
            stdin: stdin.is_some(),
        };
        let mut sink = Collected::new(cap, cap, forward);
        let exec = tokio::time::timeout(
            opts.timeout + EXEC_MARGIN,
            self.client.exec(
                &req,
                &mut sink,
                stdin
                    .as_mut()
                    .map(|r| r.as_mut() as &mut (dyn AsyncRead + Unpin + Send)),
            ),
        );
        let mut outcome = tokio::select! {
            r = exec => r.map_err(|_| {
                Error::Agent(format!(
                    "no answer {} s after the exec timeout",
                    EXEC_MARGIN.as_secs()
                ))
            })??,
            // A VMM that dies mid-command may leave its vsock backend holding the connection
            // open: without this the call would wait out the whole timeout.
            () = runtime_exited(self.record.runtime) => {
                return Err(Error::Agent(format!(
                    "the sandbox's {} process exited while the command ran",
                    self.backend.name()
                )));
            }
        };
        // The result holds at most `cap` bytes of each stream, whatever was forwarded.
        outcome.stdout_truncated |= outcome.stdout_bytes > cap;
        outcome.stderr_truncated |= outcome.stderr_bytes > cap;
        Ok(ExecResult {
            outcome,
            stdout: sink.stdout,
            stderr: sink.stderr,
        })
    }

    /// Destroys the sandbox: processes, mounts, files and record.
    pub async fn destroy(&mut self, reason: &str) -> CleanupReport {
        self.destroyed = true;
        destroy_record(&self.inner, self.backend.as_ref(), &self.record, reason).await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.destroyed {
            // Dropped without destroy (a cancelled future): the record stays, owned by this
            // process, and `Pyro::cleanup_owned` or the next `pyro gc` removes the sandbox.
            tracing::debug!(id = %self.record.id, "sandbox dropped without destroy; left for cleanup");
        }
    }
}

/// Destroys a recorded sandbox and forgets it once nothing is left.
pub(crate) async fn destroy_record(
    inner: &Context,
    backend: &dyn Backend,
    record: &SandboxRecord,
    reason: &str,
) -> CleanupReport {
    let mut report = backend.destroy(record).await;
    report.reason = reason.to_string();
    if report.deleted {
        if let Err(e) = inner.store.remove(&record.id) {
            report.deleted = false;
            report.errors.push(format!("forget record: {e}"));
        }
    }
    report
}
