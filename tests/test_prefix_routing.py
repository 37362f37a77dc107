"""`prefix_affinity` in a real nginx with the njs module, in front of stand-in replicas.

What the policy promises, each shown on loopback with real processes: the same
prompt prefix reaches the same replica, different prefixes spread, the bound
moves load off a busy replica without errors (also when every replica is at
it), a replica that dies moves only its own prefixes and gets them back, and
a body the router cannot read is served by the least_conn fallback, never
answered with a 5xx by the balancer. The API key is checked before the router
runs, and streams stay unbuffered.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from components.config.sections import RoutingPolicy
from tests.support.nginx import RunningNginx, require_nginx, require_njs
from tests.support.nginx import balancer as nginx_balancer
from tests.support.stub import StubFleet, stub_backends

pytestmark = pytest.mark.nginx

MODEL = "standin/tiny-chat"
QUIET = ("--disable-uvicorn-access-log",)
PREFIX_CHARS = 64


@contextlib.contextmanager
def balancer(ports: Sequence[int], **options: Any) -> Iterator[RunningNginx]:
    require_njs()
    options.setdefault("policy", RoutingPolicy.PREFIX_AFFINITY)
    options.setdefault("prefix_chars", PREFIX_CHARS)
    with nginx_balancer(require_nginx(), ports, **options) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def fleet() -> Iterator[StubFleet]:
    require_nginx()
    require_njs()
    with stub_backends(3, ttft_ms=5, token_ms=5, extra_args=QUIET) as stubs:
        yield stubs


def shared(name: str) -> str:
    """A system prompt longer than the routing prefix, distinct from its first words."""
    return f"{name}: you are a helpful assistant for {name}. " * 4


def complete(nginx: RunningNginx, prompt: str, tokens: int = 2, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, **extra}
    return httpx.post(nginx.url + "/v1/completions", json=body, timeout=30)


def chat(nginx: RunningNginx, system: str, turns: Sequence[str], **extra: Any) -> httpx.Response:
    messages = [{"role": "system", "content": system}]
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    body = {"model": MODEL, "messages": messages, "max_tokens": 2, **extra}
    return httpx.post(nginx.url + "/v1/chat/completions", json=body, timeout=30)


def replica(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-replica"]


# --- placement ----------------------------------------------------------------


def test_the_same_prefix_reaches_the_same_replica(fleet):
    with balancer(fleet.ports) as nginx:
        placement: dict[str, set[str]] = {}
        for round_ in range(4):
            for n in range(8):
                name = f"tenant-{n}"
                # Same leading part, a different question each time.
                placement.setdefault(name, set()).add(
                    replica(complete(nginx, shared(name) + f" question {round_}"))
                )
                # Chat: the system prompt leads; the history grows each turn.
                history = [f"q{i}" for i in range(round_ + 1)]
                placement.setdefault("chat-" + name, set()).add(
                    replica(chat(nginx, shared(name), history))
                )
    assert all(len(replicas) == 1 for replicas in placement.values()), placement


def test_streaming_requests_are_routed_the_same_and_not_buffered(fleet):
    with (
        stub_backends(2, ttft_ms=10, token_ms=20, extra_args=QUIET) as stubs,
        balancer(stubs.ports) as nginx,
    ):
        home = replica(complete(nginx, shared("stream") + " warm"))
        body = {
            "model": MODEL,
            "prompt": shared("stream") + " go",
            "max_tokens": 40,
            "stream": True,
        }
        started = time.monotonic()
        arrivals: list[float] = []
        with httpx.stream("POST", nginx.url + "/v1/completions", json=body, timeout=30) as r:
            assert r.headers["x-replica"] == home
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 40
    # 10 ms to the first token, 20 ms per token after: 0.79 s in all.
    assert arrivals[0] < 0.3, arrivals[:3]
    assert arrivals[-1] > 0.7


def test_different_prefixes_spread_over_all_replicas(fleet):
    with balancer(fleet.ports) as nginx:
        counts = Counter(replica(complete(nginx, shared(f"user-{n}"))) for n in range(60))
    assert set(counts) == {stub.replica_id for stub in fleet}, counts
    # A consistent-hash ring of 3 x 160 points: no replica gets a tiny share.
    assert min(counts.values()) >= 8, counts


def test_requests_without_a_usable_prompt_go_to_every_replica(fleet):
    """No prompt means no key: least_conn, not one replica for all of them."""
    with balancer(fleet.ports) as nginx:
        counts = Counter(
            replica(httpx.get(nginx.url + "/v1/models", timeout=10)) for _ in range(12)
        )
    assert set(counts) == {stub.replica_id for stub in fleet}, counts


# --- the bound -------------------------------------------------------------------


def _concurrent(nginx: RunningNginx, prompts: Sequence[str], tokens: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = []
        for prompt in prompts:
            futures.append(pool.submit(complete, nginx, prompt, tokens))
            time.sleep(0.05)
        return [f.result() for f in futures]


def test_the_bound_moves_a_hot_prefix_off_its_replica_without_errors():
    with (
        stub_backends(3, ttft_ms=5, token_ms=20, extra_args=QUIET) as stubs,
        balancer(stubs.ports, prefix_max_conns=2) as nginx,
    ):
        home = replica(complete(nginx, shared("hot")))
        responses = _concurrent(nginx, [shared("hot") + f" {n}" for n in range(5)], tokens=40)
        log = nginx.access_log.read_text()
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    served = Counter(r.headers["x-replica"] for r in responses)
    # Unbounded, all 5 would be on `home`; with max_conns=2 it holds 2.
    assert served[home] == 2, served
    assert len(served) >= 2, served
    assert '" 502 ' not in log


def test_with_every_replica_at_its_bound_requests_queue_instead_of_failing():
    with (
        stub_backends(2, ttft_ms=5, token_ms=20, extra_args=QUIET) as stubs,
        balancer(stubs.ports, prefix_max_conns=1) as nginx,
    ):
        prompts = [shared("hot") + f" {n}" for n in range(4)] + [shared("cold") + " 0"] * 2
        responses = _concurrent(nginx, prompts, tokens=30)
        log = nginx.access_log.read_text()
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert {r.headers["x-replica"] for r in responses} == {s.replica_id for s in stubs}
    # nginx's own 502 (no replica under its bound) was turned into a fallback,
    # which shows in the log as the hash upstream's name, then a replica.
    assert "upstream=vllm_backends, " in log or "upstream=vllm_backends " in log, log
    assert not re.search(r'" 5\d\d ', log), log


# --- failures -------------------------------------------------------------------


def test_a_dead_replica_moves_only_its_prefixes_and_gets_them_back():
    with (
        stub_backends(3, ttft_ms=5, token_ms=5, extra_args=QUIET) as stubs,
        balancer(stubs.ports, fail_window_seconds=2) as nginx,
    ):
        names = [f"tenant-{n}" for n in range(24)]

        def placement() -> dict[str, str]:
            return {name: replica(complete(nginx, shared(name))) for name in names}

        before = placement()
        victim = stubs[1]
        assert victim.replica_id in before.values(), before
        victim.stop(signal.SIGKILL)
        during = placement()  # every request answered: connect errors go on
        victim.start()
        time.sleep(2.5)  # the fail window
        after = placement()
    moved = {n for n in names if before[n] != during[n]}
    assert moved == {n for n in names if before[n] == victim.replica_id}, (before, during)
    assert victim.replica_id not in during.values()
    assert after == before


# --- bodies the router cannot use -----------------------------------------------

UNUSABLE = {
    "not json": (b"this is not json", "application/json"),
    "invalid utf-8": (b'{"prompt": "\xff\xfe"}', "application/json"),
    "json array": (b"[1, 2, 3]", "application/json"),
    "truncated json": (b'{"model": "standin/tiny-chat", "prompt": "hel', "application/json"),
    "no prompt": (b'{"model": "standin/tiny-chat", "max_tokens": 2}', "application/json"),
    "empty prompt": (b'{"model": "standin/tiny-chat", "prompt": ""}', "application/json"),
    "prompt of wrong type": (b'{"model": "standin/tiny-chat", "prompt": {"a": 1}}', "text/plain"),
    "messages not a list": (b'{"model": "standin/tiny-chat", "messages": "hi"}', "text/plain"),
    "empty body": (b"", "application/json"),
}


@pytest.mark.parametrize("body", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_body_is_answered_by_a_replica_not_by_the_balancer(fleet, body):
    content, content_type = body
    with balancer(fleet.ports) as nginx:
        for path in ("/v1/completions", "/v1/chat/completions"):
            response = httpx.post(
                nginx.url + path, content=content, headers={"Content-Type": content_type}
            )
            # The replica's own verdict (vLLM answers these with 400), never the LB's 5xx.
            assert response.status_code < 500, response.text
            assert "x-replica" in response.headers, response.text
        errors = nginx.error_log.read_text()
    assert "js exception" not in errors, errors


def test_a_body_larger_than_the_memory_buffer_is_served_by_the_fallback(fleet):
    prompt = "word " * (400 * 1024)  # 2 MiB: nginx keeps it in a temp file
    with balancer(fleet.ports) as nginx:
        responses = [complete(nginx, prompt + str(n), tokens=1) for n in range(6)]
        errors = nginx.error_log.read_text()
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == 400 * 1024 + 1
    # least_conn over sequential requests: more than one replica.
    assert len({r.headers["x-replica"] for r in responses}) >= 2
    assert "js exception" not in errors, errors


def test_chunked_and_chat_content_parts_are_routed_by_their_prefix(fleet):
    with balancer(fleet.ports) as nginx:
        home = replica(chat(nginx, shared("parts"), ["hello"]))
        parts = [{"type": "text", "text": shared("parts")}]
        body = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": parts},
                {"role": "user", "content": "other"},
            ],
            "max_tokens": 2,
        }
        assert replica(httpx.post(nginx.url + "/v1/chat/completions", json=body)) == home

        def chunks() -> Iterator[bytes]:
            text = httpx.Request("POST", "/", json=body).content
            for start in range(0, len(text), 7):
                yield text[start : start + 7]

        chunked = httpx.post(
            nginx.url + "/v1/chat/completions",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert replica(chunked) == home


# --- API key and TLS --------------------------------------------------------------

API_KEY = "sk-prefix.Test_Key"
REQUEST_LINE = re.compile(r'"(GET|POST) (\S+) HTTP/1\.1" (\d{3})')


def test_the_key_is_checked_before_the_router_and_any_replica():
    with (
        stub_backends(1, ttft_ms=5, token_ms=5) as logged,
        balancer(logged.ports, api_key=API_KEY) as nginx,
    ):
        body = {"model": MODEL, "prompt": shared("secret"), "max_tokens": 2}
        refused = httpx.post(nginx.url + "/v1/completions", json=body)
        wrong = httpx.post(
            nginx.url + "/v1/completions", json=body, headers={"Authorization": "Bearer sk-x"}
        )
        allowed = httpx.post(
            nginx.url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        time.sleep(0.2)
        seen = [m.group(2) for m in REQUEST_LINE.finditer(logged[0].log_text())]
        log = nginx.access_log.read_text()
    assert (refused.status_code, wrong.status_code, allowed.status_code) == (401, 401, 200)
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert [p for p in seen if p != "/health"] == ["/v1/completions"]
    assert all("upstream=- " in line for line in log.splitlines() if '" 401 ' in line), log


def test_tls_with_prefix_routing_streams(fleet, tmp_path_factory):
    from tests.support.nginx import make_test_pki

    pki = make_test_pki(tmp_path_factory.mktemp("pki-prefix"))
    import ssl

    context = ssl.create_default_context(cafile=str(pki.ca_certificate))
    with balancer(fleet.ports, tls=pki.server) as nginx:
        body = {"model": MODEL, "prompt": shared("tls"), "max_tokens": 5, "stream": True}
        with httpx.stream(
            "POST", nginx.url + "/v1/completions", json=body, verify=context, timeout=30
        ) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            first = response.headers["x-replica"]
        again = httpx.post(
            nginx.url + "/v1/completions",
            json={"model": MODEL, "prompt": shared("tls") + "x", "max_tokens": 1},
            verify=context,
        )
    assert response.status_code == 200
    assert len(lines) == 6  # 5 tokens and [DONE]
    assert again.headers["x-replica"] == first
