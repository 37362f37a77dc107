"""The Pulumi side of monitoring: maps a `MonitoringPlan` onto pulumi-docker.

A child component, so that with monitoring off nothing of it is registered. The
exporter is replaced when the replicas change; the config step then reloads nginx,
which resolves the new exporter, so nginx is never replaced for it. Secret uploads
are `additional_secret_outputs`, volumes kept on destroy unless
`monitoring.keepDataOnDestroy` is false (docs/provider-inputs.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.plan.monitoring import MonitoringContainer, MonitoringPlan

TYPE_TOKEN = "vllm-nginx:index:Monitoring"


@dataclass(frozen=True)
class MonitoringArgs:
    plan: MonitoringPlan
    network: docker.Network
    secrets: Mapping[str, pulumi.Output[str]]
    provider: docker.Provider | None = None
    """The load balancer's engine with 'hosts' (None: the default provider)."""


class Monitoring(pulumi.ComponentResource):
    """Prometheus, Grafana and the load balancer's exporter on the deployment's network,
    on the load balancer's engine."""

    prometheus_url: pulumi.Output[str]
    grafana_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        self._name = name
        # Children inherit the provider: every piece runs where nginx does.
        self._child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self._args = args
        plan = args.plan
        self.lb_exporter = self._container("lb-exporter", plan.lb_exporter)
        self.prometheus = self._container("prometheus", plan.prometheus)
        self.grafana = self._container("grafana", plan.grafana, after=[self.prometheus])
        assert plan.prometheus.url is not None and plan.grafana.url is not None
        self.prometheus_url = pulumi.Output.from_input(plan.prometheus.url)
        self.grafana_url = pulumi.Output.from_input(plan.grafana.url)
        self.register_outputs(
            {"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url}
        )

    def _container(
        self,
        role: str,
        spec: MonitoringContainer,
        after: list[pulumi.Resource] | None = None,
    ) -> docker.Container:
        plan = self._args.plan
        pull = f"{plan.pull_timeout_minutes}m"
        image = docker.RemoteImage(
            f"{self._name}-{role}-image",
            name=spec.image,
            keep_locally=plan.keep_images,
            opts=pulumi.ResourceOptions.merge(
                self._child,
                pulumi.ResourceOptions(
                    custom_timeouts=pulumi.CustomTimeouts(create=pull, update=pull)
                ),
            ),
        )
        volumes = None
        if spec.volume is not None and spec.volume_path is not None:
            volume = docker.Volume(
                f"{self._name}-{role}-data",
                name=spec.volume,
                opts=pulumi.ResourceOptions.merge(
                    self._child, pulumi.ResourceOptions(retain_on_delete=plan.keep_data_on_destroy)
                ),
            )
            volumes = [
                docker.ContainerVolumeArgs(volume_name=volume.name, container_path=spec.volume_path)
            ]
        ports = None
        if spec.host_port is not None and spec.container_port is not None:
            ports = [
                docker.ContainerPortArgs(
                    internal=spec.container_port, external=spec.host_port, ip=spec.bind_address
                )
            ]
        uploads = [docker.ContainerUploadArgs(file=f.path, content=f.content) for f in spec.uploads]
        uploads += [
            docker.ContainerUploadArgs(file=f.path, content=self._args.secrets[f.secret])
            for f in spec.secret_uploads
        ]
        return docker.Container(
            f"{self._name}-{role}",
            name=spec.name,
            image=image.image_id,
            entrypoints=list(spec.entrypoint) or None,
            command=list(spec.command) or None,
            envs=list(spec.env) or None,
            volumes=volumes,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=self._args.network.name)],
            ports=ports,
            uploads=uploads,
            restart=plan.restart_policy,
            destroy_grace_seconds=plan.stop_grace_seconds,
            opts=pulumi.ResourceOptions.merge(
                self._child,
                pulumi.ResourceOptions(
                    depends_on=after,
                    delete_before_replace=True,
                    additional_secret_outputs=["uploads"] if spec.secret_uploads else None,
                    # A failed start is retried by replacement (parts.RETRY_FAILED_START).
                    replace_on_changes=["#initerror"],
                ),
            ),
        )
