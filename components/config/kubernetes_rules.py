"""The rules of `engine: kubernetes`: what cannot carry over from Docker, and the section's own.

A key that only means something on a Docker host is refused when it is written,
each with what to use instead; left out, its default is simply not used. The
`kubernetes` keys are refused on a Docker stack, so a stack file never says
something the engine it runs on ignores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from components.config.kubernetes_sections import EngineKind
from components.config.rule import Rule, rule
from components.config.settings import Settings

HOST_PORTS = (
    "host ports do not carry over to Kubernetes: each replica is reached through a Service "
    "of its own on vLLM's port"
)
GPU_IDS = "GPU ids do not carry over to Kubernetes: the device plugin picks a replica's GPUs"
PER_REPLICA_GPUS = "leave it out; each replica requests '{at}tensorParallelSize' `nvidia.com/gpu`"
BUILT = (
    "an image built on a Docker host does not carry over to Kubernetes: the cluster's nodes "
    "pull theirs"
)
CPU_SETS = "CPU sets do not carry over to Kubernetes: the kubelet's CPU manager pins pods"
ETC_HOSTS = (
    "on Kubernetes nginx finds each replica's Service by its ClusterIP, which the deployment "
    "writes into nginx's /etc/hosts (fixed for the Service's life)"
)
MONITORING_PORTS = (
    "host ports do not carry over to Kubernetes: Prometheus and Grafana are reached "
    "through Services on their own ports (9090, 3000)"
)


@dataclass(frozen=True)
class Refusal:
    """A key that only means something on Docker; `{at}` in `instead` is its owner's key."""

    path: str
    """Attributes from `Settings`, dotted; `models[].` for each pool's own."""
    why: str
    instead: str
    only_when_on: bool = False
    """Refused only when true (or not 0): its default is off and harmless."""


REFUSED: tuple[Refusal, ...] = (
    Refusal("gpus", GPU_IDS, PER_REPLICA_GPUS),
    Refusal("models[].gpus", GPU_IDS, PER_REPLICA_GPUS),
    Refusal(
        "hosts",
        "Docker engines do not carry over to Kubernetes: the scheduler places pods on nodes",
        "leave it out; place pools with 'kubernetes.nodeSelector' or 'kubernetes.pools'",
    ),
    Refusal(
        "models[].hosts",
        "Docker engines do not carry over to Kubernetes",
        "leave it out and set '{at}replicas' (and 'kubernetes.pools' to place the pool)",
    ),
    Refusal("base_port", HOST_PORTS, "leave it out"),
    Refusal("bind_address", HOST_PORTS, "leave it out"),
    Refusal(
        "network_name",
        "a Docker network does not carry over to Kubernetes: pods share the cluster's",
        "leave it out",
    ),
    Refusal(
        "restart_policy",
        "a Docker restart policy does not carry over to Kubernetes: the kubelet restarts "
        "a failed replica itself",
        "leave it out",
    ),
    Refusal(
        "hf_cache.host_path",
        "a host directory does not carry over to Kubernetes: each pool's model cache is a "
        "PersistentVolumeClaim",
        "use 'kubernetes.cache' (its storage class, access mode and size)",
    ),
    Refusal(
        "compile_cache.volume",
        "a Docker volume does not carry over to Kubernetes: each replica compiles into a "
        "volume of its own pod",
        "leave it out",
    ),
    Refusal("load_balancer.port", HOST_PORTS, "use 'kubernetes.service.port'"),
    Refusal("load_balancer.bind_address", HOST_PORTS, "use 'kubernetes.service.type'"),
    Refusal(
        "load_balancer.host",
        "Docker engines do not carry over to Kubernetes: the scheduler places nginx's pods",
        "leave it out",
    ),
    Refusal("load_balancer.resolver", ETC_HOSTS, "leave it out"),
    Refusal("load_balancer.dynamic_resolve", ETC_HOSTS, "leave it out", only_when_on=True),
    Refusal(
        "load_balancer.keepalive_connections",
        "a kept connection to a replica's Service outlives the pod's removal from it on "
        "Kubernetes and reaches vLLM draining, which answers new requests with an abort",
        "leave it out (or 0)",
        only_when_on=True,
    ),
    Refusal(
        "load_balancer.max_fails",
        "nginx takes no replica out on Kubernetes: a replica away is refused at once by its "
        "empty Service, and a failure mark would outlast its return",
        "leave it out",
    ),
    Refusal("cpu.cpu_sets", CPU_SETS, "leave it out"),
    Refusal("models[].cpu_sets", CPU_SETS, "leave it out"),
    Refusal("cpu.cores_per_replica", CPU_SETS, "leave it out (or 0)", only_when_on=True),
    Refusal(
        "fit_check.enabled",
        "the fit check runs containers on a Docker engine and is not built for Kubernetes "
        "(it is skipped there)",
        "leave it out",
        only_when_on=True,
    ),
    Refusal(
        "monitoring.bind_address",
        MONITORING_PORTS,
        "use 'kubernetes.monitoring.serviceType'",
    ),
    Refusal(
        "monitoring.prometheus.port",
        MONITORING_PORTS,
        "use 'kubernetes.monitoring.prometheusNodePort'",
    ),
    Refusal(
        "monitoring.grafana.port", MONITORING_PORTS, "use 'kubernetes.monitoring.grafanaNodePort'"
    ),
    Refusal("image.build", BUILT, "push it to a registry and set '{at}prebuilt'"),
    Refusal("models[].image.build", BUILT, "push it to a registry and set '{at}prebuilt'"),
)


def _alias(model: Any, field: str) -> str:
    return type(model).model_fields[field].alias or field


def _written(owner: Any, path: str, key: str) -> Iterator[tuple[str, str, Any]]:
    """(owner's key, key, value) of `path` under `owner` if every part of it is written."""
    *sections, name = path.split(".")
    for section in sections:
        if owner is None or section not in owner.model_fields_set:
            return
        key = f"{key}{_alias(owner, section)}."
        owner = getattr(owner, section)
    if owner is not None and name in owner.model_fields_set:
        yield key, f"{key}{_alias(owner, name)}", getattr(owner, name)


def _owners(s: Settings, path: str) -> Iterator[tuple[Any, str, str]]:
    """(model, path under it, its key) for the stack, or for each pool with `models[].`."""
    if not path.startswith("models[]."):
        yield s, path, ""
        return
    for i, pool in enumerate(s.models or ()):
        yield pool, path.removeprefix("models[]."), f"models[{i}]."


def _refusals(s: Settings) -> Iterator[Rule]:
    for refusal in REFUSED:
        for owner, path, prefix in _owners(s, refusal.path):
            for at, key, value in _written(owner, path, prefix):
                if value is None or (refusal.only_when_on and not value):
                    continue
                others = ("engine", "models") if prefix else ("engine",)
                yield rule(key, f"{refusal.why}; {refusal.instead.format(at=at)}", *others)


def _section_rules(s: Settings) -> Iterator[Rule]:
    k8s = s.kubernetes
    names = [pool.name for pool in s.models or ()]
    seen: set[str] = set()
    for i, entry in enumerate(k8s.pools):
        key = f"kubernetes.pools[{i}].pool"
        if s.models is None:
            yield rule(
                key,
                "names a pool, but the stack has no 'models'; use 'kubernetes.nodeSelector' "
                "and 'kubernetes.tolerations'",
                "models",
            )
        elif entry.pool not in names:
            yield rule(
                key, f"{entry.pool} is not a 'models[i].name' ({', '.join(names)})", "models"
            )
        if entry.pool in seen:
            yield rule(key, f"{entry.pool} is listed twice")
        seen.add(entry.pool)
    need = pre_stop_floor(s)
    if k8s.pre_stop_seconds is not None and k8s.pre_stop_seconds < need:
        yield rule(
            "kubernetes.preStopSeconds",
            f"is {k8s.pre_stop_seconds} but must be at least 'healthCheck.intervalSeconds' + "
            f"'healthCheck.timeoutSeconds' + 2 = {need}: a stopping replica's readiness probe "
            "must fail and kube-proxy drop it before vLLM drains (it would answer new requests "
            "with an abort)",
            "healthCheck",
        )
    service, mon = k8s.service, k8s.monitoring
    if "monitoring" in k8s.model_fields_set and not s.monitoring.enabled:
        yield rule(
            "kubernetes.monitoring",
            "is set but 'monitoring.enabled' is false; enable monitoring or leave it out",
            "monitoring",
        )
    for key, port, kind, kind_key in (
        ("service.nodePort", service.node_port, service.type, "service.type"),
        ("monitoring.prometheusNodePort", mon.prometheus_node_port, mon.service_type,
         "monitoring.serviceType"),
        ("monitoring.grafanaNodePort", mon.grafana_node_port, mon.service_type,
         "monitoring.serviceType"),
    ):  # fmt: skip
        if port is not None and kind != "NodePort":
            yield rule(
                f"kubernetes.{key}",
                f"is set but 'kubernetes.{kind_key}' is {kind}; set the type NodePort",
            )


def pre_stop_floor(settings: Settings) -> int:
    """How long a stopping replica must stay up, unready, before it drains: one readiness
    probe (its period and timeout), then kube-proxy's sync (2 s)."""
    hc = settings.health_check
    return hc.interval_seconds + hc.timeout_seconds + 2


def kubernetes_rules(settings: Settings) -> list[Rule]:
    """Every broken rule of the engine choice, all at once."""
    if settings.engine is EngineKind.KUBERNETES:
        return [*_refusals(settings), *_section_rules(settings)]
    if "kubernetes" in settings.model_fields_set:
        return [
            rule(
                "kubernetes",
                "is set but 'engine' is docker; set `engine: kubernetes` or leave it out",
                "engine",
            )
        ]
    return []
