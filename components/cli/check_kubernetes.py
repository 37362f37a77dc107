"""What `pulumi up` would declare on a cluster, for `components.cli.check` (`engine: kubernetes`).

The same readable summary as for Docker, from the Kubernetes plan: the
namespace, each pool as its StatefulSet (and its canary's), claim and download Job, the
balancer's Service, and with monitoring Prometheus' and Grafana's.
"""

from __future__ import annotations

from pathlib import Path

from components.config.settings import Settings
from components.plan.kubernetes import KubernetesPlan, build_kubernetes_plan


def kubernetes_plan(settings: Settings, project_dir: Path) -> KubernetesPlan:
    return build_kubernetes_plan(settings, project_dir=project_dir)


def describe_kubernetes(settings: Settings, plan: KubernetesPlan, file_name: str) -> list[str]:
    """The cluster plan in a few readable lines."""
    where = plan.context or "the kubeconfig's current context"
    lines = [
        f"{file_name}: valid; `pulumi up` would deploy onto Kubernetes ({where}):",
        f"  namespace      {plan.namespace}"
        + ("" if plan.create_namespace else " (exists; not created)"),
    ]
    for pool in plan.pools:
        gpus = f"{pool.gpus} nvidia.com/gpu each" if pool.gpus else "no GPU"
        names = ", ".join(r.pod for r in pool.replicas[pool.first_ordinal :])
        lines.append(
            f"  pool {pool.pool or '(model)':<9} StatefulSet {pool.workload}: {names}; {gpus}"
        )
        if pool.canary is not None:
            first = ", ".join(r.pod for r in pool.replicas[: pool.first_ordinal])
            lines.append(
                f"    canary       StatefulSet {pool.canary.workload}: {first}; watched "
                f"{pool.canary.spec.seconds} s before {pool.workload} is updated"
            )
        lines.append(
            f"    cache        claim {pool.claim.name}, {pool.claim.access_mode}, {pool.claim.size}"
            + (f", class {pool.claim.storage_class}" if pool.claim.storage_class else "")
        )
        if pool.download is not None:
            lines.append(
                f"    download     Job {pool.download.name}: {', '.join(pool.download.repos)}"
            )
    lb = plan.balancer
    url = plan.lb_url or f"the {lb.service_type} Service's address, port {lb.service_port}"
    if plan.lb_url is None and lb.service_type == "LoadBalancer":
        url = f"http://<the load balancer's address>:{lb.service_port}"
    elif plan.lb_url is None and plan.verify is not None and plan.verify.host is not None:
        url = f"http://{plan.verify.host}:<node port>"
    lines.append(
        f"  load balancer  {url} ({lb.name}: {lb.replicas} nginx pods behind a "
        f"{lb.service_type} Service)"
    )
    if plan.monitoring is not None:
        for piece in (plan.monitoring.prometheus, plan.monitoring.grafana):
            port = piece.ports[0].port
            where = piece.url or f"http://<the load balancer's address>:{port}"
            if piece.url is None and piece.url_host is not None:
                where = f"http://{piece.url_host}:<node port>"
            claim = f", data on claim {piece.claim.name}" if piece.claim else ""
            lines.append(f"  {piece.role:<14} {where} ({piece.name}{claim})")
    lines.append(
        "  apiKey         "
        + ("set: clients must send it" if settings.api_key is not None else "not set")
    )
    return lines
