"""Monitoring on a cluster: the Docker plan's three containers, each as a pod behind a Service.

Prometheus' config, Grafana's provisioning and dashboard and the exporter's
script come from `build_monitoring_plan` through `build_plan`. This adds what a
cluster needs: a Service per piece named as the Docker plan names its container,
the names each pod reaches as ClusterIPs in its /etc/hosts (no cluster DNS, as
for nginx), a claim per data directory, probes and ports.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.config.settings import Settings
from components.containers.exporter.lb_exporter import METRICS_PORT, SYSLOG_PORT
from components.plan.monitoring import (
    GRAFANA_PORT,
    PROMETHEUS_PORT,
    MonitoringContainer,
    MonitoringPlan,
)

PROMETHEUS_USER = 65534
"""`nobody`, the official prom/prometheus image's USER: its claim is made writable for it."""
GRAFANA_USER = 472
"""The official grafana/grafana image's user (`GF_UID`)."""


@dataclass(frozen=True)
class ServicePortPlan:
    name: str
    port: int
    """The Service's port and the container's: the Docker plan's configs name it."""
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True)
class DataClaimPlan:
    name: str
    path: str
    storage_class: str | None
    size: str
    keep_on_destroy: bool


@dataclass(frozen=True)
class KubeMonitorPlan:
    """One piece (Prometheus, Grafana, the exporter) as a Deployment of one pod and a Service."""

    role: str
    container: MonitoringContainer
    """The Docker plan's: image, entry point, arguments, environment, files, secret files."""
    ports: tuple[ServicePortPlan, ...]
    service_type: str
    reaches: tuple[str, ...]
    """Service names this pod connects to: mapped to their ClusterIPs in its /etc/hosts."""
    claim: DataClaimPlan | None
    fs_group: int | None
    ready_port: int
    """A TCP readiness probe: ready once it listens (nginx must find the exporter)."""
    url: str | None
    """Known before deploying (a ClusterIP's name, a NodePort with its port); else None."""
    url_host: str | None = None
    """`publicHost` for a NodePort whose port the cluster picks; None: a LoadBalancer's."""

    @property
    def name(self) -> str:
        return self.container.name


@dataclass(frozen=True)
class KubeMonitoringPlan:
    exporter: KubeMonitorPlan
    prometheus: KubeMonitorPlan
    grafana: KubeMonitorPlan

    @property
    def pieces(self) -> tuple[KubeMonitorPlan, ...]:
        """In the order they start: each reaches only Services made before it."""
        return (self.exporter, self.prometheus, self.grafana)


def _url(settings: Settings, name: str, port: int, node_port: int | None) -> str | None:
    mon = settings.kubernetes.monitoring
    if mon.service_type == "ClusterIP":
        return f"http://{name}.{settings.kubernetes.namespace}.svc:{port}"
    if mon.service_type == "NodePort" and node_port is not None:
        return f"http://{settings.public_host}:{node_port}"
    return None


def build_kubernetes_monitoring(
    settings: Settings, base: MonitoringPlan, replicas: tuple[str, ...]
) -> KubeMonitoringPlan:
    """The Docker plan's monitoring onto the cluster; `replicas` are the replicas' Services."""
    k8s = settings.kubernetes.monitoring
    mon = settings.monitoring
    storage_class = k8s.storage_class or settings.kubernetes.cache.storage_class
    url_host = settings.public_host if k8s.service_type == "NodePort" else None

    def claim(container: MonitoringContainer) -> DataClaimPlan:
        assert container.volume is not None and container.volume_path is not None
        return DataClaimPlan(
            container.volume, container.volume_path, storage_class, k8s.size,
            mon.keep_data_on_destroy,
        )  # fmt: skip

    exporter = KubeMonitorPlan(
        role="lb-exporter",
        container=base.lb_exporter,
        ports=(
            ServicePortPlan("syslog", SYSLOG_PORT, "UDP"),
            ServicePortPlan("metrics", METRICS_PORT),
        ),
        service_type="ClusterIP",
        # It names the replica an nginx line came from by resolving their names.
        reaches=replicas,
        claim=None,
        fs_group=None,
        ready_port=METRICS_PORT,
        url=None,
    )
    prom, graf = base.prometheus, base.grafana
    prometheus = KubeMonitorPlan(
        role="prometheus",
        container=prom,
        ports=(ServicePortPlan("http", PROMETHEUS_PORT, node_port=k8s.prometheus_node_port),),
        service_type=k8s.service_type,
        reaches=(*replicas, exporter.name),
        claim=claim(prom),
        fs_group=PROMETHEUS_USER,
        ready_port=PROMETHEUS_PORT,
        url=_url(settings, prom.name, PROMETHEUS_PORT, k8s.prometheus_node_port),
        url_host=url_host,
    )
    grafana = KubeMonitorPlan(
        role="grafana",
        container=graf,
        ports=(ServicePortPlan("http", GRAFANA_PORT, node_port=k8s.grafana_node_port),),
        service_type=k8s.service_type,
        reaches=(prom.name,),
        claim=claim(graf),
        fs_group=GRAFANA_USER,
        ready_port=GRAFANA_PORT,
        url=_url(settings, graf.name, GRAFANA_PORT, k8s.grafana_node_port),
        url_host=url_host,
    )
    return KubeMonitoringPlan(exporter=exporter, prometheus=prometheus, grafana=grafana)
