//! The library's error type. Every error maps to a stable `kind` string and, where one helps, a
//! `hint` saying what to do next; the CLI prints them as `{"error": {kind, message, hint}}`.

use std::path::PathBuf;

/// Everything that can go wrong in pyro.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was malformed (empty command, bad limits, bad names).
    #[error("{0}")]
    InvalidRequest(String),
    /// A setting from outside the request (an environment variable or the config file) is
    /// unusable.
    #[error("{source_name}: {message}")]
    InvalidConfig {
        /// Where the setting came from: the variable's name or the file's path.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// No environment of this name is in the catalog.
    #[error("unknown environment {name:?}")]
    UnknownEnvironment {
        /// The name that was asked for.
        name: String,
        /// The names that exist.
        known: Vec<String>,
    },
    /// The environment exists in the catalog but is not built in the cache.
    #[error("environment {0} is not built yet")]
    EnvironmentNotBuilt(String),
    /// Building an environment failed.
    #[error("building environment {name} failed: {message}")]
    Build {
        /// The environment.
        name: String,
        /// What failed, with the tail of the builder's output.
        message: String,
    },
    /// The cache holds something unreadable or inconsistent.
    #[error("environment cache is corrupt at {path}: {message}")]
    CorruptCache {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An archive (an image layer, a seed, an upload or a guest's export) holds an entry that
    /// would escape its destination (an absolute path, a `..` component, a link leaving the
    /// tree, a write through a symlink) or that cannot be written faithfully.
    #[error("refusing unsafe archive entry {entry:?}: {reason}")]
    UnsafeArchive {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// Output from a guest is over the limits set for it; nothing was written.
    #[error("the export holds {what}")]
    ExportTooLarge {
        /// What passed which limit, e.g. `more than 1000 entries`.
        what: String,
    },
    /// A workspace is over what one snapshot may hold; nothing was stored.
    #[error("the workspace is too large to snapshot: {what}")]
    SnapshotTooLarge {
        /// What passed which limit.
        what: String,
    },
    /// The host cannot give the requested isolation level.
    #[error("isolation level {requested} is not available on this host: {reason}")]
    IsolationUnavailable {
        /// The level asked for.
        requested: String,
        /// Why not.
        reason: String,
        /// The levels this host can give.
        available: Vec<String>,
    },
    /// A backend operation failed (runtime, mounts, processes).
    #[error("{backend} backend: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// Talking to the guest agent failed.
    #[error("guest agent: {0}")]
    Agent(String),
    /// The guest agent answered with an error.
    #[error("{message}")]
    AgentRefused {
        /// The agent's error kind.
        kind: String,
        /// The agent's message.
        message: String,
    },
    /// No workspace with this id or name.
    #[error("no workspace with id or name {0:?}")]
    WorkspaceNotFound(String),
    /// The workspace exists but is not running.
    #[error("workspace {id} is {state}")]
    WorkspaceNotRunning {
        /// The workspace.
        id: String,
        /// Its state.
        state: String,
    },
    /// The call reads a workspace's disk offline and needs it stopped.
    #[error("workspace {id} is {state}; its disk is read only while it is stopped")]
    WorkspaceNotStopped {
        /// The workspace.
        id: String,
        /// Its state.
        state: String,
    },
    /// The workspace passed its absolute ttl and was stopped; it starts again only once its
    /// ttl is extended or cleared.
    #[error("workspace {0} is past its ttl and stopped")]
    WorkspaceExpired(String),
    /// The workspace's files on the host are gone (removed by hand, a lost disk): starting it
    /// would silently give an empty /workspace, so it is marked broken instead.
    #[error("workspace {id} is damaged: {what}")]
    WorkspaceDamaged {
        /// The workspace.
        id: String,
        /// What is missing.
        what: String,
    },
    /// A path is not on a stopped workspace's disk.
    #[error("{path}: {why} on the workspace's disk")]
    DiskPathNotFound {
        /// The guest path.
        path: String,
        /// What was missing.
        why: String,
    },
    /// A patch was refused; nothing was changed.
    #[error("{0}")]
    PatchFailed(String),
    /// The target exists and overwriting was not asked for.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// No VM with this id.
    #[error("no vm with id {0:?}")]
    VmNotFound(String),
    /// The VM exists but has no running sandbox.
    #[error("vm {id} is {state}, not started")]
    VmNotStarted {
        /// The VM.
        id: String,
        /// Its state.
        state: String,
    },
    /// No such sandbox.
    #[error("no sandbox with id {0}")]
    SandboxNotFound(String),
    /// The state database failed.
    #[error("state database: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What pyro was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operation was interrupted (SIGINT or SIGTERM); everything it started was cleaned up.
    #[error("interrupted")]
    Interrupted,
    /// Talking to an OCI registry failed (network, authentication, a missing reference).
    #[error("registry {reference}: {message}")]
    Registry {
        /// The image reference.
        reference: String,
        /// What failed.
        message: String,
    },
    /// Content from outside did not match the digest it must have; nothing was installed.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (a manifest, a blob, a pin).
        what: String,
        /// The digest it must have.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The image is not for this host's OS and architecture.
    #[error("image {reference} is not for this host: it needs {wanted}, the image has {found}")]
    PlatformMismatch {
        /// The image reference.
        reference: String,
        /// This host's platform, e.g. `linux/amd64`.
        wanted: String,
        /// The platform(s) the image offers.
        found: String,
    },
    /// The image uses something pyro cannot handle (media types, digests, sizes).
    #[error("image {reference} is not usable: {message}")]
    UnsupportedImage {
        /// The image reference.
        reference: String,
        /// Why.
        message: String,
    },
    /// An image reference used as an environment has not been pulled.
    #[error("image {0} is not pulled yet")]
    ImageNotPulled(String),
    /// No guest kernel to push (or a kernel without the files that describe it).
    #[error("guest kernel: {0}")]
    KernelNotFound(String),
    /// The catalog's guest kernel has no pinned digest to pull it by.
    #[error("the guest kernel has no pinned digest: no published kernel is known to this pyro")]
    KernelNotPinned,
    /// A catalog environment has no pinned digest to pull it by.
    #[error(
        "environment {0} has no pinned digest: no published image of it is known to this pyro"
    )]
    NotPinned(String),
    /// The host cannot give a sandbox the network it asked for; nothing was created.
    #[error("networking is not available on this host: {0}")]
    NetworkUnavailable(String),
    /// Making or removing a sandbox's links or firewall rules failed.
    #[error("sandbox network: {0}")]
    Network(String),
}

impl Error {
    /// The stable machine-readable kind of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::UnknownEnvironment { .. } => "unknown_environment",
            Error::EnvironmentNotBuilt(_) => "environment_not_built",
            Error::Build { .. } => "build_failed",
            Error::CorruptCache { .. } => "corrupt_cache",
            Error::UnsafeArchive { .. } => "unsafe_archive",
            Error::ExportTooLarge { .. } => "export_too_large",
            Error::SnapshotTooLarge { .. } => "snapshot_too_large",
            Error::IsolationUnavailable { .. } => "isolation_unavailable",
            Error::Backend { .. } => "backend_error",
            Error::Agent(_) => "agent_error",
            Error::AgentRefused { kind, .. } => match kind.as_str() {
                "bad_path" => "invalid_path",
                "not_found" => "not_found",
                "too_large" => "too_large",
                "bad_archive" => "unsafe_archive",
                "bad_request" => "invalid_request",
                _ => "agent_refused",
            },
            Error::WorkspaceNotFound(_) => "workspace_not_found",
            Error::WorkspaceNotRunning { .. } => "workspace_not_running",
            Error::WorkspaceNotStopped { .. } => "workspace_not_stopped",
            Error::DiskPathNotFound { .. } => "not_found",
            Error::WorkspaceExpired(_) => "workspace_expired",
            Error::WorkspaceDamaged { .. } => "workspace_damaged",
            Error::PatchFailed(_) => "patch_failed",
            Error::AlreadyExists(_) => "already_exists",
            Error::SandboxNotFound(_) => "not_found",
            Error::VmNotFound(_) => "vm_not_found",
            Error::VmNotStarted { .. } => "vm_not_started",
            Error::Store(_) => "state_error",
            Error::Io { .. } => "io_error",
            Error::Interrupted => "interrupted",
            Error::Registry { .. } => "registry_error",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::PlatformMismatch { .. } => "platform_mismatch",
            Error::UnsupportedImage { .. } => "unsupported_image",
            Error::ImageNotPulled(_) => "image_not_pulled",
            Error::NotPinned(_) | Error::KernelNotPinned => "not_pinned",
            Error::KernelNotFound(_) => "kernel_not_found",
            Error::NetworkUnavailable(_) => "network_unavailable",
            Error::Network(_) => "network_error",
        }
    }

    /// A next step for the user of the CLI or the SDK, where one helps.
    pub fn hint(&self) -> Option<String> {
        self.hint_for(Surface::Cli)
    }

    /// A next step, where one helps, in the words of the front door the caller came through:
    /// each hint names the operation that helps, and `surface` says how that operation is
    /// called there (a command line, or an MCP tool and its parameters).
    pub fn hint_for(&self, surface: Surface) -> Option<String> {
        let s = surface;
        match self {
            Error::UnknownEnvironment { known, .. } => Some(format!(
                "known environments: {}; see {}; OCI images are named by reference, e.g. registry.example/repo:tag",
                known.join(", "),
                s.pick("`pyro env list`", "vm_list_environments")
            )),
            Error::EnvironmentNotBuilt(name) => Some(match s {
                Surface::Cli => format!("run `pyro env build {name}`"),
                Surface::Mcp => format!("this server does not build environments; on the host, run `pyro env build {name}` (see vm_list_environments)"),
            }),
            Error::InvalidConfig { source_name, .. } if source_name.starts_with("PYRO_") => Some(format!("fix or unset {source_name}; `pyro doctor` lists the variables pyro reads")),
            Error::InvalidConfig { .. } => Some("fix or remove the setting (`pyro config unset KEY`); `pyro config show` lists the keys".into()),
            Error::IsolationUnavailable { available, .. } if available.is_empty() => {
                Some("no isolation level is usable on this host; run `pyro doctor`".into())
            }
            Error::IsolationUnavailable { available, .. } => Some(match s {
                Surface::Cli => format!(
                    "this host can give: {}; pass --isolation {}, or make it the default once with `pyro config set isolation {}` (see `pyro doctor`)",
                    available.join(", "),
                    available[0],
                    available[0]
                ),
                Surface::Mcp => format!(
                    "this host can give: {}; pass isolation: \"{}\", or make it the default for every call once on the host with `pyro config set isolation {}`",
                    available.join(", "),
                    available[0],
                    available[0]
                ),
            }),
            Error::Build { .. } => Some("check network access to the Debian mirror and that mmdebstrap is installed (`pyro doctor`)".into()),
            Error::CorruptCache { .. } => Some("run `pyro env prune` and build the environment again".into()),
            Error::UnsafeArchive { .. } => Some("the whole archive was refused and nothing of it was kept; an archive from a workspace is the guest's to shape, so look at what the workspace holds at that path".into()),
            Error::SnapshotTooLarge { .. } => Some(format!(
                "a snapshot holds at most {} bytes in {} entries of /workspace; remove build output or caches from /workspace first",
                crate::limits::SNAPSHOT_MAX_BYTES,
                crate::limits::SNAPSHOT_MAX_ENTRIES
            )),
            Error::ExportTooLarge { .. } => Some(format!(
                "nothing was written; export a smaller path, or raise the limits with {}",
                s.pick("--max-bytes/--max-entries", "max_bytes/max_entries")
            )),
            Error::Backend { backend: "container", .. } => Some("run `pyro doctor` to check the container runtime".into()),
            Error::WorkspaceNotFound(_) => Some(s.pick("see `pyro workspace list`", "call workspace_list to see the workspaces").into()),
            Error::WorkspaceNotRunning { id, state } if state == "broken" => Some(match s {
                Surface::Cli => format!("an earlier call was interrupted; run `pyro workspace reset {id}`"),
                Surface::Mcp => "an earlier call was interrupted; call workspace_reset".into(),
            }),
            Error::WorkspaceDamaged { id, .. } => Some(match s {
                Surface::Cli => format!("rebuild it from its baseline with `pyro workspace reset {id}` (or `--snapshot NAME`), or delete it"),
                Surface::Mcp => "call workspace_reset to rebuild it from its baseline (or a named snapshot), or workspace_delete".into(),
            }),
            Error::WorkspaceExpired(id) => Some(match s {
                Surface::Cli => format!("extend its ttl with `pyro workspace update {id} --ttl SECONDS` (or --clear-ttl), then `pyro workspace start {id}`"),
                Surface::Mcp => "extend its ttl with workspace_update (ttl_seconds, or clear_ttl: true), then call workspace_start".into(),
            }),
            Error::WorkspaceNotStopped { id, .. } => Some(match s {
                Surface::Cli => format!("stop it first with `pyro workspace stop {id}` (its files are kept), or use `pyro workspace file` while it runs"),
                Surface::Mcp => "call workspace_stop first (its files are kept), or use workspace_file_list/workspace_file_read while it runs".into(),
            }),
            Error::WorkspaceNotRunning { id, .. } => Some(match s {
                Surface::Cli => format!("start it with `pyro workspace start {id}`"),
                Surface::Mcp => "call workspace_start (in the workspace-full profile) or workspace_reset".into(),
            }),
            Error::PatchFailed(_) => Some(format!(
                "the workspace is unchanged; regenerate the patch against the current files ({})",
                s.pick("`pyro workspace diff`", "workspace_diff, workspace_file_read")
            )),
            Error::AlreadyExists(what) if what.starts_with("a workspace named") => Some(s.pick(
                "names are unique: choose another --name, or delete that workspace first (`pyro workspace delete NAME`)",
                "names are unique: choose another name, or delete that workspace first (workspace_delete)",
            ).into()),
            Error::AlreadyExists(_) => Some(s.pick("pass --force to overwrite", "pass overwrite: true to replace it").into()),
            Error::AgentRefused { kind, .. } if kind == "bad_path" => Some("paths must stay inside /workspace".into()),
            Error::AgentRefused { kind, message } if kind == "not_found" => {
                if message.starts_with("no service") {
                    Some(format!("see the services with {}", s.pick("`pyro workspace service list ID`", "service_list")))
                } else if message.starts_with("no shell") {
                    Some(format!("see the shells with {}", s.pick("`pyro workspace shell list ID`", "shell_list")))
                } else if message.starts_with('/') {
                    Some(format!(
                        "paths are relative to /workspace; see what is there with {}",
                        s.pick("`pyro workspace file list ID`", "workspace_file_list")
                    ))
                } else {
                    None
                }
            }
            Error::DiskPathNotFound { .. } => Some(format!(
                "relative paths are under /workspace, absolute ones anywhere in the workspace's root; see what is there with {}",
                s.pick("`pyro workspace disk list ID [PATH]`", "workspace_disk_list")
            )),
            Error::SandboxNotFound(_) => Some(s.pick("it may have been deleted or reaped; see `pyro gc`", "it may have been deleted or reaped; create another").into()),
            Error::AgentRefused { kind, message } if kind == "spawn" && message.contains("/bin/sh") => Some("the environment has no usable /bin/sh: pyro runs every command with `sh -lc`, so an image used as an environment needs a shell".into()),
            Error::Registry { .. } => Some("check the reference, network access and credentials (~/.docker/config.json or PYRO_REGISTRY_USERNAME/PYRO_REGISTRY_PASSWORD); plain-HTTP registries other than loopback go in PYRO_INSECURE_REGISTRIES".into()),
            Error::DigestMismatch { .. } => Some("the registry served other content than expected; nothing was installed".into()),
            Error::PlatformMismatch { .. } => Some("use an image (or an index entry) built for this host's architecture".into()),
            Error::ImageNotPulled(r) => Some(format!("run `pyro env pull {r}`")),
            Error::NotPinned(n) => Some(format!("pass `--digest sha256:…` to `pyro env pull {n}`, point PYRO_PINS at a pins file, or build it locally with `pyro env build {n}`")),
            Error::KernelNotFound(_) => Some("build one with `scripts/build-kernel` (or `scripts/setup --vm`), or pull one with `pyro kernel pull`".into()),
            Error::KernelNotPinned => Some("pass `--digest sha256:…` or a reference to `pyro kernel pull`, point PYRO_PINS at a pins file with a \"kernel\" pin, or build it locally with `scripts/build-kernel`".into()),
            Error::VmNotFound(_) => Some("VMs are one-shot: vm_exec and vm_reap_expired delete them; create another".into()),
            Error::VmNotStarted { id, .. } => Some(match s {
                Surface::Cli => format!("start it first (vm_start {id})"),
                Surface::Mcp => "call vm_start first".into(),
            }),
            Error::NetworkUnavailable(_) => Some(format!("`pyro doctor` lists what networking this host has; install iproute2 and nftables, run as root, and enable forwarding with `sysctl -w net.ipv4.ip_forward=1` (scripts/setup does all of this); or run without {}", s.pick("--network", "network"))),
            Error::Network(_) => Some("run `pyro gc` to remove what was left, then `pyro doctor`".into()),
            Error::Store(e) if is_damaged_database(&e.to_string()) => Some("the state database ($PYRO_HOME/pyro.db) is damaged or not pyro's: move it aside (`mv pyro.db pyro.db.damaged`) and pyro starts a new one; the workspaces it recorded are forgotten, their files stay under $PYRO_HOME".into()),
            Error::Store(e) if e.to_string().contains("locked") => Some("another pyro held the state database for longer than the busy timeout (30 s); try again".into()),
            _ => None,
        }
    }

    /// An I/O error with what pyro was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Whether SQLite's message says the file is no (longer a) database.
fn is_damaged_database(message: &str) -> bool {
    ["not a database", "malformed", "corrupt"]
        .iter()
        .any(|w| message.contains(w))
}

/// `Result` with pyro's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to I/O results.
pub trait IoContext<T> {
    /// Adds what pyro was doing to an I/O error.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

/// The state database's errors convert with `?` in the crate that owns the database (the
/// `sqlite` feature), so this crate's users need not link SQLite.
#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Store(Box::new(e))
    }
}

/// A front door, for hints in its own words: the CLI (and the SDK, whose calls mirror its
/// commands) names command lines and flags, the MCP server names tools and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The `pyro` command line and the SDKs.
    Cli,
    /// The MCP server's tools.
    Mcp,
}

impl Surface {
    /// The words for this front door.
    pub fn pick(self, cli: &'static str, mcp: &'static str) -> &'static str {
        match self {
            Surface::Cli => cli,
            Surface::Mcp => mcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each front door's hints name its own ways in: no command lines or flags over MCP, no
    /// tool names on the command line (the VM calls exist only as SDK and MCP calls).
    #[test]
    fn hints_are_worded_for_their_front_door() {
        let errors = [
            Error::WorkspaceNotFound("w".into()),
            Error::WorkspaceNotRunning {
                id: "w".into(),
                state: "broken".into(),
            },
            Error::WorkspaceNotRunning {
                id: "w".into(),
                state: "stopped".into(),
            },
            Error::WorkspaceExpired("w".into()),
            Error::WorkspaceNotStopped {
                id: "w".into(),
                state: "running".into(),
            },
            Error::WorkspaceDamaged {
                id: "w".into(),
                what: "gone".into(),
            },
            Error::PatchFailed("x".into()),
            Error::AlreadyExists("a workspace named demo".into()),
            Error::AlreadyExists("file".into()),
            Error::ExportTooLarge { what: "x".into() },
            Error::IsolationUnavailable {
                requested: "microvm".into(),
                reason: "no kvm".into(),
                available: vec!["container".into()],
            },
        ];
        for e in &errors {
            let (cli, mcp) = (e.hint_for(Surface::Cli), e.hint_for(Surface::Mcp));
            let (cli, mcp) = (cli.expect("a CLI hint"), mcp.expect("an MCP hint"));
            assert!(
                !mcp.contains("`pyro workspace") && !mcp.contains(" --"),
                "{e:?}: {mcp}"
            );
            assert!(!cli.contains("workspace_"), "{e:?}: {cli}");
            assert_eq!(e.hint(), Some(cli));
        }
    }
}
