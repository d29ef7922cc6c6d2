//! Workspace lifetimes: absolute and idle TTLs stop a workspace, activity refreshes an idle TTL,
//! and an expired workspace is deleted only after the grace period. The sweep runs at every
//! pyro start, so any command triggers it.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::time::Duration;

use util::{container_tests_enabled, TestPyro};

fn create(p: &TestPyro, extra: &[&str]) -> String {
    p.create_workspace(extra).0
}

fn state(p: &TestPyro, id: &str) -> serde_json::Value {
    let (out, v) = p.json(&["workspace", "status", id]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    v
}

#[test]
fn an_absolute_ttl_stops_the_workspace_and_keeps_its_files() {
    if !container_tests_enabled("an_absolute_ttl_stops_the_workspace_and_keeps_its_files") {
        return;
    }
    let p = TestPyro::new();
    let id = create(&p, &["--ttl", "1"]);
    let v = state(&p, &id);
    assert!(v["expires_at_ms"].is_i64(), "{v}");
    std::thread::sleep(Duration::from_millis(1500));
    let v = state(&p, &id);
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["expired_at_ms"].is_i64());
    // A call to it says what works: extending the ttl, not a bare `start` (which refuses).
    let (out, v) = p.json(&["workspace", "exec", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "workspace_expired", "{v}");
    let hint = v["error"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("workspace update") && hint.contains("--ttl"),
        "{hint}"
    );
    // Kept for the grace period. Starting it needs a longer (or no) ttl first.
    let (out, v) = p.json(&["workspace", "start", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("past its ttl"),
        "{v}"
    );
    let (out, v) = p.json(&["workspace", "update", &id, "--clear-ttl"]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let (out, v) = p.json(&["workspace", "start", &id]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["state"], "running");
    let (out, v) = p.json(&["workspace", "delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{v}");
}

#[test]
fn activity_refreshes_an_idle_ttl() {
    if !container_tests_enabled("activity_refreshes_an_idle_ttl") {
        return;
    }
    let p = TestPyro::new();
    let id = create(&p, &["--idle-ttl", "3"]);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let (out, v) = p.json(&["workspace", "exec", &id, "--", "true"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "activity must keep it alive: {v}"
        );
    }
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(state(&p, &id)["state"], "stopped");
    p.json(&["workspace", "delete", &id]);
}

#[test]
fn an_expired_workspace_is_deleted_after_the_grace_period() {
    if !container_tests_enabled("an_expired_workspace_is_deleted_after_the_grace_period") {
        return;
    }
    let p = TestPyro::new();
    let id = create(&p, &["--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    // First sweep stops it; with no grace the next sweep deletes it.
    let out = p
        .cmd(&["workspace", "list", "--json"])
        .env("PYRO_WORKSPACE_GRACE_S", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = p
        .cmd(&["workspace", "list", "--json"])
        .env("PYRO_WORKSPACE_GRACE_S", "0")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 0, "{v}");
    assert_eq!(util::host_traces(&id), Vec::<String>::new());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn ttl_and_idle_ttl_are_exclusive() {
    let p = TestPyro::new();
    let out = p.run(&[
        "workspace",
        "create",
        "debian:12",
        "--ttl",
        "5",
        "--idle-ttl",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
