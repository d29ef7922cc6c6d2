"""The `pyro` command the package installs: the same CLI, carrying its agent, with nothing else
to install; `uvx --from <wheel>` runs it too; and `pip install crates/pyro-py` builds the
package from source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYRO, REPO, run_pyro

import pyro_mcp


def test_pyro_is_on_the_environments_path_with_the_packages_version() -> None:
    assert PYRO.exists(), f"the package did not install {PYRO}"
    out = run_pyro("--version")
    assert out.stdout.strip() == f"pyro {pyro_mcp.__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "pyro_mcp", "--version"], capture_output=True, text=True
    )
    assert out.stdout.strip() == f"pyro {pyro_mcp.__version__}", out.stderr


def test_usage_errors_are_the_clis() -> None:
    out = run_pyro("run", check=False)
    assert out.returncode == 2
    assert "Usage: pyro run" in out.stderr
    out = run_pyro("no-such-command", "--json", check=False)
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"]["kind"] == "invalid_request"


@pytest.mark.usefixtures("containers")
def test_pyro_run_needs_nothing_but_the_package() -> None:
    # No PYRO_AGENT, no checkout on PATH: the agent comes from the extension module.
    env = {k: v for k, v in os.environ.items() if k != "PYRO_AGENT"}
    env["PATH"] = f"{PYRO.parent}:/usr/sbin:/usr/bin:/sbin:/bin"
    out = subprocess.run(
        ["pyro", "run", "debian:12", "--isolation", "container", "--", "git", "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout
    out = run_pyro("run", "debian:12", "--isolation", "container", "--", "sh", "-c", "exit 7", check=False)
    assert out.returncode == 7


def test_host_entries_start_the_console_script_not_the_interpreter() -> None:
    out = run_pyro("host", "print-config", "claude-code", "--isolation", "container")
    assert str(PYRO) in out.stdout, out.stdout
    assert "python" not in out.stdout.lower(), out.stdout


@pytest.mark.usefixtures("containers")
def test_uvx_from_the_wheel(tmp_path: Path) -> None:
    wheel = os.environ.get("PYRO_TEST_WHEEL_PATH")
    tools = os.environ.get("PYRO_TEST_TOOLS_BIN")
    if not wheel or not tools or not Path(tools, "uvx").exists():
        pytest.skip("needs the wheel and uv (scripts/test-python provides both)")
    out = subprocess.run(
        [
            str(Path(tools, "uvx")),
            "--from",
            wheel,
            "pyro",
            "run",
            "debian:12",
            "--isolation",
            "container",
            "--",
            "git",
            "--version",
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
            "UV_TOOL_DIR": str(tmp_path / "uv-tools"),
            "UV_PYTHON_DOWNLOADS": "never",
        },
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout


def test_pip_install_of_the_source_directory(tmp_path: Path) -> None:
    if os.environ.get("PYRO_TEST_PIP_SOURCE") == "0":
        pytest.skip("PYRO_TEST_PIP_SOURCE=0")
    if shutil.which("cargo") is None:
        pytest.skip("building from source needs Rust (cargo) on PATH")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    out = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(REPO / "crates" / "pyro-py")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pyro_mcp; print(pyro_mcp.__version__)"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == pyro_mcp.__version__, out.stderr
    out = subprocess.run([str(venv / "bin" / "pyro"), "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"pyro {pyro_mcp.__version__}"


@pytest.mark.usefixtures("containers")
def test_ctrl_c_stops_pyro_run_as_the_binary_does(tmp_path: Path) -> None:
    import signal
    import time

    marker = "64.321"
    proc = subprocess.Popen(
        [str(PYRO), "run", "debian:12", "--isolation", "container", "--", "sleep", marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYRO_HOME": str(tmp_path)},
    )
    deadline = time.monotonic() + 60
    # The sandboxed command itself (not pyro, whose own command line names it too).
    while not subprocess.run(
        ["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True
    ).stdout:
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list((tmp_path / "sandboxes").iterdir()) == []
