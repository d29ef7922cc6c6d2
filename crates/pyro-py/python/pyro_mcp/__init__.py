"""pyro: run commands for coding agents in isolated, disposable Linux sandboxes.

The import name is the seed's (``pyro_mcp``), so its code runs unchanged::

    from pyro_mcp import Pyro

    pyro = Pyro()
    result = pyro.run_in_vm(environment="debian:12", command="git --version")
    print(result["stdout"])

:class:`Pyro` blocks, :class:`AsyncPyro` is the same for asyncio; errors are the classes in
:mod:`pyro_mcp.errors`. The package also installs the ``pyro`` command.
"""

from . import errors
from ._native import __version__
from .errors import PyroError
from .sdk import AsyncPyro, Pyro

__all__ = ["Pyro", "AsyncPyro", "PyroError", "errors", "__version__"]
