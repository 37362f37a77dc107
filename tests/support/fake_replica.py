"""Counting OpenAI-shaped replicas in this process, for the model routing tests.

Why not the stand-in (tests/support/stub.py): routing is judged by which
replica got which request, and the stand-in serves neither `/v1/embeddings`
nor LoRA adapter names. These answer chat (also streamed), completions and
embeddings for any model, in the shapes the official `openai` client parses,
and remember every request they got (path and `model`), so a test can say
"zero upstream requests" and mean it. Each listens on its own loopback port and
can be stopped and started again on it, as a replica that fails.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, replica: FakeReplica) -> None:
        self.replica = replica
        self.connections: set[socket.socket] = set()
        super().__init__((LOOPBACK, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def close_connections(self) -> None:
        """A stopped replica also drops the keepalive connections nginx holds to it."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.connections.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-replica", self.server.replica.name)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.replica.record(self.path, None)
        if self.path == "/health":
            # vLLM: 200, or 503 once its engine is dead; an empty body either way.
            self.send_response(self.server.replica.health_status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(200, {"replica": self.server.replica.name, "path": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"multipart": raw.decode("latin-1")}
        model = body.get("model") if isinstance(body, dict) else None
        self.server.replica.record(self.path, model)
        if self.path == "/v1/embeddings":
            self._send(
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "model": model,
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )
            return
        if body.get("stream"):
            self._stream(model)
            return
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.server.replica.name},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def _stream(self, model: str | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.send_header("x-replica", self.server.replica.name)
        self.end_headers()
        for word in ("one", "two", "three"):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@dataclass
class FakeReplica:
    name: str
    port: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    health_status: int = 200
    """What GET /health answers (503: an engine that died)."""
    _server: _Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, path: str, model: str | None) -> None:
        with self._lock:
            self.requests.append((path, model))

    def start(self) -> None:
        self._server = _Server(self.port, self)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths(self) -> Counter[str]:
        with self._lock:
            return Counter(path for path, _ in self.requests)


@contextlib.contextmanager
def fake_replicas(*names: str) -> Iterator[dict[str, FakeReplica]]:
    replicas = {name: FakeReplica(name) for name in names}
    try:
        for replica in replicas.values():
            replica.start()
        yield replicas
    finally:
        for replica in replicas.values():
            replica.stop()
