//! Environments over OCI distribution registries: `pull` and `push` with `oci-client`.
//!
//! A pull fetches the reference's manifest (following an image index to the host's platform),
//! checks every byte it receives against its sha256 digest, downloads the blobs into a scratch
//! directory under `<cache>/tmp/`, and only then, holding the layout lock, moves them into the
//! blob store and adds the index entry in one step. A pull that dies midway therefore leaves a
//! scratch directory (removed by the next pull of that image or by `prune`) and never a
//! half-installed image. Pulls of one manifest digest are serialized by
//! `<cache>/locks/pull-<hex>.lock`, so a second concurrent pull waits and finds the first one's
//! image.
//!
//! A push uploads the image's blobs (skipping those the registry already has) and then its
//! manifest, byte for byte, so the manifest digest in the registry is the local one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::oci::{self, Descriptor, Manifest, ANN_RECIPE_HASH, ANN_REF_NAME};
use super::{host_arch, remove_abandoned_scratch, try_lock_exclusive, EnvCache, ScratchDir};
use crate::error::{Error, IoContext, Result};

/// The registry (host and namespace) that catalog environments are pulled from when
/// `PYRO_REGISTRY` is not set: `debian:12` is `ghcr.io/pyro-sandbox/debian:12`.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/pyro-sandbox";

/// The pins shipped with this version of pyro (`envs/pins.toml`).
const SHIPPED_PINS: &str = include_str!("../../../envs/pins.toml");

/// Docker's name for an image index.
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's name for an image manifest.
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest type pyro accepts from a registry.
const ACCEPTED_MANIFESTS: [&str; 4] = [
    oci::MEDIA_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
    oci::MEDIA_INDEX,
    MEDIA_DOCKER_LIST,
];
/// Image configs are small JSON; anything bigger is refused before parsing.
pub(crate) const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Manifests and indexes: refused above this before parsing.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// References longer than this are refused before parsing.
const MAX_REFERENCE_LEN: usize = 512;
/// Index annotation: the reference an image was pulled from.
pub(crate) const ANN_SOURCE: &str = "io.pyro.source";
/// Index annotation: the digest the reference resolved to (an index's, when it was one).
pub(crate) const ANN_SOURCE_DIGEST: &str = "io.pyro.source-digest";

/// Where registries are and how to reach them.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Registry host and namespace of the catalog environments (`PYRO_REGISTRY`).
    pub registry: String,
    /// Registries (`host:port`) reached over plain HTTP (`PYRO_INSECURE_REGISTRIES`); loopback
    /// registries (127.0.0.1, localhost, `[::1]`) always are.
    pub insecure: Vec<String>,
    /// A pins file that replaces the shipped `envs/pins.toml` (`PYRO_PINS`).
    pub pins_file: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> RegistrySettings {
        RegistrySettings {
            registry: DEFAULT_REGISTRY.to_owned(),
            insecure: Vec::new(),
            pins_file: None,
        }
    }
}

impl RegistrySettings {
    /// Settings from `PYRO_REGISTRY`, `PYRO_INSECURE_REGISTRIES` and `PYRO_PINS`.
    pub fn from_env() -> RegistrySettings {
        use pyro_api::paths::{var, Var};
        RegistrySettings {
            registry: var(Var::Registry)
                .map(|r| r.trim().trim_end_matches('/').to_owned())
                .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned()),
            insecure: var(Var::InsecureRegistries)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            pins_file: pyro_api::paths::var_path(Var::Pins),
        }
    }

    /// The pinned manifest digest of a catalog environment, from `PYRO_PINS` or the shipped
    /// pins file.
    pub fn pin(&self, name: &str) -> Result<Option<String>> {
        let (text, origin) = match &self.pins_file {
            Some(path) => (
                std::fs::read_to_string(path).ctx(|| format!("reading pins {}", path.display()))?,
                path.display().to_string(),
            ),
            None => (SHIPPED_PINS.to_owned(), "envs/pins.toml".to_owned()),
        };
        let pins = parse_pins(&text)
            .map_err(|m| Error::InvalidRequest(format!("pins file {origin}: {m}")))?;
        Ok(pins.get(name).cloned())
    }

    fn protocol_for(&self, reference: &Reference) -> ClientProtocol {
        let registry = reference.resolve_registry().to_owned();
        if is_loopback(&registry) || self.insecure.contains(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        }
    }

    pub(crate) fn client(&self, reference: &Reference) -> Client {
        ensure_crypto_provider();
        Client::new(ClientConfig {
            protocol: self.protocol_for(reference),
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("pyro/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
    }
}

/// The pins file: `[pins]` with `name = "sha256:<hex>"`.
fn parse_pins(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PinsFile {
        #[serde(default)]
        pins: BTreeMap<String, String>,
    }
    let file: PinsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    for (name, digest) in &file.pins {
        if oci::sha256_hex(digest).is_none() {
            return Err(format!("pin for {name} is not a sha256 digest: {digest:?}"));
        }
    }
    Ok(file.pins)
}

fn ensure_crypto_provider() {
    // Only the first call in a process installs it; later ones find it there.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a registry (`host[:port]`) is on this machine.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses and validates an image reference from outside (a user, a pins file).
pub fn parse_reference(text: &str) -> Result<Reference> {
    if text.is_empty()
        || text.len() > MAX_REFERENCE_LEN
        || text.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidRequest(format!(
            "invalid image reference {text:?}"
        )));
    }
    let reference: Reference = text
        .parse()
        .map_err(|e| Error::InvalidRequest(format!("invalid image reference {text:?}: {e}")))?;
    let repo_ok = reference.repository().bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'/')
    });
    if !repo_ok {
        return Err(Error::InvalidRequest(format!(
            "invalid image reference {text:?}: repository names are lowercase"
        )));
    }
    if let Some(d) = reference.digest() {
        if oci::sha256_hex(d).is_none() {
            return Err(Error::InvalidRequest(format!(
                "image reference {text:?}: only sha256 digests are supported"
            )));
        }
    }
    Ok(reference)
}

/// Whether an environment name is an image reference rather than a catalog name: references
/// name their registry or repository path, so they contain a `/`, and they parse. Anything
/// else is looked up in the catalog (and is an unknown environment there).
pub fn is_image_reference(name: &str) -> bool {
    name.contains('/') && parse_reference(name).is_ok()
}

/// The canonical form of an image reference, as it is named in the layout.
pub fn canonical_reference(text: &str) -> Result<String> {
    Ok(parse_reference(text)?.whole())
}

/// Credentials for a registry: `PYRO_REGISTRY_USERNAME`/`PYRO_REGISTRY_PASSWORD`, else the
/// entry for the registry in `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, else
/// anonymous. Credentials are never logged.
pub(crate) fn auth_for(registry: &str) -> RegistryAuth {
    use pyro_api::paths::{var_raw, Var};
    if let (Some(user), Some(pass)) = (
        var_raw(Var::RegistryUsername),
        var_raw(Var::RegistryPassword),
    ) {
        return RegistryAuth::Basic(user, pass);
    }
    let config = pyro_api::paths::var_path(Var::DockerConfig)
        .or_else(|| pyro_api::paths::home_var().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"));
    if let Some(auth) = config
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| docker_config_auth(&bytes, registry))
    {
        return auth;
    }
    RegistryAuth::Anonymous
}

/// The `auths` entry for `registry` in a Docker config file.
fn docker_config_auth(bytes: &[u8], registry: &str) -> Option<RegistryAuth> {
    use base64::Engine as _;
    let config: Value = serde_json::from_slice(bytes).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let docker_hub = matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    let entry = auths.iter().find_map(|(key, value)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let matches = host == registry || (docker_hub && host == "index.docker.io");
        matches.then_some(value)
    })?;
    if let Some(encoded) = entry.get("auth").and_then(Value::as_str) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, pass) = text.split_once(':')?;
        return Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned()));
    }
    let user = entry.get("username")?.as_str()?;
    let pass = entry.get("password")?.as_str()?;
    Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned()))
}

/// Progress of a pull or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// A step, e.g. "resolving 127.0.0.1:5000/x:1".
    Phase(String),
    /// Bytes moved so far out of the total this operation moves.
    Bytes {
        /// Bytes transferred.
        done: u64,
        /// Bytes to transfer in all.
        total: u64,
    },
}

/// What a pull installed.
#[derive(Debug, Clone, Serialize)]
pub struct PullResult {
    /// The environment name it is installed as (a catalog name, or the canonical reference).
    pub environment: String,
    /// The reference it was pulled from.
    pub reference: String,
    /// The digest the reference resolved to (an image index's, when it was one).
    pub source_digest: String,
    /// The installed manifest's digest (the host platform's, for an index).
    pub digest: String,
    /// The image's total size: manifest, config and layers.
    pub size_bytes: u64,
    /// Number of layers.
    pub layers: usize,
    /// Bytes downloaded (blobs already in the cache are not downloaded again).
    pub downloaded_bytes: u64,
    /// Whether the image was already installed under this name, so nothing was downloaded.
    pub already_installed: bool,
    /// The pin the digest was checked against, if any.
    pub pinned_digest: Option<String>,
}

/// What a push uploaded.
#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    /// The environment pushed.
    pub environment: String,
    /// Where it went.
    pub reference: String,
    /// The manifest digest, the same locally and in the registry.
    pub digest: String,
    /// Blobs uploaded.
    pub uploaded_blobs: usize,
    /// Blobs the registry already had.
    pub existing_blobs: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

/// A pull to perform.
#[derive(Debug, Clone)]
pub(crate) struct PullPlan {
    /// Where from.
    pub source: Reference,
    /// The name to install it as.
    pub name: String,
    /// The digest the reference must resolve to (a pin, or `--digest`).
    pub expected: Option<String>,
    /// For catalog environments: the recipe hash the image must carry.
    pub recipe_hash: Option<String>,
}

pub(crate) fn registry_error(reference: &Reference, e: impl std::fmt::Display) -> Error {
    Error::Registry {
        reference: reference.whole(),
        message: e.to_string(),
    }
}

pub(crate) fn unsupported(reference: &Reference, message: String) -> Error {
    Error::UnsupportedImage {
        reference: reference.whole(),
        message,
    }
}

/// A descriptor of an image index.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct ImageIndex {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

/// The parts of an image config pyro checks.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// Whether a layer media type is one pyro can unpack.
pub(crate) fn is_supported_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        oci::MEDIA_LAYER_TAR
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
    )
}

/// Fetches a manifest or index by reference, capped in size, checked against the digest the
/// reference names (if any) and returned with the sha256 of its bytes.
pub(crate) async fn fetch_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<(Vec<u8>, String)> {
    let (bytes, _) = client
        .pull_manifest_raw(reference, auth, &ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| registry_error(reference, e))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(unsupported(
            reference,
            format!("manifest is {} bytes, more than pyro accepts", bytes.len()),
        ));
    }
    let digest = oci::digest_of(&bytes);
    if let Some(named) = reference.digest() {
        if named != digest {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {}", reference.whole()),
                expected: named.to_owned(),
                actual: digest,
            });
        }
    }
    Ok((bytes.to_vec(), digest))
}

/// The media type a manifest or index declares, from its JSON.
fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if let Some(t) = v.get("mediaType").and_then(Value::as_str) {
        return Some(t.to_owned());
    }
    // OCI allows leaving it out; an index is recognized by its manifests list.
    if v.get("manifests").is_some() {
        Some(oci::MEDIA_INDEX.to_owned())
    } else if v.get("config").is_some() {
        Some(oci::MEDIA_MANIFEST.to_owned())
    } else {
        None
    }
}

/// Downloads one blob into `dest`, hashing as it goes; the digest and size must match.
pub(crate) async fn download_blob(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    dest: &Path,
    on_bytes: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    let digest = desc.digest.as_str();
    let mut stream = client
        .pull_blob_stream(reference, digest)
        .await
        .map_err(|e| registry_error(reference, e))?;
    let mut file = tokio::fs::File::create(dest)
        .await
        .ctx(|| format!("creating {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.map_err(|e| {
            // oci-client's verifying stream reports a digest mismatch as an I/O error.
            if e.to_string().to_lowercase().contains("digest") {
                Error::DigestMismatch {
                    what: format!("blob {digest} of {}", reference.whole()),
                    expected: digest.to_owned(),
                    actual: e.to_string(),
                }
            } else {
                registry_error(reference, e)
            }
        })?;
        size += chunk.len() as u64;
        if size > desc.size {
            return Err(Error::DigestMismatch {
                what: format!("blob {digest} of {}", reference.whole()),
                expected: format!("{digest} ({} bytes)", desc.size),
                actual: format!("more than {} bytes", desc.size),
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .ctx(|| format!("writing {}", dest.display()))?;
        on_bytes(chunk.len() as u64);
    }
    file.sync_all()
        .await
        .ctx(|| format!("syncing {}", dest.display()))?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest || size != desc.size {
        return Err(Error::DigestMismatch {
            what: format!("blob {digest} of {}", reference.whole()),
            expected: format!("{digest} ({} bytes)", desc.size),
            actual: format!("{actual} ({size} bytes)"),
        });
    }
    Ok(())
}

/// Waits for a lock without blocking the async runtime.
pub(crate) async fn lock_async(
    path: PathBuf,
    progress: &mut (dyn FnMut(Transfer) + Send),
    what: &str,
) -> Result<super::FileLock> {
    let mut told = false;
    loop {
        if let Some(lock) = try_lock_exclusive(&path)? {
            return Ok(lock);
        }
        if !told {
            progress(Transfer::Phase(format!(
                "waiting for another pull of {what}"
            )));
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidRequest(format!("blocking task failed: {e}")))?
}

/// Checks the image config (in `blobs` under `digest`, already verified): it must be for
/// this host's OS and architecture, and its `Env`, `WorkingDir` and `User` must be usable.
fn check_config(reference: &Reference, blobs: &[(PathBuf, String)], digest: &str) -> Result<()> {
    let path = blobs
        .iter()
        .find(|(_, d)| d == digest)
        .map(|(p, _)| p)
        .ok_or_else(|| unsupported(reference, "image config is missing".into()))?;
    let bytes = std::fs::read(path).ctx(|| format!("reading {}", path.display()))?;
    let config: ImageConfig = serde_json::from_slice(&bytes)
        .map_err(|e| unsupported(reference, format!("unreadable image config: {e}")))?;
    let arch = host_arch();
    if config.os != "linux" || config.architecture != arch {
        return Err(Error::PlatformMismatch {
            reference: reference.whole(),
            wanted: format!("linux/{arch}"),
            found: format!("{}/{}", config.os, config.architecture),
        });
    }
    // `Env`, `WorkingDir` and `User` are applied to every command: refuse values pyro cannot
    // use now, before any layer is downloaded.
    super::ImageDefaults::from_config(&bytes).map_err(|m| unsupported(reference, m))?;
    Ok(())
}

/// Pulls `plan.source` into the cache as `plan.name`.
pub(crate) async fn pull(
    cache: &EnvCache,
    settings: &RegistrySettings,
    plan: &PullPlan,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<PullResult> {
    let reference = &plan.source;
    let client = settings.client(reference);
    let auth = auth_for(reference.resolve_registry());
    client
        .auth(reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(reference, e))?;
    progress(Transfer::Phase(format!("resolving {}", reference.whole())));
    let (top_bytes, top_digest) = fetch_manifest(&client, reference, &auth).await?;
    if let Some(expected) = &plan.expected {
        if *expected != top_digest {
            return Err(Error::DigestMismatch {
                what: format!("pinned digest of {}", plan.name),
                expected: expected.clone(),
                actual: top_digest,
            });
        }
    }
    let top_type = declared_media_type(&top_bytes)
        .ok_or_else(|| unsupported(reference, "not an image manifest or index".into()))?;
    let (manifest_bytes, manifest_digest, manifest_type) =
        if top_type == oci::MEDIA_INDEX || top_type == MEDIA_DOCKER_LIST {
            let index: ImageIndex = serde_json::from_slice(&top_bytes)
                .map_err(|e| unsupported(reference, format!("unreadable image index: {e}")))?;
            let arch = host_arch();
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            let entry = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| Error::PlatformMismatch {
                    reference: reference.whole(),
                    wanted: format!("linux/{arch}"),
                    found: available.join(", "),
                })?;
            if oci::sha256_hex(&entry.digest).is_none() {
                return Err(unsupported(
                    reference,
                    format!("unsupported digest {:?}", entry.digest),
                ));
            }
            let by_digest = reference.clone_with_digest(entry.digest.clone());
            let (bytes, digest) = fetch_manifest(&client, &by_digest, &auth).await?;
            let t = declared_media_type(&bytes).unwrap_or_else(|| entry.media_type.clone());
            (bytes, digest, t)
        } else {
            (top_bytes, top_digest.clone(), top_type)
        };
    if manifest_type != oci::MEDIA_MANIFEST && manifest_type != MEDIA_DOCKER_MANIFEST {
        return Err(unsupported(
            reference,
            format!("unsupported manifest media type {manifest_type}"),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| unsupported(reference, format!("unreadable manifest: {e}")))?;
    for blob in manifest.blobs() {
        if oci::sha256_hex(&blob.digest).is_none() {
            return Err(unsupported(
                reference,
                format!("unsupported blob digest {:?}", blob.digest),
            ));
        }
    }
    for layer in &manifest.layers {
        if !is_supported_layer(&layer.media_type) {
            return Err(unsupported(
                reference,
                format!("unsupported layer media type {}", layer.media_type),
            ));
        }
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(unsupported(
            reference,
            format!("image config is {} bytes", manifest.config.size),
        ));
    }
    if let Some(hash) = &plan.recipe_hash {
        let theirs = manifest.annotations.get(ANN_RECIPE_HASH);
        if theirs != Some(hash) {
            return Err(unsupported(
                reference,
                format!(
                    "the published image of {} was built from recipe {}, this pyro's recipe is {hash}",
                    plan.name,
                    theirs.map(String::as_str).unwrap_or("(none)")
                ),
            ));
        }
    }
    let image_size = manifest_bytes.len() as u64 + manifest.blobs().map(|d| d.size).sum::<u64>();
    let mut result = PullResult {
        environment: plan.name.clone(),
        reference: reference.whole(),
        source_digest: top_digest.clone(),
        digest: manifest_digest.clone(),
        size_bytes: image_size,
        layers: manifest.layers.len(),
        downloaded_bytes: 0,
        already_installed: false,
        pinned_digest: plan.expected.clone(),
    };

    let hex = oci::sha256_hex(&manifest_digest)
        .unwrap_or_default()
        .to_owned();
    let lock_path = cache.root().join("locks").join(format!("pull-{hex}.lock"));
    let _pull_lock = lock_async(lock_path, progress, &reference.whole()).await?;

    let layout = cache.layout();
    let index = layout.read_index()?;
    if index
        .manifests
        .iter()
        .any(|d| d.digest == manifest_digest && d.annotation(ANN_REF_NAME) == Some(&plan.name))
        && manifest
            .blobs()
            .all(|b| layout.blob_path(&b.digest).is_ok_and(|p| p.is_file()))
    {
        progress(Transfer::Phase(format!(
            "{} is already installed",
            plan.name
        )));
        result.already_installed = true;
        return Ok(result);
    }

    let tmp_parent = cache.root().join("tmp");
    let prefix = format!("pull-{}", &hex[..12]);
    remove_abandoned_scratch(&tmp_parent, &prefix);
    let scratch = ScratchDir::create(&tmp_parent, &prefix)?;

    // Blobs the cache already has are hard-linked into the scratch dir, so that a prune running
    // meanwhile (which may delete blobs no index entry references yet) cannot take them away.
    let mut downloaded: Vec<(PathBuf, String)> = Vec::new();
    let mut missing: Vec<&Descriptor> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, blob) in manifest.blobs().enumerate() {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        let dest = scratch.path().join(format!("blob-{i}"));
        let linked = layout
            .blob_path(&blob.digest)
            .is_ok_and(|p| std::fs::hard_link(p, &dest).is_ok());
        if linked {
            downloaded.push((dest, blob.digest.clone()));
        } else {
            missing.push(blob);
        }
    }
    let total: u64 = missing.iter().map(|b| b.size).sum();
    progress(Transfer::Phase(format!(
        "downloading {} of {} blobs ({total} bytes)",
        missing.len(),
        seen.len()
    )));
    let mut done = 0u64;
    progress(Transfer::Bytes { done, total });
    // The config first: it is small, and an image for another platform is refused before any
    // layer is downloaded.
    missing.sort_by_key(|b| b.digest != manifest.config.digest);
    for (i, blob) in missing.iter().enumerate() {
        let dest = scratch.path().join(format!("download-{i}"));
        let mut on_bytes = |n: u64| {
            done += n;
            progress(Transfer::Bytes { done, total });
        };
        download_blob(&client, reference, blob, &dest, &mut on_bytes).await?;
        downloaded.push((dest, blob.digest.clone()));
        if blob.digest == manifest.config.digest {
            check_config(reference, &downloaded, &manifest.config.digest)?;
        }
    }
    if !missing.iter().any(|b| b.digest == manifest.config.digest) {
        check_config(reference, &downloaded, &manifest.config.digest)?;
    }
    result.downloaded_bytes = done;

    progress(Transfer::Phase(format!("installing {}", plan.name)));
    let entry = {
        let mut entry = Descriptor::new(
            &manifest_type,
            manifest_digest.clone(),
            manifest_bytes.len() as u64,
        );
        entry
            .annotations
            .insert(ANN_REF_NAME.to_owned(), plan.name.clone());
        entry
            .annotations
            .insert(ANN_SOURCE.to_owned(), reference.whole());
        entry
            .annotations
            .insert(ANN_SOURCE_DIGEST.to_owned(), top_digest.clone());
        if let Some(hash) = &plan.recipe_hash {
            entry
                .annotations
                .insert(ANN_RECIPE_HASH.to_owned(), hash.clone());
        }
        entry.platform = Some(serde_json::json!({ "architecture": host_arch(), "os": "linux" }));
        entry
    };
    let layout2 = layout.clone();
    let name = plan.name.clone();
    let blobs: Vec<String> = manifest.blobs().map(|b| b.digest.clone()).collect();
    run_blocking(move || {
        let _lock = layout2.lock()?;
        for (path, digest) in &downloaded {
            layout2.adopt_blob(path, digest)?;
        }
        layout2.write_blob(&manifest_bytes)?;
        for digest in &blobs {
            let path = layout2.blob_path(digest)?;
            if !path.is_file() {
                return Err(Error::CorruptCache {
                    path,
                    message: "a blob is missing after the pull installed it".into(),
                });
            }
        }
        let mut index = layout2.read_index()?;
        index
            .manifests
            .retain(|d| d.annotation(ANN_REF_NAME) != Some(name.as_str()));
        index.manifests.push(entry);
        layout2.write_index(&index)
    })
    .await?;
    drop(scratch);
    progress(Transfer::Phase(format!("pulled {}", plan.name)));
    Ok(result)
}

/// The blobs of a push that the registry at `target` lacks (each digest once, with what the
/// caller attached to it), how many it already has, and their total size; `progress` is told
/// what is checked and what will be uploaded, and starts the byte count.
pub(crate) async fn missing_blobs<'a, T>(
    client: &Client,
    target: &Reference,
    blobs: impl IntoIterator<Item = (&'a Descriptor, T)>,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<(Vec<(&'a Descriptor, T)>, usize, u64)> {
    progress(Transfer::Phase(format!(
        "checking blobs at {}",
        target.whole()
    )));
    let mut missing: Vec<(&'a Descriptor, T)> = Vec::new();
    let mut existing = 0;
    for (blob, extra) in blobs {
        let exists = client
            .blob_exists(target, &blob.digest)
            .await
            .map_err(|e| registry_error(target, e))?;
        if exists {
            existing += 1;
        } else if !missing.iter().any(|(b, _)| b.digest == blob.digest) {
            missing.push((blob, extra));
        }
    }
    let total: u64 = missing.iter().map(|(b, _)| b.size).sum();
    progress(Transfer::Phase(format!(
        "uploading {} blobs ({total} bytes)",
        missing.len()
    )));
    progress(Transfer::Bytes { done: 0, total });
    Ok((missing, existing, total))
}

/// Uploads the file at `path` as the blob `blob` to `target`'s repository, counting the bytes
/// into `done` (of `total`) for progress. The file is hashed first and refused when it does not
/// match the descriptor: corrupt local content is never published.
pub(crate) async fn upload_file(
    client: &Client,
    target: &Reference,
    path: &Path,
    blob: &Descriptor,
    done: &mut u64,
    total: u64,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<()> {
    let hashed = path.to_path_buf();
    let (digest, size) = run_blocking(move || oci::hash_file(&hashed)).await?;
    if digest != blob.digest || size != blob.size {
        return Err(Error::CorruptCache {
            path: path.to_path_buf(),
            message: format!(
                "content is {digest} ({size} bytes), expected {} ({} bytes)",
                blob.digest, blob.size
            ),
        });
    }
    let file = tokio::fs::File::open(path)
        .await
        .ctx(|| format!("opening {}", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let stream = futures_util::stream::unfold(file, move |mut file| {
        let tx = tx.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 4 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let _ = tx.send(n as u64);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(oci_client::errors::OciDistributionError::from(e)), file)),
            }
        }
    });
    let upload = client.push_blob_stream(target, stream, &blob.digest, Some(blob.size));
    tokio::pin!(upload);
    loop {
        tokio::select! {
            r = &mut upload => {
                r.map_err(|e| registry_error(target, e))?;
                break;
            }
            Some(n) = rx.recv() => {
                *done += n;
                progress(Transfer::Bytes { done: *done, total });
            }
        }
    }
    while let Ok(n) = rx.try_recv() {
        *done += n;
    }
    progress(Transfer::Bytes { done: *done, total });
    Ok(())
}

/// Pushes the installed image `entry` of environment `name` to `target`.
pub(crate) async fn push(
    cache: &EnvCache,
    settings: &RegistrySettings,
    name: &str,
    entry: &Descriptor,
    target: &Reference,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<PushResult> {
    let layout = cache.layout();
    let manifest_path = layout.blob_path(&entry.digest)?;
    let manifest_bytes =
        std::fs::read(&manifest_path).ctx(|| format!("reading {}", manifest_path.display()))?;
    if oci::digest_of(&manifest_bytes) != entry.digest {
        return Err(Error::CorruptCache {
            path: manifest_path,
            message: "manifest does not match its digest".into(),
        });
    }
    let manifest = layout.read_manifest(entry)?;
    let client = settings.client(target);
    let auth = auth_for(target.resolve_registry());
    client
        .auth(target, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| registry_error(target, e))?;
    let mut result = PushResult {
        environment: name.to_owned(),
        reference: target.whole(),
        digest: entry.digest.clone(),
        uploaded_blobs: 0,
        existing_blobs: 0,
        uploaded_bytes: 0,
    };
    let (to_upload, existing, total) =
        missing_blobs(&client, target, manifest.blobs().map(|b| (b, ())), progress).await?;
    result.existing_blobs = existing;
    let mut done = 0u64;
    for (blob, ()) in to_upload {
        // Re-hashed before upload: a corrupt cache must not be published.
        let path = layout.blob_path(&blob.digest)?;
        upload_file(&client, target, &path, blob, &mut done, total, progress).await?;
        result.uploaded_blobs += 1;
    }
    result.uploaded_bytes = done;
    progress(Transfer::Phase("uploading manifest".into()));
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| entry.media_type.clone());
    let content_type = media_type
        .parse()
        .map_err(|_| unsupported(target, format!("bad media type {media_type:?}")))?;
    client
        .push_manifest_raw(target, manifest_bytes, content_type)
        .await
        .map_err(|e| registry_error(target, e))?;
    progress(Transfer::Phase(format!(
        "pushed {name} to {}",
        target.whole()
    )));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_validated_and_canonical() {
        assert_eq!(
            canonical_reference("docker.io/library/alpine:3.20").expect("ok"),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            canonical_reference("127.0.0.1:5000/python:3.12").expect("ok"),
            "127.0.0.1:5000/python:3.12"
        );
        for bad in [
            "",
            "a b/c",
            "UPPER/case",
            "x/y@sha512:abcd",
            "x/y@sha256:zz",
            &"a/".repeat(300),
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        assert!(is_image_reference("127.0.0.1:5000/python:3.12"));
        assert!(!is_image_reference("debian:12"));
        assert!(!is_image_reference("debian:99; rm -rf /"));
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        let s = RegistrySettings {
            insecure: vec!["registry.lan:5000".into()],
            ..RegistrySettings::default()
        };
        for (r, http) in [
            ("127.0.0.1:5000/a:1", true),
            ("localhost:5000/a:1", true),
            ("registry.lan:5000/a:1", true),
            ("ghcr.io/a/b:1", false),
            ("127.example.com/a:1", false),
        ] {
            let p = s.protocol_for(&parse_reference(r).expect("ref"));
            assert_eq!(matches!(p, ClientProtocol::HttpsExcept(_)), http, "{r}");
        }
    }

    #[test]
    fn pins_parse_and_reject_bad_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let pins = parse_pins(&format!("[pins]\n\"debian:12\" = \"{d}\"\n")).expect("parse");
        assert_eq!(pins.get("debian:12"), Some(&d));
        assert!(parse_pins("[pins]\n\"debian:12\" = \"sha256:nope\"\n").is_err());
        assert!(parse_pins("other = 1\n").is_err());
        parse_pins(SHIPPED_PINS).expect("shipped pins parse");
    }

    #[test]
    fn docker_config_credentials() {
        let cfg = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "ghcr.io":{"username":"u","password":"p"}}}"#;
        assert!(matches!(
            docker_config_auth(cfg, "index.docker.io"),
            Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass"
        ));
        assert!(matches!(
            docker_config_auth(cfg, "ghcr.io"),
            Some(RegistryAuth::Basic(u, _)) if u == "u"
        ));
        assert!(docker_config_auth(cfg, "quay.io").is_none());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            declared_media_type(br#"{"manifests":[]}"#).as_deref(),
            Some(oci::MEDIA_INDEX)
        );
        assert!(is_supported_layer(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(!is_supported_layer(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
    }
}
