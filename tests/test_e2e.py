"""The deployment, brought up by the real Pulumi CLI on a real Docker engine (stack `ci`).

`pulumi up` runs this project with `Pulumi.ci.yaml` and the API key set as a
secret, as a user would (tests/support/pulumi_engine.py: the real engine and
CLI; pulumi-docker's and pulumi-command's plugins and the Python language host
are our stand-ins that follow their source, as the Go module proxy serves
none of them). The vLLM stand-in image plays vLLM. Clients are real: the
official `openai` client through nginx's published port on 127.0.0.1.

Not covered here: GPUs and a real vLLM.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import openai
import pytest

from tests.support.deployed import Deployed, deployed_stack
from tests.support.docker_engine import (
    STANDIN_TAG,
    base_image,
    docker_client,
    remove_named,
    standin_image,
)
from tests.support.pulumi_engine import Stack, stack_config_of

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "e2e-test-key-123"
LB = "http://127.0.0.1:18000"
REPLICAS = ("e2e-vllm0", "e2e-vllm1", "e2e-vllm2")
NETWORK = "e2e-vllm-nginx"
VOLUME = "e2e-hf-cache"
LB_NAME = "e2e-nginx-lb"


def ci_config(**overrides: Any) -> dict[str, Any]:
    """Pulumi.ci.yaml's config, with the stand-in image this session built."""
    config = stack_config_of(ROOT / "Pulumi.ci.yaml", overrides)
    if STANDIN_TAG != "vllm-nginx/standin:test" and "image" not in overrides:
        config["image"] = {"prebuilt": STANDIN_TAG}
    return config


def loopback_balancer(name: str, port: int, **options: Any) -> dict[str, Any]:
    """A `loadBalancer` of a test's own: the offline base image's nginx (1.22, so
    no `resolve`), published on loopback at `port` only; `options` add keys."""
    return {
        "name": name,
        "port": port,
        "bindAddress": "127.0.0.1",
        "image": "vllm-nginx/base:bookworm",
        "dynamicResolve": False,
        **options,
    }


def remove_deployment(client: docker.DockerClient) -> None:
    remove_named(client, containers=(LB_NAME, *REPLICAS), networks=[NETWORK], volumes=[VOLUME])


class Deployment(Deployed):
    def container(self, name: str) -> Any:
        return self.client.containers.get(name)

    def replica_of(self) -> dict[str, str]:
        """The stand-in reports its hostname; map it back to the container name."""
        return {self.container(n).attrs["Config"]["Hostname"]: n for n in REPLICAS}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    client = docker_client()
    base_image(client)
    standin_image(client)
    with deployed_stack(
        client,
        tmp_path_factory.mktemp("e2e"),
        "ci",
        ci_config(),
        clean=remove_deployment,
        secrets={"apiKey": API_KEY},
        kind=Deployment,
    ) as deployed:
        yield deployed


def openai_client(**kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{LB}/v1", api_key=API_KEY, max_retries=0, timeout=30, **kwargs)


def test_verify_step_saw_the_model(deployment: Deployment) -> None:
    stdout = deployment.stack.resources()["vllm-verify"]["outputs"]["stdout"]
    assert json.loads(stdout) == {"url": LB, "models": ["tiny-chat"]}
    # What the user saw during `up`: the steps' progress, the verify line.
    assert "tiny-chat" in deployment.first.output


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
    up = deployment.first
    for name in REPLICAS:
        assert up.index(f"vllm-{name}") > up.index("vllm-download", "outputs")
        assert up.index("vllm-replicas-ready") > up.index(f"vllm-{name}", "outputs")
    assert up.index("vllm-lb") > up.index("vllm-replicas-ready", "outputs")
    # Every replica is created at once, none waits for another's load.
    created = [deployment.container(n).attrs["Created"] for n in REPLICAS]
    starts = [datetime.fromisoformat(c[:26].rstrip("Z")).timestamp() for c in created]
    assert max(starts) - min(starts) < 1.0, created
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


def test_lb_health_is_the_balancers_and_docker_checks_it(deployment: Deployment) -> None:
    """/health derived from the replicas (components/lb/health.py); Docker asks it."""
    assert httpx.get(f"{LB}/health").json() == {"status": "ok", "pools": {"default": "up"}}
    unknown = httpx.get(f"{LB}/nowhere.html")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == 404
    deadline = time.monotonic() + 40
    while deployment.container(LB_NAME).attrs["State"].get("Health", {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, "the balancer's container never became healthy"
        time.sleep(1)


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


def test_secret_is_encrypted_in_the_stack_file_and_state(deployment: Deployment) -> None:
    stack = deployment.stack
    assert API_KEY not in stack.stack_file.read_text()
    assert "secure:" in stack.stack_file.read_text()
    assert API_KEY not in stack.state()
    assert API_KEY not in stack.logs_text()


def test_a_second_preview_and_refresh_change_nothing(deployment: Deployment) -> None:
    before = {n: deployment.container(n).id for n in (*REPLICAS, LB_NAME)}
    deployment.stack.preview(expect_no_changes=True)
    deployment.stack.refresh(expect_no_changes=True)
    again = deployment.stack.up()
    assert again.changed() == {}, again.changed()
    assert {n: deployment.container(n).id for n in (*REPLICAS, LB_NAME)} == before


def test_bad_input_creates_nothing(deployment: Deployment, tmp_path: Path) -> None:
    bad = Stack(tmp_path, "bad", ci_config(namePrefix="e2e-bad", loadBalancer={"port": 0}))
    failed = bad.up_failing()
    assert "config key 'vllm-nginx:loadBalancer.port'" in failed.output
    assert "Traceback" not in failed.output
    assert bad.resources() == {}
    names = [c.name for c in deployment.client.containers.list(all=True)]
    assert not [n for n in names if n and n.startswith("e2e-bad")]


def test_teardown_keeps_cache_volume(deployment: Deployment) -> None:
    deployment.stack.destroy()
    assert deployment.stack.resources() == {}
    names = {c.name for c in deployment.client.containers.list(all=True)}
    assert not names & {*REPLICAS, LB_NAME}
    assert not deployment.client.networks.list(names=[NETWORK])
    assert deployment.client.volumes.get(VOLUME).name == VOLUME
