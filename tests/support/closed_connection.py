"""The one client error an nginx reload may cause, told apart from every other.

Each drain and resume reloads nginx, and a reload closes the old workers' idle
keep-alive connections to clients. A request written onto one just then never
reaches nginx's request handling, let alone a replica, and meets one of two
errors: "Server disconnected without sending a response" when the close came
before the request was written, or "Connection reset by peer" when the request
sat unread in the old worker's socket and the kernel reset it on close. The
official client retries both by default (`max_retries` 2); tests that turn
retries off to see every failure retry only these, once, and count them.
`tests/test_lb_behaviour.py` shows on a real nginx that these are all a reload
does to keep-alive clients.
"""

from __future__ import annotations

import httpx2
import openai


def closed_while_idle(err: BaseException) -> bool:
    """Whether `err` is a request that met a keep-alive connection nginx closed.

    openai 3.x raises its own transport's errors (`httpx2`, not `httpx`) as the
    cause of `APIConnectionError`."""
    if not isinstance(err, openai.APIConnectionError):
        return False
    cause = err.__cause__
    if isinstance(cause, httpx2.RemoteProtocolError):
        return "without sending a response" in str(cause)
    return isinstance(cause, httpx2.ReadError) and "Connection reset by peer" in str(cause)
