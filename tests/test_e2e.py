"""The declared deployment, brought up on a real Docker engine (stack `ci`).

The program runs under Pulumi's mocks with `Pulumi.ci.yaml`; what it declares
(images, network, volume, containers with their uploads, health checks, ports,
the gate and verify commands, and their dependencies) is then applied to the
real engine by `tests.support.docker_apply`, in graph order, with the vLLM
stand-in image playing vLLM. Clients are real: the official `openai` client
through nginx's published port on 127.0.0.1.

Not covered here: pulumi-docker's own provider code (the Pulumi CLI and its
plugins cannot be installed on these machines), GPUs, and real vLLM.
"""

from __future__ import annotations

import json
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

from components.config.problems import NAMESPACE, ConfigError
from tests.support.docker_apply import Applied, Applier
from tests.support.docker_engine import (
    STANDIN_TAG,
    base_image,
    docker_client,
    remove_named,
    standin_image,
)
from tests.support.pulumi_capture import Declared, Run, run_program

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "e2e-test-key-123"
LB = "http://127.0.0.1:18000"
REPLICAS = ("e2e-vllm0", "e2e-vllm1", "e2e-vllm2")
NETWORK = "e2e-vllm-nginx"
VOLUME = "e2e-hf-cache"
LB_NAME = "e2e-nginx-lb"


def ci_config(**overrides: Any) -> dict[str, str]:
    """Pulumi.ci.yaml as the CLI would hand it to the program: strings and JSON."""
    document = yaml.safe_load((ROOT / "Pulumi.ci.yaml").read_text())
    config: dict[str, Any] = dict(document["config"])
    config[f"{NAMESPACE}:apiKey"] = API_KEY
    if STANDIN_TAG != "vllm-nginx/standin:test":
        config[f"{NAMESPACE}:image"] = {"prebuilt": STANDIN_TAG}
    for key, value in overrides.items():
        config[f"{NAMESPACE}:{key}"] = value
    return {
        key: json.dumps(value)
        if isinstance(value, dict | list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in config.items()
    }


SECRET_KEYS = [f"{NAMESPACE}:apiKey"]


def remove_deployment(client: docker.DockerClient) -> None:
    remove_named(client, containers=(LB_NAME, *REPLICAS), networks=[NETWORK], volumes=[VOLUME])


@dataclass
class Deployment:
    client: docker.DockerClient
    run: Run
    applier: Applier
    applied: Applied

    def container(self, name: str) -> Any:
        return self.client.containers.get(name)

    def replica_of(self) -> dict[str, str]:
        """The stand-in reports its hostname; map it back to the container name."""
        return {self.container(n).attrs["Config"]["Hostname"]: n for n in REPLICAS}


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    client = docker_client()
    base_image(client)
    standin_image(client)
    remove_deployment(client)
    run = run_program(ci_config(), SECRET_KEYS)
    applier = Applier(client, run.declared)
    try:
        applied = applier.apply()
        yield Deployment(client, run, applier, applied)
    finally:
        try:
            applier.destroy()
        finally:
            remove_deployment(client)


def openai_client(**kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{LB}/v1", api_key=API_KEY, max_retries=0, timeout=30, **kwargs)


def test_verify_step_saw_the_model(deployment: Deployment) -> None:
    stdout = deployment.applied.outputs["vllm-verify"]["stdout"]
    assert json.loads(stdout) == {"url": LB, "models": ["tiny-chat"]}


def test_lb_streams_and_spreads_over_all_replicas(deployment: Deployment) -> None:
    client = openai_client()
    names = deployment.replica_of()
    seen: list[str] = []
    for _ in range(9):
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
        seen.append(names[str(reply.system_fingerprint)])
    stream = client.completions.create(model="tiny-chat", prompt="hello", max_tokens=8, stream=True)
    chunks = list(stream)
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 8
    assert set(seen) == set(REPLICAS), seen


def test_lb_public_surface_and_api_key(deployment: Deployment) -> None:
    assert httpx.get(f"{LB}/health").status_code == 200
    assert httpx.get(f"{LB}/metrics").status_code == 404
    assert httpx.get(f"{LB}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{LB}/v1", api_key="wrong", max_retries=0).models.list()


def test_download_first_then_all_replicas_together(deployment: Deployment) -> None:
    """On a first deploy no wave waits for another (nothing is serving yet)."""
    timings = deployment.applied.timings
    download = timings["vllm-download"]
    replicas = [timings[f"vllm-{name}"] for name in REPLICAS]
    ready = timings["vllm-replicas-ready"]
    for replica in replicas:
        assert replica.started >= download.finished
        assert ready.started >= replica.finished
    # Every replica is created at once, none waits for another's load.
    assert max(r.started for r in replicas) - min(r.started for r in replicas) < 1.0
    assert timings["vllm-lb"].started >= ready.finished
    log = deployment.container("e2e-vllm0").exec_run(
        ["cat", "/root/.cache/huggingface/standin-downloads.log"]
    )
    assert log.exit_code == 0
    lines = log.output.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("download-job "), "the job downloaded, not a replica"
    for name in REPLICAS:
        env = deployment.container(name).attrs["Config"]["Env"]
        assert "HF_HUB_OFFLINE=1" in env
        logs = deployment.container(name).logs().decode()
        assert "found in cache" in logs
        assert "Uvicorn running on http://0.0.0.0:8000" in logs


def test_secret_never_in_nginx_or_logs(deployment: Deployment) -> None:
    lb = deployment.container(LB_NAME)
    config = lb.exec_run(["cat", "/etc/nginx/nginx.conf"]).output.decode()
    assert "server e2e-vllm2:8000" in config
    assert API_KEY not in config
    assert API_KEY not in lb.logs().decode()
    for name in REPLICAS:
        assert API_KEY not in deployment.container(name).logs().decode()
        assert API_KEY not in " ".join(deployment.container(name).attrs["Config"]["Cmd"])


@dataclass
class Outcome:
    started: float
    finished: float
    replica: str | None
    error: str | None


def _load(stop_at: float, outcomes: list[Outcome], lock: threading.Lock) -> None:
    client = openai_client()
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            stream = client.chat.completions.create(
                model="tiny-chat",
                messages=[{"role": "user", "content": "go"}],
                max_tokens=20,
                stream=True,
            )
            replica = None
            for chunk in stream:
                replica = chunk.system_fingerprint or replica
            outcome = Outcome(started, time.monotonic(), replica, None)
        except openai.APIError as err:
            outcome = Outcome(started, time.monotonic(), None, type(err).__name__)
        with lock:
            outcomes.append(outcome)


def test_replica_dies_under_load_and_comes_back(deployment: Deployment) -> None:
    names = deployment.replica_of()
    victim = deployment.container("e2e-vllm1")
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 8
    workers = [threading.Thread(target=_load, args=(stop_at, outcomes, lock)) for _ in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    victim.stop(timeout=0)
    stopped = time.monotonic()
    for worker in workers:
        worker.join()
    failed = [o for o in outcomes if o.error]
    after = [o for o in outcomes if o.started > stopped]
    assert after, "no request was sent after the stop"
    assert not [o for o in after if o.error], "a request sent after the stop failed"
    # Only requests in flight on the stopped replica may fail: at most one per worker.
    assert len(failed) <= len(workers), failed
    assert {names[o.replica] for o in after if o.replica} <= {"e2e-vllm0", "e2e-vllm2"}

    victim.start()
    deadline = time.monotonic() + 60
    while (
        deployment.container("e2e-vllm1").attrs["State"].get("Health", {}).get("Status")
        != "healthy"
    ):
        assert time.monotonic() < deadline, "restarted replica never became healthy"
        time.sleep(0.5)
    healthy = time.monotonic()
    client = openai_client()
    back = None
    while back is None and time.monotonic() < healthy + 30:
        reply = client.completions.create(model="tiny-chat", prompt="x", max_tokens=1)
        if names.get(str(reply.system_fingerprint)) == "e2e-vllm1":
            back = time.monotonic() - healthy
        time.sleep(0.2)
    assert back is not None, "restarted replica got no traffic within 30 s"
    fail_window = 5
    assert back <= fail_window + 2, f"served again {back:.1f} s after healthy"


def _declarations(run: Run) -> list[tuple[str, str, str]]:
    # Registration order is asynchronous; what Pulumi diffs is per resource name.
    # Dependencies are left out: with replicas running the update waves are
    # declared (components.shell.serving), and `dependsOn` alone changes nothing.
    return sorted((d.type, d.name, json.dumps(d.inputs, sort_keys=True)) for d in run.declared)


def test_applying_again_changes_nothing(deployment: Deployment) -> None:
    again = run_program(ci_config(), SECRET_KEYS)
    assert _declarations(again) == _declarations(deployment.run)
    before = {n: deployment.container(n).id for n in (*REPLICAS, LB_NAME)}
    second = Applier(deployment.client, again.declared)
    second.carry_state_from(deployment.applier)
    applied = second.apply()
    containers = {f"vllm-{n}" for n in REPLICAS} | {"vllm-lb"}
    assert not containers & set(applied.created), applied.created
    assert {n: deployment.container(n).id for n in (*REPLICAS, LB_NAME)} == before


def test_bad_input_creates_nothing(deployment: Deployment) -> None:
    declared: list[Declared] = []
    with pytest.raises(ConfigError, match=r"config key 'vllm-nginx:loadBalancer\.port'"):
        run_program(
            ci_config(namePrefix="e2e-bad", loadBalancer={"port": 0}),
            SECRET_KEYS,
            declared=declared,
        )
    assert declared == []
    applied = Applier(deployment.client, declared).apply()
    assert applied.created == []
    names = [c.name for c in deployment.client.containers.list(all=True)]
    assert not [n for n in names if n and n.startswith("e2e-bad")]


def test_teardown_keeps_cache_volume(deployment: Deployment) -> None:
    kept = deployment.applier.destroy()
    assert kept == ["vllm-hf-cache"]
    names = {c.name for c in deployment.client.containers.list(all=True)}
    assert not names & {*REPLICAS, LB_NAME}
    assert not deployment.client.networks.list(names=[NETWORK])
    assert deployment.client.volumes.get(VOLUME).name == VOLUME
