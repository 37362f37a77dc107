"""Continuous streaming chat completions through the load balancer, each one checked whole.

A stream counts as whole when every token arrived and a finish reason closed it:
vLLM (and the stand-in) end a stream that is cut by a stopping replica with an
error event or just a closed connection, which the client may not raise on,
so a missing token or finish reason is what shows the cut.

A stream whose request met a keep-alive connection that nginx's reload closed
(`tests.support.closed_connection`) never began, on nginx or a replica: it is
sent again once, as the official client would by default, and marked
`retried`; more than 1 % of streams retried fails the block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import openai

from tests.support.closed_connection import closed_while_idle


@dataclass
class Stream:
    started: float
    finished: float
    tokens: int
    expected: int
    finish_reason: str | None
    error: str | None
    retried: bool = False
    """Its first request met a closed idle connection and was sent again."""

    @property
    def whole(self) -> bool:
        return self.error is None and self.tokens == self.expected and bool(self.finish_reason)


def _stream_forever(
    url: str,
    api_key: str,
    tokens: int,
    stop: threading.Event,
    streams: list[Stream],
    lock: threading.Lock,
    model: str = "tiny-chat",
    timeout: float = 60,
) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=timeout)
    while not stop.is_set():
        started = time.monotonic()
        retried = False
        while True:
            count, reason, error = 0, None, None
            try:
                stream = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "go"}],
                    max_tokens=tokens,
                    stream=True,
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        count += 1
                    if chunk.choices and chunk.choices[0].finish_reason:
                        reason = chunk.choices[0].finish_reason
            except Exception as err:  # a cut stream may surface as any error
                if not retried and count == 0 and closed_while_idle(err):
                    retried = True
                    continue
                error = f"{type(err).__name__}: {err} ({err.__cause__!r})"
            break
        with lock:
            streams.append(Stream(started, time.monotonic(), count, tokens, reason, error, retried))


@contextmanager
def streaming_load(
    url: str,
    api_key: str,
    *,
    workers: int,
    tokens: int = 24,
    model: str = "tiny-chat",
    timeout: float = 60,
) -> Iterator[list[Stream]]:
    """`workers` clients streaming back to back until the block ends; the list fills as
    streams finish (complete once the block has exited). `model` is what they ask for;
    `timeout` is the client's (a silent peer holds a stream that long)."""
    streams: list[Stream] = []
    lock, stop = threading.Lock(), threading.Event()
    threads = [
        threading.Thread(
            target=_stream_forever, args=(url, api_key, tokens, stop, streams, lock, model, timeout)
        )
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield streams
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    retried = [s for s in streams if s.retried]
    assert len(retried) <= max(1, len(streams) // 100), (
        f"{len(retried)} of {len(streams)} streams met a closed idle connection"
    )
