//! Where pyro keeps things, and every environment variable pyro reads (one home for them all).

use std::path::{Path, PathBuf};

/// Every environment variable pyro reads, with what it does. `pyro doctor --json` and the README
/// list the same set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PYRO_HOME", "state directory: SQLite database, sandbox writable layers (default ~/.local/share/pyro)"),
    ("PYRO_CACHE_DIR", "environment cache: OCI image layout and unpacked root filesystems (default ~/.cache/pyro)"),
    ("PYRO_RUN_DIR", "runtime directory for sandbox bundles and sockets; must be traversable by the sandbox's mapped root (default /run/pyro)"),
    ("PYRO_ISOLATION", "default isolation level: microvm, vm-emulated or container (default: the config file's `isolation`, else microvm)"),
    ("PYRO_CONFIG", "the config file with your defaults (default $XDG_CONFIG_HOME/pyro/config.toml, else ~/.config/pyro/config.toml; see `pyro config`)"),
    ("PYRO_AGENT", "path to a statically linked pyro-agent to use instead of the one built into pyro"),
    ("PYRO_RUNC", "path to the runc binary (default: runc on PATH)"),
    ("PYRO_KERNEL", "path to the guest kernel (an uncompressed vmlinux) for the VM levels (default: the build of this version's config in PYRO_KERNEL_DIR)"),
    ("PYRO_KERNEL_DIR", "the kernel cache: where scripts/build-kernel caches guest kernels by config and source hash, and pyro kernel pull installs them (default ~/.cache/pyro/kernels)"),
    ("PYRO_FIRECRACKER", "path to the firecracker binary (default: on PATH, then ~/.cache/pyro/firecracker/, where scripts/setup --vm puts the pinned build)"),
    ("PYRO_JAILER", "path to Firecracker's jailer, used when pyro runs as root (default: next to firecracker)"),
    ("PYRO_QEMU", "path to qemu-system-x86_64 (default: on PATH)"),
    ("PYRO_VHOST_VSOCK", "path to vhost-device-vsock, QEMU's vsock backend (default: on PATH, then ~/.cache/pyro/cargo/bin, ~/.cargo/bin)"),
    ("PYRO_DEBIAN_MIRROR", "Debian mirror URL for environment builds (default: mmdebstrap's default, deb.debian.org)"),
    ("PYRO_WORKSPACE_GRACE_S", "seconds an expired (stopped) workspace is kept before it is deleted (default 86400)"),
    ("PYRO_REGISTRY", "registry host and namespace that catalog environments and the guest kernel are pulled from: debian:12 is $PYRO_REGISTRY/debian:12, the kernel $PYRO_REGISTRY/kernel:<fragment hash> (default ghcr.io/pyro-sandbox; nothing is published there yet)"),
    ("PYRO_PINS", "a pins file ([pins] name = \"sha256:…\", with kernel for the guest kernel) replacing the shipped envs/pins.toml when pulling catalog environments and the kernel"),
    ("PYRO_INSECURE_REGISTRIES", "comma-separated host:port registries reached over plain HTTP; loopback registries (127.0.0.1, localhost, [::1]) always are"),
    ("PYRO_REGISTRY_USERNAME", "registry user name for pull and push (with PYRO_REGISTRY_PASSWORD); default: ~/.docker/config.json, else anonymous"),
    ("PYRO_REGISTRY_PASSWORD", "registry password or token for PYRO_REGISTRY_USERNAME; never logged"),
    ("DOCKER_CONFIG", "directory of the Docker config.json whose `auths` give registry credentials (default ~/.docker)"),
    ("PYRO_NET_POOL", "IPv4 CIDR that sandboxes' /30 subnets are leased from when they have a network (default 10.213.0.0/16); subnets overlapping a host route are skipped"),
    ("PYRO_MCP_TOKEN", "bearer token `pyro mcp serve --http` requires from clients (required on non-loopback addresses)"),
    ("PYRO_LOG", "log filter for pyro's own diagnostics on stderr, e.g. debug (default warn)"),
];

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

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_dir() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/root"))
}

impl Paths {
    /// Paths from the environment, with the documented defaults.
    pub fn from_env() -> Paths {
        let home = env_path("PYRO_HOME").unwrap_or_else(|| home_dir().join(".local/share/pyro"));
        let cache = env_path("PYRO_CACHE_DIR").unwrap_or_else(|| home_dir().join(".cache/pyro"));
        let run = env_path("PYRO_RUN_DIR").unwrap_or_else(|| PathBuf::from("/run/pyro"));
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
