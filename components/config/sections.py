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
    InterfaceName,
    IpAddress,
    Ipv4Interface,
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


class StandbySettings(ConfigModel):
    """Two balancers behind one floating address (VRRP, keepalived): docs/multi-host.md.

    Both start as BACKUP with `nopreempt`, so a balancer that comes back never takes
    the address from the one serving; the first host listed wins the first election.
    """

    hosts: tuple[DnsLabel, ...] = Field(
        description=(
            "the two hosts (their `name`) that each run nginx and keepalived; the first holds "
            "the address after the first start"
        )
    )
    virtual_address: Ipv4Interface = Field(
        description=(
            "the floating IPv4 address with its prefix (`10.0.0.100/24`), free on the hosts' "
            "shared network; clients use it"
        )
    )
    interface: InterfaceName = Field(
        "eth0",
        description="the balancer hosts' interface on that network (VRRP and the address)",
    )
    router_id: Annotated[Int, Field(ge=1, le=255)] = Field(
        51,
        description="VRRP `virtual_router_id`: unique among VRRP groups on that network",
    )
    advert_seconds: Annotated[Int, Field(ge=1, le=10)] = Field(
        1,
        description=(
            "VRRP advertisement interval; a dead machine is noticed after about 3 of them"
        ),
    )
    image: ImageRef = Field(
        "vllm-nginx/keepalived:bookworm",
        description=(
            "image with Debian's keepalived and curl, present on both hosts "
            "(`scripts/base-image.sh --keepalived`)"
        ),
    )


class LoadBalancerSettings(ConfigModel):
    """What the nginx in front of the replicas does; defaults fit LLM traffic."""

    port: Port = Field(8000, description="host port of the load balancer")
    bind_address: IpAddress = Field(
        "0.0.0.0", description="host address the load balancer is published on"
    )
    policy: RoutingPolicy = Field(
        RoutingPolicy.LEAST_CONN,
        description=(
            "`least_conn`, `round_robin`, `power_of_two`, `session_affinity`, `prefix_affinity` "
            "(needs nginx's njs module >= 0.7.9)"
        ),
    )
    affinity_header: HeaderName = Field(
        "X-Session-Id", description="request header hashed by `session_affinity`"
    )
    # prefix_affinity: how much of the prompt's start is the routing key, and
    # how many requests one replica takes on its prefixes before others help.
    prefix_chars: Annotated[Int, Field(ge=16, le=65536)] = Field(
        1024,
        description=(
            "`prefix_affinity`: leading characters of the prompt (chat: system prompt and "
            "earliest messages) that pick the replica"
        ),
    )
    prefix_max_conns: Annotated[Int, Field(ge=1, le=100000)] = Field(
        32,
        description=(
            "`prefix_affinity`: requests in flight a replica takes through its prefixes (nginx "
            "`max_conns`); beyond it the next replica on the ring, and when all are at it, the "
            "least busy"
        ),
    )
    read_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = Field(
        3600, description="longest silence from a replica (long generations)"
    )
    send_timeout_seconds: Annotated[Int, Field(ge=1, le=7 * DAY)] = Field(
        3600, description="longest stall sending to a replica or client"
    )
    # nginx: "this timeout cannot usually exceed 75 seconds" (proxy_connect_timeout).
    connect_timeout_seconds: Annotated[Int, Field(ge=1, le=75)] = Field(
        5, description="connect timeout before trying another replica"
    )
    max_fails: Annotated[Int, Field(ge=1, le=1000)] = Field(
        3, description="failures within the window that take a replica out"
    )
    fail_window_seconds: Annotated[Int, Field(ge=1, le=15)] = Field(
        10, description="failure window and time out of rotation (<= 15)"
    )
    next_upstream_tries: Annotated[Int, Field(ge=0, le=64)] = Field(
        2,
        description=(
            "replicas tried per request (0 = all; capped so a request that kills replicas is not "
            "replayed on every one)"
        ),
    )
    retry_non_idempotent: bool = Field(
        True, description="retry POSTs that got no response on another replica"
    )
    buffer_requests: bool = Field(
        True,
        description=(
            "read the request body before passing it on, so a request whose replica fails before "
            "answering can be resent (responses always stream)"
        ),
    )
    keepalive_connections: Annotated[Int, Field(ge=0, le=4096)] = Field(
        32,
        description=(
            "idle keepalive connections to replicas per worker (0: a new connection per "
            "request, as `engine: kubernetes` always runs)"
        ),
    )
    max_body_size_mb: Annotated[Int, Field(ge=1, le=100 * 1024)] = Field(
        100, description="largest request body (long prompts, images)"
    )
    worker_connections: Annotated[Int, Field(ge=64, le=65535)] = Field(
        4096, description="nginx `worker_connections`"
    )
    expose_paths: Annotated[tuple[UrlPath, ...], AfterValidator(_paths_of_its_own)] = Field(
        (), description="vLLM paths besides `/v1/` to expose, e.g. `[/metrics]`"
    )
    dynamic_resolve: bool = Field(
        True, description="re-resolve replica names (`resolve`, nginx >= 1.27.3)"
    )
    resolver: IpAddress = Field(
        "127.0.0.11", description="DNS server for `dynamicResolve` (docker's embedded DNS)"
    )
    image: ImageRef = Field(
        "nginx:1.28.0",
        description=("nginx image, run as published (the config is uploaded into it)"),
    )
    name: DnsLabel = Field("nginx-lb", description="nginx container name")
    tls: bool = Field(
        False, description=("serve HTTPS with `tlsCertificate` and `tlsKey` (container port 443)")
    )
    host: DnsLabel | None = Field(
        None, description=("with `hosts`: the host (its `name`) nginx runs on; default the first")
    )
    """With 'hosts': the host (by name) nginx runs on; the first host by default."""
    standby: StandbySettings | None = Field(
        None,
        description=(
            "with `hosts`: nginx on two hosts behind a floating address, the second taking "
            "over when the first's machine, engine or nginx fails (docs/multi-host.md)"
        ),
    )


class CpuSettings(ConfigModel):
    """Each CPU replica gets its own cores, and vLLM's OpenMP threads are bound to them.

    vLLM's `VLLM_CPU_OMP_THREADS_BIND=auto` in every container would pin every
    replica's threads to the same host cores; a docker `cpuset` per replica plus
    the matching bind list keeps them apart.
    """

    kvcache_space_gb: Annotated[Int, Field(ge=1, le=4096)] = Field(
        4, description="`VLLM_CPU_KVCACHE_SPACE` (GiB), CPU backend"
    )
    cores_per_replica: Annotated[Int, Field(ge=0, le=1024)] = Field(
        4,
        description=(
            "CPU backend: replica i runs on cores `i*k .. i*k+k-1` (docker cpuset and "
            "`VLLM_CPU_OMP_THREADS_BIND`); 0 = no pinning"
        ),
    )
    cpu_sets: tuple[CpuSet, ...] | None = Field(
        None,
        description=(
            'CPU backend: cores per replica instead, e.g. `["0-3", "4-7"]` (disjoint; split '
            "evenly over tensor-parallel ranks)"
        ),
    )


class FitCheckSettings(ConfigModel):
    """Before the download and any replica: does the model fit each replica's GPUs?

    The weights (split over the tensor-parallel ranks) plus the KV cache of one
    sequence of the maximum length, against each GPU's memory times vLLM's
    `--gpu-memory-utilization` (CPU: the host's memory and `cpu.kvcacheSpaceGb`);
    see docs/fit-check.md.
    """

    enabled: bool = Field(
        True,
        description=(
            "before the download and any replica, check that the model fits each replica's GPUs "
            "(CPU: the host's memory), with model pools each pool's before its own; a model that "
            "does not stops `pulumi up` ([fit-check.md](fit-check.md))"
        ),
    )
    warn_above_percent: Annotated[Int, Field(ge=1, le=100)] = Field(
        90,
        description=(
            "warn when the weights and one sequence's KV cache take more than this share of what "
            "vLLM may use (GPU memory x `--gpu-memory-utilization`)"
        ),
    )
    """A need above this share of what vLLM may use warns (activations come on top)."""


class ProxySettings(ConfigModel):
    http: SafeToken | None = Field(None, description="`http_proxy` for builds and replicas")
    https: SafeToken | None = Field(None, description="`https_proxy` for builds and replicas")
    no: SafeToken | None = Field(None, description="`no_proxy` for builds and replicas")


class BuildSettings(ConfigModel):
    """A vLLM source checkout built with its own Dockerfile."""

    context: SafeToken = Field(
        description=("vLLM source checkout to build instead (relative to this project)")
    )
    dockerfile: SafeToken = Field("docker/Dockerfile", description="Dockerfile inside the checkout")
    target: SafeToken = Field("vllm-openai", description="build target")
    tag: ImageRef = Field("vllm-local:latest", description="local tag of the built image")
    args: dict[BuildArgName, SafeToken] = Field(
        default_factory=dict, description="extra build args (proxy args are added from `proxy`)"
    )


class ImageSettings(ConfigModel):
    """The vLLM image: a published one (pulled) or one built from a checkout."""

    prebuilt: ImageRef | None = Field(
        None,
        description=(
            "published vLLM image to run (default `vllm/vllm-openai:v0.33.0`, with backend `cpu` "
            "`vllm/vllm-openai-cpu:v0.33.0-x86_64`)"
        ),
    )
    build: BuildSettings | None = None
    # pulumi-docker's RemoteImage gives a pull 20 minutes by default; a
    # vllm/vllm-openai image is about 10 GB.
    pull_timeout_minutes: Annotated[Int, Field(ge=1, le=24 * 60)] = Field(
        90, description="how long pulling an image may take (vLLM's are ~10 GB)"
    )
    keep_on_destroy: bool = Field(
        True, description="keep pulled images on the engine after `pulumi destroy`"
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        if self.prebuilt is not None and self.build is not None:
            raise ValueError("set only one of 'prebuilt' or 'build'")
        return self


class CacheSettings(ConfigModel):
    """The HuggingFace cache all replicas share: a named volume or a host path."""

    volume: DnsLabel | None = Field(
        None, description="named docker volume for the Hugging Face cache"
    )
    host_path: HostPath | None = Field(
        None, description=("host directory instead of a volume (`~` = deploying user's home)")
    )
    keep_on_destroy: bool = Field(True, description="keep the cache volume on `pulumi destroy`")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.volume is None) == (self.host_path is None):
            raise ValueError("set exactly one of 'volume' or 'hostPath'")
        return self


class CompileCacheSettings(ConfigModel):
    """vLLM's compile cache (`VLLM_CACHE_ROOT`), shared so a replica reuses another's work."""

    enabled: bool = Field(
        True,
        description=(
            "mount vLLM's compile cache (`/root/.cache/vllm`) from a shared volume, so later "
            "starts reuse compiled graphs"
        ),
    )
    volume: DnsLabel = Field(
        "vllm-compile-cache",
        description=(
            "named docker volume for vLLM's compile cache (kept on destroy like `hfCache`)"
        ),
    )


class HealthCheckSettings(ConfigModel):
    interval_seconds: Annotated[Int, Field(ge=1, le=DAY)] = Field(
        10, description="docker health check interval (`GET /health`)"
    )
    timeout_seconds: Annotated[Int, Field(ge=1, le=DAY)] = Field(
        5, description="docker health check timeout"
    )
    retries: Annotated[Int, Field(ge=1, le=100)] = Field(
        3, description="failed checks before a replica is unhealthy"
    )


class RolloutSettings(ConfigModel):
    """How an update judges its first wave (the canary) before it replaces the rest."""

    canary_seconds: Annotated[Int, Field(ge=0, le=DAY)] = Field(
        60,
        description=(
            "an update watches its first wave (the canary) this long under live traffic against "
            "the replicas not yet replaced before it goes on; with `models`, each pool's first "
            "wave against that pool's (the same settings for every pool); 0 = no canary "
            "(docs/rolling-updates.md); with `engine: kubernetes` only when written, since it "
            "gives each pool's first wave a StatefulSet of its own (docs/kubernetes.md)"
        ),
    )
    canary_max_ttft_ratio: Annotated[float, Field(ge=1.0, le=1000.0)] = Field(
        1.5,
        description=(
            "the update stops when the canary's TTFT p90 is more than this many times the old "
            "replicas'"
        ),
    )
    canary_max_error_rate_increase: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.02,
        description=(
            "the update stops when the canary's share of failed (5xx) requests exceeds the old "
            "replicas' by more than this (0.02 = 2 points)"
        ),
    )
    canary_min_requests: Annotated[Int, Field(ge=1, le=1_000_000)] = Field(
        20, description="requests each side must serve in the window to be judged"
    )
    canary_without_traffic: Literal["proceed", "wait"] = Field(
        "proceed",
        description=(
            "too little traffic: `proceed` (say so, go on) or `wait` (watch on, up to "
            "`canaryMaxWaitSeconds`, then stop the update)"
        ),
    )
    canary_max_wait_seconds: Annotated[Int, Field(ge=1, le=DAY)] = Field(
        600, description="`canaryWithoutTraffic: wait`: how long to wait for traffic"
    )


class PrometheusSettings(ConfigModel):
    """Prometheus as published (`prom/prometheus`), its TSDB on a named volume."""

    # v3.5 is Prometheus' long-term-support release of 2025.
    image: ImageRef = Field(
        "prom/prometheus:v3.5.0",
        description="Prometheus image, run as published (its config is uploaded)",
    )
    port: Port = Field(9090, description="host port of Prometheus (`prometheus_url`)")
    name: DnsLabel = Field("vllm-prometheus", description="Prometheus container name")
    volume: DnsLabel = Field(
        "vllm-prometheus-data", description="named volume of Prometheus' time series"
    )
    scrape_interval_seconds: Annotated[Int, Field(ge=1, le=300)] = Field(
        10, description="how often every replica and the load balancer are scraped"
    )
    retention_days: Annotated[Int, Field(ge=1, le=3650)] = Field(
        15, description="how long Prometheus keeps samples"
    )


class GrafanaSettings(ConfigModel):
    """Grafana as published (`grafana/grafana`), its database on a named volume."""

    # The dashboard file's schemaVersion (41) is the one this release writes.
    image: ImageRef = Field(
        "grafana/grafana:12.1.1",
        description=(
            "Grafana image, run as published (data source, dashboard and admin password are "
            "uploaded)"
        ),
    )
    port: Port = Field(3000, description="host port of Grafana (`grafana_url`)")
    name: DnsLabel = Field("vllm-grafana", description="Grafana container name")
    volume: DnsLabel = Field("vllm-grafana-data", description="named volume of Grafana's database")


class LbExporterSettings(ConfigModel):
    """The load balancer's metrics exporter: our stdlib-only script on the official Python image."""

    image: ImageRef = Field(
        "python:3.12.11-slim-bookworm",
        description="Python image the load balancer's exporter script runs on",
    )
    name: DnsLabel = Field(
        "vllm-lb-exporter",
        description=("exporter container name (nginx sends it one syslog line per request)"),
    )


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

    ca_material: PemCertificate | None = Field(
        None, description="PEM CA of a `tcp://` engine (pulumi-docker `ca_material`)"
    )
    cert_material: PemCertificate | None = Field(
        None, description="PEM client certificate (`cert_material`)"
    )
    key_material: PemPrivateKey | None = Field(
        None,
        description=(
            "PEM client key (`key_material`), **secret** (`pulumi config set --secret --path "
            "'hosts[0].tls.keyMaterial' < key.pem`)"
        ),
    )
    cert_path: LocalPath | None = Field(
        None,
        description=(
            "or a directory with `ca.pem`, `cert.pem`, `key.pem` where `pulumi up` runs "
            "(`cert_path`)"
        ),
    )

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

    name: DnsLabel = Field(
        description=(
            "the host's name (DNS-safe): in replica names `<prefix>-<name>-<i>`, resource names "
            "and outputs"
        )
    )
    docker_host: DockerEndpoint = Field(
        description=(
            "its engine: `unix:///var/run/docker.sock` (this machine), `ssh://user@host`, or "
            "`tcp://host:2376` with `tls`"
        )
    )
    address: HostName = Field(
        description=(
            "IP or name the load balancer reaches this host's replicas on (and the host in their "
            "URLs)"
        )
    )
    bind_address: IpAddress | None = Field(
        None,
        description=(
            "address its replica ports are published on (default: `address`; required if "
            "`address` is a name); never `0.0.0.0` by default"
        ),
    )
    replicas: Annotated[Int, Field(ge=1, le=64)] | None = Field(
        None, description=("replicas on this host (default: one per `gpus` / `cpuSets` entry)")
    )
    gpus: tuple[tuple[GpuId, ...], ...] | None = Field(
        None,
        description=("GPU ids per replica on this host, e.g. `[[0],[1]]`; default consecutive"),
    )
    cpu_sets: tuple[CpuSet, ...] | None = Field(
        None, description='CPU backend: cores per replica on this host, e.g. `["0-3"]`'
    )
    base_port: Port | None = Field(
        None, description=("its replica i is published on `basePort + i` (default: `basePort`)")
    )
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

    enabled: bool = Field(
        False,
        description=(
            "deploy Prometheus, Grafana and the load balancer's metrics exporter (see "
            "[monitoring.md](monitoring.md))"
        ),
    )
    bind_address: IpAddress = Field(
        "127.0.0.1", description=("host address Prometheus' and Grafana's ports are published on")
    )
    keep_data_on_destroy: bool = Field(
        True, description="keep the Prometheus and Grafana volumes on `pulumi destroy`"
    )
    prometheus: PrometheusSettings = PrometheusSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    lb_exporter: LbExporterSettings = LbExporterSettings()
