"""The balancer reads a request exactly as the replica will: a differential test.

The same bytes go through a real nginx (its njs router, its API key check)
and through a reference reading in Python that does what vLLM's server does
with them: JSON as Starlette's `Request.json()` reads it (`json.loads` on
the bytes), forms as Starlette's `Request.form()` reads them (python-multipart),
the `model` field as pydantic takes it (a string, else the request is
refused), and `Authorization` as vLLM's `verify_token` and the stand-in
(`standin/app.py`, the same rule) read it. Where the reference names a model,
the balancer must route to that model's pool (or 404 when none serves it);
where the replica would refuse the request anyway, any answer of the
balancer's is fine, since the client gets an error either way.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from components.config.sections import RoutingPolicy, Upstream
from components.lb.pools import ModelPool
from tests.support.fake_replica import FakeReplica, fake_replicas
from tests.support.nginx import LOOPBACK, RunningNginx, require_nginx, require_njs
from tests.support.nginx import balancer as nginx_balancer
from tests.support.stub import stub_backends

pytestmark = pytest.mark.nginx

CHAT = "org/chat-model"
EMBED = "org/embed-model"
UNSERVED = "org/unserved"
API_KEY = "sk-Diff.Key_42"


def reference_model(body: bytes, content_type: str) -> str | None:
    """The `model` the replica reads from this body, or None if it refuses it."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", content_type.encode("latin-1"))],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def read() -> object:
        request = Request(scope, receive)
        if content_type.lower().startswith("multipart/form-data"):
            form = await request.form()
            return form.get("model")
        return (await request.json()).get("model")

    try:
        model = asyncio.run(read())
    except Exception:  # the replica answers 4xx to what it cannot read
        return None
    return model if isinstance(model, str) else None


def form(parts: list[tuple[str, str]], boundary: str = "XyZ") -> bytes:
    """Multipart parts given as (Content-Disposition line, value)."""
    out = b""
    for disposition, value in parts:
        out += f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode()
    return out + f"--{boundary}--\r\n".encode()


JSON = "application/json"
MP = "multipart/form-data; boundary=XyZ"
BIG = "x" * 1_100_000

CASES: dict[str, tuple[bytes, str]] = {
    "plain": (json.dumps({"model": CHAT}).encode(), JSON),
    "duplicate keys, last wins": (
        b'{"model": "%s", "model": "%s"}' % (EMBED.encode(), CHAT.encode()),
        JSON,
    ),
    "escaped key and value": (b'{"mod\\u0065l": "org\\/chat-m\\u006fdel"}', JSON),
    "a model nested deeper is not it": (
        json.dumps({"x": {"model": EMBED}, "model": CHAT}).encode(),
        JSON,
    ),
    "whitespace around": (b'\t\r\n {"model" :\n"%s" } \r\n' % CHAT.encode(), JSON),
    "UTF-8 BOM": (codecs.BOM_UTF8 + json.dumps({"model": EMBED}).encode(), JSON),
    "UTF-16-LE with BOM": (json.dumps({"model": CHAT}).encode("utf-16"), JSON),
    "UTF-16-BE without BOM": (json.dumps({"model": EMBED}).encode("utf-16-be"), JSON),
    "UTF-32 with BOM": (json.dumps({"model": CHAT}).encode("utf-32"), JSON),
    "NaN elsewhere": (b'{"model": "%s", "temperature": NaN}' % CHAT.encode(), JSON),
    "Infinity and -Infinity": (
        b'{"top_p": Infinity, "model": "%s", "x": [-Infinity]}' % EMBED.encode(),
        JSON,
    ),
    "NaN inside a string is text": (b'{"model": "%s", "p": "NaN"}' % CHAT.encode(), JSON),
    "huge number": (b'{"model": "%s", "seed": 1e400}' % CHAT.encode(), JSON),
    "non-ASCII name not served": (json.dumps({"model": "org/chät"}).encode(), JSON),
    "astral escape not served": (b'{"model": "\\ud83d\\ude00"}', JSON),
    "lone surrogate not served": (b'{"model": "\\ud800"}', JSON),
    "unserved": (json.dumps({"model": UNSERVED}).encode(), JSON),
    "model not a string": (b'{"model": 5}', JSON),
    "model null": (b'{"model": null}', JSON),
    "trailing garbage": (b'{"model": "%s"} x' % CHAT.encode(), JSON),
    "raw control character": (b'{"model": "%s", "p": "a\tb"}' % CHAT.encode(), JSON),
    "array body": (json.dumps([{"model": CHAT}]).encode(), JSON),
    "large body, model last, NaN": (
        b'{"prompt": "%s", "t": NaN, "model": "%s"}' % (BIG.encode(), EMBED.encode()),
        JSON,
    ),
    "large body with a BOM": (
        codecs.BOM_UTF8 + json.dumps({"prompt": BIG, "model": CHAT}).encode(),
        JSON,
    ),
    "form": (form([('Content-Disposition: form-data; name="model"', CHAT)]), MP),
    "form, name unquoted": (form([("Content-Disposition: form-data; name=model", EMBED)]), MP),
    "form, two model fields": (
        form(
            [
                ('Content-Disposition: form-data; name="model"', EMBED),
                ('Content-Disposition: form-data; name="model"', CHAT),
            ]
        ),
        MP,
    ),
    "form, header in capitals": (
        form([('CONTENT-DISPOSITION: form-data; name="model"', CHAT)]),
        MP,
    ),
    "form, model is a file": (
        form([('Content-Disposition: form-data; name="model"; filename="m.txt"', CHAT)]),
        MP,
    ),
    "form, quoted boundary": (
        form([('Content-Disposition: form-data; name="model"', EMBED)], boundary="a b"),
        'multipart/form-data; boundary="a b"',
    ),
    "form, other field named like it": (
        form([('Content-Disposition: form-data; name="model_x"', CHAT)]),
        MP,
    ),
}


@pytest.fixture(scope="module")
def routed() -> Iterator[tuple[RunningNginx, dict[str, FakeReplica]]]:
    binary = require_nginx()
    require_njs()
    with fake_replicas("c0", "e0") as replicas:
        pools = [
            ModelPool(
                "chat",
                CHAT,
                CHAT,
                (Upstream(host=LOOPBACK, port=replicas["c0"].port),),
                RoutingPolicy.PREFIX_AFFINITY,
            ),
            ModelPool(
                "embed",
                EMBED,
                EMBED,
                (Upstream(host=LOOPBACK, port=replicas["e0"].port),),
                RoutingPolicy.LEAST_CONN,
            ),
        ]
        with nginx_balancer(binary, [replicas["c0"].port], pools=pools) as nginx:
            yield nginx, replicas


def balancer_decision(
    nginx: RunningNginx, replicas: dict[str, FakeReplica], body: bytes, content_type: str
) -> str:
    for replica in replicas.values():
        replica.reset()
    response = httpx.post(
        nginx.url + "/v1/chat/completions",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    got = [name for name, replica in replicas.items() if replica.count()]
    if response.status_code == 404 and not got:
        assert response.json()["error"]["param"] == "model"
        return "404"
    assert len(got) == 1, (response.status_code, response.text, got)
    return {"c0": CHAT, "e0": EMBED}[got[0]]


@pytest.mark.parametrize("case", CASES)
def test_the_balancer_routes_by_the_model_the_replica_reads(routed, case):
    nginx, replicas = routed
    body, content_type = CASES[case]
    expected = reference_model(body, content_type)
    decision = balancer_decision(nginx, replicas, body, content_type)
    if expected is None:
        return  # the replica refuses it; whatever the balancer did, the client gets an error
    assert decision == (expected if expected in (CHAT, EMBED) else "404"), (expected, decision)


def test_the_reference_itself_reads_what_it_should():
    """The cases above are not vacuous: most name a model the replica would read."""
    named = [c for c, (body, ct) in CASES.items() if reference_model(body, ct) in (CHAT, EMBED)]
    assert len(named) >= 18, named
    assert reference_model(*CASES["form, two model fields"]) == CHAT
    assert reference_model(*CASES["NaN elsewhere"]) == CHAT
    assert reference_model(*CASES["UTF-16-BE without BOM"]) == EMBED


# --- the Authorization header, against the stand-in's own check -------------------


def raw_status(port: int, authorization_line: bytes) -> tuple[int, bool]:
    """(status, whether a replica answered) of GET /v1/models with that header line."""
    request = (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + authorization_line
        + b"\r\n"
    )
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    return int(head.split()[1]), "\r\nx-replica:" in head


HEADER_LINES = {
    "canonical": b"Authorization: Bearer " + API_KEY.encode() + b"\r\n",
    "lower-case name and scheme": b"authorization: bearer " + API_KEY.encode() + b"\r\n",
    "scheme in capitals": b"Authorization: BEARER " + API_KEY.encode() + b"\r\n",
    "no space after the colon": b"Authorization:Bearer " + API_KEY.encode() + b"\r\n",
    "spaces around the value": b"Authorization:    Bearer " + API_KEY.encode() + b"   \r\n",
    "tab after the value": b"Authorization: Bearer " + API_KEY.encode() + b"\t\r\n",
    "two spaces after the scheme": b"Authorization: Bearer  " + API_KEY.encode() + b"\r\n",
    "tab after the scheme": b"Authorization: Bearer\t" + API_KEY.encode() + b"\r\n",
    "no space after the scheme": b"Authorization: Bearer" + API_KEY.encode() + b"\r\n",
    "key in other case": b"Authorization: Bearer " + API_KEY.swapcase().encode() + b"\r\n",
    "Basic scheme": b"Authorization: Basic " + API_KEY.encode() + b"\r\n",
    "bare key": b"Authorization: " + API_KEY.encode() + b"\r\n",
    "no header": b"",
}


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[int, RunningNginx]]:
    binary = require_nginx()
    with (
        stub_backends(1, api_key=API_KEY) as stubs,
        nginx_balancer(binary, stubs.ports, api_key=API_KEY) as nginx,
    ):
        yield stubs[0].port, nginx


@pytest.mark.parametrize("line", HEADER_LINES.values(), ids=HEADER_LINES.keys())
def test_the_key_check_agrees_with_the_replicas(keyed, line):
    replica_port, nginx = keyed
    direct, _ = raw_status(replica_port, line)
    through, replica_answered = raw_status(nginx.port, line)
    replica_accepts = direct != 401
    balancer_refused = through == 401 and not replica_answered
    assert balancer_refused == (not replica_accepts), (direct, through, replica_answered)
