"""A stand-in replica with a fixed number of generation slots.

The stand-in itself generates on a fixed schedule however many requests it
holds, so any routing policy looks equally good in front of it. vLLM does not
work that way: it runs at most `max_num_seqs` sequences and queues the rest.
This wrapper gives the stand-in that limit, which is what lets the benchmark
show least_conn beating round robin when long and short requests mix.

    python -m bench.limited_standin --slots 4 --model M --port P [stand-in args]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from standin.app import StandinServer
from standin.config import parse_config


class GenerationSlots:
    """Queue generations beyond `slots`; the queue wait counts toward latency."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(slots)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            async with self.slots:
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)


def split_slots(argv: Sequence[str]) -> tuple[int, list[str]]:
    args = list(argv)
    if "--slots" not in args:
        return 4, args
    index = args.index("--slots")
    slots = int(args[index + 1])
    if slots < 1:
        raise SystemExit("--slots must be at least 1")
    return slots, args[:index] + args[index + 2 :]


def main(argv: Sequence[str] | None = None) -> int:
    slots, rest = split_slots(sys.argv[1:] if argv is None else argv)
    config = parse_config(rest)
    app = GenerationSlots(StandinServer(config).build(), slots)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
