"""The canary's comparison on plain text, and the step against real stand-in processes.

The comparison (components.steps.canary_compare) is checked against figures
worked out by hand the way Prometheus' `histogram_quantile` computes them. The
step (components.steps.canary) then watches real `python -m standin`
processes under real requests, their /metrics read over HTTP as the step reads
a replica's, with nginx scripted (tests/test_rollout.py's `FakeNginx` runs the
step's real `sed` edit on a copy of the config): a slower or failing canary
is taken out and stops the update, an equal one passes. On the real engine
through `pulumi up`: tests/test_e2e_canary.py.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.lb.nginx_conf import render_nginx_config
from components.lb.pools import ModelPool
from components.plan.specs import WatchedReplica
from components.steps import canary, nginx_edit
from components.steps.canary_compare import (
    Scrape,
    Thresholds,
    Window,
    compare,
    histogram_quantile,
    parse,
    window,
)
from tests.support.stub import Stub, make_stubs
from tests.test_rollout import FakeClient, FakeNginx
from tests.test_rollout import nginx as nginx  # the scripted nginx, a fixture

INF = math.inf
LIMITS = Thresholds(max_ttft_ratio=1.5, max_error_rate_increase=0.02, min_requests=10)


# --- the comparison, on plain data ---------------------------------------------------


def test_quantile_interpolates_inside_its_bucket_as_prometheus_does() -> None:
    # 100 observations: 50 in (0.1, 0.25], 40 in (0.25, 0.5], 10 above 0.5.
    buckets = {0.1: 0.0, 0.25: 50.0, 0.5: 90.0, 1.0: 100.0, INF: 100.0}
    # rank 90 is the last of (0.25, 0.5]: its upper bound.
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    # rank 50 is the last of (0.1, 0.25]; rank 70 half-way into (0.25, 0.5].
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.25)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.375)
    # The lowest bucket starts at 0.
    assert histogram_quantile(0.5, {0.2: 10.0, INF: 10.0}) == pytest.approx(0.1)
    # In the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.9, {0.5: 5.0, 1.0: 5.0, INF: 10.0}) == 1.0
    assert histogram_quantile(0.9, {0.5: 0.0, INF: 0.0}) is None
    assert histogram_quantile(0.9, {}) is None


SCRAPE = """# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.05",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 8.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.7
# TYPE http_requests_total counter
http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 9.0
http_requests_total{handler="/v1/chat/completions",method="POST",status="5xx"} 2.0
http_requests_total{handler="/v1/completions",method="POST",status="4xx"} 1.0
http_requests_total{handler="none",method="GET",status="4xx"} 7.0
http_requests_created{handler="/v1/chat/completions",method="POST",status="2xx"} 1.7e9
"""


def test_parse_reads_the_ttft_buckets_and_the_v1_requests_only() -> None:
    scrape = parse(SCRAPE)
    assert scrape.ttft_buckets == {0.05: 3.0, 0.1: 8.0, INF: 10.0}
    # /v1/ handlers: 12 requests, the 5xx failed; a 4xx is the client's.
    assert (scrape.requests, scrape.failed) == (12.0, 2.0)


def test_window_is_the_increase_summed_over_a_side_and_survives_a_restart() -> None:
    a0 = Scrape({0.1: 1.0, INF: 2.0}, requests=10, failed=1)
    a1 = Scrape({0.1: 5.0, INF: 8.0}, requests=30, failed=2)
    b0 = Scrape({0.1: 40.0, INF: 50.0}, requests=500, failed=9)
    b1 = Scrape({0.1: 3.0, INF: 4.0}, requests=6, failed=0)  # restarted: counts from 0
    side = window([a0, b0], [a1, b1])
    assert side.ttft_buckets == {0.1: 4.0 + 3.0, INF: 6.0 + 4.0}
    assert (side.requests, side.failed) == (20 + 6, 1 + 0)


def _side(requests: float, failed: float, p90_bucket: float) -> Window:
    """Every first token in the bucket ending at `p90_bucket` (the one before is 0.1)."""
    return Window({0.1: 0.0, p90_bucket: requests, INF: requests}, requests, failed)


def test_a_slower_canary_is_worse_beyond_the_ratio() -> None:
    verdict = compare(_side(40, 0, 0.5), _side(80, 0, 0.2), LIMITS)
    assert verdict.enough_traffic and not verdict.passed
    assert verdict.worse == ("canaryMaxTtftRatio",)
    # p90: 0.1 + 0.4 * 0.9 = 0.46 against 0.1 + 0.1 * 0.9 = 0.19.
    assert verdict.lines[0] == (
        "TTFT p90: 0.460 s on the canary, 0.190 s on the old replicas: 2.42x "
        "(rollout.canaryMaxTtftRatio 1.5) WORSE"
    )


def test_a_failing_canary_is_worse_beyond_the_error_increase() -> None:
    verdict = compare(_side(50, 10, 0.2), _side(50, 0, 0.2), LIMITS)
    assert verdict.worse == ("canaryMaxErrorRateIncrease",)
    assert verdict.lines[1] == (
        "error rate: 20.0% (10 of 50) on the canary, 0.0% (0 of 50) on the old replicas: "
        "+20.0 points (rollout.canaryMaxErrorRateIncrease 0.02, +2.0 points) WORSE"
    )
    # Within the thresholds: 1 more in 100 is +1 point, under 2.
    assert compare(_side(100, 1, 0.2), _side(100, 0, 0.2), LIMITS).passed


def test_an_equal_canary_passes_and_too_little_traffic_is_no_verdict() -> None:
    assert compare(_side(30, 0, 0.2), _side(30, 0, 0.2), LIMITS).passed
    few = compare(_side(9, 9, 5.0), _side(100, 0, 0.2), LIMITS)
    assert not few.enough_traffic and few.worse == ()
    assert few.lines == (
        "9 request(s) on the canary, 100 on the old replicas; rollout.canaryMinRequests is 10",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waiting_for_traffic_watches_on_up_to_its_bound() -> None:
    clock = Clock()
    served = {"canary": 0.0, "old": 0.0}

    def fetch(url: str) -> Scrape:
        served[url] += 1  # one request per look: too few for 10 until long after
        n = served[url]
        return Scrape({0.1: n, INF: n}, requests=n, failed=0)

    said: list[str] = []
    replicas = (WatchedReplica("c", "canary", "c:8000"), WatchedReplica("o", "old", "o:8000"))
    verdict = canary.watch(
        replicas[:1],
        replicas[1:],
        canary.Watch(4, LIMITS, without_traffic=canary.WAIT, max_wait=30, progress=2),
        fetch=fetch,
        sleep=clock.sleep,
        clock=clock,
        say=said.append,
    )
    assert verdict.enough_traffic, said
    assert any("watching on (up to 30 s)" in line for line in said), said
    assert any(line.startswith("canary: 2 s of 4: canary ") for line in said), said
    # Proceeding: the first window's verdict, whatever the traffic.
    served.update(canary=0.0, old=0.0)
    quick = canary.watch(
        replicas[:1], replicas[1:], canary.Watch(4, LIMITS), fetch=fetch, sleep=clock.sleep,
        clock=clock, say=said.append,
    )  # fmt: skip
    assert not quick.enough_traffic


# --- the step, against real stand-in processes -------------------------------------


@contextmanager
def standins(tmp_path: Path, *envs: dict[str, str]) -> Iterator[list[Stub]]:
    fleet = make_stubs(len(envs), tmp_path, token_ms=2, tokens=4)
    stubs = list(fleet)
    for stub, env in zip(stubs, envs, strict=True):
        stub.env = {"STANDIN_TTFT_MS": "20", **env}
        stub.spawn()
    try:
        for stub in stubs:
            stub.wait_ready()
        yield stubs
    finally:
        fleet.stop_all()


@contextmanager
def load(stubs: Sequence[Stub], per_stub: int = 2) -> Iterator[None]:
    """Back-to-back chat completions to each stand-in, as nginx would spread them."""
    stop = threading.Event()

    def client(stub: Stub) -> None:
        api = openai.OpenAI(base_url=stub.base_url, api_key="none", max_retries=0, timeout=10)
        while not stop.is_set():
            # The failing stand-in's 500s raise; its metrics count them.
            with contextlib.suppress(openai.APIError):
                api.chat.completions.create(
                    model=stub.model, messages=[{"role": "user", "content": "hi"}]
                )

    threads = [threading.Thread(target=client, args=(s,)) for s in stubs for _ in range(per_stub)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


def _replicas(stubs: Sequence[Stub]) -> list[WatchedReplica]:
    return [
        WatchedReplica(f"vllm{i}", f"{s.url}/metrics", f"vllm{i}:8000") for i, s in enumerate(stubs)
    ]


def _run(nginx: FakeNginx, stubs: Sequence[Stub]) -> str:
    replicas = _replicas(stubs)
    with load(stubs):
        return canary.run(
            FakeClient({"nginx-lb": nginx}),  # type: ignore[arg-type]
            "nginx-lb",
            replicas[:1],
            replicas[1:],
            canary.Watch(2.0, LIMITS, progress=1.0),
        )


@pytest.mark.parametrize(
    ("knob", "broken"),
    [({"STANDIN_TTFT_MS": "200"}, "canaryMaxTtftRatio"), ({"STANDIN_FAIL_EVERY": "4"}, "rate")],
    ids=["slower", "failing"],
)
def test_a_worse_canary_is_taken_out_and_stops_the_update(
    tmp_path: Path, nginx: FakeNginx, knob: dict[str, str], broken: str
) -> None:
    with standins(tmp_path, knob, {}) as stubs, pytest.raises(canary.CanaryFailed) as failed:
        _run(nginx, stubs)
    message = str(failed.value)
    print(message)
    assert message.startswith("canary failed: vllm0 (the first wave, updated) is worse than vllm1")
    worse = [line for line in message.splitlines() if line.endswith(" WORSE")]
    assert len(worse) == 1 and broken in worse[0], message
    assert message.endswith(canary.WHAT_TO_DO)
    config = nginx.config.read_text()
    assert f"{nginx_edit.DRAINED}server vllm0:8000" in config
    assert "\n    server vllm1:8000" in config, "the old replica keeps serving"


def test_an_equal_canary_passes_and_is_put_back_first(tmp_path: Path, nginx: FakeNginx) -> None:
    # A canary a previous `up` took out: watched again, it must get traffic.
    nginx_edit.edit_upstream(nginx, "vllm0:8000", down=True)  # type: ignore[arg-type]
    nginx.lingering_looks = 0  # the old workers stop at once after the next reload too
    with standins(tmp_path, {}, {}) as stubs:
        message = _run(nginx, stubs)
    assert message.startswith("canary: vllm0 no worse than vllm1, the update goes on:"), message
    assert nginx_edit.DRAINED not in nginx.config.read_text()


def test_with_model_pools_a_canary_leaves_every_block_it_is_in(nginx: FakeNginx) -> None:
    """With model routing a replica's `server` line is in the fleet's upstream, its
    pool's and, for a prefix_affinity pool, that pool's least_conn fallback: the
    edit takes it out of all three, touches no other replica, and puts it back
    exactly."""

    def pool(name: str, policy: RoutingPolicy) -> ModelPool:
        ups = tuple(Upstream(host=f"vllm-{name}-{i}", port=8000) for i in range(2))
        return ModelPool(name, name, f"org/{name}", ups, policy)

    pools = [pool("chat", RoutingPolicy.PREFIX_AFFINITY), pool("embed", RoutingPolicy.LEAST_CONN)]
    ups = [u for p in pools for u in p.upstreams]
    config = render_nginx_config(LoadBalancerSettings(), ups, pools=pools)
    nginx.config.write_text(config)
    lines = [line for line in config.splitlines() if "server vllm-chat-0:8000" in line]
    assert len(lines) == 3, config
    assert nginx_edit.edit_upstream(nginx, "vllm-chat-0:8000", down=True)  # type: ignore[arg-type]
    edited = nginx.config.read_text().splitlines()
    out = [line for line in edited if "server vllm-chat-0:8000" in line]
    assert len(out) == 3 and all(f"{nginx_edit.DRAINED}server" in line for line in out), out
    assert [line for line in edited if nginx_edit.DRAINED in line] == out, "no other replica"
    assert nginx_edit.edit_upstream(nginx, "vllm-chat-0:8000", down=False)  # type: ignore[arg-type]
    assert nginx.config.read_text() == config


def test_containers_the_canary_passed_are_not_watched_again() -> None:
    """pulumi-command gives a command run on an update its previous stdout: a
    changed `rollout.canary*` setting alone updates the step, and the same first
    wave, already through it, is not watched (nor judged) again."""
    replicas = [WatchedReplica("vllm0", "http://127.0.0.1:9/metrics", "vllm0:8000")]

    def step(containers: str, previous_output: str = "") -> str:
        return canary.run(
            FakeClient({}),  # type: ignore[arg-type]
            "nginx-lb",
            replicas,
            replicas,
            canary.Watch(60, LIMITS),
            containers=containers,
            previous_output=previous_output,
        )

    first = step("0a1b")
    assert first.splitlines()[-1] == "canary: done for containers 0a1b"
    again = step("0a1b", first)
    assert again.startswith("canary: vllm0 unchanged since the canary passed them"), again
    # Other containers (a first-wave replica replaced): judged, here no nginx yet.
    other = step("9f8e", first)
    assert other.startswith("canary: no load balancer yet"), other


def test_no_load_balancer_yet_is_a_first_deploy() -> None:
    replicas = [WatchedReplica("vllm0", "http://127.0.0.1:9/metrics", "vllm0:8000")]
    said = canary.run(FakeClient({}), "nginx-lb", replicas, replicas, canary.Watch(60, LIMITS))  # type: ignore[arg-type]
    assert said == "canary: no load balancer yet (first deploy): vllm0 not watched"


def _idle(url: str) -> Scrape:
    """A replica nobody sends anything to."""
    return Scrape({0.1: 0.0, INF: 0.0}, requests=0, failed=0)


def test_without_traffic_it_says_so_and_proceeds_or_waits_then_stops(nginx: FakeNginx) -> None:
    replicas = [
        WatchedReplica("vllm0", "http://vllm0/metrics", "vllm0:8000"),
        WatchedReplica("vllm1", "http://vllm1/metrics", "vllm1:8000"),
    ]
    client = FakeClient({"nginx-lb": nginx})
    proceed, wait = (
        canary.Watch(0.2, LIMITS, progress=0.1),
        canary.Watch(0.2, LIMITS, without_traffic=canary.WAIT, max_wait=0.5, progress=0.1),
    )
    said = canary.run(client, "nginx-lb", replicas[:1], replicas[1:], proceed, fetch=_idle)  # type: ignore[arg-type]
    assert said == (
        "canary: not enough traffic to judge vllm0:\n"
        "  0 request(s) on the canary, 0 on the old replicas; rollout.canaryMinRequests is 10\n"
        "proceeding without a verdict (rollout.canaryWithoutTraffic: proceed)"
    )
    with pytest.raises(canary.CanaryFailed) as failed:
        canary.run(client, "nginx-lb", replicas[:1], replicas[1:], wait, fetch=_idle)  # type: ignore[arg-type]
    assert str(failed.value).startswith("canary: not enough traffic to judge vllm0 within 0 s")
    assert str(failed.value).endswith(
        "vllm0 stays in rotation; vllm1 not replaced. What to do: `pulumi up` again under "
        "traffic, or set rollout.canaryWithoutTraffic: proceed."
    )
    # Not judged worse: never taken out.
    assert nginx_edit.DRAINED not in nginx.config.read_text()


def test_the_metrics_are_asked_directly_past_any_http_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the readiness step asks `/health`: a proxy of the deploying machine (here
    one that refuses every connection) must not stand between it and the replicas."""
    with standins(tmp_path, {}) as stubs:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        scraped = canary.scrape(f"{stubs[0].url}/metrics")
    assert scraped.ttft_buckets, scraped
