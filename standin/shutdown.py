"""SIGTERM the way vLLM v0.33.0's server handles it, so tests see what production sees.

What vLLM does (read from the PyPI sdist of 0.33.0, commit 4ba787ec9; the
table in docs/vllm.md has more):

- The API server's SIGTERM handler only records the request
  (`vllm/entrypoints/launchers/launcher.py:251-263`; a second signal is
  ignored, :254-255). A task then stops the engine client with `--shutdown-timeout` T
  in a thread while uvicorn keeps serving, and only after that sets
  `should_exit` and cancels the server task (launcher.py:265-291).
- T > 0, "drain": the engine keeps stepping until it has no work left
  (`vllm/v1/engine/core.py:1703-1738`), so requests in flight, streams
  included, go on to their end. The engine process is given up to T, then
  killed (`vllm/v1/engine/utils.py:341-353`, `vllm/v1/utils.py:605-658`): what
  still runs then is cut. The HTTP server accepts connections throughout and
  `/health` answers 200; a new generation request is rejected by the engine
  with an abort output (core.py:1785-1794), which the OpenAI layer answers
  with HTTP 200 and `finish_reason: "abort"` and no text (only "error"
  becomes a 500, `vllm/entrypoints/generate/base/serving.py:201-207`).
- T = 0, vLLM's default, "abort": the engine finishes every request as
  aborted and sends their abort outputs (core.py:1718-1728), so a stream ends
  with `finish_reason: "abort"`. (Its process manager then waits 0 s, so on a
  real engine the kill may beat those outputs and the client sees a cut
  instead; vLLM's own test accepts either,
  tests/entrypoints/launchers/test_shutdown.py:484-497.)
- The process then returns from `main`: exit code 0.

v0.11.0 did none of this: the handler cancelled uvicorn at once, the engine
went first, every stream was cut with an error event and new requests got 500.

The stand-in: on SIGTERM `Engine.stopping` is set (new generation requests
are answered with an abort, by `standin/app.py`); with T = 0 `aborting` is
set too (requests in flight end as aborted); with T > 0 they run on until
none is left or T has passed, when `dead` is set and whatever still runs is
cut with an error event and `[DONE]` (and anything else on `/v1/` gets 500).
`STANDIN_ENGINE_SHUTDOWN_SECONDS` (default 0.5) later, the engine's teardown,
uvicorn closes the socket and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ERROR_EVENT = {
    "error": {
        "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        "type": "EngineDeadError",
        "code": 500,
    }
}
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


class Engine:
    """The simulated engine's shutdown state, shared by the server and the app."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        """SIGTERM arrived: new generation requests are rejected with an abort."""
        self.aborting = asyncio.Event()
        """`--shutdown-timeout 0`: requests in flight end now, as aborted."""
        self.dead = asyncio.Event()
        """The engine is gone (killed at the timeout): what still runs is cut."""
        self.running = 0
        """Generation requests in flight (the engine's work)."""
        self.idle = asyncio.Event()
        self.idle.set()
        self._sleepers: set[asyncio.Future[None]] = set()

    async def sleep(self, delay: float) -> None:
        """`asyncio.sleep`, ended early when the engine aborts what it runs."""
        if delay <= 0 or self.aborting.is_set():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = asyncio.get_running_loop().call_later(delay, _wake, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    def abort(self) -> None:
        """`--shutdown-timeout 0`: every request ends now, as aborted."""
        self.aborting.set()
        for future in list(self._sleepers):
            _wake(future)

    def started(self) -> None:
        self.running += 1
        self.idle.clear()

    def finished(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.idle.set()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DiesWithEngine:
    """ASGI middleware: counts the engine's work; cuts it, and fails new requests
    on `/v1/`, once the engine is dead."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.engine.dead.is_set():
            await _json_500(send)
            return
        generation = scope["path"] in GENERATION_PATHS
        if generation:
            self.engine.started()
        try:
            await self._guarded(scope, receive, send)
        finally:
            if generation:
                self.engine.finished()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        streaming = False
        cut = False

        async def guarded(message: Message) -> None:
            nonlocal started, streaming
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers") or [])
                streaming = b"text/event-stream" in headers.get(b"content-type", b"")
            await send(message)

        inner = asyncio.ensure_future(self.app(scope, receive, guarded))
        dead = asyncio.ensure_future(self.engine.dead.wait())
        done, _ = await asyncio.wait({inner, dead}, return_when=asyncio.FIRST_COMPLETED)
        if inner in done:
            dead.cancel()
            inner.result()
            return
        cut = True
        inner.cancel()
        if not started:
            await _json_500(send)
        elif streaming:
            body = b"data: " + json.dumps(ERROR_EVENT).encode() + b"\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json_500(send: Send) -> None:
    body = json.dumps({"object": "error", **ERROR_EVENT["error"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class VllmLikeServer(uvicorn.Server):
    """uvicorn, with vLLM v0.33.0's order on SIGTERM: the engine drains (or aborts)
    while HTTP keeps serving, then the HTTP server closes."""

    def __init__(self, config: uvicorn.Config, engine: Engine, shutdown_timeout: int) -> None:
        super().__init__(config)
        self.engine = engine
        self.shutdown_timeout = shutdown_timeout
        self.engine_shutdown = float(os.environ.get("STANDIN_ENGINE_SHUTDOWN_SECONDS", "0.5"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._terminating = False
        self._shutdown: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None:
            self.should_exit = True
            return
        if self._terminating:
            return  # vLLM's handler ignores a second signal (launcher.py:254-255)
        self._terminating = True
        name = signal.Signals(sig).name
        mode = "abort" if self.shutdown_timeout == 0 else "drain"
        print(
            f"INFO standin: {name}: [shutdown] API server: stopping engine client "
            f"mode={mode} timeout={self.shutdown_timeout}s",
            flush=True,
        )
        self._loop.call_soon_threadsafe(self._start_shutdown)

    def _start_shutdown(self) -> None:
        assert self._loop is not None
        self._shutdown = self._loop.create_task(self._shut_down())

    async def _shut_down(self) -> None:
        engine = self.engine
        engine.stopping.set()
        if self.shutdown_timeout == 0:
            engine.abort()
        try:
            # The aborted ones end at once; a drain lasts until the work is done.
            await asyncio.wait_for(engine.idle.wait(), timeout=self.shutdown_timeout or 1.0)
            print(f"INFO standin: [shutdown] engine: drained ({engine.running} left)", flush=True)
        except TimeoutError:
            print(
                f"INFO standin: [shutdown] engine: {engine.running} request(s) still running "
                f"after {self.shutdown_timeout}s: killed",
                flush=True,
            )
            engine.dead.set()
        await asyncio.sleep(self.engine_shutdown)
        print("INFO standin: Shutting down FastAPI HTTP server.", flush=True)
        self.should_exit = True
