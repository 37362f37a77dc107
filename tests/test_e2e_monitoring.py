"""Monitoring on a real Docker engine: the CI stack with `monitoring.enabled`.

The program runs under Pulumi's mocks and the applier brings what it declared
up on the engine (as in test_e2e.py), with offline images in place of the
official ones: Debian's Prometheus 2.42 (`scripts/base-image.sh --monitoring`),
the exporter on the base image's python3, and Grafana's stand-in (no Grafana
can be had offline; it serves the uploaded files). Traffic goes through the
load balancer on loopback; then every query of every dashboard panel runs
against the running Prometheus and must return data, one series per replica
where the panel groups by replica.

Names and ports are this file's own (`e2e-mon-*`, 18780-18799), so it can run
beside the other end-to-end tests.

`VLLM_NGINX_DASHBOARD_PNG=<path>` also draws the panels from the query results
(how docs/dashboard.png is made).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from components.config.problems import NAMESPACE
from components.plan.monitoring import DASHBOARD_FILE, REPLICA_LABEL
from tests.support.docker_apply import Applied, Applier
from tests.support.docker_engine import (
    base_image,
    docker_client,
    grafana_standin_image,
    monitoring_image,
    remove_named,
    standin_image,
)
from tests.support.pulumi_capture import Run, run_program

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "e2e-mon-key-123"
GRAFANA_PASSWORD = "e2e-mon-grafana-pw"
LB = "http://127.0.0.1:18780"
PROMETHEUS = "http://127.0.0.1:18790"
GRAFANA = "http://127.0.0.1:18791"
REPLICAS = ("e2e-mon-vllm0", "e2e-mon-vllm1", "e2e-mon-vllm2")
ADDED = "e2e-mon-vllm3"
"""The replica a later test adds."""
LB_NAME = "e2e-mon-lb"
NETWORK = "e2e-mon-net"
CACHE = "e2e-mon-hf-cache"
MONITORING = ("e2e-mon-lb-exporter", "e2e-mon-prometheus", "e2e-mon-grafana")
DATA_VOLUMES = ("e2e-mon-prometheus-data", "e2e-mon-grafana-data")
SECRET_KEYS = [f"{NAMESPACE}:apiKey", f"{NAMESPACE}:grafanaPassword"]
RATE_INTERVAL = "20s"
"""What `$__rate_interval` stands for here: the test's traffic lies within it."""
# A shared prompt prefix longer than a few 16-token blocks: later requests hit
# the prefix cache of the replica that saw it before.
SYSTEM_PROMPT = " ".join(f"rule{i}" for i in range(64))


def monitoring_config() -> dict[str, str]:
    """Pulumi.ci.yaml with monitoring on and this file's own names and ports."""
    document = yaml.safe_load((ROOT / "Pulumi.ci.yaml").read_text())
    config: dict[str, Any] = dict(document["config"])

    def key(name: str) -> str:
        return f"{NAMESPACE}:{name}"

    config[key("monitoring")] = {**config[key("monitoring")], "enabled": True}
    config[key("namePrefix")] = "e2e-mon-vllm"
    config[key("networkName")] = NETWORK
    config[key("hfCache")] = {"volume": CACHE}
    config[key("basePort")] = 18781
    config[key("loadBalancer")] = {**config[key("loadBalancer")], "name": LB_NAME, "port": 18780}
    config[key("apiKey")] = API_KEY
    config[key("grafanaPassword")] = GRAFANA_PASSWORD
    return {
        k: json.dumps(v)
        if isinstance(v, dict | list)
        else str(v).lower()
        if isinstance(v, bool)
        else str(v)
        for k, v in config.items()
    }


def remove_deployment(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=(LB_NAME, *MONITORING, *REPLICAS, ADDED),
        networks=[NETWORK],
        volumes=[CACHE, *DATA_VOLUMES],
    )


@dataclass
class Deployment:
    client: docker.DockerClient
    run: Run
    applier: Applier
    applied: Applied


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    client = docker_client()
    base_image(client)
    standin_image(client)
    monitoring_image(client)
    grafana_standin_image(client)
    remove_deployment(client)
    run = run_program(monitoring_config(), SECRET_KEYS)
    deployment = Deployment(client, run, Applier(client, run.declared), Applied())
    try:
        deployment.applied = deployment.applier.apply()
        yield deployment
    finally:
        try:
            # A test may have applied a later version: its state is the one to destroy.
            deployment.applier.destroy()
        finally:
            remove_deployment(client)


def _load(stop_at: float, errors: list[str]) -> None:
    client = openai.OpenAI(base_url=f"{LB}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    turn = 0
    while time.monotonic() < stop_at:
        turn += 1
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"question {turn}"},
        ]
        try:
            if turn % 2:
                stream = client.chat.completions.create(
                    model="tiny-chat", messages=messages, max_tokens=12, stream=True
                )
                for _ in stream:
                    pass
            else:
                client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=6)
        except openai.APIError as err:
            errors.append(type(err).__name__)


@pytest.fixture(scope="module")
def traffic(deployment: Deployment) -> float:
    """Eight seconds of streamed and whole chats from six clients, plus one 401."""
    errors: list[str] = []
    stop_at = time.monotonic() + 8
    workers = [threading.Thread(target=_load, args=(stop_at, errors)) for _ in range(6)]
    for worker in workers:
        worker.start()
    assert httpx.get(f"{LB}/v1/models").status_code == 401
    for worker in workers:
        worker.join()
    assert not errors, errors
    # Two scrapes after the last request, so the counters include all of it.
    time.sleep(2.5)
    return time.time()


def prometheus(path: str, **params: str) -> Any:
    response = httpx.get(f"{PROMETHEUS}{path}", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def panel_targets() -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def as_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def is_per_replica(expr: str) -> bool:
    return re.search(rf"\bby \(([^)]*\b{REPLICA_LABEL}\b[^)]*)\)", expr) is not None


def test_outputs_name_the_monitoring_urls(deployment: Deployment) -> None:
    outputs = deployment.run.outputs
    assert outputs["prometheus_url"] == PROMETHEUS
    assert outputs["grafana_url"] == GRAFANA


def test_prometheus_scrapes_every_replica_and_the_exporter(deployment: Deployment) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = prometheus("/api/v1/targets")["activeTargets"]
        health = {t["labels"].get(REPLICA_LABEL, t["labels"]["job"]): t["health"] for t in targets}
        if len(health) == len(REPLICAS) + 1 and set(health.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, targets
        time.sleep(1)
    assert set(health) == {*REPLICAS, "vllm-lb"}


def test_every_dashboard_query_has_data(deployment: Deployment, traffic: float) -> None:
    failures = []
    for title, target in panel_targets():
        result = prometheus("/api/v1/query", query=as_promql(target["expr"]), time=str(traffic))[
            "result"
        ]
        values = [float(series["value"][1]) for series in result]
        if not result or not all(math.isfinite(v) for v in values):
            failures.append(f"{title} [{target['refId']}]: {result}")
            continue
        if is_per_replica(target["expr"]):
            replicas = sorted(series["metric"].get(REPLICA_LABEL, "") for series in result)
            if replicas != sorted(REPLICAS):
                failures.append(f"{title} [{target['refId']}]: series {replicas}")
    assert not failures, "\n".join(failures)
    if path := os.environ.get("VLLM_NGINX_DASHBOARD_PNG"):
        from tests.support.dashboard_png import draw_dashboard

        draw_dashboard(PROMETHEUS, DASHBOARD_FILE, RATE_INTERVAL, traffic, Path(path))


def test_lb_metrics_count_what_clients_got(deployment: Deployment, traffic: float) -> None:
    def value(query: str) -> float:
        result = prometheus("/api/v1/query", query=query, time=str(traffic))["result"]
        return sum(float(series["value"][1]) for series in result)

    ok = value('vllm_lb_requests_total{status="200"}')
    served = value("sum(vllm:request_success_total)")
    assert ok > 20
    # Every 200 through the balancer is one finished request on some replica
    # (the verify step's /v1/models never reaches vLLM's request counter).
    assert served >= ok - 2, (ok, served)
    assert value('vllm_lb_requests_total{status="401"}') >= 1
    assert value("vllm_lb_unparsed_lines_total") == 0
    assert value("sum(vllm:prefix_cache_hits_total)") > 0


def test_grafana_gets_datasource_dashboard_and_password(deployment: Deployment) -> None:
    assert httpx.get(f"{GRAFANA}/api/health", timeout=10).status_code == 200
    assert httpx.get(f"{GRAFANA}/api/search", auth=("admin", "wrong")).status_code == 401
    found = httpx.get(f"{GRAFANA}/api/search", auth=("admin", GRAFANA_PASSWORD)).json()
    assert [d["uid"] for d in found] == ["vllm-nginx"]
    sources = httpx.get(f"{GRAFANA}/api/datasources", auth=("admin", GRAFANA_PASSWORD)).json()
    assert sources == [{"uid": "vllm-prometheus", "url": "http://e2e-mon-prometheus:9090"}]


def test_secrets_stay_secret(deployment: Deployment) -> None:
    grafana = deployment.run.named("vllm-monitoring-grafana")
    prometheus_ = deployment.run.named("vllm-monitoring-prometheus")
    for declared in (grafana, prometheus_):
        assert "uploads" in declared.secret_inputs
        assert declared.additional_secret_outputs == ["uploads"]
    config = next(u["content"] for u in prometheus_.inputs["uploads"] if u["file"].endswith(".yml"))
    assert API_KEY not in config
    for name in (*MONITORING, LB_NAME):
        container = deployment.client.containers.get(name)
        env = " ".join(container.attrs["Config"]["Env"] or [])
        assert GRAFANA_PASSWORD not in env and API_KEY not in env
        assert GRAFANA_PASSWORD not in container.logs().decode()


def test_a_new_replica_reloads_nginx_and_the_new_exporter_labels_it(
    deployment: Deployment,
) -> None:
    """The exporter has the replicas in its command, so adding one replaces it. nginx
    must not be replaced for that (every connection would drop): its config step
    reloads it, which resolves the new exporter's address, and the lines for the
    new replica arrive there, labelled with its name."""
    client = deployment.client
    lb_before = client.containers.get(LB_NAME).id
    exporter_before = client.containers.get("e2e-mon-lb-exporter").id
    config = monitoring_config()
    config[f"{NAMESPACE}:replicas"] = "4"
    more = Applier(client, run_program(config, SECRET_KEYS).declared)
    more.carry_state_from(deployment.applier)
    deployment.applier = more
    more.apply()
    assert client.containers.get(LB_NAME).id == lb_before
    assert client.containers.get("e2e-mon-lb-exporter").id != exporter_before
    openai_client = openai.OpenAI(base_url=f"{LB}/v1", api_key=API_KEY, max_retries=0)
    for turn in range(16):
        openai_client.completions.create(model="tiny-chat", prompt=f"p{turn}", max_tokens=2)
    query = f'sum by (replica) (vllm_lb_upstream_attempts_total{{replica="{ADDED}"}})'
    deadline = time.monotonic() + 20
    while not prometheus("/api/v1/query", query=query)["result"]:
        assert time.monotonic() < deadline, f"no attempt on {ADDED} reached Prometheus"
        time.sleep(0.5)


def test_teardown_keeps_the_data_volumes(deployment: Deployment) -> None:
    kept = deployment.applier.destroy()
    assert sorted(kept) == sorted(
        ["vllm-hf-cache", "vllm-monitoring-prometheus-data", "vllm-monitoring-grafana-data"]
    )
    names = {c.name for c in deployment.client.containers.list(all=True)}
    assert not names & {*MONITORING, LB_NAME, *REPLICAS, ADDED}
    for volume in DATA_VOLUMES:
        assert deployment.client.volumes.get(volume).name == volume
