"""Monitoring on a real Docker engine: the CI stack with `monitoring.enabled`, by the real CLI.

`pulumi up` runs this project with `Pulumi.ci.yaml`, monitoring on, this
file's names and ports, and the API key and Grafana password set as secrets
(tests/support/pulumi_engine.py: the real Pulumi engine and CLI; the docker
and command plugins and the Python language host are our stand-ins that
follow their source). Offline images stand in for the official ones: Debian's
Prometheus 2.42 (`scripts/base-image.sh --monitoring`), the exporter on the
base image's python3, and Grafana's stand-in (no Grafana can be had offline;
it serves the uploaded files). Traffic goes through the load balancer on
loopback; then every query of every dashboard panel runs against the running
Prometheus and must return data, one series per replica where the panel
groups by replica. Adding a replica is a second `pulumi up`: the engine's
event log says what it replaced (the exporter, never nginx), Docker's
container ids confirm it. The Grafana password must never be readable in the
stack file, the state, the CLI's output or the containers.

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
from pathlib import Path
from typing import Any

import docker
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from components.plan.monitoring import DASHBOARD_FILE, REPLICA_LABEL
from tests.support.deployed import Deployed, deployed_stack
from tests.support.docker_engine import (
    BASE_IMAGE_TAG,
    GRAFANA_STANDIN_TAG,
    MONITORING_IMAGE_TAG,
    STANDIN_TAG,
    base_image,
    docker_client,
    grafana_standin_image,
    monitoring_image,
    remove_named,
    standin_image,
)
from tests.support.pulumi_engine import is_secret, reveal, stack_config_of

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "e2e-mon-key-123"
# Named API keys (docs/api-keys.md): half the traffic comes with team-a's, and
# team-b's limit of one request a minute gives the 429 panel its data.
NAMED_KEYS = {"team-a": "e2e-mon-team-a-key-456", "team-b": "e2e-mon-team-b-key-789"}
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
EXPORTER = "e2e-mon-lb-exporter"
MONITORING = (EXPORTER, "e2e-mon-prometheus", "e2e-mon-grafana")
DATA_VOLUMES = ("e2e-mon-prometheus-data", "e2e-mon-grafana-data")
REPLACED = ["delete-replaced", "replace", "create-replacement"]
"""The engine's steps for a delete-before-replace, in the order it reports them."""
RATE_INTERVAL = "20s"
"""What `$__rate_interval` stands for here: the test's traffic lies within it."""
# A shared prompt prefix longer than a few 16-token blocks: later requests hit
# the prefix cache of the replica that saw it before.
SYSTEM_PROMPT = " ".join(f"rule{i}" for i in range(64))


def monitoring_config(
    base: str = BASE_IMAGE_TAG,
    monitoring: tuple[str, str] = (MONITORING_IMAGE_TAG, GRAFANA_STANDIN_TAG),
) -> dict[str, Any]:
    """Pulumi.ci.yaml with monitoring on, this file's own names and ports, and the
    images this session has (their tags can be overridden by the environment)."""
    config = stack_config_of(ROOT / "Pulumi.ci.yaml")
    prometheus, grafana = monitoring
    section = config["monitoring"]
    config.update(
        monitoring={
            **section,
            "enabled": True,
            "prometheus": {**section["prometheus"], "image": prometheus},
            "grafana": {**section["grafana"], "image": grafana},
            "lbExporter": {**section["lbExporter"], "image": base},
        },
        namePrefix="e2e-mon-vllm",
        networkName=NETWORK,
        hfCache={"volume": CACHE},
        basePort=18781,
        loadBalancer={**config["loadBalancer"], "name": LB_NAME, "port": 18780, "image": base},
        image={"prebuilt": STANDIN_TAG},
    )
    return config


def remove_deployment(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=(LB_NAME, *MONITORING, *REPLICAS, ADDED),
        networks=[NETWORK],
        volumes=[CACHE, *DATA_VOLUMES],
    )


class Deployment(Deployed):
    def container_id(self, name: str) -> str:
        return str(self.client.containers.get(name).id)


def _set_named_keys(stack: Any) -> None:
    for name, key in NAMED_KEYS.items():
        stack.run("config", "set", "--secret", "--path", f"apiKeys.{name}.key", input=key)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    client = docker_client()
    base = base_image(client)
    standin_image(client)
    monitoring = (monitoring_image(client), grafana_standin_image(client))
    # Whatever a test changed, the stack's state is what is destroyed.
    with deployed_stack(
        client,
        tmp_path_factory.mktemp("e2e-mon"),
        "ci",
        {**monitoring_config(base, monitoring), "apiKeys": {"team-b": {"requestsPerMinute": 1}}},
        clean=remove_deployment,
        secrets={"apiKey": API_KEY, "grafanaPassword": GRAFANA_PASSWORD},
        kind=Deployment,
        before_up=_set_named_keys,
    ) as deployed:
        yield deployed


def _load(stop_at: float, errors: list[str], key: str = API_KEY) -> None:
    client = openai.OpenAI(base_url=f"{LB}/v1", api_key=key, max_retries=0, timeout=30)
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
    """Eight seconds of streamed and whole chats from six clients (three with the
    operator's key, three with team-a's), plus one 401 and one 429 (team-b's)."""
    errors: list[str] = []
    stop_at = time.monotonic() + 8
    keys = [API_KEY, NAMED_KEYS["team-a"]] * 3
    workers = [threading.Thread(target=_load, args=(stop_at, errors, key)) for key in keys]
    for worker in workers:
        worker.start()
    assert httpx.get(f"{LB}/v1/models").status_code == 401
    team_b = openai.OpenAI(
        base_url=f"{LB}/v1", api_key=NAMED_KEYS["team-b"], max_retries=0, timeout=30
    )
    team_b.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    with pytest.raises(openai.RateLimitError):
        team_b.models.list()
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
    outputs = deployment.stack.outputs()
    assert outputs["prometheus_url"] == PROMETHEUS
    assert outputs["grafana_url"] == GRAFANA
    # nginx resolves its syslog target (the exporter) when it loads its config:
    # the engine created it only once the exporter was up.
    first = deployment.first
    assert first.index("vllm-lb") > first.index("vllm-monitoring-lb-exporter", "outputs")


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
    stack = deployment.stack
    stack_file = stack.stack_file.read_text()
    assert stack_file.count("secure:") == 2 + len(NAMED_KEYS)
    events = "\n".join(p.read_text() for p in stack.logs.glob("*.events.jsonl"))
    for secret in (GRAFANA_PASSWORD, API_KEY, *NAMED_KEYS.values()):
        assert secret not in stack_file
        assert secret not in stack.state()
        # What the CLI printed and its event logs (which carry every step's inputs).
        assert secret not in stack.logs_text()
        assert secret not in events
    # The uploads that carry them are secrets in the state, as declared and as
    # the provider returned them (it keeps uploads as given).
    state = json.loads(stack.state())
    stored = {r["urn"].rsplit("::", 1)[-1]: r for r in state["checkpoint"]["latest"]["resources"]}
    for name in ("vllm-monitoring-grafana", "vllm-monitoring-prometheus"):
        assert is_secret(stored[name]["inputs"]["uploads"]), name
        assert is_secret(stored[name]["outputs"]["uploads"]), name
    shown = stack.resources()
    uploads = reveal(shown["vllm-monitoring-prometheus"]["inputs"]["uploads"])
    config = next(u["content"] for u in uploads if u["file"].endswith(".yml"))
    assert API_KEY not in config
    grafana_files = reveal(shown["vllm-monitoring-grafana"]["inputs"]["uploads"])
    assert any(GRAFANA_PASSWORD in u["content"] for u in grafana_files)
    for name in (*MONITORING, LB_NAME):
        container = deployment.client.containers.get(name)
        env = " ".join(container.attrs["Config"]["Env"] or [])
        assert GRAFANA_PASSWORD not in env and API_KEY not in env
        assert GRAFANA_PASSWORD not in container.logs().decode()
        for key in NAMED_KEYS.values():
            assert key not in json.dumps(container.attrs) and key not in container.logs().decode()


def test_a_second_preview_changes_nothing(deployment: Deployment) -> None:
    """What the provider read back of Prometheus, Grafana and the exporter (images,
    uploads, volumes, ports) is what the program declares: no drift."""
    deployment.stack.preview(expect_no_changes=True)


def test_a_new_replica_reloads_nginx_and_the_new_exporter_labels_it(
    deployment: Deployment,
) -> None:
    """The exporter has the replicas in its command, so adding one replaces it. nginx
    must not be replaced for that (every connection would drop): its config step
    reloads it, which resolves the new exporter's address, and the lines for the
    new replica arrive there, labelled with its name."""
    client = deployment.client
    kept = (LB_NAME, *REPLICAS, "e2e-mon-grafana")
    before = {name: deployment.container_id(name) for name in (*kept, EXPORTER)}
    deployment.stack.write_config({"replicas": 4})
    result = deployment.stack.up()
    containers = {
        step.name: result.ops(step.name)
        for step in result.steps
        if step.type.endswith(":Container") and result.ops(step.name)
    }
    # The exporter (replicas in its command) and Prometheus (replicas in its
    # scrape config) are replaced, the new replica created, nothing else.
    assert containers == {
        "vllm-monitoring-lb-exporter": REPLACED,
        "vllm-monitoring-prometheus": REPLACED,
        f"vllm-{ADDED}": ["create"],
    }, result.changed()
    # nginx's config step runs again (a new exporter among its triggers) after the
    # new exporter and the new replica are up: it writes the config and reloads.
    assert "create-replacement" in result.ops("vllm-lb-config"), result.changed()
    reload = result.index("vllm-lb-config", "pre", "create-replacement")
    assert reload > result.index("vllm-monitoring-lb-exporter", "outputs", "create-replacement")
    assert reload > result.index(f"vllm-{ADDED}", "outputs", "create")
    assert f"{LB_NAME}: reloaded with 1 changed file(s): /etc/nginx/nginx.conf" in result.output
    after = {name: deployment.container_id(name) for name in (*kept, EXPORTER)}
    assert {n: after[n] for n in kept} == {n: before[n] for n in kept}
    assert after[EXPORTER] != before[EXPORTER]
    config = client.containers.get(LB_NAME).exec_run(["cat", "/etc/nginx/nginx.conf"]).output
    assert isinstance(config, bytes) and f"server {ADDED}:8000" in config.decode()
    openai_client = openai.OpenAI(base_url=f"{LB}/v1", api_key=API_KEY, max_retries=0)
    for turn in range(16):
        openai_client.completions.create(model="tiny-chat", prompt=f"p{turn}", max_tokens=2)
    query = f'sum by (replica) (vllm_lb_upstream_attempts_total{{replica="{ADDED}"}})'
    deadline = time.monotonic() + 20
    while True:
        try:
            # The replaced Prometheus may still be starting.
            if prometheus("/api/v1/query", query=query)["result"]:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no attempt on {ADDED} reached Prometheus"
        time.sleep(0.5)


def test_teardown_keeps_the_data_volumes(deployment: Deployment) -> None:
    deployment.stack.destroy()
    assert deployment.stack.resources() == {}
    client = deployment.client
    names = {c.name for c in client.containers.list(all=True)}
    assert not names & {*MONITORING, LB_NAME, *REPLICAS, ADDED}
    assert not client.networks.list(names=[NETWORK])
    # retainOnDelete: out of the state, still on the engine.
    for volume in (CACHE, *DATA_VOLUMES):
        assert client.volumes.get(volume).name == volume
