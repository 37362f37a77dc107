"""Named API keys in a real nginx with njs, in front of counting replicas and stand-ins.

Each key is driven as its team would, with the official `openai` client: what it
may reach (a model it may not use is exactly an unknown model, and
`GET /v1/models` lists only its own), its limits (429 with `Retry-After` while
another key is served), its usage (the exporter's counts against what the
stand-in reported), and a rotation under streaming load (docs/api-keys.md).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from components.config.sections import RoutingPolicy, Upstream
from components.containers.exporter.lb_exporter import LbMetrics, ReplicaNames
from components.lb.keys import KeyPolicy, digest, render_key_file
from components.lb.pools import ModelPool
from components.plan.monitoring import DASHBOARD_FILE
from tests.support.fake_replica import FakeReplica, fake_replicas
from tests.support.nginx import LOOPBACK, RunningNginx, require_nginx, require_njs
from tests.support.nginx import balancer as nginx_balancer
from tests.support.streaming_load import streaming_load
from tests.support.stub import StubFleet, stub_backends

pytestmark = pytest.mark.nginx

CHAT = "org/chat-model"
ADAPTER = "chat-sql-lora"
EMBED = "embed-model"
OPERATOR = "sk-operator-0123456789"
KEYS = {
    "team-a": "sk-team-a-aaaaaaaaaaaa",
    "team-b": "sk-team-b-bbbbbbbbbbbb",
    "capped": "sk-capped-cccccccccccc",
    "open": "sk-open-oooooooooooooo",
}
POLICIES = (
    KeyPolicy("team-a", models=(CHAT,)),
    KeyPolicy("team-b", models=(ADAPTER, EMBED)),
    KeyPolicy("capped", max_tokens=8),
    KeyPolicy("open"),
)


def client(nginx: RunningNginx, key: str) -> OpenAI:
    return OpenAI(base_url=nginx.url + "/v1", api_key=key, max_retries=0, timeout=30)


@contextlib.contextmanager
def pooled(
    policies: tuple[KeyPolicy, ...], keys: dict[str, str], **options: Any
) -> Iterator[tuple[RunningNginx, dict[str, FakeReplica]]]:
    """Two pools of fake replicas (chat with an adapter, embed) behind named keys."""
    nginx_binary = require_nginx()
    require_njs()
    with fake_replicas("c0", "e0") as replicas:
        pools = [
            ModelPool(
                name="chat",
                served_name=CHAT,
                model="org/Chat-Model-7B",
                upstreams=(Upstream(host=LOOPBACK, port=replicas["c0"].port),),
                policy=RoutingPolicy.PREFIX_AFFINITY,
                adapters=(ADAPTER,),
            ),
            ModelPool(
                name="embed",
                served_name=EMBED,
                model="/models/embed",
                upstreams=(Upstream(host=LOOPBACK, port=replicas["e0"].port),),
                policy=RoutingPolicy.LEAST_CONN,
            ),
        ]
        ports = [r.port for r in replicas.values()]
        with nginx_balancer(
            nginx_binary,
            ports,
            pools=pools,
            api_key=OPERATOR,
            keys=policies,
            named_keys=keys,
            **options,
        ) as nginx:
            yield nginx, replicas


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[RunningNginx, dict[str, FakeReplica]]]:
    with pooled(POLICIES, KEYS) as running:
        yield running


@pytest.fixture
def lb(keyed: tuple[RunningNginx, dict[str, FakeReplica]]) -> RunningNginx:
    for replica in keyed[1].values():
        replica.reset()
    return keyed[0]


@pytest.fixture
def replicas(keyed: tuple[RunningNginx, dict[str, FakeReplica]]) -> dict[str, FakeReplica]:
    return keyed[1]


def body_of(error: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict)
    return error.body


def use(api: OpenAI, model: str) -> None:
    if model == EMBED:
        api.embeddings.create(model=model, input="text")
    else:
        api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def unknown_body(model: str, aliases: str) -> dict[str, Any]:
    return {
        "message": f"The model `{model}` does not exist. Valid aliases: {aliases}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


# --- who may use what --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "allowed", "aliases"),
    [
        ("team-a", {CHAT}, CHAT),
        ("team-b", {ADAPTER, EMBED}, EMBED),
        ("open", {CHAT, ADAPTER, EMBED}, f"{CHAT}, {EMBED}"),
        ("apiKey", {CHAT, ADAPTER, EMBED}, f"{CHAT}, {EMBED}"),
    ],
)
def test_each_key_reaches_only_its_models(lb, replicas, name, allowed, aliases):
    """A model the key may not use is answered exactly as one nobody serves (the
    valid aliases are the key's own), and no replica hears of it."""
    key = OPERATOR if name == "apiKey" else KEYS[name]
    api = client(lb, key)
    for model in sorted(allowed):
        use(api, model)
    assert sum(r.count() for r in replicas.values()) == len(allowed)
    for replica in replicas.values():
        replica.reset()
    for model in [*sorted({CHAT, ADAPTER, EMBED} - allowed), "nope"]:
        with pytest.raises(openai.NotFoundError) as refused:
            use(api, model)
        assert refused.value.body == unknown_body(model, aliases)
        assert refused.value.response.headers["content-type"] == "application/json"
    assert sum(r.count() for r in replicas.values()) == 0
    order = [CHAT, ADAPTER, EMBED]
    assert [m.id for m in api.models.list()] == [m for m in order if m in allowed]


def test_a_wrong_or_missing_key_is_refused_before_any_replica(lb, replicas):
    for key in ("sk-team-a-aaaaaaaaaaab", KEYS["team-a"].upper(), digest(KEYS["team-a"])):
        with pytest.raises(openai.AuthenticationError) as refused:
            use(client(lb, key), CHAT)
        assert body_of(refused.value)["code"] == "invalid_api_key"
    response = httpx.post(lb.url + "/v1/chat/completions", json={"model": CHAT})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert sum(r.count() for r in replicas.values()) == 0
    # The scheme in any case, as vLLM reads the header.
    response = httpx.get(
        lb.url + "/v1/models", headers={"Authorization": f"bEaReR {KEYS['team-a']}"}
    )
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [CHAT]


def test_health_lists_no_model_names_when_keys_hide_them(lb):
    """/health asks for no key: with named keys its 404 does not list the served names."""
    response = httpx.get(lb.url + "/health/nope")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message == (
        "No pool serves the model `nope`. GET /v1/models lists the models your API key may use."
    )


def test_a_capped_key_may_not_ask_for_more_tokens(lb, replicas):
    api = client(lb, KEYS["capped"])
    messages: Any = [{"role": "user", "content": "hi"}]
    api.chat.completions.create(model=CHAT, messages=messages, max_tokens=8)
    api.chat.completions.create(model=CHAT, messages=messages, max_completion_tokens=8)
    api.completions.create(model=CHAT, prompt="hi", max_tokens=8)
    api.embeddings.create(model=EMBED, input="no generation, no cap")
    assert sum(r.count() for r in replicas.values()) == 4
    for replica in replicas.values():
        replica.reset()
    refused: list[Callable[[], object]] = [
        lambda: api.chat.completions.create(model=CHAT, messages=messages, max_tokens=9),
        lambda: api.chat.completions.create(model=CHAT, messages=messages),
        lambda: api.chat.completions.create(
            model=CHAT, messages=messages, max_completion_tokens=100, max_tokens=2
        ),
        # vLLM's default for a completion is 16 tokens.
        lambda: api.completions.create(model=CHAT, prompt="hi"),
    ]
    fields = ["max_tokens", "max_tokens", "max_completion_tokens", "max_tokens"]
    for call, field in zip(refused, fields, strict=True):
        with pytest.raises(openai.BadRequestError) as error:
            call()
        body = body_of(error.value)
        assert body["type"] == "BadRequestError" and body["code"] == 400
        assert body["param"] == field
        assert body["message"].startswith("This API key may ask for at most 8 tokens per request")
        assert body["message"].endswith(f". Set {field} to 8 or less."), body
    assert "it does not set max_tokens (vLLM's default: 16)" in body["message"]
    assert sum(r.count() for r in replicas.values()) == 0
    # Other keys are not capped.
    client(lb, KEYS["open"]).chat.completions.create(model=CHAT, messages=messages)


def test_a_large_body_is_capped_too(lb, replicas):
    """Over 1 MB the router scans the body for the field instead of parsing it."""
    filler = "x" * 1_100_000
    body = {"model": CHAT, "messages": [{"role": "user", "content": filler}], "max_tokens": 9}
    headers = {"Authorization": f"Bearer {KEYS['capped']}"}
    response = httpx.post(lb.url + "/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400, response.text
    body["max_tokens"] = 8
    response = httpx.post(lb.url + "/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert replicas["c0"].count() == 1


# --- limits ------------------------------------------------------------------------------


def test_over_its_rate_a_key_gets_429_while_others_are_served():
    policies = (KeyPolicy("slow", requests_per_minute=3), KeyPolicy("other"))
    keys = {"slow": "sk-slow-0000000000", "other": "sk-other-000000000"}
    with pooled(policies, keys) as (nginx, replicas):
        slow, other = client(nginx, keys["slow"]), client(nginx, keys["other"])
        for _ in range(3):
            use(slow, CHAT)
        with pytest.raises(openai.RateLimitError) as limited:
            use(slow, CHAT)
        error = limited.value
        assert error.response.headers["retry-after"] == "20"
        assert error.response.headers["content-type"] == "application/json"
        assert error.body == {
            "message": "Rate limit reached for API key 'slow': 3 requests per minute at "
            "this load balancer. Retry after 20 s.",
            "type": "RateLimitError",
            "param": None,
            "code": 429,
        }
        with pytest.raises(openai.RateLimitError):
            slow.models.list()
        for _ in range(10):
            use(other, CHAT)
        assert replicas["c0"].count() == 13


def test_over_its_concurrency_a_key_gets_429_while_others_are_served():
    nginx_binary = require_nginx()
    require_njs()
    policies = (KeyPolicy("narrow", concurrent_requests=2), KeyPolicy("other"))
    keys = {"narrow": "sk-narrow-00000000", "other": "sk-other-000000000"}
    with stub_backends(1, ttft_ms=10, token_ms=50, api_key=OPERATOR) as stubs:
        pools = [stand_in_pool(stubs)]
        with nginx_balancer(
            nginx_binary,
            stubs.ports,
            pools=pools,
            api_key=OPERATOR,
            keys=policies,
            named_keys=keys,
        ) as nginx:
            narrow = client(nginx, keys["narrow"])
            streams = [stream(narrow, 40) for _ in range(2)]
            for held in streams:
                next(iter(held))  # both in flight
            with pytest.raises(openai.RateLimitError) as limited:
                use(narrow, STANDIN)
            assert limited.value.response.headers["retry-after"] == "1"
            assert "at most 2 at once" in body_of(limited.value)["message"]
            # Another key is served meanwhile, through the same replica.
            use(client(nginx, keys["other"]), STANDIN)
            for held in streams:
                assert sum(1 for _ in held) > 0
                held.close()
            use(narrow, STANDIN)  # a slot is free again


# --- usage --------------------------------------------------------------------------------

STANDIN = "standin/tiny-chat"


def stand_in_pool(stubs: StubFleet) -> ModelPool:
    return ModelPool(
        name="chat",
        served_name=STANDIN,
        model=STANDIN,
        upstreams=tuple(Upstream(host=LOOPBACK, port=p) for p in stubs.ports),
        policy=RoutingPolicy.LEAST_CONN,
    )


def stream(api: OpenAI, tokens: int, usage: bool = False) -> Any:
    return api.chat.completions.create(
        model=STANDIN,
        messages=[{"role": "user", "content": "count to many"}],
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True} if usage else None,
    )


class Receiver:
    """nginx's metrics syslog lines, into the real exporter's parser."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((LOOPBACK, 0))
        self.socket.settimeout(0.2)
        self.metrics = LbMetrics(ReplicaNames([]))
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.socket.getsockname()[1]}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                continue
            line = data.decode()
            self.lines.append(line)
            self.metrics.record_line(line)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close()


def series(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric family in the exporter's text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def test_usage_is_counted_per_key_and_model_as_the_stand_in_reported_it():
    nginx_binary = require_nginx()
    require_njs()
    keys = {"team-a": KEYS["team-a"], "team-b": KEYS["team-b"]}
    policies = (KeyPolicy("team-a"), KeyPolicy("team-b", requests_per_minute=1))
    receiver = Receiver()
    try:
        with (
            stub_backends(2, ttft_ms=5, token_ms=2, api_key=OPERATOR) as stubs,
            nginx_balancer(
                nginx_binary,
                stubs.ports,
                pools=[stand_in_pool(stubs)],
                api_key=OPERATOR,
                keys=policies,
                named_keys=keys,
                metrics_syslog=receiver.address,
            ) as nginx,
        ):
            api = client(nginx, keys["team-a"])
            reported = {"prompt": 0, "completion": 0}

            def add(usage: Any) -> None:
                reported["prompt"] += usage.prompt_tokens
                reported["completion"] += usage.completion_tokens

            def whole(i: int) -> None:
                answer = api.chat.completions.create(
                    model=STANDIN,
                    messages=[{"role": "user", "content": "word " * (i % 50 + 1)}],
                    max_tokens=i % 40 + 1,
                )
                add(answer.usage)

            def streamed(i: int) -> None:
                for chunk in stream(api, i % 60 + 1, usage=True):
                    if chunk.usage is not None:
                        add(chunk.usage)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(whole, range(120)))
                list(pool.map(streamed, range(120)))
                # Streams that did not ask for usage: counted, not metered.
                list(pool.map(lambda i: sum(1 for _ in stream(api, 5)), range(20)))
            team_b = client(nginx, keys["team-b"])
            use(team_b, STANDIN)
            with pytest.raises(openai.RateLimitError):
                use(team_b, STANDIN)
            receiver.wait_for(262)
    finally:
        receiver.close()
    text = receiver.metrics.render()
    prompt = series(text, "vllm_lb_key_prompt_tokens_total")
    completion = series(text, "vllm_lb_key_completion_tokens_total")
    labels = f'{{key="team-a",model="{STANDIN}"}}'
    assert reported["prompt"] > 1000 and reported["completion"] > 1000, reported
    assert abs(prompt[labels] - reported["prompt"]) <= 0.01 * reported["prompt"], (prompt, reported)
    assert abs(completion[labels] - reported["completion"]) <= 0.01 * reported["completion"]
    requests = series(text, "vllm_lb_key_requests_total")
    assert requests[f'{{key="team-a",model="{STANDIN}",code="2xx"}}'] == 260
    assert requests[f'{{key="team-b",model="{STANDIN}",code="2xx"}}'] == 1
    unmetered = series(text, "vllm_lb_key_unmetered_requests_total")
    assert unmetered == {labels: 20}
    limited = series(text, "vllm_lb_key_rate_limited_requests_total")
    assert limited == {'{key="team-b",limit="requests_per_minute"}': 1}
    # The key's name labels everything; no key is in any line nginx sent.
    for line in receiver.lines:
        assert not any(key in line for key in (*KEYS.values(), OPERATOR)), line


# --- rotation -------------------------------------------------------------------------------


def test_adding_rotating_and_removing_keys_reloads_with_no_failed_request():
    """Streams of a key that stays, and one of the key being rotated, run while the
    key file changes twice and nginx reloads: every stream ends whole; then the
    old key is refused and the new one served."""
    nginx_binary = require_nginx()
    require_njs()
    keys = {"team-a": KEYS["team-a"], "stays": KEYS["team-b"], "leaves": KEYS["open"]}
    policies = (KeyPolicy("team-a"), KeyPolicy("stays"), KeyPolicy("leaves"))
    rotated = "sk-team-a-rotated-000000"
    with (
        stub_backends(2, ttft_ms=10, token_ms=15, api_key=OPERATOR) as stubs,
        nginx_balancer(
            nginx_binary,
            stubs.ports,
            pools=[stand_in_pool(stubs)],
            api_key=OPERATOR,
            keys=policies,
            named_keys=keys,
        ) as nginx,
    ):
        key_file = nginx.sandbox / "api-key.conf"
        before = key_file.read_text()
        assert not any(k in before for k in keys.values())
        old_key_stream = stream(client(nginx, keys["team-a"]), 150)
        next(iter(old_key_stream))
        with streaming_load(
            nginx.url, keys["stays"], workers=6, tokens=24, model=STANDIN
        ) as streams:
            time.sleep(1.5)
            changed = {"team-a": rotated, "stays": keys["stays"], "new": "sk-new-key-1111111"}
            key_file.write_text(render_key_file(OPERATOR, changed))
            nginx.process.send_signal(signal.SIGHUP)
            time.sleep(1.5)
            nginx.process.send_signal(signal.SIGHUP)
            time.sleep(1.5)
        old_tokens = sum(1 for c in old_key_stream if c.choices and c.choices[0].delta.content)
        assert old_tokens == 149
        failed = [s for s in streams if not s.whole]
        assert len(streams) > 50 and failed == [], (len(streams), failed[:3])
        with pytest.raises(openai.AuthenticationError):
            use(client(nginx, keys["team-a"]), STANDIN)
        with pytest.raises(openai.AuthenticationError):
            use(client(nginx, keys["leaves"]), STANDIN)
        use(client(nginx, rotated), STANDIN)
        # "new" has no policy of its own in this config: it is a key with no limits.
        use(client(nginx, "sk-new-key-1111111"), STANDIN)


def test_the_key_file_holds_digests_and_the_rendered_config_no_key():
    with pooled(POLICIES, KEYS) as (nginx, _):
        text = "".join(
            path.read_text()
            for path in Path(nginx.sandbox).rglob("*")
            if path.is_file() and path.suffix in {".conf", ".js"}
        )
        for key in KEYS.values():
            assert key not in text
            assert digest(key) in (nginx.sandbox / "api-key.conf").read_text()
        logs = (nginx.sandbox / "access.log").read_text() + (
            nginx.sandbox / "error.log"
        ).read_text()
        assert not any(key in logs for key in KEYS.values())


def test_a_wrong_key_file_is_refused_without_repeating_a_key():
    with pytest.raises(ValueError) as bad:
        render_key_file(OPERATOR, {"team-a": "sk with space"})
    assert "sk with space" not in str(bad.value) and "api_keys.team-a" in str(bad.value)
    # The operator's key is there once, as itself: nginx sends it to the replicas.
    assert render_key_file(OPERATOR, KEYS).count(OPERATOR) == 1


@pytest.mark.parametrize("policy", ["least_conn", "prefix_affinity"])
def test_a_single_model_stack_checks_named_keys_and_their_limits(policy):
    """Without model pools there is no router: keys, limits and usage still hold."""
    nginx_binary = require_nginx()
    require_njs()
    keys = {"team-a": KEYS["team-a"], "slow": "sk-slow-0000000000"}
    policies = (KeyPolicy("team-a"), KeyPolicy("slow", requests_per_minute=2))
    receiver = Receiver()
    try:
        with (
            stub_backends(2, ttft_ms=5, token_ms=2, api_key=OPERATOR) as stubs,
            nginx_balancer(
                nginx_binary,
                stubs.ports,
                api_key=OPERATOR,
                keys=policies,
                named_keys=keys,
                metrics_syslog=receiver.address,
                policy=policy,
            ) as nginx,
        ):
            api = client(nginx, keys["team-a"])
            answer = api.completions.create(model=STANDIN, prompt="one two three", max_tokens=7)
            assert answer.usage is not None
            with pytest.raises(openai.AuthenticationError):
                use(client(nginx, "sk-nobody-000000"), STANDIN)
            slow = client(nginx, keys["slow"])
            use(slow, STANDIN)
            use(slow, STANDIN)
            with pytest.raises(openai.RateLimitError) as limited:
                use(slow, STANDIN)
            assert limited.value.response.headers["retry-after"] == "30"
            chat = api.chat.completions.create(
                model=STANDIN, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert chat.usage is not None
            receiver.wait_for(6)
    finally:
        receiver.close()
    text = receiver.metrics.render()
    assert series(text, "vllm_lb_key_completion_tokens_total")['{key="team-a"}'] == 7 + 2
    assert series(text, "vllm_lb_key_prompt_tokens_total")['{key="team-a"}'] == (
        answer.usage.prompt_tokens + chat.usage.prompt_tokens
    )
    assert series(text, "vllm_lb_key_rate_limited_requests_total") == {
        '{key="slow",limit="requests_per_minute"}': 1
    }


def test_the_dashboards_key_panels_query_what_the_exporter_serves():
    """Every `vllm_lb_key_*` name a panel queries is one the exporter renders after
    a request of each kind (metered, unmetered, refused)."""
    metrics = LbMetrics(ReplicaNames([]))
    base = {"status": "200", "request_time": "0.1", "upstream_addr": "", "pool": "chat"}
    for record in (
        {**base, "key": "a", "model": "m", "prompt_tokens": "3", "completion_tokens": "4"},
        {**base, "key": "a", "model": "m", "prompt_tokens": "", "completion_tokens": ""},
        {**base, "status": "429", "key": "b", "model": "", "limit_req": "REJECTED"},
    ):
        metrics.record_line("<190>vllm_lb: " + json.dumps(record))
    served = {line.split("{")[0] for line in metrics.render().splitlines() if line[:1] != "#"}
    panels = json.loads(DASHBOARD_FILE.read_text())["panels"]
    keyed = [p for p in panels if p["type"] != "row" and "key" in p["title"].lower()]
    assert len(keyed) == 5
    queried = {
        name
        for panel in keyed
        for target in panel["targets"]
        for name in re.findall(r"vllm_lb_key_\w+", target["expr"])
    }
    assert queried == {name for name in served if name.startswith("vllm_lb_key_")}
