//! `pyro env`.

use std::process::ExitCode;

use pyro::Pyro;

use crate::cli::{EnvArgs, EnvCommand};
use crate::output::{print_json, BuildProgress, TransferProgress};

fn size(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "-".into(),
    }
}

fn describe(e: &pyro::env::EnvInfo) {
    println!("Environment: {}", e.name);
    println!("Description: {}", e.description);
    if let Some(s) = &e.source {
        println!("Pulled from: {s}");
    }
    if e.kind == "image" {
        if let Some(d) = &e.digest {
            println!("Digest: {d}");
        }
        println!("Size: {}", size(e.size_bytes));
        println!("OCI layout: {}", e.oci_layout.display());
        return;
    }
    println!("Distribution: {} {}", e.distribution, e.suite);
    println!(
        "Packages: {}",
        if e.packages.is_empty() {
            "(minimal)".to_string()
        } else {
            e.packages.join(", ")
        }
    );
    println!(
        "Installed: {}",
        if e.installed {
            "yes"
        } else if e.stale {
            "stale (recipe changed; rebuild)"
        } else {
            "no"
        }
    );
    println!("Recipe hash: {}", e.recipe_hash);
    if let Some(d) = &e.digest {
        println!("Digest: {d}");
    }
    println!("Size: {}", size(e.size_bytes));
    if let Some(t) = &e.built_at {
        println!("Built at: {t}");
    }
    println!("OCI layout: {}", e.oci_layout.display());
}

pub async fn env(pyro: &Pyro, a: EnvArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        EnvCommand::List(o) => {
            let list = pyro.env_list()?;
            if o.json {
                print_json(&serde_json::json!({"environments": list}))?;
            } else {
                for e in &list {
                    let state = if e.installed {
                        "installed"
                    } else if e.stale {
                        "stale"
                    } else {
                        "not installed"
                    };
                    let digest = e
                        .digest
                        .as_deref()
                        .map(|d| &d[..d.len().min(19)])
                        .unwrap_or("-");
                    println!(
                        "{:<16} {:<14} {:<20} {:>10}  {}",
                        e.name,
                        state,
                        digest,
                        size(e.size_bytes),
                        e.description
                    );
                }
            }
        }
        EnvCommand::Inspect(n) => {
            let e = pyro.env_inspect(&n.name)?;
            if n.out.json {
                print_json(&e)?;
            } else {
                describe(&e);
            }
        }
        EnvCommand::Build(b) => {
            let progress = std::sync::Arc::new(BuildProgress::new());
            let p = progress.clone();
            let name = b.name.clone();
            let e = pyro
                .env_build(&b.name, b.force, Box::new(move |m: &str| p.step(&name, m)))
                .await;
            progress.finish();
            let e = e?;
            if b.out.json {
                print_json(&e)?;
            } else {
                describe(&e);
            }
        }
        EnvCommand::Pull(a) => {
            let progress = std::sync::Arc::new(TransferProgress::new("env-pull"));
            let build = std::sync::Arc::new(BuildProgress::new());
            let (p, b) = (progress.clone(), build.clone());
            let (target, name) = (a.target.clone(), a.target.clone());
            let r = pyro
                .env_pull_or_build(
                    &a.target,
                    a.digest.as_deref(),
                    a.no_build,
                    Box::new(move |t| p.event(&target, &t)),
                    Box::new(move |m: &str| b.step(&name, m)),
                )
                .await;
            progress.finish();
            build.finish();
            let r = r?;
            if a.out.json {
                print_json(&r)?;
            } else {
                match r {
                    pyro::EnvFetched::Pulled(r) => {
                        println!("Pulled {}", r.environment);
                        if r.reference != r.environment {
                            println!("From: {}", r.reference);
                        }
                        println!("Digest: {}", r.digest);
                        if r.source_digest != r.digest {
                            println!("Index digest: {}", r.source_digest);
                        }
                        println!(
                            "Size: {} in {} layers, {} downloaded",
                            size(Some(r.size_bytes)),
                            r.layers,
                            size(Some(r.downloaded_bytes))
                        );
                    }
                    pyro::EnvFetched::Built { env, note, .. } => {
                        println!("Note: {note}");
                        describe(&env);
                    }
                }
            }
        }
        EnvCommand::Push(a) => {
            let progress = std::sync::Arc::new(TransferProgress::new("env-push"));
            let p = progress.clone();
            let name = a.name.clone();
            let r = pyro
                .env_push(&a.name, &a.reference, Box::new(move |t| p.event(&name, &t)))
                .await;
            progress.finish();
            let r = r?;
            if a.out.json {
                print_json(&r)?;
            } else {
                println!("Pushed {} to {}", r.environment, r.reference);
                println!("Digest: {}", r.digest);
                println!(
                    "Uploaded {} blobs ({}), {} already there",
                    r.uploaded_blobs,
                    size(Some(r.uploaded_bytes)),
                    r.existing_blobs
                );
            }
        }
        EnvCommand::Prune(o) => {
            let r = pyro.env_prune()?;
            if o.json {
                print_json(&r)?;
            } else {
                println!(
                    "Removed {} cache entries, freed {}.",
                    r.removed.len(),
                    size(Some(r.freed_bytes))
                );
                for x in &r.removed {
                    println!("- {x}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
