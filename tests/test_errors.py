"""Every error nginx itself makes reaches the client as the API's JSON error object.

Each error class is sent through a real nginx, with the official `openai`
client where a client can cause it and as raw HTTP where only a broken
client can (a bad request line, a header too large): the status is right,
the body is `{"error": {"message", "type", "param", "code"}}`, never HTML,
and `Retry-After` comes with the statuses a client should retry.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from components.config.sections import RoutingPolicy, Upstream
from components.lb.pools import ModelPool
from tests.support.fake_replica import FakeReplica, fake_replicas
from tests.support.nginx import LOOPBACK, Pki, RunningNginx, make_test_pki, require_nginx
from tests.support.nginx import balancer as nginx_balancer

pytestmark = pytest.mark.nginx

MODEL = "org/chat-model"
API_KEY = "sk-errors-test"


def assert_api_error(
    status: int, headers: Any, body: bytes, code: int | str | None = None, retry: bool = False
) -> dict[str, Any]:
    text = body.decode("utf-8", "replace")
    assert "<html" not in text.lower(), text
    assert headers["content-type"] == "application/json", (status, headers, text)
    import json

    error = json.loads(text)["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["message"]
    assert error["code"] == (status if code is None else code)
    assert ("retry-after" in headers) == retry, (status, dict(headers))
    if retry:
        assert str(headers["retry-after"]).isdigit()
    return dict(error)


def check(response: httpx.Response, status: int, **kw: Any) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return assert_api_error(status, response.headers, response.content, **kw)


def raw(nginx: RunningNginx, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request as bytes on a fresh connection; the response read to its end."""
    with socket.create_connection((LOOPBACK, nginx.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


@contextlib.contextmanager
def silent_replica() -> Iterator[int]:
    """Accepts connections and reads, never answers: a replica that hangs."""
    server = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def api(nginx: RunningNginx, key: str = API_KEY, **kw: Any) -> OpenAI:
    return OpenAI(base_url=nginx.url + "/v1", api_key=key, max_retries=0, timeout=20, **kw)


@pytest.fixture(scope="module")
def replica() -> Iterator[FakeReplica]:
    with fake_replicas("r0") as replicas:
        yield replicas["r0"]


@pytest.fixture(scope="module")
def lb(replica: FakeReplica) -> Iterator[RunningNginx]:
    with nginx_balancer(
        require_nginx(), [replica.port], api_key=API_KEY, max_body_size_mb=1
    ) as nginx:
        yield nginx


def test_unknown_paths_are_404_json_whatever_their_extension(lb):
    for path in ("/nope", "/index.html", "/v2/models", "/_lb/probe/default"):
        error = check(httpx.get(lb.url + path), 404)
        assert error["type"] == "NotFoundError"


def test_a_wrong_key_is_401_for_the_openai_client(lb):
    with pytest.raises(openai.AuthenticationError) as refused:
        api(lb, "sk-wrong").models.list()
    assert refused.value.code == "invalid_api_key"
    response = refused.value.response
    assert_api_error(401, response.headers, response.content, code="invalid_api_key")


def test_a_body_over_the_limit_is_413_for_the_openai_client(lb):
    with pytest.raises(openai.APIStatusError) as refused:
        api(lb).completions.create(model=MODEL, prompt="x" * 1_200_000, max_tokens=1)
    response = refused.value.response
    error = assert_api_error(413, response.headers, response.content)
    assert "maxBodySizeMb" in error["message"]


def test_malformed_requests_are_400_json(lb):
    cases = {
        "two Host headers": b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "two Authorization headers": (
            b"GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
            + API_KEY.encode()
            + b"\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n"
        ),
        "a header line without a colon": b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
        "a header too large": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    }
    for name, request in cases.items():
        status, headers, body = raw(lb, request)
        assert status == 400, (name, status, body)
        assert_api_error(status, headers, body)


def test_other_protocol_errors_are_json(lb):
    cases = {
        414: b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        405: b"TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        501: b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        505: b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    }
    for expected, request in cases.items():
        status, headers, body = raw(lb, request)
        assert status == expected, (expected, status, body)
        assert_api_error(status, headers, body)


def test_no_replica_is_502_with_retry_after_and_the_openai_client_retries_it(replica):
    with fake_replicas("gone") as replicas:
        port = replicas["gone"].port
        replicas["gone"].stop()
        with nginx_balancer(require_nginx(), [port]) as nginx:
            with pytest.raises(openai.InternalServerError) as failed:
                api(nginx).completions.create(model=MODEL, prompt="hi", max_tokens=1)
            response = failed.value.response
            error = assert_api_error(502, response.headers, response.content, retry=True)
            assert "/health" in error["message"]
            streaming = httpx.post(
                nginx.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [], "stream": True},
            )
            check(streaming, 502, retry=True)
            head = httpx.head(nginx.url + "/v1/models")
            assert head.status_code == 502
            assert head.headers["content-type"] == "application/json"


def test_a_replica_that_does_not_answer_in_time_is_504_with_retry_after():
    with (
        silent_replica() as port,
        nginx_balancer(
            require_nginx(), [port], read_timeout_seconds=1, next_upstream_tries=1
        ) as nginx,
    ):
        with pytest.raises(openai.APIStatusError) as failed:
            api(nginx).completions.create(model=MODEL, prompt="hi", max_tokens=1)
        response = failed.value.response
        assert_api_error(504, response.headers, response.content, retry=True)


def test_model_routing_errors_are_json(replica):
    pools = [
        ModelPool(
            "chat",
            MODEL,
            MODEL,
            (Upstream(host=LOOPBACK, port=replica.port),),
            RoutingPolicy.PREFIX_AFFINITY,
        )
    ]
    with nginx_balancer(require_nginx(), [replica.port], pools=pools) as nginx:
        with pytest.raises(openai.NotFoundError) as unknown:
            api(nginx).completions.create(model="nope", prompt="hi", max_tokens=1)
        response = unknown.value.response
        assert_api_error(404, response.headers, response.content)
        check(httpx.post(nginx.url + "/v1/models"), 405)
        check(httpx.get(nginx.url + "/nowhere.html"), 404)
        replica.stop()
        try:
            # prefix_affinity's 502 goes to its fallback, whose own 502 is JSON too.
            with pytest.raises(openai.InternalServerError) as failed:
                api(nginx).completions.create(model=MODEL, prompt="hi", max_tokens=1)
            response = failed.value.response
            assert_api_error(502, response.headers, response.content, retry=True)
        finally:
            replica.start()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def test_plain_http_to_the_tls_port_is_400_json(replica, pki):
    with nginx_balancer(require_nginx(), [replica.port], tls=pki.server) as nginx:
        status, headers, body = raw(nginx, b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 400
        error = assert_api_error(status, headers, body)
        assert "https" in error["message"]
