//! A workspace session with the async SDK: create a workspace, write and run code in it, look
//! at the diff, reset it, and delete it.
//!
//! `cargo run --example workspace_session` (as root, with runc; builds `debian:12` on first
//! use). Exits with a message, and status 0, when this host cannot run containers.

use std::sync::Arc;

use pyro::{Config, CreateWorkspace, ExecOptions, Isolation, Pyro, Quiet};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pyro = Pyro::open(Config::from_env()).await?;
    let container = pyro
        .levels()
        .into_iter()
        .find(|l| l.level == Isolation::Container);
    if let Some(why) = container.and_then(|l| l.reason) {
        eprintln!("skipping: the container level is not usable here: {why}");
        return Ok(());
    }

    let mut req = CreateWorkspace::new("debian:12");
    req.isolation = Some(Isolation::Container);
    req.build_missing = true;
    req.idle_ttl = Some(std::time::Duration::from_secs(600));
    let ws = pyro.workspace_create(&req, Arc::new(Quiet)).await?;
    let id = ws.workspace_id.clone();
    println!("workspace {id} is {}", ws.state);

    // Whatever happens below, the workspace is deleted at the end.
    let session = async {
        let mut script: &[u8] = b"#!/bin/sh\necho \"hello from $(uname -n)\"\n";
        pyro.workspace_file_write(&id, "hello.sh", &mut script)
            .await?;
        let argv = ["sh".to_string(), "hello.sh".to_string()];
        let out = pyro
            .workspace_exec(&id, &argv, &ExecOptions::default(), None)
            .await?;
        print!("{}", out.stdout);

        let diff = pyro.workspace_diff(&id).await?;
        println!(
            "diff: {} added, {} modified, {} deleted",
            diff.summary.added, diff.summary.modified, diff.summary.deleted
        );

        pyro.workspace_reset(&id, None).await?;
        let ls = pyro.workspace_file_list(&id, "/workspace", false).await?;
        println!("after reset: {} entries in /workspace", ls.entries.len());
        Ok::<(), pyro::Error>(())
    }
    .await;

    let deleted = pyro.workspace_delete(&id).await?;
    println!("deleted: {}", deleted.deleted);
    session?;
    Ok(())
}
