//! `pyro kernel`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli_kernel::KernelCommand;
use crate::output::{print_json, TransferProgress};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub async fn kernel(pyro: &Pyro, c: KernelCommand) -> anyhow::Result<ExitCode> {
    match c {
        KernelCommand::List(o) => {
            let l = pyro.kernel_list()?;
            if o.json {
                print_json(&l)?;
            } else {
                println!("Kernel cache: {}", l.kernel_dir.display());
                println!("Config fragment: {}", l.wanted_fragment_sha256);
                match &l.in_use {
                    Some(p) => println!("VMs boot: {}", p.display()),
                    None => println!("VMs boot: (no kernel for this pyro)"),
                }
                println!(
                    "Catalog: {} ({})",
                    l.catalog_reference,
                    l.pinned_digest.as_deref().unwrap_or("not pinned")
                );
                for k in &l.kernels {
                    let state = match (k.in_use, k.current) {
                        (true, _) => "in use",
                        (false, true) => "current",
                        (false, false) => "other config",
                    };
                    println!(
                        "{:<24} {:<13} {:>10}  {}",
                        k.build,
                        state,
                        mib(k.size_bytes),
                        k.source
                            .as_deref()
                            .or(k.source_version.as_deref())
                            .unwrap_or("")
                    );
                }
            }
        }
        KernelCommand::Inspect(a) => {
            let k = pyro.kernel_inspect(&a.reference).await?;
            if a.out.json {
                print_json(&k)?;
            } else {
                println!("Kernel: {}", k.reference);
                println!("Digest: {}", k.digest);
                println!(
                    "Config fragment: {}{}",
                    k.fragment_sha256,
                    if k.current {
                        " (this pyro's)"
                    } else {
                        " (not this pyro's)"
                    }
                );
                if let Some(v) = &k.source_version {
                    println!("Source: {v}");
                }
                println!("Architecture: {}", k.arch);
                println!("Size: {}", mib(k.size_bytes));
            }
        }
        KernelCommand::Pull(a) => {
            let progress = std::sync::Arc::new(TransferProgress::keyed("kernel-pull", "kernel"));
            let p = progress.clone();
            let what = a.reference.clone().unwrap_or_else(|| "catalog".into());
            let r = pyro
                .kernel_pull(
                    a.reference.as_deref(),
                    a.digest.as_deref(),
                    Box::new(move |t| p.event(&what, &t)),
                )
                .await;
            progress.finish();
            let r = r?;
            if a.out.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} {}",
                    if r.already_installed {
                        "Already installed:"
                    } else {
                        "Pulled"
                    },
                    r.reference
                );
                println!("Digest: {}", r.digest);
                println!("Kernel: {}", r.path.display());
                println!(
                    "Size: {}, {} downloaded",
                    mib(r.size_bytes),
                    mib(r.downloaded_bytes)
                );
                if !r.in_use {
                    println!("Note: VMs boot another kernel (PYRO_KERNEL, or a newer build)");
                }
            }
        }
        KernelCommand::Push(a) => {
            let progress = std::sync::Arc::new(TransferProgress::keyed("kernel-push", "kernel"));
            let p = progress.clone();
            let what = a.reference.clone();
            let r = pyro
                .kernel_push(&a.reference, Box::new(move |t| p.event(&what, &t)))
                .await;
            progress.finish();
            let r = r?;
            if a.out.json {
                print_json(&r)?;
            } else {
                println!("Pushed {} to {}", r.path.display(), r.reference);
                println!("Digest: {}", r.digest);
                println!(
                    "Uploaded {} blobs ({}), {} already there",
                    r.uploaded_blobs,
                    mib(r.uploaded_bytes),
                    r.existing_blobs
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
