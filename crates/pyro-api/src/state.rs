//! The states of workspaces, sandboxes and VMs, and the backends, as types. Each is stored and
//! shown by its lowercase name; a name read back that this pyro does not know is an error the
//! caller turns into a clear state (a workspace whose state cannot be read is broken).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Declares a string-backed state enum: its names, `as_str`, `Display`, `FromStr` and `ALL`.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            // `pad`, so width and alignment in format strings apply (tables line up).
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    Error::InvalidRequest(format!(
                        concat!("unknown ", $what, " {:?} (expected one of: {})"),
                        s,
                        names.join(", ")
                    ))
                })
            }
        }

        /// Stored by name.
        #[cfg(feature = "sqlite")]
        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        /// Read back by name; a name this pyro does not know fails the row.
        #[cfg(feature = "sqlite")]
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: Error| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

named_enum!(
    /// Where a workspace is in its lifecycle.
    WorkspaceState, "workspace state", {
        /// Its sandbox is being made.
        Creating = "creating",
        /// Its sandbox runs; commands can run.
        Running = "running",
        /// No sandbox runs; its files are kept (`start` brings it back).
        Stopped = "stopped",
        /// Its sandbox is being replaced by a fresh one.
        Resetting = "resetting",
        /// A step failed half-way; `delete` (or `reset`) clears it.
        Broken = "broken",
    }
);

impl WorkspaceState {
    /// Whether the lifecycle goes from `self` to `to`:
    ///
    /// ```text
    /// creating ──► running ◄──► stopped
    ///                 │            │
    ///                 ▼            ▼
    ///   broken ──► resetting ◄─────┘     (a reset from any settled state, or an interrupted one)
    ///     ▲           │
    ///     └───────────┴──► running
    /// ```
    ///
    /// Staying in a state is always allowed. Deleting is not a state: the row goes.
    pub fn may_become(self, to: WorkspaceState) -> bool {
        use WorkspaceState::*;
        self == to
            || matches!(
                (self, to),
                (Creating, Running)
                    | (Running, Stopped)
                    | (Stopped, Running)
                    | (Running | Stopped | Broken | Resetting, Resetting)
                    | (Resetting, Running | Broken)
                    // Its files on the host were found gone (WorkspaceDamaged).
                    | (Stopped | Running, Broken)
            )
    }
}

named_enum!(
    /// Where one recorded sandbox is.
    SandboxState, "sandbox state", {
        /// Recorded; its processes and files are being made.
        Creating = "creating",
        /// Started.
        Running = "running",
        /// A workspace's sandbox whose processes are gone, its disk kept.
        Stopped = "stopped",
        /// Claimed by a pyro that is removing it.
        Deleting = "deleting",
    }
);

named_enum!(
    /// Where a VM of the VM calls (`vm_create`, `vm_start`, …) is.
    VmState, "VM state", {
        /// Recorded, not booted.
        Created = "created",
        /// Booted; commands can run.
        Started = "started",
        /// Its sandbox is gone; `start` boots a fresh one.
        Stopped = "stopped",
    }
);

named_enum!(
    /// Which program isolates a sandbox.
    BackendKind, "backend", {
        /// runc, an OCI runtime (the container level).
        Container = "container",
        /// QEMU (`-M microvm`, TCG or KVM).
        Qemu = "qemu",
        /// Firecracker, under its jailer as root.
        Firecracker = "firecracker",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_lifecycle_allows_only_its_transitions() {
        use WorkspaceState::*;
        for (from, to) in [
            (Creating, Running),
            (Running, Stopped),
            (Stopped, Running),
            (Stopped, Resetting),
            (Broken, Resetting),
            (Resetting, Broken),
            (Resetting, Running),
            (Stopped, Stopped),
            (Stopped, Broken),
        ] {
            assert!(from.may_become(to), "{from} -> {to}");
        }
        for (from, to) in [
            (Creating, Stopped),
            (Broken, Running),
            (Broken, Stopped),
            (Running, Creating),
            (Creating, Resetting),
        ] {
            assert!(!from.may_become(to), "{from} -> {to}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in WorkspaceState::ALL {
            assert_eq!(s.as_str().parse::<WorkspaceState>().ok(), Some(*s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        for b in BackendKind::ALL {
            assert_eq!(b.as_str().parse::<BackendKind>().ok(), Some(*b));
        }
        let err = "bogus"
            .parse::<WorkspaceState>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown workspace state \"bogus\" (expected one of: creating, running, stopped, resetting, broken)")
        );
    }
}
