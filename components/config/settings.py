"""Typed, validated settings: the only door from stack config into the program.

Everything a user can type is parsed here, before any resource is declared, so
a bad stack file fails with one message per problem naming the key and the
rule, and leaves nothing half-created. What a single value may be lives in
`value_types`; the rules that tie several keys together are `cross_key_rules`,
kept apart from the models so that every problem is reported at once: pydantic
runs a model's own validators only when all its fields are valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    model_validator,
)

from components.config.rules import SHUTDOWN_MARGIN_SECONDS, cross_key_rules
from components.config.sections import (
    Backend,
    CacheSettings,
    CompileCacheSettings,
    ConfigModel,
    CpuSettings,
    HealthCheckSettings,
    HostSettings,
    ImageSettings,
    LoadBalancerSettings,
    MonitoringSettings,
    ProxySettings,
    RolloutSettings,
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
from components.config.vllm_release import DEFAULT_CPU_IMAGE, DEFAULT_GPU_IMAGE

SKIP_CROSS_KEY = "skip_cross_key_rules"
"""Validation context flag: the config loader runs `cross_key_rules` itself, per key."""

# vLLM flags the deployment sets itself, or that break it: overriding them from
# extraArgs breaks it (a wrong --port is found only after readyTimeoutSeconds).
# Each is vLLM v0.33.0's `vllm serve` option (docs/vllm.md has the citations).
_TLS_AT_NGINX = (
    "the health check, nginx and the steps reach replicas over plain HTTP; set "
    "'loadBalancer.tls' for HTTPS"
)
_ONE_API_SERVER = (
    "the deployment runs one API server per replica: with several, vLLM stops on "
    "SIGTERM through another path than --shutdown-timeout's drain and keeps its "
    "metrics in multiprocess mode"
)
MANAGED_FLAGS = {
    "--model": "set 'model'",
    "--served-model-name": "set 'servedModelName'",
    "--host": "replicas listen on 0.0.0.0 inside their container",
    "--port": "replicas listen on 8000 inside their container; set 'basePort' for the host",
    "--tensor-parallel-size": "set 'tensorParallelSize'",
    "-tp": "set 'tensorParallelSize'",
    "--api-key": "set 'apiKey' with `pulumi config set --secret apiKey`",
    "--shutdown-timeout": "set 'shutdownTimeoutSeconds' (checked against 'stopGraceSeconds')",
    "--config": "a config file could set the model, host or port past these checks; "
    "list its options in extraArgs instead",
    "--uds": "replicas must listen on TCP port 8000 (a Unix socket replaces --host and --port)",
    "--grpc": "it serves gRPC on the port instead of the OpenAI HTTP API that nginx, the "
    "health check and the steps use",
    "--headless": "it starts no API server: the replica would never answer /health",
    "--api-server-count": _ONE_API_SERVER,
    "-asc": _ONE_API_SERVER,
    "--ssl-keyfile": _TLS_AT_NGINX,
    "--ssl-certfile": _TLS_AT_NGINX,
}
SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
MANAGED_ENV = {
    "HF_HUB_OFFLINE": "the deployment sets it on replicas that must not download",
    "VLLM_CPU_KVCACHE_SPACE": "set 'cpu.kvcacheSpaceGb'",
    "VLLM_CPU_OMP_THREADS_BIND": "set 'cpu.coresPerReplica' or 'cpu.cpuSets'",
    "VLLM_ENGINE_READY_TIMEOUT_S": "set 'readyTimeoutSeconds': replicas get it, so that "
    "vLLM does not give up loading before the readiness step does",
    "HTTP_PROXY": "set 'proxy.http'",
    "HTTPS_PROXY": "set 'proxy.https'",
    "NO_PROXY": "set 'proxy.no'",
}


def managed_flags_of(word: str) -> list[str]:
    """The managed flags vLLM's parser would read `word` as, if it is an option.

    `vllm serve` parses with argparse's `allow_abbrev` on, so any prefix of a
    long option is taken for it when it is the only option it begins
    (`--served x` is `--served-model-name x`, `--shutdown 5` is
    `--shutdown-timeout 5`), and a single-dash one the same way (`-t 2` is
    `-tp 2`); a prefix of several is refused by vLLM anyway. No full option of
    vLLM v0.33.0's parser is a prefix of a managed flag, so every such word is
    one of them or an abbreviation of one.
    """
    if not word.startswith("-") or word in ("-", "--"):
        return []
    flag = word.split("=", 1)[0]
    if flag.startswith("--"):
        # vLLM's parser takes --tensor_parallel_size for --tensor-parallel-size.
        flag = "--" + flag[2:].replace("_", "-")
        return [m for m in MANAGED_FLAGS if m.startswith("--") and m.startswith(flag)]
    if len(flag) < 2 or not flag[1].isalpha():
        return []  # a negative number such as `--max-model-len -1`
    return [m for m in MANAGED_FLAGS if not m.startswith("--") and m.startswith(flag)]


def _extra_args(args: tuple[str, ...]) -> tuple[str, ...]:
    if args and not args[0].startswith("-"):
        # They follow `vllm serve MODEL ... --tensor-parallel-size N`: a bare
        # first value would be a second positional argument, which vllm refuses.
        raise ValueError(
            "must begin with an option such as --max-model-len: `vllm serve` takes the "
            "model as its only positional argument"
        )
    for arg in args:
        managed = managed_flags_of(arg)
        if not managed:
            continue
        flag = arg.split("=", 1)[0]
        if len(managed) == 1 and managed[0] in (flag, "--" + flag[2:].replace("_", "-")):
            raise ValueError(f"must not set {flag}: {MANAGED_FLAGS[managed[0]]}")
        reasons = "; ".join(f"{m}: {MANAGED_FLAGS[m]}" for m in managed)
        raise ValueError(
            f"must not set {flag}: vLLM reads it as an abbreviation of "
            f"{' or '.join(managed)} ({reasons})"
        )
    return args


def _extra_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if name.upper() in SECRET_ENV_NAMES:
            raise ValueError(
                f"must not set {name}: it would sit in plain text in the stack file and the "
                "container's inputs; set 'hfToken' / 'apiKey' with `pulumi config set --secret`"
            )
        if name.upper() in MANAGED_ENV:
            raise ValueError(f"must not set {name}: {MANAGED_ENV[name.upper()]}")
    return env


def _some_hosts(hosts: tuple[Any, ...]) -> tuple[Any, ...]:
    if not hosts:
        raise ValueError("must list at least one host (or be left out: one engine)")
    return hosts


class Settings(ConfigModel):
    """The whole stack config, validated."""

    model: ModelId
    served_model_name: ServedName | None = None
    backend: Backend = Backend.GPU
    replicas: Annotated[Int, Field(ge=1, le=64)] = 2
    tensor_parallel_size: Annotated[Int, Field(ge=1, le=64)] = 1
    gpus: tuple[tuple[GpuId, ...], ...] | None = None
    name_prefix: NamePrefix = "vllm"
    network_name: NetworkName = "vllm-nginx"
    image: ImageSettings | None = None
    hf_cache: CacheSettings = CacheSettings(volume="vllm-hf-cache")
    base_port: Port = 8081
    bind_address: IpAddress = "127.0.0.1"
    public_host: HostName = "localhost"
    extra_args: Annotated[tuple[SafeToken, ...], AfterValidator(_extra_args)] = ()
    extra_env: Annotated[dict[EnvName, SafeToken], AfterValidator(_extra_env)] = Field(
        default_factory=dict
    )
    proxy: ProxySettings = ProxySettings()
    cpu: CpuSettings = CpuSettings()
    ready_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = 1800
    progress_interval_seconds: Annotated[Int, Field(ge=1, le=30)] = 15
    compile_cache: CompileCacheSettings = CompileCacheSettings()
    verify_timeout_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 120
    health_check: HealthCheckSettings = HealthCheckSettings()
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    shutdown_timeout_seconds: Annotated[Int, Field(ge=0, le=3600 - SHUTDOWN_MARGIN_SECONDS)] = 60
    stop_grace_seconds: Annotated[Int, Field(ge=0, le=3600)] = 90
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    rollout: RolloutSettings = RolloutSettings()
    hosts: Annotated[tuple[HostSettings, ...], AfterValidator(_some_hosts)] | None = None
    monitoring: MonitoringSettings = MonitoringSettings()
    hf_token: SafeSecret | None = None
    api_key: SafeSecret | None = None
    tls_certificate: PemCertificate | None = None
    tls_key: PemPrivateKey | None = None
    grafana_password: SafeSecret | None = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, dict) and info.context.get(SKIP_CROSS_KEY):
            return self
        rules = cross_key_rules(self)
        if rules:
            raise ValueError("; ".join(f"'{r.key}' {r.rule}" for r in rules))
        return self

    @property
    def model_name(self) -> str:
        """The one name every replica serves, so clients never see which replica answered."""
        return self.served_model_name or self.model

    @property
    def vllm_image(self) -> ImageSettings:
        """The image settings with the published image of the backend filled in."""
        image = self.image or ImageSettings()
        if image.prebuilt is None and image.build is None:
            default = DEFAULT_CPU_IMAGE if self.backend is Backend.CPU else DEFAULT_GPU_IMAGE
            image = image.model_copy(update={"prebuilt": default})
        return image

    def replica_names(self) -> tuple[str, ...]:
        if self.hosts is not None:
            return tuple(p.name for p in self.placements())
        return tuple(f"{self.name_prefix}{i}" for i in range(self.replicas))

    @property
    def load_balancer_host(self) -> HostSettings | None:
        """The host nginx runs on: 'loadBalancer.host', else the first (None: one host)."""
        if self.hosts is None:
            return None
        wanted = self.load_balancer.host or self.hosts[0].name
        return next((h for h in self.hosts if h.name == wanted), self.hosts[0])

    def placements(self) -> tuple[Placement, ...]:
        """Every replica with its host, name, port and devices, in a stable order.

        Without 'hosts' this is today's single engine: `<prefix><i>` on
        `basePort + i`. With 'hosts' a replica is named after its host
        (`<prefix>-<host>-<i>`), so adding one to a host renames no other:
        a name is also its upstream and its container, and a new name replaces.
        """
        if self.hosts is None:
            gpus, cores = self.gpu_groups(), self.cpu_groups()
            return tuple(
                Placement(None, i, f"{self.name_prefix}{i}", self.base_port + i, gpus[i], cores[i])
                for i in range(self.replicas)
            )
        found: list[Placement] = []
        for host in self.hosts:
            base = host.base_port if host.base_port is not None else self.base_port
            gpus, cores = self._host_groups(host)
            found.extend(
                Placement(host, i, self.host_replica_name(host, i), base + i, gpus[i], cores[i])
                for i in range(host.replica_count)
            )
        return tuple(found)

    def host_replica_name(self, host: HostSettings, index: int) -> str:
        return f"{self.name_prefix}-{host.name}-{index}"

    def _host_groups(
        self, host: HostSettings
    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """GPU ids and CPU cores of each replica on one host, counted from 0 there."""
        count = host.replica_count
        none: tuple[tuple[int, ...], ...] = tuple(() for _ in range(count))
        if self.backend is Backend.CPU:
            if host.cpu_sets is not None:
                sets = tuple(parse_cpu_set(text) for text in host.cpu_sets)
                return none, tuple(sets[i] if i < len(sets) else () for i in range(count))
            k = self.cpu.cores_per_replica
            return none, tuple(tuple(range(r * k, (r + 1) * k)) for r in range(count))
        if host.gpus is not None:
            gpus = tuple(host.gpus[i] if i < len(host.gpus) else () for i in range(count))
            return gpus, none
        tp = self.tensor_parallel_size
        return tuple(tuple(range(r * tp, (r + 1) * tp)) for r in range(count)), none

    def cpu_groups(self) -> tuple[tuple[int, ...], ...]:
        """Each CPU replica's cores: `cpu.cpuSets`, else consecutive blocks, else none."""
        if self.backend is not Backend.CPU:
            return tuple(() for _ in range(self.replicas))
        if self.cpu.cpu_sets is not None:
            sets = tuple(parse_cpu_set(text) for text in self.cpu.cpu_sets)
            return tuple(sets[i] if i < len(sets) else () for i in range(self.replicas))
        k = self.cpu.cores_per_replica
        return tuple(tuple(range(r * k, (r + 1) * k)) for r in range(self.replicas))

    def gpu_groups(self) -> tuple[tuple[int, ...], ...]:
        """Each replica's GPU ids; consecutive ids unless 'gpus' says otherwise."""
        if self.backend is Backend.CPU:
            return tuple(() for _ in range(self.replicas))
        if self.gpus is not None:
            return self.gpus
        tp = self.tensor_parallel_size
        return tuple(tuple(range(r * tp, (r + 1) * tp)) for r in range(self.replicas))


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
