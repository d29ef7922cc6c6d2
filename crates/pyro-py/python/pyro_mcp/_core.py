"""How a call runs: on the native module's runtime, with the GIL released, cancellable.

A call is started natively and waited for in short slices, so Python code runs between them:
a Ctrl-C (KeyboardInterrupt) or an asyncio cancellation cancels the native call, waits until
it has cleaned up (a one-shot sandbox removed, a workspace command stopped), deletes what a
create call made if it finished anyway, and then lets the interruption go on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _native
from .errors import error_from

#: How long one native wait lasts before Python checks for signals (seconds).
_SLICE = 0.05


@dataclass
class Request:
    """One call: the tool (or environment operation), its arguments, and what to do after."""

    op: str
    args: dict[str, Any]
    #: Turns the tool's result into what the SDK method returns.
    post: Callable[[Any], Any] | None = None
    #: For a create call: the call that deletes what it made, from its result.
    undo: Callable[[dict[str, Any]], Request | None] | None = None
    #: Called with the result when the call succeeded (the owner tracks what it created).
    on_done: Callable[[Any], None] | None = field(default=None, repr=False)


#: MCP tool names in hints, as the SDK's methods (set by the SDK module).
HINT_WORDS: dict[str, str] = {}
_TOOL_NAME = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b(?!=)")
_JSON_ARG = re.compile(r'\b([a-z][a-z_]*): (true|false|null|"[^"]*"|\d+)')
_PY_LITERALS = {"true": "True", "false": "False", "null": "None"}


def _python_hint(hint: Any) -> Any:
    """A hint worded for MCP (it names tools) in the SDK's words (it names methods)."""
    if not isinstance(hint, str):
        return hint
    hint = hint.replace(" (in the workspace-full profile)", "")
    # JSON arguments (`overwrite: true`) as keyword arguments (`overwrite=True`).
    hint = _JSON_ARG.sub(
        lambda m: f"{m.group(1)}={_PY_LITERALS.get(m.group(2), m.group(2))}", hint
    )
    return _TOOL_NAME.sub(lambda m: HINT_WORDS.get(m.group(0), m.group(0)), hint)


def _outcome(out: tuple[bool, str]) -> Any:
    ok, text = out
    body = json.loads(text)
    if not ok:
        body["hint"] = _python_hint(body.get("hint"))
        raise error_from(body)
    return body


class Session:
    """The native client, opened on first use so that ``Pyro()`` itself is cheap and cannot
    fail (the seed's did, when its runtime was broken)."""

    def __init__(self, home: str | None, cache: str | None) -> None:
        self._home = home
        self._cache = cache
        self._client: _native.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def client(self) -> _native.Client:
        # One per process: a client copied by fork has no runtime threads in the child, so the
        # child opens its own (the copy is left alone, see the native Client's Drop).
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = _native.Client(home=self._home, cache=self._cache)
                self._pid = os.getpid()
            return self._client

    def _start(self, req: Request) -> _native.Call:
        return self.client.start(req.op, json.dumps(req.args))

    def _finish(self, req: Request, body: Any) -> Any:
        if req.on_done is not None:
            req.on_done(body)
        return req.post(body) if req.post is not None else body

    def call(self, req: Request) -> Any:
        """Runs ``req`` to the end; Ctrl-C cancels it, cleans up, and re-raises."""
        call = self._start(req)
        try:
            out = call.wait(_SLICE)
            while out is None:
                out = call.wait(_SLICE)
        except KeyboardInterrupt:
            call.cancel()
            self._after_cancel(req, call.wait(None))
            raise
        return self._finish(req, _outcome(out))

    async def call_async(self, req: Request) -> Any:
        """Runs ``req`` without blocking the event loop; cancelling the task cancels it."""
        call = self._start(req)
        delay = 0.001
        try:
            out = call.wait(0)
            while out is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SLICE)
                out = call.wait(0)
        except asyncio.CancelledError:
            call.cancel()
            # Cleanup runs in a worker thread: it is short, and the loop must not block on it.
            final = await asyncio.shield(asyncio.to_thread(call.wait, None))
            self._after_cancel(req, final)
            raise
        return self._finish(req, _outcome(out))

    def _after_cancel(self, req: Request, out: tuple[bool, str] | None) -> None:
        """A create that finished despite the cancel: delete what it made (best effort)."""
        if out is None or not out[0] or req.undo is None:
            return
        undo = req.undo(json.loads(out[1]))
        if undo is None:
            return
        try:
            self.client.start(undo.op, json.dumps(undo.args)).wait(None)
        except Exception:  # noqa: BLE001 - the interruption matters more than this cleanup
            pass
