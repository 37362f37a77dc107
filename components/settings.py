"""Typed, validated settings: the only door from stack config into the program.

Everything a user can type is parsed here, before any resource is declared, so
a bad stack file fails with one message per problem naming the key and the
rule, and leaves nothing half-created. What a single value may be lives in
`value_types`; the rules that tie several keys together are `cross_key_rules`,
kept apart from the models so that every problem is reported at once: pydantic
runs a model's own validators only when all its fields are valid.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .value_types import (
    DAY,
    SAFE_TOKEN_RULE,
    BuildArgName,
    CpuSet,
    DnsLabel,
    EnvName,
    GpuId,
    HeaderName,
    HostName,
    HostPath,
    ImageRef,
    Int,
    IpAddress,
    LocalPath,
    NamePrefix,
    NetworkName,
    PemCertificate,
    PemPrivateKey,
    Port,
    SafeSecret,
    SafeToken,
    UrlPath,
    format_cpu_set,
    header_name,
    host_name,
    ip_address,
    key_matches_certificate,
    parse_cpu_set,
    safe_token,
    url_path,
)

__all__ = [
    "SAFE_TOKEN_RULE",
    "Backend",
    "HostSettings",
    "HostTlsSettings",
    "LoadBalancerSettings",
    "MonitoringSettings",
    "Placement",
    "RoutingPolicy",
    "Rule",
    "Settings",
    "Upstream",
    "cross_key_rules",
    "disk_rules",
    "format_cpu_set",
    "header_name",
    "host_name",
    "ip_address",
    "parse_cpu_set",
    "remote_engine_rules",
    "safe_token",
    "url_path",
]

SKIP_CROSS_KEY = "skip_cross_key_rules"
"""Validation context flag: the config loader runs `cross_key_rules` itself, per key."""

# vLLM flags and variables the deployment sets itself: overriding them from
# extraArgs/extraEnv breaks it (a wrong --port is found only after readyTimeoutSeconds).
MANAGED_FLAGS = {
    "--model": "set 'model'",
    "--served-model-name": "set 'servedModelName'",
    "--host": "replicas listen on 0.0.0.0 inside their container",
    "--port": "replicas listen on 8000 inside their container; set 'basePort' for the host",
    "--tensor-parallel-size": "set 'tensorParallelSize'",
    "-tp": "set 'tensorParallelSize'",
    "--api-key": "set 'apiKey' with `pulumi config set --secret apiKey`",
}
SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
MANAGED_ENV = {
    "HF_HUB_OFFLINE": "the deployment sets it on replicas that must not download",
    "VLLM_CPU_KVCACHE_SPACE": "set 'cpu.kvcacheSpaceGb'",
    "VLLM_CPU_OMP_THREADS_BIND": "set 'cpu.coresPerReplica' or 'cpu.cpuSets'",
    "HTTP_PROXY": "set 'proxy.http'",
    "HTTPS_PROXY": "set 'proxy.https'",
    "NO_PROXY": "set 'proxy.no'",
}


def _extra_args(args: tuple[str, ...]) -> tuple[str, ...]:
    for arg in args:
        flag = arg.split("=", 1)[0]
        # vLLM's parser takes --tensor_parallel_size for --tensor-parallel-size.
        flag = flag[:2] + flag[2:].replace("_", "-") if flag.startswith("--") else flag
        if flag in MANAGED_FLAGS:
            raise ValueError(f"must not set {flag}: {MANAGED_FLAGS[flag]}")
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


def _paths_of_its_own(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if path == "/health" or path.rstrip("/") == "/v1" or path.startswith("/v1/"):
            raise ValueError(
                f"must not list {path}: the load balancer answers /health itself and "
                "already serves everything under /v1/"
            )
    return paths


def _some_hosts(hosts: tuple[Any, ...]) -> tuple[Any, ...]:
    if not hosts:
        raise ValueError("must list at least one host (or be left out: one engine)")
    return hosts


class _Model(BaseModel):
    """Stack config keys are camelCase; unknown keys are typos, so they fail."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        # Python code may use field names; the config loader validates by alias only,
        # so `shm_size_mb` in a stack file is an unknown key, not `shmSizeMb`.
        validate_by_name=True,
        validate_by_alias=True,
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
    PREFIX_AFFINITY = "prefix_affinity"


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
    # prefix_affinity: how much of the prompt's start is the routing key, and
    # how many requests one replica takes on its prefixes before others help.
    prefix_chars: Annotated[Int, Field(ge=16, le=65536)] = 1024
    prefix_max_conns: Annotated[Int, Field(ge=1, le=100000)] = 32
    read_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = 3600
    send_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = 3600
    # nginx: "this timeout cannot usually exceed 75 seconds" (proxy_connect_timeout).
    connect_timeout_seconds: Annotated[Int, Field(ge=1, le=75)] = 5
    max_fails: Annotated[Int, Field(ge=1, le=1000)] = 3
    fail_window_seconds: Annotated[Int, Field(ge=1, le=15)] = 10
    next_upstream_tries: Annotated[Int, Field(ge=0, le=64)] = 2
    retry_non_idempotent: bool = True
    buffer_requests: bool = True
    keepalive_connections: Annotated[Int, Field(ge=1, le=4096)] = 32
    max_body_size_mb: Annotated[Int, Field(ge=1, le=100 * 1024)] = 100
    worker_connections: Annotated[Int, Field(ge=64, le=65535)] = 4096
    expose_paths: Annotated[tuple[UrlPath, ...], AfterValidator(_paths_of_its_own)] = ()
    dynamic_resolve: bool = True
    resolver: IpAddress = "127.0.0.11"
    image: ImageRef = "nginx:1.28.0"
    name: DnsLabel = "nginx-lb"
    tls: bool = False
    host: DnsLabel | None = None
    """With 'hosts': the host (by name) nginx runs on; the first host by default."""


class CpuSettings(_Model):
    """Each CPU replica gets its own cores, and vLLM's OpenMP threads are bound to them.

    vLLM's `VLLM_CPU_OMP_THREADS_BIND=auto` in every container would pin every
    replica's threads to the same host cores; a docker `cpuset` per replica plus
    the matching bind list keeps them apart.
    """

    kvcache_space_gb: Annotated[Int, Field(ge=1, le=4096)] = 4
    cores_per_replica: Annotated[Int, Field(ge=0, le=1024)] = 4
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
    args: dict[BuildArgName, SafeToken] = Field(default_factory=dict)


class ImageSettings(_Model):
    """The vLLM image: a published one (pulled) or one built from a checkout."""

    prebuilt: ImageRef | None = None
    build: BuildSettings | None = None
    # pulumi-docker's RemoteImage gives a pull 20 minutes by default; a
    # vllm/vllm-openai image is about 10 GB.
    pull_timeout_minutes: Annotated[Int, Field(ge=1, le=24 * 60)] = 90
    keep_on_destroy: bool = True

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        if self.prebuilt is not None and self.build is not None:
            raise ValueError("set only one of 'prebuilt' or 'build'")
        return self


class CacheSettings(_Model):
    """The HuggingFace cache all replicas share: a named volume or a host path."""

    volume: DnsLabel | None = None
    host_path: HostPath | None = None
    keep_on_destroy: bool = True

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.volume is None) == (self.host_path is None):
            raise ValueError("set exactly one of 'volume' or 'hostPath'")
        return self


class CompileCacheSettings(_Model):
    """vLLM's compile cache (`VLLM_CACHE_ROOT`), shared so a replica reuses another's work."""

    enabled: bool = True
    volume: DnsLabel = "vllm-compile-cache"


class HealthCheckSettings(_Model):
    interval_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 10
    timeout_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 5
    retries: Annotated[Int, Field(ge=1, le=100)] = 3


class PrometheusSettings(_Model):
    """Prometheus as published (`prom/prometheus`), its TSDB on a named volume."""

    # v3.5 is Prometheus' long-term-support release of 2025.
    image: ImageRef = "prom/prometheus:v3.5.0"
    port: Port = 9090
    name: DnsLabel = "vllm-prometheus"
    volume: DnsLabel = "vllm-prometheus-data"
    scrape_interval_seconds: Annotated[Int, Field(ge=1, le=300)] = 10
    retention_days: Annotated[Int, Field(ge=1, le=3650)] = 15


class GrafanaSettings(_Model):
    """Grafana as published (`grafana/grafana`), its database on a named volume."""

    # The dashboard file's schemaVersion (41) is the one this release writes.
    image: ImageRef = "grafana/grafana:12.1.1"
    port: Port = 3000
    name: DnsLabel = "vllm-grafana"
    volume: DnsLabel = "vllm-grafana-data"


class LbExporterSettings(_Model):
    """The load balancer's metrics exporter: our stdlib-only script on the official Python image."""

    image: ImageRef = "python:3.12.11-slim-bookworm"
    name: DnsLabel = "vllm-lb-exporter"


def docker_endpoint(value: str) -> str:
    """What pulumi-docker's `host` and `DOCKER_HOST` take for an engine we deploy to."""
    safe_token(value)
    if not value.startswith(("unix:///", "ssh://", "tcp://")) or value.endswith("://"):
        raise ValueError(
            "must be a Docker endpoint: unix:///path/to/docker.sock (this machine), "
            "ssh://user@host, or tcp://host:2376 (with 'tls')"
        )
    return value


DockerEndpoint = Annotated[str, AfterValidator(docker_endpoint)]


class HostTlsSettings(_Model):
    """TLS to a `tcp://` engine, as pulumi-docker's Provider takes it.

    Either the three PEM contents (the key is a secret, kept in the stack as
    one and handed to the provider and the steps as a Pulumi secret), or a
    directory holding `ca.pem`, `cert.pem` and `key.pem` on the deploying
    machine, Docker's own layout.
    """

    ca_material: PemCertificate | None = None
    cert_material: PemCertificate | None = None
    key_material: PemPrivateKey | None = None
    cert_path: LocalPath | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        materials = (self.ca_material, self.cert_material, self.key_material)
        given = sum(m is not None for m in materials)
        if self.cert_path is not None and given:
            raise ValueError("set either 'certPath' or the three '*Material' keys, not both")
        if self.cert_path is None and given != 3:
            raise ValueError(
                "set 'caMaterial', 'certMaterial' and 'keyMaterial' together, or 'certPath'"
            )
        return self


class HostSettings(_Model):
    """One Docker engine of a multi-host deployment: where it is and what it runs.

    The load balancer reaches a replica on another host by `address` and the
    replica's published port, so replicas publish on `bindAddress`, which is
    that address unless said otherwise: never every interface by default.
    """

    name: DnsLabel
    docker_host: DockerEndpoint
    address: HostName
    bind_address: IpAddress | None = None
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = None
    gpus: tuple[tuple[GpuId, ...], ...] | None = None
    cpu_sets: tuple[CpuSet, ...] | None = None
    base_port: Port | None = None
    tls: HostTlsSettings | None = None

    @property
    def replica_count(self) -> int:
        """`replicas`, else one per GPU group or CPU set listed (0: none said)."""
        if self.replicas is not None:
            return self.replicas
        for groups in (self.gpus, self.cpu_sets):
            if groups is not None:
                return len(groups)
        return 0

    @property
    def publish_address(self) -> str:
        """Where its replica ports are published: `bindAddress`, else `address`."""
        return self.bind_address or self.address


class MonitoringSettings(_Model):
    """Prometheus, Grafana and the load balancer's exporter; nothing of it unless enabled."""

    enabled: bool = False
    bind_address: IpAddress = "127.0.0.1"
    keep_data_on_destroy: bool = True
    prometheus: PrometheusSettings = PrometheusSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    lb_exporter: LbExporterSettings = LbExporterSettings()


DEFAULT_GPU_IMAGE = "vllm/vllm-openai:v0.11.0"
# vLLM's published CPU build of the same release (its CPU installation docs).
DEFAULT_CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0"


class Settings(_Model):
    """The whole stack config, validated."""

    model: SafeToken
    served_model_name: SafeToken | None = None
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
    stop_grace_seconds: Annotated[Int, Field(ge=0, le=3600)] = 30
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
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


@dataclass(frozen=True)
class Rule:
    """A broken rule: the key it is reported on, the rule, and every key it involves.

    The loader leaves out a rule that involves a key which is itself invalid:
    its check ran against that key's default, not what the user wrote.
    """

    key: str
    rule: str
    involves: frozenset[str]
    secret_check: str = ""
    """For a rule that compares the *values* of the keys it involves (the secret
    `key` and another): what it checks, in positive words, `key` as "it". A check
    without the Pulumi CLI holds only a stand-in for an encrypted value, so the
    rule's verdict there says nothing when any of those keys is encrypted; the
    loader reports it as unverified instead, and `pulumi up` runs it on the values."""


def _rule(key: str, rule: str, *others: str, secret_check: str = "") -> Rule:
    return Rule(key, rule, frozenset({key.split(".")[0], *others}), secret_check)


def _gpu_rules(s: Settings) -> Iterator[Rule]:
    if s.gpus is None or s.hosts is not None:
        return
    if s.backend is Backend.CPU:
        yield _rule("gpus", "must not be set with 'backend' cpu", "backend")
        return
    if len(s.gpus) != s.replicas:
        yield _rule(
            "gpus", f"lists {len(s.gpus)} replicas but 'replicas' is {s.replicas}", "replicas"
        )
    seen: set[int] = set()
    for index, ids in enumerate(s.gpus):
        if len(ids) != s.tensor_parallel_size:
            yield _rule(
                f"gpus[{index}]",
                f"has {len(ids)} GPUs but 'tensorParallelSize' is {s.tensor_parallel_size}",
                "tensorParallelSize",
            )
        for gpu in ids:
            if gpu in seen:
                yield _rule(f"gpus[{index}]", f"uses GPU {gpu}, which another replica uses too")
            seen.add(gpu)


def _cpu_rules(s: Settings) -> Iterator[Rule]:
    if s.backend is not Backend.CPU or s.hosts is not None:
        return
    sets = s.cpu.cpu_sets
    if sets is not None and len(sets) != s.replicas:
        yield _rule(
            "cpu.cpuSets",
            f"lists {len(sets)} replicas but 'replicas' is {s.replicas}",
            "replicas",
            "backend",
        )
    seen: set[int] = set()
    for index, cores in enumerate(s.cpu_groups()):
        key = f"cpu.cpuSets[{index}]" if sets is not None else "cpu.coresPerReplica"
        if cores and len(cores) % s.tensor_parallel_size:
            yield _rule(
                key,
                f"gives replica {index} {len(cores)} CPUs, not a multiple of "
                f"'tensorParallelSize' {s.tensor_parallel_size}",
                "tensorParallelSize",
                "backend",
            )
        for core in cores:
            if core in seen:
                yield _rule(key, f"uses CPU {core}, which another replica uses too", "backend")
            seen.add(core)


def _name_and_port_rules(s: Settings) -> Iterator[Rule]:
    if s.hosts is not None:
        return  # per host: `_host_rules`
    names = s.replica_names()
    longest = names[-1]
    if len(longest) > 63:
        yield _rule(
            "namePrefix",
            f"makes replica names of up to {len(longest)} characters; container names "
            "double as DNS names, at most 63",
            "replicas",
        )
    last_port = s.base_port + s.replicas - 1
    if last_port > 65535:
        yield _rule(
            "basePort", f"{s.base_port} + {s.replicas} replicas passes port 65535", "replicas"
        )
    lb = s.load_balancer
    if s.base_port <= lb.port <= last_port:
        yield _rule(
            "loadBalancer.port",
            f"{lb.port} collides with the replica ports {s.base_port}-{last_port} "
            "('basePort' + 'replicas')",
            "basePort",
            "replicas",
        )
    if lb.name in names:
        yield _rule(
            "loadBalancer.name",
            f"{lb.name} collides with a replica name ('namePrefix' + number)",
            "namePrefix",
            "replicas",
        )


def _tls_rules(s: Settings) -> Iterator[Rule]:
    tls = s.load_balancer.tls
    if tls and s.tls_certificate is None:
        yield _rule("tlsCertificate", "is required with 'loadBalancer.tls' true", "loadBalancer")
    if tls and s.tls_key is None:
        yield _rule(
            "tlsKey",
            "is required with 'loadBalancer.tls' true "
            "(`pulumi config set --secret tlsKey < server.key`)",
            "loadBalancer",
        )
    if not tls and (s.tls_certificate is not None or s.tls_key is not None):
        key = "tlsCertificate" if s.tls_certificate is not None else "tlsKey"
        yield _rule(key, "is set but 'loadBalancer.tls' is false", "loadBalancer")
    if (
        s.tls_key is not None
        and s.tls_certificate is not None
        and not key_matches_certificate(s.tls_key, s.tls_certificate)
    ):
        yield _rule(
            "tlsKey",
            "is not the private key of 'tlsCertificate'",
            "tlsCertificate",
            secret_check="whether it is the private key of 'tlsCertificate'",
        )


def _monitoring_rules(s: Settings) -> Iterator[Rule]:
    mon = s.monitoring
    if not mon.enabled:
        if s.grafana_password is not None:
            yield _rule("grafanaPassword", "is set but 'monitoring.enabled' is false", "monitoring")
        return
    if s.grafana_password is None:
        yield _rule(
            "grafanaPassword",
            "is required with 'monitoring.enabled' true "
            "(`pulumi config set --secret grafanaPassword`)",
            "monitoring",
        )
    last_port = s.base_port + s.replicas - 1
    # Monitoring runs where nginx does: only that engine's replica ports can clash.
    lb_host = s.load_balancer_host
    beside = {p.port: p for p in s.placements() if p.host is lb_host}
    taken_ports = {s.load_balancer.port: "'loadBalancer.port'"}
    for key, port in (
        ("monitoring.prometheus.port", mon.prometheus.port),
        ("monitoring.grafana.port", mon.grafana.port),
    ):
        if lb_host is None and s.base_port <= port <= last_port:
            yield _rule(
                key,
                f"{port} collides with the replica ports {s.base_port}-{last_port} "
                "('basePort' + 'replicas')",
                "basePort",
                "replicas",
            )
        elif lb_host is not None and port in beside:
            yield _rule(
                key,
                f"{port} is the port of replica {beside[port].name} on host {lb_host.name}, "
                "where monitoring runs with the load balancer",
                "hosts",
            )
        elif port in taken_ports:
            yield _rule(key, f"{port} is also {taken_ports[port]}", "loadBalancer")
        taken_ports.setdefault(port, f"'{key}'")
    taken_names = {name: "a replica name ('namePrefix' + number)" for name in s.replica_names()}
    taken_names[s.load_balancer.name] = "'loadBalancer.name'"
    for key, name in (
        ("monitoring.prometheus.name", mon.prometheus.name),
        ("monitoring.grafana.name", mon.grafana.name),
        ("monitoring.lbExporter.name", mon.lb_exporter.name),
    ):
        if name in taken_names:
            yield _rule(
                key,
                f"{name} collides with {taken_names[name]}",
                "namePrefix",
                "replicas",
                "loadBalancer",
            )
        taken_names.setdefault(name, f"'{key}'")
    taken_volumes = {s.hf_cache.volume: "'hfCache.volume'"} if s.hf_cache.volume else {}
    for key, volume in (
        ("monitoring.prometheus.volume", mon.prometheus.volume),
        ("monitoring.grafana.volume", mon.grafana.volume),
    ):
        if volume in taken_volumes:
            yield _rule(key, f"{volume} is also {taken_volumes[volume]}", "hfCache")
        taken_volumes.setdefault(volume, f"'{key}'")


SINGLE_HOST_KEYS = {
    "replicas": ("replicas", "replicas"),
    "gpus": ("gpus", "gpus"),
    "bind_address": ("bindAddress", "bindAddress"),
    "public_host": ("publicHost", "address"),
}
"""Top-level fields that 'hosts' replaces: the key, and the per-host key that says it instead."""


def _host_count_rules(s: Settings, i: int, host: HostSettings) -> Iterator[Rule]:
    key = f"hosts[{i}]"
    cpu = s.backend is Backend.CPU
    if host.gpus is not None and cpu:
        yield _rule(f"{key}.gpus", "must not be set with 'backend' cpu", "hosts", "backend")
    if host.cpu_sets is not None and not cpu:
        yield _rule(
            f"{key}.cpuSets", "is for 'backend' cpu; GPU hosts list 'gpus'", "hosts", "backend"
        )
    if host.replica_count == 0:
        yield _rule(
            f"{key}.replicas",
            "is required: say how many replicas run on this host ('replicas', or one entry "
            "per replica in 'gpus' / 'cpuSets')",
            "hosts",
        )
    for field, groups in (("gpus", host.gpus), ("cpuSets", host.cpu_sets)):
        if groups is not None and host.replicas is not None and len(groups) != host.replicas:
            yield _rule(
                f"{key}.{field}",
                f"lists {len(groups)} replicas but '{key}.replicas' is {host.replicas}",
                "hosts",
            )


def _host_device_rules(s: Settings, i: int, host: HostSettings) -> Iterator[Rule]:
    """A GPU or core belongs to one replica of its host; other hosts have their own."""
    key = f"hosts[{i}]"
    _gpus, cores = s._host_groups(host)
    seen_gpus: set[int] = set()
    for r, ids in enumerate(host.gpus or ()):
        if len(ids) != s.tensor_parallel_size:
            yield _rule(
                f"{key}.gpus[{r}]",
                f"has {len(ids)} GPUs but 'tensorParallelSize' is {s.tensor_parallel_size}",
                "hosts",
                "tensorParallelSize",
            )
        for gpu in ids:
            if gpu in seen_gpus:
                yield _rule(
                    f"{key}.gpus[{r}]",
                    f"uses GPU {gpu}, which another replica on host {host.name} uses too",
                    "hosts",
                )
            seen_gpus.add(gpu)
    seen_cores: set[int] = set()
    for r, group in enumerate(cores):
        where = f"{key}.cpuSets[{r}]" if host.cpu_sets is not None else "cpu.coresPerReplica"
        if group and len(group) % s.tensor_parallel_size:
            yield _rule(
                where,
                f"gives replica {r} on host {host.name} {len(group)} CPUs, not a multiple of "
                f"'tensorParallelSize' {s.tensor_parallel_size}",
                "hosts",
                "tensorParallelSize",
                "cpu",
            )
        for core in group:
            if core in seen_cores:
                yield _rule(
                    where,
                    f"uses CPU {core}, which another replica on host {host.name} uses too",
                    "hosts",
                    "cpu",
                )
            seen_cores.add(core)


def _overlap(a: str, b: str) -> bool:
    """Two binds on one engine clash when they are the same address or either is every one."""
    return a == b or "0.0.0.0" in (a, b) or "::" in (a, b)


def _host_port_rules(s: Settings, lb_host: HostSettings | None) -> Iterator[Rule]:
    assert s.hosts is not None
    base = s.base_port
    # Where the load balancer reaches each replica on another host: address:port,
    # which must name one replica only.
    reached: dict[tuple[str, int], str] = {}
    for i, host in enumerate(s.hosts):
        key = f"hosts[{i}]"
        if host.replica_count == 0:
            continue  # no ports; its count is reported on its own
        first = host.base_port if host.base_port is not None else base
        last = first + host.replica_count - 1
        port_key = f"{key}.basePort" if host.base_port is not None else "basePort"
        if last > 65535:
            yield _rule(
                port_key,
                f"{first} + {host.replica_count} replicas on host {host.name} passes port 65535",
                "hosts",
                "basePort",
            )
            continue
        clash = next(
            (
                reached[(host.address, port)]
                for port in range(first, last + 1)
                if (host.address, port) in reached
            ),
            None,
        )
        if clash is not None:
            yield _rule(
                f"{key}.address",
                f"{host.address} with ports {first}-{last} reaches a port of {clash} too "
                "(the same address:port twice); give one of them another 'basePort'",
                "hosts",
                "basePort",
            )
        for port in range(first, last + 1):
            reached.setdefault((host.address, port), f"host {host.name}")
        lb = s.load_balancer
        if (
            host is lb_host
            and first <= lb.port <= last
            and _overlap(lb.bind_address, host.publish_address)
        ):
            yield _rule(
                "loadBalancer.port",
                f"{lb.port} collides with the replica ports {first}-{last} of host {host.name}, "
                "where the load balancer runs",
                "hosts",
                "basePort",
                "loadBalancer",
            )


def _host_rules(s: Settings) -> Iterator[Rule]:
    lb = s.load_balancer
    if s.hosts is None:
        if lb.host is not None:
            yield _rule("loadBalancer.host", "is set but 'hosts' is not", "hosts")
        return
    for field, (key, per_host) in SINGLE_HOST_KEYS.items():
        if field in s.model_fields_set:
            yield _rule(
                key,
                f"must not be set with 'hosts': each host says its own ('hosts[i].{per_host}')",
                "hosts",
            )
    if "cpu_sets" in s.cpu.model_fields_set:
        yield _rule(
            "cpu.cpuSets",
            "must not be set with 'hosts': each host says its own ('hosts[i].cpuSets')",
            "hosts",
        )
    names: dict[str, int] = {}
    engines: dict[str, int] = {}
    for i, host in enumerate(s.hosts):
        if host.name in names:
            yield _rule(
                f"hosts[{i}].name", f"{host.name} is also the name of hosts[{names[host.name]}]"
            )
        names.setdefault(host.name, i)
        if host.docker_host in engines:
            yield _rule(
                f"hosts[{i}].dockerHost",
                f"is the engine of hosts[{engines[host.docker_host]}] too: one host per engine",
            )
        engines.setdefault(host.docker_host, i)
        if host.bind_address is None:
            try:
                ipaddress.ip_address(host.address)
            except ValueError:
                yield _rule(
                    f"hosts[{i}].bindAddress",
                    "is required when 'address' is a name: Docker publishes ports on an IP "
                    "address (the host's address on the network the load balancer uses)",
                )
        if host.tls is not None and not host.docker_host.startswith("tcp://"):
            yield _rule(f"hosts[{i}].tls", "is only for a tcp:// 'dockerHost'")
        if host.docker_host.startswith("tcp://") and host.tls is None:
            yield _rule(
                f"hosts[{i}].tls",
                "is required with a tcp:// 'dockerHost': an engine's API without TLS gives "
                "root on that machine to anyone who reaches the port",
            )
        yield from _host_count_rules(s, i, host)
        yield from _host_device_rules(s, i, host)
    if lb.host is not None and lb.host not in names:
        yield _rule(
            "loadBalancer.host",
            f"names no host in 'hosts' (they are: {', '.join(names)})",
            "hosts",
        )
    lb_host = s.load_balancer_host if lb.host is None or lb.host in names else None
    yield from _host_port_rules(s, lb_host)
    if (
        lb_host is not None
        and ipaddress.ip_address(lb.bind_address).is_loopback
        and is_remote_engine(lb_host.docker_host)
    ):
        yield _rule(
            "loadBalancer.bindAddress",
            f"is a loopback address on host {lb_host.name}, a remote engine: nothing outside "
            "it (the verify step included) can reach the load balancer",
            "hosts",
        )
    placements = s.placements()
    longest = max((p.name for p in placements), key=len, default="")
    if len(longest) > 63:
        yield _rule(
            "namePrefix",
            f"makes replica names ('<prefix>-<host>-<i>') of up to {len(longest)} characters; "
            "container names double as DNS names, at most 63",
            "hosts",
        )
    if lb.name in {p.name for p in placements}:
        yield _rule(
            "loadBalancer.name",
            f"{lb.name} collides with a replica name ('namePrefix'-host-number)",
            "hosts",
            "namePrefix",
        )


def cross_key_rules(settings: Settings) -> list[Rule]:
    """Every rule that ties several keys together, all broken ones at once."""
    return [
        *_host_rules(settings),
        *_gpu_rules(settings),
        *_cpu_rules(settings),
        *_name_and_port_rules(settings),
        *_tls_rules(settings),
        *_monitoring_rules(settings),
    ]


def disk_rules(settings: Settings, project_dir: Path) -> list[Rule]:
    """What must exist where `pulumi up` runs: the vLLM checkout to build, its Dockerfile."""
    build = settings.vllm_image.build
    if build is None:
        return []
    context = (project_dir / Path(build.context).expanduser()).resolve()
    if not context.is_dir():
        return [_rule("image.build.context", f"is not a directory (looked in {context})")]
    dockerfile = (context / build.dockerfile).resolve()
    if not dockerfile.is_relative_to(context):
        return [_rule("image.build.dockerfile", "must be inside 'image.build.context'")]
    if not dockerfile.is_file():
        return [_rule("image.build.dockerfile", f"does not exist (looked for {dockerfile})")]
    return []


def is_remote_engine(docker_host: str | None) -> bool:
    """`ssh://` and `tcp://` engines run on another machine than `pulumi up`."""
    return bool(docker_host) and not str(docker_host).startswith(("unix://", "npipe://"))


def remote_engine_rules(settings: Settings, docker_host: str | None) -> list[Rule]:
    """What breaks when the engine is remote: the verify step runs where `pulumi up`
    runs and reaches the load balancer by `publicHost` on its published address.
    With 'hosts', `docker:host` is not used and the rules are per host."""
    if not is_remote_engine(docker_host) or settings.hosts is not None:
        return []
    rules = []
    if settings.public_host in {"localhost", "127.0.0.1", "::1"}:
        rules.append(
            _rule(
                "publicHost",
                "must name the Docker host: `docker:host` is a remote engine, and the verify "
                "step and the output URLs reach the load balancer by this name",
            )
        )
    if ipaddress.ip_address(settings.load_balancer.bind_address).is_loopback:
        rules.append(
            _rule(
                "loadBalancer.bindAddress",
                "is a loopback address on a remote engine: nothing outside that host "
                "(the verify step included) can reach the load balancer",
            )
        )
    return rules
