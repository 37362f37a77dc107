"""The rules of `engine: kubernetes`: what cannot carry over from Docker, and the section's own.

A key that only means something on a Docker host is refused when it is written,
each with what to use instead; left out, its default is simply not used. The
`kubernetes` keys are refused on a Docker stack, so a stack file never says
something the engine it runs on ignores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from components.config.kubernetes_sections import EngineKind
from components.config.rule import Rule, rule
from components.config.settings import Settings

HOST_PORTS = (
    "host ports do not carry over to Kubernetes: each replica is reached through a Service "
    "of its own on vLLM's port"
)
CARRIED_NOT = "does not carry over to Kubernetes"

# (section attribute or None for the top level, field, key as written, why, instead)
REFUSED: tuple[tuple[str | None, str, str, str], ...] = (
    (
        None,
        "gpus",
        "GPU ids do not carry over to Kubernetes: the device plugin picks a replica's GPUs",
        "leave it out; each replica requests 'tensorParallelSize' `nvidia.com/gpu`",
    ),
    (
        None,
        "hosts",
        "Docker engines do not carry over to Kubernetes: the scheduler places pods on nodes",
        "leave it out; place pools with 'kubernetes.nodeSelector' or 'kubernetes.pools'",
    ),
    (None, "base_port", HOST_PORTS, "leave it out"),
    (None, "bind_address", HOST_PORTS, "leave it out"),
    (
        None,
        "network_name",
        "a Docker network does not carry over to Kubernetes: pods share the cluster's",
        "leave it out",
    ),
    (
        None,
        "restart_policy",
        "a Docker restart policy does not carry over to Kubernetes: the kubelet restarts "
        "a failed replica itself",
        "leave it out",
    ),
    (
        "hf_cache",
        "host_path",
        "a host directory does not carry over to Kubernetes: each pool's model cache is a "
        "PersistentVolumeClaim",
        "use 'kubernetes.cache' (its storage class, access mode and size)",
    ),
    (
        "compile_cache",
        "volume",
        "a Docker volume does not carry over to Kubernetes: each replica compiles into a "
        "volume of its own pod",
        "leave it out",
    ),
    ("load_balancer", "port", HOST_PORTS, "use 'kubernetes.service.port'"),
    ("load_balancer", "bind_address", HOST_PORTS, "use 'kubernetes.service.type'"),
    (
        "load_balancer",
        "host",
        "Docker engines do not carry over to Kubernetes: the scheduler places nginx's pods",
        "leave it out",
    ),
    (
        "load_balancer",
        "resolver",
        "nginx finds each replica's Service by its ClusterIP, which the deployment writes "
        "into nginx's /etc/hosts (fixed for the Service's life)",
        "leave it out",
    ),
    (
        "cpu",
        "cpu_sets",
        "CPU sets do not carry over to Kubernetes: the kubelet's CPU manager pins pods",
        "leave it out",
    ),
)


def _written(settings: Settings, section: str | None, field: str) -> bool:
    owner: Any = settings if section is None else getattr(settings, section)
    return field in owner.model_fields_set and (
        section is None or section in settings.model_fields_set
    )


def _alias(model: Any, field: str) -> str:
    return type(model).model_fields[field].alias or field


def _refusals(s: Settings) -> Iterator[Rule]:
    for section, field, why, instead in REFUSED:
        if not _written(s, section, field):
            continue
        value = getattr(s if section is None else getattr(s, section), field)
        if value is None:
            continue
        owner = s if section is None else getattr(s, section)
        key = _alias(owner, field)
        if section is not None:
            key = f"{_alias(s, section)}.{key}"
        yield rule(key, f"{why}; {instead}", "engine")
    lb = s.load_balancer
    if _written(s, "load_balancer", "dynamic_resolve") and lb.dynamic_resolve:
        yield rule(
            "loadBalancer.dynamicResolve",
            "must not be true with 'engine' kubernetes: nginx finds each replica's Service by "
            "its ClusterIP, which the deployment writes into nginx's /etc/hosts (fixed for the "
            "Service's life); leave it out",
            "engine",
        )
    if _written(s, "load_balancer", "keepalive_connections") and lb.keepalive_connections:
        yield rule(
            "loadBalancer.keepaliveConnections",
            "must be 0 with 'engine' kubernetes: a kept connection to a replica's Service "
            "outlives the pod's removal from it and reaches vLLM draining, which answers new "
            "requests with an abort; leave it out",
            "engine",
        )
    if _written(s, "load_balancer", "max_fails"):
        yield rule(
            "loadBalancer.maxFails",
            "does not carry over to 'engine' kubernetes: nginx takes no replica out there "
            "(a replica away is refused at once by its empty Service, and a failure mark "
            "would outlast its return); leave it out",
            "engine",
        )
    if _written(s, "cpu", "cores_per_replica") and s.cpu.cores_per_replica:
        yield rule(
            "cpu.coresPerReplica",
            "CPU pinning does not carry over to Kubernetes: the kubelet's CPU manager pins "
            "pods; leave it out (or 0)",
            "engine",
        )
    if _written(s, "fit_check", "enabled") and s.fit_check.enabled:
        yield rule(
            "fitCheck.enabled",
            "the fit check runs containers on a Docker engine and is not built for "
            "Kubernetes (it is skipped there); leave it out",
            "engine",
        )
    if s.monitoring.enabled:
        yield rule(
            "monitoring.enabled",
            "monitoring is not built for Kubernetes yet; set it false (or deploy Prometheus "
            "with its own chart: replicas serve /metrics on port 8000)",
            "engine",
        )
    if _written(s, "rollout", "canary_seconds") and s.rollout.canary_seconds:
        yield rule(
            "rollout.canarySeconds",
            "the canary is not built for Kubernetes (a StatefulSet replaces pods one by one, "
            "without a verdict between them); set it 0",
            "engine",
        )
    for key, image in s.images():
        if image.build is not None:
            yield rule(
                f"{key}.build",
                "an image built on a Docker host does not carry over to Kubernetes: the "
                f"cluster's nodes pull theirs; push it to a registry and set '{key}.prebuilt'",
                "engine",
                "models",
            )
    for i, pool in enumerate(s.models or ()):
        if pool.gpus is not None:
            yield rule(
                f"models[{i}].gpus",
                "GPU ids do not carry over to Kubernetes: the device plugin picks a replica's "
                f"GPUs; leave it out (each replica requests 'models[{i}].tensorParallelSize' "
                "`nvidia.com/gpu`)",
                "engine",
                "models",
            )
        if pool.hosts is not None:
            yield rule(
                f"models[{i}].hosts",
                "Docker engines do not carry over to Kubernetes; leave it out and set "
                f"'models[{i}].replicas' (and 'kubernetes.pools' to place the pool)",
                "engine",
                "models",
            )
        if pool.cpu_sets is not None:
            yield rule(
                f"models[{i}].cpuSets",
                "CPU sets do not carry over to Kubernetes: the kubelet's CPU manager pins "
                "pods; leave it out",
                "engine",
                "models",
            )


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
    service = k8s.service
    if service.node_port is not None and service.type != "NodePort":
        yield rule(
            "kubernetes.service.nodePort",
            f"is set but 'kubernetes.service.type' is {service.type}; set the type NodePort",
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
