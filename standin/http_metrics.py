"""`http_requests_total`, as vLLM v0.33.0's HTTP server counts its requests.

vLLM instruments its FastAPI app with prometheus-fastapi-instrumentator's
defaults (`vllm/entrypoints/serve/instrumentator/metrics.py:64-74`; the
library >= 8.0.0, `requirements/common.txt:26`): a counter
`http_requests_total` with labels `method`, `status` and `handler`
(instrumentator 8.0.0 `metrics.py:707-720`), the status grouped as `2xx`,
`4xx`, `5xx` (`instrumentation.py:39`, `middleware.py:202-203`), the handler
the route's path (`none` for a path no route has), counted when the response
has ended (a stream at its last chunk; `middleware.py:176-203`), 500 when the
app raised before answering (`middleware.py:144`). vLLM leaves out `/metrics`,
`/health`, `/load`, `/ping`, `/version` and `/server_info`. The canary step
(components.steps.canary_compare) reads the `5xx` of the `/v1/` handlers as
failed requests. Citations: docs/vllm.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXCLUDED = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
NAME = "http_requests_total"


class HttpRequests:
    """Pure ASGI wrapper counting each finished request by method, status class, handler."""

    def __init__(self, app: ASGIApp, routes: Iterable[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.counts: dict[tuple[str, str, str], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        handler = path if path in self.routes else "none"
        # The instrumentator's excluded handlers are patterns searched in the handler.
        excluded = any(pattern in handler for pattern in EXCLUDED)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not excluded:
                key = (str(scope.get("method", "")), f"{str(status)[0]}xx", handler)
                self.counts[key] = self.counts.get(key, 0) + 1

    def render(self) -> str:
        lines = [
            f"# HELP {NAME} Total number of requests by method, status and handler.",
            f"# TYPE {NAME} counter",
        ]
        for (method, status, handler), count in sorted(self.counts.items()):
            labels = f'handler="{handler}",method="{method}",status="{status}"'
            lines.append(f"{NAME}{{{labels}}} {float(count)}")
        return "\n".join(lines) + "\n"
