//! `pyro run`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use pyro::{OutputSink, Pyro, RunRequest};

use super::{or_default, parse_pairs};
use crate::cli::RunArgs;
use crate::output::{phase_line, print_json, BuildProgress, TransferProgress};

/// Renders run phases on stderr and build progress.
struct RunObserver {
    phases: bool,
    build: BuildProgress,
    pull: TransferProgress,
}

impl pyro::Observer for RunObserver {
    fn phase(&self, phase: &str, fields: &[(&str, String)]) {
        self.build.finish();
        self.pull.finish();
        if self.phases {
            let mut all = vec![("phase", phase.to_string())];
            all.extend(fields.iter().map(|(k, v)| (*k, v.clone())));
            phase_line("run", &all);
        }
    }
    fn build(&self, env: &str, message: &str) {
        self.build.step(env, message);
    }
    fn transfer(&self, env: &str, event: &pyro::env::Transfer) {
        self.pull.event(env, event);
    }
}

/// `pyro demo`: a fixed one-shot run, so a new user sees the whole lifecycle in one command.
pub async fn demo(pyro: &Pyro, a: crate::cli::DemoArgs) -> anyhow::Result<ExitCode> {
    let command: &[&str] = if a.network {
        &[
            "apt-get",
            "-o",
            "Acquire::Retries=0",
            "update",
            "--error-on=any",
        ]
    } else {
        &["git", "--version"]
    };
    let command = command.iter().map(|s| s.to_string()).collect();
    run(
        pyro,
        RunArgs {
            environment: "debian:12".into(),
            isolation: a.isolation,
            vcpu: None,
            mem: None,
            timeout: Some(120),
            ttl_seconds: None,
            allow_host_compat: false,
            env: Vec::new(),
            max_output_bytes: pyro::limits::CLI_OUTPUT_BYTES,
            no_build: false,
            network: a.network,
            allow_hosts: Vec::new(),
            json: a.json,
            no_stdin: true,
            command,
        },
    )
    .await
}

pub async fn run(pyro: &Pyro, a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut req = RunRequest::new(a.environment.clone(), a.command.clone());
    req.isolation = a.isolation.as_deref().map(str::parse).transpose()?;
    req.vcpus = or_default(a.vcpu, pyro::user_config::default_vcpus)?;
    req.mem_mib = or_default(a.mem, pyro::user_config::default_mem_mib)?;
    req.timeout = Duration::from_secs(or_default(a.timeout, pyro::user_config::default_timeout_s)?);
    req.env = parse_pairs("--env", &a.env)?;
    req.build_missing = !a.no_build;
    req.max_output_bytes = a.max_output_bytes;
    req.network = pyro::network::NetworkSpec::from_parts(a.network, None, &a.allow_hosts)?;
    req.stdin = super::command_stdin(a.no_stdin)?;
    req.allow_host_compat = a.allow_host_compat;
    let observer = Arc::new(RunObserver {
        phases: !a.json,
        build: BuildProgress::new(),
        pull: TransferProgress::new("env-pull"),
    });

    let mut passthrough = super::Passthrough;
    let output: Option<&mut dyn OutputSink> = if a.json { None } else { Some(&mut passthrough) };
    let (signalled, code) = super::interrupt_signal()?;
    let result = match pyro
        .run_or_cancel(&req, observer.clone(), output, signalled)
        .await?
    {
        pyro::Outcome::Done(r) => r,
        // The library dropped the run and removed what it started.
        pyro::Outcome::Cancelled(report) => return Ok(super::interrupted("run", &report, &code)),
    };
    for w in &result.warnings {
        eprintln!("[run] warning: {w}");
    }
    if a.json {
        print_json(&result)?;
        super::warn_truncated(
            "run",
            &[
                ("stdout", result.stdout_truncated),
                ("stderr", result.stderr_truncated),
            ],
            a.max_output_bytes,
        );
    } else {
        phase_line(
            "run",
            &[
                ("environment", result.environment.clone()),
                ("isolation", result.isolation.to_string()),
                ("backend", result.backend.clone()),
                ("exit_code", result.exit_code.to_string()),
                ("timed_out", result.timed_out.to_string()),
                // Passed through, the output was streamed whole: only the result's copy,
                // not shown here, is capped.
                ("truncated", "false".into()),
                ("total_ms", result.timing.total_ms.to_string()),
                (
                    "cleanup",
                    if result.cleanup.deleted {
                        "deleted".into()
                    } else {
                        format!("incomplete: {}", result.cleanup.errors.join("; "))
                    },
                ),
            ],
        );
        if !result.limits.not_applied.is_empty() {
            phase_line(
                "run",
                &[("limits_not_applied", result.limits.not_applied.join("; "))],
            );
        }
    }
    Ok(ExitCode::from(result.exit_code.clamp(0, 255) as u8))
}
