"""Typed, validated settings: the only door from stack config into the program.

Everything a user can type is parsed here, before any resource is declared, so
a bad stack file fails with one message naming the key and the rule and leaves
nothing half-created. Every string that later lands in the nginx config, a
container command line or an environment variable is restricted to a safe
alphabet here, so the renderer and the plan never have to escape anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic.alias_generators import to_camel

# No whitespace, quotes, backslashes, `;`, `{`, `}`, `$`, backticks or control
# characters: nothing that could end a directive, split an argument or expand.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:/@%+=,~|\-\[\]*]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/:@-]*(:[A-Za-z0-9._-]+)?")

SAFE_TOKEN_RULE = (
    "must be non-empty and contain no spaces, quotes, newlines, backslashes, "
    "';', '{', '}', '$' or backticks"
)


def _matching(pattern: re.Pattern[str], rule: str) -> Callable[[str], str]:
    """A validator that accepts a whole-string match of `pattern`, else raises `rule`."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(rule)
        return value

    return check


# Anything that could inject into nginx config, argv or env is refused.
safe_token = _matching(_SAFE_TOKEN, SAFE_TOKEN_RULE)
# Container, network and volume names double as DNS names on the network.
dns_label = _matching(
    _DNS_LABEL,
    "must be a DNS-safe name: 1-63 lowercase letters, digits or '-', "
    "starting and ending with a letter or digit",
)
header_name = _matching(_HEADER_NAME, "must be an HTTP header name: letters, digits and '-'")
env_name = _matching(_ENV_NAME, "must be an environment variable name: letters, digits and '_'")
image_ref = _matching(
    _IMAGE_REF, "must be a docker image reference such as vllm/vllm-openai:v0.11.0"
)


def host_name(value: str) -> str:
    """A host for an upstream: an IP address or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be an IP address or a DNS host name")
    return value


def ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as err:
        raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from err
    return value


def url_path(value: str) -> str:
    if not _URL_PATH.fullmatch(value) or "//" in value or ".." in value:
        raise ValueError("must be a URL path such as /metrics: '/', letters, digits, '.', '_', '-'")
    return value


def cpu_set(value: str) -> str:
    """Docker's `--cpuset-cpus` syntax: ids and ranges, comma separated."""
    try:
        cores = parse_cpu_set(value)
    except ValueError as err:
        raise ValueError(
            "must be a list of CPU ids and ranges such as 0-3 or 0,2,4-7 (ascending ranges)"
        ) from err
    if not cores:
        raise ValueError("must name at least one CPU")
    return value


def parse_cpu_set(value: str) -> tuple[int, ...]:
    """`0-2,5` -> (0, 1, 2, 5); raises ValueError on anything else."""
    cores: list[int] = []
    for part in value.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(part)
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(part)
        cores.extend(range(first, last + 1))
    return tuple(cores)


def format_cpu_set(cores: Sequence[int]) -> str:
    """(0, 1, 2, 5) -> `0-2,5`: the compact form docker and vLLM both read."""
    parts: list[str] = []
    ordered = sorted(cores)
    start = prev = ordered[0]
    for core in [*ordered[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(parts)


def safe_secret(value: SecretStr) -> SecretStr:
    """Same alphabet as any other value; the error never shows the value."""
    safe_token(value.get_secret_value())
    return value


SafeSecret = Annotated[SecretStr, AfterValidator(safe_secret)]
SafeToken = Annotated[str, AfterValidator(safe_token)]
DnsLabel = Annotated[str, AfterValidator(dns_label)]
HostName = Annotated[str, AfterValidator(host_name)]
IpAddress = Annotated[str, AfterValidator(ip_address)]
HeaderName = Annotated[str, AfterValidator(header_name)]
EnvName = Annotated[str, AfterValidator(env_name)]
UrlPath = Annotated[str, AfterValidator(url_path)]
ImageRef = Annotated[str, AfterValidator(image_ref)]
CpuSet = Annotated[str, AfterValidator(cpu_set)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveInt = Annotated[int, Field(gt=0)]
GpuId = Annotated[int, Field(ge=0, strict=True)]


class _Model(BaseModel):
    """Stack config keys are camelCase; unknown keys are typos, so they fail."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=False,
    )


class Backend(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class RoutingPolicy(StrEnum):
    LEAST_CONN = "least_conn"
    ROUND_ROBIN = "round_robin"
    POWER_OF_TWO = "power_of_two"
    SESSION_AFFINITY = "session_affinity"


class Upstream(_Model):
    """One replica as the load balancer sees it: an explicit host and port."""

    host: HostName
    port: Port

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class LoadBalancerSettings(_Model):
    """What the nginx in front of the replicas does; defaults fit LLM traffic."""

    port: Port = 8000
    bind_address: IpAddress = "0.0.0.0"
    policy: RoutingPolicy = RoutingPolicy.LEAST_CONN
    affinity_header: HeaderName = "X-Session-Id"
    read_timeout_seconds: PositiveInt = 3600
    send_timeout_seconds: PositiveInt = 3600
    connect_timeout_seconds: PositiveInt = 5
    max_fails: PositiveInt = 3
    fail_window_seconds: Annotated[int, Field(gt=0, le=15)] = 10
    next_upstream_tries: Annotated[int, Field(ge=0)] = 2
    retry_non_idempotent: bool = True
    buffer_requests: bool = True
    keepalive_connections: PositiveInt = 32
    max_body_size_mb: PositiveInt = 100
    worker_connections: Annotated[int, Field(ge=64)] = 4096
    expose_paths: tuple[UrlPath, ...] = ()
    dynamic_resolve: bool = True
    resolver: IpAddress = "127.0.0.11"
    image: ImageRef = "nginx:1.28.0"
    name: DnsLabel = "nginx-lb"


class CpuSettings(_Model):
    """Each CPU replica gets its own cores, and vLLM's OpenMP threads are bound to them.

    vLLM's `VLLM_CPU_OMP_THREADS_BIND=auto` in every container would pin every
    replica's threads to the same host cores; a docker `cpuset` per replica plus
    the matching bind list keeps them apart.
    """

    kvcache_space_gb: PositiveInt = 4
    cores_per_replica: Annotated[int, Field(ge=0, le=1024)] = 4
    cpu_sets: tuple[CpuSet, ...] | None = None


class ProxySettings(_Model):
    http: SafeToken | None = None
    https: SafeToken | None = None
    no: SafeToken | None = None


class BuildSettings(_Model):
    """A vLLM source checkout built with its own Dockerfile."""

    context: SafeToken
    dockerfile: SafeToken = "docker/Dockerfile"
    target: SafeToken = "vllm-openai"
    tag: ImageRef = "vllm-local:latest"
    args: dict[SafeToken, SafeToken] = Field(default_factory=dict)


class ImageSettings(_Model):
    """The vLLM image: a published one (pulled) or one built from a checkout."""

    prebuilt: ImageRef | None = None
    build: BuildSettings | None = None
    # pulumi-docker's RemoteImage gives a pull 20 minutes by default; a
    # vllm/vllm-openai image is about 10 GB.
    pull_timeout_minutes: Annotated[int, Field(gt=0, le=24 * 60)] = 90
    keep_on_destroy: bool = True

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        if self.prebuilt is not None and self.build is not None:
            raise ValueError("set only one of 'prebuilt' or 'build'")
        return self


class CacheSettings(_Model):
    """The HuggingFace cache all replicas share: a named volume or a host path."""

    volume: DnsLabel | None = None
    host_path: SafeToken | None = None
    keep_on_destroy: bool = True

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.volume is None) == (self.host_path is None):
            raise ValueError("set exactly one of 'volume' or 'hostPath'")
        if self.host_path is not None and not self.host_path.startswith(("/", "~")):
            raise ValueError("'hostPath' must be an absolute path or start with '~'")
        return self


class CompileCacheSettings(_Model):
    """vLLM's compile cache (`VLLM_CACHE_ROOT`), shared so a replica reuses another's work."""

    enabled: bool = True
    volume: DnsLabel = "vllm-compile-cache"


class HealthCheckSettings(_Model):
    interval_seconds: PositiveInt = 10
    timeout_seconds: PositiveInt = 5
    retries: PositiveInt = 3


DEFAULT_GPU_IMAGE = "vllm/vllm-openai:v0.11.0"
# vLLM's published CPU build of the same release (its CPU installation docs).
DEFAULT_CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0"


class Settings(_Model):
    """The whole stack config, validated."""

    model: SafeToken
    served_model_name: SafeToken | None = None
    backend: Backend = Backend.GPU
    replicas: Annotated[int, Field(ge=1, le=64)] = 2
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    gpus: tuple[tuple[GpuId, ...], ...] | None = None
    name_prefix: DnsLabel = "vllm"
    network_name: DnsLabel = "vllm-nginx"
    image: ImageSettings | None = None
    hf_cache: CacheSettings = CacheSettings(volume="vllm-hf-cache")
    base_port: Port = 8081
    bind_address: IpAddress = "127.0.0.1"
    public_host: HostName = "localhost"
    extra_args: tuple[SafeToken, ...] = ()
    extra_env: dict[EnvName, SafeToken] = Field(default_factory=dict)
    proxy: ProxySettings = ProxySettings()
    cpu: CpuSettings = CpuSettings()
    ready_timeout_seconds: PositiveInt = 1800
    progress_interval_seconds: Annotated[int, Field(ge=1, le=30)] = 15
    compile_cache: CompileCacheSettings = CompileCacheSettings()
    verify_timeout_seconds: PositiveInt = 120
    health_check: HealthCheckSettings = HealthCheckSettings()
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    stop_grace_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    hf_token: SafeSecret | None = None
    api_key: SafeSecret | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.backend is Backend.CPU and self.gpus is not None:
            raise ValueError("'gpus' must not be set with backend 'cpu'")
        if self.backend is Backend.CPU:
            self._check_cpu_sets()
        if self.gpus is not None:
            if len(self.gpus) != self.replicas:
                raise ValueError(
                    f"'gpus' lists {len(self.gpus)} replicas but 'replicas' is {self.replicas}"
                )
            seen: set[int] = set()
            for index, ids in enumerate(self.gpus):
                if len(ids) != self.tensor_parallel_size:
                    raise ValueError(
                        f"'gpus' replica {index} has {len(ids)} GPUs but "
                        f"'tensorParallelSize' is {self.tensor_parallel_size}"
                    )
                for gpu in ids:
                    if gpu in seen:
                        raise ValueError(f"'gpus': GPU {gpu} is used twice")
                    seen.add(gpu)
        last_port = self.base_port + self.replicas - 1
        if last_port > 65535:
            raise ValueError(
                f"'basePort' {self.base_port} + {self.replicas} replicas passes port 65535"
            )
        if self.base_port <= self.load_balancer.port <= last_port:
            raise ValueError(
                f"'loadBalancer.port' {self.load_balancer.port} collides with the replica "
                f"ports {self.base_port}-{last_port}"
            )
        if self.load_balancer.name in {f"{self.name_prefix}{i}" for i in range(self.replicas)}:
            raise ValueError(
                f"'loadBalancer.name' {self.load_balancer.name} collides with a replica name"
            )
        return self

    @property
    def model_name(self) -> str:
        """The one name every replica serves, so clients never see which replica answered."""
        return self.served_model_name or self.model

    def _check_cpu_sets(self) -> None:
        cpu = self.cpu
        if cpu.cpu_sets is not None and len(cpu.cpu_sets) != self.replicas:
            raise ValueError(
                f"'cpu.cpuSets' lists {len(cpu.cpu_sets)} replicas but 'replicas' is "
                f"{self.replicas}"
            )
        seen: set[int] = set()
        for index, cores in enumerate(self.cpu_groups()):
            if cores and len(cores) % self.tensor_parallel_size:
                raise ValueError(
                    f"'cpu.cpuSets' replica {index} has {len(cores)} CPUs, not a multiple of "
                    f"'tensorParallelSize' {self.tensor_parallel_size}"
                )
            for core in cores:
                if core in seen:
                    raise ValueError(f"'cpu.cpuSets': CPU {core} is used by two replicas")
                seen.add(core)

    @property
    def vllm_image(self) -> ImageSettings:
        """The image settings with the published image of the backend filled in."""
        image = self.image or ImageSettings()
        if image.prebuilt is None and image.build is None:
            default = DEFAULT_CPU_IMAGE if self.backend is Backend.CPU else DEFAULT_GPU_IMAGE
            image = image.model_copy(update={"prebuilt": default})
        return image

    def cpu_groups(self) -> tuple[tuple[int, ...], ...]:
        """Each CPU replica's cores: `cpu.cpuSets`, else consecutive blocks, else none."""
        if self.backend is not Backend.CPU:
            return tuple(() for _ in range(self.replicas))
        if self.cpu.cpu_sets is not None:
            return tuple(parse_cpu_set(text) for text in self.cpu.cpu_sets)
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


def is_remote_engine(docker_host: str | None) -> bool:
    """`ssh://` and `tcp://` engines run on another machine than `pulumi up`."""
    return bool(docker_host) and not str(docker_host).startswith(("unix://", "npipe://"))


def remote_engine_problems(settings: Settings, docker_host: str | None) -> list[str]:
    """What breaks when the engine is remote: the verify step runs where `pulumi up`
    runs and reaches the load balancer by `publicHost` on its published address."""
    if not is_remote_engine(docker_host):
        return []
    problems = []
    if settings.public_host in {"localhost", "127.0.0.1", "::1"}:
        problems.append(
            "'publicHost' must name the Docker host: `docker:host` is a remote engine, and "
            "the verify step and the output URLs reach the load balancer by this name"
        )
    if ipaddress.ip_address(settings.load_balancer.bind_address).is_loopback:
        problems.append(
            "'loadBalancer.bindAddress' is a loopback address on a remote engine: nothing "
            "outside that host (the verify step included) can reach it"
        )
    return problems
