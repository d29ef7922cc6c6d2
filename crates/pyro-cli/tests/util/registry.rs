//! A real OCI registry on loopback for tests: Debian's `docker-registry` (distribution 2.8),
//! started on a free 127.0.0.1 port with its own storage directory and stopped on drop. Plus
//! a minimal raw HTTP client to push images the tests build themselves, and a TCP proxy that
//! can stall a transfer midway.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Where Debian installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Whether registry tests can run: `docker-registry` must be installed. Under
/// `PYRO_TEST_CONTAINER=1` (CI) a missing registry is a failure, not a skip.
pub fn registry_tests_enabled(test: &str) -> bool {
    if Path::new(REGISTRY_BIN).exists() {
        return true;
    }
    let why = "docker-registry is not installed (apt-get install docker-registry)";
    if std::env::var("PYRO_TEST_CONTAINER").as_deref() == Ok("1") {
        panic!("{test}: registry tests are required (PYRO_TEST_CONTAINER=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (set PYRO_TEST_CONTAINER=1 to make this a failure)");
    false
}

/// A running registry; stopped (and its storage removed) on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The user and password of [`Registry::start_with_auth`] (bcrypt hash below, cost 5).
pub const TEST_USER: &str = "tester";
pub const TEST_PASSWORD: &str = "pyro-secret";
const TEST_HTPASSWD: &str = "tester:$2b$05$wLP5zFYmYgI8lAoH3QxJ1OBZvMZ.BfBpvoA.or74TrlFL8RBZzvMG\n";
/// `Authorization` for the test user; registries without auth ignore it.
const TEST_AUTH_HEADER: &str = "Basic dGVzdGVyOnB5cm8tc2VjcmV0";

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::start_inner(false)
    }

    /// A registry that wants [`TEST_USER`]/[`TEST_PASSWORD`] (htpasswd) for everything.
    pub fn start_with_auth() -> Registry {
        Registry::start_inner(true)
    }

    fn start_inner(auth: bool) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth_section = if auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, TEST_HTPASSWD).expect("htpasswd");
            format!(
                "auth:\n  htpasswd:\n    realm: pyro-test\n    path: {}\n",
                htpasswd.display()
            )
        } else {
            String::new()
        };
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: pyro-test-secret\n{auth_section}",
                    dir.path().join("data").display()
                ),
            )
            .expect("config");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("registry.log")).expect("log"),
                ))
                .spawn()
                .expect("spawn docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken, most likely: try another
                }
                if http(port, "GET", "/v2/", &[], &[]).map(|r| r.status) == Some(200) {
                    return Registry { dir, port, child };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; `None` if the server is not there.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\nAuthorization: {TEST_AUTH_HEADER}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uploads a blob (monolithic POST + PUT) and returns its digest.
pub fn push_blob(port: u16, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = http(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .expect("post");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("Location").expect("location").to_owned();
    let path = location
        .strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap_or(&location)
        .to_owned();
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http(
        port,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
    .expect("put");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    digest
}

/// Uploads a manifest (or index) under `reference` and returns its digest.
pub fn push_manifest(
    port: u16,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let r = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )
    .expect("put manifest");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    sha256(bytes)
}

/// One layer to push: its media type and blob bytes.
pub struct Layer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
}

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pushes an image built from `layers` with a config for `arch`; returns the manifest digest.
pub fn push_image(port: u16, repo: &str, tag: &str, arch: &str, layers: &[Layer]) -> String {
    let (digest, _) = push_image_manifest(port, repo, tag, arch, layers);
    digest
}

/// Like [`push_image`], returning the manifest bytes too.
pub fn push_image_manifest(
    port: u16,
    repo: &str,
    tag: &str,
    arch: &str,
    layers: &[Layer],
) -> (String, Vec<u8>) {
    push_image_with_config(port, repo, tag, arch, layers, serde_json::json!({}))
}

/// Like [`push_image_manifest`], with `run_config` as the image config's `config` object
/// (`Env`, `WorkingDir`, `User`, …).
pub fn push_image_with_config(
    port: u16,
    repo: &str,
    tag: &str,
    arch: &str,
    layers: &[Layer],
    run_config: serde_json::Value,
) -> (String, Vec<u8>) {
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = serde_json::to_vec(&config).expect("config");
    let config_digest = push_blob(port, repo, &config);
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": push_blob(port, repo, &l.blob),
                "size": l.blob.len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layer_descs,
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest");
    (push_manifest(port, repo, tag, MANIFEST, &bytes), bytes)
}

/// A tar archive from (path, contents) files, directories (path ending in '/'), and hard
/// links (contents `@target`).
pub fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let with_modes: Vec<(&str, &str, u32)> = entries.iter().map(|(p, c)| (*p, *c, 0o644)).collect();
    tar_with_modes(&with_modes)
}

/// Like [`tar_of`], with each regular file's mode (directories are 0755, links 0644).
pub fn tar_with_modes(entries: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, contents, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).expect("dir");
        } else if let Some(target) = contents.strip_prefix('@') {
            h.set_entry_type(tar::EntryType::Link);
            h.set_mode(0o644);
            h.set_size(0);
            b.append_link(&mut h, path, target).expect("link");
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(*mode);
            h.set_size(contents.len() as u64);
            b.append_data(&mut h, path, contents.as_bytes())
                .expect("file");
        }
    }
    b.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A TCP proxy in front of a port that, while `stall` is set, stops forwarding server bytes
/// once `stall_after` of them went through; `forwarded` counts server bytes sent on.
pub struct Proxy {
    pub port: u16,
    pub stall: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: u16, stall_after: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stall = Arc::new(AtomicBool::new(true));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (st, fw) = (stall.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pipe(c2, s2, None));
                let (st, fw) = (st.clone(), fw.clone());
                std::thread::spawn(move || pipe(server, client, Some((st, fw, stall_after))));
            }
        });
        Proxy {
            port,
            stall,
            forwarded,
        }
    }
}

type Stall = (Arc<AtomicBool>, Arc<AtomicU64>, u64);

fn pipe(mut from: TcpStream, mut to: TcpStream, stall: Option<Stall>) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((on, count, after)) = &stall {
            while on.load(Ordering::SeqCst) && count.load(Ordering::SeqCst) >= *after {
                std::thread::sleep(Duration::from_millis(20));
            }
            count.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
