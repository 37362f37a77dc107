"""What each step process is told: one frozen dataclass per step, sent as JSON.

The plan builds a spec, the deployment passes it in `SPEC_ENV` and runs
`python -m components.steps.<name>`, and the step reads it back typed
(`read_spec`): a number stays a number, no flag is written twice. Secrets never
enter a spec (they keep their own variables). Plain data, so steps import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import TypeAdapter

SPEC_ENV = "VLLM_NGINX_STEP_SPEC"
DOCKER_TLS_SECRET_ENV = {
    "ca": "VLLM_NGINX_DOCKER_CA",
    "cert": "VLLM_NGINX_DOCKER_CERT",
    "key": "VLLM_NGINX_DOCKER_KEY",
}
"""Where a host's TLS material reaches a step, per part (secrets keep their own variables)."""

ROTATION_LABEL = "vllm-nginx/rotation"
"""On a canary's pods (`in`) and in their Services' selectors: the canary step sets a worse
canary's `out`, and its Service selects no pod (docs/kubernetes.md, "The canary")."""
IN_ROTATION, OUT_OF_ROTATION = "in", "out"

Spec = TypeVar("Spec")


def encode(spec: object) -> str:
    """The spec as the JSON the step reads (field order kept, so it is stable)."""
    return TypeAdapter(type(spec)).dump_json(spec).decode()


def decode(kind: type[Spec], text: str) -> Spec:
    """A spec back from its JSON, every field checked against its type."""
    return TypeAdapter(kind).validate_json(text)


def read_spec(kind: type[Spec], environ: Mapping[str, str] = os.environ) -> Spec:
    """The spec this step process was started with (KeyError when none)."""
    return decode(kind, environ[SPEC_ENV])


@dataclass(frozen=True)
class ReadinessSpec:
    """Wait until these replicas serve (components.steps.readiness)."""

    replicas: tuple[str, ...]
    probes: Mapping[str, str]
    """Replica -> its /health as reached from here (else Docker's health status)."""
    timeout_seconds: int
    progress_seconds: int


@dataclass(frozen=True)
class VerifySpec:
    """The balancer lists these names, and with `probe` serves each (components.steps.verify)."""

    url: str
    models: tuple[str, ...]
    timeout_seconds: int
    embeddings: tuple[str, ...] = ()
    probe: bool = False


@dataclass(frozen=True)
class OtherBalancer:
    """Another nginx with the same config (a standby's), on an engine of its own."""

    name: str
    engine_env: Mapping[str, str]
    """`DOCKER_HOST` and Docker's TLS variables of its engine, as its own steps get them."""
    tls_env: Mapping[str, str] = field(default_factory=dict)
    """TLS material's variable as the step's client reads it -> where this process has it."""


@dataclass(frozen=True)
class RolloutSpec:
    """One replica's way out of nginx (drain) and back in (resume)."""

    lb: str
    """nginx on the engine of the step's own environment."""
    replica: str
    port: int
    upstream: str
    """Its `server` lines' host:port in nginx.conf."""
    drain_seconds: int
    """stopGraceSeconds: how long a drain waits for requests to end."""
    resume_seconds: int
    """readyTimeoutSeconds: how long a resume waits for it to serve."""
    probe: str
    """Its /health as reached from here."""
    vllm_drains: bool
    """vLLM finishes its requests on SIGTERM: the drain only takes it out."""
    replica_engine: str | None = None
    """Its engine when not nginx's and reachable without TLS material."""
    other_balancers: tuple[OtherBalancer, ...] = ()
    """The same edit in each of these too (a standby); a spec from before has none."""


@dataclass(frozen=True)
class WatchedReplica:
    name: str
    metrics_url: str
    upstream: str


@dataclass(frozen=True)
class CanarySpec:
    """The first wave against the replicas not yet replaced (`rollout.canary*`)."""

    lb: str
    """nginx on the engine of the step's own environment."""
    canary: tuple[WatchedReplica, ...]
    baseline: tuple[WatchedReplica, ...]
    seconds: int
    max_ttft_ratio: float
    max_error_rate_increase: float
    min_requests: int
    without_traffic: str
    max_wait_seconds: int
    progress_seconds: float = 5.0
    other_balancers: tuple[OtherBalancer, ...] = ()
    """A worse canary is taken out of these too (a standby)."""


@dataclass(frozen=True)
class KubeCanarySpec:
    """A pool's first wave (a StatefulSet of its own) against its other StatefulSet's
    replicas, through the cluster's API server (`rollout.canary*`)."""

    kubeconfig: str | None
    context: str | None
    namespace: str
    canary_workload: str
    rest_workload: str
    canary: tuple[WatchedReplica, ...]
    """`metrics_url`: the API server's proxy path to the replica's Service; `upstream`: its pod."""
    baseline: tuple[WatchedReplica, ...]
    seconds: int
    max_ttft_ratio: float
    max_error_rate_increase: float
    min_requests: int
    without_traffic: str
    max_wait_seconds: int
    progress_seconds: float = 5.0


@dataclass(frozen=True)
class ReloadSpec:
    """The nginx container to put new files into (they come in their own variable)."""

    lb: str


@dataclass(frozen=True)
class DownloadSpec:
    """One job that fetches these repositories into the model cache."""

    models: tuple[str, ...]
    name: str
    env: Mapping[str, str]
    timeout_seconds: int
    progress_seconds: int
    image: str = ""
    """Filled in by the deployment (only Pulumi knows the image's id)."""
    volumes: Mapping[str, str] = field(default_factory=dict)
    """Source -> mount path; filled in by the deployment (the cache's name)."""


@dataclass(frozen=True)
class FitReplica:
    name: str
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class FitSpec:
    """The fit check of one engine's replicas of one pool (components.steps.fit)."""

    model: str
    name: str
    env: Mapping[str, str]
    backend: str
    tensor_parallel_size: int
    replicas: tuple[FitReplica, ...]
    extra_args: tuple[str, ...]
    warn_above_percent: int
    cpu_kvcache_gb: int
    config_key: str = ""
    """'models[1].', so that advice names 'models[1].tensorParallelSize'; ''."""
    gpus_key: str | None = None
    """The key giving these replicas their GPUs where it is not `<config_key>gpus`."""
    image: str = ""
    volumes: Mapping[str, str] = field(default_factory=dict)
