//! The user's defaults, set once: `~/.config/pyro/config.toml` (XDG), or `$PYRO_CONFIG`.
//!
//! Precedence, for every setting: an explicit flag or parameter, then the environment variable
//! (where there is one), then this file, then the built-in default. A file that cannot be read
//! or holds an unknown key or a bad value is an error naming the file, never silently ignored:
//! a typo must not quietly choose a weaker isolation level.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::isolation::Isolation;

/// The keys the file may hold, for messages and `pyro config set`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "isolation",
        "default isolation level: microvm, vm-emulated or container",
    ),
    (
        "vcpu_count",
        "default virtual CPUs for runs, workspaces and VMs",
    ),
    (
        "mem_mib",
        "default memory in MiB for runs, workspaces and VMs",
    ),
    (
        "timeout_seconds",
        "default seconds before a command is killed (run and exec)",
    ),
];

/// What the file sets; `None` leaves the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The default isolation level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Default virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u32>,
    /// Default memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// Default command timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The environment variable.
    Environment,
    /// The config file.
    ConfigFile,
    /// pyro's built-in default.
    BuiltIn,
}

/// The config file's path: `$PYRO_CONFIG`, else `$XDG_CONFIG_HOME/pyro/config.toml`, else
/// `~/.config/pyro/config.toml`.
pub fn path() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = crate::paths::var_path(crate::paths::Var::Config) {
        return p;
    }
    let base = var("XDG_CONFIG_HOME").unwrap_or_else(|| crate::paths::home_dir().join(".config"));
    base.join("pyro/config.toml")
}

/// Reads the file at `path`; a missing file is an empty config.
pub fn load_from(path: &Path) -> Result<UserConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserConfig::default()),
        Err(e) => return Err(invalid(path, &format!("cannot read it: {e}"))),
    };
    let cfg: UserConfig =
        toml::from_str(&text).map_err(|e| invalid(path, e.message().trim_end()))?;
    cfg.validate().map_err(|m| invalid(path, &m))?;
    Ok(cfg)
}

/// The config of this process, read once (the file is read when first needed, so a process
/// that never asks for a default never fails on it).
pub fn get() -> Result<&'static UserConfig> {
    static CONFIG: OnceLock<std::result::Result<UserConfig, String>> = OnceLock::new();
    let path = path();
    let loaded = || {
        load_from(&path).map_err(|e| match e {
            Error::InvalidConfig { message, .. } => message,
            other => other.to_string(),
        })
    };
    match CONFIG.get_or_init(loaded) {
        Ok(c) => Ok(c),
        Err(message) => Err(Error::InvalidConfig {
            source_name: path.display().to_string(),
            message: message.clone(),
        }),
    }
}

fn invalid(path: &Path, message: &str) -> Error {
    Error::InvalidConfig {
        source_name: path.display().to_string(),
        message: message.to_owned(),
    }
}

impl UserConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.vcpu_count == Some(0) {
            return Err("vcpu_count must be at least 1".into());
        }
        if self.mem_mib.is_some_and(|m| m < 128) {
            return Err("mem_mib must be at least 128".into());
        }
        if self.timeout_seconds == Some(0) {
            return Err("timeout_seconds must be at least 1".into());
        }
        Ok(())
    }
}

/// Sets (`Some`) or removes (`None`) one key in the file at `path`, keeping its other keys, and
/// returns what the file then says. Works on a file whose values are wrong (that is how one is
/// fixed), but refuses to write a result that would still not load.
pub fn edit(path: &Path, key: &str, value: Option<&str>) -> Result<UserConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(invalid(path, &format!("cannot read it: {e}"))),
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(path, e.message().trim_end()))?;
    match value {
        Some(v) => {
            let v = typed_value(key, v).map_err(|m| invalid(path, &m))?;
            table.insert(key.to_owned(), v);
        }
        None if table.remove(key).is_some() => {}
        None if KEYS.iter().any(|(k, _)| *k == key) => {}
        None => return Err(invalid(path, &unknown_key(key))),
    }
    let cfg: UserConfig = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| invalid(path, e.message().trim_end()))?;
    cfg.validate().map_err(|m| invalid(path, &m))?;
    let io = |what: &str, e: std::io::Error| invalid(path, &format!("cannot {what}: {e}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create its directory", e))?;
    }
    let body = toml::to_string(&table).map_err(|e| invalid(path, &e.to_string()))?;
    let tmp = path.with_extension(format!("toml.tmp-{}", std::process::id()));
    let header =
        "# pyro's defaults (`pyro config --help`); flags and PYRO_* variables override them.\n";
    std::fs::write(&tmp, format!("{header}{body}")).map_err(|e| io("write it", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replace it", e))?;
    Ok(cfg)
}

/// A key's value from its text form, checked.
fn typed_value(key: &str, value: &str) -> std::result::Result<toml::Value, String> {
    let number = || {
        value
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(toml::Value::Integer)
            .ok_or_else(|| format!("{key} takes a positive whole number, not {value:?}"))
    };
    match key {
        "isolation" => {
            let level: Isolation = value.parse().map_err(|e: Error| e.to_string())?;
            Ok(toml::Value::String(level.as_str().to_owned()))
        }
        "vcpu_count" | "mem_mib" | "timeout_seconds" => number(),
        _ => Err(unknown_key(key)),
    }
}

fn unknown_key(key: &str) -> String {
    let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    format!("unknown key {key:?} (valid keys: {})", keys.join(", "))
}

/// The default isolation level and where it came from: `$PYRO_ISOLATION`, else the config
/// file's `isolation`, else `microvm`.
pub fn default_isolation() -> Result<(Isolation, Source)> {
    let var = crate::paths::Var::Isolation;
    match crate::paths::var(var) {
        Some(v) => {
            let level = v.parse().map_err(|e: Error| Error::InvalidConfig {
                source_name: var.name().into(),
                message: e.to_string(),
            })?;
            Ok((level, Source::Environment))
        }
        None => Ok(match get()?.isolation {
            Some(level) => (level, Source::ConfigFile),
            None => (Isolation::Microvm, Source::BuiltIn),
        }),
    }
}

pub use crate::limits::builtin;

/// Default virtual CPUs: the config file's, else [`builtin::VCPUS`].
pub fn default_vcpus() -> Result<u32> {
    Ok(get()?.vcpu_count.unwrap_or(builtin::VCPUS))
}

/// Default memory in MiB: the config file's, else [`builtin::MEM_MIB`].
pub fn default_mem_mib() -> Result<u64> {
    Ok(get()?.mem_mib.unwrap_or(builtin::MEM_MIB))
}

/// Default command timeout in seconds: the config file's, else [`builtin::TIMEOUT_S`].
pub fn default_timeout_s() -> Result<u64> {
    Ok(get()?.timeout_seconds.unwrap_or(builtin::TIMEOUT_S))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_sets_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pyro/config.toml");
        assert_eq!(load_from(&p).unwrap(), UserConfig::default());
        let back = edit(&p, "isolation", Some("container")).unwrap();
        assert_eq!(back.isolation, Some(Isolation::Container));
        edit(&p, "mem_mib", Some("2048")).unwrap();
        let back = load_from(&p).unwrap();
        assert_eq!(back.isolation, Some(Isolation::Container));
        assert_eq!(back.mem_mib, Some(2048));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(edit(&p, "isolation", Some("vm"))
            .unwrap_err()
            .to_string()
            .contains("unknown isolation level"));
        assert!(edit(&p, "colour", Some("red"))
            .unwrap_err()
            .to_string()
            .contains("valid keys: isolation"));
        assert!(edit(&p, "vcpu_count", Some("0")).is_err());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            text,
            "refusals write nothing"
        );
        assert_eq!(edit(&p, "mem_mib", None).unwrap().mem_mib, None);

        std::fs::write(&p, "isolaton = \"container\"\n").unwrap();
        let e = load_from(&p).unwrap_err();
        assert_eq!(e.kind(), "invalid_config");
        assert!(e.to_string().contains("isolaton"), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        std::fs::write(&p, "isolation = \"kvm\"\nmem_mib = 512\n").unwrap();
        assert!(load_from(&p).is_err());
        // A wrong value is fixed by setting it, an unknown key by removing it.
        let fixed = edit(&p, "isolation", Some("vm-emulated")).unwrap();
        assert_eq!(
            (fixed.isolation, fixed.mem_mib),
            (Some(Isolation::VmEmulated), Some(512))
        );
        std::fs::write(&p, "isolaton = \"container\"\n").unwrap();
        assert_eq!(edit(&p, "isolaton", None).unwrap(), UserConfig::default());
    }
}
