"""The rendered config in a real nginx, in front of stand-in replicas, on loopback.

Each test drives the balancer with the official `openai` client, as a user
would, and reads which replica answered from `system_fingerprint` (the
stand-in puts its replica id there). Where the guide's config behaves
differently, the same scenario runs against it too, so each test shows the
failure it exists to prevent.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import openai
import pytest
from openai import OpenAI

from components.config.sections import RoutingPolicy
from tests.support.closed_connection import closed_while_idle
from tests.support.nginx import (
    LOOPBACK,
    Pki,
    RunningNginx,
    make_test_pki,
    require_nginx,
)
from tests.support.nginx import (
    balancer as nginx_balancer,
)
from tests.support.stub import StubFleet, stub_backends

pytestmark = pytest.mark.nginx

MODEL = "standin/tiny-chat"
QUIET = ("--disable-uvicorn-access-log",)


@contextlib.contextmanager
def balancer(ports: Sequence[int], **options: Any) -> Iterator[RunningNginx]:
    with nginx_balancer(require_nginx(), ports, **options) as nginx:
        yield nginx


def client(nginx: RunningNginx, timeout: float = 30.0) -> OpenAI:
    return OpenAI(base_url=nginx.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


def complete(api: OpenAI, tokens: int = 2, session: str | None = None) -> str:
    """One non-streaming completion; returns the replica that answered."""
    headers = {"X-Session-Id": session} if session is not None else None
    response = api.completions.create(
        model=MODEL, prompt="hello", max_tokens=tokens, extra_headers=headers
    )
    assert response.choices[0].finish_reason == "length"
    assert response.system_fingerprint is not None
    return response.system_fingerprint


def staggered(api: OpenAI, count: int, tokens: int, gap: float = 0.15) -> list[str]:
    """`count` long requests in flight together, started `gap` apart."""
    with ThreadPoolExecutor(count) as pool:
        futures = []
        for _ in range(count):
            futures.append(pool.submit(complete, api, tokens))
            time.sleep(gap)
        return [f.result() for f in futures]


@pytest.fixture(scope="module")
def fleet() -> Iterator[StubFleet]:
    require_nginx()
    with stub_backends(3, ttft_ms=10, token_ms=20, extra_args=QUIET) as stubs:
        yield stubs


# --- what a client sees ---------------------------------------------------------


def test_streaming_and_whole_responses_pass_through(fleet):
    with balancer(fleet.ports) as nginx:
        api = client(nginx)
        ids = {stub.replica_id for stub in fleet}
        whole = api.completions.create(model=MODEL, prompt="hi", max_tokens=5)
        assert whole.usage is not None and whole.usage.completion_tokens == 5
        assert whole.system_fingerprint in ids

        chunks = list(
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                stream=True,
            )
        )
        text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
        assert len([t for t in text if t]) == 6
        assert {c.system_fingerprint for c in chunks} <= ids
        assert [m.id for m in api.models.list()] == [MODEL]


def test_tokens_arrive_as_they_are_generated(fleet):
    """proxy_buffering off: the first token is not held back until the end."""
    with balancer(fleet.ports) as nginx:
        started = time.monotonic()
        stream = client(nginx).completions.create(
            model=MODEL, prompt="hi", max_tokens=40, stream=True
        )
        arrivals = [time.monotonic() - started for chunk in stream if chunk.choices]
        # 10 ms to the first token, 20 ms per token after: 0.79 s in all.
        assert arrivals[0] < 0.3, arrivals[:3]
        assert arrivals[-1] > 0.7


def test_lb_health_is_answered_by_nginx_itself(fleet):
    with balancer(fleet.ports) as nginx:
        response = httpx.get(nginx.url + "/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "pools": {"default": "up"}}
        assert "x-replica" not in response.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("POST", "/tokenize"), ("GET", "/version"), ("GET", "/")],
)
def test_replica_paths_are_refused_unless_exposed(fleet, method, path):
    body = {"model": MODEL, "prompt": "hi"} if method == "POST" else None
    with balancer(fleet.ports) as nginx:
        refused = httpx.request(method, nginx.url + path, json=body)
        assert refused.status_code == 404
        assert "x-replica" not in refused.headers
    with balancer(fleet.ports, expose_paths=(path,)) as nginx:
        allowed = httpx.request(method, nginx.url + path, json=body)
        assert "x-replica" in allowed.headers, allowed.text
        assert allowed.status_code != 404 or path == "/"


# --- spreading ----------------------------------------------------------------


@pytest.mark.parametrize("policy", [RoutingPolicy.LEAST_CONN, RoutingPolicy.ROUND_ROBIN])
def test_sequential_requests_reach_every_replica(fleet, policy):
    with balancer(fleet.ports, policy=policy) as nginx:
        api = client(nginx)
        counts = Counter(complete(api) for _ in range(30))
    assert set(counts) == {stub.replica_id for stub in fleet}, counts
    assert min(counts.values()) >= 7, counts


@pytest.mark.parametrize("policy", [RoutingPolicy.LEAST_CONN, RoutingPolicy.POWER_OF_TWO])
def test_concurrent_long_requests_go_to_idle_replicas(fleet, policy):
    """least_conn, and power-of-two with two candidates, never stack on a busy replica."""
    ports = fleet.ports if policy is RoutingPolicy.LEAST_CONN else fleet.ports[:2]
    with balancer(ports, policy=policy) as nginx:
        replicas = staggered(client(nginx), count=len(ports), tokens=40)
    assert len(set(replicas)) == len(ports), replicas


def test_power_of_two_uses_all_replicas(fleet):
    with balancer(fleet.ports, policy=RoutingPolicy.POWER_OF_TWO) as nginx:
        api = client(nginx)
        counts = Counter(complete(api) for _ in range(30))
    assert set(counts) == {stub.replica_id for stub in fleet}, counts


def test_session_affinity_sticks_per_header_value(fleet):
    with balancer(fleet.ports, policy=RoutingPolicy.SESSION_AFFINITY) as nginx:
        api = client(nginx)
        placement: dict[str, set[str]] = {}
        for round_ in range(4):
            for session in (f"chat-{n}" for n in range(12)):
                placement.setdefault(session, set()).add(complete(api, session=session))
            assert round_ >= 0
        anonymous = Counter(complete(api) for _ in range(15))
    assert all(len(replicas) == 1 for replicas in placement.values()), placement
    # 12 sessions on 3 replicas: all on one would be a broken hash key.
    assert len(set().union(*placement.values())) >= 2, placement
    # Requests without the header are not all pinned to one replica.
    assert len(anonymous) >= 2, anonymous


# --- failures -------------------------------------------------------------------


def test_killing_a_replica_under_load_fails_no_request_that_had_not_reached_it():
    with (
        stub_backends(3, ttft_ms=10, token_ms=10, extra_args=QUIET) as stubs,
        balancer(stubs.ports) as nginx,
    ):
        api = client(nginx)
        victim = stubs[1]
        killed_at: list[float] = []
        stop = threading.Event()
        outcomes: list[tuple[str, float, str | None, str | None]] = []
        lock = threading.Lock()

        def load(streaming: bool) -> None:
            while not stop.is_set():
                started = time.monotonic()
                replica: str | None = None
                error: str | None = None
                try:
                    if streaming:
                        stream = api.completions.create(
                            model=MODEL, prompt="hi", max_tokens=15, stream=True
                        )
                        for chunk in stream:
                            replica = replica or chunk.system_fingerprint
                    else:
                        replica = complete(api, tokens=15)
                except (openai.APIError, httpx2.HTTPError) as exc:  # openai's transport
                    error = repr(exc)
                with lock:
                    outcomes.append(("stream" if streaming else "whole", started, replica, error))

        with ThreadPoolExecutor(6) as pool:
            for index in range(6):
                pool.submit(load, index % 2 == 0)
            time.sleep(1.0)
            killed_at.append(time.monotonic())
            victim.kill()
            time.sleep(2.0)
            stop.set()
        access_log = nginx.access_log.read_text()

    kill_time = killed_at[0]
    failures = [o for o in outcomes if o[3] is not None]
    served_after = [o for o in outcomes if o[1] > kill_time + 0.05 and o[3] is None]
    assert len(outcomes) > 60
    # Every failure was in flight when the replica died...
    for _kind, started, replica, _error in failures:
        assert started < kill_time, failures
        # (a stream that broke before its first token names no replica)
        assert replica in {victim.replica_id, None}, failures
    # ...and was a stream that had already begun: a whole (non-streaming)
    # request whose replica died before answering is resent to another one,
    # because the body is buffered (bufferRequests) and POSTs may be retried
    # (retryNonIdempotent).
    assert all(kind == "stream" for kind, *_ in failures), failures
    # Each failure was on that replica (nginx logs the one upstream it reached).
    victim_address = f"{LOOPBACK}:{victim.port}"
    for line in access_log.splitlines():
        match = re.search(r'" (\d{3}) .* upstream=(\S+)', line)
        assert match is not None, line
        if match.group(1) != "200":
            assert match.group(2) == victim_address, line
    # Requests sent after the kill all succeed, on the survivors (connect
    # errors are retried on the next replica).
    assert served_after and all(o[2] != victim.replica_id for o in served_after)


def _first_answer_from(api: OpenAI, replica: str, bound: float) -> float | None:
    """Seconds until a request is answered by `replica`, or None within `bound`."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        with contextlib.suppress(openai.APIError):
            if complete(api, tokens=1) == replica:
                return time.monotonic() - started
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("guide", [False, True], ids=["ours", "guide"])
def test_a_restarted_replica_gets_traffic_again_within_the_fail_window(guide):
    window = 3
    with (
        stub_backends(2, ttft_ms=5, token_ms=5, extra_args=QUIET) as stubs,
        balancer(stubs.ports, guide=guide, fail_window_seconds=window) as nginx,
    ):
        api = client(nginx)
        victim = stubs[1]
        victim.stop(signal.SIGKILL)
        # Enough traffic for nginx to count max_fails failures on the victim.
        answered = Counter(complete(api, tokens=1) for _ in range(20))
        assert answered == {stubs[0].replica_id: 20}
        victim.start()
        returned_after = _first_answer_from(api, victim.replica_id, bound=window + 3.0)
    if guide:
        # fail_timeout=10000s: out of the pool for hours.
        assert returned_after is None
    else:
        assert returned_after is not None and returned_after <= window + 1.0


def test_a_generation_longer_than_the_default_read_timeout_completes(fleet):
    """2 s of silence before a whole response: the guide's 60 s default, scaled to 1 s, cuts it."""
    with balancer(fleet.ports, guide=True, guide_read_timeout=1) as nginx:
        with pytest.raises(openai.APIStatusError) as cut:
            complete(client(nginx), tokens=100)
        assert cut.value.status_code == 504
    with balancer(fleet.ports) as nginx:
        assert complete(client(nginx), tokens=100) in {s.replica_id for s in fleet}


def test_a_large_prompt_is_accepted(fleet):
    prompt = "word " * (1024 * 1024)  # 5 MiB
    with balancer(fleet.ports, guide=True) as nginx:
        with pytest.raises(openai.APIStatusError) as refused:
            client(nginx).completions.create(model=MODEL, prompt=prompt, max_tokens=1)
        assert refused.value.status_code == 413
    with balancer(fleet.ports) as nginx:
        response = client(nginx).completions.create(model=MODEL, prompt=prompt, max_tokens=1)
        assert response.usage is not None and response.usage.prompt_tokens == 1024 * 1024


@contextlib.contextmanager
def unavailable_replica(status: int) -> Iterator[tuple[int, list[str]]]:
    """A replica that answers every request with `status` (an engine that died)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [502, 503])
def test_a_replica_answering_502_or_503_is_skipped(fleet, status):
    """vLLM answers 503 when its engine is dead: the request goes to a live replica."""
    with (
        unavailable_replica(status) as (port, seen),
        balancer([port, fleet.ports[0]], policy=RoutingPolicy.ROUND_ROBIN) as nginx,
    ):
        api = client(nginx)
        answered = Counter(complete(api, tokens=1) for _ in range(6))
        assert answered == {fleet[0].replica_id: 6}
        # The dead replica did get (and fail) requests: they were resent, not lost.
        assert seen, "the failing replica was never tried"


def test_reloads_under_keep_alive_clients_fail_only_requests_on_closed_idle_connections(fleet):
    """Every drain and resume reloads nginx. Clients that keep connections alive and
    leave them idle between short requests: with retries off, a request fails only on
    a connection the reload closed, and none of those reached a replica; the
    official client with its default retries fails none."""
    strict: list[BaseException] = []
    default: list[BaseException] = []
    served: list[str] = []
    stop, lock = threading.Event(), threading.Lock()

    def loop(api: OpenAI, failures: list[BaseException]) -> None:
        while not stop.is_set():
            try:
                replica = complete(api, tokens=1)
                with lock:
                    served.append(replica)
            except Exception as exc:  # every failure is kept and judged below
                with lock:
                    failures.append(exc)
            time.sleep(0.02)  # idle on the kept-alive connection, as a chat client is

    with balancer(fleet.ports) as nginx:
        strict_api = client(nginx)
        default_api = OpenAI(base_url=nginx.url + "/v1", api_key="unused", timeout=30)
        threads = [
            threading.Thread(target=loop, args=(api, failures))
            for api, failures in [(strict_api, strict)] * 2 + [(default_api, default)] * 2
        ]
        for thread in threads:
            thread.start()
        try:
            for _ in range(100):
                time.sleep(0.05)
                nginx.process.send_signal(signal.SIGHUP)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        time.sleep(0.5)  # the last old workers finish and write their log lines
        logged = [
            line for line in nginx.access_log.read_text().splitlines() if "/v1/completions" in line
        ]

    print(
        f"100 reloads: {len(served)} served, {len(strict)} failed with retries off, "
        f"{len(default)} with the client's default retries"
    )
    # Enough requests to overlap every reload (each takes longer since /health
    # loads njs in every config; about 400 on a busy 2-core machine).
    assert len(served) > 200
    assert default == [], default
    assert all(closed_while_idle(exc) for exc in strict), strict
    # Not one of them reached nginx's handling: it logged exactly the served requests.
    assert len(logged) == len(served), (len(logged), len(served))
    assert all(re.search(r'" 200 ', line) for line in logged), logged


# --- TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def trusting(pki: Pki) -> ssl.SSLContext:
    """A client context that trusts only the test CA, as a user given the CA would."""
    return ssl.create_default_context(cafile=str(pki.ca_certificate))


def test_tls_streams_a_chat_completion_to_the_openai_client(fleet, pki):
    with (
        balancer(fleet.ports, tls=pki.server) as nginx,
        openai.DefaultHttpxClient(verify=trusting(pki)) as http,
    ):
        assert nginx.url.startswith("https://")
        api = OpenAI(base_url=nginx.url + "/v1", api_key="unused", max_retries=0, http_client=http)
        started = time.monotonic()
        arrivals = []
        text = []
        for chunk in api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=40,
            stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
                text.append(chunk.choices[0].delta.content)
        assert len(text) == 40
        # Still streamed, not buffered: 10 ms to the first token, 20 ms per token.
        assert arrivals[0] < 0.3, arrivals[:3]
        assert arrivals[-1] > 0.7
        with httpx.stream("GET", nginx.url + "/health", verify=trusting(pki)) as response:
            tls = response.extensions["network_stream"].get_extra_info("ssl_object")
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_tls_port_refuses_plain_http_and_untrusted_clients(fleet, pki):
    with balancer(fleet.ports, tls=pki.server) as nginx:
        plain = httpx.get(f"http://{LOOPBACK}:{nginx.port}/v1/models")
        assert plain.status_code == 400
        assert "x-replica" not in plain.headers
        # The certificate is really checked: the default CA bundle does not
        # know the test CA.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(nginx.url + "/health")
        # ...and the name is checked against the subjectAltName too.
        assert httpx.get(nginx.url + "/health", verify=trusting(pki)).status_code == 200
        access_log = nginx.access_log.read_text()
    assert f"upstream={LOOPBACK}" not in access_log


# --- the API key -----------------------------------------------------------------

API_KEY = "sk-LoadBalancer.Test_Key+42"
REQUEST_LINE = re.compile(r'"(GET|POST|HEAD|PUT|DELETE|OPTIONS) (\S+) HTTP/1\.1" (\d{3})')


@pytest.fixture(scope="module")
def logged_replica() -> Iterator[StubFleet]:
    """One stand-in with uvicorn's access log on: every request it gets is a line."""
    require_nginx()
    with stub_backends(1, ttft_ms=10, token_ms=20) as stubs:
        yield stubs


def requests_reaching(fleet: StubFleet) -> list[tuple[str, str]]:
    """(method, path) of every request the replicas got, apart from readiness checks."""
    seen = []
    for stub in fleet:
        for match in REQUEST_LINE.finditer(stub.log_text()):
            if match.group(2) != "/health":
                seen.append((match.group(1), match.group(2)))
    return seen


def wait_for_request(fleet: StubFleet, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while len(seen := requests_reaching(fleet)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return seen


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "x-replica" not in response.headers
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"


REFUSED_HEADERS = {
    "none": {},
    "wrong key": {"Authorization": "Bearer sk-wrong"},
    "two spaces": {"Authorization": f"Bearer  {API_KEY}"},
    "no space": {"Authorization": f"Bearer{API_KEY}"},
    "key in other case": {"Authorization": f"Bearer {API_KEY.swapcase()}"},
    "key prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"},
    "key plus suffix": {"Authorization": f"Bearer {API_KEY}x"},
    "bare key": {"Authorization": API_KEY},
    "x-api-key": {"x-api-key": API_KEY},
}


@pytest.mark.parametrize("headers", REFUSED_HEADERS.values(), ids=REFUSED_HEADERS.keys())
def test_requests_without_the_exact_key_never_reach_a_replica(logged_replica, headers):
    before = len(requests_reaching(logged_replica))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with balancer(logged_replica.ports, api_key=API_KEY, expose_paths=("/metrics",)) as nginx:
        assert_refused(httpx.post(nginx.url + "/v1/chat/completions", json=body, headers=headers))
        assert_refused(httpx.get(nginx.url + "/v1/models", headers=headers))
        assert_refused(httpx.get(nginx.url + "/metrics", headers=headers))
        # A request with the key, so the replica's log has caught up with
        # everything sent before it.
        allowed = httpx.get(nginx.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert allowed.status_code == 200
        assert "x-replica" in allowed.headers
        seen = wait_for_request(logged_replica, before + 1)
        access_log = nginx.access_log.read_text()
    assert seen[before:] == [("GET", "/metrics")], seen[before:]
    refused = [line for line in access_log.splitlines() if '" 401 ' in line]
    assert len(refused) == 3
    assert all("upstream=- " in line for line in refused), refused


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_read_in_any_case_as_vllm_reads_it(logged_replica, scheme):
    """vLLM compares `scheme.lower() == "bearer"` (docs/vllm.md): so does the balancer."""
    with balancer(logged_replica.ports, api_key=API_KEY) as nginx:
        response = httpx.get(
            nginx.url + "/v1/models", headers={"Authorization": f"{scheme} {API_KEY}"}
        )
        assert response.status_code == 200, response.text
        assert "x-replica" in response.headers


def test_the_openai_client_with_the_key_streams_and_with_a_wrong_key_is_refused(
    logged_replica, pki
):
    with (
        balancer(logged_replica.ports, api_key=API_KEY, tls=pki.server) as nginx,
        openai.DefaultHttpxClient(verify=trusting(pki)) as http,
    ):

        def api(key: str) -> OpenAI:
            return OpenAI(base_url=nginx.url + "/v1", api_key=key, max_retries=0, http_client=http)

        with pytest.raises(openai.AuthenticationError) as refused:
            api("sk-wrong").models.list()
        assert refused.value.code == "invalid_api_key"
        started = time.monotonic()
        arrivals = [
            time.monotonic() - started
            for chunk in api(API_KEY).chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=40,
                stream=True,
            )
            if chunk.choices and chunk.choices[0].delta.content
        ]
        assert len(arrivals) == 40
        assert arrivals[0] < 0.3, arrivals[:3]
        assert arrivals[-1] > 0.7


def test_the_refusal_is_json_even_for_a_path_nginx_has_a_type_for(logged_replica):
    """Without the empty `types`, nginx would label the JSON body text/html here."""
    with balancer(logged_replica.ports, api_key=API_KEY) as nginx:
        assert_refused(httpx.get(nginx.url + "/v1/index.html"))


def test_health_and_unknown_paths_need_no_key(logged_replica):
    with balancer(logged_replica.ports, api_key=API_KEY) as nginx:
        health = httpx.get(nginx.url + "/health")
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        assert httpx.get(nginx.url + "/tokenize").status_code == 404


def test_two_authorization_headers_are_refused_before_any_replica(logged_replica):
    """nginx answers 400 itself, so the balancer and the replica cannot disagree on the key."""
    before = len(requests_reaching(logged_replica))
    with balancer(logged_replica.ports, api_key=API_KEY) as nginx:
        both = [("Authorization", f"Bearer {API_KEY}"), ("Authorization", "Bearer sk-wrong")]
        for headers in (both, both[::-1]):
            assert httpx.get(nginx.url + "/v1/models", headers=headers).status_code == 400
        ok = httpx.get(nginx.url + "/v1/models", headers=both[:1])
        assert ok.status_code == 200
        seen = wait_for_request(logged_replica, before + 1)
    assert seen[before:] == [("GET", "/v1/models")]


def test_the_key_is_in_no_log_and_not_in_the_main_config(logged_replica):
    with balancer(logged_replica.ports, api_key=API_KEY, expose_paths=("/metrics",)) as nginx:
        for key in (API_KEY, "sk-wrong", API_KEY.swapcase()):
            for path in ("/v1/models", "/metrics", "/health", "/nowhere"):
                httpx.get(nginx.url + path, headers={"Authorization": f"Bearer {key}"})
        both = [("Authorization", f"Bearer {API_KEY}"), ("Authorization", "Bearer sk-wrong")]
        httpx.get(nginx.url + "/v1/models", headers=both)
        main_config = (nginx.sandbox / "nginx.conf").read_text()
        key_file = (nginx.sandbox / "api-key.conf").read_text()
        logs = nginx.access_log.read_text() + nginx.error_log.read_text()
    assert API_KEY in key_file  # the one place it is meant to be
    assert "api-key.conf" in main_config
    for secret in (API_KEY, API_KEY.swapcase(), "sk-wrong"):
        assert secret not in main_config
        assert secret not in logs
    assert logs.count('"GET /v1/models HTTP/1.1" 200') == 1


def test_without_failure_marks_a_returning_replica_gets_the_next_request():
    """Kubernetes' setting (`max_fails=0`, components/plan/kubernetes.py): a replica that
    refused 20 requests in a row (its Service empty) is not taken out, so it answers again
    as soon as it is back, not a failure window later, and nothing failed meanwhile."""
    from components.config.sections import LoadBalancerSettings, Upstream
    from components.lb.nginx_conf import render_nginx_config
    from tests.support.nginx import (
        free_port,
        loopback_runtime,
        make_sandbox,
        running_nginx,
        write_extra_files,
    )

    lb = LoadBalancerSettings(dynamic_resolve=False, fail_window_seconds=15).model_copy(
        update={"max_fails": 0, "keepalive_connections": 0}
    )
    sandbox, port = make_sandbox(), free_port()
    cleanup = contextlib.ExitStack()
    cleanup.callback(shutil.rmtree, sandbox, ignore_errors=True)
    with cleanup, stub_backends(2, ttft_ms=5, token_ms=5, extra_args=QUIET) as stubs:
        upstreams = [Upstream(host=LOOPBACK, port=p) for p in stubs.ports]
        runtime = loopback_runtime(sandbox, port)
        config = render_nginx_config(lb, upstreams, runtime)
        write_extra_files(lb, runtime)
        assert "max_fails=0" in config
        with running_nginx(require_nginx(), config, sandbox, port) as nginx:
            api = client(nginx)
            victim = stubs[1]
            victim.stop(signal.SIGKILL)
            answered = Counter(complete(api, tokens=1) for _ in range(20))
            assert answered == {stubs[0].replica_id: 20}
            victim.start()
            # Round robin: of the next two requests one goes to the victim, at once.
            back = {complete(api, tokens=1) for _ in range(2)}
            assert victim.replica_id in back, back
            refused = (sandbox / "error.log").read_text().count("Connection refused")
            assert refused >= 10, refused  # it was tried, refused, and never taken out
