//! The OCI image layout under `<cache>/oci/`: the `oci-layout` marker, `index.json` and
//! content-addressed blobs under `blobs/sha256/`.
//!
//! Every write is a temp file in the destination directory, fsynced and renamed into place, so a
//! reader (or a crash) never sees a half-written blob or index. Writers hold the exclusive flock
//! on `oci/.lock` while they add blobs and change the index, which is also what keeps `prune` from
//! deleting blobs that a build has written but not yet indexed. Readers take no lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{lock_exclusive, unique_suffix, FileLock};
use crate::error::{Error, IoContext, Result};

/// Media type of an image index.
pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an image manifest.
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an image config.
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer, the only kind pyro writes.
pub(crate) const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Standard annotation: the image's name in the layout (pyro uses the environment name).
pub(crate) const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Standard annotation: creation time, RFC 3339.
pub(crate) const ANN_CREATED: &str = "org.opencontainers.image.created";
/// Standard annotation: human-readable description.
pub(crate) const ANN_DESCRIPTION: &str = "org.opencontainers.image.description";
/// pyro's annotation (and config label): the recipe hash the image was built from.
pub(crate) const ANN_RECIPE_HASH: &str = "io.pyro.recipe-hash";
/// pyro's config label: the environment name.
pub(crate) const LABEL_ENVIRONMENT: &str = "io.pyro.environment";

/// Manifests are small; anything bigger than this is not one, and is not read into memory.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// An OCI content descriptor. Fields pyro does not use are kept in `extra`, so rewriting
/// `index.json` does not drop what other tools put there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Descriptor {
    /// A descriptor with no annotations.
    pub fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            extra: serde_json::Map::new(),
        }
    }

    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_INDEX.to_owned()),
            manifests: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Manifest {
    /// Every blob the manifest references, config first.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// The hex part of a `sha256:<64 lowercase hex>` digest, or `None` for anything else. Digests
/// come from files on disk and become path components, so nothing else may pass.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(hex)
}

/// `sha256:<hex>` of some bytes.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` and size of a file, read in chunks so a large layer never sits in memory.
pub(crate) fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// fsyncs a directory, so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", unique_suffix()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .ctx(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", tmp.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub(crate) struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// The layout at `dir` (not created until [`OciLayout::lock`]).
    pub fn new(dir: PathBuf) -> OciLayout {
        OciLayout { dir }
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `blobs/sha256/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// Where the blob with this digest lives; a malformed digest is a corrupt cache.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = sha256_hex(digest).ok_or_else(|| Error::CorruptCache {
            path: self.index_path(),
            message: format!("malformed or unsupported digest {digest:?}"),
        })?;
        Ok(self.blobs_dir().join(hex))
    }

    /// Takes the layout's exclusive lock, creating the layout first if needed; the marker file
    /// and an empty index are written under the lock so two first builds do not race on them.
    pub fn lock(&self) -> Result<FileLock> {
        let blobs = self.blobs_dir();
        fs::create_dir_all(&blobs).ctx(|| format!("creating {}", blobs.display()))?;
        let lock = lock_exclusive(&self.dir.join(".lock"))?;
        let marker = self.dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !self.index_path().exists() {
            self.write_index(&Index::default())?;
        }
        Ok(lock)
    }

    /// Reads `index.json`; a layout that does not exist yet reads as an empty index.
    pub fn read_index(&self) -> Result<Index> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptCache {
            path,
            message: format!("unreadable index: {e}"),
        })
    }

    /// Replaces `index.json` atomically. The caller holds [`OciLayout::lock`].
    pub fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| Error::CorruptCache {
            path: self.index_path(),
            message: format!("cannot serialize index: {e}"),
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Reads a manifest blob, checking its size and digest (cheap for a few KiB, and it means a
    /// manifest that parses is the one the index points at).
    pub fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest> {
        let path = self.blob_path(&desc.digest)?;
        let corrupt = |message: String| Error::CorruptCache {
            path: path.clone(),
            message,
        };
        if desc.size > MAX_MANIFEST_BYTES {
            return Err(corrupt(format!(
                "manifest size {} is implausibly large",
                desc.size
            )));
        }
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(file) => file
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut bytes)
                .ctx(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt("manifest blob is missing".into()))
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        if bytes.len() as u64 != desc.size || digest_of(&bytes) != desc.digest {
            return Err(corrupt(format!(
                "manifest does not match its digest {}",
                desc.digest
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("unreadable manifest: {e}")))
    }

    /// Reads a small blob (an image config), checking its size (at most `max` bytes) and
    /// digest.
    pub fn read_small_blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(&desc.digest)?;
        let corrupt = |message: String| Error::CorruptCache {
            path: path.clone(),
            message,
        };
        if desc.size > max {
            return Err(corrupt(format!(
                "blob size {} is more than the {max} bytes accepted",
                desc.size
            )));
        }
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(file) => file
                .take(max + 1)
                .read_to_end(&mut bytes)
                .ctx(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt("blob is missing".into()))
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        if bytes.len() as u64 != desc.size || digest_of(&bytes) != desc.digest {
            return Err(corrupt(format!(
                "blob does not match its digest {}",
                desc.digest
            )));
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob and returns its digest. The caller holds [`OciLayout::lock`].
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Moves an already hashed file into the blob store under `digest`, fsyncing it first. The
    /// file is consumed. The caller holds [`OciLayout::lock`].
    pub fn adopt_blob(&self, file: &Path, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            // Same digest, same content: keep the blob that is there.
            return fs::remove_file(file).ctx(|| format!("removing {}", file.display()));
        }
        File::open(file)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", file.display()))?;
        let blobs = self.blobs_dir();
        match fs::rename(file, &path) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // The cache is spread over filesystems (a symlinked oci/): copy into a temp file
                // beside the blobs, then rename as usual.
                let tmp = blobs.join(format!(".tmp-blob-{}", unique_suffix()));
                let copied = (|| {
                    fs::copy(file, &tmp).ctx(|| format!("copying {}", file.display()))?;
                    File::open(&tmp)
                        .and_then(|f| f.sync_all())
                        .ctx(|| format!("syncing {}", tmp.display()))?;
                    fs::rename(&tmp, &path).ctx(|| format!("renaming {}", tmp.display()))
                })();
                if copied.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                copied?;
                fs::remove_file(file).ctx(|| format!("removing {}", file.display()))?;
            }
            Err(e) => {
                return Err(Error::io(
                    format!("moving {} into the blob store", file.display()),
                    e,
                ))
            }
        }
        sync_dir(&blobs)
    }

    /// Re-hashes one blob and compares digest and size.
    pub fn verify_blob(&self, desc: &Descriptor) -> Result<()> {
        let path = self.blob_path(&desc.digest)?;
        if !path.is_file() {
            return Err(Error::CorruptCache {
                path,
                message: "blob is missing".into(),
            });
        }
        let (digest, size) = hash_file(&path)?;
        if digest != desc.digest || size != desc.size {
            return Err(Error::CorruptCache {
                path,
                message: format!(
                    "blob content is {digest} ({size} bytes), expected {} ({} bytes)",
                    desc.digest, desc.size
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_becoming_paths() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        for bad in [
            "sha256:".to_owned(),
            format!("sha512:{hex}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:../../{}", "a".repeat(58)),
            format!("sha256:{hex}0"),
        ] {
            assert_eq!(sha256_hex(&bad), None, "{bad}");
        }
        let layout = OciLayout::new(PathBuf::from("/nonexistent"));
        let err = layout.blob_path("sha256:../x").expect_err("refused");
        assert_eq!(err.kind(), "corrupt_cache");
    }

    #[test]
    fn blobs_and_index_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::new(tmp.path().join("oci"));
        assert_eq!(
            layout.read_index().expect("missing index is empty"),
            Index::default()
        );

        let lock = layout.lock().expect("lock");
        assert!(layout.dir().join("oci-layout").is_file());
        let digest = layout.write_blob(b"hello").expect("write");
        assert_eq!(digest, digest_of(b"hello"));
        assert_eq!(
            fs::read(layout.blob_path(&digest).expect("path")).expect("read"),
            b"hello"
        );
        // Writing the same content again is a no-op.
        assert_eq!(layout.write_blob(b"hello").expect("rewrite"), digest);

        let big = tmp.path().join("big");
        fs::write(&big, vec![7u8; 3 << 20]).expect("write big");
        let (big_digest, big_size) = hash_file(&big).expect("hash");
        assert_eq!(big_size, 3 << 20);
        assert_eq!(big_digest, digest_of(&vec![7u8; 3 << 20]));
        layout.adopt_blob(&big, &big_digest).expect("adopt");
        assert!(!big.exists(), "adopted file is moved, not copied");
        layout
            .verify_blob(&Descriptor::new(
                MEDIA_LAYER_TAR,
                big_digest.clone(),
                big_size,
            ))
            .expect("verify");

        let mut index = Index::default();
        let mut desc = Descriptor::new(MEDIA_MANIFEST, digest.clone(), 5);
        desc.annotations.insert(ANN_REF_NAME.into(), "x".into());
        desc.extra
            .insert("artifactType".into(), Value::String("kept".into()));
        index.manifests.push(desc);
        layout.write_index(&index).expect("write index");
        drop(lock);
        assert_eq!(layout.read_index().expect("read index"), index);
        let text = fs::read_to_string(layout.dir().join("index.json")).expect("read");
        assert!(text.contains("\"artifactType\": \"kept\""), "{text}");
        assert!(text.contains("\"mediaType\": \"application/vnd.oci.image.index.v1+json\""));

        // A manifest whose bytes do not match the descriptor is refused.
        let err = layout
            .read_manifest(&Descriptor::new(MEDIA_MANIFEST, digest, 4))
            .expect_err("size mismatch");
        assert_eq!(err.kind(), "corrupt_cache");
        fs::write(layout.blob_path(&big_digest).expect("path"), b"tampered").expect("tamper");
        let err = layout
            .verify_blob(&Descriptor::new(MEDIA_LAYER_TAR, big_digest, big_size))
            .expect_err("tampered");
        assert_eq!(err.kind(), "corrupt_cache");
    }

    #[test]
    fn unreadable_index_is_corrupt_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::new(tmp.path().to_path_buf());
        fs::write(tmp.path().join("index.json"), b"{not json").expect("write");
        assert_eq!(
            layout.read_index().expect_err("corrupt").kind(),
            "corrupt_cache"
        );
    }
}
