"""The test cluster itself, through the real Pulumi CLI and the real pulumi-kubernetes provider.

A single-node Kubernetes from Go modules (tests/support/k8s_cluster.py) runs
the vLLM stand-in image; the program (tests/support/k8s/program) is deployed
with `pulumi up` by the CLI built from Go modules, with the provider built from
pulumi-kubernetes' Go module. Only the GPUs are fake (our device plugin).
In the Docker group (tests/conftest.py): it exports images from the machine's
Docker engine. In order: a Deployment on GPUs answers through its Service; a
Pod asking for more GPUs than the node has stays Pending with the scheduler's
reason; `pulumi destroy` leaves nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.k8s_cluster import (
    NODE_ADDRESS,
    Cluster,
    toolchain,
)
from tests.support.pulumi_engine import PulumiFailed, Stack

pytestmark = pytest.mark.docker

PROGRAM = Path(__file__).parent / "support" / "k8s" / "program"
PROJECT = "vllm-nginx-k8s-test"
NAMESPACE = "vllm-nginx-test"
MODEL = "facebook/opt-125m"


@pytest.fixture(scope="module")
def cluster(k8s: Cluster) -> Cluster:
    return k8s


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    directory = tmp_path_factory.mktemp("k8s-stack")
    created = Stack(
        directory,
        "k8s",
        {
            f"{PROJECT}:kubeconfig": str(cluster.kubeconfig),
            f"{PROJECT}:image": "vllm-nginx/standin:test",
            f"{PROJECT}:model": MODEL,
        },
        program=PROGRAM,
    )
    # The real provider, where `pulumi plugin install` puts it, at the SDK's version.
    # (a folder of its own, the binary linked: the CLI skips a linked folder)
    for folder in toolchain()["plugins"].iterdir():
        target = created.home / "plugins" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for binary in folder.iterdir():
            (target / binary.name).symlink_to(binary)
    return created


def pods(cluster: Cluster, selector: str = "app=vllm-standin") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
    return items


def test_deployment_on_gpus_answers_through_its_service(cluster: Cluster, stack: Stack) -> None:
    started = time.monotonic()
    result = stack.up()
    print(f"pulumi up: {time.monotonic() - started:.1f}s")
    assert set(result.changed()) >= {"cluster", "ns", "vllm"}, result.changed()

    running = pods(cluster)
    assert len(running) == 2
    for pod in running:
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
    # The device plugin's Allocate gave each replica its own fake GPU.
    devices = {
        cluster.kubectl(
            "exec",
            "-n",
            NAMESPACE,
            pod["metadata"]["name"],
            "--",
            "printenv",
            "NVIDIA_VISIBLE_DEVICES",
        ).strip()
        for pod in running
    }
    assert len(devices) == 2 and all(d.startswith("fake-gpu-") for d in devices), devices
    node = cluster.get("node", "vllm-nginx-k8s")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"

    port = stack.outputs()["node_port"]
    client = openai.OpenAI(
        base_url=f"http://{NODE_ADDRESS}:{port}/v1", api_key="unused", max_retries=0, timeout=30
    )
    served = {model.id for model in client.models.list()}
    assert served == {MODEL}


def test_more_gpus_than_the_node_has_stays_pending(cluster: Cluster, stack: Stack) -> None:
    stack.write_config({f"{PROJECT}:big_gpus": 5})
    with pytest.raises(PulumiFailed) as failed:
        stack.up()
    # The provider's await reports the scheduler's reason to the user.
    assert "Insufficient nvidia.com/gpu" in failed.value.output, failed.value.output[-3000:]

    pod = cluster.get("pod", "-n", NAMESPACE, "too-big")
    assert pod["status"]["phase"] == "Pending"
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False"
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"], scheduled
    # The two replicas keep their GPUs and keep answering.
    assert all(p["status"]["phase"] == "Running" for p in pods(cluster))


def test_destroy_leaves_nothing(cluster: Cluster, stack: Stack) -> None:
    stack.destroy()
    assert stack.resources() == {}
    found = cluster.kubectl("get", "namespace", NAMESPACE, check=False)
    assert found == "", found
    everything = cluster.get("pods", "--all-namespaces")["items"]
    assert everything == [], [p["metadata"]["name"] for p in everything]
    services = cluster.get("services", "--all-namespaces")["items"]
    assert [s["metadata"]["name"] for s in services] == ["kubernetes"]
