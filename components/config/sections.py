"""The stack config's sections (`loadBalancer`, `image`, `hosts[i]`, ...), each a model.

Every section validates its own keys only; rules that tie keys of several
sections together are in `components.config.rules`, so that all problems are
reported at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.config.values import (
    DAY,
    BuildArgName,
    CpuSet,
    DnsLabel,
    GpuId,
    HeaderName,
    HostName,
    HostPath,
    ImageRef,
    Int,
    IpAddress,
    LocalPath,
    PemCertificate,
    PemPrivateKey,
    Port,
    SafeToken,
    UrlPath,
    safe_token,
)


def _paths_of_its_own(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if path == "/health" or path.rstrip("/") == "/v1" or path.startswith("/v1/"):
            raise ValueError(
                f"must not list {path}: the load balancer answers /health itself and "
                "already serves everything under /v1/"
            )
    return paths


class ConfigModel(BaseModel):
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


class Upstream(ConfigModel):
    """One replica as the load balancer sees it: an explicit host and port."""

    host: HostName
    port: Port

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class LoadBalancerSettings(ConfigModel):
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


class CpuSettings(ConfigModel):
    """Each CPU replica gets its own cores, and vLLM's OpenMP threads are bound to them.

    vLLM's `VLLM_CPU_OMP_THREADS_BIND=auto` in every container would pin every
    replica's threads to the same host cores; a docker `cpuset` per replica plus
    the matching bind list keeps them apart.
    """

    kvcache_space_gb: Annotated[Int, Field(ge=1, le=4096)] = 4
    cores_per_replica: Annotated[Int, Field(ge=0, le=1024)] = 4
    cpu_sets: tuple[CpuSet, ...] | None = None


class FitCheckSettings(ConfigModel):
    """Before the download and any replica: does the model fit each replica's GPUs?

    The weights (split over the tensor-parallel ranks) plus the KV cache of one
    sequence of the maximum length, against each GPU's memory times vLLM's
    `--gpu-memory-utilization` (CPU: the host's memory and `cpu.kvcacheSpaceGb`);
    see docs/fit-check.md.
    """

    enabled: bool = True
    warn_above_percent: Annotated[Int, Field(ge=1, le=100)] = 90
    """A need above this share of what vLLM may use warns (activations come on top)."""


class ProxySettings(ConfigModel):
    http: SafeToken | None = None
    https: SafeToken | None = None
    no: SafeToken | None = None


class BuildSettings(ConfigModel):
    """A vLLM source checkout built with its own Dockerfile."""

    context: SafeToken
    dockerfile: SafeToken = "docker/Dockerfile"
    target: SafeToken = "vllm-openai"
    tag: ImageRef = "vllm-local:latest"
    args: dict[BuildArgName, SafeToken] = Field(default_factory=dict)


class ImageSettings(ConfigModel):
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


class CacheSettings(ConfigModel):
    """The HuggingFace cache all replicas share: a named volume or a host path."""

    volume: DnsLabel | None = None
    host_path: HostPath | None = None
    keep_on_destroy: bool = True

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.volume is None) == (self.host_path is None):
            raise ValueError("set exactly one of 'volume' or 'hostPath'")
        return self


class CompileCacheSettings(ConfigModel):
    """vLLM's compile cache (`VLLM_CACHE_ROOT`), shared so a replica reuses another's work."""

    enabled: bool = True
    volume: DnsLabel = "vllm-compile-cache"


class HealthCheckSettings(ConfigModel):
    interval_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 10
    timeout_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 5
    retries: Annotated[Int, Field(ge=1, le=100)] = 3


class RolloutSettings(ConfigModel):
    """How an update judges its first wave (the canary) before it replaces the rest."""

    canary_seconds: Annotated[Int, Field(ge=0, le=DAY)] = 60
    canary_max_ttft_ratio: Annotated[float, Field(ge=1.0, le=1000.0)] = 1.5
    canary_max_error_rate_increase: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    canary_min_requests: Annotated[Int, Field(ge=1, le=1_000_000)] = 20
    canary_without_traffic: Literal["proceed", "wait"] = "proceed"
    canary_max_wait_seconds: Annotated[Int, Field(ge=1, le=DAY)] = 600


class PrometheusSettings(ConfigModel):
    """Prometheus as published (`prom/prometheus`), its TSDB on a named volume."""

    # v3.5 is Prometheus' long-term-support release of 2025.
    image: ImageRef = "prom/prometheus:v3.5.0"
    port: Port = 9090
    name: DnsLabel = "vllm-prometheus"
    volume: DnsLabel = "vllm-prometheus-data"
    scrape_interval_seconds: Annotated[Int, Field(ge=1, le=300)] = 10
    retention_days: Annotated[Int, Field(ge=1, le=3650)] = 15


class GrafanaSettings(ConfigModel):
    """Grafana as published (`grafana/grafana`), its database on a named volume."""

    # The dashboard file's schemaVersion (41) is the one this release writes.
    image: ImageRef = "grafana/grafana:12.1.1"
    port: Port = 3000
    name: DnsLabel = "vllm-grafana"
    volume: DnsLabel = "vllm-grafana-data"


class LbExporterSettings(ConfigModel):
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


def is_remote_engine(docker_host: str | None) -> bool:
    """`ssh://` and `tcp://` engines run on another machine than `pulumi up`."""
    return bool(docker_host) and not str(docker_host).startswith(("unix://", "npipe://"))


DockerEndpoint = Annotated[str, AfterValidator(docker_endpoint)]


class HostTlsSettings(ConfigModel):
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


def replica_count(
    replicas: int | None,
    gpus: tuple[tuple[int, ...], ...] | None,
    cpu_sets: tuple[str, ...] | None,
    *,
    otherwise: int,
) -> int:
    """How many replicas a host or a pool has: `replicas` if said, else one per GPU
    group or CPU set listed, else `otherwise`."""
    if replicas is not None:
        return replicas
    for groups in (gpus, cpu_sets):
        if groups is not None:
            return len(groups)
    return otherwise


class HostSettings(ConfigModel):
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
        return replica_count(self.replicas, self.gpus, self.cpu_sets, otherwise=0)

    @property
    def publish_address(self) -> str:
        """Where its replica ports are published: `bindAddress`, else `address`."""
        return self.bind_address or self.address


class MonitoringSettings(ConfigModel):
    """Prometheus, Grafana and the load balancer's exporter; nothing of it unless enabled."""

    enabled: bool = False
    bind_address: IpAddress = "127.0.0.1"
    keep_data_on_destroy: bool = True
    prometheus: PrometheusSettings = PrometheusSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    lb_exporter: LbExporterSettings = LbExporterSettings()
