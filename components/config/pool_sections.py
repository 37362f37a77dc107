"""The keys of one model pool (`models[i]`), its adapters and where its replicas go.

A pool is a set of replicas serving one model behind the common load
balancer. Each entry validates its own keys only; the rules between pools
(devices, names, ports) are in `components.config.pool_rules`, so that every
problem is reported at once, each on its key as written (`models[1].gpus[0]`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from components.config.sections import ConfigModel, ImageSettings, RoutingPolicy, replica_count
from components.config.values import (
    CpuSet,
    DnsLabel,
    EnvName,
    GpuId,
    Int,
    LoraName,
    LoraPath,
    ModelId,
    SafeToken,
    ServedName,
)
from components.config.vllm_args import extra_args_rule, extra_env_rule


class AdapterSettings(ConfigModel):
    """A LoRA adapter a pool serves: the name clients send, and where it comes from."""

    name: LoraName
    model: LoraPath
    """A Hub repo id (fetched by the download step) or an absolute path in the container."""


class PoolHostSettings(ConfigModel):
    """With the stack's 'hosts': how many of a pool's replicas run on one host, on what."""

    host: DnsLabel
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = None
    gpus: tuple[tuple[GpuId, ...], ...] | None = None
    cpu_sets: tuple[CpuSet, ...] | None = None

    @property
    def replica_count(self) -> int:
        """`replicas`, else one per GPU group or CPU set listed, else one."""
        return replica_count(self.replicas, self.gpus, self.cpu_sets, otherwise=1)


class PoolSettings(ConfigModel):
    """One model pool: its model, its replicas and their devices, its routing."""

    name: DnsLabel
    """Names its replicas (`<namePrefix>-<name>-<i>`) and its nginx upstream."""
    model: ModelId
    served_model_name: ServedName | None = None
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = None
    tensor_parallel_size: Annotated[Int, Field(ge=1, le=64)] = 1
    gpus: tuple[tuple[GpuId, ...], ...] | None = None
    cpu_sets: tuple[CpuSet, ...] | None = None
    image: ImageSettings | None = None
    extra_args: Annotated[tuple[SafeToken, ...], AfterValidator(extra_args_rule)] = ()
    extra_env: Annotated[dict[EnvName, SafeToken], AfterValidator(extra_env_rule)] = Field(
        default_factory=dict
    )
    policy: RoutingPolicy | None = None
    adapters: tuple[AdapterSettings, ...] = ()
    hosts: tuple[PoolHostSettings, ...] | None = None

    @property
    def replica_count(self) -> int:
        """`replicas`, else one per GPU group or CPU set listed, else one."""
        return replica_count(self.replicas, self.gpus, self.cpu_sets, otherwise=1)

    @property
    def model_name(self) -> str:
        """The name clients send for the pool's base model."""
        return self.served_model_name or self.model
