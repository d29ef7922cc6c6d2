"""Type stubs for the native module (crates/pyro-py/src/lib.rs)."""

from typing import final

__all__ = ["Call", "Client", "cli_main", "__version__"]

__version__: str

@final
class Call:
    def wait(self, timeout: float | None = None) -> tuple[bool, str] | None: ...
    def cancel(self) -> None: ...

@final
class Client:
    def __new__(cls, home: str | None = None, cache: str | None = None) -> Client: ...
    def start(self, op: str, args: str) -> Call: ...
    def tool_names(self) -> list[str]: ...

def cli_main(argv: list[str], self_command: str | None = None) -> int: ...
