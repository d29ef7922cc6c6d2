//! What an environment's image config says about how commands run in it: `Env`, `WorkingDir`
//! and `User` (from the config's `config` object). `Entrypoint` and `Cmd` are not used: pyro
//! always runs the command it is given, with `sh -lc`.
//!
//! The config blob is part of the image, content-addressed and checked at pull; these values are
//! read from it whenever the environment is resolved, and validated here both at pull (so a bad
//! image is refused before anything is installed) and at resolve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most bytes of `Env` (names and values) accepted: every exec request carries it, and a frame
/// holds at most 1 MiB.
const MAX_ENV_BYTES: usize = 256 << 10;
/// Most `Env` entries accepted.
const MAX_ENV_VARS: usize = 1024;
/// Longest `WorkingDir` accepted.
const MAX_WORKING_DIR: usize = 4096;
/// Longest `User` accepted.
const MAX_USER: usize = 256;

/// How commands run in an environment, from its image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Env`: variables every command starts with; the caller's own variables win.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `WorkingDir`: the working directory of one-shot commands when the caller names none
    /// (workspaces keep `/workspace`, where their files are).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User` (`user`, `uid`, `user:group` or `uid:gid`): who commands run as, resolved in the
    /// sandbox's own `/etc/passwd` and `/etc/group`; `None` is root.
    #[serde(default)]
    pub user: Option<String>,
}

/// The parts of an image config read here; everything else is ignored.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

impl ImageDefaults {
    /// Reads and validates the defaults in an image config's JSON. The message of an error says
    /// what is wrong with the image.
    pub(crate) fn from_config(bytes: &[u8]) -> Result<ImageDefaults, String> {
        let file: ConfigFile =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable image config: {e}"))?;
        let Some(config) = file.config else {
            return Ok(ImageDefaults::default());
        };
        let mut defaults = ImageDefaults::default();
        let entries = config.env.unwrap_or_default();
        if entries.len() > MAX_ENV_VARS {
            return Err(format!(
                "the image config sets {} environment variables, more than pyro accepts ({MAX_ENV_VARS})",
                entries.len()
            ));
        }
        let mut bytes = 0;
        for entry in entries {
            // An entry without `=` names a variable without setting it; nothing to carry.
            let Some((name, value)) = entry.split_once('=') else {
                continue;
            };
            if name.is_empty() || name.contains('\0') || value.contains('\0') {
                return Err(format!(
                    "the image config's Env has an invalid entry {:?}",
                    truncate(&entry)
                ));
            }
            bytes += entry.len();
            // Later entries win, as in a container runtime.
            defaults.env.insert(name.to_owned(), value.to_owned());
        }
        if bytes > MAX_ENV_BYTES {
            return Err(format!(
                "the image config's Env is {bytes} bytes, more than pyro accepts ({MAX_ENV_BYTES})"
            ));
        }
        if let Some(dir) = config.working_dir.filter(|d| !d.is_empty()) {
            if !dir.starts_with('/') || dir.contains('\0') || dir.len() > MAX_WORKING_DIR {
                return Err(format!(
                    "the image config's WorkingDir {:?} is not an absolute path",
                    truncate(&dir)
                ));
            }
            defaults.working_dir = Some(dir);
        }
        if let Some(user) = config.user.filter(|u| !u.trim().is_empty()) {
            let user = user.trim().to_owned();
            let well_formed = user.len() <= MAX_USER
                && !user.chars().any(|c| c.is_whitespace() || c.is_control())
                && match user.split_once(':') {
                    Some((u, g)) => !u.is_empty() && !g.is_empty() && !g.contains(':'),
                    None => true,
                };
            if !well_formed {
                return Err(format!(
                    "the image config's User {:?} is not user[:group]",
                    truncate(&user)
                ));
            }
            defaults.user = Some(user);
        }
        Ok(defaults)
    }
}

/// At most 80 characters of something quoted in an error.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(config: serde_json::Value) -> Result<ImageDefaults, String> {
        ImageDefaults::from_config(&serde_json::to_vec(&config).expect("json"))
    }

    #[test]
    fn env_working_dir_and_user_are_read() {
        let d = parse(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin", "A=1=2", "EMPTY=", "NOVALUE", "A=3"],
                "WorkingDir": "/srv/app",
                "User": "app:staff",
                "Entrypoint": ["/bin/false"],
                "Cmd": ["ignored"],
            },
        }))
        .expect("parse");
        assert_eq!(
            d.env.get("PATH").map(String::as_str),
            Some("/usr/local/bin:/usr/bin")
        );
        assert_eq!(d.env.get("A").map(String::as_str), Some("3"));
        assert_eq!(d.env.get("EMPTY").map(String::as_str), Some(""));
        assert!(!d.env.contains_key("NOVALUE"));
        assert_eq!(d.working_dir.as_deref(), Some("/srv/app"));
        assert_eq!(d.user.as_deref(), Some("app:staff"));
    }

    #[test]
    fn missing_or_empty_values_are_defaults() {
        assert_eq!(parse(serde_json::json!({})), Ok(ImageDefaults::default()));
        assert_eq!(
            parse(serde_json::json!({"config": null})),
            Ok(ImageDefaults::default())
        );
        assert_eq!(
            parse(serde_json::json!({"config": {"Env": null, "WorkingDir": "", "User": ""}})),
            Ok(ImageDefaults::default())
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for config in [
            serde_json::json!({"config": {"Env": ["=x"]}}),
            serde_json::json!({"config": {"Env": ["A=\u{0}"]}}),
            serde_json::json!({"config": {"Env": [format!("A={}", "x".repeat(MAX_ENV_BYTES))]}}),
            serde_json::json!({"config": {"WorkingDir": "relative/dir"}}),
            serde_json::json!({"config": {"User": "a b"}}),
            serde_json::json!({"config": {"User": "a:"}}),
            serde_json::json!({"config": {"User": "a:b:c"}}),
            serde_json::json!({"config": {"Env": "not a list"}}),
        ] {
            assert!(parse(config.clone()).is_err(), "{config}");
        }
        assert!(ImageDefaults::from_config(b"{not json").is_err());
    }
}
