//! Building an environment: mmdebstrap bootstraps the recipe into one tar, and the tar becomes
//! an uncompressed OCI layer with an image config and manifest, added to the layout's index.
//!
//! The layer is hashed while nothing is locked (it is a few hundred MB); blobs and the index entry
//! are then written together under the layout lock, so a build killed at any point leaves either
//! nothing or blobs that no entry references yet, which `prune` removes.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::oci::{
    self, Descriptor, ANN_CREATED, ANN_DESCRIPTION, ANN_RECIPE_HASH, ANN_REF_NAME,
    LABEL_ENVIRONMENT, MEDIA_CONFIG, MEDIA_LAYER_TAR, MEDIA_MANIFEST,
};
use super::{host_arch, EnvCache, EnvInfo, Recipe, BUILDER_VERSION};
use crate::error::{Error, IoContext, Result};

/// How many lines of the log a failed build quotes.
const LOG_TAIL_LINES: usize = 20;
/// How often the running build's log is checked for progress lines.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// `PATH` in the image config: Debian's default for root.
const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The mmdebstrap arguments for a recipe (without the program name).
pub(crate) fn mmdebstrap_args(
    recipe: &Recipe,
    mirror: Option<&str>,
    root: bool,
    layer: &Path,
) -> Vec<String> {
    let mut args = vec![format!("--variant={}", recipe.variant())];
    if !recipe.packages().is_empty() {
        args.push(format!("--include={}", recipe.packages().join(",")));
    }
    // Root mode needs no subordinate ids; unshare mode lets an unprivileged user build.
    args.push(format!("--mode={}", if root { "root" } else { "unshare" }));
    args.push("--format=tar".to_owned());
    args.push(recipe.suite().to_owned());
    args.push(layer.display().to_string());
    if let Some(mirror) = mirror {
        args.push(mirror.to_owned());
    }
    args
}

/// Runs mmdebstrap for `recipe`, writing the tar to `layer` and its output to `log`.
pub(crate) fn run_mmdebstrap(
    recipe: &Recipe,
    opts: &super::BuildOptions,
    layer: &Path,
    log: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let build_error = |message: String| Error::Build {
        name: recipe.name().to_owned(),
        message,
    };
    let mirror = opts
        .mirror
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    if let Some(m) = mirror {
        // A mirror that starts with '-' would be read as an option.
        if m.starts_with('-') {
            return Err(Error::InvalidRequest(format!(
                "invalid Debian mirror {m:?}"
            )));
        }
    }
    let root = nix::unistd::geteuid().is_root();
    let args = mmdebstrap_args(recipe, mirror, root, layer);

    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    let mut log_file = File::create(log).ctx(|| format!("creating {}", log.display()))?;
    writeln!(
        log_file,
        "# pyro env build {} (recipe {}, builder {BUILDER_VERSION})\n# mmdebstrap {}",
        recipe.name(),
        recipe.hash(),
        args.join(" ")
    )
    .ctx(|| format!("writing {}", log.display()))?;
    let stdout = log_file
        .try_clone()
        .ctx(|| format!("opening {}", log.display()))?;
    let stderr = log_file
        .try_clone()
        .ctx(|| format!("opening {}", log.display()))?;

    let mut command = Command::new("mmdebstrap");
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // mmdebstrap signals its whole process group when it fails (HUP, then TERM): in
        // pyro's group that killed pyro too, before it could report or clean up.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe. It makes mmdebstrap get SIGTERM (and clean up its chroot) if pyro dies.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    progress(&format!(
        "bootstrapping {} with mmdebstrap (log: {})",
        recipe.suite(),
        log.display()
    ));
    let mut child =
        match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(build_error(
                "mmdebstrap is not installed; install it (apt install mmdebstrap) and try again"
                    .to_owned(),
            )),
            Err(e) => return Err(build_error(format!("cannot start mmdebstrap: {e}"))),
        };

    // Forward mmdebstrap's "I: ..." phase lines as progress while it runs.
    let mut follower = LogFollower::open(log);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(build_error(format!("waiting for mmdebstrap: {e}"))),
        }
        follower.forward(progress);
        std::thread::sleep(POLL_INTERVAL);
    };
    follower.forward(progress);

    if !status.success() {
        return Err(build_error(format!(
            "mmdebstrap {}; last lines of {}:\n{}",
            describe(status),
            log.display(),
            log_tail(log, LOG_TAIL_LINES)
        )));
    }
    match fs::metadata(layer) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => Ok(()),
        _ => Err(build_error(format!(
            "mmdebstrap succeeded but wrote no tar at {}; see {}",
            layer.display(),
            log.display()
        ))),
    }
}

/// "exited with status N" or "was killed by signal N".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    }
}

/// The last `n` lines of a file, read from its end.
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads a growing log and hands its `I: ` lines to a progress callback.
struct LogFollower {
    file: Option<File>,
    partial: Vec<u8>,
}

impl LogFollower {
    fn open(path: &Path) -> LogFollower {
        // Progress is a nicety: if the log cannot be read, the build goes on without it.
        LogFollower {
            file: File::open(path).ok(),
            partial: Vec::new(),
        }
    }

    fn forward(&mut self, progress: &mut dyn FnMut(&str)) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.read_to_end(&mut self.partial).is_err() {
            return;
        }
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if let Some(phase) = line.strip_prefix("I: ") {
                progress(phase.trim());
            }
        }
    }
}

pub use pyro_api::ids::rfc3339;

impl EnvCache {
    /// Turns a layer tar into the current image of `recipe`: layer, config and manifest blobs,
    /// and an index entry replacing any earlier one of the same name. The tar file is moved
    /// into the blob store (consumed). `build` calls this after mmdebstrap; tests call it with a
    /// small hand-made tar.
    pub(crate) fn install_layer(
        &self,
        recipe: &Recipe,
        layer: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<EnvInfo> {
        let name = recipe.name();
        let hash = recipe.hash();
        progress("hashing layer");
        let (layer_digest, layer_size) = oci::hash_file(layer)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let created = rfc3339(now);
        let arch = host_arch();

        let mut created_by = format!("mmdebstrap --variant={}", recipe.variant());
        if !recipe.packages().is_empty() {
            created_by.push_str(&format!(" --include={}", recipe.packages().join(",")));
        }
        created_by.push_str(&format!(
            " {} (pyro builder {BUILDER_VERSION})",
            recipe.suite()
        ));
        let config = json!({
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": [IMAGE_PATH],
                "WorkingDir": "/workspace",
                "Labels": { LABEL_ENVIRONMENT: name, ANN_RECIPE_HASH: hash },
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created": created, "created_by": created_by }],
        });
        let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::Build {
            name: name.to_owned(),
            message: format!("cannot serialize image config: {e}"),
        })?;

        let mut manifest = oci::Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_MANIFEST.to_owned()),
            config: Descriptor::new(
                MEDIA_CONFIG,
                oci::digest_of(&config_bytes),
                config_bytes.len() as u64,
            ),
            layers: vec![Descriptor::new(
                MEDIA_LAYER_TAR,
                layer_digest.clone(),
                layer_size,
            )],
            annotations: Default::default(),
            extra: Default::default(),
        };
        for (key, value) in [
            (ANN_REF_NAME, name),
            (ANN_CREATED, created.as_str()),
            (ANN_DESCRIPTION, recipe.description()),
            (ANN_RECIPE_HASH, hash.as_str()),
        ] {
            manifest
                .annotations
                .insert(key.to_owned(), value.to_owned());
        }
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Build {
            name: name.to_owned(),
            message: format!("cannot serialize image manifest: {e}"),
        })?;

        let layout = self.layout();
        let _lock = layout.lock()?;
        progress("writing layer blob");
        layout.adopt_blob(layer, &layer_digest)?;
        progress("writing OCI manifest");
        layout.write_blob(&config_bytes)?;
        let manifest_digest = layout.write_blob(&manifest_bytes)?;

        progress("updating OCI index");
        let mut entry =
            Descriptor::new(MEDIA_MANIFEST, manifest_digest, manifest_bytes.len() as u64);
        entry
            .annotations
            .insert(ANN_REF_NAME.to_owned(), name.to_owned());
        entry
            .annotations
            .insert(ANN_RECIPE_HASH.to_owned(), hash.clone());
        entry.platform = Some(json!({ "architecture": arch, "os": "linux" }));
        let mut index = layout.read_index()?;
        index
            .manifests
            .retain(|d| d.annotation(ANN_REF_NAME) != Some(name));
        index.manifests.push(entry);
        layout.write_index(&index)?;
        Ok(self.info(recipe, &index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn mmdebstrap_command_line() {
        let recipe = super::super::recipe::find("debian:12").expect("in catalog");
        let layer = Path::new("/c/tmp/x/layer.tar");
        assert_eq!(
            mmdebstrap_args(&recipe, None, true, layer),
            [
                "--variant=minbase",
                "--include=git,ca-certificates,python3",
                "--mode=root",
                "--format=tar",
                "bookworm",
                "/c/tmp/x/layer.tar"
            ]
        );
        let base = super::super::recipe::find("debian:12-base").expect("in catalog");
        assert_eq!(
            mmdebstrap_args(&base, Some("http://mirror.example/debian"), false, layer),
            [
                "--variant=minbase",
                "--mode=unshare",
                "--format=tar",
                "bookworm",
                "/c/tmp/x/layer.tar",
                "http://mirror.example/debian"
            ]
        );
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, text).expect("write");
        let tail = log_tail(&log, 3);
        assert_eq!(tail, "line 48\nline 49\nline 50");
        assert_eq!(log_tail(&tmp.path().join("missing"), 3), "");
    }
}
