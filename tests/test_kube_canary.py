"""The Kubernetes canary step's decisions with the cluster's API faked: when it watches,
how it takes a worse canary out (its pods' rotation label) and puts it back. The same
step on the real cluster through `pulumi up`: tests/test_k8s_engine.py."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from components.plan.specs import KubeCanarySpec, WatchedReplica
from components.steps import canary, kube_canary
from components.steps.canary_compare import Scrape

INF = math.inf
PATH = "/api/v1/namespaces/llm/services/{}:8000/proxy/metrics"


def spec(**more: Any) -> KubeCanarySpec:
    values: dict[str, Any] = {
        "kubeconfig": None,
        "context": None,
        "namespace": "llm",
        "canary_workload": "vllm-chat-canary",
        "rest_workload": "vllm-chat",
        "canary": (
            WatchedReplica("vllm-chat-0", PATH.format("vllm-chat-0"), "vllm-chat-canary-0"),
        ),
        "baseline": (WatchedReplica("vllm-chat-1", PATH.format("vllm-chat-1"), "vllm-chat-1"),),
        "seconds": 0,
        "max_ttft_ratio": 1.5,
        "max_error_rate_increase": 0.02,
        "min_requests": 5,
        "without_traffic": "proceed",
        "max_wait_seconds": 1,
        "progress_seconds": 0.1,
    }
    values.update(more)
    return KubeCanarySpec(**values)


class FakeCluster:
    """StatefulSets' pod templates and pods' labels, as the API answers and patches them."""

    def __init__(self, templates: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
        self.templates = templates
        self.labels = {"vllm-chat-canary-0": dict(labels)}
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def read_namespaced_stateful_set(self, name: str, namespace: str) -> Any:
        if name not in self.templates:
            raise ApiException(status=404, reason="Not Found")
        template = SimpleNamespace(to_dict=lambda: dict(self.templates[name]))
        return SimpleNamespace(spec=SimpleNamespace(template=SimpleNamespace(spec=template)))

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        return SimpleNamespace(metadata=SimpleNamespace(labels=self.labels[name]))

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.patches.append((name, body))
        self.labels[name].update(body["metadata"]["labels"])


def run(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, fetch: Any, **more: Any) -> str:
    fake = SimpleNamespace(CoreV1Api=lambda api: cluster, AppsV1Api=lambda api: cluster)
    monkeypatch.setattr(kube_canary, "client", fake)
    return kube_canary.run(spec(**more), api=None, fetch=fetch)


def scraped(ttft: dict[str, float]) -> Any:
    """Every replica served 10 requests since the last call, each first token within
    `ttft[replica]` seconds (its bucket's bound)."""
    counts: dict[str, int] = {}

    def fetch(path: str) -> Scrape:
        name = next(n for n in ttft if PATH.format(n) == path)
        counts[name] = counts.get(name, 0) + 10
        n = counts[name]
        buckets = {b: (n if b >= ttft[name] else 0.0) for b in (0.05, 0.1, 0.5, 1.0, INF)}
        return Scrape(buckets, requests=n, failed=0)

    return fetch


POD = {"containers": [{"name": "vllm", "image": "vllm:1", "env": [{"name": "A", "value": "1"}]}]}
IN, OUT = {"vllm-nginx/rotation": "in"}, {"vllm-nginx/rotation": "out"}
NEW = {"containers": [{"name": "vllm", "image": "vllm:2", "env": [{"name": "A", "value": "1"}]}]}


def test_a_first_deploy_has_nothing_to_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster({"vllm-chat-canary": POD}, IN)
    said = run(cluster, monkeypatch, fetch=None)
    assert said == "canary: vllm-chat-1 not deployed yet (first deploy): vllm-chat-0 not watched"


def test_a_canary_running_what_the_others_run_is_not_watched_and_back_in_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Turned on, a setting changed, or reverted to what the others run.
    cluster = FakeCluster(
        {"vllm-chat-canary": POD, "vllm-chat": POD}, {"vllm-nginx/rotation": "out"}
    )
    said = run(cluster, monkeypatch, fetch=None)
    assert said == "canary: vllm-chat-0 run what vllm-chat-1 run (nothing to compare): not watched"
    assert cluster.labels["vllm-chat-canary-0"]["vllm-nginx/rotation"] == "in"


def test_a_slower_canary_is_labelled_out_of_its_services(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster(
        {"vllm-chat-canary": NEW, "vllm-chat": POD}, {"vllm-nginx/rotation": "in"}
    )
    slow = scraped({"vllm-chat-0": 0.5, "vllm-chat-1": 0.05})
    with pytest.raises(canary.CanaryFailed) as failed:
        run(cluster, monkeypatch, fetch=slow)
    message = str(failed.value)
    assert message.startswith("canary failed: vllm-chat-0 (the first wave, updated) is worse")
    assert "WORSE" in message and message.endswith(canary.WHAT_TO_DO)
    assert (
        "vllm-chat-0 taken out of rotation (labelled vllm-nginx/rotation=out: its Service "
        "selects no pod); vllm-chat-1 keeps serving, not replaced." in message
    )
    assert cluster.patches == [
        ("vllm-chat-canary-0", {"metadata": {"labels": {"vllm-nginx/rotation": "out"}}})
    ]


def test_a_canary_taken_out_before_is_put_back_to_be_watched_and_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster(
        {"vllm-chat-canary": NEW, "vllm-chat": POD}, {"vllm-nginx/rotation": "out"}
    )
    equal = scraped({"vllm-chat-0": 0.1, "vllm-chat-1": 0.1})
    said = run(cluster, monkeypatch, fetch=equal)
    assert said.startswith("canary: vllm-chat-0 no worse than vllm-chat-1, the update goes on")
    assert "canary: vllm-chat-0 back in rotation to be watched again" in capsys.readouterr().out
    assert cluster.labels["vllm-chat-canary-0"]["vllm-nginx/rotation"] == "in"


def test_an_unreachable_replica_fails_with_its_path() -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise ApiException(status=503, reason="Service Unavailable")

    api = SimpleNamespace(param_serialize=lambda **_: ("GET", "u", {}, None, None), call_api=refuse)
    fetch = kube_canary.proxy_scraper(api)
    with pytest.raises(OSError, match="the API server answered 503 Service Unavailable"):
        fetch(PATH.format("vllm-chat-0"))
