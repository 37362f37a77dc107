"""SIGTERM the way vLLM's server handles it, so tests see what production sees.

What vLLM does (read from its source, stored commits cited in docs/rolling-updates.md,
"Stopping a replica"): its SIGTERM handler cancels uvicorn's serve task
(`vllm/entrypoints/launcher.py`, `serve_http`), then `run_server_worker`
(`vllm/entrypoints/openai/api_server.py`) leaves the engine client's context
first, shutting the engine down ("Await server shutdown only after the
backend context is exited"), and only then runs uvicorn's `shutdown()`, which
closes the listening socket and waits for connections to close. So requests in
flight are not finished: their engine is gone, a stream ends with an error
event and `[DONE]`, and a request that arrives meanwhile is still accepted and
answered 500. vLLM does not drain; the load balancer has to.

The stand-in does the same: on SIGTERM the "engine" dies at once, open streams
get an error event and `[DONE]`, other requests get 500, and after
`STANDIN_ENGINE_SHUTDOWN_SECONDS` (default 0.5, the engine's shutdown) uvicorn
closes the socket and exits 0. A second signal exits at once, as uvicorn does.
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


class EngineDeath:
    """Set once SIGTERM arrived: the simulated engine is gone."""

    def __init__(self) -> None:
        self.dead = asyncio.Event()


class DiesWithEngine:
    """ASGI middleware: cuts responses in flight and fails new ones once the engine died."""

    def __init__(self, app: ASGIApp, death: EngineDeath) -> None:
        self.app = app
        self.death = death

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.death.dead.is_set():
            await _json_500(send)
            return
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
        dead = asyncio.ensure_future(self.death.dead.wait())
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
    """uvicorn, with vLLM's order on SIGTERM: engine first, then the HTTP server."""

    def __init__(self, config: uvicorn.Config, death: EngineDeath) -> None:
        super().__init__(config)
        self.death = death
        self.engine_shutdown = float(os.environ.get("STANDIN_ENGINE_SHUTDOWN_SECONDS", "0.5"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._terminating = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._terminating or self._loop is None:
            self.should_exit = True
            self.force_exit = self._terminating
            return
        self._terminating = True
        name = signal.Signals(sig).name
        print(f"INFO standin: {name}: engine shutting down", flush=True)
        self._loop.call_soon_threadsafe(self._engine_gone)

    def _engine_gone(self) -> None:
        self.death.dead.set()
        assert self._loop is not None
        self._loop.call_later(self.engine_shutdown, self._stop_http)

    def _stop_http(self) -> None:
        print("INFO standin: Shutting down FastAPI HTTP server.", flush=True)
        self.should_exit = True
