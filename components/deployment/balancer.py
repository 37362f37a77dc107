"""The guide's load balancer: nginx in front of the replicas, its files put in and
reloaded in place, and the guide's verify step through it.

Its children were the cluster's before this component existed; each carries an
alias to that parent, so a running stack keeps its nginx (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.deployment.parts import RETRY_FAILED_START, check_command, image_ref
from components.lb.health import docker_health_test
from components.plan.model import CheckPlan, LoadBalancerPlan
from components.steps.lb_reload import FILES_ENV as LB_FILES_ENV

TYPE_TOKEN = "vllm-nginx:index:LoadBalancer"


@dataclass(frozen=True)
class LoadBalancerArgs:
    """The plan's balancer and verify step, and what they wait for."""

    plan: LoadBalancerPlan
    verify: CheckPlan
    restart_policy: str
    network: docker.Network
    provider: docker.Provider | None
    engine_environment: Mapping[str, pulumi.Input[str]]
    """How the reload step reaches nginx's engine."""
    verify_environment: Mapping[str, pulumi.Input[str]]
    secrets: Mapping[str, pulumi.Output[str]]
    starts_after: Sequence[pulumi.Resource]
    reloads_after: Sequence[pulumi.Resource]
    replica_ids: Sequence[pulumi.Output[str]]
    exporter: docker.Container | None
    project_dir: Path
    moved_from: pulumi.Resource
    """The cluster, these resources' parent before this component: their alias."""
    names: str
    """What its resources' names start with (the cluster's name: running stacks keep them)."""


class LoadBalancer(pulumi.ComponentResource):
    """nginx, its reload step and the verify step, as the guide's last two steps."""

    container: docker.Container
    config: command.local.Command
    verify: command.local.Command

    def __init__(
        self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        lb = args.plan
        moved = [pulumi.Alias(parent=args.moved_from)]
        prefix = args.names

        def child(**more: object) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, aliases=moved, **more)  # type: ignore[arg-type]

        image = image_ref(f"{prefix}-nginx-image", lb.image, child(provider=args.provider))
        secret_uploads = [
            docker.ContainerUploadArgs(file=up.path, content=args.secrets[up.secret])
            for up in lb.secret_uploads
        ]
        self.container = docker.Container(
            f"{prefix}-lb",
            name=lb.name,
            image=image,
            command=list(lb.command),
            stop_signal=lb.stop_signal,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network.name)],
            ports=[
                docker.ContainerPortArgs(
                    internal=lb.container_port, external=lb.host_port, ip=lb.bind_address
                )
            ],
            uploads=[
                docker.ContainerUploadArgs(file=lb.config_path, content=lb.config),
                *[docker.ContainerUploadArgs(file=p, content=t) for p, t in lb.files.items()],
                *secret_uploads,
            ],
            restart=args.restart_policy,
            # The balancer's /health: unhealthy while a pool has no replica that serves.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=docker_health_test(lb.container_port, lb.url.startswith("https:")),
                interval="10s",
                timeout="10s",
                retries=3,
            ),
            destroy_grace_seconds=lb.stop_grace_seconds,
            opts=child(
                provider=args.provider,
                depends_on=list(args.starts_after),
                delete_before_replace=True,
                # The provider keeps uploads in state as given (never read back).
                additional_secret_outputs=["uploads"] if lb.secret_uploads else None,
                # Uploads are force-new: a changed config would replace nginx and
                # drop its connections; `config` puts it in and reloads instead.
                ignore_changes=["uploads"],
                replace_on_changes=[RETRY_FAILED_START],
            ),
        )
        files: dict[str, pulumi.Input[str]] = {lb.config_path: lb.config, **lb.files}
        files.update({up.path: args.secrets[up.secret] for up in lb.secret_uploads})
        # A reload also resolves nginx's syslog target again, so a replaced
        # exporter is followed without replacing nginx.
        exporter = [args.exporter.id] if args.exporter is not None else []
        self.config = command.local.Command(
            f"{prefix}-lb-config",
            create=lb.reload.command,
            dir=str(args.project_dir),
            environment={
                **lb.reload.environment,
                LB_FILES_ENV: pulumi.Output.json_dumps(files),
                **args.engine_environment,
            },
            triggers=[self.container.id, *exporter],
            opts=child(depends_on=[self.container, *args.reloads_after]),
        )
        self.verify = check_command(
            f"{prefix}-{args.verify.name}",
            args.verify,
            args.verify_environment,
            [self.container.id, *args.replica_ids],
            args.project_dir,
            child(depends_on=[self.container, self.config]),
        )
        self.register_outputs({"lb_id": self.container.id})
