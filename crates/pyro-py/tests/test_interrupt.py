"""Interrupting a call cleans up as the CLI does: Ctrl-C (KeyboardInterrupt) during a one-shot
run removes its sandbox, during a workspace command stops the command and keeps the
workspace; cancelling an asyncio task does the same, and a cancelled create leaves nothing.

Each test uses its own PYRO_HOME (``base_dir``) and looks there, before any other pyro opens
it (opening one sweeps up after dead processes): no sandbox directory and no sandbox record
left means the interrupted call cleaned up after itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from pyro_mcp import AsyncPyro, Pyro

pytestmark = pytest.mark.usefixtures("containers")


def child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def processes_running(command: str) -> list[str]:
    """The processes whose whole command line is `command` (test-unique): the sandboxed
    command itself, not the test's own processes that name it."""
    out = subprocess.run(["pgrep", "-af", f"^{command}$"], capture_output=True, text=True)
    return out.stdout.splitlines()


def wait_for_process(command: str) -> None:
    deadline = time.monotonic() + 60
    while not processes_running(command):
        assert time.monotonic() < deadline, f"{command!r} never started"
        time.sleep(0.1)


def nothing_left(home: Path) -> None:
    dirs = sorted(p.name for p in (home / "sandboxes").iterdir())
    assert dirs == [], f"sandbox directories left: {dirs}"
    with sqlite3.connect(f"file:{home / 'pyro.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, kind, state FROM sandboxes").fetchall()
    assert rows == [], f"sandbox records left: {rows}"


def test_ctrl_c_during_run_in_vm_removes_the_sandbox(tmp_path: Path) -> None:
    marker = f"{61 + uuid.uuid4().int % 1000 / 1000:.3f}"
    proc = child(
        f"""
        from pyro_mcp import Pyro
        pyro = Pyro(isolation="container", base_dir={str(tmp_path)!r})
        print("calling", flush=True)
        try:
            pyro.run_in_vm(environment="debian:12", command="sleep {marker}", timeout_seconds=120)
            print("returned", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    wait_for_line(proc, "calling")
    wait_for_process(f"sleep {marker}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "interrupted" in out, out + err
    assert proc.returncode == 0, err
    assert processes_running(f"sleep {marker}") == []
    nothing_left(tmp_path)


def test_ctrl_c_during_exec_workspace_stops_the_command_and_keeps_the_workspace(
    tmp_path: Path,
) -> None:
    marker = f"{62 + uuid.uuid4().int % 1000 / 1000:.3f}"
    proc = child(
        f"""
        import json
        from pyro_mcp import Pyro
        pyro = Pyro(isolation="container", base_dir={str(tmp_path)!r})
        ws = pyro.create_workspace(environment="debian:12")["workspace_id"]
        print("workspace", ws, flush=True)
        try:
            pyro.exec_workspace(ws, command="sleep {marker}; touch /workspace/finished",
                                timeout_seconds=120)
            print("returned", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("logs", json.dumps(pyro.logs_workspace(ws)), flush=True)
        print("status", json.dumps(pyro.status_workspace(ws)), flush=True)
        """
    )
    ws = wait_for_line(proc, "workspace ")
    wait_for_process(f"sleep {marker}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "interrupted" in out, out + err
    lines = {l.split(" ", 1)[0]: l.split(" ", 1)[1] for l in out.splitlines() if " " in l}
    logs = json.loads(lines["logs"])
    assert logs["entries"][-1]["interrupted"] is True, logs
    assert json.loads(lines["status"])["state"] == "running"
    assert processes_running(f"sleep {marker}") == []
    pyro = Pyro(isolation="container", base_dir=tmp_path)
    assert pyro.list_workspace_files(ws)["entries"] == [] or all(
        not e["path"].endswith("/finished") for e in pyro.list_workspace_files(ws)["entries"]
    )
    pyro.delete_workspace(ws)
    nothing_left(tmp_path)


def test_cancelling_an_asyncio_run_removes_the_sandbox(tmp_path: Path) -> None:
    marker = f"{63 + uuid.uuid4().int % 1000 / 1000:.3f}"

    async def scenario() -> None:
        pyro = AsyncPyro(isolation="container", base_dir=tmp_path)
        task = asyncio.create_task(
            pyro.run_in_vm(
                environment="debian:12", command=f"sleep {marker}", timeout_seconds=120
            )
        )
        deadline = time.monotonic() + 60
        while not processes_running(f"sleep {marker}"):
            assert time.monotonic() < deadline, "the command never started"
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert processes_running(f"sleep {marker}") == []
    nothing_left(tmp_path)


def test_a_cancelled_create_leaves_no_workspace(tmp_path: Path) -> None:
    async def scenario() -> None:
        pyro = AsyncPyro(isolation="container", base_dir=tmp_path)
        task = asyncio.create_task(pyro.create_workspace(environment="debian:12"))
        # Long enough for the call to start, far too short for a create to finish.
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await pyro.list_workspaces())["count"] == 0

    asyncio.run(scenario())
    nothing_left(tmp_path)


def test_a_long_call_releases_the_gil(tmp_path: Path) -> None:
    import threading

    pyro = Pyro(isolation="container", base_dir=tmp_path)
    done = threading.Event()
    result: dict[str, object] = {}

    def call() -> None:
        result.update(pyro.run_in_vm(environment="debian:12", command="sleep 2"))
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    # Python keeps running in this thread while the call is in flight.
    spins = 0
    while not done.is_set():
        spins += 1
        sum(range(1000))
    worker.join()
    assert result["exit_code"] == 0
    assert spins > 100, f"the main thread ran only {spins} times during the call"


def test_a_forked_child_gets_its_own_client(tmp_path: Path) -> None:
    # multiprocessing forks by default on Linux: a Pyro made before the fork must work in the
    # child (which cannot use the parent's runtime threads) and still in the parent.
    pyro = Pyro(isolation="container", base_dir=tmp_path)
    assert pyro.run_in_vm(environment="debian:12", command="echo parent")["stdout"] == "parent\n"
    pid = os.fork()
    if pid == 0:
        try:
            r = pyro.run_in_vm(environment="debian:12", command="echo child")
            os._exit(0 if r["stdout"] == "child\n" else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pyro.run_in_vm(environment="debian:12", command="echo again")["stdout"] == "again\n"
