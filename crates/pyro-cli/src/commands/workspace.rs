//! `pyro workspace …`: map arguments to facade calls and render the results.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pyro::sandbox::ExecOptions;
use pyro::workspace::{
    secret_from_file, CreateWorkspace, Readiness, Secret, Seed, ServiceStartRequest,
    ShellOpenRequest, UpdateWorkspace, WorkspaceInfo,
};

use pyro::{OutputSink, Pyro};
use tokio::io::AsyncReadExt;

use super::{or_default, parse_pairs, Passthrough};
use crate::cli_workspace::*;
use crate::output::{phase_line, print_json, BuildProgress};

struct Phases {
    show: bool,
    build: BuildProgress,
}

impl pyro::Observer for Phases {
    fn phase(&self, phase: &str, fields: &[(&str, String)]) {
        self.build.finish();
        if self.show {
            let mut all = vec![("phase", phase.to_string())];
            all.extend(fields.iter().map(|(k, v)| (*k, v.clone())));
            phase_line("workspace", &all);
        }
    }
    fn build(&self, env: &str, message: &str) {
        self.build.step(env, message);
    }
}

fn ms_to_rfc3339(ms: i64) -> String {
    pyro::env::rfc3339((ms.max(0) / 1000) as u64)
}

fn summary(action: &str, w: &WorkspaceInfo) {
    println!("{action} ID: {}", w.workspace_id);
    if let Some(n) = &w.name {
        println!("Name: {n}");
    }
    if !w.labels.is_empty() {
        let l: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("Labels: {}", l.join(", "));
    }
    println!("Environment: {}", w.environment);
    println!("State: {}", w.state);
    println!("Isolation: {} (backend {})", w.isolation, w.backend);
    println!("Workspace: {}", w.workspace_path);
    println!("Resources: {} vCPU / {} MiB", w.vcpus, w.mem_mib);
    match (w.ttl_s, w.idle_ttl_s, w.expires_at_ms) {
        (Some(t), _, Some(e)) => println!("TTL: {t} s (expires {})", ms_to_rfc3339(e)),
        (_, Some(t), Some(e)) => {
            println!("Idle TTL: {t} s (expires {} unless used)", ms_to_rfc3339(e))
        }
        _ => println!("TTL: none"),
    }
    println!("Created: {}", ms_to_rfc3339(w.created_at_ms));
    println!("Last activity: {}", ms_to_rfc3339(w.last_activity_ms));
    println!("Commands: {}  Resets: {}", w.command_count, w.reset_count);
    if !w.secrets.is_empty() {
        println!("Secrets: {}", w.secrets.join(", "));
    }
}

fn ttl(secs: Option<u64>) -> Option<Duration> {
    secs.map(Duration::from_secs)
}

pub async fn workspace(pyro: &Pyro, cmd: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkspaceCommand::Create(a) => create(pyro, a).await,
        WorkspaceCommand::List(a) => list(pyro, a).await,
        WorkspaceCommand::Status(a) => {
            done(show(pyro.workspace_status(&a.id)?, "Workspace", a.out.json))
        }
        WorkspaceCommand::Update(a) => update(pyro, a).await,
        WorkspaceCommand::Stop(a) => done(show(
            pyro.workspace_stop(&a.id).await?,
            "Stopped workspace",
            a.out.json,
        )),
        WorkspaceCommand::Start(a) => done(show(
            pyro.workspace_start(&a.id).await?,
            "Started workspace",
            a.out.json,
        )),
        WorkspaceCommand::Delete(a) => delete(pyro, a).await,
        WorkspaceCommand::Logs(a) => logs(pyro, a).await,
        WorkspaceCommand::Exec(a) => exec(pyro, a).await,
        WorkspaceCommand::File(FileCommand::Read(a)) => file_read(pyro, a).await,
        WorkspaceCommand::File(FileCommand::Write(a)) => file_write(pyro, a).await,
        WorkspaceCommand::File(FileCommand::List(a)) => file_list(pyro, a).await,
        WorkspaceCommand::Disk(DiskCommand::List(a)) => disk_list(pyro, a).await,
        WorkspaceCommand::Disk(DiskCommand::Read(a)) => disk_read(pyro, a).await,
        WorkspaceCommand::Disk(DiskCommand::Export(a)) => disk_export(pyro, a).await,
        WorkspaceCommand::Patch(PatchCommand::Apply(a)) => patch_apply(pyro, a).await,
        WorkspaceCommand::Sync(SyncCommand::Push(a)) => sync_push(pyro, a).await,
        WorkspaceCommand::Diff(a) => diff(pyro, a).await,
        WorkspaceCommand::Export(a) => export(pyro, a).await,
        WorkspaceCommand::Snapshot(SnapshotCommand::Create(a)) => snapshot_create(pyro, a).await,
        WorkspaceCommand::Snapshot(SnapshotCommand::List(a)) => snapshot_list(pyro, a).await,
        WorkspaceCommand::Snapshot(SnapshotCommand::Delete(a)) => snapshot_delete(pyro, a).await,
        WorkspaceCommand::Shell(c) => shell(pyro, c).await,
        WorkspaceCommand::Service(c) => service(pyro, c).await,
        WorkspaceCommand::Reset(a) => {
            let w = pyro.workspace_reset(&a.id, a.snapshot.as_deref()).await?;
            done(show(w, "Reset workspace", a.out.json))
        }
    }
}

/// A command that printed its result and succeeded.
fn done(shown: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    shown.map(|()| ExitCode::SUCCESS)
}

fn shell_line(tag: &str, s: &pyro::workspace::ShellResult) {
    phase_line(
        tag,
        &[
            ("workspace_id", s.workspace_id.clone()),
            ("shell_id", s.shell.shell_id.clone()),
            ("state", s.shell.state.clone()),
            (
                "exit_code",
                s.shell.exit_code.map_or("-".into(), |c| c.to_string()),
            ),
            ("next_cursor", s.shell.total_bytes.to_string()),
        ],
    );
}

async fn shell(pyro: &Pyro, c: ShellCommand) -> anyhow::Result<ExitCode> {
    match c {
        ShellCommand::Open(a) => {
            let req = ShellOpenRequest {
                cwd: a.cwd,
                cols: a.cols,
                rows: a.rows,
                secret_env: a.secret_env,
            };
            let r = pyro.workspace_shell_open(&a.id, &req).await?;
            if a.json {
                print_json(&r)?;
            } else if a.id_only {
                println!("{}", r.shell.shell_id);
            } else {
                shell_line("workspace-shell-open", &r);
            }
        }
        ShellCommand::Read(a) => {
            let idle = a.wait_for_idle_ms.map(Duration::from_millis);
            let r = pyro
                .workspace_shell_read(&a.id, &a.shell, a.cursor, a.max_chars, a.plain, idle)
                .await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                print!("{}", r.output);
                phase_line(
                    "workspace-shell-read",
                    &[
                        ("workspace_id", r.workspace_id.clone()),
                        ("shell_id", r.shell.shell_id.clone()),
                        ("state", r.shell.state.clone()),
                        ("cursor", r.cursor.to_string()),
                        ("next_cursor", r.next_cursor.to_string()),
                        ("dropped", r.dropped.to_string()),
                        ("truncated", r.truncated.to_string()),
                    ],
                );
            }
        }
        ShellCommand::Write(a) => {
            let r = pyro
                .workspace_shell_write(&a.id, &a.shell, &a.input, !a.no_newline)
                .await?;
            if a.out.json {
                print_json(
                    &serde_json::json!({"shell": r, "input_length": a.input.len(), "append_newline": !a.no_newline}),
                )?;
            } else {
                shell_line("workspace-shell-write", &r);
            }
        }
        ShellCommand::Signal(a) => {
            let signal = a.signal.or(a.signal_flag).unwrap_or_else(|| "INT".into());
            let r = pyro
                .workspace_shell_signal(&a.id, &a.shell, &signal)
                .await?;
            if a.out.json {
                print_json(&serde_json::json!({"shell": r, "signal": signal}))?;
            } else {
                shell_line("workspace-shell-signal", &r);
            }
        }
        ShellCommand::Close(a) => {
            let r = pyro.workspace_shell_close(&a.id, &a.shell).await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                shell_line("workspace-shell-close", &r);
            }
        }
        ShellCommand::List(a) => {
            let shells = pyro.workspace_shell_list(&a.id).await?;
            if a.out.json {
                print_json(&serde_json::json!({"count": shells.len(), "shells": shells}))?;
            } else if shells.is_empty() {
                println!("No shells.");
            } else {
                for s in &shells {
                    println!(
                        "{} [{}] pid={} cwd={} bytes={}",
                        s.shell_id, s.state, s.pid, s.cwd, s.total_bytes
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn service_line(tag: &str, s: &pyro::workspace::ServiceInfo) {
    phase_line(
        tag,
        &[
            ("service", s.name.clone()),
            ("state", s.state.clone()),
            ("pid", s.pid.map_or("-".into(), |p| p.to_string())),
            (
                "exit_code",
                s.exit_code.map_or("-".into(), |c| c.to_string()),
            ),
            ("restarts", s.restarts.to_string()),
            ("reason", s.reason.clone().unwrap_or_default()),
        ],
    );
}

/// One line for a service on stdout: `NAME [STATE] pid=… exit_code=… restarts=… PORTS $ CMD`.
fn service_summary(
    s: &pyro::workspace::ServiceInfo,
    ports: &[pyro::network::PublishedPort],
) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!(" {}:{}->{}", p.host_addr, p.host_port, p.guest_port))
        .collect();
    format!(
        "{} [{}] pid={}{} restarts={}{} $ {}",
        s.name,
        s.state,
        s.pid.map_or("-".into(), |p| p.to_string()),
        s.exit_code
            .map_or(String::new(), |c| format!(" exit_code={c}")),
        s.restarts,
        ports,
        s.command
    )
}

async fn service(pyro: &Pyro, c: ServiceCommand) -> anyhow::Result<ExitCode> {
    match c {
        ServiceCommand::Start(a) => {
            let a = *a;
            let readiness = if let Some(path) = a.ready_file {
                Some(Readiness::File { path })
            } else if let Some(address) = a.ready_tcp {
                Some(Readiness::Tcp { address })
            } else if let Some(url) = a.ready_http {
                Some(Readiness::Http { url })
            } else {
                a.ready_command
                    .map(|command| Readiness::Command { command })
            };
            let req = ServiceStartRequest {
                name: a.name,
                argv: a.command,
                cwd: a.cwd,
                env: parse_pairs("--env", &a.env)?,
                secret_env: a.secret_env,
                readiness,
                ready_timeout: Duration::from_secs(a.ready_timeout),
                ready_interval: Some(Duration::from_millis(a.ready_interval_ms)),
                restart: a.restart,
                publish: a
                    .publish
                    .iter()
                    .map(|p| p.parse())
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let r = pyro.workspace_service_start(&a.id, &req).await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                service_line("workspace-service-start", &r.service);
                for p in &r.published_ports {
                    println!(
                        "published {}:{} -> guest port {}",
                        p.host_addr, p.host_port, p.guest_port
                    );
                }
            }
        }
        ServiceCommand::List(a) => {
            let list = pyro.workspace_service_list(&a.id).await?;
            if a.out.json {
                let running = list
                    .iter()
                    .filter(|s| s.service.state == "ready" || s.service.state == "starting")
                    .count();
                print_json(
                    &serde_json::json!({"count": list.len(), "running_service_count": running, "services": list}),
                )?;
            } else if list.is_empty() {
                println!("No workspace services found.");
            } else {
                for e in &list {
                    println!("{}", service_summary(&e.service, &e.published_ports));
                }
            }
        }
        ServiceCommand::Status(a) => {
            let r = pyro.workspace_service_status(&a.id, &a.name).await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                println!("{}", service_summary(&r.service, &r.published_ports));
                if let Some(reason) = &r.service.reason {
                    println!("reason: {reason}");
                }
            }
        }
        ServiceCommand::Logs(a) => {
            let r = pyro
                .workspace_service_logs(&a.id, &a.name, (!a.all).then_some(a.tail_lines))
                .await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                print!("{}", r.stdout);
                eprint!("{}", r.stderr);
                service_line("workspace-service-logs", &r.service);
            }
        }
        ServiceCommand::Stop(a) => {
            let r = pyro
                .workspace_service_stop(&a.id, &a.name, Duration::from_secs(a.grace))
                .await?;
            if a.out.json {
                print_json(&r)?;
            } else {
                service_line("workspace-service-stop", &r.service);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(w: WorkspaceInfo, action: &str, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&w)
    } else {
        summary(action, &w);
        Ok(())
    }
}

async fn create(pyro: &Pyro, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut req = CreateWorkspace::new(a.environment);
    req.name = a.name;
    req.labels = parse_pairs("--label", &a.labels)?;
    req.seed = a.seed_path.as_deref().map(Seed::from_path).transpose()?;
    // The default TTL (600 s) stays unless --ttl, --idle-ttl or --clear-ttl says otherwise.
    if a.clear_ttl || a.ttl == Some(0) || a.idle_ttl.is_some() {
        req.ttl = None;
    } else if a.ttl.is_some() {
        req.ttl = ttl(a.ttl);
    }
    req.idle_ttl = ttl(a.idle_ttl);
    req.allow_host_compat = a.allow_host_compat;
    req.vcpus = or_default(a.vcpu, pyro::user_config::default_vcpus)?;
    req.mem_mib = or_default(a.mem, pyro::user_config::default_mem_mib)?;
    req.isolation = a.isolation.as_deref().map(str::parse).transpose()?;
    req.build_missing = !a.no_build;
    let policy = match (a.network, a.network_policy.as_str()) {
        (true, "off") => "egress",
        (_, p) => p,
    };
    req.network = pyro::network::NetworkSpec::from_parts(false, Some(policy), &a.allow_hosts)?;
    for (name, value) in parse_pairs("--secret", &a.secrets)? {
        if value.is_empty() {
            anyhow::bail!("--secret {name}= has an empty value");
        }
        req.secrets.insert(name, Secret::new(value));
    }
    for (name, path) in parse_pairs("--secret-file", &a.secret_files)? {
        req.secrets
            .insert(name, secret_from_file(std::path::Path::new(path.trim()))?);
    }
    let observer = Arc::new(Phases {
        show: !a.json && !a.id_only,
        build: BuildProgress::new(),
    });
    // Ctrl-C or SIGTERM mid-create: the library deletes the half-made workspace.
    let (signalled, code) = super::interrupt_signal()?;
    let w = match pyro
        .workspace_create_or_cancel(&req, observer, signalled)
        .await?
    {
        pyro::Outcome::Done(w) => w,
        pyro::Outcome::Cancelled(report) => {
            return Ok(super::interrupted("workspace-create", &report, &code))
        }
    };
    for warning in &w.warnings {
        eprintln!("[workspace] warning: {warning}");
    }
    if a.json {
        print_json(&w)?;
    } else if a.id_only {
        println!("{}", w.workspace_id);
    } else {
        summary("Workspace", &w);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(pyro: &Pyro, a: ListArgs) -> anyhow::Result<ExitCode> {
    let labels = parse_pairs("--label", &a.labels)?;
    let list = pyro.workspace_list(&labels, a.state.as_deref())?;
    if a.out.json {
        print_json(&serde_json::json!({"count": list.len(), "workspaces": list}))?;
    } else if list.is_empty() {
        println!("No workspaces.");
    } else {
        for w in &list {
            let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{}  {:<10} {:<16} {:<10} name={} labels={} commands={} last_activity={}",
                w.workspace_id,
                w.state,
                w.environment,
                w.isolation,
                w.name.as_deref().unwrap_or("-"),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
                w.command_count,
                ms_to_rfc3339(w.last_activity_ms)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn update(pyro: &Pyro, a: UpdateArgs) -> anyhow::Result<ExitCode> {
    let mut u = UpdateWorkspace {
        set_labels: parse_pairs("--label", &a.labels)?,
        clear_labels: a.clear_labels,
        ..Default::default()
    };
    if a.clear_name {
        u.name = Some(None);
    } else if let Some(n) = a.name {
        u.name = Some(Some(n));
    }
    if a.clear_ttl || a.ttl == Some(0) {
        u.ttl = Some(None);
        u.idle_ttl = Some(None);
    } else {
        u.ttl = a.ttl.map(|t| Some(Duration::from_secs(t)));
        u.idle_ttl = a.idle_ttl.map(|t| Some(Duration::from_secs(t)));
    }
    show(
        pyro.workspace_update(&a.id, &u).await?,
        "Updated workspace",
        a.out.json,
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn delete(pyro: &Pyro, a: IdArgs) -> anyhow::Result<ExitCode> {
    let r = pyro.workspace_delete(&a.id).await?;
    if a.out.json {
        print_json(&r)?;
    } else if r.deleted {
        println!("Deleted workspace: {}", r.workspace_id);
    } else {
        println!(
            "Deleted workspace {} incompletely: {}",
            r.workspace_id,
            r.errors.join("; ")
        );
    }
    if !r.deleted {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn logs(pyro: &Pyro, a: IdArgs) -> anyhow::Result<ExitCode> {
    let logs = pyro.workspace_logs(&a.id)?;
    let refused = pyro.workspace_network_refused(&a.id)?;
    if a.out.json {
        print_json(
            &serde_json::json!({"count": logs.len(), "entries": logs, "network_refused": refused}),
        )?;
    } else if logs.is_empty() && refused.is_empty() {
        println!("No workspace logs found.");
    } else {
        for r in &refused {
            println!(
                "refused {} {} -> {}{} at={}",
                r.protocol,
                r.source,
                r.destination,
                r.port.map(|p| format!(":{p}")).unwrap_or_default(),
                r.at
            );
        }
        for l in &logs {
            println!(
                "#{} exit_code={} duration_ms={} cwd={} at={}{}",
                l.seq,
                l.exit_code,
                l.duration_ms,
                l.cwd,
                ms_to_rfc3339(l.started_at_ms),
                if l.interrupted {
                    " interrupted=true"
                } else {
                    ""
                }
            );
            println!("$ {}", l.command);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(pyro: &Pyro, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let opts = ExecOptions {
        timeout: Duration::from_secs(or_default(a.timeout, pyro::user_config::default_timeout_s)?),
        env: parse_pairs("--env", &a.env)?,
        cwd: a.cwd,
        max_output_bytes: a.max_output_bytes,
        stdin: super::command_stdin(a.no_stdin)?,
    };
    let mut pass = Passthrough;
    let out: Option<&mut dyn OutputSink> = if a.json { None } else { Some(&mut pass) };
    // On a signal the library stops the command and logs it as interrupted.
    let (signalled, code) = super::interrupt_signal()?;
    let r = match pyro
        .workspace_exec_or_cancel(&a.id, &a.command, &opts, &a.secret_env, out, signalled)
        .await?
    {
        pyro::Outcome::Done(r) => r,
        pyro::Outcome::Cancelled(_) => {
            let code = code.get();
            phase_line(
                "workspace-exec",
                &[
                    ("workspace_id", a.id.clone()),
                    ("phase", "interrupted".into()),
                    ("exit_code", code.to_string()),
                ],
            );
            return Ok(ExitCode::from(code));
        }
    };
    if a.json {
        print_json(&r)?;
        super::warn_truncated(
            "workspace-exec",
            &[("output", r.truncated)],
            a.max_output_bytes,
        );
    } else {
        phase_line(
            "workspace-exec",
            &[
                ("workspace_id", r.workspace_id.clone()),
                ("sequence", r.sequence.to_string()),
                ("cwd", r.cwd.clone()),
                ("exit_code", r.exit_code.to_string()),
                ("timed_out", r.timed_out.to_string()),
                // Streamed whole: only the result's copy is capped.
                ("truncated", "false".into()),
                ("duration_ms", r.duration_ms.to_string()),
            ],
        );
        for w in &r.warnings {
            eprintln!("[workspace-exec] warning: {w}");
        }
    }
    Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8))
}

async fn file_read(pyro: &Pyro, a: FileReadArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_file_read(&a.id, &a.path, a.max_bytes)
        .await?;
    print_file_read(&r, &a, "workspace-file-read")
}

async fn disk_read(pyro: &Pyro, a: FileReadArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_disk_read(&a.id, &a.path, a.max_bytes)
        .await?;
    print_file_read(&r, &a, "workspace-disk-read")
}

/// A file read as `file read` and `disk read` print it: the content, then a summary line on
/// stderr.
fn print_file_read(
    r: &pyro::workspace::FileReadResult,
    a: &FileReadArgs,
    phase: &str,
) -> anyhow::Result<ExitCode> {
    if a.json {
        print_json(r)?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&r.bytes)?;
        if !a.content_only {
            if !r.bytes.ends_with(b"\n") && !r.bytes.is_empty() {
                out.write_all(b"\n")?;
            }
            phase_line(
                phase,
                &[
                    ("workspace_id", r.workspace_id.clone()),
                    ("path", r.path.clone()),
                    ("size_bytes", r.size_bytes.to_string()),
                    ("truncated", r.truncated.to_string()),
                ],
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn file_write(pyro: &Pyro, a: FileWriteArgs) -> anyhow::Result<ExitCode> {
    let r = match (&a.text, &a.text_file) {
        (Some(t), _) => {
            pyro.workspace_file_write(&a.id, &a.path, &mut t.as_bytes())
                .await?
        }
        (None, Some(f)) => {
            let mut file = tokio::fs::File::open(f)
                .await
                .with_context(|| format!("open {}", f.display()))?;
            pyro.workspace_file_write(&a.id, &a.path, &mut file).await?
        }
        (None, None) => {
            pyro.workspace_file_write(&a.id, &a.path, &mut tokio::io::stdin())
                .await?
        }
    };
    if a.out.json {
        print_json(&r)?;
    } else {
        phase_line(
            "workspace-file-write",
            &[
                ("workspace_id", r.workspace_id.clone()),
                ("path", r.path.clone()),
                ("bytes_written", r.bytes_written.to_string()),
            ],
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn file_list(pyro: &Pyro, a: FileListArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_file_list(&a.id, &a.path, a.recursive)
        .await?;
    print_file_list(&r, &a)
}

async fn disk_list(pyro: &Pyro, a: FileListArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_disk_list(&a.id, &a.path, a.recursive)
        .await?;
    print_file_list(&r, &a)
}

fn print_file_list(
    r: &pyro::workspace::FileListResult,
    a: &FileListArgs,
) -> anyhow::Result<ExitCode> {
    if a.out.json {
        print_json(r)?;
    } else {
        for e in &r.entries {
            match &e.link_target {
                Some(t) => println!("{} [{}] -> {t}", e.path, e.kind),
                None => {
                    println!("{} [{}] size={} mode={:o}", e.path, e.kind, e.size, e.mode)
                }
            }
        }
        if r.truncated {
            println!("(listing truncated)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn disk_export(pyro: &Pyro, a: DiskExportArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_disk_export(&a.id, &a.output, a.force)
        .await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "[workspace-disk-export] workspace_id={} output_path={} disk_format={} layer_dir={} bytes_written={}",
            r.workspace_id,
            r.output_path.display(),
            r.disk_format,
            r.layer_dir,
            r.bytes_written
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn patch_apply(pyro: &Pyro, a: PatchApplyArgs) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    match &a.patch_file {
        Some(f) => {
            text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?
        }
        None => {
            tokio::io::stdin()
                .take(64 << 20)
                .read_to_string(&mut text)
                .await
                .context("read the patch from stdin")?;
        }
    }
    let r = pyro.workspace_patch_apply(&a.id, &text).await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "[workspace-patch] workspace_id={} total={} added={} modified={} deleted={}",
            r.workspace_id, r.summary.total, r.summary.added, r.summary.modified, r.summary.deleted
        );
        for e in &r.entries {
            println!("{} {}", e.status, e.path);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sync_push(pyro: &Pyro, a: SyncPushArgs) -> anyhow::Result<ExitCode> {
    let r = pyro
        .workspace_sync_push(&a.id, &a.source, a.dest.as_deref())
        .await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "[workspace-sync] workspace_id={} source={} destination={} entry_count={} bytes_written={}",
            r.workspace_id,
            r.source.display(),
            r.destination,
            r.entry_count,
            r.bytes_written
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn diff(pyro: &Pyro, a: IdArgs) -> anyhow::Result<ExitCode> {
    let r = pyro.workspace_diff(&a.id).await?;
    if a.out.json {
        print_json(&r)?;
    } else if !r.changed {
        println!("No workspace changes.");
    } else {
        println!(
            "[workspace-diff] workspace_id={} total={} added={} modified={} deleted={} truncated={}",
            r.workspace_id, r.summary.total, r.summary.added, r.summary.modified, r.summary.deleted, r.truncated
        );
        print!("{}", r.patch);
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(pyro: &Pyro, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let limits = pyro::unpack::OutputLimits {
        max_bytes: a.max_bytes,
        max_entries: a.max_entries,
    };
    let r = pyro
        .workspace_export(&a.id, &a.path, &a.output, a.force, limits)
        .await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "[workspace-export] workspace_id={} workspace_path={} output_path={} artifact_type={} entry_count={} bytes_written={} skipped_count={}",
            r.workspace_id,
            r.workspace_path,
            r.output_path.display(),
            r.artifact_type,
            r.entry_count,
            r.bytes_written,
            r.skipped_count
        );
        for s in &r.skipped {
            println!("[workspace-export] skipped path={} kind={}", s.path, s.kind);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot_create(pyro: &Pyro, a: SnapshotNameArgs) -> anyhow::Result<ExitCode> {
    let r = pyro.workspace_snapshot_create(&a.id, &a.name).await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!(
            "[workspace-snapshot-create] workspace_id={} snapshot={} entries={} bytes={} new_bytes={} duration_ms={}",
            r.workspace_id, r.snapshot.name, r.snapshot.entries, r.snapshot.bytes, r.new_bytes, r.duration_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot_list(pyro: &Pyro, a: IdArgs) -> anyhow::Result<ExitCode> {
    let list = pyro.workspace_snapshot_list(&a.id)?;
    if a.out.json {
        print_json(&serde_json::json!({"count": list.len(), "snapshots": list}))?;
    } else {
        for s in &list {
            println!(
                "{} [{}] entries={} bytes={} created={}",
                s.name,
                s.kind,
                s.entries,
                s.bytes,
                ms_to_rfc3339(s.created_at_ms)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot_delete(pyro: &Pyro, a: SnapshotNameArgs) -> anyhow::Result<ExitCode> {
    let r = pyro.workspace_snapshot_delete(&a.id, &a.name).await?;
    if a.out.json {
        print_json(&r)?;
    } else {
        println!("Deleted workspace snapshot: {}", a.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_utc() {
        assert_eq!(ms_to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(ms_to_rfc3339(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(ms_to_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
