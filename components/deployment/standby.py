"""The standby balancer: nginx on a second host and keepalived beside each nginx.

The second nginx is a `LoadBalancer` like the first (the same rendered config,
reloaded by its own step on its own engine, verified at its own address); each
keepalived runs on its host's network with the capabilities VRRP needs. The
check through the floating address runs once the first host's keepalived is
up and before the second's is made, so the first listed host holds the address
first. Why keepalived and which options: docs/multi-host.md#a-standby-balancer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pulumi
import pulumi_docker as docker

from components.deployment.balancer import LoadBalancer, LoadBalancerArgs
from components.deployment.parts import check_command, image_ref
from components.deployment.pool import EngineParts
from components.plan.model import BalancerPlan, CheckPlan, Plan, StandbyPlan

TYPE_TOKEN = "vllm-nginx:index:Standby"


@dataclass(frozen=True)
class BalancerEngine:
    """One balancer host's engine as the standby sees it."""

    provider: docker.Provider | None
    environment: Mapping[str, pulumi.Input[str]]


@dataclass(frozen=True)
class StandbyArgs:
    plan: StandbyPlan
    first: LoadBalancer
    """The cluster's own balancer, on the first listed host."""
    second: LoadBalancerArgs
    """The first's arguments with the second host's network, provider and engine."""
    engines: tuple[BalancerEngine, BalancerEngine]
    verify: CheckPlan
    """Through the floating address."""
    verify_environment: Mapping[str, pulumi.Input[str]]
    restart_policy: str
    names: str


class Standby(pulumi.ComponentResource):
    """The second nginx, both keepalived, and the check through the floating address."""

    def __init__(
        self, name: str, args: StandbyArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        plan = args.plan
        first, second = plan.balancers
        self.second = LoadBalancer(
            f"{name}-{second.host}",
            replace(
                args.second,
                plan=replace(args.second.plan, url=second.url),
                verify=second.verify,
                names=f"{args.names}-{second.host}",
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        nginx = (args.first.container, self.second.container)
        (first_engine, second_engine) = args.engines
        one = self._keepalived(first, first_engine, [nginx[0]], args)
        # The check through the address before the second keepalived exists: only the
        # first can hold it then, and with nopreempt it keeps it (docs/multi-host.md).
        self.verify = check_command(
            f"{args.names}-{args.verify.name}",
            args.verify,
            args.verify_environment,
            [c.id for c in (*nginx, one)],
            args.second.project_dir,
            pulumi.ResourceOptions(
                parent=self, depends_on=[one, args.first.verify, self.second.verify]
            ),
        )
        two = self._keepalived(second, second_engine, [nginx[1], self.verify], args)
        self.keepalived = [one, two]
        self.register_outputs(
            {
                "keepalived_ids": [c.id for c in self.keepalived],
                "url": plan.url,
                "first": first.host,
            }
        )

    def _keepalived(
        self,
        balancer: BalancerPlan,
        engine: BalancerEngine,
        after: Sequence[pulumi.Resource],
        args: StandbyArgs,
    ) -> docker.Container:
        """One host's keepalived on its host's network, created once `after` exist."""
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self, provider=engine.provider)
        image = image_ref(f"{args.names}-{balancer.host}-keepalived-image", plan.image, child)
        return docker.Container(
            f"{args.names}-{balancer.host}-keepalived",
            name=balancer.keepalived_name,
            image=image,
            command=list(plan.command),
            network_mode="host",
            capabilities=docker.ContainerCapabilitiesArgs(adds=list(plan.capabilities)),
            uploads=[
                docker.ContainerUploadArgs(
                    file=plan.config_path, content=balancer.keepalived_config
                )
            ],
            restart=args.restart_policy,
            destroy_grace_seconds=plan.stop_grace_seconds,
            # One name per engine: the old one goes before its replacement.
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=list(after), delete_before_replace=True)
            ),
        )


def standby_component(
    name: str,
    plan: Plan,
    first: LoadBalancer,
    first_args: LoadBalancerArgs,
    engines: Sequence[EngineParts],
    opts: pulumi.ResourceOptions,
) -> Standby:
    """The cluster's `Standby`: the second balancer on its host's engine, as the plan says."""
    standby = plan.standby
    assert standby is not None
    by_host = {e.plan.name: e for e in engines}
    one, two = (by_host[b.host] for b in standby.balancers)
    second = replace(
        first_args,
        network=two.engine.network,
        provider=two.provider,
        engine_environment=two.environment,
        exporter=None,
    )
    return Standby(
        f"{name}-standby",
        StandbyArgs(
            plan=standby,
            first=first,
            second=second,
            engines=(
                BalancerEngine(one.provider, one.environment),
                BalancerEngine(two.provider, two.environment),
            ),
            verify=plan.verify,
            verify_environment=first_args.verify_environment,
            restart_policy=plan.restart_policy,
            names=name,
        ),
        opts=opts,
    )
