//! Environments over a real OCI registry on loopback (Debian's `docker-registry`, started per
//! test): push, pinned pulls, digest checks, interrupted and concurrent pulls, images of
//! another architecture, and arbitrary multi-layer images run as environments. Pull-only tests
//! need just the registry; the ones that run sandboxes need root and runc too.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use util::require_containers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::registry::{
    gzip, push_image, push_image_manifest, push_image_with_config, push_manifest,
    registry_tests_enabled, sha256, tar_of, tar_with_modes, zstd, Layer, Proxy, Registry, INDEX,
    LAYER_GZIP, LAYER_TAR, LAYER_ZSTD, MANIFEST, TEST_PASSWORD, TEST_USER,
};
use util::{stderr, stdout, vm_tests_enabled, TestPyro};

macro_rules! require_registry {
    () => {
        if !registry_tests_enabled(module_path!()) {
            return;
        }
    };
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or(Value::Null)
}

/// Index entries of an installation's OCI layout.
fn index_entries(p: &TestPyro) -> Vec<Value> {
    read_json(&p.cache.join("oci/index.json"))["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn blob_exists(p: &TestPyro, digest: &str) -> bool {
    p.cache
        .join("oci/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

/// Scratch directories of pulls under the cache's tmp/.
fn pull_scratch_dirs(p: &TestPyro) -> Vec<PathBuf> {
    std::fs::read_dir(p.cache.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("pull-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_error(out: &std::process::Output, v: &Value, kind: &str) {
    assert_eq!(out.status.code(), Some(1), "{v}\nstderr: {}", stderr(out));
    assert_eq!(v["error"]["kind"], kind, "{v}");
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn build_push_prune_pull_run() {
    require_registry!();
    require_containers!();
    let reg = Registry::start();
    let publisher = TestPyro::new();
    let out = publisher.run(&["env", "build", "debian:12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let built = publisher.json(&["env", "inspect", "debian:12"]).1;
    let target = format!("{}/pyro/debian:12", reg.host());
    let (out, pushed) = publisher.json(&["env", "push", "debian:12", &target]);
    assert!(out.status.success(), "{pushed}\n{}", stderr(&out));
    assert_eq!(
        pushed["digest"], built["digest"],
        "the manifest keeps its digest"
    );
    assert_eq!(pushed["uploaded_blobs"], 2, "{pushed}");
    let digest = pushed["digest"].as_str().unwrap().to_owned();
    let (_, again) = publisher.json(&["env", "push", "debian:12", &target]);
    assert_eq!(again["uploaded_blobs"], 0, "{again}");
    assert_eq!(again["existing_blobs"], 2, "{again}");

    let mut p = TestPyro::with_private_cache();
    p.env("PYRO_REGISTRY", format!("{}/pyro", reg.host()));
    // Without a pin, `--no-build` refuses (without it, the recipe is built: see
    // seed_compat.rs).
    let (out, v) = p.json(&["env", "pull", "debian:12", "--no-build"]);
    assert_error(&out, &v, "not_pinned");

    // A pin that is not what the registry serves: refused, nothing installed.
    let pins = p.dir.path().join("pins.toml");
    let wrong = format!("sha256:{}", "0".repeat(64));
    std::fs::write(&pins, format!("[pins]\n\"debian:12\" = \"{wrong}\"\n")).unwrap();
    p.env("PYRO_PINS", pins.display().to_string());
    let (out, v) = p.json(&["env", "pull", "debian:12"]);
    assert_error(&out, &v, "digest_mismatch");
    assert!(index_entries(&p).is_empty());
    let (_, v) = p.json(&["env", "pull", "debian:12", "--digest", &wrong]);
    assert_eq!(v["error"]["kind"], "digest_mismatch", "{v}");

    std::fs::write(&pins, format!("[pins]\n\"debian:12\" = \"{digest}\"\n")).unwrap();
    let (out, v) = p.json(&["env", "pull", "debian:12"]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["pinned_digest"], digest.as_str());
    assert!(v["downloaded_bytes"].as_u64().unwrap() > 1 << 20, "{v}");
    let err = stderr(&out);
    assert!(
        err.contains("[env-pull]"),
        "plain phase lines off a terminal: {err}"
    );

    let (out, pruned) = p.json(&["env", "prune"]);
    assert!(out.status.success(), "{pruned}");
    let info = p.json(&["env", "inspect", "debian:12"]).1;
    assert_eq!(info["installed"], true, "{info}");
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["source"], target.as_str());

    let out = p.run(&[
        "run",
        "debian:12",
        "--isolation",
        "container",
        "--no-build",
        "--",
        "git",
        "--version",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("git version 2.39"),
        "{}",
        stdout(&out)
    );

    // The same image by reference: pulled on first use, its blobs already in the cache.
    let (out, v) = p.json(&[
        "run",
        &target,
        "--isolation",
        "container",
        "--",
        "cat",
        "/etc/debian_version",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert!(v["stdout"].as_str().unwrap().starts_with("12."), "{v}");
    assert_eq!(v["environment_digest"], digest.as_str());
    let list = p.json(&["env", "list"]).1;
    let names: Vec<&str> = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "debian:12",
            "debian:12-base",
            "debian:12-build",
            target.as_str()
        ]
    );
}

#[test]
fn a_tampered_blob_fails_with_a_digest_error_and_installs_nothing() {
    require_registry!();
    let reg = Registry::start();
    let layer = tar_of(&[("hello.txt", "hello world\n")]);
    let layer_digest = sha256(&layer);
    push_image(
        reg.port,
        "tiny/app",
        "1",
        host_arch(),
        &[Layer {
            media_type: LAYER_TAR,
            blob: layer.clone(),
        }],
    );
    // Same size, one byte different: only the digest can tell.
    let file = reg.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();

    let p = TestPyro::with_private_cache();
    let reference = format!("{}/tiny/app:1", reg.host());
    let (out, v) = p.json(&["env", "pull", &reference]);
    assert_error(&out, &v, "digest_mismatch");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&layer_digest),
        "{v}"
    );
    assert!(index_entries(&p).is_empty());
    assert!(!blob_exists(&p, &layer_digest));
    assert_eq!(pull_scratch_dirs(&p), Vec::<PathBuf>::new());
    let (out, v) = p.json(&["env", "inspect", &reference]);
    assert_error(&out, &v, "image_not_pulled");
}

#[test]
fn a_pull_killed_midway_installs_nothing_and_the_next_one_completes() {
    require_registry!();
    let reg = Registry::start();
    let big = "0123456789abcdef".repeat(1 << 19); // 8 MiB
    let layer = tar_of(&[("big.bin", big.as_str())]);
    let layer_digest = sha256(&layer);
    let manifest_digest = push_image(
        reg.port,
        "big/app",
        "1",
        host_arch(),
        &[Layer {
            media_type: LAYER_TAR,
            blob: layer.clone(),
        }],
    );
    let proxy = Proxy::start(reg.port, 1 << 20);
    let reference = format!("127.0.0.1:{}/big/app:1", proxy.port);
    let p = TestPyro::with_private_cache();

    let mut child = p
        .cmd(&["env", "pull", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The layer's partial download: the only file in the scratch dir above a KiB (the config
    // is tiny and complete).
    let partial_size = |p: &TestPyro| -> Option<u64> {
        pull_scratch_dirs(p).into_iter().find_map(|d| {
            std::fs::read_dir(d)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("download-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .find(|len| *len > 1024)
        })
    };
    let got = loop {
        if let Some(len) = partial_size(&p) {
            break len;
        }
        assert!(Instant::now() < deadline, "the pull never got going");
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(got < layer.len() as u64, "stalled midway: {got} bytes");
    // A prune meanwhile leaves the live pull's scratch dir alone.
    let scratch = pull_scratch_dirs(&p);
    let (out, pruned) = p.json(&["env", "prune"]);
    assert!(out.status.success(), "{pruned}");
    assert_eq!(pull_scratch_dirs(&p), scratch, "{pruned}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pull survives a prune"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(index_entries(&p).is_empty(), "nothing installed");
    assert!(!blob_exists(&p, &layer_digest));

    proxy
        .stall
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (out, v) = p.json(&["env", "pull", &reference]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["digest"], manifest_digest.as_str());
    let downloaded = v["downloaded_bytes"].as_u64().unwrap();
    assert!(
        downloaded > layer.len() as u64 && downloaded < layer.len() as u64 + 1024,
        "layer and config downloaded in full again: {v}"
    );
    assert!(blob_exists(&p, &layer_digest));
    assert_eq!(
        pull_scratch_dirs(&p),
        Vec::<PathBuf>::new(),
        "the dead pull's scratch dir is gone"
    );

    // Two pulls of the same image at once, into a fresh cache: both succeed, one entry.
    let q = TestPyro::with_private_cache();
    let direct = format!("{}/big/app:1", reg.host());
    let children: Vec<_> = (0..2)
        .map(|_| {
            q.cmd(&["env", "pull", &direct, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let entries = index_entries(&q);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["digest"], manifest_digest.as_str());
    let blob = std::fs::read(
        q.cache
            .join("oci/blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(sha256(&blob), layer_digest);
}

#[test]
fn images_of_another_architecture_are_refused() {
    require_registry!();
    let reg = Registry::start();
    let layer = Layer {
        media_type: LAYER_TAR,
        blob: tar_of(&[("hello.txt", "hi\n")]),
    };
    let other = if host_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let p = TestPyro::with_private_cache();

    let (other_digest, other_manifest) = push_image_manifest(
        reg.port,
        "multi/app",
        "other",
        other,
        std::slice::from_ref(&layer),
    );
    let (out, v) = p.json(&["env", "pull", &format!("{}/multi/app:other", reg.host())]);
    assert_error(&out, &v, "platform_mismatch");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(other),
        "{v}"
    );

    // An index without this host's platform.
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({"mediaType": MANIFEST, "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX,
        "manifests": [entry(&other_digest, other_manifest.len(), other)]});
    push_manifest(
        reg.port,
        "multi/app",
        "only-other",
        INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
    let (out, v) = p.json(&[
        "env",
        "pull",
        &format!("{}/multi/app:only-other", reg.host()),
    ]);
    assert_error(&out, &v, "platform_mismatch");
    assert!(index_entries(&p).is_empty());

    // An index with both: the host's entry is chosen.
    let (host_digest, host_manifest) =
        push_image_manifest(reg.port, "multi/app", "host", host_arch(), &[layer]);
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        entry(&other_digest, other_manifest.len(), other),
        entry(&host_digest, host_manifest.len(), host_arch()),
    ]});
    let index_digest = push_manifest(
        reg.port,
        "multi/app",
        "both",
        INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
    let (out, v) = p.json(&["env", "pull", &format!("{}/multi/app:both", reg.host())]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["digest"], host_digest.as_str());
    assert_eq!(v["source_digest"], index_digest.as_str());
    // By digest too; a digest the content does not have is refused.
    let by_digest = format!("{}/multi/app@{index_digest}", reg.host());
    let (out, v) = p.json(&["env", "pull", &by_digest]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    let (out, v) = p.json(&[
        "env",
        "pull",
        &format!("{}/multi/app:both", reg.host()),
        "--digest",
        &host_digest,
    ]);
    assert_error(&out, &v, "digest_mismatch");
}

/// The layers of the shared cache's debian:12 image, bottom first.
fn debian_layers() -> Vec<Vec<u8>> {
    let p = TestPyro::new();
    let out = p.run(&["env", "build", "debian:12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info = p.json(&["env", "inspect", "debian:12"]).1;
    let blobs = p.cache.join("oci/blobs/sha256");
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let manifest = read_json(&blobs.join(hex(info["digest"].as_str().unwrap())));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| std::fs::read(blobs.join(hex(l["digest"].as_str().unwrap()))).unwrap())
        .collect()
}

#[test]
fn a_multi_layer_image_with_whiteouts_and_hard_links_gives_the_expected_tree() {
    require_registry!();
    require_containers!();
    let reg = Registry::start();
    let mut layers: Vec<Layer> = debian_layers()
        .into_iter()
        .map(|blob| Layer {
            media_type: LAYER_TAR,
            blob,
        })
        .collect();
    layers.push(Layer {
        media_type: LAYER_GZIP,
        blob: gzip(&tar_of(&[
            ("t/", ""),
            ("t/keep", "v1\n"),
            ("t/gone", "x\n"),
            ("t/dir/", ""),
            ("t/dir/x", "x\n"),
            ("t/dir/y", "y\n"),
        ])),
    });
    layers.push(Layer {
        media_type: LAYER_ZSTD,
        blob: zstd(&tar_of(&[
            ("t/keep", "v2\n"),
            ("t/.wh.gone", ""),
            ("t/dir/", ""),
            ("t/dir/.wh..wh..opq", ""),
            ("t/dir/z", "z\n"),
            ("t/hl-src", "same\n"),
            ("t/hl", "@t/hl-src"),
            ("etc/.wh.debian_version", ""),
        ])),
    });
    let digest = push_image(reg.port, "layered/app", "1", host_arch(), &layers);
    let reference = format!("{}/layered/app:1", reg.host());
    let p = TestPyro::with_private_cache();
    let (out, v) = p.json(&[
        "run",
        &reference,
        "--isolation",
        "container",
        "--",
        "sh",
        "-c",
        "cd /t && find . | sort && cat keep && stat -c '%h' hl && \
         [ \"$(stat -c %i hl)\" = \"$(stat -c %i hl-src)\" ] && echo same-inode && \
         cat hl && test ! -e /etc/debian_version && echo whiteout-ok",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["environment_digest"], digest.as_str());
    assert_eq!(
        v["stdout"],
        ".\n./dir\n./dir/z\n./hl\n./hl-src\n./keep\nv2\n2\nsame-inode\nsame\nwhiteout-ok\n",
        "{v}"
    );
}

#[test]
fn the_image_config_env_working_dir_and_user_apply_to_runs_and_workspaces() {
    require_registry!();
    require_containers!();
    let reg = Registry::start();
    let mut layers: Vec<Layer> = debian_layers()
        .into_iter()
        .map(|blob| Layer {
            media_type: LAYER_TAR,
            blob,
        })
        .collect();
    layers.push(Layer {
        media_type: LAYER_GZIP,
        blob: gzip(&tar_with_modes(&[
            ("opt/", "", 0),
            ("opt/tools/", "", 0),
            ("opt/tools/bin/", "", 0),
            (
                "opt/tools/bin/image-tool",
                "#!/bin/sh\necho \"image-tool ran as $(id -un)\"\n",
                0o755,
            ),
            ("srv/", "", 0),
            ("srv/app/", "", 0),
            ("srv/app/marker", "in the working dir\n", 0o644),
        ])),
    });
    let path = "/opt/tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let (digest, _) = push_image_with_config(
        reg.port,
        "configured/app",
        "1",
        host_arch(),
        &layers,
        serde_json::json!({
            "Env": [format!("PATH={path}"), "FOO=bar", "SHARED=from-image"],
            "WorkingDir": "/srv/app",
            "User": "nobody",
            "Entrypoint": ["/bin/false"],
            "Cmd": ["not", "run"],
        }),
    );
    let reference = format!("{}/configured/app:1", reg.host());
    let p = TestPyro::with_private_cache();
    let script = "echo \"$FOO $SHARED\"; echo \"$PATH\"; pwd; cat marker; image-tool; \
                  id -un; echo \"$HOME\"";
    let (out, v) = p.json(&[
        "run",
        &reference,
        "--isolation",
        "container",
        "--env",
        "SHARED=from-caller",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["environment_digest"], digest.as_str());
    assert_eq!(
        v["stdout"],
        format!(
            "bar from-caller\n{path}\n/srv/app\nin the working dir\nimage-tool ran as nobody\n\
             nobody\n/nonexistent\n"
        ),
        "{v}"
    );

    // The same on the vm-emulated level, where the agent is the VM's init.
    if vm_tests_enabled(module_path!()) {
        let (out, v) = p.json(&[
            "run",
            &reference,
            "--isolation",
            "vm-emulated",
            "--env",
            "SHARED=from-caller",
            "--",
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
        assert_eq!(
            v["stdout"],
            format!(
                "bar from-caller\n{path}\n/srv/app\nin the working dir\n\
                 image-tool ran as nobody\nnobody\n/nonexistent\n"
            ),
            "{v}"
        );
    }

    // A workspace keeps /workspace (where its files are), with the image's Env and User, in
    // exec, services and later calls alike.
    let (out, ws) = p.json(&[
        "workspace",
        "create",
        &reference,
        "--isolation",
        "container",
    ]);
    assert!(out.status.success(), "{ws}\n{}", stderr(&out));
    let id = ws["workspace_id"].as_str().unwrap().to_owned();
    let (out, v) = p.json(&[
        "workspace",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo \"$FOO $SHARED\"; pwd; image-tool",
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(
        v["stdout"], "bar from-image\n/workspace\nimage-tool ran as nobody\n",
        "{v}"
    );
    let (out, v) = p.json(&[
        "workspace",
        "service",
        "start",
        &id,
        "svc",
        "--ready-command",
        "test -n \"$FOO\"",
        "--",
        "sh",
        "-c",
        "image-tool; echo \"FOO=$FOO\"; exec sleep 600",
    ]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let (_, v) = p.json(&["workspace", "service", "logs", &id, "svc"]);
        let text = v.to_string();
        if text.contains("FOO=bar") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        logs.contains("image-tool ran as nobody") && logs.contains("FOO=bar"),
        "{logs}"
    );
    let (out, v) = p.json(&["workspace", "delete", &id]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn an_image_without_a_shell_gives_a_clear_error() {
    require_registry!();
    require_containers!();
    let reg = Registry::start();
    push_image(
        reg.port,
        "noshell/app",
        "1",
        host_arch(),
        &[Layer {
            media_type: LAYER_TAR,
            blob: tar_of(&[("hello.txt", "hi\n")]),
        }],
    );
    let p = TestPyro::with_private_cache();
    let reference = format!("{}/noshell/app:1", reg.host());
    let (out, v) = p.json(&["run", &reference, "--isolation", "container", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{v}\n{}", stderr(&out));
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot start /bin/sh"), "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("needs a shell"),
        "{v}"
    );
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn credentials_come_from_the_environment_or_the_docker_config_and_are_never_logged() {
    use base64::Engine;
    require_registry!();
    let reg = Registry::start_with_auth();
    push_image(
        reg.port,
        "private/app",
        "1",
        host_arch(),
        &[Layer {
            media_type: LAYER_TAR,
            blob: tar_of(&[("hello.txt", "hi\n")]),
        }],
    );
    let reference = format!("{}/private/app:1", reg.host());
    let mut p = TestPyro::with_private_cache();
    let docker = p.dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    p.env("DOCKER_CONFIG", docker.display().to_string());
    p.env("PYRO_LOG", "trace");

    let (out, v) = p.json(&["env", "pull", &reference]);
    assert_error(&out, &v, "registry_error");

    p.env("PYRO_REGISTRY_USERNAME", TEST_USER);
    p.env("PYRO_REGISTRY_PASSWORD", "wrong-password");
    let (out, v) = p.json(&["env", "pull", &reference]);
    assert_error(&out, &v, "registry_error");
    assert!(!stderr(&out).contains("wrong-password"));

    p.env("PYRO_REGISTRY_PASSWORD", TEST_PASSWORD);
    let (out, v) = p.json(&["env", "pull", &reference]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert!(
        !stderr(&out).contains(TEST_PASSWORD),
        "a credential was logged"
    );

    // The Docker config instead, in a fresh cache.
    let mut q = TestPyro::with_private_cache();
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{TEST_USER}:{TEST_PASSWORD}"));
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"auths": {reg.host(): {"auth": encoded}}}).to_string(),
    )
    .unwrap();
    q.env("DOCKER_CONFIG", docker.display().to_string());
    q.env("PYRO_LOG", "trace");
    let (out, v) = q.json(&["env", "pull", &reference]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains(TEST_PASSWORD) && !err.contains(&encoded),
        "a credential was logged"
    );
}

/// A kernel build directory in `dir`, as `scripts/build-kernel` leaves it: the machine's own
/// guest kernel when one is built (the artifact layer is just bytes, so any will do), else a
/// small stand-in; `fragment.sha256` says it was built from this pyro's config fragment.
fn fake_kernel_build(dir: &Path, fragment: &str) -> Vec<u8> {
    let real = TestPyro::new().json(&["kernel", "list"]).1["in_use"]
        .as_str()
        .and_then(|p| std::fs::read(p).ok());
    let bytes = real.unwrap_or_else(|| {
        (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinux"), &bytes).unwrap();
    std::fs::write(dir.join("fragment.sha256"), format!("{fragment}\n")).unwrap();
    std::fs::write(dir.join("source-version"), "linux-source-6.1 test\n").unwrap();
    std::fs::write(dir.join("config"), "CONFIG_64BIT=y\n").unwrap();
    bytes
}

/// Kernel directories (not dot-files) in a kernel cache.
fn kernel_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A kernel cache's pull scratch directories.
fn kernel_scratch(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".pull-") || n.starts_with(".trash-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A pyro whose kernel cache is `kernels` (and nothing else: no `PYRO_KERNEL`).
fn kernel_pyro(kernels: &Path) -> TestPyro {
    let mut p = TestPyro::with_private_cache();
    p.env("PYRO_KERNEL_DIR", kernels.display().to_string());
    p.env("PYRO_KERNEL", "");
    p
}

#[test]
fn the_guest_kernel_travels_as_a_pinned_oci_artifact() {
    require_registry!();
    let reg = Registry::start();
    let scratch = tempfile::tempdir().unwrap();

    // The publisher has a kernel build; nothing else is needed (no containers, no VMs).
    let built = scratch.path().join("built");
    let publisher = kernel_pyro(&built);
    let (out, list) = publisher.json(&["kernel", "list"]);
    assert!(out.status.success(), "{list}");
    let fragment = list["wanted_fragment_sha256"].as_str().unwrap().to_owned();
    let (out, v) = publisher.json(&["kernel", "push", &format!("{}/x/kernel:1", reg.host())]);
    assert_error(&out, &v, "kernel_not_found");
    let bytes = fake_kernel_build(&built.join("0123456789abcdef"), &fragment);
    let (_, list) = publisher.json(&["kernel", "list"]);
    assert_eq!(list["kernels"][0]["in_use"], true, "{list}");

    let target = format!("{}/pyro/kernel:{}", reg.host(), &fragment[..16]);
    let (out, pushed) = publisher.json(&["kernel", "push", &target]);
    assert!(out.status.success(), "{pushed}\n{}", stderr(&out));
    assert_eq!(
        pushed["uploaded_blobs"], 3,
        "config, vmlinux, .config: {pushed}"
    );
    assert_eq!(pushed["fragment_sha256"], fragment.as_str());
    let digest = pushed["digest"].as_str().unwrap().to_owned();
    let (_, again) = publisher.json(&["kernel", "push", &target]);
    assert_eq!(again["digest"], digest.as_str(), "pushes are deterministic");
    assert_eq!(again["uploaded_blobs"], 0, "{again}");
    let (out, info) = publisher.json(&["kernel", "inspect", &target]);
    assert!(out.status.success(), "{info}");
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["current"], true);
    assert_eq!(info["source_version"], "linux-source-6.1 test");
    assert_eq!(info["size_bytes"], bytes.len());
    // An environment image is not a kernel.
    push_image(
        reg.port,
        "not/kernel",
        "1",
        host_arch(),
        &[Layer {
            media_type: LAYER_TAR,
            blob: tar_of(&[("hello.txt", "hi\n")]),
        }],
    );
    let (out, v) = publisher.json(&["kernel", "inspect", &format!("{}/not/kernel:1", reg.host())]);
    assert_error(&out, &v, "unsupported_image");

    // A consumer pulls the catalog's kernel: refused without a pin, refused with a wrong one,
    // installed with the right one.
    let kernels = scratch.path().join("kernels");
    let mut p = kernel_pyro(&kernels);
    p.env("PYRO_REGISTRY", format!("{}/pyro", reg.host()));
    let (out, v) = p.json(&["kernel", "pull"]);
    assert_error(&out, &v, "not_pinned");
    let pins = scratch.path().join("pins.toml");
    let wrong = format!("sha256:{}", "0".repeat(64));
    std::fs::write(&pins, format!("[pins]\nkernel = \"{wrong}\"\n")).unwrap();
    p.env("PYRO_PINS", pins.display().to_string());
    let (out, v) = p.json(&["kernel", "pull"]);
    assert_error(&out, &v, "digest_mismatch");
    let (out, v) = p.json(&["kernel", "pull", &target, "--digest", &wrong]);
    assert_error(&out, &v, "digest_mismatch");
    assert_eq!(kernel_dirs(&kernels), Vec::<String>::new());

    std::fs::write(&pins, format!("[pins]\nkernel = \"{digest}\"\n")).unwrap();
    let (out, v) = p.json(&["kernel", "pull"]);
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["pinned_digest"], digest.as_str());
    assert_eq!(v["already_installed"], false);
    assert_eq!(v["in_use"], true, "{v}");
    let hex = digest.trim_start_matches("sha256:");
    let installed = kernels.join(format!("sha256-{hex}"));
    assert_eq!(v["path"], installed.join("vmlinux").display().to_string());
    assert!(std::fs::read(installed.join("vmlinux")).unwrap() == bytes);
    assert_eq!(
        std::fs::read_to_string(installed.join("fragment.sha256")).unwrap(),
        format!("{fragment}\n")
    );
    assert_eq!(
        std::fs::read_to_string(installed.join("config")).unwrap(),
        "CONFIG_64BIT=y\n"
    );
    assert_eq!(kernel_scratch(&kernels), Vec::<String>::new());
    let (_, list) = p.json(&["kernel", "list"]);
    assert_eq!(list["pinned_digest"], digest.as_str());
    assert_eq!(list["kernels"][0]["digest"], digest.as_str(), "{list}");
    assert_eq!(list["kernels"][0]["source"], target.as_str());
    assert_eq!(list["kernels"][0]["in_use"], true);
    let (_, v) = p.json(&["kernel", "pull"]);
    assert_eq!(v["already_installed"], true, "{v}");
    // With VMs here, the machine's own kernel was pushed: the pulled copy boots one.
    if vm_tests_enabled(module_path!()) {
        let mut vm = TestPyro::new();
        vm.env("PYRO_KERNEL_DIR", kernels.display().to_string());
        vm.env("PYRO_KERNEL", "");
        let (out, v) = vm.json(&[
            "run",
            "debian:12",
            "--isolation",
            "vm-emulated",
            "--",
            "cat",
            "/proc/version",
        ]);
        assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
        assert!(
            v["stdout"].as_str().unwrap().starts_with("Linux version"),
            "{v}"
        );
    }
    // The pulled kernel is pushed again byte for byte: the same digest anywhere.
    let (out, mirrored) = p.json(&["kernel", "push", &format!("{}/mirror/kernel:1", reg.host())]);
    assert!(out.status.success(), "{mirrored}");
    assert_eq!(mirrored["digest"], digest.as_str());

    // A tampered blob in the registry: refused, and nothing installed or left behind.
    let layer = info_layer_digest(&installed);
    let file = reg.blob_file(&layer);
    let mut blob = std::fs::read(&file).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x55;
    std::fs::write(&file, &blob).unwrap();
    let fresh = scratch.path().join("fresh");
    let mut q = kernel_pyro(&fresh);
    q.env("PYRO_REGISTRY", format!("{}/pyro", reg.host()));
    q.env("PYRO_PINS", pins.display().to_string());
    let (out, v) = q.json(&["kernel", "pull"]);
    assert_error(&out, &v, "digest_mismatch");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&layer),
        "{v}"
    );
    assert_eq!(kernel_dirs(&fresh), Vec::<String>::new());
    assert_eq!(kernel_scratch(&fresh), Vec::<String>::new());
    let (_, list) = q.json(&["kernel", "list"]);
    assert!(list["in_use"].is_null(), "{list}");
}

/// The vmlinux layer's digest, from an installed kernel's manifest.
fn info_layer_digest(installed: &Path) -> String {
    let manifest = read_json(&installed.join("manifest.json"));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.pyro.kernel.vmlinux.v1")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}
