//! PTY shells and long-running services in a workspace. Both live in the guest agent, so they
//! survive the pyro process that started them and end with the workspace's sandbox. Output
//! handed back is redacted of the workspace's secrets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pyro_protocol::{Readiness, Request, Response, ServiceInfo, ShellInfo};
use serde::Serialize;

use crate::engine::Pyro;
use crate::error::{Error, Result};
use crate::workspace::secrets::{Redactor, REDACTED};

/// Most bytes one shell read returns.
pub const MAX_SHELL_READ: u64 = 1 << 20;
/// Longest `wait_for_idle`.
pub const MAX_IDLE_WAIT: Duration = Duration::from_secs(10);
/// Longest time a read with `wait_for_idle` keeps collecting.
const MAX_READ_WAIT: Duration = Duration::from_secs(60);

/// A shell to open.
#[derive(Debug, Clone)]
pub struct ShellOpenRequest {
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// `NAME[=VAR]` secrets mapped into the shell's environment.
    pub secret_env: Vec<String>,
}

/// A shell, with its workspace.
#[derive(Debug, Clone, Serialize)]
pub struct ShellResult {
    /// The workspace.
    pub workspace_id: String,
    /// The shell.
    #[serde(flatten)]
    pub shell: ShellInfo,
}

/// A shell read.
#[derive(Debug, Clone, Serialize)]
pub struct ShellReadResult {
    /// The workspace.
    pub workspace_id: String,
    /// The shell.
    #[serde(flatten)]
    pub shell: ShellInfo,
    /// Absolute byte cursor the output starts at.
    pub cursor: u64,
    /// Cursor to pass next time.
    pub next_cursor: u64,
    /// Bytes the ring buffer had already dropped before `cursor`.
    pub dropped: u64,
    /// Output text (secrets redacted; with `plain`, terminal control sequences removed).
    pub output: String,
    /// Whether more output is waiting after `next_cursor`.
    pub truncated: bool,
    /// Whether control sequences were stripped.
    pub plain: bool,
}

/// A service to start.
#[derive(Debug, Clone)]
pub struct ServiceStartRequest {
    /// Unique name in the workspace.
    pub name: String,
    /// Command argv (run by `sh -lc`).
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// `NAME[=VAR]` secrets mapped into its environment.
    pub secret_env: Vec<String>,
    /// Readiness probe (none: ready once started).
    pub readiness: Option<Readiness>,
    /// How long to wait for readiness.
    pub ready_timeout: Duration,
    /// Time between readiness probes; `None` is the agent's own pace (100 ms).
    pub ready_interval: Option<Duration>,
    /// `never` or `on-failure`.
    pub restart: String,
    /// Ports to publish on the host once it is ready (needs network policy
    /// `egress+published-ports`).
    pub publish: Vec<crate::network::PublishRequest>,
}

/// A service, with its workspace.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceResult {
    /// The workspace.
    pub workspace_id: String,
    /// The service.
    #[serde(flatten)]
    pub service: ServiceInfo,
    /// Host ports forwarded to it.
    pub published_ports: Vec<crate::network::PublishedPort>,
}

/// A service in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceEntry {
    /// The service.
    #[serde(flatten)]
    pub service: ServiceInfo,
    /// Host ports forwarded to it.
    pub published_ports: Vec<crate::network::PublishedPort>,
}

/// A service's logs.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceLogsResult {
    /// The workspace.
    pub workspace_id: String,
    /// The service.
    #[serde(flatten)]
    pub service: ServiceInfo,
    /// Stdout (redacted).
    pub stdout: String,
    /// Stderr (redacted).
    pub stderr: String,
    /// Whether older output was left out.
    pub truncated: bool,
}

/// Redacts the part of `window` from `skip` on, also where a secret starts before `skip`, and
/// leaves out the last `hold` bytes (a possible secret prefix).
fn redact_window(r: &Redactor, window: &[u8], skip: usize, hold: usize) -> Vec<u8> {
    let end = window.len() - hold.min(window.len());
    let mut out = Vec::new();
    let mut i = 0;
    while i < end {
        if let Some(len) = r.match_len(&window[i..end]) {
            if i + len > skip {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            i += len;
            continue;
        }
        if i >= skip {
            out.push(window[i]);
        }
        i += 1;
    }
    out
}

/// Renders terminal output as plain text: drops CSI, OSC, DCS and other escape sequences,
/// applies backspace and carriage return, keeps newlines and tabs.
pub fn plain_text(input: &str) -> String {
    let mut lines: Vec<String> = vec![String::new()];
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        let line = lines.last_mut().expect("lines is never empty");
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // CSI: parameters, then one final byte in @..~.
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') | Some('P') | Some('_') | Some('^') => {
                    // OSC / DCS / APC / PM: up to BEL or ST (ESC \).
                    while let Some(n) = chars.next() {
                        if n == '\x07' {
                            break;
                        }
                        if n == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' => lines.push(String::new()),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    line.clear();
                }
            }
            '\x08' => {
                line.pop();
            }
            '\t' => line.push('\t'),
            c if (c as u32) < 0x20 || c == '\x7f' => {}
            c => line.push(c),
        }
    }
    lines.join("\n")
}

fn validate_readiness(r: &Readiness) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    match r {
        Readiness::File { path } if path.is_empty() => bad("--ready-file needs a path".into()),
        Readiness::Tcp { address } => match address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
            _ => bad(format!(
                "--ready-tcp {address:?} is not HOST:PORT with a port 1-65535"
            )),
        },
        Readiness::Http { url } if !url.starts_with("http://") => {
            bad(format!("--ready-http {url:?} must be an http:// URL"))
        }
        Readiness::Command { command } if command.trim().is_empty() => {
            bad("--ready-command needs a command".into())
        }
        _ => Ok(()),
    }
}

impl Pyro {
    /// Opens a PTY shell in a workspace.
    pub async fn workspace_shell_open(
        &self,
        id: &str,
        req: &ShellOpenRequest,
    ) -> Result<ShellResult> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let defaults = self.ws_defaults(&w)?;
        let mut env = defaults.env;
        env.extend(self.secret_env(&w.id, &req.secret_env)?);
        let open = pyro_protocol::ShellOpen {
            cwd: req.cwd.clone(),
            cols: req.cols,
            rows: req.rows,
            env,
            user: defaults.user,
        };
        match sb.client().call(&Request::ShellOpen(open)).await? {
            Response::Shell(shell) => Ok(ShellResult {
                workspace_id: w.id,
                shell,
            }),
            other => Err(Error::Agent(format!(
                "unexpected reply to shell open: {other:?}"
            ))),
        }
    }

    /// Reads shell output from an absolute cursor. With `wait_for_idle`, keeps reading until no
    /// new output arrived for that long (or `max_bytes` is reached, or the shell exits).
    pub async fn workspace_shell_read(
        &self,
        id: &str,
        shell_id: &str,
        cursor: u64,
        max_bytes: u64,
        plain: bool,
        wait_for_idle: Option<Duration>,
    ) -> Result<ShellReadResult> {
        if max_bytes == 0 || max_bytes > MAX_SHELL_READ {
            return Err(Error::InvalidRequest(format!(
                "max chars must be between 1 and {MAX_SHELL_READ}"
            )));
        }
        if wait_for_idle.is_some_and(|d| d.is_zero() || d > MAX_IDLE_WAIT) {
            return Err(Error::InvalidRequest(format!(
                "wait for idle must be between 1 and {} ms",
                MAX_IDLE_WAIT.as_millis()
            )));
        }
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let redactor = self.redactor(&w.id)?;
        // Re-read the bytes just before the cursor so a secret split by an earlier read is
        // still recognized (and not shown by halves).
        let overlap = redactor.max_len().saturating_sub(1) as u64;
        let started = Instant::now();
        let mut last_new = Instant::now();
        let mut out: Vec<u8> = Vec::new();
        let mut first_cursor = None;
        let mut dropped_total = 0;
        let mut next = cursor;
        let (shell, more) = loop {
            let from = next.saturating_sub(overlap);
            let want = max_bytes - out.len() as u64 + (next - from);
            let (bytes, resp) = sb.client().shell_read(shell_id, from, want).await?;
            let Response::ShellOutput {
                shell,
                cursor: got_from,
                ..
            } = resp
            else {
                return Err(Error::Agent("unexpected reply to shell read".into()));
            };
            let skip = next.saturating_sub(got_from).min(bytes.len() as u64) as usize;
            if first_cursor.is_none() {
                // The ring may have dropped bytes the caller had not read yet.
                first_cursor = Some(next.max(got_from));
                dropped_total = got_from.saturating_sub(next);
            }
            let running = shell.state == "running";
            let hold = if running {
                redactor.pending_suffix(&bytes[skip..])
            } else {
                0
            };
            let chunk = redact_window(&redactor, &bytes, skip, hold);
            let consumed = (bytes.len() - skip - hold) as u64;
            let start_here = got_from.max(next);
            next = start_here + consumed;
            if consumed > 0 {
                last_new = Instant::now();
                out.extend(chunk);
            }
            let more = shell.total_bytes > next;
            let done = match wait_for_idle {
                None => true,
                Some(idle) => {
                    out.len() as u64 >= max_bytes
                        || !running
                        || last_new.elapsed() >= idle
                        || started.elapsed() >= MAX_READ_WAIT
                }
            };
            if done {
                break (shell, more);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let text = String::from_utf8_lossy(&out).into_owned();
        Ok(ShellReadResult {
            workspace_id: w.id,
            shell,
            cursor: first_cursor.unwrap_or(cursor),
            next_cursor: next,
            dropped: dropped_total,
            output: if plain { plain_text(&text) } else { text },
            truncated: more,
            plain,
        })
    }

    /// Types input into a shell (with a newline unless `no_newline`).
    pub async fn workspace_shell_write(
        &self,
        id: &str,
        shell_id: &str,
        input: &str,
        newline: bool,
    ) -> Result<ShellResult> {
        let mut text = input.to_string();
        if newline {
            text.push('\n');
        }
        self.shell_call(
            id,
            Request::ShellWrite {
                shell_id: shell_id.into(),
                input: text,
            },
        )
        .await
    }

    /// Sends a signal to a shell (`INT` interrupts the foreground job, like Ctrl-C).
    pub async fn workspace_shell_signal(
        &self,
        id: &str,
        shell_id: &str,
        signal: &str,
    ) -> Result<ShellResult> {
        self.shell_call(
            id,
            Request::ShellSignal {
                shell_id: shell_id.into(),
                signal: signal.into(),
            },
        )
        .await
    }

    /// Closes a shell.
    pub async fn workspace_shell_close(&self, id: &str, shell_id: &str) -> Result<ShellResult> {
        self.shell_call(
            id,
            Request::ShellClose {
                shell_id: shell_id.into(),
            },
        )
        .await
    }

    async fn shell_call(&self, id: &str, req: Request) -> Result<ShellResult> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        match sb.client().call(&req).await? {
            Response::Shell(shell) => Ok(ShellResult {
                workspace_id: w.id,
                shell,
            }),
            other => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Every shell of a workspace.
    pub async fn workspace_shell_list(&self, id: &str) -> Result<Vec<ShellInfo>> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (_, sb) = self.ws_running(&w.id).await?;
        match sb.client().call(&Request::ShellList).await? {
            Response::Shells { shells } => Ok(shells),
            other => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Starts a service and returns once it is ready; fails with the readiness error and the
    /// log tail otherwise.
    pub async fn workspace_service_start(
        &self,
        id: &str,
        req: &ServiceStartRequest,
    ) -> Result<ServiceResult> {
        if let Some(r) = &req.readiness {
            validate_readiness(r)?;
        }
        if req.ready_timeout.is_zero() || req.ready_timeout > Duration::from_secs(3600) {
            return Err(Error::InvalidRequest(
                "ready timeout must be between 1 and 3600 seconds".into(),
            ));
        }
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        if !req.publish.is_empty() {
            let policy = crate::network::spec_of(&self.inner.store, &w.id)?.policy;
            if policy != crate::network::NetworkPolicy::EgressPublishedPorts {
                return Err(Error::InvalidRequest(format!(
                    "published ports require workspace network_policy 'egress+published-ports'; workspace {} has '{policy}' (create it with --network-policy egress+published-ports)",
                    w.id
                )));
            }
        }
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let defaults = self.ws_defaults(&w)?;
        let mut env = defaults.env;
        env.extend(req.env.clone());
        env.extend(self.secret_env(&w.id, &req.secret_env)?);
        let start = pyro_protocol::ServiceStart {
            name: req.name.clone(),
            argv: req.argv.clone(),
            cwd: req.cwd.clone(),
            env,
            readiness: req.readiness.clone(),
            ready_timeout_ms: req.ready_timeout.as_millis() as u64,
            ready_interval_ms: req.ready_interval.map(|d| d.as_millis() as u64),
            restart: req.restart.clone(),
            user: defaults.user,
        };
        let redactor = self.redactor(&w.id)?;
        match sb.client().call(&Request::ServiceStart(start)).await {
            Ok(Response::Service(service)) => {
                let published_ports = match self.publish_ports(&w.id, &req.name, &req.publish).await
                {
                    Ok(p) => p,
                    Err(e) => {
                        // A service whose ports could not be published is not left running
                        // half-reachable.
                        let _ = sb
                            .client()
                            .call(&Request::ServiceStop {
                                name: req.name.clone(),
                                grace_ms: 2000,
                            })
                            .await;
                        return Err(e);
                    }
                };
                Ok(ServiceResult {
                    workspace_id: w.id,
                    service,
                    published_ports,
                })
            }
            Ok(other) => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
            Err(Error::AgentRefused { kind, message }) => Err(Error::AgentRefused {
                kind,
                message: redactor.text(&message),
            }),
            Err(e) => Err(e),
        }
    }

    /// Records the ports of service `name` (replacing any left from an earlier run of that
    /// name) and installs the workspace's rules with them; on failure none of them stays.
    async fn publish_ports(
        &self,
        id: &str,
        name: &str,
        publish: &[crate::network::PublishRequest],
    ) -> Result<Vec<crate::network::PublishedPort>> {
        let store = &self.inner.store;
        let had = store.remove_published_ports(id, Some(name))?;
        if publish.is_empty() {
            if had > 0 {
                self.ws_apply_network(id).await?;
            }
            return Ok(Vec::new());
        }
        let result: Result<()> = async {
            for p in publish {
                let host_port = free_host_port(p.host_addr, p.host_port)?;
                let port = crate::network::PublishedPort {
                    service: name.to_string(),
                    host_addr: p.host_addr,
                    host_port,
                    guest_port: p.guest_port,
                };
                if !store.add_published_port(id, &port)? {
                    return Err(Error::InvalidRequest(format!(
                        "host port {}:{host_port} is already published by a sandbox; choose another or omit it for any free port",
                        p.host_addr
                    )));
                }
            }
            self.ws_apply_network(id).await
        }
        .await;
        if let Err(e) = result {
            let _ = store.remove_published_ports(id, Some(name));
            let _ = self.ws_apply_network(id).await;
            return Err(e);
        }
        store.published_ports(id, Some(name))
    }

    /// Re-installs a running workspace's network rules from its records.
    pub(crate) async fn ws_apply_network(&self, id: &str) -> Result<()> {
        let w = self.ws_row(id)?;
        let Some(link) = self.ws_backend(&w)?.network_link() else {
            return Ok(());
        };
        match crate::network::plan(&self.inner.store, id, link).await? {
            Some(plan) => crate::network::link::apply_rules(&plan).await,
            None => Ok(()),
        }
    }

    async fn service_call(&self, id: &str, req: Request) -> Result<(String, Response, Redactor)> {
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        let redactor = self.redactor(&w.id)?;
        let r = sb.client().call(&req).await?;
        Ok((w.id, r, redactor))
    }

    /// One service.
    pub async fn workspace_service_status(&self, id: &str, name: &str) -> Result<ServiceResult> {
        match self
            .service_call(id, Request::ServiceStatus { name: name.into() })
            .await?
        {
            (wid, Response::Service(service), _) => Ok(ServiceResult {
                published_ports: self
                    .inner
                    .store
                    .published_ports(&wid, Some(&service.name))?,
                workspace_id: wid,
                service,
            }),
            (_, other, _) => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Every service of a workspace.
    pub async fn workspace_service_list(&self, id: &str) -> Result<Vec<ServiceEntry>> {
        match self.service_call(id, Request::ServiceList).await? {
            (wid, Response::Services { services }, _) => services
                .into_iter()
                .map(|service| {
                    Ok(ServiceEntry {
                        published_ports: self
                            .inner
                            .store
                            .published_ports(&wid, Some(&service.name))?,
                        service,
                    })
                })
                .collect(),
            (_, other, _) => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }

    /// A service's logs (the last `tail_lines` of each stream, or all), redacted.
    pub async fn workspace_service_logs(
        &self,
        id: &str,
        name: &str,
        tail_lines: Option<u64>,
    ) -> Result<ServiceLogsResult> {
        match self
            .service_call(
                id,
                Request::ServiceLogs {
                    name: name.into(),
                    tail_lines,
                },
            )
            .await?
        {
            (
                wid,
                Response::ServiceLogs {
                    service,
                    stdout,
                    stderr,
                    truncated,
                },
                r,
            ) => Ok(ServiceLogsResult {
                workspace_id: wid,
                service,
                stdout: r.text(&stdout),
                stderr: r.text(&stderr),
                truncated,
            }),
            (_, other, _) => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Stops a service: TERM to its process group, KILL after `grace`.
    pub async fn workspace_service_stop(
        &self,
        id: &str,
        name: &str,
        grace: Duration,
    ) -> Result<ServiceResult> {
        match self
            .service_call(
                id,
                Request::ServiceStop {
                    name: name.into(),
                    grace_ms: grace.as_millis() as u64,
                },
            )
            .await?
        {
            (wid, Response::Service(service), _) => {
                // Its ports go with it (and only with it: no other call touches them).
                if self.inner.store.remove_published_ports(&wid, Some(name))? > 0 {
                    self.ws_apply_network(&wid).await?;
                }
                Ok(ServiceResult {
                    workspace_id: wid,
                    service,
                    published_ports: Vec::new(),
                })
            }
            (_, other, _) => Err(Error::Agent(format!("unexpected reply: {other:?}"))),
        }
    }
}

/// The host port to publish on: the one asked for if nothing on the host holds it, else (for 0)
/// one the kernel picks as free. There is no listener of ours afterwards (the kernel forwards
/// the port), so the check is a bind that is released at once.
fn free_host_port(addr: std::net::Ipv4Addr, port: u16) -> Result<u16> {
    match std::net::TcpListener::bind((addr, port)) {
        Ok(l) => Ok(l.local_addr().map(|a| a.port()).unwrap_or(port)),
        Err(e) => Err(Error::InvalidRequest(format!(
            "cannot publish on host port {addr}:{port}: {e}; choose another port or omit it for any free one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_drops_escape_sequences_and_applies_line_edits() {
        assert_eq!(
            plain_text("\x1b[1;32mpyro$ \x1b[0mls\r\na  b\r\n"),
            "pyro$ ls\na  b\n"
        );
        assert_eq!(plain_text("\x1b]0;title\x07x\x1b]2;t\x1b\\y"), "xy");
        assert_eq!(plain_text("abc\x08\x08d"), "ad");
        assert_eq!(
            plain_text("progress 10%\rprogress 100%\n"),
            "progress 100%\n"
        );
    }

    #[test]
    fn windows_are_redacted_across_the_cursor() {
        let r = Redactor::new(["s3cret".to_string()]);
        // The secret starts before the cursor (skip=3) and ends after it: one marker.
        assert_eq!(
            redact_window(&r, b"xxs3cretyy", 3, 0),
            b"[REDACTED]yy".to_vec()
        );
        assert_eq!(
            redact_window(&r, b"ab s3cret", 0, 0),
            b"ab [REDACTED]".to_vec()
        );
        assert_eq!(redact_window(&r, b"ab s3c", 0, 3), b"ab ".to_vec());
    }
}
