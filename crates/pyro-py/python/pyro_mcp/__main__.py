"""``python -m pyro_mcp``: the ``pyro`` command."""

from .cli import main

if __name__ == "__main__":
    main()
