"""Chaos through the SDK: a process making random SDK calls is SIGKILLed at random moments;
then `pyro gc`, every surviving workspace must work (a stopped one after start) or be broken
and deletable, and once they are deleted nothing may be left in the state directory or the
database. (The CLI and MCP server campaign, with the full count of host traces, is
crates/pyro-cli/tests/chaos.rs.) `PYRO_CHAOS_SDK_TRIALS` sets the number of trials (default
8); `PYRO_CHAOS_SEED` replays a run."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_pyro
from pyro_mcp import Pyro, errors

pytestmark = pytest.mark.usefixtures("containers")

CHILD = textwrap.dedent(
    """
    import sys
    from pyro_mcp import Pyro
    home, op, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pyro = Pyro(isolation="container", base_dir=home)
    ids = [w["workspace_id"] for w in pyro.list_workspaces()["workspaces"]
           if w["state"] == "running"]
    ws = ids[n % len(ids)] if ids else None
    if op == "create" or ws is None:
        pyro.create_workspace(environment="debian:12")
    elif op == "run":
        pyro.run_in_vm(environment="debian:12", command="echo hi; sleep 0.2")
    elif op == "exec":
        pyro.exec_workspace(ws, command=f"echo {n} >> log; sleep 0.2")
    elif op == "snapshot":
        pyro.create_snapshot(ws, f"s{n}")
    elif op == "reset":
        pyro.reset_workspace(ws)
    elif op == "service":
        pyro.start_service(ws, f"svc{n}", command="sleep 1000")
    elif op == "shell":
        pyro.open_shell(ws)
    elif op == "stop":
        pyro.stop_workspace(ws)
    """
)
OPS = ["create", "create", "run", "exec", "snapshot", "reset", "service", "shell", "stop"]


def test_killing_sdk_processes_leaves_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("PYRO_CHAOS_SEED", time.time_ns()))
    print(f"chaos sdk: seed {seed}")
    rng = random.Random(seed)
    home = tmp_path / "home"
    trials = int(os.environ.get("PYRO_CHAOS_SDK_TRIALS", "8"))
    kills = 0
    for _ in range(trials):
        op = rng.choice(OPS)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home), op, str(rng.randrange(1 << 30))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + rng.uniform(0, 0.6)
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    print(f"chaos sdk: {trials} trials, {kills} kills")

    run_pyro("gc", "--json", env={"PYRO_HOME": str(home)})
    pyro = Pyro(isolation="container", base_dir=home)
    for w in pyro.list_workspaces()["workspaces"]:
        wid, state = w["workspace_id"], w["state"]
        if state == "stopped":
            pyro.start_workspace(wid)
            state = "running"
        if state == "running":
            assert pyro.exec_workspace(wid, command="true")["exit_code"] == 0, wid
        elif state == "broken":
            with pytest.raises(errors.WorkspaceNotRunningError) as e:
                pyro.exec_workspace(wid, command="true")
            assert e.value.hint and "reset" in e.value.hint
        else:
            raise AssertionError(f"{wid} left {state!r} after gc")
        pyro.delete_workspace(wid)

    run_pyro("gc", "--json", env={"PYRO_HOME": str(home)})
    left = sorted(p.name for p in (home / "sandboxes").iterdir())
    assert left == [], f"sandbox directories left: {left}"
    with sqlite3.connect(f"file:{home / 'pyro.db'}?mode=ro", uri=True) as db:
        for table in ["sandboxes", "workspaces"]:
            rows = db.execute(f"SELECT id FROM {table}").fetchall()
            assert rows == [], f"{table} rows left: {rows}"
