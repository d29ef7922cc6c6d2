//! `pyro bench`: the numbers SPEC §5 asks for, measured on this host. A benchmark, not a test:
//! nothing here asserts a threshold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Isolation, Resources};
use crate::engine::Pyro;
use crate::error::Result;
use crate::run::{limits, Quiet, RunRequest};
use crate::sandbox::{ExecOptions, Sandbox};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// Environment to use (must be built, or `build_missing`).
    pub environment: String,
    /// Isolation level.
    pub isolation: Isolation,
    /// Samples per measurement.
    pub runs: usize,
    /// Build the environment first if needed.
    pub build_missing: bool,
}

/// Summary statistics of one measurement, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Stats {
    /// Statistics over samples (nearest-rank percentiles).
    pub fn of(name: &str, mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
            samples.get(i).copied().map_or(0.0, ms)
        };
        Stats {
            name: name.into(),
            n: samples.len(),
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            min_ms: samples.first().copied().map_or(0.0, ms),
            max_ms: samples.last().copied().map_or(0.0, ms),
        }
    }
}

/// The host the numbers came from.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// CPUs online.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// cgroup version.
    pub cgroup: String,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Isolation level.
    pub isolation: Isolation,
    /// Environment.
    pub environment: String,
    /// The host.
    pub host: HostInfo,
    /// The measurements.
    pub results: Vec<Stats>,
    /// Host memory one idle sandbox costs, if it could be read.
    pub host_memory: Option<HostMemory>,
}

/// Host memory of one idle sandbox (after a few execs).
#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    /// Bytes.
    pub bytes: u64,
    /// How it was counted: the sandbox cgroup's usage (container), or the proportional set size
    /// of its VMM processes (VMs: guest memory the guest touched plus the VMM's own).
    pub method: String,
}

/// Reads the host memory of a live sandbox.
fn host_memory(record: &crate::store::SandboxRecord) -> Option<HostMemory> {
    if record.backend == crate::backend::BackendKind::Container {
        let id = &record.id;
        let v1 = format!("/sys/fs/cgroup/memory/pyro/{id}/memory.usage_in_bytes");
        let v2 = format!("/sys/fs/cgroup/pyro/{id}/memory.current");
        for (path, method) in [
            (v1, "cgroup v1 memory.usage_in_bytes"),
            (v2, "cgroup v2 memory.current"),
        ] {
            if let Some(bytes) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(HostMemory {
                    bytes,
                    method: method.into(),
                });
            }
        }
        return None;
    }
    let mut total = 0u64;
    let mut names = Vec::new();
    for (name, p) in crate::backend::vmm::recorded_processes(&record.run_dir) {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok()?;
        let kb: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        total += kb * 1024;
        names.push(name);
    }
    (!names.is_empty()).then(|| HostMemory {
        bytes: total,
        method: format!("sum of Pss of {}", names.join(" + ")),
    })
}

impl Pyro {
    /// Measures one-shot `run -- true` end to end (library call, cached environment) and the
    /// exec round trip of `true` on one live sandbox.
    pub async fn bench(&self, req: &BenchRequest) -> Result<BenchReport> {
        let runs = req.runs.max(1);
        let mut run_req = RunRequest::new(req.environment.clone(), vec!["true".into()]);
        run_req.isolation = Some(req.isolation);
        run_req.build_missing = req.build_missing;
        // One warm-up run builds or unpacks the environment if needed.
        self.run(&run_req, Arc::new(Quiet), None).await?;
        let mut e2e = Vec::with_capacity(runs);
        let (mut create, mut boot, mut cleanup) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let r = self.run(&run_req, Arc::new(Quiet), None).await?;
            e2e.push(t.elapsed());
            // The phases of each run: starting the sandbox (for VMs: disk, vsock backend and
            // VMM processes), booting until the agent answers, and deleting it.
            create.push(Duration::from_millis(r.timing.create_ms));
            boot.push(Duration::from_millis(r.timing.boot_ms));
            cleanup.push(Duration::from_millis(r.timing.cleanup_ms));
        }

        let backend = self.backend_for(req.isolation)?;
        let env = self.inner.envs.resolve(&req.environment)?;
        let rootfs = self.rootfs(&env, backend.as_ref()).await?;
        let resources = Resources {
            vcpus: 1,
            mem_mib: 1024,
            pids: limits::DEFAULT_PIDS,
        };
        let mut sb =
            Sandbox::create(self.inner.ctx.clone(), backend, &env, &rootfs, resources).await?;
        let opts = ExecOptions {
            timeout: Duration::from_secs(30),
            env: Default::default(),
            cwd: None,
            max_output_bytes: 1 << 20,
            ..ExecOptions::default()
        };
        let argv = vec!["true".to_string()];
        let mut rt = Vec::with_capacity(runs);
        let mut failure = None;
        for _ in 0..runs {
            let t = Instant::now();
            if let Err(e) = sb.exec(&argv, &opts, None).await {
                failure = Some(e);
                break;
            }
            rt.push(t.elapsed());
        }
        let memory = host_memory(&sb.record);
        sb.destroy("post_exec").await;
        if let Some(e) = failure {
            return Err(e);
        }
        // With a network (where the host can give one): what the veth or tap, the rules and the
        // guest's resolver files add to a one-shot run.
        let mut networked = Vec::new();
        if let Ok(backend) = self.backend_for(req.isolation) {
            if crate::backend::check_network(backend.as_ref()).is_ok() {
                let mut net_req = run_req.clone();
                net_req.network = crate::network::NetworkSpec::egress();
                for _ in 0..runs.min(10) {
                    let t = Instant::now();
                    self.run(&net_req, Arc::new(Quiet), None).await?;
                    networked.push(t.elapsed());
                }
            }
        }
        let mut results = vec![
            Stats::of("run_true_end_to_end", e2e),
            Stats::of("run_create", create),
            Stats::of("run_boot_to_agent", boot),
            Stats::of("run_cleanup", cleanup),
            Stats::of("exec_round_trip", rt),
        ];
        if !networked.is_empty() {
            results.push(Stats::of("run_true_with_network", networked));
        }
        results.extend(self.bench_workspaces(req, runs).await?);
        Ok(BenchReport {
            isolation: req.isolation,
            environment: req.environment.clone(),
            host: HostInfo {
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                kernel: nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                cgroup: crate::backend::container::cgroup_version().into(),
            },
            results,
            host_memory: memory,
        })
    }

    /// Workspace numbers: create to first exec, and diff, snapshot and reset on a workspace
    /// seeded with 10,000 small files of which 10 change.
    async fn bench_workspaces(&self, req: &BenchRequest, runs: usize) -> Result<Vec<Stats>> {
        use crate::workspace::{CreateWorkspace, Seed};
        let opts = ExecOptions {
            timeout: Duration::from_secs(60),
            env: Default::default(),
            cwd: None,
            max_output_bytes: 1 << 20,
            ..ExecOptions::default()
        };
        let mut create = CreateWorkspace::new(req.environment.clone());
        create.isolation = Some(req.isolation);
        let mut first_exec = Vec::new();
        for _ in 0..runs.min(10) {
            let t = Instant::now();
            let w = self.workspace_create(&create, Arc::new(Quiet)).await?;
            let r = self
                .workspace_exec(&w.workspace_id, &["true".to_string()], &opts, None)
                .await;
            first_exec.push(t.elapsed());
            self.workspace_delete(&w.workspace_id).await?;
            r?;
        }

        if req.isolation != Isolation::Container {
            // Under emulation, creating and hashing 10,000 files in the guest takes minutes;
            // the 10k-file numbers are measured on the container level.
            return Ok(vec![Stats::of(
                "workspace_create_to_first_exec",
                first_exec,
            )]);
        }
        let seed_dir = self
            .config()
            .paths
            .home
            .join("tmp")
            .join(format!("bench-seed-{}", std::process::id()));
        let made: std::io::Result<()> = (|| {
            for i in 0..10_000 {
                let d = seed_dir.join(format!("d{}", i / 100));
                if i % 100 == 0 {
                    std::fs::create_dir_all(&d)?;
                }
                std::fs::write(d.join(format!("f{i}.txt")), format!("line {i}\n"))?;
            }
            Ok(())
        })();
        made.map_err(|e| crate::error::Error::io("create the 10k-file bench seed", e))?;
        create.seed = Some(Seed::Dir(seed_dir.clone()));
        let w = self.workspace_create(&create, Arc::new(Quiet)).await;
        let _ = std::fs::remove_dir_all(&seed_dir);
        let id = w?.workspace_id;
        let result: Result<Vec<Stats>> = async {
            let change = vec!["sh".to_string(), "-c".to_string(), "for i in 0 1 2 3 4 5 6 7 8 9; do echo changed$RANDOM >> d$i/f$((i*100+1)).txt; done".to_string()];
            self.workspace_exec(&id, &change, &opts, None).await?;
            let t = Instant::now();
            let d = self.workspace_diff(&id).await?;
            let cold = vec![t.elapsed()];
            if d.summary.modified != 10 {
                return Err(crate::error::Error::Agent(format!("bench diff saw {} modified files, expected 10", d.summary.modified)));
            }
            let mut warm = Vec::new();
            for _ in 0..runs {
                self.workspace_exec(&id, &change, &opts, None).await?;
                let t = Instant::now();
                self.workspace_diff(&id).await?;
                warm.push(t.elapsed());
            }
            let mut snaps = Vec::new();
            for i in 0..runs.min(10) {
                self.workspace_exec(&id, &change, &opts, None).await?;
                let t = Instant::now();
                self.workspace_snapshot_create(&id, &format!("bench{i}")).await?;
                snaps.push(t.elapsed());
            }
            let mut resets = Vec::new();
            for _ in 0..runs.min(5) {
                let t = Instant::now();
                self.workspace_reset(&id, None).await?;
                resets.push(t.elapsed());
            }
            Ok(vec![
                Stats::of("workspace_create_to_first_exec", first_exec),
                Stats::of("diff_10k_files_first", cold),
                Stats::of("diff_10k_files_10_changed", warm),
                Stats::of("snapshot_10k_files", snaps),
                Stats::of("reset_10k_files", resets),
            ])
        }
        .await;
        self.workspace_delete(&id).await?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Stats::of("x", (1..=20).map(Duration::from_millis).collect());
        assert_eq!(s.p50_ms, 10.0);
        assert_eq!(s.p95_ms, 19.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 20.0);
    }
}
