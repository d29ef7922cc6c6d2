//! The guest kernel as an OCI artifact beside the environments.
//!
//! A kernel built by `scripts/build-kernel` lives in the kernel cache ([`kernel_dir`]) as
//! `<dir>/vmlinux` with `fragment.sha256` (the config fragment it was built from, which is how
//! [`find_kernel`] recognises a kernel for this version of pyro), `source-version` and `config`
//! beside it. `push` publishes one as an OCI 1.1 artifact: an image manifest with
//! `artifactType` [`ARTIFACT_TYPE`], the empty config, the `vmlinux` layer ([`MEDIA_VMLINUX`])
//! and, when present, the kernel's `.config` ([`MEDIA_KCONFIG`]); the fragment hash, source
//! version and build name are manifest annotations. Nothing in it depends on the time, so
//! pushing the same kernel twice gives the same manifest digest, and a pulled kernel is pushed
//! again byte for byte (its `manifest.json` is kept).
//!
//! `pull` checks the manifest against a pin or a digest, refuses artifacts of another type,
//! architecture or config fragment, downloads every blob into a scratch directory in the
//! kernel cache checking each against its sha256, and only then renames the finished
//! directory into place as `<kernel cache>/sha256-<manifest hex>/`: a failed pull installs
//! nothing that `find_kernel` could pick up. Pulls of one digest are serialized by
//! `<kernel cache>/.locks/pull-<hex>.lock`.
//!
//! The catalog's kernel is `$PYRO_REGISTRY/kernel:<first 16 hex of the fragment hash>`, pinned
//! by manifest digest under the name `kernel` in the pins file, like the catalog environments.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_client::{Reference, RegistryOperation};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::oci::{self, Descriptor, Manifest};
use super::registry::{
    auth_for, download_blob, fetch_manifest, lock_async, missing_blobs, parse_reference,
    registry_error, run_blocking, unsupported, upload_file, RegistrySettings, Transfer,
};
use super::{remove_abandoned_scratch, unique_suffix, ScratchDir};
use crate::error::{Error, IoContext, Result};

/// The kernel config fragment the guest kernel is built from; a built kernel is recognised by
/// the sha256 of this text (written beside it as `fragment.sha256`).
pub const KERNEL_FRAGMENT: &str = include_str!("../../../resources/kernel/microvm.config");

/// Where `scripts/build-kernel` puts kernels: `$PYRO_KERNEL_DIR`, else `~/.cache/pyro/kernels`.
pub fn kernel_dir() -> PathBuf {
    pyro_api::paths::var_path(pyro_api::paths::Var::KernelDir)
        .unwrap_or_else(|| pyro_api::paths::home_dir().join(".cache/pyro/kernels"))
}

/// The guest kernel: `$PYRO_KERNEL` when set (an explicit choice that does not exist is "not
/// found"), else the newest build in [`kernel_dir`] made from this version's config fragment.
pub fn find_kernel() -> Option<PathBuf> {
    if let Some(p) = pyro_api::paths::var_path(pyro_api::paths::Var::Kernel) {
        return Some(p).filter(|p| p.is_file());
    }
    let want = hex::encode(Sha256::digest(KERNEL_FRAGMENT.as_bytes()));
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(kernel_dir()).ok()?.flatten() {
        let dir = e.path();
        let vmlinux = dir.join("vmlinux");
        let matches =
            std::fs::read_to_string(dir.join("fragment.sha256")).is_ok_and(|s| s.trim() == want);
        let Ok(mtime) = std::fs::metadata(&vmlinux).and_then(|m| m.modified()) else {
            continue;
        };
        if matches && best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, vmlinux));
        }
    }
    best.map(|(_, p)| p)
}

/// `artifactType` of a pyro guest kernel.
pub const ARTIFACT_TYPE: &str = "application/vnd.pyro.kernel.v1";
/// Media type of the `vmlinux` layer: an uncompressed x86-64 kernel image.
pub const MEDIA_VMLINUX: &str = "application/vnd.pyro.kernel.vmlinux.v1";
/// Media type of the kernel's `.config` layer (text).
pub const MEDIA_KCONFIG: &str = "application/vnd.pyro.kernel.config.v1";
/// The OCI empty descriptor's media type, the config of an artifact that needs none.
const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The content of the empty config.
const EMPTY_JSON: &[u8] = b"{}";

/// Manifest annotation: sha256 of the config fragment the kernel was built from.
pub const ANN_FRAGMENT: &str = "io.pyro.kernel.fragment-sha256";
/// Manifest annotation: the kernel source package and version (`linux-source-6.1 6.1.…`).
pub const ANN_SOURCE_VERSION: &str = "io.pyro.kernel.source-version";
/// Manifest annotation: the build's name (its directory in the kernel cache).
pub const ANN_BUILD: &str = "io.pyro.kernel.build";
/// Manifest annotation: the architecture the kernel runs on (`x86_64`).
pub const ANN_ARCH: &str = "io.pyro.kernel.arch";
/// Layer annotation: the file name.
const ANN_TITLE: &str = "org.opencontainers.image.title";

/// The name of the kernel's pin in the pins file.
pub const PIN_NAME: &str = "kernel";
/// The repository, under `PYRO_REGISTRY`, of the catalog's kernel.
const CATALOG_REPOSITORY: &str = "kernel";

/// Largest `vmlinux` accepted from a registry.
const MAX_VMLINUX_BYTES: u64 = 512 << 20;
/// Largest `.config` accepted.
const MAX_KCONFIG_BYTES: u64 = 4 << 20;
/// Largest artifact config accepted (it is normally `{}`).
const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Longest source version or build name written to the cache.
const MAX_LABEL: usize = 200;

/// Files of a kernel directory.
const VMLINUX: &str = "vmlinux";
const KCONFIG: &str = "config";
const FRAGMENT_FILE: &str = "fragment.sha256";
const SOURCE_VERSION_FILE: &str = "source-version";
const MANIFEST_FILE: &str = "manifest.json";
const SOURCE_FILE: &str = "source";

/// The sha256 of this pyro's kernel config fragment: a kernel is used only if it was built
/// from it.
pub fn wanted_fragment() -> String {
    hex::encode(Sha256::digest(KERNEL_FRAGMENT.as_bytes()))
}

/// The catalog's kernel reference: `<registry>/kernel:<first 16 hex of the fragment hash>`.
pub fn catalog_reference(settings: &RegistrySettings) -> String {
    format!(
        "{}/{CATALOG_REPOSITORY}:{}",
        settings.registry,
        &wanted_fragment()[..16]
    )
}

/// A kernel in the kernel cache.
#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    /// The `vmlinux`.
    pub path: PathBuf,
    /// The build's name: its directory (`sha256-<hex>` for pulled kernels).
    pub build: String,
    /// The config fragment it was built from (`fragment.sha256`).
    pub fragment_sha256: Option<String>,
    /// Whether it was built from this pyro's fragment, so that pyro may boot it.
    pub current: bool,
    /// Whether it is the kernel VMs boot now (`PYRO_KERNEL`, else the newest current one).
    pub in_use: bool,
    /// The kernel source it was built from, e.g. `linux-source-6.1 6.1.…`.
    pub source_version: Option<String>,
    /// Size of the `vmlinux`.
    pub size_bytes: u64,
    /// For a pulled kernel: the manifest digest it was pulled by.
    pub digest: Option<String>,
    /// For a pulled kernel: the reference it was pulled from.
    pub source: Option<String>,
}

/// The kernel cache and what is in it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelList {
    /// The kernel cache (`PYRO_KERNEL_DIR`, default `~/.cache/pyro/kernels`).
    pub kernel_dir: PathBuf,
    /// The fragment hash a kernel must have been built from.
    pub wanted_fragment_sha256: String,
    /// The kernel VMs boot now, if any.
    pub in_use: Option<PathBuf>,
    /// Where `pyro kernel pull` without a reference pulls from.
    pub catalog_reference: String,
    /// The pinned manifest digest of the catalog's kernel, if any.
    pub pinned_digest: Option<String>,
    /// Every kernel in the cache, by build name.
    pub kernels: Vec<KernelInfo>,
}

/// What a push uploaded.
#[derive(Debug, Clone, Serialize)]
pub struct KernelPushResult {
    /// The kernel pushed.
    pub path: PathBuf,
    /// Where it went.
    pub reference: String,
    /// The artifact's manifest digest (pin this).
    pub digest: String,
    /// The config fragment it was built from.
    pub fragment_sha256: String,
    /// The kernel source version, if known.
    pub source_version: Option<String>,
    /// Size of the `vmlinux`.
    pub size_bytes: u64,
    /// Blobs uploaded.
    pub uploaded_blobs: usize,
    /// Blobs the registry already had.
    pub existing_blobs: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

/// What a pull installed.
#[derive(Debug, Clone, Serialize)]
pub struct KernelPullResult {
    /// The reference it was pulled from.
    pub reference: String,
    /// The artifact's manifest digest.
    pub digest: String,
    /// The installed `vmlinux`.
    pub path: PathBuf,
    /// The config fragment it was built from (this pyro's).
    pub fragment_sha256: String,
    /// The kernel source version, if the artifact says.
    pub source_version: Option<String>,
    /// Size of the `vmlinux`.
    pub size_bytes: u64,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Whether it was installed already, so nothing was downloaded.
    pub already_installed: bool,
    /// The pin (or `--digest`) the manifest digest was checked against.
    pub pinned_digest: Option<String>,
    /// Whether VMs boot it now (a later build or `PYRO_KERNEL` may take precedence).
    pub in_use: bool,
}

/// A kernel artifact as a registry describes it (`pyro kernel inspect`); nothing downloaded.
#[derive(Debug, Clone, Serialize)]
pub struct KernelArtifact {
    /// The reference.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The config fragment it was built from.
    pub fragment_sha256: String,
    /// Whether that is this pyro's fragment (so a pull would be accepted).
    pub current: bool,
    /// The kernel source version, if the artifact says.
    pub source_version: Option<String>,
    /// The build's name.
    pub build: Option<String>,
    /// The architecture it runs on.
    pub arch: String,
    /// Size of the `vmlinux`.
    pub size_bytes: u64,
    /// Whether the kernel's `.config` is included.
    pub has_config: bool,
}

/// A validated kernel artifact manifest.
struct Parsed {
    manifest: Manifest,
    vmlinux: Descriptor,
    kconfig: Option<Descriptor>,
    fragment: String,
    source_version: Option<String>,
    build: Option<String>,
    arch: String,
}

/// The architecture name kernels are annotated with (`uname -m` style).
fn host_machine() -> &'static str {
    std::env::consts::ARCH
}

/// A label from outside (a file, an annotation) that is written into the cache: one line,
/// no control characters, bounded.
fn clean_label(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty() && text.len() <= MAX_LABEL && !text.chars().any(char::is_control))
        .then(|| text.to_owned())
}

fn is_hex64(s: &str) -> bool {
    oci::sha256_hex(&format!("sha256:{s}")).is_some()
}

/// Reads a small text file beside a kernel; `None` when it is missing or unreadable.
fn read_small(path: &Path) -> Option<String> {
    use io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// One kernel directory of the cache, if it holds a `vmlinux`.
fn kernel_info(dir: &Path, in_use: Option<&Path>, wanted: &str) -> Option<KernelInfo> {
    let vmlinux = dir.join(VMLINUX);
    let meta = fs::metadata(&vmlinux).ok().filter(|m| m.is_file())?;
    let fragment = read_small(&dir.join(FRAGMENT_FILE))
        .map(|s| s.trim().to_owned())
        .filter(|s| is_hex64(s));
    let digest = fs::read(dir.join(MANIFEST_FILE))
        .ok()
        .map(|b| oci::digest_of(&b));
    Some(KernelInfo {
        build: dir.file_name()?.to_string_lossy().into_owned(),
        current: fragment.as_deref() == Some(wanted),
        in_use: in_use == Some(vmlinux.as_path()),
        fragment_sha256: fragment,
        source_version: read_small(&dir.join(SOURCE_VERSION_FILE)).and_then(|s| clean_label(&s)),
        size_bytes: meta.len(),
        digest,
        source: read_small(&dir.join(SOURCE_FILE)).and_then(|s| clean_label(&s)),
        path: vmlinux,
    })
}

/// Every kernel in the kernel cache.
pub fn list(settings: &RegistrySettings) -> Result<KernelList> {
    let dir = kernel_dir();
    let wanted = wanted_fragment();
    let in_use = find_kernel();
    let mut kernels = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if let Some(k) = kernel_info(&e.path(), in_use.as_deref(), &wanted) {
                    kernels.push(k);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    }
    kernels.sort_by(|a, b| a.build.cmp(&b.build));
    Ok(KernelList {
        kernel_dir: dir,
        wanted_fragment_sha256: wanted,
        in_use,
        catalog_reference: catalog_reference(settings),
        pinned_digest: settings.pin(PIN_NAME)?,
        kernels,
    })
}

/// Checks a manifest's bytes as a pyro kernel artifact.
fn parse(reference: &Reference, bytes: &[u8]) -> Result<Parsed> {
    let bad = |m: String| unsupported(reference, m);
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a kernel artifact manifest: {e}")))?;
    let media_type = manifest
        .media_type
        .as_deref()
        .unwrap_or(oci::MEDIA_MANIFEST);
    if media_type != oci::MEDIA_MANIFEST {
        return Err(bad(format!(
            "a kernel artifact is an OCI image manifest, not {media_type}"
        )));
    }
    let artifact_type = manifest
        .extra
        .get("artifactType")
        .and_then(Value::as_str)
        .unwrap_or(manifest.config.media_type.as_str());
    if artifact_type != ARTIFACT_TYPE {
        return Err(bad(format!(
            "not a pyro kernel: its artifact type is {artifact_type:?}, not {ARTIFACT_TYPE}"
        )));
    }
    for blob in manifest.blobs() {
        if oci::sha256_hex(&blob.digest).is_none() {
            return Err(bad(format!("unsupported blob digest {:?}", blob.digest)));
        }
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "artifact config is {} bytes",
            manifest.config.size
        )));
    }
    let mut vmlinux = None;
    let mut kconfig = None;
    for layer in &manifest.layers {
        let (slot, max) = match layer.media_type.as_str() {
            MEDIA_VMLINUX => (&mut vmlinux, MAX_VMLINUX_BYTES),
            MEDIA_KCONFIG => (&mut kconfig, MAX_KCONFIG_BYTES),
            other => return Err(bad(format!("unexpected layer media type {other}"))),
        };
        if slot.is_some() {
            return Err(bad(format!("more than one {} layer", layer.media_type)));
        }
        if layer.size > max {
            return Err(bad(format!(
                "{} layer is {} bytes, more than pyro accepts ({max})",
                layer.media_type, layer.size
            )));
        }
        *slot = Some(layer.clone());
    }
    let vmlinux = vmlinux.ok_or_else(|| bad("no vmlinux layer".into()))?;
    let annotation = |k: &str| manifest.annotations.get(k).map(String::as_str);
    let fragment = annotation(ANN_FRAGMENT)
        .filter(|f| is_hex64(f))
        .ok_or_else(|| bad(format!("no valid {ANN_FRAGMENT} annotation")))?
        .to_owned();
    let arch = annotation(ANN_ARCH)
        .and_then(clean_label)
        .ok_or_else(|| bad(format!("no {ANN_ARCH} annotation")))?;
    Ok(Parsed {
        vmlinux,
        kconfig,
        fragment,
        source_version: annotation(ANN_SOURCE_VERSION).and_then(clean_label),
        build: annotation(ANN_BUILD).and_then(clean_label),
        arch,
        manifest,
    })
}

/// Fetches a kernel artifact's manifest and describes it (nothing is downloaded or installed).
pub async fn inspect(settings: &RegistrySettings, reference: &str) -> Result<KernelArtifact> {
    let reference = parse_reference(reference)?;
    let client = settings.client(&reference);
    let auth = auth_for(reference.resolve_registry());
    client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    let (bytes, digest) = fetch_manifest(&client, &reference, &auth).await?;
    let parsed = parse(&reference, &bytes)?;
    Ok(KernelArtifact {
        reference: reference.whole(),
        digest,
        current: parsed.fragment == wanted_fragment(),
        fragment_sha256: parsed.fragment,
        source_version: parsed.source_version,
        build: parsed.build,
        arch: parsed.arch,
        size_bytes: parsed.vmlinux.size,
        has_config: parsed.kconfig.is_some(),
    })
}

/// What to pull: `reference` (default: the catalog's kernel), checked against `digest` (default:
/// for the catalog's kernel, its pin, without which it is refused; for a reference, the digest
/// it names, if any).
pub async fn pull(
    settings: &RegistrySettings,
    reference: Option<&str>,
    digest: Option<&str>,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<KernelPullResult> {
    if let Some(d) = digest {
        if oci::sha256_hex(d).is_none() {
            return Err(Error::InvalidRequest(format!(
                "--digest must be sha256:<64 lowercase hex>, not {d:?}"
            )));
        }
    }
    let (reference, expected) = match reference {
        Some(r) => (parse_reference(r)?, digest.map(str::to_owned)),
        None => {
            let expected = match digest {
                Some(d) => d.to_owned(),
                None => settings.pin(PIN_NAME)?.ok_or(Error::KernelNotPinned)?,
            };
            (
                parse_reference(&catalog_reference(settings))?,
                Some(expected),
            )
        }
    };
    let client = settings.client(&reference);
    let auth = auth_for(reference.resolve_registry());
    client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    progress(Transfer::Phase(format!("resolving {}", reference.whole())));
    let (manifest_bytes, manifest_digest) = fetch_manifest(&client, &reference, &auth).await?;
    if let Some(expected) = &expected {
        if *expected != manifest_digest {
            return Err(Error::DigestMismatch {
                what: format!("pinned digest of the kernel at {}", reference.whole()),
                expected: expected.clone(),
                actual: manifest_digest,
            });
        }
    }
    let parsed = parse(&reference, &manifest_bytes)?;
    if parsed.arch != host_machine() {
        return Err(Error::PlatformMismatch {
            reference: reference.whole(),
            wanted: host_machine().to_owned(),
            found: parsed.arch,
        });
    }
    let wanted = wanted_fragment();
    if parsed.fragment != wanted {
        return Err(unsupported(
            &reference,
            format!(
                "this kernel was built from config fragment {}, this pyro boots kernels built from {wanted}",
                parsed.fragment
            ),
        ));
    }
    let hex = oci::sha256_hex(&manifest_digest)
        .unwrap_or_default()
        .to_owned();
    let kdir = kernel_dir();
    let target = kdir.join(format!("sha256-{hex}"));
    let mut result = KernelPullResult {
        reference: reference.whole(),
        digest: manifest_digest.clone(),
        path: target.join(VMLINUX),
        fragment_sha256: parsed.fragment.clone(),
        source_version: parsed.source_version.clone(),
        size_bytes: parsed.vmlinux.size,
        downloaded_bytes: 0,
        already_installed: false,
        pinned_digest: expected,
        in_use: false,
    };

    let lock = kdir.join(".locks").join(format!("pull-{hex}.lock"));
    let _lock = lock_async(lock, progress, &reference.whole()).await?;
    let installed = {
        let (target, vmlinux, digest) = (
            target.clone(),
            parsed.vmlinux.clone(),
            manifest_digest.clone(),
        );
        run_blocking(move || Ok(is_installed(&target, &digest, &vmlinux))).await?
    };
    if installed {
        progress(Transfer::Phase(format!(
            "the kernel {manifest_digest} is already installed"
        )));
        result.already_installed = true;
        result.in_use = find_kernel().as_deref() == Some(result.path.as_path());
        return Ok(result);
    }

    fs::create_dir_all(&kdir).ctx(|| format!("creating {}", kdir.display()))?;
    let prefix = format!(".pull-{}", hex.get(..12).unwrap_or(&hex));
    // Holding this digest's lock, any other scratch dir of its pulls is a dead one's.
    remove_abandoned_scratch(&kdir, &prefix);
    let scratch = ScratchDir::create(&kdir, &prefix)?;
    // Files go one level down, so `find_kernel` (which looks at `<dir>/vmlinux`) never sees a
    // kernel that is still arriving.
    let out = scratch.path().join("out");
    fs::create_dir(&out).ctx(|| format!("creating {}", out.display()))?;

    let mut blobs: Vec<(&Descriptor, PathBuf)> = vec![
        (
            &parsed.manifest.config,
            scratch.path().join("artifact-config"),
        ),
        (&parsed.vmlinux, out.join(VMLINUX)),
    ];
    if let Some(k) = &parsed.kconfig {
        blobs.push((k, out.join(KCONFIG)));
    }
    let total: u64 = blobs.iter().map(|(d, _)| d.size).sum();
    progress(Transfer::Phase(format!(
        "downloading {} blobs ({total} bytes)",
        blobs.len()
    )));
    let mut done = 0u64;
    progress(Transfer::Bytes { done, total });
    for (desc, dest) in &blobs {
        let mut on_bytes = |n: u64| {
            done += n;
            progress(Transfer::Bytes { done, total });
        };
        download_blob(&client, &reference, desc, dest, &mut on_bytes).await?;
    }
    result.downloaded_bytes = done;

    progress(Transfer::Phase("installing the kernel".into()));
    let source_version = parsed.source_version.clone();
    let fragment = parsed.fragment.clone();
    let source = reference.whole();
    let install_target = target.clone();
    let kdir2 = kdir.clone();
    run_blocking(move || {
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (FRAGMENT_FILE, format!("{fragment}\n").into_bytes()),
            (MANIFEST_FILE, manifest_bytes),
            (SOURCE_FILE, format!("{source}\n").into_bytes()),
        ];
        if let Some(v) = source_version {
            files.push((SOURCE_VERSION_FILE, format!("{v}\n").into_bytes()));
        }
        for (name, bytes) in files {
            oci::write_atomic(&out.join(name), &bytes)?;
        }
        oci::sync_dir(&out)?;
        install_dir(&out, &install_target, &kdir2)
    })
    .await?;
    drop(scratch);
    result.in_use = find_kernel().as_deref() == Some(result.path.as_path());
    progress(Transfer::Phase(format!(
        "installed the kernel at {}",
        result.path.display()
    )));
    Ok(result)
}

/// Whether `target` holds the complete kernel of manifest `digest` (its manifest and a
/// `vmlinux` matching its layer's digest).
fn is_installed(target: &Path, digest: &str, vmlinux: &Descriptor) -> bool {
    let manifest_ok =
        fs::read(target.join(MANIFEST_FILE)).is_ok_and(|b| oci::digest_of(&b) == digest);
    manifest_ok
        && target.join(FRAGMENT_FILE).is_file()
        && oci::hash_file(&target.join(VMLINUX))
            .is_ok_and(|(d, size)| d == vmlinux.digest && size == vmlinux.size)
}

/// Renames the finished directory `out` into place as `target` (replacing a damaged one).
fn install_dir(out: &Path, target: &Path, kdir: &Path) -> Result<()> {
    if target.exists() {
        // A damaged earlier install of the same digest: moved away first, so the name never
        // points at a half-deleted kernel.
        let trash = kdir.join(format!(".trash-{}", unique_suffix()));
        fs::rename(target, &trash).ctx(|| format!("moving {} away", target.display()))?;
        let _ = fs::remove_dir_all(&trash);
    }
    fs::rename(out, target).ctx(|| format!("renaming {} into place", out.display()))?;
    oci::sync_dir(kdir)
}

/// The kernel `push` publishes: the one VMs boot now ([`find_kernel`]).
fn local_kernel() -> Result<(PathBuf, PathBuf)> {
    let vmlinux = find_kernel().ok_or_else(|| {
        Error::KernelNotFound(format!(
            "no kernel built from this pyro's config fragment in {} (and PYRO_KERNEL is not set)",
            kernel_dir().display()
        ))
    })?;
    let dir = vmlinux
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::KernelNotFound(format!("{} has no directory", vmlinux.display())))?;
    Ok((vmlinux, dir))
}

/// A kernel ready to push: its manifest's bytes, its blobs (the descriptor and, except for the
/// empty config, the file), and what the manifest says.
#[derive(Debug)]
struct Artifact {
    manifest: Vec<u8>,
    blobs: Vec<(Descriptor, Option<PathBuf>)>,
    fragment: String,
    source_version: Option<String>,
}

/// Builds the artifact manifest for a kernel directory (or returns the one it was pulled
/// with), with the descriptors and files of its blobs.
fn artifact_for(vmlinux: &Path, dir: &Path) -> Result<Artifact> {
    let fragment = read_small(&dir.join(FRAGMENT_FILE))
        .map(|s| s.trim().to_owned())
        .filter(|s| is_hex64(s))
        .ok_or_else(|| {
            Error::KernelNotFound(format!(
                "{} has no valid {FRAGMENT_FILE} beside it; push a kernel built by scripts/build-kernel",
                vmlinux.display()
            ))
        })?;
    let source_version = read_small(&dir.join(SOURCE_VERSION_FILE)).and_then(|s| clean_label(&s));
    let (vm_digest, vm_size) = oci::hash_file(vmlinux)?;
    let kconfig_path = dir.join(KCONFIG);
    let kconfig = if kconfig_path.is_file() {
        let (d, size) = oci::hash_file(&kconfig_path)?;
        (size <= MAX_KCONFIG_BYTES).then_some((d, size))
    } else {
        None
    };

    // A pulled kernel keeps its manifest, byte for byte, when its files still match it.
    if let Ok(bytes) = fs::read(dir.join(MANIFEST_FILE)) {
        let reference = parse_reference("localhost/pyro/kernel:local")?;
        if let Ok(parsed) = parse(&reference, &bytes) {
            let matches = parsed.vmlinux.digest == vm_digest
                && parsed.fragment == fragment
                && parsed.kconfig.as_ref().map(|k| &k.digest) == kconfig.as_ref().map(|(d, _)| d);
            if matches {
                let mut blobs = vec![(parsed.manifest.config.clone(), None)];
                blobs.push((parsed.vmlinux.clone(), Some(vmlinux.to_path_buf())));
                if let Some(k) = parsed.kconfig {
                    blobs.push((k, Some(kconfig_path.clone())));
                }
                return Ok(Artifact {
                    manifest: bytes,
                    blobs,
                    fragment,
                    source_version: parsed.source_version,
                });
            }
        }
    }

    let mut config = Descriptor::new(MEDIA_EMPTY, oci::digest_of(EMPTY_JSON), 2);
    config
        .extra
        .insert("data".into(), Value::String(base64_of(EMPTY_JSON)));
    let mut layer = Descriptor::new(MEDIA_VMLINUX, vm_digest, vm_size);
    layer.annotations.insert(ANN_TITLE.into(), VMLINUX.into());
    let mut blobs = vec![
        (config.clone(), None),
        (layer.clone(), Some(vmlinux.to_path_buf())),
    ];
    let mut layers = vec![layer];
    if let Some((d, size)) = kconfig {
        let mut k = Descriptor::new(MEDIA_KCONFIG, d, size);
        k.annotations.insert(ANN_TITLE.into(), KCONFIG.into());
        blobs.push((k.clone(), Some(kconfig_path)));
        layers.push(k);
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(ANN_FRAGMENT.to_owned(), fragment.clone());
    annotations.insert(ANN_ARCH.to_owned(), host_machine().to_owned());
    if let Some(build) = dir
        .file_name()
        .and_then(|n| clean_label(&n.to_string_lossy()))
    {
        annotations.insert(ANN_BUILD.to_owned(), build);
    }
    if let Some(v) = &source_version {
        annotations.insert(ANN_SOURCE_VERSION.to_owned(), v.clone());
    }
    let mut extra = serde_json::Map::new();
    extra.insert("artifactType".into(), Value::String(ARTIFACT_TYPE.into()));
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.to_owned()),
        config,
        layers,
        annotations,
        extra,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| {
        Error::io(
            "serializing the kernel manifest".to_string(),
            io::Error::other(e),
        )
    })?;
    Ok(Artifact {
        manifest: bytes,
        blobs,
        fragment,
        source_version,
    })
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Pushes the kernel VMs boot now to `target` as a kernel artifact.
pub async fn push(
    settings: &RegistrySettings,
    target: &str,
    progress: &mut (dyn FnMut(Transfer) + Send),
) -> Result<KernelPushResult> {
    let target = parse_reference(target)?;
    if target.digest().is_some() {
        return Err(Error::InvalidRequest(format!(
            "push needs a tag, not a digest: {}",
            target.whole()
        )));
    }
    let (vmlinux, dir) = local_kernel()?;
    progress(Transfer::Phase(format!("hashing {}", vmlinux.display())));
    let Artifact {
        manifest: manifest_bytes,
        blobs,
        fragment,
        source_version,
    } = {
        let (vmlinux, dir) = (vmlinux.clone(), dir.clone());
        run_blocking(move || artifact_for(&vmlinux, &dir)).await?
    };
    let digest = oci::digest_of(&manifest_bytes);
    let client = settings.client(&target);
    let auth = auth_for(target.resolve_registry());
    client
        .auth(&target, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| registry_error(&target, e))?;
    let mut result = KernelPushResult {
        path: vmlinux.clone(),
        reference: target.whole(),
        digest: digest.clone(),
        fragment_sha256: fragment,
        source_version,
        size_bytes: blobs
            .iter()
            .find(|(d, _)| d.media_type == MEDIA_VMLINUX)
            .map_or(0, |(d, _)| d.size),
        uploaded_blobs: 0,
        existing_blobs: 0,
        uploaded_bytes: 0,
    };
    let (to_upload, existing, total) = missing_blobs(
        &client,
        &target,
        blobs.iter().map(|(desc, path)| (desc, path)),
        progress,
    )
    .await?;
    result.existing_blobs = existing;
    let mut done = 0u64;
    for (desc, path) in to_upload {
        match path {
            Some(path) => {
                upload_file(&client, &target, path, desc, &mut done, total, progress).await?;
            }
            None => {
                // The artifact config: `{}`, as the manifest's digest says.
                if desc.digest != oci::digest_of(EMPTY_JSON) {
                    return Err(Error::CorruptCache {
                        path: dir.join(MANIFEST_FILE),
                        message: format!("unexpected artifact config {}", desc.digest),
                    });
                }
                client
                    .push_blob(&target, EMPTY_JSON.to_vec(), &desc.digest)
                    .await
                    .map_err(|e| registry_error(&target, e))?;
                done += desc.size;
                progress(Transfer::Bytes { done, total });
            }
        }
        result.uploaded_blobs += 1;
    }
    result.uploaded_bytes = done;
    progress(Transfer::Phase("uploading manifest".into()));
    let content_type = oci::MEDIA_MANIFEST
        .parse()
        .map_err(|_| unsupported(&target, "bad media type".into()))?;
    client
        .push_manifest_raw(&target, manifest_bytes, content_type)
        .await
        .map_err(|e| registry_error(&target, e))?;
    progress(Transfer::Phase(format!(
        "pushed the kernel to {} ({digest})",
        target.whole()
    )));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        parse_reference("127.0.0.1:5000/pyro/kernel:test").expect("ref")
    }

    fn manifest(layers: Value, annotations: Value, artifact_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": MEDIA_EMPTY, "digest": oci::digest_of(EMPTY_JSON), "size": 2},
            "layers": layers,
            "annotations": annotations,
        }))
        .expect("json")
    }

    fn layer(media_type: &str, size: u64) -> Value {
        serde_json::json!({"mediaType": media_type, "digest": oci::digest_of(b"x"), "size": size})
    }

    fn good_annotations() -> Value {
        serde_json::json!({ANN_FRAGMENT: wanted_fragment(), ANN_ARCH: host_machine(),
            ANN_SOURCE_VERSION: "linux-source-6.1 6.1.1"})
    }

    #[test]
    fn kernel_manifests_are_checked() {
        let ok = manifest(
            serde_json::json!([layer(MEDIA_VMLINUX, 10), layer(MEDIA_KCONFIG, 5)]),
            good_annotations(),
            ARTIFACT_TYPE,
        );
        let p = parse(&reference(), &ok).expect("parse");
        assert_eq!(p.vmlinux.size, 10);
        assert!(p.kconfig.is_some());
        assert_eq!(p.fragment, wanted_fragment());
        assert_eq!(p.source_version.as_deref(), Some("linux-source-6.1 6.1.1"));

        let cases = [
            manifest(
                serde_json::json!([layer(MEDIA_VMLINUX, 10)]),
                good_annotations(),
                "application/vnd.other",
            ),
            manifest(serde_json::json!([]), good_annotations(), ARTIFACT_TYPE),
            manifest(
                serde_json::json!([layer(MEDIA_VMLINUX, 10), layer(MEDIA_VMLINUX, 10)]),
                good_annotations(),
                ARTIFACT_TYPE,
            ),
            manifest(
                serde_json::json!([layer("application/vnd.oci.image.layer.v1.tar", 10)]),
                good_annotations(),
                ARTIFACT_TYPE,
            ),
            manifest(
                serde_json::json!([layer(MEDIA_VMLINUX, MAX_VMLINUX_BYTES + 1)]),
                good_annotations(),
                ARTIFACT_TYPE,
            ),
            manifest(
                serde_json::json!([layer(MEDIA_VMLINUX, 10)]),
                serde_json::json!({ANN_ARCH: host_machine()}),
                ARTIFACT_TYPE,
            ),
            manifest(
                serde_json::json!([layer(MEDIA_VMLINUX, 10)]),
                serde_json::json!({ANN_FRAGMENT: wanted_fragment()}),
                ARTIFACT_TYPE,
            ),
            b"{not json".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let e = parse(&reference(), bytes)
                .err()
                .unwrap_or_else(|| panic!("case {i} accepted"));
            assert_eq!(e.kind(), "unsupported_image", "case {i}: {e}");
        }
    }

    #[test]
    fn a_built_kernel_becomes_a_deterministic_artifact() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("0123456789abcdef");
        fs::create_dir_all(&dir).expect("mkdir");
        let vmlinux = dir.join(VMLINUX);
        fs::write(&vmlinux, b"not really a kernel").expect("vmlinux");
        assert_eq!(
            artifact_for(&vmlinux, &dir)
                .expect_err("no fragment")
                .kind(),
            "kernel_not_found"
        );
        fs::write(dir.join(FRAGMENT_FILE), format!("{}\n", wanted_fragment())).expect("frag");
        fs::write(dir.join(SOURCE_VERSION_FILE), "linux-source-6.1 6.1.9\n").expect("ver");
        fs::write(dir.join(KCONFIG), "CONFIG_64BIT=y\n").expect("config");
        let a = artifact_for(&vmlinux, &dir).expect("artifact");
        assert_eq!(a.fragment, wanted_fragment());
        assert_eq!(a.source_version.as_deref(), Some("linux-source-6.1 6.1.9"));
        assert_eq!(a.blobs.len(), 3);
        let bytes = a.manifest;
        let again = artifact_for(&vmlinux, &dir).expect("again").manifest;
        assert_eq!(
            bytes, again,
            "no timestamps: the same kernel gives the same digest"
        );
        let parsed = parse(&reference(), &bytes).expect("our own manifest parses");
        assert_eq!(parsed.build.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            parsed.vmlinux.digest,
            oci::digest_of(b"not really a kernel")
        );
        assert_eq!(parsed.manifest.config.digest, oci::digest_of(EMPTY_JSON));

        // A pulled kernel's manifest is kept byte for byte while its files match it.
        let mut kept = bytes.clone();
        kept.push(b'\n');
        fs::write(dir.join(MANIFEST_FILE), &kept).expect("manifest");
        assert_eq!(artifact_for(&vmlinux, &dir).expect("kept").manifest, kept);
        fs::write(&vmlinux, b"another kernel").expect("vmlinux");
        assert_ne!(
            artifact_for(&vmlinux, &dir).expect("rebuilt").manifest,
            kept
        );
    }
}
