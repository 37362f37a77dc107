"""Two Docker engines, one load balancer: a two-host stack, by the real Pulumi CLI.

Each test host is a network namespace with its own `dockerd`
(`tests.support.netns_hosts`), at 198.18.i.2. `pulumi up` runs this project
with a two-host stack (the load balancer, monitoring and two replicas on host
one, two replicas on host two): the real Pulumi engine and CLI, our stand-ins
for the docker and command plugins and the Python language host
(tests/support/pulumi_engine.py). The program declares one `docker.Provider`
per host; each resource lands on its provider's engine, and the steps
(`command.local.Command`) reach the engines through the `DOCKER_HOST` the
program gives them: the CLI runs with a `DOCKER_HOST` that reaches no engine
(as on a machine that deploys to others and runs none), so a step that did
not get its host's would fail instead of landing on this machine's engine.

Then, with the `openai` client through the load balancer: requests spread
over the replicas of both hosts; monitoring on host one labels host two's
replicas by name; host two's engine is stopped under load (as a machine going
down) and no request fails that had not reached it; started again, its
containers come back by their restart policy and serve again within the
failure window. A second `pulumi up` updates every replica on both engines
under streaming load (waves, drained at nginx, host one's wave watched as the
canary against host two's) with no failed or cut stream;
a third removes a replica of host two, on host two's engine, replacing
neither nginx nor any replica; destroy leaves only the caches on either
engine. The event log says what the engine did, each engine's Docker confirms
it. The figures are printed (run with `-s`).

Traffic goes only to 198.18.1.2 (the load balancer) and the engines' sockets.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import openai
import pytest

from tests.support.docker_engine import (
    base_image,
    docker_client,
    grafana_standin_image,
    monitoring_image,
    remove_named,
    standin_image,
)
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.pulumi_engine import Result, Stack
from tests.support.streaming_load import streaming_load

pytestmark = [pytest.mark.docker, pytest.mark.netns]

API_KEY = "e2e-mh-key-123"
LB_PORT = 18800
BASE_PORT = 18811
PROMETHEUS_PORT = 18840
SECRETS = {"apiKey": API_KEY, "grafanaPassword": "e2e-mh-grafana-pw"}
NO_ENGINE = "unix:///nonexistent/vllm-nginx-e2e-mh/docker.sock"
"""The CLI's own `DOCKER_HOST`: no engine answers there."""
REPLACED = ["delete-replaced", "replace", "create-replacement"]
"""The engine's steps for a delete-before-replace, in the order it reports them."""
FAIL_WINDOW = 5
CACHE = "e2e-mh-hf-cache"
NETWORK = "e2e-mh-net"
LB_NAME = "e2e-mh-lb"
EXPORTER = "e2e-mh-lb-exporter"
PROMETHEUS = "e2e-mh-prometheus"
REPLICAS_PER_HOST = 2


def two_host_config(
    one: NetnsHost, two: NetnsHost, base: str, standin: str, monitoring: tuple[str, str]
) -> dict[str, Any]:
    """A two-host stack's config (its secrets aside), with monitoring (offline
    Prometheus and Grafana images) beside nginx on host one."""
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
        # The stand-in's tiny-chat has no real config.json: the fit check would only
        # skip (tests/test_e2e_fit.py runs it on a host engine of its own).
        "fitCheck": {"enabled": False},
        "cpu": {"coresPerReplica": 0},
        "basePort": BASE_PORT,
        "readyTimeoutSeconds": 120,
        "verifyTimeoutSeconds": 60,
        # The update's first wave is host one's replicas: the canary watches them
        # against host two's, each read at its own host's address, nginx found through
        # host one's engine. A loose ratio: this test shows it runs across engines;
        # tests/test_e2e_canary.py shows it judging.
        "rollout": {"canarySeconds": 2, "canaryMinRequests": 4, "canaryMaxTtftRatio": 3},
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
        "monitoring": {
            "enabled": True,
            "bindAddress": one.address,
            "keepDataOnDestroy": False,
            "prometheus": {
                "image": prometheus,
                "port": PROMETHEUS_PORT,
                "name": PROMETHEUS,
                "volume": "e2e-mh-prometheus-data",
                "scrapeIntervalSeconds": 1,
            },
            "grafana": {
                "image": grafana,
                "port": PROMETHEUS_PORT + 1,
                "name": "e2e-mh-grafana",
                "volume": "e2e-mh-grafana-data",
            },
            "lbExporter": {"image": base, "name": EXPORTER},
        },
    }
    return config


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


def _containers_changed(result: Result) -> dict[str, list[str]]:
    """Every container resource the engine did anything to, with its operations."""
    return {
        step.name: result.ops(step.name)
        for step in result.steps
        if step.type.endswith(":Container") and result.ops(step.name)
    }


def _ids(host: NetnsHost) -> dict[str, str]:
    return {str(c.name): str(c.id) for c in host.client().containers.list(all=True)}


def _downloads_log(host: NetnsHost, replica: str) -> list[str]:
    """The stand-in's record of downloads in that host's cache volume."""
    found = (
        host.client()
        .containers.get(replica)
        .exec_run(["cat", "/root/.cache/huggingface/standin-downloads.log"])
    )
    assert found.exit_code == 0 and isinstance(found.output, bytes), found.output
    return [line for line in found.output.decode().splitlines() if line.strip()]


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


def test_two_hosts_behind_one_load_balancer(tmp_path: Path) -> None:
    machine = docker_client()
    base = base_image(machine)
    standin = standin_image(machine)
    monitoring = (monitoring_image(machine), grafana_standin_image(machine))
    with netns_hosts(2) as (one, two):
        began = time.monotonic()
        load_images(one, standin, base, *monitoring)
        load_images(two, standin, base)
        loaded = time.monotonic() - began
        stack = Stack(
            tmp_path,
            "twohost",
            two_host_config(one, two, base, standin, monitoring),
            secrets=SECRETS,
            env={"DOCKER_HOST": NO_ENGINE},
        )
        try:
            began = time.monotonic()
            initial = stack.up()
            up_seconds = time.monotonic() - began
            exported = stack.export()["deployment"]["resources"]
            providers = {
                r["urn"].rsplit("::", 1)[-1]: r["inputs"].get("host")
                for r in exported
                if r["type"] == "pulumi:providers:docker"
            }
            # One provider per host and no default one: nothing used this machine's engine.
            assert providers == {
                "vllm-vnh1-docker": one.docker_host,
                "vllm-vnh2-docker": two.docker_host,
            }
            # Read back through both providers, the stack is as declared.
            stack.preview(expect_no_changes=True)
            resources = stack.resources()
            lb_url = f"http://{one.address}:{LB_PORT}"
            assert json.loads(resources["vllm-verify"]["outputs"]["stdout"]) == {
                "url": lb_url,
                "models": ["tiny-chat"],
            }
            # Each host's steps were handed its engine, the nginx steps host one's.
            for host in (one, two):
                for step in (f"vllm-{host.name}-download", f"vllm-{host.name}-replicas-ready"):
                    environment = resources[step]["inputs"]["environment"]
                    assert environment["DOCKER_HOST"] == host.docker_host, step
            for name, resource in resources.items():
                if name.endswith("-rotation") or name == "vllm-lb-config":
                    assert resource["inputs"]["environment"]["DOCKER_HOST"] == one.docker_host
            # Each host downloaded for itself (the job ran on its engine, into its
            # cache), the two downloads at the same time: each started before the
            # other was done.
            for a, b in ((one, two), (two, one)):
                assert initial.index(f"vllm-{a.name}-download") < initial.index(
                    f"vllm-{b.name}-download", "outputs"
                )
            for host in (one, two):
                ready = resources[f"vllm-{host.name}-replicas-ready"]["outputs"]["stdout"]
                assert f"e2e-mh-{host.name}-0 ready after" in ready, ready
            assert not [
                c.name for c in machine.containers.list(all=True) if "e2e-mh" in str(c.name)
            ]
            assert not machine.networks.list(names=[NETWORK])
            lb = one.client().containers.get(LB_NAME)
            first, second = _hostnames(one), _hostnames(two)
            assert len(first) == len(second) == REPLICAS_PER_HOST
            for host, replicas in ((one, first), (two, second)):
                for replica in replicas.values():
                    downloads = _downloads_log(host, replica)
                    assert len(downloads) == 1 and downloads[0].startswith("download-job ")
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
                "first pulumi up on two engines (s)": round(up_seconds, 1),
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
            config = two_host_config(one, two, base, standin, monitoring)
            stack.write_config({"extraEnv": {**config["extraEnv"], "STANDIN_REVISION": "2"}})
            with streaming_load(lb_url, API_KEY, workers=4) as streams:
                time.sleep(2)
                began = time.monotonic()
                update = stack.up()
                update_seconds = time.monotonic() - began
                time.sleep(2)
            broken = [s for s in streams if not s.whole]
            print(
                f"rolling update on two engines: {update_seconds:.1f} s, {len(streams)} "
                f"streams, {len(broken)} failed or cut"
            )
            everyone = [*first.values(), *second.values()]
            # Every replica replaced (deleted first), no other container touched.
            assert _containers_changed(update) == {f"vllm-{n}": REPLACED for n in everyone}, (
                update.changed()
            )
            for name in everyone:
                # Its rotation step found nginx through host one's engine and the
                # replica through the replica's own (the CLI's DOCKER_HOST reaches
                # neither): drained before the replica was deleted, and put back
                # (resume) only once the new one was created and healthy.
                assert f"{name}: out of rotation after" in update.output
                assert f"{name}: healthy, back in rotation after" in update.output
                rotation = f"vllm-{name}-rotation"
                drained = update.index(rotation, "outputs", "delete-replaced")
                assert drained < update.index(f"vllm-{name}", "pre", "delete-replaced")
                assert update.index(rotation, "pre", "create-replacement") > update.index(
                    f"vllm-{name}", "outputs", "create-replacement"
                )
            # Waves: host two's replicas were drained only once host one's were back.
            first_back = max(
                update.index(f"vllm-{n}-rotation", "outputs", "create-replacement")
                for n in first.values()
            )
            for name in second.values():
                assert update.index(f"vllm-{name}-rotation", "pre", "delete-replaced") > first_back
            assert len(streams) > 20 and not broken, broken[:5]
            # The canary across engines: host one's replicas (updated) against host
            # two's (not yet replaced), a verdict from both sides' /metrics, and host
            # two's drains only after it.
            canary, old = ", ".join(sorted(first.values())), ", ".join(sorted(second.values()))
            assert (
                f"canary: watching {canary} (the first wave, updated) against {old} (not yet "
                "replaced)"
            ) in update.output, update.logged("vllm-canary")
            assert f"canary: {canary} no worse than {old}, the update goes on" in update.output
            print(*update.logged("vllm-canary"), sep="\n")
            verdict = max(
                i
                for i, s in enumerate(update.steps)
                if s.name == "vllm-canary" and s.kind == "outputs"
            )
            for name in second.values():
                assert update.index(f"vllm-{name}-rotation", "pre", "delete-replaced") > verdict
            for host in (one, two):
                for container in host.client().containers.list():
                    if str(container.name).startswith(f"e2e-mh-{host.name}-"):
                        assert "STANDIN_REVISION=2" in container.attrs["Config"]["Env"]
            assert one.client().containers.get(LB_NAME).id == lb.id, "nginx was replaced"

            # One replica fewer on host two: deleted on host two's engine (after
            # leaving nginx), no replica nor nginx replaced, host one untouched.
            removed = f"e2e-mh-{two.name}-{REPLICAS_PER_HOST - 1}"
            before = {**_ids(one), **_ids(two)}
            assert removed in _ids(two)
            hosts = [dict(host) for host in config["hosts"]]
            hosts[1]["replicas"] = REPLICAS_PER_HOST - 1
            stack.write_config({"hosts": hosts})
            fewer = stack.up()
            assert fewer.ops(f"vllm-{removed}-rotation") == ["delete"]
            assert fewer.ops(f"vllm-{removed}") == ["delete"]
            # nginx reloaded without it first (its config step, a new exporter among
            # its triggers); deletes come last in an update: the drain (found it
            # on host two's engine), then the container.
            reloaded = fewer.index("vllm-lb-config", "outputs", "create-replacement")
            assert reloaded < fewer.index(f"vllm-{removed}-rotation", "pre", "delete")
            assert fewer.index(f"vllm-{removed}-rotation", "outputs", "delete") < fewer.index(
                f"vllm-{removed}", "pre", "delete"
            )
            assert f"{removed}: out of rotation after" in fewer.output
            # The exporter and Prometheus have the replicas in their command and
            # scrape config: they are replaced; no other container is.
            assert _containers_changed(fewer) == {
                f"vllm-{removed}": ["delete"],
                "vllm-monitoring-lb-exporter": REPLACED,
                "vllm-monitoring-prometheus": REPLACED,
            }, fewer.changed()
            after = {**_ids(one), **_ids(two)}
            assert removed not in _ids(two)
            renewed = {EXPORTER, PROMETHEUS}
            assert {n: i for n, i in after.items() if n not in renewed} == {
                n: i for n, i in before.items() if n not in renewed and n != removed
            }
            assert sorted(_hostnames(two).values()) == sorted(
                n for n in second.values() if n != removed
            )
            assert sorted(_hostnames(one).values()) == sorted(first.values())
            output = lb.exec_run(["cat", "/etc/nginx/nginx.conf"]).output
            assert isinstance(output, bytes)
            nginx_config = output.decode()
            assert f"{two.address}:{BASE_PORT}" in nginx_config
            assert f"{two.address}:{BASE_PORT + REPLICAS_PER_HOST - 1}" not in nginx_config

            # Teardown: only the caches stay (retainOnDelete), on each engine.
            stack.destroy()
            assert stack.resources() == {}
            for host in (one, two):
                engine = host.client()
                assert engine.containers.list(all=True) == []
                assert {n.name for n in engine.networks.list()} == {"bridge", "host", "none"}
                assert [v.name for v in engine.volumes.list()] == [CACHE]
        finally:
            # The engines go with their namespaces (netns_hosts), the state with
            # tmp_path; whatever a wrong provider put on this machine's engine:
            remove_named(machine, networks=[NETWORK], volumes=[CACHE])
