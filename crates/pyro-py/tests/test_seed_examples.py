"""The seed README's Python examples, run verbatim (seed_examples/ holds their text, checked
against the README itself), and type-checked with mypy --strict against the stubs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, SEED_README

EXAMPLE_NAMES = ["run_in_vm", "vm_lifecycle", "environments", "workspace"]


def run_example(name: str, cwd: Path, isolation: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYRO_ISOLATION": isolation},
        timeout=600,
    )


def test_the_examples_are_the_seed_readmes_text() -> None:
    if not SEED_README.exists():
        pytest.skip(f"the seed README is not at {SEED_README} (it lives in ../shared)")
    readme = SEED_README.read_text()
    for name in EXAMPLE_NAMES:
        text = (EXAMPLES / f"{name}.py").read_text()
        assert text in readme, f"{name}.py is not verbatim from the seed README"


def test_the_examples_type_check_with_mypy_strict() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(EXAMPLES)],
        capture_output=True,
        text=True,
        # Outside the repository, so that mypy reads the installed package and its stubs.
        cwd="/",
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["run_in_vm", "vm_lifecycle"])
@pytest.mark.usefixtures("containers")
def test_git_version_examples(name: str, tmp_path: Path) -> None:
    out = run_example(name, tmp_path, "container")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout


@pytest.mark.usefixtures("vms")
def test_run_in_vm_on_vm_emulated(tmp_path: Path) -> None:
    out = run_example("run_in_vm", tmp_path, "vm-emulated")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout


@pytest.mark.usefixtures("containers")
def test_environments(tmp_path: Path) -> None:
    out = run_example("environments", tmp_path, "container")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert "debian:12" in lines[0] and "debian:12" in lines[1], out.stdout


@pytest.mark.usefixtures("containers")
def test_workspace(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README").write_text("seeded\n")
    (tmp_path / "changes").mkdir()
    (tmp_path / "changes" / "note.txt").write_text("a note from the host\n")
    out = run_example("workspace", tmp_path, "container")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "a note from the host\n"
