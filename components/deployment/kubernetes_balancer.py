"""The balancer on a cluster: the rendered nginx.conf in a ConfigMap, its secret files in a
Secret, nginx as a Deployment of several pods behind one Service, and the verify step.

The ConfigMap is auto-named, so a changed config is a new ConfigMap and a
rolling update of the Deployment (one new pod ready before an old one stops),
not an edit under running pods. Each pod's /etc/hosts maps every replica's
(and the exporter's) Service name to its ClusterIP (`hostAliases`), which is
how nginx.conf's names resolve without cluster DNS (components/plan/kubernetes.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.deployment import kubernetes_parts as parts
from components.deployment.kubernetes_parts import probe
from components.plan.kubernetes import KubeBalancerPlan

TYPE_TOKEN = "vllm-nginx:index:KubernetesBalancer"

core = k8s.core.v1
meta = k8s.meta.v1


@dataclass(frozen=True)
class KubernetesBalancerArgs:
    plan: KubeBalancerPlan
    scope: parts.Scope
    cluster_ips: Mapping[str, pulumi.Output[str]]
    """Each Service name nginx reaches (`plan.reaches`) -> its ClusterIP."""
    starts_after: Sequence[pulumi.Resource]


class KubernetesBalancer(pulumi.ComponentResource):
    """nginx's ConfigMap, Secret, Deployment and Service."""

    config: core.ConfigMap
    deployment: k8s.apps.v1.Deployment
    service: core.Service

    def __init__(
        self, name: str, args: KubernetesBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        plan = args.plan
        prefix = f"{name}-"

        child = partial(parts.child, self, args.scope.provider)
        files = parts.mounted_files(
            name,
            {plan.config_path: plan.config, **plan.files},
            [(f.path, args.scope.secrets[f.secret]) for f in plan.secret_files],
            args.scope.metadata(),
            child(),
        )
        assert files.config is not None
        self.config = files.config
        selector = {**args.scope.labels, "app.kubernetes.io/name": plan.name}
        # Out of the Service first, then nginx's graceful stop (SIGQUIT, as on Docker):
        # the kubelet's SIGTERM would be nginx's fast shutdown. The hook lasts until
        # nginx (PID 1) has finished its requests and exited.
        stop = (
            f"sleep {plan.pre_stop_seconds}; nginx -s quit; "
            "while kill -0 1 2>/dev/null; do sleep 1; done"
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{prefix}nginx",
            metadata=args.scope.metadata(plan.name),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=plan.replicas,
                selector=meta.LabelSelectorArgs(match_labels=selector),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_unavailable=0, max_surge=1
                    ),
                ),
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(labels=selector),
                    spec=core.PodSpecArgs(
                        host_aliases=parts.host_aliases(plan.reaches, args.cluster_ips),
                        termination_grace_period_seconds=plan.termination_grace_seconds,
                        containers=[
                            core.ContainerArgs(
                                name="nginx",
                                image=plan.image,
                                image_pull_policy="IfNotPresent",
                                command=list(plan.command),
                                ports=[
                                    core.ContainerPortArgs(
                                        name="http", container_port=plan.container_port
                                    )
                                ],
                                readiness_probe=probe(plan.readiness),
                                lifecycle=core.LifecycleArgs(
                                    pre_stop=core.LifecycleHandlerArgs(
                                        exec_=core.ExecActionArgs(command=["/bin/sh", "-c", stop])
                                    )
                                ),
                                volume_mounts=files.mounts,
                            )
                        ],
                        volumes=files.volumes,
                    ),
                ),
            ),
            opts=child(depends_on=list(args.starts_after)),
        )
        self.service = core.Service(
            f"{prefix}service",
            metadata=args.scope.metadata(plan.name),
            spec=core.ServiceSpecArgs(
                type=plan.service_type,
                selector=selector,
                ports=[
                    core.ServicePortArgs(
                        name="http",
                        port=plan.service_port,
                        target_port="http",
                        node_port=plan.node_port,
                    )
                ],
            ),
            opts=child(depends_on=[self.deployment]),
        )
        self.register_outputs({"service": self.service.metadata.name})


def verify_command(
    resource_name: str,
    argv: pulumi.Input[Sequence[str]],
    environment: Mapping[str, pulumi.Input[str]],
    triggers: Sequence[pulumi.Input[object]],
    project_dir: Path,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The verify step where `pulumi up` runs, again whenever a trigger changes."""
    return command.local.Command(
        resource_name,
        create=pulumi.Output.from_input(argv).apply(lambda words: shlex.join(list(words))),
        dir=str(project_dir),
        environment=dict(environment),
        triggers=list(triggers),
        opts=opts,
    )
