"""The workspace story, end to end through the SDK on the container level: create (seeded, named,
labelled), inspect, change files, patch, diff, snapshot and reset, move files in and out, stop and
start, shells, services, delete; the context manager's cleanup; AsyncPyro's concurrent calls."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from pyro_mcp import AsyncPyro, Pyro
from pyro_mcp.errors import (
    NotFoundError,
    PatchFailedError,
    PyroError,
    WorkspaceNotFoundError,
    WorkspaceNotRunningError,
    WorkspaceNotStoppedError,
)


def unique(prefix: str = "pytest") -> str:
    """A name no other workspace on this host has (they share one state directory)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def seed_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "seed"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def ids(listing: dict[str, Any]) -> set[str]:
    return {w["workspace_id"] for w in listing["workspaces"]}


def read(pyro: Pyro, wid: str, path: str) -> str:
    out = pyro.read_workspace_file(wid, path)
    assert out["truncated"] is False
    return str(out["content"])


def shell_lines(pyro: Pyro, wid: str, sid: str, until: Callable[[list[str]], bool]) -> list[str]:
    """The shell's plain output as lines, read (waiting for it to go quiet) until `until` holds
    or a few reads have passed; the last read is returned either way for the caller to assert."""
    lines: list[str] = []
    for _ in range(20):
        out = pyro.read_shell(wid, sid, plain=True, wait_for_idle_ms=250)
        assert out["shell_id"] == sid
        lines = [line.rstrip("\r") for line in out["output"].split("\n")]
        if until(lines):
            break
    return lines


# Create, inspect, list, update -----------------------------------------------------------------


def test_create_seeded_named_labelled_then_status_list_and_update(
    pyro: Pyro, tmp_path: Path
) -> None:
    seed = seed_dir(tmp_path, {"README.md": "hello seed\n", "src/main.py": "print(1)\n"})
    name, team = unique(), unique("team")
    ws = pyro.create_workspace(
        environment="debian:12",
        seed_path=seed,
        name=name,
        labels={"team": team, "tier": "dev"},
    )
    wid = ws["workspace_id"]
    assert wid and ws["state"] == "running"
    assert ws["name"] == name
    assert ws["labels"] == {"team": team, "tier": "dev"}
    assert ws["environment"] == "debian:12"
    assert ws["isolation"] == "container"
    assert ws["seed"] == {"mode": "directory", "source": str(seed)}
    assert ws["workspace_path"] == "/workspace"

    # The seed is in /workspace.
    assert read(pyro, wid, "README.md") == "hello seed\n"
    assert read(pyro, wid, "src/main.py") == "print(1)\n"

    status = pyro.status_workspace(wid)
    assert status["workspace_id"] == wid
    assert status["state"] == "running"
    assert status["name"] == name
    assert status["labels"] == {"team": team, "tier": "dev"}
    # A name works wherever an id does.
    assert pyro.status_workspace(name)["workspace_id"] == wid

    assert wid in ids(pyro.list_workspaces())
    by_label = pyro.list_workspaces(labels={"team": team})
    assert by_label["count"] == 1 and ids(by_label) == {wid}
    assert pyro.list_workspaces(labels={"team": team, "tier": "dev"})["count"] == 1
    assert pyro.list_workspaces(labels={"team": team, "tier": "prod"})["count"] == 0
    assert wid in ids(pyro.list_workspaces(state="running"))
    assert wid not in ids(pyro.list_workspaces(state="stopped"))

    new_name = unique()
    updated = pyro.update_workspace(
        wid, name=new_name, labels={"owner": "me"}, clear_labels=["tier"]
    )
    assert updated["workspace_id"] == wid
    assert updated["name"] == new_name
    # New labels are added to the old ones; cleared ones go.
    assert updated["labels"] == {"team": team, "owner": "me"}
    assert pyro.status_workspace(wid)["labels"] == {"team": team, "owner": "me"}
    assert pyro.status_workspace(new_name)["workspace_id"] == wid
    with pytest.raises(WorkspaceNotFoundError):
        pyro.status_workspace(name)

    cleared = pyro.update_workspace(wid, clear_name=True, clear_labels=["team", "owner"])
    assert cleared["name"] is None
    assert cleared["labels"] == {}
    assert pyro.list_workspaces(labels={"team": team})["count"] == 0


# Commands ----------------------------------------------------------------------------------


def test_exec_results_cwd_and_env(pyro: Pyro, workspace: str) -> None:
    ok = pyro.exec_workspace(workspace, command="echo hello; echo oops >&2")
    assert ok["exit_code"] == 0
    assert ok["stdout"] == "hello\n"
    assert ok["stderr"] == "oops\n"
    assert ok["timed_out"] is False
    assert ok["cwd"] == "/workspace"
    assert ok["workspace_id"] == workspace

    # A failing command is a result, not an exception.
    failed = pyro.exec_workspace(workspace, command="echo partial; exit 7")
    assert failed["exit_code"] == 7
    assert failed["stdout"] == "partial\n"
    assert failed["timed_out"] is False

    there = pyro.exec_workspace(
        workspace,
        command="pwd; echo $GREETING-$OTHER",
        cwd="/tmp",
        env={"GREETING": "hi", "OTHER": "there"},
    )
    assert there["exit_code"] == 0
    assert there["stdout"] == "/tmp\nhi-there\n"
    assert there["cwd"] == "/tmp"

    # Files persist between calls; each call is a fresh process (no shell state carried).
    pyro.exec_workspace(workspace, command="echo kept > kept.txt; export GONE=1")
    again = pyro.exec_workspace(workspace, command="cat kept.txt; echo \"[$GONE]\"")
    assert again["stdout"] == "kept\n[]\n"

    fed = pyro.exec_workspace(workspace, command="tr a-z A-Z", stdin="shout\n")
    assert fed["stdout"] == "SHOUT\n"

    # The sequence numbers count the workspace's commands.
    assert again["sequence"] > ok["sequence"]


def test_files_write_read_list(pyro: Pyro, workspace: str) -> None:
    wrote = pyro.write_workspace_file(workspace, "docs/deep/notes.md", text="line 1\nline 2\n")
    assert wrote["bytes_written"] == len("line 1\nline 2\n")
    pyro.write_workspace_file(workspace, "top.txt", text="top\n")

    got = pyro.read_workspace_file(workspace, "docs/deep/notes.md")
    assert got["content"] == "line 1\nline 2\n"
    assert got["size_bytes"] == 14
    assert got["truncated"] is False
    # An absolute path inside /workspace is the same file.
    assert read(pyro, workspace, "/workspace/docs/deep/notes.md") == "line 1\nline 2\n"
    # What exec sees is what the file calls wrote.
    assert pyro.exec_workspace(workspace, command="cat top.txt")["stdout"] == "top\n"

    part = pyro.read_workspace_file(workspace, "docs/deep/notes.md", max_bytes=4)
    assert part["content"] == "line"
    assert part["truncated"] is True

    top = pyro.list_workspace_files(workspace)
    assert {(e["path"], e["kind"]) for e in top["entries"]} == {
        ("docs", "dir"),
        ("top.txt", "file"),
    }
    assert top["recursive"] is False

    everything = pyro.list_workspace_files(workspace, recursive=True)
    kinds = {e["path"]: e["kind"] for e in everything["entries"]}
    assert kinds == {
        "docs": "dir",
        "docs/deep": "dir",
        "docs/deep/notes.md": "file",
        "top.txt": "file",
    }
    sizes = {e["path"]: e["size"] for e in everything["entries"] if e["kind"] == "file"}
    assert sizes == {"docs/deep/notes.md": 14, "top.txt": 4}

    sub = pyro.list_workspace_files(workspace, path="docs", recursive=True)
    assert {e["path"] for e in sub["entries"]} == {"deep", "deep/notes.md"}

    with pytest.raises(NotFoundError):
        pyro.read_workspace_file(workspace, "no/such/file.txt")


# Patches and diffs ---------------------------------------------------------------------------

GOOD_PATCH = """\
--- a/README.md
+++ b/README.md
@@ -1,2 +1,3 @@
 hello seed
+a patched line
 last line
--- /dev/null
+++ b/notes/new.txt
@@ -0,0 +1,2 @@
+first
+second
"""

# The first file's hunk applies; the second's context is not there, so nothing may change.
BAD_PATCH = """\
--- a/README.md
+++ b/README.md
@@ -1,3 +1,4 @@
 hello seed
 a patched line
+would be added
 last line
--- a/notes/new.txt
+++ b/notes/new.txt
@@ -1,2 +1,2 @@
-this line is not in the file
+x
 second
"""


def test_patch_applies_and_a_failing_patch_changes_nothing(pyro: Pyro, tmp_path: Path) -> None:
    seed = seed_dir(tmp_path, {"README.md": "hello seed\nlast line\n"})
    wid = pyro.create_workspace(environment="debian:12", seed_path=seed)["workspace_id"]

    applied = pyro.apply_workspace_patch(wid, patch=GOOD_PATCH)
    assert applied["changed"] is True
    assert {(e["path"], e["status"]) for e in applied["entries"]} == {
        ("README.md", "modified"),
        ("notes/new.txt", "added"),
    }
    assert read(pyro, wid, "README.md") == "hello seed\na patched line\nlast line\n"
    assert read(pyro, wid, "notes/new.txt") == "first\nsecond\n"

    before = pyro.list_workspace_files(wid, recursive=True)["entries"]
    with pytest.raises(PatchFailedError) as caught:
        pyro.apply_workspace_patch(wid, patch=BAD_PATCH)
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.kind == "patch_failed"
    assert "notes/new.txt" in err.message
    assert err.hint
    # All or nothing: README.md's hunk, which would apply, was not applied either.
    assert read(pyro, wid, "README.md") == "hello seed\na patched line\nlast line\n"
    assert read(pyro, wid, "notes/new.txt") == "first\nsecond\n"
    assert pyro.list_workspace_files(wid, recursive=True)["entries"] == before

    with pytest.raises(PatchFailedError):
        pyro.apply_workspace_patch(wid, patch="this is not a unified diff\n")


def test_diff_after_changes(pyro: Pyro, tmp_path: Path) -> None:
    seed = seed_dir(
        tmp_path, {"README.md": "hello seed\n", "gone.txt": "bye\n", "same.txt": "same\n"}
    )
    wid = pyro.create_workspace(environment="debian:12", seed_path=seed)["workspace_id"]

    clean = pyro.diff_workspace(wid)
    assert clean["changed"] is False
    assert clean["summary"] == {"added": 0, "deleted": 0, "modified": 0, "total": 0}
    assert clean["entries"] == []

    pyro.write_workspace_file(wid, "README.md", text="hello seed\nmore\n")
    pyro.write_workspace_file(wid, "added.txt", text="new\n")
    pyro.exec_workspace(wid, command="rm gone.txt")

    diff = pyro.diff_workspace(wid)
    assert diff["changed"] is True
    assert diff["summary"] == {"added": 1, "deleted": 1, "modified": 1, "total": 3}
    assert {(e["path"], e["status"]) for e in diff["entries"]} == {
        ("README.md", "modified"),
        ("added.txt", "added"),
        ("gone.txt", "deleted"),
    }
    assert diff["truncated"] is False
    patch = diff["patch"]
    assert "+more" in patch
    assert "+new" in patch
    assert "-bye" in patch
    assert "same.txt" not in patch


# Snapshots -----------------------------------------------------------------------------------


def test_snapshot_reset_and_delete(pyro: Pyro, workspace: str) -> None:
    pyro.write_workspace_file(workspace, "a.txt", text="v1\n")
    made = pyro.create_snapshot(workspace, "s1")
    assert made["snapshot"]["name"] == "s1"

    listed = pyro.list_snapshots(workspace)
    names = [s["name"] for s in listed["snapshots"]]
    assert names == ["baseline", "s1"]
    assert listed["count"] == 2

    pyro.write_workspace_file(workspace, "a.txt", text="v2\n")
    pyro.write_workspace_file(workspace, "b.txt", text="later\n")
    reset = pyro.reset_workspace(workspace, snapshot="s1")
    assert reset["workspace_id"] == workspace
    assert reset["state"] == "running"
    assert read(pyro, workspace, "a.txt") == "v1\n"
    with pytest.raises(NotFoundError):
        pyro.read_workspace_file(workspace, "b.txt")

    deleted = pyro.delete_snapshot(workspace, "s1")
    assert deleted["deleted"] is True
    assert [s["name"] for s in pyro.list_snapshots(workspace)["snapshots"]] == ["baseline"]

    # The default reset goes back to the baseline: the empty workspace.
    pyro.reset_workspace(workspace)
    assert pyro.list_workspace_files(workspace)["entries"] == []


# Files in and out ----------------------------------------------------------------------------


def test_export_a_directory_to_the_host(
    pyro: Pyro, workspace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyro.exec_workspace(
        workspace,
        command="mkdir -p out/sub && echo one > out/one.txt && echo two > out/sub/two.txt",
    )
    dest = tmp_path / "exported"
    result = pyro.export_workspace(workspace, "out", output_path=dest)
    assert result["artifact_type"] == "directory"
    assert result["output_path"] == str(dest)
    assert (dest / "one.txt").read_text() == "one\n"
    assert (dest / "sub" / "two.txt").read_text() == "two\n"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "one.txt",
        "sub",
        "sub/two.txt",
    ]

    # A single file, to a path relative to the working directory at call time.
    monkeypatch.chdir(tmp_path)
    single = pyro.export_workspace(workspace, "out/one.txt", output_path="one-copy.txt")
    assert single["artifact_type"] == "file"
    assert single["output_path"] == str(tmp_path / "one-copy.txt")
    assert (tmp_path / "one-copy.txt").read_text() == "one\n"


def test_push_sync_with_a_relative_dest(pyro: Pyro, workspace: str, tmp_path: Path) -> None:
    host = tmp_path / "changes"
    (host / "pkg").mkdir(parents=True)
    (host / "note.txt").write_text("a note from the host\n")
    (host / "pkg" / "mod.py").write_text("X = 1\n")

    pushed = pyro.push_workspace_sync(workspace, host, dest="src")
    assert pushed["workspace_id"] == workspace
    assert pushed["source"] == str(host)

    # A relative dest is under /workspace.
    assert read(pyro, workspace, "src/note.txt") == "a note from the host\n"
    out = pyro.exec_workspace(workspace, command="cat /workspace/src/pkg/mod.py")
    assert out["stdout"] == "X = 1\n"
    listed = pyro.list_workspace_files(workspace, path="src", recursive=True)
    assert {e["path"] for e in listed["entries"]} == {"note.txt", "pkg", "pkg/mod.py"}


def test_logs_workspace(pyro: Pyro, workspace: str) -> None:
    pyro.exec_workspace(workspace, command="echo first")
    pyro.exec_workspace(workspace, command="exit 3", cwd="/tmp")
    logs = pyro.logs_workspace(workspace)
    assert logs["workspace_id"] == workspace
    assert logs["count"] == 2
    first, second = logs["entries"]
    assert first["command"] == "echo first"
    assert first["exit_code"] == 0
    assert first["stdout_bytes"] == len("first\n")
    assert second["command"] == "exit 3"
    assert second["exit_code"] == 3
    assert second["cwd"] == "/tmp"
    assert first["seq"] < second["seq"]
    assert pyro.status_workspace(workspace)["command_count"] == 2


def test_stop_and_start_keep_files(pyro: Pyro, workspace: str) -> None:
    pyro.write_workspace_file(workspace, "keep/me.txt", text="still here\n")
    stopped = pyro.stop_workspace(workspace)
    assert stopped["state"] == "stopped"
    assert pyro.status_workspace(workspace)["state"] == "stopped"
    with pytest.raises(WorkspaceNotRunningError) as caught:
        pyro.exec_workspace(workspace, command="true")
    assert isinstance(caught.value, RuntimeError)

    started = pyro.start_workspace(workspace)
    assert started["state"] == "running"
    assert read(pyro, workspace, "keep/me.txt") == "still here\n"
    assert pyro.exec_workspace(workspace, command="cat keep/me.txt")["stdout"] == "still here\n"


def test_a_stopped_workspaces_disk_is_read_offline(
    pyro: Pyro, workspace: str, tmp_path: Path
) -> None:
    pyro.write_workspace_file(workspace, "src/app.py", text="print('hi')\n")
    pyro.exec_workspace(workspace, command="rm /etc/issue && ln -s src/app.py main")
    with pytest.raises(WorkspaceNotStoppedError) as caught:
        pyro.list_workspace_disk(workspace)
    assert caught.value.hint and "stop_workspace()" in caught.value.hint, caught.value.hint
    pyro.stop_workspace(workspace)

    listing = pyro.list_workspace_disk(workspace, recursive=True)
    by_path = {e["path"]: e for e in listing["entries"]}
    assert by_path["src/app.py"]["kind"] == "file"
    assert by_path["main"]["link_target"] == "src/app.py"
    got = pyro.read_workspace_disk(workspace, "main")
    assert got["content"] == "print('hi')\n" and got["path"] == "/workspace/main"
    assert "bookworm" in pyro.read_workspace_disk(workspace, "/etc/os-release")["content"]
    with pytest.raises(NotFoundError):
        pyro.read_workspace_disk(workspace, "/etc/issue")

    image = tmp_path / "disk.ext4"
    exported = pyro.export_workspace_disk(workspace, output_path=image)
    assert exported["disk_format"] == "ext4"
    assert image.stat().st_size == exported["bytes_written"]
    # Offline: the workspace is still stopped, and starts with its files.
    assert pyro.status_workspace(workspace)["state"] == "stopped"
    pyro.start_workspace(workspace)
    assert read(pyro, workspace, "src/app.py") == "print('hi')\n"


# Shells and services -------------------------------------------------------------------------


def test_shell_keeps_state_signals_and_closes(pyro: Pyro, workspace: str) -> None:
    opened = pyro.open_shell(workspace)
    sid = opened["shell_id"]
    assert opened["state"] == "running"
    assert sid in {s["shell_id"] for s in pyro.list_shells(workspace)["shells"]}

    pyro.write_shell(workspace, sid, input="export X=42")
    pyro.write_shell(workspace, sid, input="echo $X")
    # "42" alone on a line is the echo's output (the typed "export X=42" is not alone).
    lines = shell_lines(pyro, workspace, sid, lambda ls: "42" in ls)
    assert "42" in lines, lines

    # INT stops the foreground job; the shell lives on, its state kept.
    pyro.write_shell(workspace, sid, input="sleep 300")
    signalled = pyro.signal_shell(workspace, sid, signal_name="INT")
    assert signalled["state"] == "running"
    pyro.write_shell(workspace, sid, input="echo after-$X")
    lines = shell_lines(pyro, workspace, sid, lambda ls: "after-42" in ls)
    assert "after-42" in lines, lines

    closed = pyro.close_shell(workspace, sid)
    assert closed["shell_id"] == sid
    assert closed["state"] == "exited"
    assert sid not in {s["shell_id"] for s in pyro.list_shells(workspace)["shells"]}
    with pytest.raises(NotFoundError):
        pyro.read_shell(workspace, sid)


def test_service_start_list_status_logs_stop(pyro: Pyro, workspace: str) -> None:
    started = pyro.start_service(
        workspace,
        "web",
        command="echo service-up; touch /tmp/web.ready; exec sleep 300",
        readiness={"type": "file", "path": "/tmp/web.ready"},
    )
    assert started["name"] == "web"
    assert started["state"] == "ready"

    listed = pyro.list_services(workspace)
    assert listed["count"] == 1
    assert [(s["name"], s["state"]) for s in listed["services"]] == [("web", "ready")]

    status = pyro.status_service(workspace, "web")
    assert status["state"] == "ready"
    assert status["command"].startswith("echo service-up")

    logs = pyro.logs_service(workspace, "web")
    assert logs["stdout"] == "service-up\n"
    assert logs["name"] == "web"

    stopped = pyro.stop_service(workspace, "web")
    assert stopped["state"] == "stopped"
    assert pyro.status_service(workspace, "web")["state"] == "stopped"

    with pytest.raises(NotFoundError):
        pyro.status_service(workspace, "no-such-service")


# Deleting ------------------------------------------------------------------------------------


def test_delete_then_status_raises_workspace_not_found(pyro: Pyro) -> None:
    wid = pyro.create_workspace(environment="debian:12")["workspace_id"]
    deleted = pyro.delete_workspace(wid)
    assert deleted["workspace_id"] == wid
    assert deleted["deleted"] is True
    assert wid not in ids(pyro.list_workspaces())

    with pytest.raises(WorkspaceNotFoundError) as caught:
        pyro.status_workspace(wid)
    err = caught.value
    assert isinstance(err, LookupError)
    assert isinstance(err, PyroError)
    assert err.kind == "workspace_not_found"
    assert wid in err.message
    assert err.hint


@pytest.mark.usefixtures("containers")
def test_the_context_manager_deletes_what_it_created() -> None:
    other = Pyro()
    with Pyro(isolation="container") as p:
        kept_a = p.create_workspace(environment="debian:12")["workspace_id"]
        kept_b = p.create_workspace(environment="debian:12", name=unique())["workspace_id"]
        # Deleted by this client inside the block: nothing left to do at exit.
        mine = p.create_workspace(environment="debian:12")["workspace_id"]
        p.delete_workspace(mine)
        # Deleted behind this client's back: exit must not fail on it.
        theirs = p.create_workspace(environment="debian:12")["workspace_id"]
        other.delete_workspace(theirs)
        present = ids(other.list_workspaces())
        assert {kept_a, kept_b} <= present
        assert mine not in present and theirs not in present
    after = ids(other.list_workspaces())
    assert not {kept_a, kept_b, mine, theirs} & after
    for wid in (kept_a, kept_b):
        with pytest.raises(WorkspaceNotFoundError):
            other.status_workspace(wid)


@pytest.mark.usefixtures("containers")
def test_async_pyro_gathers_concurrent_calls() -> None:
    async def story() -> tuple[str, list[Any]]:
        async with AsyncPyro(isolation="container") as p:
            ws = await p.create_workspace(environment="debian:12")
            wid = ws["workspace_id"]
            results = await asyncio.gather(
                *(
                    p.exec_workspace(wid, command=f"sleep 1; echo job-{i}")
                    for i in range(3)
                )
            )
            assert (await p.status_workspace(wid))["command_count"] == 3
            return wid, list(results)

    wid, results = asyncio.run(story())
    assert [r["stdout"] for r in results] == ["job-0\n", "job-1\n", "job-2\n"]
    assert all(r["exit_code"] == 0 and r["timed_out"] is False for r in results)
    assert len({r["sequence"] for r in results}) == 3
    # `async with` deleted the workspace on exit.
    with pytest.raises(WorkspaceNotFoundError):
        Pyro().status_workspace(wid)
