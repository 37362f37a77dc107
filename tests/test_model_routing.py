"""Model routing in a real nginx with njs, in front of counting replicas, on loopback.

Two pools behind one balancer: `chat` (two replicas, prefix_affinity, with a
LoRA adapter) and `embed` (two replicas, least_conn). Every test drives the
balancer as a user would (the official `openai` client where it has a call
for it) and reads what each replica really received, so "routed to its pool"
and "no replica contacted" are counted, not inferred.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.containers.exporter.lb_exporter import LbMetrics, ReplicaNames
from components.lb.names import TlsFiles
from components.lb.nginx_conf import NginxRuntime, render_extra_files, render_nginx_config
from components.lb.pools import MISSING_MODEL_MESSAGE, ModelPool
from tests.support.fake_replica import FakeReplica, fake_replicas
from tests.support.nginx import (
    LOOPBACK,
    RunningNginx,
    free_port,
    loopback_runtime,
    make_sandbox,
    require_nginx,
    require_njs,
    running_nginx,
    write_extra_files,
)
from tests.support.nginx import balancer as nginx_balancer

pytestmark = pytest.mark.nginx

CHAT = "org/chat-model"
ADAPTER = "chat-sql-lora"
EMBED = "embed-model"
API_KEY = "sk-routing-test"
UNKNOWN_BODY = {
    "message": f"The model `nope` does not exist. Valid aliases: {CHAT}, {EMBED}.",
    "type": "NotFoundError",
    "param": "model",
    "code": 404,
}


@contextlib.contextmanager
def two_pools(**options: Any) -> Iterator[tuple[RunningNginx, dict[str, FakeReplica]]]:
    nginx_binary = require_nginx()
    require_njs()
    with fake_replicas("c0", "c1", "e0", "e1") as replicas:

        def up(*names: str) -> tuple[Upstream, ...]:
            return tuple(Upstream(host=LOOPBACK, port=replicas[n].port) for n in names)

        pools = [
            ModelPool(
                name="chat",
                served_name=CHAT,
                model="org/Chat-Model-7B",
                upstreams=up("c0", "c1"),
                policy=RoutingPolicy.PREFIX_AFFINITY,
                adapters=(ADAPTER,),
            ),
            ModelPool(
                name="embed",
                served_name=EMBED,
                model="/models/embed",
                upstreams=up("e0", "e1"),
                policy=RoutingPolicy.LEAST_CONN,
            ),
        ]
        ports = [r.port for r in replicas.values()]
        options.setdefault("prefix_chars", 64)
        with nginx_balancer(nginx_binary, ports, pools=pools, **options) as nginx:
            yield nginx, replicas


@pytest.fixture(scope="module")
def routed() -> Iterator[tuple[RunningNginx, dict[str, FakeReplica]]]:
    with two_pools() as running:
        yield running


@pytest.fixture
def lb(routed: tuple[RunningNginx, dict[str, FakeReplica]]) -> RunningNginx:
    for replica in routed[1].values():
        replica.reset()
    return routed[0]


@pytest.fixture
def replicas(routed: tuple[RunningNginx, dict[str, FakeReplica]]) -> dict[str, FakeReplica]:
    return routed[1]


def client(nginx: RunningNginx, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=nginx.url + "/v1", api_key=key, max_retries=0, timeout=30)


def counts(replicas: dict[str, FakeReplica]) -> dict[str, int]:
    return {name: replica.count() for name, replica in replicas.items()}


def pool_of(counted: dict[str, int], prefix: str) -> int:
    return sum(n for name, n in counted.items() if name.startswith(prefix))


def chat(api: OpenAI, model: str, text: str) -> str:
    answer = api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=2
    )
    return str(answer.choices[0].message.content)  # the fake puts its name there


# --- each request reaches the pool of its model ------------------------------------


def test_chat_and_embeddings_reach_their_pools(lb, replicas):
    api = client(lb)
    answered = Counter(chat(api, CHAT, f"question {i}") for i in range(8))
    for i in range(8):
        embedding = api.embeddings.create(model=EMBED, input=f"text {i}")
        assert embedding.data[0].embedding == [0.1, 0.2]
    assert set(answered) <= {"c0", "c1"} and sum(answered.values()) == 8
    counted = counts(replicas)
    assert pool_of(counted, "c") == 8 and pool_of(counted, "e") == 8, counted
    assert {p for r in ("c0", "c1") for p in replicas[r].paths()} == {"/v1/chat/completions"}
    assert {p for r in ("e0", "e1") for p in replicas[r].paths()} == {"/v1/embeddings"}
    # least_conn over two idle replicas takes both in turn.
    assert counted["e0"] > 0 and counted["e1"] > 0, counted


def test_an_adapter_name_reaches_its_pool_unchanged(lb, replicas):
    api = client(lb)
    for i in range(4):
        assert chat(api, ADAPTER, f"sql {i}") in {"c0", "c1"}
    got = [model for r in ("c0", "c1") for _, model in replicas[r].requests]
    assert got == [ADAPTER] * 4
    assert pool_of(counts(replicas), "e") == 0


def test_completions_and_any_json_endpoint_are_routed(lb, replicas):
    api = client(lb)
    api.completions.create(model=CHAT, prompt="hello", max_tokens=2)
    response = httpx.post(lb.url + "/v1/score", json={"model": EMBED, "text_1": "a", "text_2": "b"})
    assert response.status_code == 200 and response.headers["x-replica"] in {"e0", "e1"}
    assert sum(r.paths()["/v1/completions"] for r in replicas.values()) == 1
    assert pool_of(counts(replicas), "c") == 1 and pool_of(counts(replicas), "e") == 1


# --- what no pool serves is answered by the balancer -------------------------------


@pytest.mark.parametrize("model", ["nope"])
def test_an_unknown_model_gets_vllms_404_and_no_replica_is_contacted(lb, replicas, model):
    api = client(lb)
    with pytest.raises(openai.NotFoundError) as chat_error:
        api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert chat_error.value.status_code == 404
    assert chat_error.value.body == UNKNOWN_BODY
    with pytest.raises(openai.NotFoundError) as embed_error:
        api.embeddings.create(model=model, input="hi")
    assert embed_error.value.body == UNKNOWN_BODY
    assert chat_error.value.response.headers["content-type"] == "application/json"
    assert sum(counts(replicas).values()) == 0


@pytest.mark.parametrize(
    "model",
    [
        CHAT.upper(),
        CHAT + " ",
        "org/chat",
        "__proto__",
        "constructor",
        "toString",
        "hasOwnProperty",
    ],
)
def test_names_match_exactly_and_case_sensitively(lb, replicas, model):
    response = httpx.post(lb.url + "/v1/chat/completions", json={"model": model, "messages": []})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["message"].startswith(f"The model `{model}` does not exist.")
    assert sum(counts(replicas).values()) == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"messages": []}',
        b'{"model": 7}',
        b'{"model": ""}',
        b'{"model": null}',
    ],
    ids=["empty", "not json", "array", "no model", "number", "empty string", "null"],
)
def test_a_request_naming_no_model_gets_404_and_no_replica_is_contacted(lb, replicas, content):
    response = httpx.post(
        lb.url + "/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": MISSING_MODEL_MESSAGE,
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    assert sum(counts(replicas).values()) == 0


# --- GET /v1/models ------------------------------------------------------------------


def test_models_are_listed_by_the_balancer_itself(lb, replicas):
    before = int(time.time())
    listed = list(client(lb).models.list())
    after = int(time.time())
    assert [m.id for m in listed] == [CHAT, ADAPTER, EMBED]
    assert all(m.object == "model" and m.owned_by == "vllm" for m in listed)
    assert all(before <= m.created <= after for m in listed)
    cards = {m.id: m.model_dump() for m in listed}
    assert (cards[CHAT]["root"], cards[CHAT]["parent"]) == ("org/Chat-Model-7B", None)
    assert (cards[ADAPTER]["root"], cards[ADAPTER]["parent"]) == (None, CHAT)
    assert (cards[EMBED]["root"], cards[EMBED]["parent"]) == ("/models/embed", None)
    assert httpx.post(lb.url + "/v1/models").status_code == 405
    assert sum(counts(replicas).values()) == 0


# --- inside a pool ------------------------------------------------------------------


def test_prefix_affinity_keeps_a_prefix_on_one_replica_of_its_pool(lb, replicas):
    api = client(lb)
    homes: dict[int, set[str]] = {}
    for round_ in range(3):
        for user in range(12):
            system = f"user {user}: you are the assistant of user number {user}. " * 3
            answer = api.chat.completions.create(
                model=CHAT,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"turn {round_}"},
                ],
            )
            homes.setdefault(user, set()).add(str(answer.choices[0].message.content))
    assert all(len(home) == 1 for home in homes.values()), homes
    used = {next(iter(home)) for home in homes.values()}
    assert used == {"c0", "c1"}, homes  # twelve prefixes spread over both
    assert pool_of(counts(replicas), "e") == 0


def test_streams_pass_through_routing(lb, replicas):
    stream = client(lb).chat.completions.create(
        model=ADAPTER, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    words = [c.choices[0].delta.content for c in stream if c.choices]
    assert words == ["one", "two", "three"]
    assert pool_of(counts(replicas), "c") == 1


@pytest.mark.parametrize(("down", "model"), [("e0", EMBED), ("c0", CHAT)])
def test_a_replica_down_in_a_pool_its_other_replica_answers(routed, down, model):
    nginx, replicas = routed
    api = client(nginx)
    replicas[down].stop()
    try:
        for replica in replicas.values():
            replica.reset()
        for i in range(6):
            if model == EMBED:
                api.embeddings.create(model=model, input=f"x {i}")
            else:
                chat(api, model, f"failover {i}")
        counted = counts(replicas)
        pool = down[0]
        assert pool_of(counted, pool) == 6 and counted[down] == 0, counted
    finally:
        replicas[down].start()


# --- bodies over 1 MiB: scanned for their top-level model, not parsed -------------

BIG = "A" * (2 * 1024 * 1024)


@pytest.mark.parametrize(
    ("body", "pool"),
    [
        ({"model": EMBED, "input": BIG}, "e"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + BIG},
                            }
                        ],
                    }
                ],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"properties": {"model": {"type": "string"}}},
                        },
                    }
                ],
                "response_format": {"model": EMBED},
                "stop": ['"model": "' + EMBED + '"', "\\"],
                "model": CHAT,
            },
            "c",
        ),
        # Written by hand: `\u0065` is "e", so this is a second "model" key, and the last wins.
        (f'{{"model": "{EMBED}", "input": "{BIG}", "mod\\u0065l": "{ADAPTER}"}}', "c"),
        ({"input": BIG, "user": '{"model": "' + CHAT + '"}'}, None),
        ({"model": 7, "input": BIG}, None),
    ],
    ids=["first key", "last key among nested ones", "escaped key, last wins", "none", "number"],
)
def test_a_large_json_body_is_routed_by_its_top_level_model(lb, replicas, body, pool):
    text = body if isinstance(body, str) else json.dumps(body)
    assert len(text) > 1024 * 1024
    expected = {"e": (EMBED,), "c": (CHAT, ADAPTER)}.get(pool or "", ())
    model = json.loads(text).get("model")
    assert model in expected if pool else not isinstance(model, str)
    response = httpx.post(
        lb.url + "/v1/chat/completions",
        content=text.encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    counted = counts(replicas)
    if pool is None:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["message"] == MISSING_MODEL_MESSAGE
        assert sum(counted.values()) == 0
    else:
        assert response.status_code == 200, response.text
        assert pool_of(counted, pool) == 1 and sum(counted.values()) == 1, counted


# --- multipart bodies (audio) ---------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [1000, 3 * 1024 * 1024],
    ids=["small", "over the 1m body buffer of the single-model router"],
)
def test_a_multipart_form_is_routed_by_its_model_field(lb, replicas, size):
    audio = b"RIFF" + bytes(range(256)) * (size // 256)
    response = httpx.post(
        lb.url + "/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": EMBED, "language": "en"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-replica"] in {"e0", "e1"}
    (received,) = [r for r in replicas.values() if r.count()]
    assert received.paths() == Counter({"/v1/audio/transcriptions": 1})


def test_a_multipart_form_without_model_gets_404(lb, replicas):
    response = httpx.post(
        lb.url + "/v1/audio/transcriptions",
        files={"file": ("speech.wav", b"RIFF0000", "audio/wav")},
        data={"language": "en"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["message"] == MISSING_MODEL_MESSAGE
    assert sum(counts(replicas).values()) == 0


# --- the API key guard runs before the router -----------------------------------------


def test_the_api_key_is_checked_before_routing_and_for_the_model_list():
    with two_pools(api_key=API_KEY) as (nginx, replicas):
        for path, method in [("/v1/chat/completions", "POST"), ("/v1/models", "GET")]:
            body = {"model": CHAT, "messages": []} if method == "POST" else None
            refused = httpx.request(method, nginx.url + path, json=body)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_api_key"
        unknown = httpx.post(nginx.url + "/v1/chat/completions", json={"model": "nope"})
        assert unknown.status_code == 401  # the model is not even looked at
        assert sum(counts(replicas).values()) == 0
        api = client(nginx, API_KEY)
        assert chat(api, CHAT, "with the key") in {"c0", "c1"}
        assert [m.id for m in api.models.list()] == [CHAT, ADAPTER, EMBED]
        with pytest.raises(openai.AuthenticationError):
            client(nginx, "sk-wrong").models.list()


# --- the rendered text -------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "single_model"
GOLDEN_UPSTREAMS = [Upstream(host="vllm0", port=8000), Upstream(host="10.0.0.2", port=8001)]
GOLDEN_CASES = {
    "default": (LoadBalancerSettings(), NginxRuntime()),
    "prefix_tls_key_metrics": (
        LoadBalancerSettings(policy="prefix_affinity", tls=True, expose_paths=("/metrics",)),
        NginxRuntime(
            tls=TlsFiles(certificate="/etc/nginx/tls/server.crt", key="/etc/nginx/tls/server.key"),
            api_key_map="/etc/nginx/api-key.conf",
            metrics_syslog="vllm-lb-exporter:5514",
        ),
    ),
    "session_static": (
        LoadBalancerSettings(
            policy="session_affinity", dynamic_resolve=False, expose_paths=("/metrics", "/version")
        ),
        NginxRuntime(metrics_syslog="vllm-lb-exporter:5514"),
    ),
    "power_of_two": (
        LoadBalancerSettings(policy="power_of_two", retry_non_idempotent=False),
        NginxRuntime(),
    ),
}


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_without_pools_the_config_is_byte_for_byte_the_single_model_one(case):
    """tests/golden/single_model/ holds what the renderer produced before model
    routing existed (commit 50f4751): a stack without pools deploys exactly that.
    Changes since, on purpose: prefix.js sends a body nginx kept in a temp file
    to the fallback without reading it, on njs 0.8.10 as on 0.7.9; and (issue 27)
    /health is njs with a probe per pool (health.js, models.js in every config),
    every error nginx makes is a JSON error object (`error_page` to internal
    locations), and the API key check reads the scheme in any case; (issue 28)
    health.js leaves the served names out of its 404 where named API keys are."""
    lb, runtime = GOLDEN_CASES[case]
    assert (
        render_nginx_config(lb, GOLDEN_UPSTREAMS, runtime) == (GOLDEN / f"{case}.conf").read_text()
    )
    assert (
        render_nginx_config(lb, GOLDEN_UPSTREAMS, runtime, pools=())
        == (GOLDEN / f"{case}.conf").read_text()
    )
    files = json.loads((GOLDEN / f"{case}.files.json").read_text())
    assert render_extra_files(lb, runtime) == files
    assert render_extra_files(lb, runtime, pools=()) == files


# --- monitoring ---------------------------------------------------------------------------


def test_the_metrics_log_names_the_pool_and_the_exporter_labels_by_it():
    """nginx's own syslog lines, into the real exporter's parser."""
    nginx_binary = require_nginx()
    require_njs()
    sandbox = make_sandbox("nginx-routing-metrics-")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((LOOPBACK, 0))
    receiver.settimeout(5)
    try:
        with fake_replicas("c0", "e0") as replicas:
            pools = [
                ModelPool(
                    "chat",
                    CHAT,
                    "org/c",
                    (Upstream(host=LOOPBACK, port=replicas["c0"].port),),
                    RoutingPolicy.LEAST_CONN,
                ),
                ModelPool(
                    "embed",
                    EMBED,
                    "org/e",
                    (Upstream(host=LOOPBACK, port=replicas["e0"].port),),
                    RoutingPolicy.ROUND_ROBIN,
                ),
            ]
            port = free_port()
            runtime = dataclasses.replace(
                loopback_runtime(sandbox, port),
                metrics_syslog=f"{LOOPBACK}:{receiver.getsockname()[1]}",
            )
            lb_settings = LoadBalancerSettings(dynamic_resolve=False)
            config = render_nginx_config(
                lb_settings, [u for p in pools for u in p.upstreams], runtime, pools
            )
            write_extra_files(lb_settings, runtime, pools)
            with running_nginx(nginx_binary, config, sandbox, port) as nginx:
                api = client(nginx)
                chat(api, CHAT, "hi")
                api.embeddings.create(model=EMBED, input="x")
                with pytest.raises(openai.NotFoundError):
                    chat(api, "nope", "hi")
                metrics = LbMetrics(
                    ReplicaNames(
                        [
                            f"c0={LOOPBACK}:{replicas['c0'].port}",
                            f"e0={LOOPBACK}:{replicas['e0'].port}",
                        ]
                    )
                )
                for _ in range(3):
                    metrics.record_line(receiver.recv(65536).decode())
        text = metrics.render()
        assert 'vllm_lb_requests_total{status="200",pool="chat"} 1' in text
        assert 'vllm_lb_requests_total{status="200",pool="embed"} 1' in text
        assert 'vllm_lb_requests_total{status="404"} 1' in text
        assert 'vllm_lb_upstream_attempts_total{replica="e0",status="200",pool="embed"} 1' in text
    finally:
        receiver.close()
        shutil.rmtree(sandbox, ignore_errors=True)
