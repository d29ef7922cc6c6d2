//! Tool profiles: which tools a server offers. A tool outside the profile is not registered at
//! all, so clients never see it in `tools/list` and cannot call it.

use std::fmt;
use std::str::FromStr;

/// A named set of tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// One-shot runs only: `vm_run`.
    VmRun,
    /// One-shot runs plus the everyday workspace tools (the default).
    #[default]
    WorkspaceCore,
    /// Everything the library offers.
    WorkspaceFull,
}

/// The tools of `vm-run`.
const VM_RUN: &[&str] = &["vm_run"];

/// The tools of `workspace-core`, in the order the seed lists them.
const WORKSPACE_CORE: &[&str] = &[
    "vm_run",
    "workspace_create",
    "workspace_list",
    "workspace_update",
    "workspace_status",
    "workspace_sync_push",
    "workspace_exec",
    "workspace_logs",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_patch_apply",
    "workspace_diff",
    "workspace_export",
    "workspace_reset",
    "workspace_delete",
];

/// What `workspace-full` adds to `workspace-core`.
const FULL_EXTRA: &[&str] = &[
    "vm_list_environments",
    "vm_create",
    "vm_start",
    "vm_exec",
    "vm_stop",
    "vm_delete",
    "vm_status",
    "vm_network_info",
    "vm_reap_expired",
    "workspace_stop",
    "workspace_start",
    "workspace_disk_export",
    "workspace_disk_list",
    "workspace_disk_read",
    "snapshot_create",
    "snapshot_list",
    "snapshot_delete",
    "shell_open",
    "shell_read",
    "shell_write",
    "shell_signal",
    "shell_close",
    "shell_list",
    "service_start",
    "service_list",
    "service_status",
    "service_logs",
    "service_stop",
];

impl Profile {
    /// Every profile, smallest first.
    pub const ALL: [Profile; 3] = [
        Profile::VmRun,
        Profile::WorkspaceCore,
        Profile::WorkspaceFull,
    ];

    /// The profile's name as `--profile` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::VmRun => "vm-run",
            Profile::WorkspaceCore => "workspace-core",
            Profile::WorkspaceFull => "workspace-full",
        }
    }

    /// The names of the tools this profile offers.
    pub fn tools(self) -> Vec<&'static str> {
        match self {
            Profile::VmRun => VM_RUN.to_vec(),
            Profile::WorkspaceCore => WORKSPACE_CORE.to_vec(),
            Profile::WorkspaceFull => WORKSPACE_CORE.iter().chain(FULL_EXTRA).copied().collect(),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown MCP profile {0:?} (expected vm-run, workspace-core or workspace-full)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Profile, UnknownProfile> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_nest_and_parse() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().ok(), Some(p));
        }
        assert!("full".parse::<Profile>().is_err());
        let core = Profile::WorkspaceCore.tools();
        let full = Profile::WorkspaceFull.tools();
        assert_eq!(Profile::VmRun.tools(), ["vm_run"]);
        assert!(core.iter().all(|t| full.contains(t)));
        assert_eq!(core.len(), 16);
        assert_eq!(full.len(), 44);
    }
}
