"""pyro: run commands for coding agents in isolated, disposable Linux sandboxes.

The import name is the seed's (``pyro_mcp``), so its code runs unchanged::

    from pyro_mcp import Pyro

    pyro = Pyro()
    result = pyro.run_in_vm(environment="debian:12", command="git --version")
    print(result["stdout"])

:class:`Pyro` blocks, :class:`AsyncPyro` is the same for asyncio; errors are the classes in
:mod:`pyro_mcp.errors`. The package also installs the ``pyro`` command.
"""

from typing import NoReturn

from . import errors
from ._native import __version__
from .errors import PyroError, UnsupportedError
from .sdk import AsyncPyro, Pyro

__all__ = ["Pyro", "AsyncPyro", "PyroError", "errors", "create_server", "__version__"]


def create_server(*, profile: str = "workspace-full") -> NoReturn:
    """The seed's in-process FastMCP server does not exist here: pyro's MCP server is the
    ``pyro mcp serve`` command (stdio, or ``--http ADDR``). Raises
    :class:`~pyro_mcp.errors.UnsupportedError` saying so."""
    raise UnsupportedError(
        "create_server() (an in-process FastMCP server) is not available in pyro",
        f"run `pyro mcp serve --profile {profile}` (the `pyro` command this package installs)",
    )
