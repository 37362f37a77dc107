"""Typed, validated settings: the only door from stack config into the program.

Everything a user can type is parsed here, before any resource is declared. What one
value may be lives in `values`; the rules that tie keys together are
`rules.cross_key_rules`, which only the loader runs, so every problem is reported at
once (pydantic runs a model's own validators only when all its fields are valid).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
)

from components.config.api_keys import ApiKeys
from components.config.kubernetes_sections import EngineKind, KubernetesSettings
from components.config.pool_sections import AdapterSettings, PoolSettings
from components.config.sections import (
    Backend,
    CacheSettings,
    CompileCacheSettings,
    ConfigModel,
    CpuSettings,
    FitCheckSettings,
    HealthCheckSettings,
    HostSettings,
    HostTlsSettings,
    ImageSettings,
    LoadBalancerSettings,
    MonitoringSettings,
    ProxySettings,
    RolloutSettings,
    RoutingPolicy,
)
from components.config.values import (
    DAY,
    EnvName,
    GpuId,
    HostName,
    Int,
    IpAddress,
    ModelId,
    NamePrefix,
    NetworkName,
    PemCertificate,
    PemPrivateKey,
    Port,
    SafeSecret,
    SafeToken,
    ServedName,
    parse_cpu_set,
)
from components.config.vllm_args import extra_args_rule, extra_env_rule
from components.config.vllm_release import DEFAULT_CPU_IMAGE, DEFAULT_GPU_IMAGE

DEFAULT_POOL = "default"
"""The one pool of a stack without 'models' (the balancer names it so too); its
resources carry no pool prefix."""
LOCAL_ENGINE = "local"
"""The one engine of a stack without 'hosts': Pulumi's default provider
(`docker:host`); its resources carry no engine prefix."""
SHUTDOWN_MARGIN_SECONDS = 10
"""What a replica may take to exit after its drain (docs/vllm.md, shutdown): the
stop grace must cover `shutdownTimeoutSeconds` plus this."""

Gpus = tuple[tuple[int, ...], ...] | None
Group = tuple[int, Gpus, int]
ReplicaGroup = tuple[PoolSettings | None, HostSettings | None, str, Group]


def _some_hosts(hosts: tuple[Any, ...]) -> tuple[Any, ...]:
    if not hosts:
        raise ValueError("must list at least one host (or be left out: one engine)")
    return hosts


def _some_models(models: tuple[Any, ...]) -> tuple[Any, ...]:
    if not models:
        raise ValueError("must list at least one model pool (or be left out: set 'model')")
    return models


class Settings(ConfigModel):
    """The whole stack config, validated."""

    model: ModelId | None = Field(
        None,
        description=(
            "Hugging Face repo id (`org/name`) or an absolute path in the container; required "
            "unless `models` lists the models"
        ),
    )
    """The one model of a single-model stack; with 'models' each pool names its own."""
    models: Annotated[tuple[PoolSettings, ...], AfterValidator(_some_models)] | None = Field(
        None,
        description=(
            "model pools, one object per pool, instead of `model` (see "
            "[model-pools.md](model-pools.md)); without it, one model"
        ),
    )
    served_model_name: ServedName | None = Field(
        None, description=("name clients use; identical on every replica (default: `model`)")
    )
    backend: Backend = Field(
        Backend.GPU, description=("`gpu` or `cpu` (vLLM's CPU backend: no GPUs, `VLLM_CPU_*` env)")
    )
    replicas: Annotated[Int, Field(ge=1, le=64)] = Field(
        2, description="number of vLLM containers (1-64)"
    )
    tensor_parallel_size: Annotated[Int, Field(ge=1, le=64)] = Field(
        1, description="GPUs per replica (`--tensor-parallel-size`)"
    )
    gpus: tuple[tuple[GpuId, ...], ...] | None = Field(
        None, description=("GPU ids per replica, e.g. `[[0,1],[2,3]]`; default consecutive ids")
    )
    name_prefix: NamePrefix = Field(
        "vllm", description=("replica containers are `<prefix>0`, `<prefix>1`, ... (DNS-safe)")
    )
    network_name: NetworkName = Field(
        "vllm-nginx", description="docker network shared by the replicas and nginx"
    )
    image: ImageSettings | None = None
    hf_cache: CacheSettings = CacheSettings(volume="vllm-hf-cache")
    base_port: Port = Field(8081, description="replica i is published on `basePort + i`")
    bind_address: IpAddress = Field(
        "127.0.0.1", description="host address replica ports are published on"
    )
    public_host: HostName = Field(
        "localhost", description="host name used in the output URLs for non-loopback binds"
    )
    extra_args: Annotated[tuple[SafeToken, ...], AfterValidator(extra_args_rule)] = Field(
        (), description="extra vLLM arguments, one token per item"
    )
    extra_env: Annotated[dict[EnvName, SafeToken], AfterValidator(extra_env_rule)] = Field(
        default_factory=dict, description="extra environment for every replica"
    )
    proxy: ProxySettings = ProxySettings()
    cpu: CpuSettings = CpuSettings()
    fit_check: FitCheckSettings = FitCheckSettings()
    ready_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = Field(
        1800, description=("how long the download step, and then the replicas' load, may take")
    )
    progress_interval_seconds: Annotated[Int, Field(ge=1, le=30)] = Field(
        15,
        description=(
            "how often the download and readiness steps report while `pulumi up` waits (at most 30)"
        ),
    )
    compile_cache: CompileCacheSettings = CompileCacheSettings()
    verify_timeout_seconds: Annotated[Int, Field(ge=1, le=DAY)] = Field(
        120, description="how long the verify step waits for the LB to list the model"
    )
    health_check: HealthCheckSettings = HealthCheckSettings()
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = Field(
        "unless-stopped", description="docker restart policy of replicas and nginx"
    )
    shutdown_timeout_seconds: Annotated[Int, Field(ge=0, le=3600 - SHUTDOWN_MARGIN_SECONDS)] = (
        Field(
            60,
            description=(
                "vLLM's `--shutdown-timeout` on every replica: on SIGTERM it finishes "
                "the requests it runs for up to this long, then exits (0: aborts them at once)"
            ),
        )
    )
    stop_grace_seconds: Annotated[Int, Field(ge=0, le=3600)] = Field(
        90,
        description=(
            "on replace or destroy, how long a replica or nginx may take to stop before it is "
            "killed; at least `shutdownTimeoutSeconds` + 10"
        ),
    )
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    rollout: RolloutSettings = RolloutSettings()
    hosts: Annotated[tuple[HostSettings, ...], AfterValidator(_some_hosts)] | None = Field(
        None,
        description=(
            "Docker engines to spread replicas over, one object per host (see "
            "[multi-host.md](multi-host.md)); without it, one engine (`docker:host`)"
        ),
    )
    monitoring: MonitoringSettings = MonitoringSettings()
    engine: EngineKind = Field(
        EngineKind.DOCKER,
        description=(
            "`docker` (Docker engines, as described above) or `kubernetes` (a cluster: "
            "the `kubernetes` keys, see [kubernetes.md](kubernetes.md))"
        ),
    )
    kubernetes: KubernetesSettings = KubernetesSettings()
    hf_token: SafeSecret | None = Field(
        None,
        description=(
            "Hugging Face token, **secret** (`pulumi config set --secret`); only the download "
            "step gets it, as a file"
        ),
    )
    api_key: SafeSecret | None = Field(
        None,
        description=(
            "API key required on `/v1` (checked by the load balancer and by vLLM), **secret**; "
            "with `apiKeys`, the operator's key: no limits, the one the replicas get"
        ),
    )
    api_keys: ApiKeys | None = Field(
        None,
        description=(
            "named API keys, **secret**: a map from a key's name (a team, a user) to its key, "
            "or to an object with the key and its limits (see [api-keys.md](api-keys.md)); "
            "needs `apiKey`"
        ),
    )
    tls_certificate: PemCertificate | None = Field(
        None, description=("PEM certificate (chain) of the load balancer, with `loadBalancer.tls`")
    )
    tls_key: PemPrivateKey | None = Field(
        None,
        description=(
            "PEM private key of `tlsCertificate`, **secret** (`pulumi config set --secret tlsKey "
            "< server.key`)"
        ),
    )
    grafana_password: SafeSecret | None = Field(
        None,
        description=(
            "Grafana's admin password, **secret**, with `monitoring.enabled` (`pulumi config set "
            "--secret grafanaPassword`)"
        ),
    )

    @property
    def model_name(self) -> str:
        """The one name every replica serves, so clients never see which replica answered.

        With 'models', every pool's name, comma-separated (what the stack serves)."""
        if self.models is not None:
            return ", ".join(pool.model_name for pool in self.models)
        return self.served_model_name or self.model or ""

    @property
    def vllm_image(self) -> ImageSettings:
        """The image settings with the published image of the backend filled in."""
        return self.image_of(None)

    def image_of(self, pool: PoolSettings | None) -> ImageSettings:
        """A pool's image ('models[i].image', else 'image'), the published one filled in."""
        image = (pool.image if pool is not None else None) or self.image or ImageSettings()
        if image.prebuilt is None and image.build is None:
            default = DEFAULT_CPU_IMAGE if self.backend is Backend.CPU else DEFAULT_GPU_IMAGE
            image = image.model_copy(update={"prebuilt": default})
        return image

    def images(self) -> tuple[tuple[str, ImageSettings], ...]:
        """The stack's vLLM image, and each pool's own, with the key that says it."""
        own = tuple(
            (f"models[{i}].image", self.image_of(pool))
            for i, pool in enumerate(self.models or ())
            if pool.image is not None
        )
        return (("image", self.vllm_image), *own)

    def keys_set(self) -> set[str]:
        """The fields the stack file sets, `cpu`'s as 'cpu.<field>'."""
        return {*self.model_fields_set, *(f"cpu.{f}" for f in self.cpu.model_fields_set)}

    def replica_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.placements())

    def pools(self) -> tuple[Pool, ...]:
        """Every model pool with its replicas; a stack without 'models' is one pool.

        That one pool (`default`, no prefix) keeps every resource name of such a stack.
        """
        if self.models is None:
            return (
                Pool(
                    name=DEFAULT_POOL,
                    key="",
                    prefix="",
                    model=self.model or "",
                    served_name=self.model_name,
                    tensor_parallel_size=self.tensor_parallel_size,
                    extra_args=self.extra_args,
                    extra_env=self.extra_env,
                    image=self.vllm_image,
                    policy=self.load_balancer.policy,
                    adapters=(),
                    placements=self.placements(),
                ),
            )
        placed = self.placements()
        return tuple(
            Pool(
                name=pool.name,
                key=f"models[{i}]",
                prefix=f"{pool.name}-",
                model=pool.model,
                served_name=pool.model_name,
                tensor_parallel_size=pool.tensor_parallel_size,
                # The stack's own are every pool's defaults; a pool's come after
                # (vLLM's parser keeps an option's last value) and over them.
                extra_args=(*self.extra_args, *pool.extra_args),
                extra_env={**self.extra_env, **pool.extra_env},
                image=self.image_of(pool),
                policy=pool.policy or self.load_balancer.policy,
                adapters=pool.adapters,
                placements=tuple(p for p in placed if p.pool == pool.name),
            )
            for i, pool in enumerate(self.models)
        )

    def routed_pools(self) -> tuple[Pool, ...]:
        """The pools nginx routes to by the request's model: every pool with
        'models'; none without (one upstream)."""
        return self.pools() if self.models is not None else ()

    @property
    def load_balancer_host(self) -> HostSettings | None:
        """The 'hosts' entry nginx runs on: 'loadBalancer.host', else the standby's first,
        else the first (None without 'hosts'; see `engines`)."""
        if self.hosts is None:
            return None
        standby = self.load_balancer.standby
        first = standby.hosts[0] if standby is not None and standby.hosts else None
        wanted = self.load_balancer.host or first or self.hosts[0].name
        return next((h for h in self.hosts if h.name == wanted), self.hosts[0])

    def engines(self) -> tuple[Engine, ...]:
        """Every engine replicas run on: each 'hosts' entry, or the one `local` engine."""
        if self.hosts is None:
            return (
                Engine(
                    LOCAL_ENGINE,
                    "",
                    docker_host=None,
                    address=self.public_host,
                    publish_address=self.bind_address,
                    tls=None,
                    own_provider=False,
                    runs_load_balancer=True,
                ),
            )
        lb = self.load_balancer_host
        return tuple(
            Engine(
                h.name,
                f"{h.name}-",
                docker_host=h.docker_host,
                address=h.address,
                publish_address=h.publish_address,
                tls=h.tls,
                own_provider=True,
                runs_load_balancer=h is lb,
            )
            for h in self.hosts
        )

    def placements(self) -> tuple[Placement, ...]:
        """Every replica with its engine, name, port and devices, in a stable order.

        Without 'hosts' and 'models' a replica is `<prefix><i>`, else
        `<prefix>-<pool>-<host>-<i>` (each part only if the stack has it), so adding one
        renames no other: a name is its container and upstream, and a new one replaces.
        Per engine, ports and unlisted GPU or CPU blocks count on, pool after pool.
        """
        found: list[Placement] = []
        cpu = self.backend is Backend.CPU
        ports: dict[str, int] = {}
        next_device: dict[str, int] = {}
        for pool, host, key, (count, listed, size) in self._replica_groups():
            engine = host.name if host is not None else LOCAL_ENGINE
            first = self.base_port
            if host is not None and host.base_port is not None:
                first = host.base_port
            parts = [p.name for p in (pool, host) if p is not None]
            for i in range(count):
                port = ports.setdefault(engine, first)
                ports[engine] = port + 1
                start = next_device.get(engine, 0)
                if listed is None:
                    ids = tuple(range(start, start + size))
                else:
                    ids = listed[i] if i < len(listed) else ()
                next_device[engine] = max([start, *(d + 1 for d in ids)])
                name = "-".join([self.name_prefix, *parts, str(i)])
                name = name if parts else f"{self.name_prefix}{i}"
                gpus, cores = ((), ids) if cpu else (ids, ())
                pool_name = pool.name if pool is not None else None
                found.append(
                    Placement(
                        host, i, name, port, gpus, cores, pool_name, engine, key, listed is not None
                    )
                )
        return tuple(found)

    def _replica_groups(self) -> Iterator[ReplicaGroup]:
        """Each pool's (or the stack's) replicas per engine: the pool, the host, the key
        that says them, and the count, the devices listed per replica (None: the next
        blocks) and a block's size."""
        cpu = self.backend is Backend.CPU

        def group(count: int, gpus: Gpus, cpu_sets: tuple[str, ...] | None, tp: int) -> Group:
            if not cpu:
                return count, gpus, tp
            sets = None if cpu_sets is None else tuple(parse_cpu_set(t) for t in cpu_sets)
            return count, sets, self.cpu.cores_per_replica

        tp = self.tensor_parallel_size
        if self.models is None and self.hosts is None:
            yield None, None, "", group(self.replicas, self.gpus, self.cpu.cpu_sets, tp)
        for i, host in enumerate(self.hosts or () if self.models is None else ()):
            devices = group(host.replica_count, host.gpus, host.cpu_sets, tp)
            yield None, host, f"hosts[{i}]", devices
        hosts = {h.name: h for h in self.hosts or ()}
        for i, pool in enumerate(self.models or ()):
            tp, key = pool.tensor_parallel_size, f"models[{i}]"
            if self.hosts is None:
                yield pool, None, key, group(pool.replica_count, pool.gpus, pool.cpu_sets, tp)
            for j, on in enumerate(pool.hosts or () if self.hosts is not None else ()):
                if on.host in hosts:
                    devices = group(on.replica_count, on.gpus, on.cpu_sets, tp)
                    yield pool, hosts[on.host], f"{key}.hosts[{j}]", devices

    def replica_count_on(self, host: HostSettings) -> int:
        return sum(1 for p in self.placements() if p.host is host)


@dataclass(frozen=True)
class Placement:
    """One replica where it runs: its host (None: the one engine without 'hosts')."""

    host: HostSettings | None
    index: int
    """Its number on its host."""
    name: str
    port: int
    gpus: tuple[int, ...]
    cores: tuple[int, ...]
    pool: str | None = None
    """The 'models' entry (by name) it serves; None without 'models'."""
    engine: str = LOCAL_ENGINE
    """The engine it runs on: its host's name, or `local` without 'hosts'."""
    key: str = ""
    """Where its count and devices are written: '' (the top-level keys), 'hosts[1]',
    'models[0]' or 'models[0].hosts[1]'."""
    listed: bool = False
    """Its devices are listed there ('gpus' or 'cpuSets', by backend), not the next free."""

    def devices_key(self, field: str) -> str:
        """Where its GPUs or cores (`field` 'gpus', 'cpuSets') are written, or would be:
        the top-level CPU sets are 'cpu.cpuSets', unlisted cores 'cpu.coresPerReplica'."""
        if not self.listed:
            return f"{self.key}.gpus".lstrip(".") if field == "gpus" else "cpu.coresPerReplica"
        where = self.key or ("cpu" if field == "cpuSets" else "")
        return f"{where}.{field}[{self.index}]".lstrip(".")


@dataclass(frozen=True)
class Engine:
    """One Docker engine, normalised: a 'hosts' entry, or the `local` engine of a
    stack without 'hosts' (Pulumi's default provider, resources without a prefix)."""

    name: str
    prefix: str
    """What its resources' names carry after the cluster's: '<name>-', or ''."""
    docker_host: str | None
    """Its endpoint; None: `docker:host` (the program's default provider)."""
    address: str
    """Where clients and nginx on another engine reach its published ports."""
    publish_address: str
    tls: HostTlsSettings | None
    own_provider: bool
    runs_load_balancer: bool


@dataclass(frozen=True)
class Pool:
    """One model pool as the plan reads it: its model, how it runs, its replicas.

    A stack without 'models' is one pool, `default`, from the top-level keys;
    with 'models', a pool's `extraArgs` and `extraEnv` come after the stack's.
    """

    name: str
    key: str
    """Its config key as written ('models[1]'); '' for the top-level keys."""
    prefix: str
    """What its resources' names carry: '<name>-', or '' for the top-level keys."""
    model: str
    served_name: str
    tensor_parallel_size: int
    extra_args: tuple[str, ...]
    extra_env: Mapping[str, str]
    image: ImageSettings
    policy: RoutingPolicy
    adapters: tuple[AdapterSettings, ...]
    placements: tuple[Placement, ...] = field(default=())
