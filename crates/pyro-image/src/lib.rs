//! Environments: the catalog of recipes, builds into an OCI image layout, and unpacked root
//! filesystems.
//!
//! Everything lives under one cache directory (`$PYRO_CACHE_DIR`, e.g. `~/.cache/pyro`):
//!
//! - `oci/`: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) holding one image
//!   per built or pulled environment, named by the `org.opencontainers.image.ref.name` annotation
//!   (a catalog name, or an image's canonical reference) and tagged with the recipe hash it was
//!   built from (catalog environments) or the reference it was pulled from (`io.pyro.source`);
//! - `rootfs/<manifest-hex>-u<shift>/`: root filesystems unpacked once per manifest digest and uid
//!   shift, never modified afterwards (sandboxes put an overlay on top);
//! - `images/<manifest-hex>.ext4`: for the VM levels, the uid-0 root filesystem as one read-only
//!   ext4 image per manifest digest (`mkfs.ext4 -d`: no root, no loop devices), shared by every
//!   VM sandbox of that environment;
//! - `locks/`: flock files serializing builds per environment, pulls per manifest digest and
//!   unpacks per rootfs;
//! - `tmp/`: build and pull scratch directories, each held by a flock while its owner runs;
//! - `logs/`: mmdebstrap logs, one per environment and recipe hash.
//!
//! All of it is blocking code; async callers run it on a blocking thread.

mod build;

pub use build::rfc3339;
mod defaults;
pub mod kernel;
mod oci;
pub mod overlay;
mod recipe;
mod registry;
pub mod unpack;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{lchown, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

pub use crate::unpack::{unpack_layer, UnpackStats};

pub use defaults::ImageDefaults;
pub(crate) use pyro_api::error;
pub use recipe::{catalog, host_arch, Recipe, BUILDER_VERSION};
pub use registry::{
    canonical_reference, is_image_reference, parse_reference, PullResult, PushResult,
    RegistrySettings, Transfer, DEFAULT_REGISTRY,
};

use crate::error::{Error, IoContext, Result};
use oci::{Descriptor, Index, OciLayout, ANN_CREATED, ANN_RECIPE_HASH, ANN_REF_NAME};

/// Entry points for the fuzz targets (`fuzz/`): the parsers of OCI documents that come from
/// registries and image layouts, which are otherwise internal.
#[doc(hidden)]
pub mod fuzz {
    /// Parses `bytes` as every OCI document pyro reads (index, manifest, image config) and,
    /// as text, as an image reference; the results are dropped.
    pub fn oci_documents(bytes: &[u8]) {
        let _ = serde_json::from_slice::<crate::oci::Index>(bytes);
        let _ = serde_json::from_slice::<crate::oci::Manifest>(bytes);
        let _ = crate::defaults::ImageDefaults::from_config(bytes);
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = crate::registry::parse_reference(text);
        }
    }
}

/// Logs older than this are removed by [`EnvCache::prune`].
const LOG_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A scratch directory whose lock is free is only treated as abandoned once it is this old, so
/// that one created a moment ago, whose owner has not yet taken the lock, is left alone.
const TMP_MIN_AGE: Duration = Duration::from_secs(60);

/// How to build an environment.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Build again even when an image from the current recipe is already in the cache.
    pub force: bool,
    /// Debian mirror passed to mmdebstrap (callers default it from `PYRO_DEBIAN_MIRROR`); `None`
    /// uses mmdebstrap's default.
    pub mirror: Option<String>,
}

/// One environment (a catalog entry, or an image pulled by reference) and its state in the
/// cache.
#[derive(Debug, Clone, Serialize)]
pub struct EnvInfo {
    /// The environment's name, e.g. `debian:12`, or an image's canonical reference.
    pub name: String,
    /// `catalog` (built from a recipe here, or pulled by pin) or `image` (any OCI image, pulled
    /// by reference).
    pub kind: String,
    /// The registry reference the installed image was pulled from, if it was pulled.
    pub source: Option<String>,
    /// What is in it.
    pub description: String,
    /// The distribution it is built from (`debian`; empty for images).
    pub distribution: String,
    /// The distribution suite, e.g. `bookworm` (empty for images).
    pub suite: String,
    /// Packages added to the base variant (none for images).
    pub packages: Vec<String>,
    /// The hash of the current recipe (empty for images).
    pub recipe_hash: String,
    /// Whether an image of this environment is in the cache (current or stale).
    pub installed: bool,
    /// Whether the cached image was built from an older recipe; `resolve` refuses it until it is
    /// built again.
    pub stale: bool,
    /// The cached image's manifest digest, `sha256:<hex>`.
    pub digest: Option<String>,
    /// Total size of the image's blobs (manifest, config and layers) in bytes.
    pub size_bytes: Option<u64>,
    /// When the cached image was built, RFC 3339 UTC.
    pub built_at: Option<String>,
    /// The OCI image layout holding the cache's images.
    pub oci_layout: PathBuf,
}

/// A built environment, ready to be unpacked or handed to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// The environment's name.
    pub name: String,
    /// The image's manifest digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// Layer blobs (tars, plain or gzip- or zstd-compressed), bottom layer first.
    pub layers: Vec<PathBuf>,
}

/// What [`EnvCache::prune`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneResult {
    /// One line per removed thing: a path relative to the cache directory, or an index entry.
    pub removed: Vec<String>,
    /// Bytes of file content freed.
    pub freed_bytes: u64,
}

/// The environment cache: builds, lookups, unpacked root filesystems and pruning.
#[derive(Debug, Clone)]
pub struct EnvCache {
    root: PathBuf,
}

impl EnvCache {
    /// The cache rooted at `root` (pyro's cache directory). Nothing is created until needed.
    pub fn new(root: impl Into<PathBuf>) -> EnvCache {
        EnvCache { root: root.into() }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layout(&self) -> OciLayout {
        OciLayout::new(self.root.join("oci"))
    }

    /// Every catalog environment, installed or not, in catalog order, then every image pulled
    /// by reference, by name.
    pub fn list(&self) -> Result<Vec<EnvInfo>> {
        let index = self.layout().read_index()?;
        let mut list: Vec<EnvInfo> = catalog()
            .iter()
            .map(|recipe| self.info(recipe, &index))
            .collect();
        let mut images: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| is_pulled_image(d))
            .collect();
        images.sort_by(|a, b| a.annotation(ANN_REF_NAME).cmp(&b.annotation(ANN_REF_NAME)));
        list.extend(images.into_iter().map(|d| self.image_info(d)));
        Ok(list)
    }

    /// One environment: a catalog name, or an image reference (containing `/`) that was
    /// pulled. [`Error::UnknownEnvironment`] for names not in the catalog,
    /// [`Error::ImageNotPulled`] for references not in the cache.
    pub fn inspect(&self, name: &str) -> Result<EnvInfo> {
        if is_image_reference(name) {
            let name = canonical_reference(name)?;
            let index = self.layout().read_index()?;
            return index
                .manifests
                .iter()
                .rev()
                .find(|d| is_pulled_image(d) && d.annotation(ANN_REF_NAME) == Some(&name))
                .map(|d| self.image_info(d))
                .ok_or(Error::ImageNotPulled(name));
        }
        let recipe = recipe::find(name)?;
        let index = self.layout().read_index()?;
        Ok(self.info(&recipe, &index))
    }

    /// The index entry an environment name resolves to: the current recipe's image for a
    /// catalog name, the pulled image for a reference.
    fn entry_for(&self, name: &str) -> Result<(String, Descriptor)> {
        let index = self.layout().read_index()?;
        if is_image_reference(name) {
            let name = canonical_reference(name)?;
            let entry = index
                .manifests
                .iter()
                .rev()
                .find(|d| is_pulled_image(d) && d.annotation(ANN_REF_NAME) == Some(&name))
                .cloned()
                .ok_or_else(|| Error::ImageNotPulled(name.clone()))?;
            return Ok((name, entry));
        }
        let recipe = recipe::find(name)?;
        let hash = recipe.hash();
        let entry = index
            .manifests
            .iter()
            .rev()
            .find(|d| {
                d.annotation(ANN_REF_NAME) == Some(name)
                    && d.annotation(ANN_RECIPE_HASH) == Some(&hash)
            })
            .cloned()
            .ok_or_else(|| Error::EnvironmentNotBuilt(name.to_owned()))?;
        Ok((name.to_owned(), entry))
    }

    /// Pulls an environment from a registry: a catalog name from `settings.registry`, checked
    /// against `digest` or else its pin (refused without one), or any image reference
    /// (containing `/`), checked against `digest` or the digest the reference names.
    pub async fn pull(
        &self,
        target: &str,
        digest: Option<&str>,
        settings: &RegistrySettings,
        progress: &mut (dyn FnMut(Transfer) + Send),
    ) -> Result<PullResult> {
        if let Some(d) = digest {
            if oci::sha256_hex(d).is_none() {
                return Err(Error::InvalidRequest(format!(
                    "--digest must be sha256:<64 lowercase hex>, not {d:?}"
                )));
            }
        }
        let plan = if is_image_reference(target) {
            let source = parse_reference(target)?;
            registry::PullPlan {
                name: source.whole(),
                source,
                expected: digest.map(str::to_owned),
                recipe_hash: None,
            }
        } else {
            let recipe = recipe::find(target)?;
            let expected = match digest {
                Some(d) => d.to_owned(),
                None => settings
                    .pin(target)?
                    .ok_or_else(|| Error::NotPinned(target.to_owned()))?,
            };
            let source = parse_reference(&format!("{}/{target}", settings.registry))?;
            registry::PullPlan {
                source,
                name: target.to_owned(),
                expected: Some(expected),
                recipe_hash: Some(recipe.hash()),
            }
        };
        registry::pull(self, settings, &plan, progress).await
    }

    /// Pushes an installed environment (catalog name or pulled reference) to `target`, an
    /// image reference; the manifest keeps its digest.
    pub async fn push(
        &self,
        name: &str,
        target: &str,
        settings: &RegistrySettings,
        progress: &mut (dyn FnMut(Transfer) + Send),
    ) -> Result<PushResult> {
        let target = parse_reference(target)?;
        if target.digest().is_some() {
            return Err(Error::InvalidRequest(format!(
                "push needs a tag, not a digest: {}",
                target.whole()
            )));
        }
        let (name, entry) = self.entry_for(name)?;
        registry::push(self, settings, &name, &entry, &target, progress).await
    }

    /// Builds an environment with mmdebstrap into the OCI layout, unless an image from the
    /// current recipe is already there and `opts.force` is false. Concurrent builds of one
    /// environment run one after the other, so the second finds the first one's image.
    /// `progress` gets short phase descriptions.
    pub fn build(
        &self,
        name: &str,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<EnvInfo> {
        let recipe = recipe::find(name)?;
        let lock_path = self
            .root
            .join("locks")
            .join(format!("env-{}.lock", sanitize(name)));
        let _env_lock = match try_lock_exclusive(&lock_path)? {
            Some(lock) => lock,
            None => {
                progress(&format!("waiting for another build of {name}"));
                lock_exclusive(&lock_path)?
            }
        };
        if !opts.force {
            let info = self.info(&recipe, &self.layout().read_index()?);
            if info.installed && !info.stale {
                progress(&format!("{name} is already built"));
                return Ok(info);
            }
        }
        let prefix = format!("build-{}", sanitize(name));
        // Holding the environment's lock, any other scratch dir of its builds is a dead one's.
        remove_abandoned_scratch(&self.root.join("tmp"), &prefix);
        let tmp = ScratchDir::create(&self.root.join("tmp"), &prefix)?;
        let layer = tmp.path().join("layer.tar");
        let log = self.root.join("logs").join(format!(
            "build-{}-{}.log",
            sanitize(name),
            &recipe.hash()[..12]
        ));
        build::run_mmdebstrap(&recipe, opts, &layer, &log, progress)?;
        let info = self.install_layer(&recipe, &layer, progress)?;
        progress(&format!("built {name}"));
        Ok(info)
    }

    /// The current image of a catalog environment. [`Error::EnvironmentNotBuilt`] when there is
    /// none built from the current recipe; [`Error::CorruptCache`] when a blob is missing or has
    /// the wrong size (contents are only re-hashed by [`EnvCache::verify`]).
    ///
    /// An image reference (a name containing `/`) resolves to the image pulled under that
    /// reference; [`Error::ImageNotPulled`] when there is none.
    pub fn resolve(&self, name: &str) -> Result<ResolvedEnv> {
        let layout = self.layout();
        let (name, entry) = self.entry_for(name)?;
        let entry = &entry;
        let manifest = layout.read_manifest(entry)?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            let path = layout.blob_path(&layer.digest)?;
            if !registry::is_supported_layer(&layer.media_type) {
                return Err(Error::CorruptCache {
                    path,
                    message: format!("unsupported layer media type {}", layer.media_type),
                });
            }
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() && meta.len() == layer.size => {}
                Ok(meta) => {
                    return Err(Error::CorruptCache {
                        path,
                        message: format!("layer is {} bytes, expected {}", meta.len(), layer.size),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::CorruptCache {
                        path,
                        message: "layer blob is missing".into(),
                    })
                }
                Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
            }
            layers.push(path);
        }
        Ok(ResolvedEnv {
            name,
            manifest_digest: entry.digest.clone(),
            layers,
        })
    }

    /// How commands run in a resolved environment: its image config's `Env`, `WorkingDir` and
    /// `User` (validated; [`Error::UnsupportedImage`] for values pyro cannot use).
    pub fn defaults(&self, env: &ResolvedEnv) -> Result<ImageDefaults> {
        let layout = self.layout();
        let index = layout.read_index()?;
        let entry = index
            .manifests
            .iter()
            .find(|d| d.digest == env.manifest_digest)
            .ok_or_else(|| Error::EnvironmentNotBuilt(env.name.clone()))?;
        let manifest = layout.read_manifest(entry)?;
        let config = layout.read_small_blob(&manifest.config, registry::MAX_CONFIG_BYTES)?;
        ImageDefaults::from_config(&config).map_err(|message| Error::UnsupportedImage {
            reference: env.name.clone(),
            message,
        })
    }

    /// Re-hashes every blob of an environment's current image (slow: reads every layer).
    pub fn verify(&self, name: &str) -> Result<()> {
        let resolved = self.resolve(name)?;
        let layout = self.layout();
        let index = layout.read_index()?;
        let entry = index
            .manifests
            .iter()
            .find(|d| d.digest == resolved.manifest_digest)
            .ok_or_else(|| Error::EnvironmentNotBuilt(name.to_owned()))?;
        let manifest = layout.read_manifest(entry)?;
        for blob in manifest.blobs() {
            layout.verify_blob(blob)?;
        }
        Ok(())
    }

    /// The read-only ext4 image for a manifest digest (the VM levels), if it exists already.
    pub fn existing_image(&self, manifest_digest: &str) -> Option<PathBuf> {
        let hex = oci::sha256_hex(manifest_digest)?;
        Some(self.root.join("images").join(format!("{hex}.ext4"))).filter(|p| p.is_file())
    }

    /// The unpacked root filesystem for a manifest digest, if it is unpacked already. Used to
    /// restart workspaces whose environment has since been rebuilt under a new digest.
    pub fn existing_rootfs(&self, manifest_digest: &str, uid_shift: u32) -> Option<PathBuf> {
        let hex = oci::sha256_hex(manifest_digest)?;
        Some(self.root.join("rootfs").join(format!("{hex}-u{uid_shift}"))).filter(|p| p.is_dir())
    }

    /// The environment's root filesystem with owners shifted by `uid_shift`, at
    /// `<root>/rootfs/<manifest-hex>-u<shift>/`. It is unpacked on first use into a scratch
    /// directory and renamed into place, so it either exists complete or not at all; concurrent
    /// callers wait for one unpack. Callers must treat it as read-only.
    pub fn rootfs(&self, env: &ResolvedEnv, uid_shift: u32) -> Result<PathBuf> {
        let hex = oci::sha256_hex(&env.manifest_digest).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "malformed manifest digest {:?}",
                env.manifest_digest
            ))
        })?;
        let dir_name = format!("{hex}-u{uid_shift}");
        let rootfs_dir = self.root.join("rootfs");
        let target = rootfs_dir.join(&dir_name);
        if target.is_dir() {
            return Ok(target);
        }
        let _lock = lock_exclusive(
            &self
                .root
                .join("locks")
                .join(format!("rootfs-{dir_name}.lock")),
        )?;
        if target.is_dir() {
            return Ok(target);
        }
        let prefix = format!(".tmp-{dir_name}");
        // Holding this rootfs's lock, any other scratch dir for it is a dead unpack's.
        remove_abandoned_scratch(&rootfs_dir, &prefix);
        let scratch = ScratchDir::create(&rootfs_dir, &prefix)?;
        let fs_dir = scratch.path().join("fs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_dir)
            .ctx(|| format!("creating {}", fs_dir.display()))?;
        for layer in &env.layers {
            let file = File::open(layer).ctx(|| format!("opening layer {}", layer.display()))?;
            unpack_layer(layer_reader(layer, file)?, &fs_dir, uid_shift)?;
        }
        lchown(&fs_dir, Some(uid_shift), Some(uid_shift))
            .ctx(|| format!("changing owner of {}", fs_dir.display()))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("setting mode of {}", fs_dir.display()))?;
        // Flush the tree before it becomes visible, so that a crash cannot leave a rootfs in
        // place with files missing (it would never be unpacked again).
        let dir = File::open(&fs_dir).ctx(|| format!("opening {}", fs_dir.display()))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| Error::io(format!("syncing {}", fs_dir.display()), e.into()))?;
        fs::rename(&fs_dir, &target).ctx(|| format!("renaming {} into place", fs_dir.display()))?;
        oci::sync_dir(&rootfs_dir)?;
        Ok(target)
    }

    /// The environment's root filesystem as a read-only ext4 image for VMs, at
    /// `<root>/images/<manifest-hex>.ext4`, made once per digest from the uid-0 unpacked tree with
    /// `mkfs.ext4 -d` (no root or loop devices needed). It is written to a temporary file and
    /// renamed into place under a lock, so it exists complete or not at all. Every VM sandbox
    /// attaches the same file read-only, so creating a sandbox costs the same whatever its size.
    pub fn ext4_image(&self, env: &ResolvedEnv) -> Result<PathBuf> {
        let hex = oci::sha256_hex(&env.manifest_digest).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "malformed manifest digest {:?}",
                env.manifest_digest
            ))
        })?;
        let images = self.root.join("images");
        let target = images.join(format!("{hex}.ext4"));
        if target.is_file() {
            return Ok(target);
        }
        let _lock = lock_exclusive(&self.root.join("locks").join(format!("image-{hex}.lock")))?;
        if target.is_file() {
            return Ok(target);
        }
        let tree = self.rootfs(env, 0)?;
        fs::create_dir_all(&images).ctx(|| format!("creating {}", images.display()))?;
        // Holding the lock, any temporary image for this digest is a dead process's.
        for (path, name) in read_dir_names(&images)? {
            if name.starts_with(&format!(".tmp-{hex}")) {
                let _ = fs::remove_file(path);
            }
        }
        let tmp = images.join(format!(".tmp-{hex}-{}", unique_suffix()));
        let (bytes, entries) = tree_usage(&tree);
        let made = mkfs_ext4(Some(&tree), &tmp, image_size(bytes, entries), entries);
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // 0644 whatever the umask: a jailed Firecracker opens it as its own uid, through a bind
        // mount in its chroot, so only the file's own mode lets it in.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .ctx(|| format!("setting mode of {}", tmp.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, &target).ctx(|| format!("renaming {} into place", tmp.display()))?;
        oci::sync_dir(&images)?;
        // The uid-0 tree was only the image's source; don't keep the environment twice.
        self.remove_rootfs(hex, 0);
        Ok(target)
    }

    /// Removes one unpacked root filesystem (best effort, under its lock; renamed away first so
    /// it is never visible half deleted).
    fn remove_rootfs(&self, hex: &str, uid_shift: u32) {
        let name = format!("{hex}-u{uid_shift}");
        let rootfs_dir = self.root.join("rootfs");
        let Ok(_lock) =
            lock_exclusive(&self.root.join("locks").join(format!("rootfs-{name}.lock")))
        else {
            return;
        };
        let trash = rootfs_dir.join(format!(".trash-{}", unique_suffix()));
        if fs::rename(rootfs_dir.join(&name), &trash).is_ok() {
            let _ = fs::remove_dir_all(&trash);
        }
    }

    /// Removes what no current environment needs: index entries built from stale recipes (or
    /// whose manifest is unreadable), blobs no remaining entry references, unpacked root
    /// filesystems whose manifest digest is neither current nor in `keep` (the digests of live
    /// sandboxes, `sha256:<hex>`), scratch directories of dead builds and unpacks, and logs older
    /// than a week. Images added by other tools (without pyro's recipe annotation) are kept.
    pub fn prune(&self, keep: &[String]) -> Result<PruneResult> {
        let mut result = PruneResult::default();
        let layout = self.layout();
        let mut referenced_manifests: HashSet<String> = HashSet::new();
        if layout.dir().is_dir() {
            // Held throughout, so no build adds blobs that are not yet in the index.
            let _lock = layout.lock()?;
            let mut index = layout.read_index()?;
            let current: Vec<(String, String)> = catalog()
                .iter()
                .map(|r| (r.name().to_owned(), r.hash()))
                .collect();
            let mut referenced_blobs: HashSet<String> = HashSet::new();
            let before = index.manifests.len();
            index.manifests.retain(|entry| {
                let name = entry.annotation(ANN_REF_NAME).unwrap_or("<unnamed>");
                if let Some(hash) = entry.annotation(ANN_RECIPE_HASH) {
                    if !current.iter().any(|(n, h)| n == name && h == hash) {
                        result.removed.push(format!(
                            "index entry {name} {} (stale recipe)",
                            entry.digest
                        ));
                        return false;
                    }
                }
                match layout.read_manifest(entry) {
                    Ok(manifest) => {
                        referenced_blobs.insert(entry.digest.clone());
                        referenced_blobs.extend(manifest.blobs().map(|d| d.digest.clone()));
                        referenced_manifests.insert(entry.digest.clone());
                        true
                    }
                    Err(_) => {
                        result.removed.push(format!(
                            "index entry {name} {} (unreadable manifest)",
                            entry.digest
                        ));
                        false
                    }
                }
            });
            if index.manifests.len() != before {
                layout.write_index(&index)?;
            }
            let blobs = layout.blobs_dir();
            for (path, name) in read_dir_names(&blobs)? {
                let leftover = name.starts_with(".tmp-");
                let wanted = referenced_blobs.contains(&format!("sha256:{name}"));
                if leftover || !wanted {
                    self.remove(&path, &mut result)?;
                }
            }
            for (path, name) in read_dir_names(layout.dir())? {
                if name.starts_with(".tmp-") {
                    self.remove(&path, &mut result)?;
                }
            }
        }

        let keep_hex: HashSet<&str> = keep
            .iter()
            .chain(referenced_manifests.iter())
            .map(|d| oci::sha256_hex(d).unwrap_or(d.as_str()))
            .collect();
        let rootfs_dir = self.root.join("rootfs");
        for (path, name) in read_dir_names(&rootfs_dir)? {
            if name.starts_with(".tmp-") {
                if scratch_is_abandoned(&path)? {
                    self.remove(&path, &mut result)?;
                }
                continue;
            }
            if name.starts_with(".trash-") {
                // Left by a prune that died while deleting.
                self.remove(&path, &mut result)?;
                continue;
            }
            let Some((hex, _shift)) = name.split_once("-u") else {
                continue;
            };
            if oci::sha256_hex(&format!("sha256:{hex}")).is_none() || keep_hex.contains(hex) {
                continue;
            }
            let lock_path = self.root.join("locks").join(format!("rootfs-{name}.lock"));
            let Some(_lock) = try_lock_exclusive(&lock_path)? else {
                continue;
            };
            // Renamed away first, so a rootfs is never visible half deleted.
            let trash = rootfs_dir.join(format!(".trash-{}", unique_suffix()));
            fs::rename(&path, &trash).ctx(|| format!("moving {} away", path.display()))?;
            result.freed_bytes += tree_size(&trash);
            fs::remove_dir_all(&trash).ctx(|| format!("removing {}", trash.display()))?;
            result.removed.push(format!("rootfs/{name}"));
        }

        for (path, name) in read_dir_names(&self.root.join("images"))? {
            let Some(hex) = name.strip_suffix(".ext4") else {
                continue;
            };
            // Temporary images (`.tmp-*`) are cleared by the next maker, under the lock.
            if oci::sha256_hex(&format!("sha256:{hex}")).is_none() || keep_hex.contains(hex) {
                continue;
            }
            let lock_path = self.root.join("locks").join(format!("image-{hex}.lock"));
            let Some(_lock) = try_lock_exclusive(&lock_path)? else {
                continue;
            };
            // Running VMs keep their open file; the name goes now, the blocks when they stop.
            self.remove(&path, &mut result)?;
        }

        // VM initramfs images are remade on demand in milliseconds; ones unused for a day go
        // (a day, so that one a sandbox is about to boot is never taken from under it).
        for (path, name) in read_dir_names(&self.root.join("initramfs"))? {
            let old = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .map(|t| now_age(t) > Duration::from_secs(24 * 3600))
                .unwrap_or(false);
            if old && (name.ends_with(".cpio") || name.starts_with(".tmp-")) {
                self.remove(&path, &mut result)?;
            }
        }

        for (path, _) in read_dir_names(&self.root.join("tmp"))? {
            if scratch_is_abandoned(&path)? {
                self.remove(&path, &mut result)?;
            }
        }
        let now = SystemTime::now();
        for (path, name) in read_dir_names(&self.root.join("logs"))? {
            let old = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > LOG_MAX_AGE)
                .unwrap_or(false);
            if old && name.ends_with(".log") {
                self.remove(&path, &mut result)?;
            }
        }
        Ok(result)
    }

    /// Removes a file or tree, recording it in `result`.
    fn remove(&self, path: &Path, result: &mut PruneResult) -> Result<()> {
        let size = tree_size(path);
        let removed = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
        result.freed_bytes += size;
        let shown = path.strip_prefix(&self.root).unwrap_or(path);
        result.removed.push(shown.display().to_string());
        Ok(())
    }

    /// The catalog entry `recipe` with its state in `index`. An image whose manifest cannot be
    /// read still shows as installed, without size or build time; `resolve` reports the damage.
    fn info(&self, recipe: &Recipe, index: &Index) -> EnvInfo {
        let hash = recipe.hash();
        let named: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.annotation(ANN_REF_NAME) == Some(recipe.name()))
            .collect();
        let entry = named
            .iter()
            .rev()
            .find(|d| d.annotation(ANN_RECIPE_HASH) == Some(&hash))
            .or_else(|| named.last())
            .copied();
        let manifest = entry.and_then(|e| self.layout().read_manifest(e).ok());
        EnvInfo {
            name: recipe.name().to_owned(),
            kind: "catalog".to_owned(),
            source: entry.and_then(|e| e.annotation(registry::ANN_SOURCE).map(str::to_owned)),
            description: recipe.description().to_owned(),
            distribution: "debian".to_owned(),
            suite: recipe.suite().to_owned(),
            packages: recipe.packages().to_vec(),
            recipe_hash: hash.clone(),
            installed: entry.is_some(),
            stale: entry.is_some_and(|e| e.annotation(ANN_RECIPE_HASH) != Some(&hash)),
            digest: entry.map(|e| e.digest.clone()),
            size_bytes: entry
                .zip(manifest.as_ref())
                .map(|(e, m)| e.size + m.blobs().map(|d| d.size).sum::<u64>()),
            built_at: manifest
                .as_ref()
                .and_then(|m| m.annotations.get(ANN_CREATED).cloned()),
            oci_layout: self.layout().dir().to_path_buf(),
        }
    }
}

/// Whether an index entry is an image pulled by reference (not a catalog environment).
fn is_pulled_image(d: &Descriptor) -> bool {
    d.annotation(registry::ANN_SOURCE).is_some() && d.annotation(ANN_RECIPE_HASH).is_none()
}

impl EnvCache {
    /// A pulled image's entry with its state.
    fn image_info(&self, entry: &Descriptor) -> EnvInfo {
        let manifest = self.layout().read_manifest(entry).ok();
        let name = entry.annotation(ANN_REF_NAME).unwrap_or("").to_owned();
        EnvInfo {
            description: format!("OCI image {name}"),
            name,
            kind: "image".to_owned(),
            source: entry.annotation(registry::ANN_SOURCE).map(str::to_owned),
            distribution: String::new(),
            suite: String::new(),
            packages: Vec::new(),
            recipe_hash: String::new(),
            installed: true,
            stale: false,
            digest: Some(entry.digest.clone()),
            size_bytes: manifest
                .as_ref()
                .map(|m| entry.size + m.blobs().map(|d| d.size).sum::<u64>()),
            built_at: None,
            oci_layout: self.layout().dir().to_path_buf(),
        }
    }
}

/// A reader of a layer blob's tar stream, decompressing gzip or zstd (recognized by their
/// magic bytes, so the blob's content decides, not a label).
fn layer_reader(path: &Path, file: File) -> Result<Box<dyn io::Read>> {
    use io::BufRead;
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .ctx(|| format!("reading layer {}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(reader),
        )))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| Error::CorruptCache {
                path: path.to_path_buf(),
                message: format!("unreadable zstd layer: {e}"),
            })?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

/// An environment name as a file name component: `debian:12` becomes `debian-12`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub(crate) use pyro_api::ids::unique_suffix;

/// A held exclusive flock; released on drop (or when the process dies, however it dies).
#[derive(Debug)]
pub(crate) struct FileLock {
    _flock: Flock<File>,
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("opening lock {}", path.display()))
}

/// Takes an exclusive flock on `path` (created if missing), waiting as long as it takes.
pub(crate) fn lock_exclusive(path: &Path) -> Result<FileLock> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(flock) => return Ok(FileLock { _flock: flock }),
            Err((f, nix::errno::Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(Error::io(
                    format!("locking {}", path.display()),
                    errno.into(),
                ))
            }
        }
    }
}

/// Takes an exclusive flock on `path` if nobody holds it.
pub(crate) fn try_lock_exclusive(path: &Path) -> Result<Option<FileLock>> {
    let file = open_lock_file(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(flock) => Ok(Some(FileLock { _flock: flock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::io(
            format!("locking {}", path.display()),
            errno.into(),
        )),
    }
}

/// A scratch directory that exists while its owner runs: it holds `.lock` (flocked) and is
/// removed on drop. One whose lock is free belongs to a dead process, and prune removes it.
struct ScratchDir {
    path: PathBuf,
    _lock: FileLock,
}

impl ScratchDir {
    fn create(parent: &Path, prefix: &str) -> Result<ScratchDir> {
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        let path = parent.join(format!("{prefix}-{}", unique_suffix()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        match lock_exclusive(&path.join(".lock")) {
            Ok(lock) => Ok(ScratchDir { path, _lock: lock }),
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a failure leaves a directory with a free lock, which prune removes.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether `name` is a scratch dir made by `ScratchDir::create(_, prefix)`: the prefix, then
/// exactly the three numbers of [`unique_suffix`] (so `build-debian-12` does not match the dirs
/// of `build-debian-12-base`).
fn is_scratch_of(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Best effort: removes `prefix` scratch dirs under `parent` whose lock is free. Only called
/// while holding the lock that every creator of such dirs holds first, so a free lock means
/// the owner died, however young the directory is.
fn remove_abandoned_scratch(parent: &Path, prefix: &str) {
    let Ok(entries) = read_dir_names(parent) else {
        return;
    };
    for (path, name) in entries {
        if !is_scratch_of(&name, prefix) {
            continue;
        }
        let lock = path.join(".lock");
        let abandoned = !lock.exists() || matches!(try_lock_exclusive(&lock), Ok(Some(_)));
        if abandoned {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Whether a scratch directory's owner is gone: its lock is free and it is not brand new.
fn scratch_is_abandoned(path: &Path) -> Result<bool> {
    let age = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
        .unwrap_or_default();
    if age < TMP_MIN_AGE {
        return Ok(false);
    }
    let lock = path.join(".lock");
    if !lock.exists() {
        return Ok(true);
    }
    Ok(try_lock_exclusive(&lock)?.is_some())
}

/// The entries of a directory as (path, file name); a missing directory has none.
fn read_dir_names(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        names.push((
            entry.path(),
            entry.file_name().to_string_lossy().into_owned(),
        ));
    }
    names.sort();
    Ok(names)
}

/// How long ago `t` was.
fn now_age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// Space a tree needs on ext4: bytes rounded up to 4 KiB blocks, and the number of entries.
fn tree_usage(path: &Path) -> (u64, u64) {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>, acc: &mut (u64, u64)) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        acc.1 += 1;
        if !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        acc.0 += meta.len().div_ceil(4096) * 4096;
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(path) {
                for e in entries.flatten() {
                    walk(&e.path(), seen, acc);
                }
            }
        }
    }
    let mut acc = (0, 0);
    walk(path, &mut HashSet::new(), &mut acc);
    acc
}

/// The size of an image holding `bytes` in `entries` files: the content, the inode tables,
/// a tenth for metadata, and room for ext4's own structures. The file is sparse, so slack
/// costs no disk.
fn image_size(bytes: u64, entries: u64) -> u64 {
    let raw = bytes + entries * 256 + bytes / 10 + (64 << 20);
    raw.div_ceil(1 << 20) << 20
}

/// Finds `mkfs.ext4` (e2fsprogs), which lives in sbin directories that are not always on PATH.
pub fn find_mkfs_ext4() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Makes an ext4 filesystem of `size` bytes in the (new, sparse) file `image`, filled from `tree`
/// when given, with room for `entries` files (0: mkfs's default inode ratio). No journal: the environment image is read-only, and a sandbox's writable disk
/// does not outlive a crash of its VM. Lazy inode-table init keeps the file sparse and fast.
pub fn mkfs_ext4(tree: Option<&Path>, image: &Path, size: u64, entries: u64) -> Result<()> {
    let mkfs = find_mkfs_ext4().ok_or_else(|| {
        Error::io(
            "mkfs.ext4 not found (install e2fsprogs)".to_string(),
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    let f = File::create(image).ctx(|| format!("creating {}", image.display()))?;
    f.set_len(size)
        .ctx(|| format!("sizing {}", image.display()))?;
    drop(f);
    let mut cmd = std::process::Command::new(mkfs);
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"]);
    if entries > 0 {
        // Files of a known tree, with room for a few more; otherwise mkfs's default ratio.
        cmd.arg("-N")
            .arg((entries + entries / 5 + 4096).to_string());
    }
    cmd.args(["-O", "^has_journal,^resize_inode"])
        .args(["-E", "lazy_itable_init=1,nodiscard,root_owner=0:0"]);
    if let Some(tree) = tree {
        cmd.arg("-d").arg(tree);
    }
    let out = cmd
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .ctx(|| "running mkfs.ext4".into())?;
    if !out.status.success() {
        return Err(Error::io(
            format!(
                "mkfs.ext4 {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            io::Error::other("mkfs.ext4 failed"),
        ));
    }
    Ok(())
}

/// Bytes of regular file content under `path`, each inode counted once (hard links share).
fn tree_size(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return 0;
        };
        if meta.is_file() {
            return if seen.insert((meta.dev(), meta.ino())) {
                meta.len()
            } else {
                0
            };
        }
        if !meta.is_dir() {
            return 0;
        }
        let Ok(entries) = fs::read_dir(path) else {
            return 0;
        };
        entries.flatten().map(|e| walk(&e.path(), seen)).sum()
    }
    walk(path, &mut HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;
    use tar::{Builder, EntryType, Header};

    fn cache() -> (tempfile::TempDir, EnvCache) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = EnvCache::new(tmp.path().join("cache"));
        (tmp, cache)
    }

    /// Tests that chown need root; they say so and pass elsewhere.
    fn is_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipping: changing file owners needs root");
        }
        root
    }

    /// A tiny layer tar in `dir`, with `marker` as the content of `etc/marker`.
    fn fake_layer(dir: &Path, marker: &str) -> PathBuf {
        let mut builder = Builder::new(Vec::new());
        let mut add = |path: &str, kind: EntryType, mode: u32, data: &[u8], link: Option<&str>| {
            let mut header = Header::new_gnu();
            header.set_path(path).expect("path");
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            if let Some(link) = link {
                header.set_link_name(link).expect("link");
            }
            header.set_cksum();
            builder.append(&header, data).expect("append");
        };
        add("./", EntryType::Directory, 0o755, b"", None);
        add("./etc/", EntryType::Directory, 0o755, b"", None);
        add(
            "./etc/marker",
            EntryType::Regular,
            0o644,
            marker.as_bytes(),
            None,
        );
        add("./usr/bin/", EntryType::Directory, 0o755, b"", None);
        add("./usr/bin/sh", EntryType::Regular, 0o755, b"#!fake\n", None);
        add("./bin", EntryType::Symlink, 0o777, b"", Some("usr/bin"));
        add("./dev/null", EntryType::Char, 0o666, b"", None);
        let path = dir.join(format!("layer-{marker}.tar"));
        fs::write(&path, builder.into_inner().expect("finish")).expect("write layer");
        path
    }

    fn install(cache: &EnvCache, recipe: &Recipe, marker: &str) -> EnvInfo {
        let layer = fake_layer(cache.root().parent().expect("parent"), marker);
        let info = cache
            .install_layer(recipe, &layer, &mut |_| {})
            .expect("install");
        assert!(!layer.exists(), "the layer file is moved into the store");
        info
    }

    fn current(name: &str) -> Recipe {
        recipe::find(name).expect("in catalog")
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).expect("read")).expect("json")
    }

    fn set_mtime(path: &Path, ago: Duration) {
        let time = SystemTime::now() - ago;
        File::open(path)
            .and_then(|f| f.set_times(FileTimes::new().set_modified(time).set_accessed(time)))
            .expect("set mtime");
    }

    /// Adds an image as a pull would: blobs (one gzip and one zstd layer) and an index entry
    /// carrying `io.pyro.source`. Returns the manifest digest.
    fn install_pulled(cache: &EnvCache, name: &str, bottom: &str, top: &str) -> String {
        use std::io::Write as _;
        let dir = cache.root().parent().expect("parent");
        let base = fs::read(fake_layer(dir, bottom)).expect("layer");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&base).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let upper = fs::read(fake_layer(dir, top)).expect("layer");
        let zst = ruzstd::encoding::compress_to_vec(
            upper.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let layout = cache.layout();
        let _lock = layout.lock().expect("lock");
        let desc = |media: &str, bytes: &[u8]| {
            Descriptor::new(
                media,
                layout.write_blob(bytes).expect("blob"),
                bytes.len() as u64,
            )
        };
        let manifest = oci::Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_MANIFEST.into()),
            config: desc(oci::MEDIA_CONFIG, config),
            layers: vec![
                desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &gz),
                desc("application/vnd.oci.image.layer.v1.tar+zstd", &zst),
            ],
            annotations: Default::default(),
            extra: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("json");
        let mut entry = desc(oci::MEDIA_MANIFEST, &bytes);
        entry
            .annotations
            .insert(ANN_REF_NAME.into(), name.to_owned());
        entry
            .annotations
            .insert(registry::ANN_SOURCE.into(), name.to_owned());
        let mut index = layout.read_index().expect("index");
        index.manifests.push(entry.clone());
        layout.write_index(&index).expect("write index");
        entry.digest
    }

    #[test]
    fn pulled_images_list_resolve_unpack_and_survive_prune() {
        let (_tmp, cache) = cache();
        let name = "127.0.0.1:5000/team/tool:1";
        let digest = install_pulled(&cache, name, "bottom", "top");
        assert!(matches!(
            cache.resolve("127.0.0.1:5000/team/other:1"),
            Err(Error::ImageNotPulled(_))
        ));
        let list = cache.list().expect("list");
        assert_eq!(list.len(), 4);
        assert_eq!(list[3].name, name);
        assert_eq!(list[3].kind, "image");
        assert_eq!(list[3].source.as_deref(), Some(name));
        assert_eq!(list[3].digest.as_deref(), Some(digest.as_str()));
        assert_eq!(
            cache.inspect(name).expect("inspect").digest,
            Some(digest.clone())
        );

        let result = cache.prune(&[]).expect("prune");
        assert!(result.removed.is_empty(), "{:?}", result.removed);
        let resolved = cache.resolve(name).expect("resolve");
        assert_eq!(resolved.manifest_digest, digest);
        assert_eq!(resolved.layers.len(), 2);
        cache.verify(name).expect("blobs intact");

        if is_root() {
            let root = cache.rootfs(&resolved, 0).expect("rootfs");
            // The zstd layer on top of the gzip one.
            assert_eq!(
                fs::read_to_string(root.join("etc/marker")).expect("m"),
                "top"
            );
        }
    }

    #[test]
    fn install_then_resolve_list_and_layout_contents() {
        let (_tmp, cache) = cache();
        let recipe = current("debian:12");
        let info = install(&cache, &recipe, "one");
        assert!(info.installed && !info.stale);
        assert_eq!(info.recipe_hash, recipe.hash());
        assert_eq!(info.distribution, "debian");
        assert_eq!(info.oci_layout, cache.root().join("oci"));
        let built_at = info.built_at.clone().expect("built_at");
        assert!(
            built_at.len() == 20 && built_at.ends_with('Z') && built_at.starts_with("20"),
            "{built_at}"
        );

        let resolved = cache.resolve("debian:12").expect("resolve");
        assert_eq!(Some(&resolved.manifest_digest), info.digest.as_ref());
        assert_eq!(resolved.name, "debian:12");
        assert_eq!(resolved.layers.len(), 1);
        cache.verify("debian:12").expect("verify");

        let oci = cache.root().join("oci");
        assert_eq!(
            read_json(&oci.join("oci-layout"))["imageLayoutVersion"],
            "1.0.0"
        );
        let index = read_json(&oci.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let entries = index["manifests"].as_array().expect("manifests");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["digest"], resolved.manifest_digest.as_str());
        assert_eq!(entries[0]["mediaType"], oci::MEDIA_MANIFEST);
        assert_eq!(entries[0]["annotations"][ANN_REF_NAME], "debian:12");
        assert_eq!(
            entries[0]["annotations"][ANN_RECIPE_HASH],
            recipe.hash().as_str()
        );

        let blob = |digest: &str| {
            oci.join("blobs/sha256")
                .join(oci::sha256_hex(digest).expect("digest"))
        };
        let manifest = read_json(&blob(&resolved.manifest_digest));
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], oci::MEDIA_MANIFEST);
        assert_eq!(manifest["annotations"][ANN_REF_NAME], "debian:12");
        assert_eq!(manifest["annotations"][ANN_CREATED], built_at.as_str());
        assert_eq!(manifest["layers"][0]["mediaType"], oci::MEDIA_LAYER_TAR);
        let layer_digest = manifest["layers"][0]["digest"]
            .as_str()
            .expect("layer digest");
        assert_eq!(resolved.layers[0], blob(layer_digest));
        let config = read_json(&blob(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        ));
        assert_eq!(config["architecture"], host_arch());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(config["config"]["WorkingDir"], "/workspace");
        assert!(config["config"]["Env"][0]
            .as_str()
            .expect("env")
            .starts_with("PATH="));
        assert_eq!(
            config["config"]["Labels"]["io.pyro.environment"],
            "debian:12"
        );
        assert_eq!(
            config["config"]["Labels"][ANN_RECIPE_HASH],
            recipe.hash().as_str()
        );

        let size: u64 = [
            &resolved.manifest_digest,
            layer_digest,
            manifest["config"]["digest"].as_str().expect("c"),
        ]
        .iter()
        .map(|d| fs::metadata(blob(d)).expect("blob").len())
        .sum();
        assert_eq!(info.size_bytes, Some(size));

        let list = cache.list().expect("list");
        let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["debian:12", "debian:12-base", "debian:12-build"]);
        assert!(list[0].installed);
        assert!(!list[1].installed && list[1].digest.is_none() && list[1].size_bytes.is_none());
        assert_eq!(
            cache.inspect("debian:12").expect("inspect").digest,
            info.digest
        );
    }

    #[test]
    fn lookups_report_unknown_not_built_and_corrupt() {
        let (_tmp, cache) = cache();
        assert!(matches!(
            cache.resolve("nope"),
            Err(Error::UnknownEnvironment { .. })
        ));
        assert!(matches!(
            cache.inspect("nope"),
            Err(Error::UnknownEnvironment { .. })
        ));
        let not_built = cache.resolve("debian:12");
        assert!(matches!(not_built, Err(Error::EnvironmentNotBuilt(n)) if n == "debian:12"));
        assert_eq!(cache.list().expect("empty cache lists").len(), 3);

        install(&cache, &current("debian:12"), "one");
        assert!(matches!(
            cache.resolve("debian:12-base"),
            Err(Error::EnvironmentNotBuilt(_))
        ));
        let resolved = cache.resolve("debian:12").expect("resolve");

        // Same size, different bytes: resolve does not notice, verify does.
        let layer = &resolved.layers[0];
        let mut bytes = fs::read(layer).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(layer, &bytes).expect("tamper");
        cache
            .resolve("debian:12")
            .expect("resolve does not re-hash");
        assert_eq!(
            cache.verify("debian:12").expect_err("verify").kind(),
            "corrupt_cache"
        );

        fs::remove_file(layer).expect("remove");
        assert_eq!(
            cache.resolve("debian:12").expect_err("missing").kind(),
            "corrupt_cache"
        );
    }

    #[test]
    fn rebuild_replaces_index_entry_and_prune_drops_old_blobs() {
        let (_tmp, cache) = cache();
        let recipe = current("debian:12");
        install(&cache, &current("debian:12-base"), "base");
        let first = install(&cache, &recipe, "one");
        let first_layers = cache.resolve("debian:12").expect("resolve").layers;
        let second = install(&cache, &recipe, "two");
        assert_ne!(first.digest, second.digest);

        let index = cache.layout().read_index().expect("index");
        let names: Vec<_> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotation(ANN_REF_NAME))
            .collect();
        assert_eq!(names, ["debian:12-base", "debian:12"]);
        assert_eq!(Some(&index.manifests[1].digest), second.digest.as_ref());
        assert!(first_layers[0].exists(), "old blobs stay until prune");

        let result = cache.prune(&[]).expect("prune");
        assert!(!first_layers[0].exists());
        let first_hex = oci::sha256_hex(first.digest.as_deref().expect("d")).expect("hex");
        assert!(
            result.removed.iter().any(|r| r.ends_with(first_hex)),
            "{:?}",
            result.removed
        );
        // The old manifest, config and layer; the config differs because it records the layer.
        assert_eq!(result.removed.len(), 3, "{:?}", result.removed);
        assert!(result.freed_bytes > 0);
        cache.verify("debian:12").expect("current image intact");
        cache.verify("debian:12-base").expect("other image intact");
        assert!(cache.prune(&[]).expect("prune again").removed.is_empty());
    }

    #[test]
    fn stale_recipe_builds_are_listed_refused_and_pruned() {
        let (_tmp, cache) = cache();
        let old = Recipe::parse(&format!(
            "{}# an older revision\n",
            current("debian:12").text()
        ))
        .expect("parse");
        install(&cache, &old, "old");
        let info = cache.inspect("debian:12").expect("inspect");
        assert!(info.installed && info.stale, "{info:?}");
        assert!(matches!(
            cache.resolve("debian:12"),
            Err(Error::EnvironmentNotBuilt(_))
        ));

        let result = cache.prune(&[]).expect("prune");
        assert!(
            result
                .removed
                .iter()
                .any(|r| r.starts_with("index entry debian:12")),
            "{:?}",
            result.removed
        );
        assert_eq!(
            result.removed.len(),
            4,
            "entry plus three blobs: {:?}",
            result.removed
        );
        let info = cache.inspect("debian:12").expect("inspect");
        assert!(!info.installed && !info.stale);
        let blobs = fs::read_dir(cache.root().join("oci/blobs/sha256"))
            .expect("ls")
            .count();
        assert_eq!(blobs, 0);
    }

    #[test]
    fn build_returns_a_current_image_without_rebuilding() {
        let (_tmp, cache) = cache();
        let installed = install(&cache, &current("debian:12-base"), "base");
        let mut phases = Vec::new();
        let opts = BuildOptions {
            force: false,
            mirror: Some("http://unreachable.invalid/debian".into()),
        };
        let info = cache
            .build("debian:12-base", &opts, &mut |p| phases.push(p.to_owned()))
            .expect("build");
        assert_eq!(info.digest, installed.digest);
        assert_eq!(phases, ["debian:12-base is already built"]);
        assert!(matches!(
            cache.build("nope", &opts, &mut |_| {}),
            Err(Error::UnknownEnvironment { .. })
        ));
    }

    #[test]
    fn ext4_image_is_made_once_per_digest_and_its_source_tree_dropped() {
        if !is_root() || find_mkfs_ext4().is_none() {
            return;
        }
        let (_tmp, cache) = cache();
        install(&cache, &current("debian:12"), "img");
        let resolved = cache.resolve("debian:12").expect("resolve");
        let hex = oci::sha256_hex(&resolved.manifest_digest).expect("hex");
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (cache, resolved) = (cache.clone(), resolved.clone());
                std::thread::spawn(move || cache.ext4_image(&resolved))
            })
            .collect();
        let paths: Vec<PathBuf> = threads
            .into_iter()
            .map(|t| t.join().expect("join").expect("image"))
            .collect();
        let want = cache.root().join("images").join(format!("{hex}.ext4"));
        assert!(paths.iter().all(|p| *p == want));
        let bytes = fs::read(&want).expect("read image");
        // ext4 superblock magic 0xEF53 at offset 1024 + 56.
        assert_eq!(&bytes[1080..1082], &[0x53, 0xEF]);
        assert!(!cache
            .root()
            .join("rootfs")
            .join(format!("{hex}-u0"))
            .exists());
        let names: Vec<String> = read_dir_names(&cache.root().join("images"))
            .expect("list")
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(
            names,
            vec![format!("{hex}.ext4")],
            "no temporary images left"
        );
    }

    #[test]
    fn rootfs_is_unpacked_once_per_digest_and_shift() {
        if !is_root() {
            return;
        }
        let (_tmp, cache) = cache();
        install(&cache, &current("debian:12"), "one");
        let resolved = cache.resolve("debian:12").expect("resolve");
        let hex = oci::sha256_hex(&resolved.manifest_digest).expect("hex");

        let path = cache.rootfs(&resolved, 0).expect("rootfs");
        assert_eq!(path, cache.root().join("rootfs").join(format!("{hex}-u0")));
        assert_eq!(
            fs::read_to_string(path.join("etc/marker")).expect("marker"),
            "one"
        );
        assert!(!path.join("dev/null").exists());
        assert_eq!(
            fs::read_link(path.join("bin")).expect("bin"),
            Path::new("usr/bin")
        );
        // Not unpacked again: a change made after the first call survives the second.
        fs::write(path.join("probe"), b"x").expect("probe");
        assert_eq!(cache.rootfs(&resolved, 0).expect("again"), path);
        assert!(path.join("probe").exists());

        let shift = 100_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (cache, resolved) = (cache.clone(), resolved.clone());
                std::thread::spawn(move || cache.rootfs(&resolved, shift))
            })
            .collect();
        let paths: Vec<PathBuf> = threads
            .into_iter()
            .map(|t| t.join().expect("join").expect("rootfs"))
            .collect();
        assert!(paths.iter().all(|p| *p == paths[0]));
        let top = fs::metadata(&paths[0]).expect("top");
        assert_eq!(
            (top.uid(), top.gid(), top.mode() & 0o7777),
            (shift, shift, 0o755)
        );
        let sh = fs::metadata(paths[0].join("usr/bin/sh")).expect("sh");
        assert_eq!((sh.uid(), sh.mode() & 0o7777), (shift, 0o755));
        let names: Vec<String> = read_dir_names(&cache.root().join("rootfs"))
            .expect("ls")
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(names, [format!("{hex}-u0"), format!("{hex}-u{shift}")]);
        assert!(read_dir_names(&cache.root().join("tmp"))
            .expect("ls")
            .is_empty());

        let bogus = ResolvedEnv {
            manifest_digest: "sha256:../../x".into(),
            ..resolved
        };
        assert_eq!(
            cache.rootfs(&bogus, 0).expect_err("bogus").kind(),
            "invalid_request"
        );
    }

    #[test]
    fn prune_keeps_live_rootfs_and_clears_dead_scratch_and_old_logs() {
        if !is_root() {
            return;
        }
        let (_tmp, cache) = cache();
        let recipe = current("debian:12");
        install(&cache, &recipe, "one");
        let old = cache.resolve("debian:12").expect("resolve");
        let old_rootfs = cache.rootfs(&old, 0).expect("rootfs");
        install(&cache, &recipe, "two");
        let new_rootfs = cache
            .rootfs(&cache.resolve("debian:12").expect("resolve"), 0)
            .expect("rootfs");

        // A live sandbox still uses the old image: its rootfs stays, its blobs need not.
        cache
            .prune(std::slice::from_ref(&old.manifest_digest))
            .expect("prune");
        assert!(old_rootfs.is_dir() && new_rootfs.is_dir());
        assert!(!old.layers[0].exists());

        let dead = cache.root().join("tmp/build-debian-12-dead");
        fs::create_dir_all(&dead).expect("mkdir");
        fs::write(dead.join(".lock"), b"").expect("lock file");
        fs::write(dead.join("layer.tar"), vec![0u8; 1000]).expect("partial layer");
        set_mtime(&dead, Duration::from_secs(3600));
        let live = ScratchDir::create(&cache.root().join("tmp"), "build-live").expect("scratch");
        set_mtime(live.path(), Duration::from_secs(3600));
        let young_dead = cache.root().join("tmp/build-just-created");
        fs::create_dir_all(&young_dead).expect("mkdir");
        let dead_unpack = cache.root().join("rootfs/.tmp-abc-u0-1-2-3");
        fs::create_dir_all(dead_unpack.join("fs")).expect("mkdir");
        set_mtime(&dead_unpack, Duration::from_secs(3600));
        let logs = cache.root().join("logs");
        fs::create_dir_all(&logs).expect("mkdir");
        fs::write(logs.join("build-old.log"), b"old").expect("log");
        set_mtime(
            &logs.join("build-old.log"),
            Duration::from_secs(8 * 24 * 3600),
        );
        fs::write(logs.join("build-new.log"), b"new").expect("log");
        fs::write(cache.root().join("oci/blobs/sha256/.tmp-leftover"), b"x").expect("leftover");

        let result = cache.prune(&[]).expect("prune");
        assert!(
            !old_rootfs.exists() && new_rootfs.is_dir(),
            "{:?}",
            result.removed
        );
        assert!(!dead.exists() && !dead_unpack.exists());
        assert!(live.path().is_dir(), "a running build's scratch dir stays");
        assert!(
            young_dead.is_dir(),
            "a scratch dir younger than a minute stays"
        );
        assert!(!logs.join("build-old.log").exists() && logs.join("build-new.log").exists());
        assert!(!cache.root().join("oci/blobs/sha256/.tmp-leftover").exists());
        assert!(result.freed_bytes >= 1000);
        let old_hex = oci::sha256_hex(&old.manifest_digest).expect("hex");
        let expected = [
            "oci/blobs/sha256/.tmp-leftover".to_owned(),
            "rootfs/.tmp-abc-u0-1-2-3".to_owned(),
            format!("rootfs/{old_hex}-u0"),
            "tmp/build-debian-12-dead".to_owned(),
            "logs/build-old.log".to_owned(),
        ];
        assert_eq!(result.removed, expected);
        cache.verify("debian:12").expect("current image intact");
    }

    #[test]
    fn build_and_unpack_clear_their_own_dead_scratch_dirs() {
        let (_tmp, cache) = cache();
        let tmp_dir = cache.root().join("tmp");
        let dead = tmp_dir.join("build-debian-12-base-1-2-3");
        let other_env = tmp_dir.join("build-debian-12-build-1-2-3");
        fs::create_dir_all(&dead).expect("mkdir");
        fs::create_dir_all(&other_env).expect("mkdir");
        fs::write(dead.join(".lock"), b"").expect("lock");
        remove_abandoned_scratch(&tmp_dir, "build-debian-12-base");
        assert!(!dead.exists());
        assert!(
            other_env.exists(),
            "another environment's scratch dir is not touched"
        );
        remove_abandoned_scratch(&tmp_dir, "build-debian-12");
        assert!(other_env.exists(), "prefixes do not match longer names");

        let live = ScratchDir::create(&tmp_dir, "build-debian-12-base").expect("scratch");
        remove_abandoned_scratch(&tmp_dir, "build-debian-12-base");
        assert!(live.path().is_dir(), "a held scratch dir stays");
        let path = live.path().to_path_buf();
        drop(live);
        assert!(
            !path.exists(),
            "a scratch dir is removed when its owner is done"
        );
    }

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(sanitize("debian:12"), "debian-12");
        assert_eq!(sanitize("a/../b c"), "a-..-b-c");
        assert_ne!(unique_suffix(), unique_suffix());
    }
}
