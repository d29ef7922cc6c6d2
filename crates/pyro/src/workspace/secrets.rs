//! Workspace secrets: stored on the host in a 0700 directory of 0600 files (never in SQLite,
//! logs or history), installed in the guest on tmpfs at `/run/pyro-secrets/NAME` (0400), mapped
//! into one call with `--secret-env`, and redacted from everything pyro hands back.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::engine::Pyro;
use crate::error::{Error, IoContext, Result};
use crate::sandbox::Sandbox;

/// What replaces a secret value in output.
pub const REDACTED: &str = "[REDACTED]";

/// A secret value: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The value, for the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Checks a secret or environment variable name.
pub fn validate_secret_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid secret name {n:?} (letters, digits and _; not starting with a digit)"
        )))
    }
}

/// Replaces every occurrence of any secret in `bytes`, also across chunk boundaries when used
/// through [`StreamRedactor`].
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<Vec<u8>>,
}

impl Redactor {
    /// A redactor for these values (empty values are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::into_bytes)
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor { values }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Length of the longest secret.
    pub fn max_len(&self) -> usize {
        self.values.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The length of the secret that `input` starts with, if any (longest first).
    pub fn match_len(&self, input: &[u8]) -> Option<usize> {
        self.values
            .iter()
            .find(|v| input.starts_with(v))
            .map(Vec::len)
    }

    /// Redacts a complete byte string.
    pub fn bytes(&self, input: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return input.to_vec();
        }
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        'outer: while i < input.len() {
            for v in &self.values {
                if input[i..].starts_with(v) {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += v.len();
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    /// Redacts a string.
    pub fn text(&self, input: &str) -> String {
        if self.values.is_empty() {
            return input.to_string();
        }
        String::from_utf8_lossy(&self.bytes(input.as_bytes())).into_owned()
    }

    /// How many bytes at the end of `input` could be the start of a secret (and so must wait
    /// for more input before being shown).
    pub fn pending_suffix(&self, input: &[u8]) -> usize {
        let max = self.max_len().saturating_sub(1).min(input.len());
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &input[input.len() - k..];
                self.values
                    .iter()
                    .any(|v| v.len() > k && v.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// A redactor over a stream of chunks: holds back a possible secret prefix until the next chunk
/// shows whether it is one.
#[derive(Debug, Clone, Default)]
pub struct StreamRedactor {
    redactor: Redactor,
    held: Vec<u8>,
}

impl StreamRedactor {
    /// Wraps a redactor.
    pub fn new(redactor: Redactor) -> StreamRedactor {
        StreamRedactor {
            redactor,
            held: Vec::new(),
        }
    }

    /// Feeds a chunk; returns what is safe to show now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.redactor.is_empty() {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        let keep = self.redactor.pending_suffix(&self.held);
        let ready = self.held.len() - keep;
        let out = self.redactor.bytes(&self.held[..ready]);
        self.held.drain(..ready);
        out
    }

    /// Ends the stream; returns the rest.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.redactor.bytes(&self.held);
        self.held.clear();
        out
    }
}

impl Pyro {
    pub(crate) fn secrets_dir(&self, id: &str) -> PathBuf {
        self.inner.config.paths.home.join("secrets").join(id)
    }

    /// Stores a workspace's secrets on the host: a 0700 directory of 0600 files.
    pub(crate) fn store_secrets(&self, id: &str, secrets: &BTreeMap<String, Secret>) -> Result<()> {
        if secrets.is_empty() {
            return Ok(());
        }
        let root = self.inner.config.paths.home.join("secrets");
        for d in [&root, &self.secrets_dir(id)] {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .ctx(|| format!("chmod {}", d.display()))?;
        }
        for (name, value) in secrets {
            validate_secret_name(name)?;
            let p = self.secrets_dir(id).join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .ctx(|| "create secret file".into())?;
            std::io::Write::write_all(&mut f, value.expose().as_bytes())
                .ctx(|| "write secret file".into())?;
        }
        Ok(())
    }

    /// A workspace's secrets, by name.
    pub(crate) fn load_secrets(&self, id: &str) -> Result<BTreeMap<String, Secret>> {
        let mut out = BTreeMap::new();
        let dir = self.secrets_dir(id);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = std::fs::read_to_string(e.path()).ctx(|| "read a secret file".into())?;
            out.insert(name, Secret::new(v));
        }
        Ok(out)
    }

    /// Secret names of a workspace (values never leave the host store except into the guest).
    pub(crate) fn secret_names(&self, id: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.secrets_dir(id))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The redactor for a workspace.
    pub(crate) fn redactor(&self, id: &str) -> Result<Redactor> {
        Ok(Redactor::new(
            self.load_secrets(id)?.into_values().map(|s| s.0),
        ))
    }

    /// Installs the secrets in the guest (after create, start and reset).
    pub(crate) async fn install_secrets(&self, id: &str, sb: &Sandbox) -> Result<()> {
        let secrets = self.load_secrets(id)?;
        if secrets.is_empty() {
            return Ok(());
        }
        let map = secrets.into_iter().map(|(k, v)| (k, v.0)).collect();
        sb.client()
            .call(&pyro_protocol::Request::SecretsInstall { secrets: map })
            .await
            .map(|_| ())
    }

    /// Maps `--secret-env NAME[=VAR]` specs to environment variables for one call.
    pub(crate) fn secret_env(
        &self,
        id: &str,
        specs: &[String],
    ) -> Result<BTreeMap<String, String>> {
        if specs.is_empty() {
            return Ok(BTreeMap::new());
        }
        let secrets = self.load_secrets(id)?;
        let mut env = BTreeMap::new();
        for spec in specs {
            let (name, var) = spec.split_once('=').unwrap_or((spec, spec));
            let value = secrets.get(name).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "workspace {id} has no secret named {name:?} (it has: {})",
                    self.secret_names(id).join(", ")
                ))
            })?;
            validate_secret_name(var)?;
            if env.insert(var.to_string(), value.0.clone()).is_some() {
                return Err(Error::InvalidRequest(format!(
                    "environment variable {var} is mapped twice"
                )));
            }
        }
        Ok(env)
    }
}

/// Reads a secret from a host file (trailing newline kept as is).
pub fn secret_from_file(path: &Path) -> Result<Secret> {
    let v = std::fs::read_to_string(path).ctx(|| format!("read secret file {}", path.display()))?;
    if v.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_is_exact_and_survives_chunk_boundaries() {
        let r = Redactor::new(["hunter2".to_string(), "abc".to_string()]);
        assert_eq!(
            r.text("pw=hunter2; x=abcabc"),
            "pw=[REDACTED]; x=[REDACTED][REDACTED]"
        );
        let input = b"before hunter2 middle hunter2after ab";
        for split in 1..input.len() {
            let mut s = StreamRedactor::new(r.clone());
            let mut out = s.feed(&input[..split]);
            out.extend(s.feed(&input[split..]));
            out.extend(s.finish());
            assert_eq!(
                out,
                b"before [REDACTED] middle [REDACTED]after ab".to_vec(),
                "split at {split}"
            );
        }
        // Byte by byte.
        let mut s = StreamRedactor::new(r.clone());
        let mut out = Vec::new();
        for b in input {
            out.extend(s.feed(&[*b]));
        }
        out.extend(s.finish());
        assert_eq!(out, b"before [REDACTED] middle [REDACTED]after ab".to_vec());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s:?} {s}"), "[REDACTED] [REDACTED]");
    }
}
