"""The ``pyro`` command: the same CLI as the ``pyro`` binary, from the extension module."""

from __future__ import annotations

import os
import shutil
import sys

from . import _native


def main() -> None:
    """Runs ``pyro`` with this process's arguments and exits with its status."""
    argv = ["pyro", *sys.argv[1:]]
    # What a client must run to start this pyro again: this console script.
    script = sys.argv[0]
    if os.sep not in script:
        script = shutil.which(script) or script
    sys.exit(_native.cli_main(argv, os.path.abspath(script)))


if __name__ == "__main__":
    main()
