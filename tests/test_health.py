"""The balancer's /health on real nginx with njs, in front of counting replicas.

It must say what the replicas can do: 503 naming the pool once every replica
of a pool is gone (or its engine is dead), 200 again within failWindowSeconds
of one coming back, and it must cost the replicas next to nothing however
often it is asked (components/lb/health.py says how).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from components.config.sections import RoutingPolicy, Upstream
from components.lb.pools import ModelPool
from tests.support.fake_replica import FakeReplica, fake_replicas
from tests.support.nginx import LOOPBACK, RunningNginx, require_nginx, require_njs
from tests.support.nginx import balancer as nginx_balancer

pytestmark = pytest.mark.nginx

CHAT = "org/chat-model"
ADAPTER = "chat-sql-lora"
EMBED = "org/embed-model"


def pools_of(replicas: dict[str, FakeReplica]) -> list[ModelPool]:
    def ups(*names: str) -> tuple[Upstream, ...]:
        return tuple(Upstream(host=LOOPBACK, port=replicas[n].port) for n in names)

    return [
        ModelPool(
            "chat", CHAT, CHAT, ups("c0", "c1"), RoutingPolicy.PREFIX_AFFINITY, adapters=(ADAPTER,)
        ),
        ModelPool("embed", EMBED, EMBED, ups("e0"), RoutingPolicy.LEAST_CONN),
    ]


@contextlib.contextmanager
def routed(replicas: dict[str, FakeReplica], **lb: Any) -> Iterator[RunningNginx]:
    binary = require_nginx()
    require_njs()
    pools = pools_of(replicas)
    with nginx_balancer(binary, [replicas["c0"].port], pools=pools, **lb) as nginx:
        yield nginx


def health(nginx: RunningNginx, path: str = "/health") -> httpx.Response:
    return httpx.get(nginx.url + path, timeout=15)


def wait_for(nginx: RunningNginx, status: int, path: str = "/health", bound: float = 20) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if health(nginx, path).status_code == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{path} did not answer {status} within {bound}s")


def assert_down(response: httpx.Response, pools: dict[str, str]) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"].isdigit()
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == 503
    assert body["pools"] == pools


def test_health_is_200_while_every_pool_serves_and_503_naming_the_pool_that_cannot():
    with fake_replicas("c0", "c1", "e0") as replicas, routed(replicas) as nginx:
        ok = health(nginx)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"status": "ok", "pools": {"chat": "up", "embed": "up"}}
        replicas["c0"].stop()
        time.sleep(1.2)  # past the one-second cache
        assert health(nginx).status_code == 200  # c1 still serves chat
        replicas["c1"].stop()
        wait_for(nginx, 503, bound=3)
        down = health(nginx)
        assert_down(down, {"chat": "down", "embed": "up"})
        message = down.json()["error"]["message"]
        assert f"pool chat ({CHAT}, {ADAPTER})" in message
        assert "embed" not in message
        # The per-pool form: by served name or adapter, in the path or the query.
        assert health(nginx, f"/health/{EMBED}").json() == {
            "status": "ok",
            "pools": {"embed": "up"},
        }
        assert_down(health(nginx, f"/health/{CHAT}"), {"chat": "down"})
        assert_down(health(nginx, f"/health?model={ADAPTER}"), {"chat": "down"})
        unknown = health(nginx, "/health/nope")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["param"] == "model"
        assert CHAT in unknown.json()["error"]["message"]


def test_a_dead_engine_makes_its_pool_down():
    """vLLM answers /health 503 once its engine is dead; the port still accepts."""
    with fake_replicas("c0", "c1", "e0") as replicas, routed(replicas) as nginx:
        replicas["e0"].health_status = 503
        wait_for(nginx, 503, bound=3)
        assert_down(health(nginx), {"chat": "up", "embed": "down"})
        replicas["e0"].health_status = 200
        wait_for(nginx, 200, bound=12)


def test_health_is_200_again_within_the_fail_window_of_a_replica_coming_back():
    """Real traffic takes both chat replicas out (max_fails within the window);
    one comes back: /health follows within failWindowSeconds (+ the 1 s cache)."""
    window = 3
    with (
        fake_replicas("c0", "c1", "e0") as replicas,
        routed(replicas, fail_window_seconds=window, max_fails=1) as nginx,
    ):
        replicas["c0"].stop()
        replicas["c1"].stop()
        for _ in range(3):
            failed = httpx.post(
                nginx.url + "/v1/completions", json={"model": CHAT, "prompt": "hi"}, timeout=10
            )
            assert failed.status_code == 502
        went_down = wait_for(nginx, 503, bound=3)
        replicas["c1"].start()
        came_back = wait_for(nginx, 200, bound=window + 10)
        print(
            f"/health: 503 {went_down:.2f}s after the last replica stopped, "
            f"200 {came_back:.2f}s after one came back"
        )
        assert came_back <= window + 1.5, came_back


def test_asking_often_costs_each_pool_about_one_probe_a_second():
    with fake_replicas("c0", "c1", "e0") as replicas, routed(replicas) as nginx:
        for replica in replicas.values():
            replica.reset()
        answered: list[int] = []
        lock = threading.Lock()
        started = time.monotonic()

        def ask() -> None:
            with httpx.Client(timeout=15) as http:
                for _ in range(100):
                    status = http.get(nginx.url + "/health").status_code
                    with lock:
                        answered.append(status)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        probes = {n: r.paths()["/health"] for n, r in replicas.items()}
    chat_probes = probes["c0"] + probes["c1"]
    print(f"{len(answered)} /health in {elapsed:.1f}s: replica /health calls {probes}")
    assert answered == [200] * 800
    # One probe per pool per second of cache, plus one per worker at a boundary.
    assert chat_probes <= elapsed + 3, probes
    assert probes["e0"] <= elapsed + 3, probes


def test_health_is_json_for_the_single_model_stack_and_refuses_other_methods():
    require_nginx()
    require_njs()
    with (
        fake_replicas("r0") as replicas,
        nginx_balancer(require_nginx(), [replicas["r0"].port]) as nginx,
    ):
        assert health(nginx).json() == {"status": "ok", "pools": {"default": "up"}}
        posted = httpx.post(nginx.url + "/health")
        assert posted.status_code == 405
        assert posted.json()["error"]["code"] == 405
        head = httpx.head(nginx.url + "/health")
        assert head.status_code == 200
        replicas["r0"].stop()
        wait_for(nginx, 503, bound=3)
        assert_down(health(nginx), {"default": "down"})


def test_the_verify_step_waits_for_health_and_names_the_pool_that_cannot(capsys, monkeypatch):
    from components.plan.specs import SPEC_ENV, VerifySpec, encode
    from components.steps import verify

    with fake_replicas("c0", "c1", "e0") as replicas, routed(replicas) as nginx:
        monkeypatch.setenv(SPEC_ENV, encode(VerifySpec(nginx.url, (CHAT,), 5)))
        assert verify.main() == 0
        replicas["e0"].stop()
        wait_for(nginx, 503, bound=3)
        monkeypatch.setenv(SPEC_ENV, encode(VerifySpec(nginx.url, (CHAT,), 3)))
        assert verify.main() == 1
    error = capsys.readouterr().err
    assert f"{nginx.url}/health did not answer 200" in error
    assert "pool embed" in error
