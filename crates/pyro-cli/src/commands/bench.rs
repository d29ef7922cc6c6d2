//! `pyro bench`.

use std::process::ExitCode;

use pyro::bench::BenchRequest;
use pyro::Pyro;

use crate::cli::BenchArgs;
use crate::output::print_json;

pub async fn bench(pyro: &Pyro, a: BenchArgs) -> anyhow::Result<ExitCode> {
    let req = BenchRequest {
        environment: a.env,
        isolation: a.isolation.parse()?,
        runs: a.runs,
        build_missing: true,
    };
    let r = pyro.bench(&req).await?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "isolation={} environment={} cpus={} kernel={} cgroup={}",
            r.isolation, r.environment, r.host.cpus, r.host.kernel, r.host.cgroup
        );
        println!(
            "{:<24} {:>5} {:>10} {:>10} {:>10} {:>10}",
            "measurement", "n", "p50 ms", "p95 ms", "min ms", "max ms"
        );
        for s in &r.results {
            println!(
                "{:<24} {:>5} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                s.name, s.n, s.p50_ms, s.p95_ms, s.min_ms, s.max_ms
            );
        }
        if let Some(m) = &r.host_memory {
            println!(
                "host memory per idle sandbox: {:.1} MiB ({})",
                m.bytes as f64 / (1024.0 * 1024.0),
                m.method
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
