"""One Docker engine's shared resources: the replicas' network, the model and compile
caches, and the vLLM images its pools run, each pulled there once.

Its children were the cluster's before this component existed; each carries an
alias to that parent, so a running stack keeps its network, volumes and images.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.deployment.parts import image_ref
from components.plan.model import CachePlan, CompileCachePlan, HostPlan

TYPE_TOKEN = "vllm-nginx:index:Engine"


@dataclass(frozen=True)
class EngineArgs:
    """The engine's plan, the stack's network and caches, and where names start."""

    plan: HostPlan
    network: str
    cache: CachePlan
    compile_cache: CompileCachePlan | None
    provider: docker.Provider | None
    names: str
    """What its resources' names start with (`<cluster>-<host>-`: running stacks keep them)."""
    moved_from: pulumi.Resource
    """The cluster, these resources' parent before this component: their alias."""


class Engine(pulumi.ComponentResource):
    """The network, volumes and images every replica on one engine shares."""

    network: docker.Network
    cache_volume: docker.Volume | None
    compile_volume: docker.Volume | None
    images: dict[str | None, pulumi.Output[str]]
    """Pool (None: the one pool of a single-model stack) -> the image it runs here."""

    def __init__(
        self, name: str, args: EngineArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        prefix = args.names

        def child(retain_on_delete: bool | None = None) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                aliases=[pulumi.Alias(parent=args.moved_from)],
                retain_on_delete=retain_on_delete,
            )

        self.network = docker.Network(f"{prefix}network", name=args.network, opts=child())
        self.cache_volume = None
        if args.cache.volume is not None:
            self.cache_volume = docker.Volume(
                f"{prefix}hf-cache",
                name=args.cache.volume,
                opts=child(retain_on_delete=args.cache.keep_on_destroy),
            )
        self.compile_volume = None
        if args.compile_cache is not None:
            self.compile_volume = docker.Volume(
                f"{prefix}compile-cache",
                name=args.compile_cache.volume,
                opts=child(retain_on_delete=args.compile_cache.keep_on_destroy),
            )
        self.images = {}
        for engine_image in args.plan.images:
            ref = image_ref(f"{prefix}{engine_image.resource}", engine_image.image, child())
            self.images.update(dict.fromkeys(engine_image.pools, ref))
        self.register_outputs({"network": self.network.name})
