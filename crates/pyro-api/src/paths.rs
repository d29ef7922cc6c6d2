//! Where pyro keeps things, and every environment variable pyro reads (one home for them all).

use std::path::{Path, PathBuf};

/// Declares [`Var`] and [`ENV_VARS`] from one table, so a variable cannot be read without being
/// documented.
macro_rules! env_vars {
    ($($variant:ident = $name:literal: $doc:literal,)+) => {
        /// Every environment variable pyro reads at run time. Read them through [`var`] and its
        /// siblings only: one place decides that an empty value means unset.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Var {
            $(
                #[doc = $doc]
                $variant,
            )+
        }

        impl Var {
            /// Every variable, in the documented order.
            pub const ALL: &'static [Var] = &[$(Var::$variant),+];

            /// The variable's name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Var::$variant => $name),+
                }
            }
        }

        /// Every environment variable pyro reads, with what it does. `pyro doctor --json` and
        /// the README list the same set.
        pub const ENV_VARS: &[(&str, &str)] = &[$(($name, $doc)),+];
    };
}

env_vars! {
    Home = "PYRO_HOME": "state directory: SQLite database, sandbox writable layers (default ~/.local/share/pyro)",
    CacheDir = "PYRO_CACHE_DIR": "environment cache: OCI image layout and unpacked root filesystems (default ~/.cache/pyro)",
    RunDir = "PYRO_RUN_DIR": "runtime directory for sandbox bundles and sockets; must be traversable by the sandbox's mapped root (default /run/pyro)",
    Isolation = "PYRO_ISOLATION": "default isolation level: microvm, vm-emulated or container (default: the config file's `isolation`, else microvm)",
    Config = "PYRO_CONFIG": "the config file with your defaults (default $XDG_CONFIG_HOME/pyro/config.toml, else ~/.config/pyro/config.toml; see `pyro config`)",
    Agent = "PYRO_AGENT": "path to a statically linked pyro-agent to use instead of the one built into pyro",
    Runc = "PYRO_RUNC": "path to the runc binary (default: runc on PATH)",
    Kernel = "PYRO_KERNEL": "path to the guest kernel (an uncompressed vmlinux) for the VM levels (default: the build of this version's config in PYRO_KERNEL_DIR)",
    KernelDir = "PYRO_KERNEL_DIR": "the kernel cache: where scripts/build-kernel caches guest kernels by config and source hash, and pyro kernel pull installs them (default ~/.cache/pyro/kernels)",
    Firecracker = "PYRO_FIRECRACKER": "path to the firecracker binary (default: on PATH, then ~/.cache/pyro/firecracker/, where scripts/setup --vm puts the pinned build)",
    Jailer = "PYRO_JAILER": "path to Firecracker's jailer, used when pyro runs as root (default: next to firecracker)",
    Qemu = "PYRO_QEMU": "path to qemu-system-x86_64 (default: on PATH)",
    VhostVsock = "PYRO_VHOST_VSOCK": "path to vhost-device-vsock, QEMU's vsock backend (default: on PATH, then ~/.cache/pyro/cargo/bin, ~/.cargo/bin)",
    DebianMirror = "PYRO_DEBIAN_MIRROR": "Debian mirror URL for environment builds (default: mmdebstrap's default, deb.debian.org)",
    WorkspaceGraceS = "PYRO_WORKSPACE_GRACE_S": "seconds an expired (stopped) workspace is kept before it is deleted (default 86400)",
    Registry = "PYRO_REGISTRY": "registry host and namespace that catalog environments and the guest kernel are pulled from: debian:12 is $PYRO_REGISTRY/debian:12, the kernel $PYRO_REGISTRY/kernel:<fragment hash> (default ghcr.io/pyro-sandbox; nothing is published there yet)",
    Pins = "PYRO_PINS": "a pins file ([pins] name = \"sha256:…\", with kernel for the guest kernel) replacing the shipped envs/pins.toml when pulling catalog environments and the kernel",
    InsecureRegistries = "PYRO_INSECURE_REGISTRIES": "comma-separated host:port registries reached over plain HTTP; loopback registries (127.0.0.1, localhost, [::1]) always are",
    RegistryUsername = "PYRO_REGISTRY_USERNAME": "registry user name for pull and push (with PYRO_REGISTRY_PASSWORD); default: ~/.docker/config.json, else anonymous",
    RegistryPassword = "PYRO_REGISTRY_PASSWORD": "registry password or token for PYRO_REGISTRY_USERNAME; never logged",
    DockerConfig = "DOCKER_CONFIG": "directory of the Docker config.json whose `auths` give registry credentials (default ~/.docker)",
    NetPool = "PYRO_NET_POOL": "IPv4 CIDR that sandboxes' /30 subnets are leased from when they have a network (default 10.213.0.0/16); subnets overlapping a host route are skipped",
    McpToken = "PYRO_MCP_TOKEN": "bearer token `pyro mcp serve --http` requires from clients (required on non-loopback addresses)",
    Log = "PYRO_LOG": "log filter for pyro's own diagnostics on stderr, e.g. debug (default warn)",
}

/// The variable's value, when it is set and not empty (an empty variable counts as unset).
pub fn var_os(v: Var) -> Option<std::ffi::OsString> {
    std::env::var_os(v.name()).filter(|s| !s.is_empty())
}

/// The variable's value as text, trimmed, when it is set, not blank and valid UTF-8.
pub fn var(v: Var) -> Option<String> {
    std::env::var(v.name())
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The variable's value exactly as set (not trimmed: a password may hold spaces), when it is
/// set, not empty and valid UTF-8.
pub fn var_raw(v: Var) -> Option<String> {
    std::env::var(v.name()).ok().filter(|s| !s.is_empty())
}

/// The variable's value as a path, when it is set and not empty.
pub fn var_path(v: Var) -> Option<PathBuf> {
    var_os(v).map(PathBuf::from)
}

/// The directories pyro uses.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `$PYRO_HOME`.
    pub home: PathBuf,
    /// `$PYRO_CACHE_DIR`.
    pub cache: PathBuf,
    /// `$PYRO_RUN_DIR`.
    pub run: PathBuf,
}

/// `$HOME` when it is set and not empty.
pub fn home_var() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$HOME`, else `/root`.
pub fn home_dir() -> PathBuf {
    home_var().unwrap_or_else(|| PathBuf::from("/root"))
}

impl Paths {
    /// Paths from the environment, with the documented defaults.
    pub fn from_env() -> Paths {
        let home = var_path(Var::Home).unwrap_or_else(|| home_dir().join(".local/share/pyro"));
        let cache = var_path(Var::CacheDir).unwrap_or_else(|| home_dir().join(".cache/pyro"));
        let run = var_path(Var::RunDir).unwrap_or_else(|| PathBuf::from("/run/pyro"));
        Paths { home, cache, run }
    }

    /// Paths under one root, for tests and embedding.
    pub fn under(root: &Path) -> Paths {
        Paths {
            home: root.join("home"),
            cache: root.join("cache"),
            run: root.join("run"),
        }
    }

    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.home.join("pyro.db")
    }

    /// Per-sandbox persistent state (writable layers, logs).
    pub fn sandbox_state(&self, id: &str) -> PathBuf {
        self.home.join("sandboxes").join(id)
    }

    /// Per-sandbox runtime directory (bundle, sockets).
    pub fn sandbox_run(&self, id: &str) -> PathBuf {
        self.run.join("sandboxes").join(id)
    }
}
