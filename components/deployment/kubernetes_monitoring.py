"""Monitoring on a cluster: maps a `KubeMonitoringPlan` onto pulumi-kubernetes.

Per piece (the exporter, Prometheus, Grafana) a Deployment of one pod, its
files in a ConfigMap and its secret files (the Grafana password, the API key
Prometheus scrapes with) in a Secret, its data on a claim, and a Service named
as the Docker plan names its container. One pod each, replaced whole
(`Recreate`): the data claims are `ReadWriteOnce` and Prometheus locks its
database. A child component: with monitoring off nothing of it is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import pulumi
import pulumi_kubernetes as k8s

from components.deployment import kubernetes_parts as parts
from components.plan.kubernetes import ProbePlan
from components.plan.kubernetes_monitoring import KubeMonitoringPlan, KubeMonitorPlan

TYPE_TOKEN = "vllm-nginx:index:KubernetesMonitoring"

core = k8s.core.v1
meta = k8s.meta.v1


@dataclass(frozen=True)
class KubernetesMonitoringArgs:
    plan: KubeMonitoringPlan
    scope: parts.Scope
    cluster_ips: Mapping[str, pulumi.Output[str]]
    """Each replica's Service name -> its ClusterIP."""


class KubernetesMonitoring(pulumi.ComponentResource):
    """The exporter, Prometheus and Grafana, each a Deployment behind a Service."""

    exporter: k8s.apps.v1.Deployment
    cluster_ips: dict[str, pulumi.Output[str]]
    """Each piece's Service name -> its ClusterIP (nginx sends the exporter its lines)."""
    prometheus_url: pulumi.Output[str]
    grafana_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: KubernetesMonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        self._name = name
        self._args = args
        self._child = partial(parts.child, self, args.scope.provider)
        self.cluster_ips = {}
        deployments: dict[str, k8s.apps.v1.Deployment] = {}
        services: dict[str, core.Service] = {}
        for piece in args.plan.pieces:
            deployments[piece.role], services[piece.role] = self._piece(piece)
            self.cluster_ips[piece.name] = services[piece.role].spec.cluster_ip
        self.exporter = deployments["lb-exporter"]
        urls = {
            piece.role: parts.service_url(
                services[piece.role], piece.url, "http", piece.url_host, piece.ports[0].port
            )
            for piece in (args.plan.prometheus, args.plan.grafana)
        }
        self.prometheus_url = urls["prometheus"]
        self.grafana_url = urls["grafana"]
        self.register_outputs(
            {"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url}
        )

    def _piece(self, piece: KubeMonitorPlan) -> tuple[k8s.apps.v1.Deployment, core.Service]:
        args = self._args
        resource = f"{self._name}-{piece.role}"
        spec = piece.container
        files = parts.mounted_files(
            resource,
            {f.path: f.content for f in spec.uploads},
            [(f.path, args.scope.secrets[f.secret]) for f in spec.secret_uploads],
            args.scope.metadata(),
            self._child(),
            secret_mode=0o400 if piece.fs_group is None else 0o440,
        )
        volumes, mounts = list(files.volumes), list(files.mounts)
        if piece.claim is not None:
            claim = core.PersistentVolumeClaim(
                f"{resource}-data",
                metadata=args.scope.metadata(piece.claim.name),
                spec=core.PersistentVolumeClaimSpecArgs(
                    access_modes=["ReadWriteOnce"],
                    storage_class_name=piece.claim.storage_class,
                    resources=core.VolumeResourceRequirementsArgs(
                        requests={"storage": piece.claim.size}
                    ),
                ),
                opts=self._child(retain_on_delete=piece.claim.keep_on_destroy),
            )
            volumes.append(
                core.VolumeArgs(
                    name="data",
                    persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(
                        claim_name=claim.metadata.name
                    ),
                )
            )
            mounts.append(core.VolumeMountArgs(name="data", mount_path=piece.claim.path))
        selector = {**args.scope.labels, "app.kubernetes.io/name": piece.name}
        env = dict(item.split("=", 1) for item in spec.env)
        deployment = k8s.apps.v1.Deployment(
            resource,
            metadata=args.scope.metadata(piece.name),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=meta.LabelSelectorArgs(match_labels=selector),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(labels=selector),
                    spec=core.PodSpecArgs(
                        # The replicas, and the pieces made before this one.
                        host_aliases=parts.host_aliases(
                            piece.reaches, {**args.cluster_ips, **self.cluster_ips}
                        ),
                        security_context=(
                            core.PodSecurityContextArgs(fs_group=piece.fs_group)
                            if piece.fs_group is not None
                            else None
                        ),
                        containers=[
                            core.ContainerArgs(
                                name=piece.role,
                                image=spec.image,
                                image_pull_policy="IfNotPresent",
                                command=list(spec.entrypoint) or None,
                                args=list(spec.command) or None,
                                env=parts.env_vars(env, (), None) or None,
                                ports=[
                                    core.ContainerPortArgs(
                                        name=port.name,
                                        container_port=port.port,
                                        protocol=port.protocol,
                                    )
                                    for port in piece.ports
                                ],
                                readiness_probe=parts.probe(
                                    ProbePlan(piece.ready_port, 2, 2, 3, path=None)
                                ),
                                volume_mounts=mounts,
                            )
                        ],
                        volumes=volumes,
                    ),
                ),
            ),
            opts=self._child(),
        )
        service = core.Service(
            f"{resource}-service",
            metadata=args.scope.metadata(piece.name),
            spec=core.ServiceSpecArgs(
                type=piece.service_type,
                selector=selector,
                ports=[
                    core.ServicePortArgs(
                        name=port.name,
                        port=port.port,
                        target_port=port.name,
                        protocol=port.protocol,
                        node_port=port.node_port,
                    )
                    for port in piece.ports
                ],
            ),
            opts=self._child(depends_on=[deployment]),
        )
        return deployment, service
