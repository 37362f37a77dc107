"""Two Docker engines, one load balancer: a two-host stack applied to real engines.

Each test host is a network namespace with its own `dockerd`
(`tests.support.netns_hosts`), at 198.18.i.2. The program runs under Pulumi's
mocks with a two-host stack (the load balancer and two replicas on host one,
two replicas on host two); the applier sends every resource to its
provider's engine. Then, with the `openai` client through the load
balancer: requests spread over the replicas of both hosts; host two's engine
is stopped under load (as a machine going down) and no request fails that had
not reached it; started again, its containers come back by their restart
policy and serve again within the failure window; teardown leaves only the
caches on either engine. The figures are printed (run with `-s`).

Traffic goes only to 198.18.1.2 (the load balancer) and the engines' sockets.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import openai
import pytest

from components.config.problems import NAMESPACE
from tests.support.docker_apply import Applier
from tests.support.docker_engine import (
    base_image,
    docker_client,
    grafana_standin_image,
    monitoring_image,
    remove_named,
    standin_image,
)
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.pulumi_capture import run_program
from tests.support.streaming_load import streaming_load

pytestmark = pytest.mark.docker

API_KEY = "e2e-mh-key-123"
LB_PORT = 18800
BASE_PORT = 18811
PROMETHEUS_PORT = 18840
SECRET_KEYS = [f"{NAMESPACE}:apiKey", f"{NAMESPACE}:grafanaPassword"]
FAIL_WINDOW = 5
CACHE = "e2e-mh-hf-cache"
NETWORK = "e2e-mh-net"
LB_NAME = "e2e-mh-lb"
REPLICAS_PER_HOST = 2


def two_host_config(
    one: NetnsHost, two: NetnsHost, base: str, standin: str, monitoring: tuple[str, str]
) -> dict[str, str]:
    """A two-host stack as the CLI hands it over (strings; objects as JSON), with
    monitoring (offline Prometheus and Grafana images) beside nginx on host one."""
    prometheus, grafana = monitoring
    config: dict[str, Any] = {
        "backend": "cpu",
        "model": "standin-org/tiny-chat",
        "servedModelName": "tiny-chat",
        "image": {"prebuilt": standin},
        "namePrefix": "e2e-mh",
        "networkName": NETWORK,
        "hfCache": {"volume": CACHE},
        "compileCache": {"enabled": False},
        "cpu": {"coresPerReplica": 0},
        "basePort": BASE_PORT,
        "readyTimeoutSeconds": 120,
        "verifyTimeoutSeconds": 60,
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3},
        "extraEnv": {
            "STANDIN_DOWNLOAD_SECONDS": "2",
            "STANDIN_LOAD_SECONDS": "1",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": "10",
        },
        "hosts": [
            {
                "name": host.name,
                "dockerHost": host.docker_host,
                "address": host.address,
                "replicas": REPLICAS_PER_HOST,
            }
            for host in (one, two)
        ],
        "loadBalancer": {
            "host": one.name,
            "name": LB_NAME,
            "port": LB_PORT,
            "bindAddress": one.address,
            "image": base,
            "dynamicResolve": False,
            "failWindowSeconds": FAIL_WINDOW,
            # Losing a machine takes out all of its replicas at once: a request
            # must be allowed more tries than one host has replicas.
            "nextUpstreamTries": REPLICAS_PER_HOST + 1,
        },
        "apiKey": API_KEY,
        "grafanaPassword": "e2e-mh-grafana-pw",
        "monitoring": {
            "enabled": True,
            "bindAddress": one.address,
            "keepDataOnDestroy": False,
            "prometheus": {
                "image": prometheus,
                "port": PROMETHEUS_PORT,
                "name": "e2e-mh-prometheus",
                "volume": "e2e-mh-prometheus-data",
                "scrapeIntervalSeconds": 1,
            },
            "grafana": {
                "image": grafana,
                "port": PROMETHEUS_PORT + 1,
                "name": "e2e-mh-grafana",
                "volume": "e2e-mh-grafana-data",
            },
            "lbExporter": {"image": base, "name": "e2e-mh-lb-exporter"},
        },
    }
    return {
        f"{NAMESPACE}:{key}": json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in config.items()
    }


@dataclass
class Outcome:
    started: float
    finished: float
    replica: str | None
    error: str | None


def _client(lb: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lb}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def _load(lb: str, stop: threading.Event, outcomes: list[Outcome], lock: threading.Lock) -> None:
    client = _client(lb)
    while not stop.is_set():
        started = time.monotonic()
        replica: str | None = None
        try:
            stream = client.chat.completions.create(
                model="tiny-chat",
                messages=[{"role": "user", "content": "go"}],
                max_tokens=20,
                stream=True,
            )
            for chunk in stream:
                replica = chunk.system_fingerprint or replica
            outcome = Outcome(started, time.monotonic(), replica, None)
        except openai.APIError as err:
            outcome = Outcome(started, time.monotonic(), replica, type(err).__name__)
        with lock:
            outcomes.append(outcome)


def _hostnames(host: NetnsHost) -> dict[str, str]:
    """The stand-in answers with its hostname; map it to the container name."""
    return {
        c.attrs["Config"]["Hostname"]: str(c.name)
        for c in host.client().containers.list()
        if str(c.name).startswith(f"e2e-mh-{host.name}-")
    }


def _wait_healthy(client: docker.DockerClient, names: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for name in names:
            try:
                health = client.containers.get(name).attrs["State"].get("Health") or {}
            except docker.errors.NotFound:
                health = {}
            states.append(health.get("Status"))
        if all(s == "healthy" for s in states):
            return time.monotonic()
        assert time.monotonic() < deadline, f"{names} not healthy: {states}"
        time.sleep(0.2)


_LOG_LINE = re.compile(
    r'"[A-Z]+ (?P<path>\S+) [^"]*" (?P<status>\d{3}) .*upstream=(?P<up>.*?) upstream_status='
)


def _lb_errors(lb: Any) -> list[tuple[int, str]]:
    """(status, upstream addresses) of every 5xx the load balancer logged."""
    found = []
    for line in lb.logs().decode().splitlines():
        match = _LOG_LINE.search(line)
        if match and match["status"].startswith("5") and match["path"].startswith("/v1/"):
            found.append((int(match["status"]), match["up"]))
    return found


def test_two_hosts_behind_one_load_balancer() -> None:
    machine = docker_client()
    base = base_image(machine)
    standin = standin_image(machine)
    monitoring = (monitoring_image(machine), grafana_standin_image(machine))
    with netns_hosts(2) as (one, two):
        began = time.monotonic()
        load_images(one, standin, base, *monitoring)
        load_images(two, standin, base)
        loaded = time.monotonic() - began
        run = run_program(two_host_config(one, two, base, standin, monitoring), SECRET_KEYS)
        providers = {d.name: d.inputs["host"] for d in run.of_type("pulumi:providers:docker")}
        assert providers == {
            "vllm-vnh1-docker": one.docker_host,
            "vllm-vnh2-docker": two.docker_host,
        }
        # The machine's own engine is only the default; nothing may land on it.
        applier = Applier(machine, run.declared)
        destroyed = False
        try:
            began = time.monotonic()
            applied = applier.apply()
            up_seconds = time.monotonic() - began
            lb_url = f"http://{one.address}:{LB_PORT}"
            assert json.loads(applied.outputs["vllm-verify"]["stdout"]) == {
                "url": lb_url,
                "models": ["tiny-chat"],
            }
            # Each host downloaded for itself, the two downloads at the same time.
            downloads = [applied.timings[f"vllm-{h.name}-download"] for h in (one, two)]
            assert max(d.started for d in downloads) < min(d.finished for d in downloads)
            assert not [
                c.name for c in machine.containers.list(all=True) if "e2e-mh" in str(c.name)
            ]
            lb = one.client().containers.get(LB_NAME)
            first, second = _hostnames(one), _hostnames(two)
            assert len(first) == len(second) == REPLICAS_PER_HOST
            names = {**first, **second}

            # Spread: sequential requests reach every replica of both hosts.
            client = _client(lb_url)
            spread: Counter[str] = Counter()
            for _ in range(16):
                reply = client.completions.create(model="tiny-chat", prompt="x", max_tokens=2)
                spread[names[str(reply.system_fingerprint)]] += 1
            assert set(spread) == set(names.values()), spread

            # Monitoring beside nginx on host one scrapes host two's replicas by
            # address and, like the exporter, labels every replica by its name.
            prometheus = f"http://{one.address}:{PROMETHEUS_PORT}/api/v1"
            query = "sum by (replica) (vllm_lb_upstream_attempts_total)"
            deadline = time.monotonic() + 30
            while True:
                targets = httpx.get(f"{prometheus}/targets", timeout=5).json()["data"]
                up = {
                    t["labels"]["replica"]
                    for t in targets["activeTargets"]
                    if t["labels"]["job"] == "vllm" and t["health"] == "up"
                }
                answer = httpx.get(f"{prometheus}/query", params={"query": query}, timeout=5)
                labelled = {r["metric"]["replica"] for r in answer.json()["data"]["result"]}
                if up == labelled == set(names.values()):
                    break
                assert time.monotonic() < deadline, (up, labelled)
                time.sleep(0.5)

            # Host two goes down under load, then comes back.
            outcomes: list[Outcome] = []
            lock = threading.Lock()
            stop = threading.Event()
            workers = [
                threading.Thread(target=_load, args=(lb_url, stop, outcomes, lock))
                for _ in range(6)
            ]
            for worker in workers:
                worker.start()
            try:
                time.sleep(3)
                stopping = time.monotonic()
                two.stop_engine()
                stopped = time.monotonic()
                time.sleep(4)
                restarting = time.monotonic()
                two.start_engine()
                healthy = _wait_healthy(two.client(), list(second.values()), 60)
                back: float | None = None
                while back is None and time.monotonic() < healthy + 30:
                    with lock:
                        served = [
                            o.finished
                            for o in outcomes
                            if o.replica in second and o.finished > healthy and not o.error
                        ]
                    back = min(served) - healthy if served else None
                    time.sleep(0.1)
                time.sleep(1)
            finally:
                stop.set()
                for worker in workers:
                    worker.join(timeout=60)

            def on(outcome: Outcome) -> str:
                return names.get(str(outcome.replica), "unknown")

            failed = [o for o in outcomes if o.error]
            during = [o for o in outcomes if stopped < o.started < restarting]
            after_stop = [o for o in outcomes if o.started > stopped]
            lb_errors = _lb_errors(lb)
            per_replica = Counter(on(o) for o in outcomes if not o.error)
            figures = {
                "images loaded into both engines (s)": round(loaded, 1),
                "apply on two engines (s)": round(up_seconds, 1),
                "sequential requests per replica": dict(sorted(spread.items())),
                "requests under load": len(outcomes),
                "served per replica": dict(sorted(per_replica.items())),
                "failed": len(failed),
                "failed, by replica": dict(Counter(on(o) for o in failed)),
                "lb 5xx by status and replica(s) tried": {
                    f"{status} {up}": n for (status, up), n in Counter(lb_errors).items()
                },
                "engine stop took (s)": round(stopped - stopping, 1),
                "failed requests sent during the stop": sum(
                    1 for o in failed if stopping <= o.started <= stopped
                ),
                "requests while host two was down": len(during),
                "of them failed": sum(1 for o in during if o.error),
                "engine start to replicas healthy (s)": round(healthy - restarting, 1),
                "healthy to serving again (s)": None if back is None else round(back, 1),
            }
            print("\ntwo-host figures:\n" + json.dumps(figures, indent=2))

            assert during and {on(o) for o in during if not o.error} <= set(first.values())
            # Nothing sent once the engine was down failed: nginx skipped host two.
            assert not [o for o in after_stop if o.error], [o for o in after_stop if o.error]
            # What failed had reached host two: a stream cut by one of its replicas,
            # or an answer (500) it gave while shutting down, as the LB logged it.
            cut = [o for o in failed if o.replica is not None]
            assert {on(o) for o in cut} <= set(second.values()), cut
            # Every failure was on its way before the engine was down (a stream cut
            # before its first chunk carries no replica, and nginx logs it as 200).
            assert all(o.started <= stopped for o in failed), failed
            assert len(failed) - len(cut) >= len(lb_errors), (failed, lb_errors)
            assert all(up.split(", ")[-1].startswith(two.address) for _s, up in lb_errors)
            assert back is not None, "host two's replicas got no traffic within 30 s of healthy"
            assert back <= FAIL_WINDOW + 2, f"served again {back:.1f} s after healthy"

            # A rolling update of every replica on both engines under streaming
            # load: waves of half, each replica drained at nginx (its running
            # requests read through its own engine) before it stops.
            updated = two_host_config(one, two, base, standin, monitoring)
            env = json.loads(updated[f"{NAMESPACE}:extraEnv"])
            updated[f"{NAMESPACE}:extraEnv"] = json.dumps({**env, "STANDIN_REVISION": "2"})
            upgrade = Applier(machine, run_program(updated, SECRET_KEYS).declared)
            upgrade.carry_state_from(applier)
            with streaming_load(lb_url, API_KEY, workers=4) as streams:
                time.sleep(2)
                began = time.monotonic()
                applied_update = upgrade.apply()
                update_seconds = time.monotonic() - began
                time.sleep(2)
            applier = upgrade
            broken = [s for s in streams if not s.whole]
            print(
                f"rolling update on two engines: {update_seconds:.1f} s, {len(streams)} "
                f"streams, {len(broken)} failed or cut"
            )
            # Waves: host two's replicas were replaced only after host one's were back.
            timings = applied_update.timings
            first_back = max(timings[f"vllm-{n}-rotation"].finished for n in first.values())
            assert all(timings[f"vllm-{n}"].started >= first_back for n in second.values())
            assert len(streams) > 20 and not broken, broken[:5]
            for host in (one, two):
                for container in host.client().containers.list():
                    if str(container.name).startswith(f"e2e-mh-{host.name}-"):
                        assert "STANDIN_REVISION=2" in container.attrs["Config"]["Env"]
            assert one.client().containers.get(LB_NAME).id == lb.id, "nginx was replaced"

            # One replica fewer on host two: deleted on host two's engine (after
            # leaving nginx), nothing else replaced, host one untouched.
            smaller = updated.copy()
            hosts = json.loads(smaller[f"{NAMESPACE}:hosts"])
            hosts[1]["replicas"] = REPLICAS_PER_HOST - 1
            smaller[f"{NAMESPACE}:hosts"] = json.dumps(hosts)
            fewer = Applier(machine, run_program(smaller, SECRET_KEYS).declared)
            fewer.carry_state_from(applier)
            removed = f"e2e-mh-{two.name}-{REPLICAS_PER_HOST - 1}"
            result = fewer.apply()
            applier = fewer
            assert result.deleted == [f"vllm-{removed}-rotation", f"vllm-{removed}"]
            assert not [c for c in result.created if "e2e-mh-" in c], result.created
            assert one.client().containers.get(LB_NAME).id == lb.id, "nginx was replaced"
            assert removed not in {c.name for c in two.client().containers.list(all=True)}
            assert sorted(_hostnames(two).values()) == sorted(
                n for n in second.values() if n != removed
            )
            assert sorted(_hostnames(one).values()) == sorted(first.values())
            output = lb.exec_run(["cat", "/etc/nginx/nginx.conf"]).output
            assert isinstance(output, bytes)
            config = output.decode()
            assert f"{two.address}:{BASE_PORT}" in config
            assert f"{two.address}:{BASE_PORT + REPLICAS_PER_HOST - 1}" not in config

            # Teardown: only the caches stay, on each engine.
            kept = applier.destroy()
            destroyed = True
            assert sorted(kept) == ["vllm-vnh1-hf-cache", "vllm-vnh2-hf-cache"]
            for host in (one, two):
                engine = host.client()
                assert engine.containers.list(all=True) == []
                assert {n.name for n in engine.networks.list()} == {"bridge", "host", "none"}
                assert [v.name for v in engine.volumes.list()] == [CACHE]
        finally:
            if not destroyed:
                with suppress(Exception):
                    applier.destroy()
            # Whatever a broken provider mapping put on this machine's engine.
            remove_named(machine, networks=[NETWORK], volumes=[CACHE])
