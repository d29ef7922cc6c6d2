"""Errors through the SDK: each failure raises its own class (with ``kind``, ``message`` and
``hint``, and the built-in base the seed raised), timeouts are results, bad arguments fail before
anything is made, secrets never come back in a result, and every kind the library can produce has
a class."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import REPO
from pyro_mcp import Pyro
from pyro_mcp.errors import (
    ERROR_CLASSES,
    InvalidPathError,
    InvalidRequestError,
    NotFoundError,
    PatchFailedError,
    PyroError,
    UnknownEnvironmentError,
    WorkspaceNotFoundError,
    WorkspaceNotRunningError,
    error_from,
)

ERROR_RS = REPO / "crates" / "pyro-api" / "src" / "error.rs"


# Unknown environments -----------------------------------------------------------------------


def test_run_in_vm_with_an_unknown_environment(pyro: Pyro) -> None:
    name = f"no-such-env-{secrets.token_hex(4)}"
    with pytest.raises(UnknownEnvironmentError) as caught:
        pyro.run_in_vm(environment=name, command="true")
    err = caught.value
    assert err.kind == "unknown_environment"
    assert isinstance(err, ValueError)
    assert isinstance(err, PyroError)
    assert name in err.message
    assert err.hint and "debian:12" in err.hint
    assert err.to_dict() == {
        "kind": "unknown_environment",
        "message": err.message,
        "hint": err.hint,
    }
    assert name in str(err) and err.hint in str(err)


def test_create_workspace_with_an_unknown_environment_makes_nothing(pyro: Pyro) -> None:
    label = secrets.token_hex(6)
    with pytest.raises(UnknownEnvironmentError):
        pyro.create_workspace(environment="no-such-env", labels={"probe": label})
    assert pyro.list_workspaces(labels={"probe": label})["count"] == 0


# Paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd", "sub/../../x"]
)
def test_reading_outside_the_workspace_is_an_invalid_path(
    pyro: Pyro, workspace: str, path: str
) -> None:
    with pytest.raises(InvalidPathError) as caught:
        pyro.read_workspace_file(workspace, path)
    err = caught.value
    assert err.kind == "invalid_path"
    assert isinstance(err, ValueError)
    assert path in err.message
    assert err.hint and "/workspace" in err.hint


def test_every_guest_path_call_refuses_paths_outside_the_workspace(
    pyro: Pyro, workspace: str, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x\n")
    calls: dict[str, Callable[[], Any]] = {
        "write_workspace_file": lambda: pyro.write_workspace_file(
            workspace, "../escape.txt", text="x"
        ),
        "list_workspace_files": lambda: pyro.list_workspace_files(workspace, path="/etc"),
        "export_workspace": lambda: pyro.export_workspace(
            workspace, "../etc", output_path=tmp_path / "out"
        ),
        "push_workspace_sync": lambda: pyro.push_workspace_sync(
            workspace, tmp_path / "src", dest="../outside"
        ),
        "open_shell": lambda: pyro.open_shell(workspace, cwd="/etc"),
    }
    for call in calls.values():
        with pytest.raises(InvalidPathError):
            call()
    assert not (tmp_path / "out").exists()
    # Nothing was written anywhere in the workspace either.
    assert pyro.list_workspace_files(workspace, recursive=True)["entries"] == []


# Timeouts are results ------------------------------------------------------------------------


def test_exec_workspace_timeout_is_a_result(pyro: Pyro, workspace: str) -> None:
    out = pyro.exec_workspace(workspace, command="sleep 30; echo finished", timeout_seconds=1)
    assert out["timed_out"] is True
    assert out["exit_code"] != 0
    assert "finished" not in out["stdout"]
    # The workspace is still usable afterwards.
    assert pyro.exec_workspace(workspace, command="echo alive")["stdout"] == "alive\n"
    entry = pyro.logs_workspace(workspace)["entries"][0]
    assert entry["timed_out"] is True


def test_run_in_vm_timeout_is_a_result(pyro: Pyro) -> None:
    out = pyro.run_in_vm(
        environment="debian:12", command="sleep 30; echo finished", timeout_seconds=1
    )
    assert out["timed_out"] is True
    assert out["exit_code"] != 0
    assert "finished" not in out["stdout"]
    assert out["cleanup"]["deleted"] is True


# Invalid arguments fail before anything is made ----------------------------------------------


def _made_in(home: Path) -> list[str]:
    """What pyro made under a private home besides its state database."""
    return sorted(
        str(p.relative_to(home))
        for sub in ("sandboxes", "vms", "workspaces")
        if (home / sub).exists()
        for p in (home / sub).iterdir()
    )


@pytest.mark.usefixtures("containers")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"vcpu_count": 0},
        {"vcpu_count": 1000},
        {"mem_mib": 1},
        {"ttl_seconds": 5},
        {"timeout_seconds": 0},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_run_in_vm_rejects_bad_arguments_before_making_a_sandbox(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    home = tmp_path / "home"
    with Pyro(isolation="container", base_dir=home) as p:
        with pytest.raises(InvalidRequestError) as caught:
            p.run_in_vm(environment="debian:12", command="true", **kwargs)
        assert isinstance(caught.value, ValueError)
        assert caught.value.kind == "invalid_request"
        assert caught.value.message
        assert _made_in(home) == []


@pytest.mark.usefixtures("containers")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"vcpu_count": 0},
        {"mem_mib": 1},
        {"network_policy": "everything"},
        {"name": "has spaces"},
        {"secrets": [{"name": "BAD NAME", "value": "x"}]},
    ],
    ids=["vcpu_count=0", "mem_mib=1", "network_policy", "name", "secret_name"],
)
def test_create_workspace_rejects_bad_arguments_before_making_one(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    home = tmp_path / "home"
    with Pyro(isolation="container", base_dir=home) as p:
        with pytest.raises(InvalidRequestError) as caught:
            p.create_workspace(environment="debian:12", **kwargs)
        assert isinstance(caught.value, ValueError)
        assert p.list_workspaces()["count"] == 0
        assert _made_in(home) == []


def test_exec_workspace_rejects_a_zero_timeout(pyro: Pyro, workspace: str) -> None:
    with pytest.raises(InvalidRequestError):
        pyro.exec_workspace(workspace, command="true", timeout_seconds=0)
    assert pyro.logs_workspace(workspace)["count"] == 0


def test_exec_workspace_rejects_an_unknown_secret(pyro: Pyro, workspace: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        pyro.exec_workspace(workspace, command="true", secret_env={"NOPE": "NOPE"})
    assert "NOPE" in caught.value.message


# Secrets never come back -----------------------------------------------------------------------


def test_secrets_never_appear_in_results(pyro: Pyro, tmp_path: Path) -> None:
    value = f"s3cr3t-{secrets.token_hex(12)}"
    file_value = f"f1le-s3cr3t-{secrets.token_hex(12)}"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(file_value)
    results: dict[str, Any] = {}

    results["create"] = ws = pyro.create_workspace(
        environment="debian:12",
        secrets=[
            {"name": "API_TOKEN", "value": value},
            {"name": "FILE_TOKEN", "file_path": str(secret_file)},
        ],
    )
    wid = ws["workspace_id"]
    assert sorted(ws["secrets"]) == ["API_TOKEN", "FILE_TOKEN"]

    results["exec"] = out = pyro.exec_workspace(
        wid,
        command="echo $API_TOKEN; echo $API_TOKEN >&2; echo $API_TOKEN > /workspace/leak.txt; "
        "echo $FILE_TOKEN",
        secret_env={"API_TOKEN": "API_TOKEN", "FILE_TOKEN": "FILE_TOKEN"},
    )
    assert out["exit_code"] == 0
    # The output was there, and was masked.
    assert out["stdout"] == "[REDACTED]\n[REDACTED]\n"
    assert out["stderr"] == "[REDACTED]\n"
    # The command really got both values (compared by digest, so they are not printed).
    results["exec_digest"] = digest = pyro.exec_workspace(
        wid,
        command='printf %s "$T" | sha256sum; printf %s "$F" | sha256sum',
        secret_env={"API_TOKEN": "T", "FILE_TOKEN": "F"},
    )
    assert digest["stdout"].split()[::2] == [
        hashlib.sha256(value.encode()).hexdigest(),
        hashlib.sha256(file_value.encode()).hexdigest(),
    ]

    results["open_shell"] = shell = pyro.open_shell(wid, secret_env={"API_TOKEN": "API_TOKEN"})
    sid = shell["shell_id"]
    results["write_shell"] = pyro.write_shell(wid, sid, input="echo shell:$API_TOKEN")
    for i in range(20):
        read = pyro.read_shell(wid, sid, plain=True, wait_for_idle_ms=250)
        results[f"read_shell_plain_{i}"] = read
        if "shell:[REDACTED]" in read["output"]:
            break
    assert "shell:[REDACTED]" in read["output"]
    results["read_shell_raw"] = pyro.read_shell(wid, sid)
    results["list_shells"] = pyro.list_shells(wid)
    results["close_shell"] = pyro.close_shell(wid, sid)

    results["start_service"] = pyro.start_service(
        wid,
        "leaky",
        command="echo svc:$API_TOKEN; echo svc:$API_TOKEN >&2; touch /tmp/leaky.ready; "
        "exec sleep 300",
        readiness={"type": "file", "path": "/tmp/leaky.ready"},
        secret_env={"API_TOKEN": "API_TOKEN"},
    )
    results["logs_service"] = logs = pyro.logs_service(wid, "leaky", all=True)
    assert logs["stdout"] == "svc:[REDACTED]\n"
    results["list_services"] = pyro.list_services(wid)
    results["status_service"] = pyro.status_service(wid, "leaky")
    results["stop_service"] = pyro.stop_service(wid, "leaky")

    results["status"] = pyro.status_workspace(wid)
    results["logs_workspace"] = pyro.logs_workspace(wid)
    results["diff"] = diff = pyro.diff_workspace(wid)
    assert [e["path"] for e in diff["entries"]] == ["leak.txt"]
    results["list_files"] = pyro.list_workspace_files(wid, recursive=True)
    results["read_leak"] = pyro.read_workspace_file(wid, "leak.txt")
    results["list_workspaces"] = pyro.list_workspaces()
    results["snapshot"] = pyro.create_snapshot(wid, "with-leak")
    results["list_snapshots"] = pyro.list_snapshots(wid)
    exported = tmp_path / "leak-export.txt"
    results["export"] = pyro.export_workspace(wid, "leak.txt", output_path=exported)
    # An export copies the file itself: the host gets the real content, by design.
    assert exported.read_text() == value + "\n"

    for call, result in results.items():
        text = json.dumps(result)
        assert value not in text, f"{call} returned the secret: {text}"
        assert file_value not in text, f"{call} returned the file secret: {text}"
    assert "[REDACTED]" in results["read_leak"]["content"]


# The classes -----------------------------------------------------------------------------------


def library_kinds() -> set[str]:
    """The kinds `Error::kind` in pyro-api returns: the string literals right of `=>` in its
    match (the agent's own codes on the left of the nested match are not kinds)."""
    source = ERROR_RS.read_text()
    start = source.index("pub fn kind(&self)")
    body = source[start : source.index("\n    }\n", start)]
    return set(re.findall(r'=>\s*"([a-z_]+)"', body))


def test_every_library_error_kind_has_a_class() -> None:
    kinds = library_kinds()
    # The parse found the match (a sample of what it must hold), and only its results.
    sample = {"invalid_request", "workspace_not_found", "invalid_path", "agent_refused", "not_pinned"}
    assert sample <= kinds
    assert "bad_path" not in kinds and "bad_archive" not in kinds
    for kind in sorted(kinds | {"path_not_allowed", "internal"}):
        assert kind in ERROR_CLASSES, f"no class for error kind {kind!r}"
        cls = ERROR_CLASSES[kind]
        assert issubclass(cls, PyroError)
        assert cls.kind == kind
        err = error_from({"kind": kind, "message": "m", "hint": "h"})
        assert type(err) is cls
        assert (err.kind, err.message, err.hint) == (kind, "m", "h")


def test_an_unknown_kind_gives_a_plain_pyro_error() -> None:
    err = error_from({"kind": "something_new", "message": "a new failure", "hint": "do this"})
    assert type(err) is PyroError
    assert err.kind == "something_new"
    assert err.message == "a new failure"
    assert err.hint == "do this"
    assert err.to_dict() == {
        "kind": "something_new",
        "message": "a new failure",
        "hint": "do this",
    }
    assert str(err) == "a new failure (hint: do this)"
    bare = error_from({})
    assert type(bare) is ERROR_CLASSES["internal"]
    assert bare.hint is None


# Hints speak the SDK's language ----------------------------------------------------------------

#: MCP tool names that are not SDK methods: an SDK user cannot call them.
MCP_ONLY_WORDS = [
    "workspace_list",
    "workspace_start",
    "workspace_reset",
    "workspace_diff",
    "workspace_file_read",
    "workspace_file_list",
    "shell_list",
    "service_list",
    "vm_list_environments",
    "profile",
]


def test_hints_name_sdk_calls_not_mcp_tools(pyro: Pyro, workspace: str) -> None:
    errors: list[PyroError] = []

    def catch(cls: type[PyroError], call: Callable[[], Any]) -> None:
        with pytest.raises(cls) as caught:
            call()
        errors.append(caught.value)

    catch(
        UnknownEnvironmentError,
        lambda: pyro.run_in_vm(environment="no-such-env", command="true"),
    )
    catch(NotFoundError, lambda: pyro.read_workspace_file(workspace, "missing.txt"))
    catch(NotFoundError, lambda: pyro.read_shell(workspace, "sh-999"))
    catch(NotFoundError, lambda: pyro.status_service(workspace, "no-such-service"))
    catch(PatchFailedError, lambda: pyro.apply_workspace_patch(workspace, patch="not a patch"))
    pyro.stop_workspace(workspace)
    catch(WorkspaceNotRunningError, lambda: pyro.exec_workspace(workspace, command="true"))
    pyro.delete_workspace(workspace)
    catch(WorkspaceNotFoundError, lambda: pyro.status_workspace(workspace))

    wrong = [
        f"{e.kind}: {e.hint!r}"
        for e in errors
        if e.hint and any(re.search(rf"\b{w}\b", e.hint) for w in MCP_ONLY_WORDS)
    ]
    assert not wrong, "hints worded for the MCP server:\n" + "\n".join(wrong)


def test_a_missing_host_path_is_not_blamed_on_allowed_roots(
    pyro: Pyro, workspace: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InvalidPathError) as caught:
        pyro.push_workspace_sync(workspace, missing)
    err = caught.value
    assert str(missing) in err.message
    # The SDK allows every host path; an MCP server's allowed roots are beside the point.
    assert not err.hint or ("allow-root" not in err.hint and "server" not in err.hint), err.hint
