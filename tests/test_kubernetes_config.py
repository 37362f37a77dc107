"""`engine: kubernetes`: the section's keys, and each Docker-only key refused with what to use.

Pure: the loader on plain config, as `pulumi up` and `components.cli.check` run it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.config.kubernetes_sections import EngineKind
from components.config.loading import load_config
from components.config.settings import Settings


def k8s(**overrides: Any) -> dict[str, str]:
    base: dict[str, Any] = {"engine": "kubernetes", "model": "org/model"}
    base.update(overrides)
    return {
        key: json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in base.items()
        if value is not None
    }


def problems(raw: dict[str, str]) -> dict[str, str]:
    loaded = load_config(raw, set())
    return {p.key.split(":", 1)[1]: p.rule for p in loaded.problems}


def settings(raw: dict[str, str]) -> Settings:
    loaded = load_config(raw, set())
    assert loaded.problems == (), loaded.problems
    assert loaded.settings is not None
    return loaded.settings


def test_docker_stays_the_default_and_kubernetes_keys_default_sensibly() -> None:
    docker = settings({"model": "org/model"})
    assert docker.engine is EngineKind.DOCKER
    cluster = settings(k8s()).kubernetes
    assert cluster.namespace == "vllm-nginx"
    assert cluster.cache.access_mode == "ReadWriteMany"
    assert cluster.service.type == "LoadBalancer"
    assert cluster.balancer_replicas == 2


def test_a_whole_kubernetes_section_is_read() -> None:
    raw = k8s(
        model=None,
        models=[
            {"name": "chat", "model": "org/chat", "replicas": 2},
            {"name": "embed", "model": "org/embed"},
        ],
        kubernetes={
            "kubeconfig": "~/.kube/gpu",
            "context": "gpu-cluster",
            "namespace": "llm",
            "cache": {"storageClass": "efs.csi", "accessMode": "ReadWriteOnce", "size": "50Gi"},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "pools": [{"pool": "chat", "nodeSelector": {"gpu-type": "a100"}}],
            "service": {"type": "NodePort", "port": 80, "nodePort": 30080},
        },
    )
    cluster = settings(raw).kubernetes
    assert cluster.pools[0].node_selector == {"gpu-type": "a100"}
    assert cluster.tolerations[0].operator == "Exists"
    assert cluster.service.node_port == 30080


@pytest.mark.parametrize(
    ("overrides", "key", "instead"),
    [
        ({"gpus": [[0], [1]]}, "gpus", "nvidia.com/gpu"),
        ({"basePort": 9000}, "basePort", "leave it out"),
        ({"bindAddress": "0.0.0.0"}, "bindAddress", "leave it out"),
        ({"networkName": "net"}, "networkName", "leave it out"),
        ({"restartPolicy": "always"}, "restartPolicy", "kubelet"),
        ({"hfCache": {"hostPath": "/data/hf"}}, "hfCache.hostPath", "kubernetes.cache"),
        ({"loadBalancer": {"port": 8080}}, "loadBalancer.port", "kubernetes.service.port"),
        (
            {"loadBalancer": {"bindAddress": "0.0.0.0"}},
            "loadBalancer.bindAddress",
            "kubernetes.service.type",
        ),
        ({"loadBalancer": {"dynamicResolve": True}}, "loadBalancer.dynamicResolve", "/etc/hosts"),
        ({"fitCheck": {"enabled": True}}, "fitCheck.enabled", "leave it out"),
        (
            {"loadBalancer": {"keepaliveConnections": 8}},
            "loadBalancer.keepaliveConnections",
            "abort",
        ),
        ({"loadBalancer": {"maxFails": 3}}, "loadBalancer.maxFails", "leave it out"),
        (
            {"monitoring": {"bindAddress": "0.0.0.0"}},
            "monitoring.bindAddress",
            "kubernetes.monitoring.serviceType",
        ),
        (
            {"monitoring": {"prometheus": {"port": 19090}}},
            "monitoring.prometheus.port",
            "kubernetes.monitoring.prometheusNodePort",
        ),
        (
            {"image": {"build": {"context": "docker/standin"}}},
            "image.build",
            "'image.prebuilt'",
        ),
        (
            {
                "models": [{"name": "c", "model": "org/c", "image": {"build": {"context": "x"}}}],
                "model": None,
            },
            "models[0].image.build",
            "'models[0].image.prebuilt'",
        ),
        (
            {"models": [{"name": "c", "model": "org/c", "cpuSets": ["0-3"]}], "model": None},
            "models[0].cpuSets",
            "leave it out",
        ),
        (
            {"models": [{"name": "chat", "model": "org/chat", "gpus": [[0]]}], "model": None},
            "models[0].gpus",
            "models[0].tensorParallelSize",
        ),
    ],
)
def test_what_cannot_carry_over_is_refused_naming_the_key_and_what_instead(
    overrides: dict[str, Any], key: str, instead: str
) -> None:
    found = problems(k8s(**overrides))
    assert key in found, found
    assert instead in found[key]
    assert "Kubernetes" in found[key] or "kubernetes" in found[key]


def test_hosts_are_refused_with_node_placement_instead() -> None:
    raw = k8s(hosts=[{"name": "a", "address": "10.0.0.1", "dockerHost": "ssh://a", "replicas": 1}])
    found = problems(raw)
    assert "kubernetes.nodeSelector" in found["hosts"]


def test_the_pre_stop_wait_must_cover_a_readiness_probe() -> None:
    found = problems(
        k8s(
            healthCheck={"intervalSeconds": 5, "timeoutSeconds": 3},
            kubernetes={"preStopSeconds": 4},
        )
    )
    assert (
        "at least 'healthCheck.intervalSeconds' + 'healthCheck.timeoutSeconds' + 2 = 10"
        in (found["kubernetes.preStopSeconds"])
    )


def test_monitoring_is_accepted_and_its_node_ports_need_the_nodeport_type() -> None:
    raw = k8s(monitoring={"enabled": True}, grafanaPassword="pw-0123456789")
    loaded = load_config(raw, {"grafanaPassword"})
    assert loaded.problems == () and loaded.settings is not None
    raw = k8s(
        monitoring={"enabled": True},
        grafanaPassword="pw-0123456789",
        kubernetes={"monitoring": {"prometheusNodePort": 30090}},
    )
    found = {p.key.split(":", 1)[1]: p.rule for p in load_config(raw, {"grafanaPassword"}).problems}
    assert found == {
        "kubernetes.monitoring.prometheusNodePort": "is set but "
        "'kubernetes.monitoring.serviceType' is ClusterIP; set the type NodePort"
    }


def test_the_monitoring_section_needs_monitoring_on() -> None:
    found = problems(k8s(kubernetes={"monitoring": {"size": "5Gi"}}))
    assert "'monitoring.enabled' is false" in found["kubernetes.monitoring"]


def test_refusals_off_by_default_are_refused_only_when_on() -> None:
    settings(k8s(rollout={"canarySeconds": 0}, cpu={"coresPerReplica": 0}))


def test_docker_only_defaults_are_not_refused() -> None:
    settings(k8s(replicas=3, shutdownTimeoutSeconds=30))


def test_the_canary_is_accepted() -> None:
    settings(k8s(rollout={"canarySeconds": 30, "canaryMinRequests": 5}))


def test_kubernetes_keys_on_a_docker_stack_are_refused() -> None:
    found = problems({"model": "org/model", "kubernetes": json.dumps({"namespace": "x"})})
    assert "engine: kubernetes" in found["kubernetes"]


def test_pool_placement_must_name_a_pool() -> None:
    raw = k8s(
        model=None,
        models=[{"name": "chat", "model": "org/chat"}],
        kubernetes={"pools": [{"pool": "chta"}, {"pool": "chat"}, {"pool": "chat"}]},
    )
    found = load_config(raw, set()).problems
    messages = {p.key: p.rule for p in found}
    assert (
        "chta is not a 'models[i].name' (chat)" in messages["vllm-nginx:kubernetes.pools[0].pool"]
    )
    assert "listed twice" in messages["vllm-nginx:kubernetes.pools[2].pool"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"nodeSelector": {"bad key!": "x"}}, "kubernetes.nodeSelector"),
        ({"cache": {"size": "lots"}}, "kubernetes.cache.size"),
        ({"service": {"type": "Ingress"}}, "kubernetes.service.type"),
        ({"balancerReplicas": 1}, "kubernetes.balancerReplicas"),
        ({"namespace": "Not_A_Label"}, "kubernetes.namespace"),
    ],
)
def test_bad_section_values_name_their_key(section: dict[str, Any], key: str) -> None:
    found = problems(k8s(kubernetes=section))
    assert any(k.startswith(key) for k in found), found


def test_the_check_names_the_canarys_statefulset() -> None:
    from pathlib import Path

    from components.cli.check_kubernetes import describe_kubernetes, kubernetes_plan

    found = settings(k8s(replicas=3, rollout={"canarySeconds": 30}))
    lines = describe_kubernetes(found, kubernetes_plan(found, Path(".")), "Pulumi.k8s.yaml")
    pool = "  pool default   StatefulSet vllm: vllm-1, vllm-2; 1 nvidia.com/gpu each"
    assert pool in lines, lines
    assert (
        "    canary       StatefulSet vllm-canary: vllm-canary-0; watched 30 s before vllm is "
        "updated" in lines
    ), lines
