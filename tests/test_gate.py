"""The gate's pure parts; its waiting is tested on a real engine in test_e2e_gate.py."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from components.plan.model import API_KEY_ENV, HF_TOKEN_ENV
from components.plan.specs import SPEC_ENV, ReadinessSpec, encode
from components.steps.readiness import SECRET_ENV, main, redact, serves


def test_secret_names_match_what_replicas_get() -> None:
    assert set(SECRET_ENV) == {HF_TOKEN_ENV, API_KEY_ENV}


def test_log_tail_never_repeats_a_token() -> None:
    log = "401 Client Error for token hf_abc123\nargs: api_key=sk-9 model=x\n"
    redacted = redact(log, {"HF_TOKEN": "hf_abc123", "VLLM_API_KEY": "sk-9", "PATH": "/bin"})
    assert "hf_abc123" not in redacted
    assert "sk-9" not in redacted
    assert "[HF_TOKEN redacted]" in redacted
    assert "[VLLM_API_KEY redacted]" in redacted
    assert redact(log, {}) == log
    assert redact(log, {"HF_TOKEN": ""}) == log


def test_an_ssh_engine_is_reached_over_ssh(monkeypatch, capsys) -> None:
    """`docker:host=ssh://...` reaches the gate as DOCKER_HOST; docker-py needs paramiko
    for it (without it: "Install paramiko package to enable ssh:// support"). Port 1 on
    loopback refuses, so the gate fails on the connection, not on a missing package."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://nobody@127.0.0.1:1")
    monkeypatch.setenv(SPEC_ENV, encode(ReadinessSpec(("vllm0",), {}, 1, 1)))
    assert main() == 1
    err = capsys.readouterr().err
    assert "cannot reach the Docker engine at ssh://nobody@127.0.0.1:1" in err
    assert "paramiko" not in err.lower()


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Health]]]:
    """A real HTTP server on loopback whose /health answers `handler.status`."""
    handler = type("Handler", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_replica_serves_when_its_health_answers_200(health_server, monkeypatch) -> None:
    url, handler = health_server
    # An http_proxy of the deploying machine must not stand in between.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    assert serves(url) is True
    handler.status = 503
    assert serves(url) is False


def test_a_refused_port_is_not_serving_yet() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert serves(f"http://127.0.0.1:{port}/health") is False


def test_an_address_that_never_answers_is_unreachable() -> None:
    """A firewall that drops packets looks like this: the gate stops asking there and
    waits for Docker's health status instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepted by the kernel, never answered
        port = sock.getsockname()[1]
        assert serves(f"http://127.0.0.1:{port}/health", timeout=0.3) is None


def test_a_missing_or_foreign_spec_is_refused(monkeypatch, capsys) -> None:
    monkeypatch.delenv(SPEC_ENV, raising=False)
    assert main() == 2
    monkeypatch.setenv(SPEC_ENV, '{"replicas": ["vllm0"], "timeout": 1}')
    assert main() == 2
    err = capsys.readouterr().err
    assert f"error: {SPEC_ENV} is not set" in err
    assert f"error: {SPEC_ENV} is not a ReadinessSpec" in err and "timeout_seconds" in err
