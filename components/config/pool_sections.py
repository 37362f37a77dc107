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

    name: LoraName = Field(
        description=(
            "the name clients send as `model` for this adapter; unique across pools; no '=' or ','"
        )
    )
    model: LoraPath = Field(
        description=(
            "Hub repo id (fetched by the download step) or an absolute path in the container; no "
            "','"
        )
    )
    """A Hub repo id (fetched by the download step) or an absolute path in the container."""


class PoolHostSettings(ConfigModel):
    """With the stack's 'hosts': how many of a pool's replicas run on one host, on what."""

    host: DnsLabel = Field(description="a `hosts[i].name`")
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = Field(
        None,
        description=(
            "this pool's replicas on that host (default: one per `gpus` / `cpuSets` entry, else 1)"
        ),
    )
    gpus: tuple[tuple[GpuId, ...], ...] | None = Field(
        None, description=("GPU ids per replica on that host; default: the next free ones")
    )
    cpu_sets: tuple[CpuSet, ...] | None = Field(
        None, description="CPU backend: cores per replica on that host"
    )

    @property
    def replica_count(self) -> int:
        """`replicas`, else one per GPU group or CPU set listed, else one."""
        return replica_count(self.replicas, self.gpus, self.cpu_sets, otherwise=1)


class PoolSettings(ConfigModel):
    """One model pool: its model, its replicas and their devices, its routing."""

    name: DnsLabel = Field(
        description=(
            "the pool's name (DNS-safe): replicas `<namePrefix>-<name>-<i>`, its upstream, its "
            "download and readiness steps"
        )
    )
    """Names its replicas (`<namePrefix>-<name>-<i>`) and its nginx upstream."""
    model: ModelId = Field(
        description=("Hugging Face repo id (`org/name`) or an absolute path in the container")
    )
    served_model_name: ServedName | None = Field(
        None,
        description=(
            "name clients send as `model` to reach this pool (default: `model`); unique across "
            "pools and adapters"
        ),
    )
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = Field(
        None,
        description=("replicas of this pool (default: one per `gpus` / `cpuSets` entry, else 1)"),
    )
    tensor_parallel_size: Annotated[Int, Field(ge=1, le=64)] = Field(
        1, description="GPUs (or CPU ranks) per replica of this pool"
    )
    gpus: tuple[tuple[GpuId, ...], ...] | None = Field(
        None,
        description=(
            "GPU ids per replica, e.g. `[[0],[1]]`; default: the next ones after the pools before "
            "it; never shared across pools"
        ),
    )
    cpu_sets: tuple[CpuSet, ...] | None = Field(
        None,
        description=(
            'CPU backend: cores per replica, e.g. `["0-3"]`; default: the next '
            "`cpu.coresPerReplica` blocks; never shared across pools"
        ),
    )
    image: ImageSettings | None = None
    extra_args: Annotated[tuple[SafeToken, ...], AfterValidator(extra_args_rule)] = Field(
        (),
        description=(
            "more `vllm serve` arguments, after the stack's `extraArgs` (its LoRA options come "
            "from `adapters`)"
        ),
    )
    extra_env: Annotated[dict[EnvName, SafeToken], AfterValidator(extra_env_rule)] = Field(
        default_factory=dict, description="more environment variables, over the stack's `extraEnv`"
    )
    policy: RoutingPolicy | None = Field(
        None,
        description=(
            "routing inside the pool (a `loadBalancer.policy` value; default `loadBalancer.policy`)"
        ),
    )
    adapters: tuple[AdapterSettings, ...] = Field(
        (),
        description=("LoRA adapters this pool serves (vLLM's `--enable-lora`, `--lora-modules`)"),
    )
    hosts: tuple[PoolHostSettings, ...] | None = Field(
        None, description=("with `hosts`: where this pool's replicas run, one object per host")
    )

    @property
    def replica_count(self) -> int:
        """`replicas`, else one per GPU group or CPU set listed, else one."""
        return replica_count(self.replicas, self.gpus, self.cpu_sets, otherwise=1)

    @property
    def model_name(self) -> str:
        """The name clients send for the pool's base model."""
        return self.served_model_name or self.model
