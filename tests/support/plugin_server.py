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
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop(grace=1)

    asyncio.run(run())
