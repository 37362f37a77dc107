"""How our stand-in resource plugins serve the engine: one gRPC server on loopback.

A plugin announces the port it listens on as the first line of its stdout
(pulumi sdk/go/common/resource/plugin/plugin.go, `parsePort`), and the engine
stops it with a signal when it is done with it. Stopping the server inside the
event loop on that signal, rather than letting `KeyboardInterrupt` close the
loop under it, keeps grpc's `Server.__del__` from printing "Event loop is
closed" into every `pulumi up`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc.aio  # type: ignore[import-untyped]
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS


def serve_plugin(
    add_servicer: Callable[[Any], None],
    interceptors: list[Any] | None = None,
) -> None:
    """Serve what `add_servicer` registers until SIGINT or SIGTERM."""

    async def run() -> None:
        server = grpc.aio.server(options=_GRPC_CHANNEL_OPTIONS, interceptors=interceptors)
        add_servicer(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        # The port last: the engine may signal as soon as it has read it.
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        await stop.wait()
        await server.stop(grace=1)
        # A Go plugin is gone within milliseconds of the engine's SIGINT
        # (pulumi sdk go/pulumi/provider/main.go:109-113, a graceful stop of a
        # server with nothing in flight). Python's own exit (asyncio teardown,
        # worker threads, grpc's shutdown) took 0.2-0.4 s more, which let a
        # failed program finish before the engine interrupted it and hid the
        # traceback users saw (docs/failed-up.md).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    asyncio.run(run())
