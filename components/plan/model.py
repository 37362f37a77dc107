"""What to run, as plain data: the plan's types and the constants they share.

The plan is computed from validated settings alone, so it can be printed,
compared and tested without Pulumi, and the same plan could drive another
engine than pulumi-docker. Secret values never enter the plan: a replica lists
the *names* of the secret environment variables it needs, and the deployment
joins them with the secret values.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from components.config.sections import Upstream
from components.config.settings import DEFAULT_POOL, LOCAL_ENGINE
from components.plan.monitoring import MonitoringPlan
from components.plan.specs import SPEC_ENV, DownloadSpec, FitSpec, encode

VLLM_PORT = 8000
"""Port vLLM listens on inside its container, as in the guide."""

HF_CACHE_MOUNT = "/root/.cache/huggingface"
COMPILE_CACHE_MOUNT = "/root/.cache/vllm"
"""`VLLM_CACHE_ROOT`'s default in vLLM's images: torch.compile / Inductor / Triton
artifacts keyed by a hash of the model and compile config (see docs/design.md)."""
NGINX_CONFIG_PATH = "/etc/nginx/nginx.conf"
NGINX_PORT = 80

HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"
LB_CERTIFICATE_ENV = "VLLM_NGINX_LB_CERTIFICATE"
"""The verify step trusts the load balancer's own certificate (it may be self-signed)."""
NGINX_TLS_PORT = 443

# Names of the secret values the deployment joins with the plan.
API_KEY_MAP_SECRET = "api_key_map"
TLS_CERTIFICATE_SECRET = "tls_certificate"
TLS_KEY_SECRET = "tls_key"

VLLM_ENTRYPOINT = ("vllm", "serve")
"""Declared rather than inherited, so every vLLM image (GPU, CPU, built from a checkout)
starts the same way and takes the model as its first argument, which `vllm serve`
requires with `--served-model-name` (docs/vllm.md, "Images" and "Command line")."""

NGINX_COMMAND = ("nginx", "-g", "daemon off;")
NGINX_STOP_SIGNAL = "SIGQUIT"
"""nginx finishes the requests in flight on SIGQUIT; declared so that any nginx
image (the official one, or a Debian one in tests) stops gracefully."""

CPU_CAPABILITIES = ("CAP_SYS_NICE",)
CPU_SECURITY_OPTS = ("label=disable", "seccomp=unconfined")
"""vLLM's CPU docs run containers like this: NUMA-aware allocation needs
`mbind`/`set_mempolicy`, which docker's default seccomp profile refuses. With
`--ipc host` the daemon adds `label=disable` to a container's options unless
one is given; declaring it keeps the read-back equal to what is declared."""

# python3 is in every vLLM image (and in our stand-in); curl is not guaranteed.
# /health needs no API key, and stays 200 while vLLM drains on SIGTERM: Docker's
# health status never takes a stopping replica out of nginx, the rotation step does.
HEALTH_PROBE = (
    "CMD",
    "python3",
    "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/health', "
    "timeout=4)",
)


@dataclass(frozen=True)
class ImageBuild:
    context: str
    dockerfile: str
    target: str | None
    args: Mapping[str, str]


@dataclass(frozen=True)
class ImagePlan:
    """An image by name; built locally when `build` is set, else pulled as published."""

    name: str
    build: ImageBuild | None = None
    pull_timeout_minutes: int = 20
    keep_locally: bool = True


@dataclass(frozen=True)
class CachePlan:
    volume: str | None
    host_path: str | None
    keep_on_destroy: bool
    mount_path: str = HF_CACHE_MOUNT


def go_duration(seconds: int) -> str:
    """Seconds as Go's `time.Duration.String()` writes them (`1800` -> `30m0s`).

    pulumi-docker reads a container's health check back in this form and has no
    diff suppression for it, so anything else (`1800s`) shows as a change on
    every `pulumi up`.
    """
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True)
class CompileCachePlan:
    volume: str
    keep_on_destroy: bool
    mount_path: str = COMPILE_CACHE_MOUNT


@dataclass(frozen=True)
class JobPlan:
    """A step that runs short containers of a pool's image on an engine (the
    download, the fit check). Its spec lacks the image and the cache's name,
    which only Pulumi knows: `environment(image, cache)` adds them. The token
    reaches it as a secret environment variable of the local command."""

    argv: tuple[str, ...]
    spec: DownloadSpec | FitSpec
    secret_env: tuple[str, ...]
    pool: str
    """The pool whose image runs it and whose name it takes."""
    step_name: str
    """Its resource's name after the engine's prefix: '<pool>-download', 'fit'."""
    mounts_cache: bool = True
    """The fit check reads the cache only for a model that is a path in it."""

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def environment(self, image: str, cache: str) -> dict[str, str]:
        volumes = {cache: HF_CACHE_MOUNT} if self.mounts_cache else {}
        return {SPEC_ENV: encode(replace(self.spec, image=image, volumes=volumes))}


@dataclass(frozen=True)
class DownloadPlan(JobPlan):
    """The one-shot job that fills the model cache before any replica starts;
    the token goes into the job container as a file."""

    spec: DownloadSpec
    pools: tuple[str, ...] = ()
    """Every pool whose replicas wait for it (a repository is fetched once)."""


@dataclass(frozen=True)
class FitPlan(JobPlan):
    """The fit check of one engine's replicas of one model pool (components.steps.fit).

    Per (engine, pool): a pool's replicas share its model, tensor-parallel
    size, vLLM arguments and image; each replica's GPUs are named in it.
    """

    spec: FitSpec


@dataclass(frozen=True)
class HealthCheckPlan:
    test: tuple[str, ...]
    interval_seconds: int
    timeout_seconds: int
    retries: int
    start_period_seconds: int
    start_interval_seconds: int = 0

    def durations(self) -> dict[str, str]:
        """The four durations in the form the provider reads back."""
        return {
            "interval": go_duration(self.interval_seconds),
            "timeout": go_duration(self.timeout_seconds),
            "start_period": go_duration(self.start_period_seconds),
            "start_interval": go_duration(self.start_interval_seconds),
        }


@dataclass(frozen=True)
class ReplicaPlan:
    index: int
    name: str
    bind_address: str
    host_port: int
    gpu_ids: tuple[str, ...]
    cpu_set: str | None
    command: tuple[str, ...]
    env: Mapping[str, str]
    secret_env: tuple[str, ...]
    health_check: HealthCheckPlan
    url: str
    capabilities: tuple[str, ...] = ()
    security_opts: tuple[str, ...] = ()
    stop_grace_seconds: int = 30
    entrypoint: tuple[str, ...] = VLLM_ENTRYPOINT
    container_port: int = VLLM_PORT
    # The guide's `--ipc host`: tensor-parallel workers share memory through the
    # host's /dev/shm. With it docker ignores `--shm-size`, so none is declared.
    ipc_mode: str = "host"
    host: str = LOCAL_ENGINE
    """The engine it runs on (`local` for a stack without 'hosts')."""
    route: Upstream | None = None
    """How nginx reaches it from another engine: its host's address and published port."""
    pool: str = DEFAULT_POOL
    """The pool it serves (`default` for a stack without 'models')."""

    @property
    def upstream(self) -> Upstream:
        """By container name on the load balancer's network, else by `route`."""
        return self.route or Upstream(host=self.name, port=self.container_port)


@dataclass(frozen=True)
class StepCall:
    """A step process run where `pulumi up` runs: `python -m <module>` and its spec."""

    argv: tuple[str, ...]
    spec: object

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def environment(self) -> dict[str, str]:
        """The spec in its variable (no secret is in it)."""
        return {SPEC_ENV: encode(self.spec)}


def step_argv(python: str, step: str, *words: str) -> tuple[str, ...]:
    return (python, "-m", f"components.steps.{step}", *words)


@dataclass(frozen=True)
class CheckPlan(StepCall):
    """A check (readiness, verify); a non-zero exit fails the update."""

    name: str
    secret_env: tuple[str, ...] = ()
    waits_for: tuple[str, ...] = ()
    """The replicas (by name) it checks, which it waits for."""


@dataclass(frozen=True)
class SecretUpload:
    """A file put into a container whose content is a secret: the plan names the
    secret, the deployment supplies the value (and keeps it a Pulumi secret)."""

    path: str
    secret: str


@dataclass(frozen=True)
class LoadBalancerPlan:
    name: str
    image: ImagePlan
    bind_address: str
    host_port: int
    config: str
    url: str
    reload: StepCall
    """`components.steps.lb_reload`: new files into the running nginx (they come
    in their own variable, a secret when one of them is)."""
    secret_uploads: tuple[SecretUpload, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    """Other plain files the config reads (the njs router of `prefix_affinity`)."""
    config_path: str = NGINX_CONFIG_PATH
    container_port: int = NGINX_PORT
    command: tuple[str, ...] = NGINX_COMMAND
    stop_signal: str = NGINX_STOP_SIGNAL
    stop_grace_seconds: int = 30


def host_tls_secret(host: str, part: str) -> str:
    """The name of one host's TLS material among the secrets the deployment supplies."""
    return f"docker_tls_{part}:{host}"


@dataclass(frozen=True)
class EngineImage:
    """A vLLM image pulled (or built) on one engine once, for the pools that run it."""

    resource: str
    """Its resource's name after the engine's prefix: 'vllm-image', '<pool>-vllm-image'."""
    image: ImagePlan
    pools: tuple[str, ...]


@dataclass(frozen=True)
class HostPlan:
    """One Docker engine and what runs on it; the steps that talk to it get its env.

    A stack without 'hosts' has one, `local`: the default provider's engine.
    """

    name: str
    resource_prefix: str
    """What goes between the component's name and a resource's own name."""
    own_provider: bool
    """A provider of its own; `local` uses Pulumi's default one (`docker:host`)."""
    docker_host: str | None
    replicas: tuple[ReplicaPlan, ...]
    ready: tuple[CheckPlan, ...]
    """One readiness check per pool with replicas here."""
    images: tuple[EngineImage, ...]
    """The vLLM images its replicas run: the stack's, then the pools' own."""
    runs_load_balancer: bool
    engine_env: Mapping[str, str] = field(default_factory=dict)
    """`DOCKER_HOST` and, for a certificate directory, Docker's TLS variables."""
    engine_secret_env: Mapping[str, str] = field(default_factory=dict)
    """Variable -> name of the secret: the TLS material the steps' client reads."""
    downloads: tuple[DownloadPlan, ...] = ()
    """Every download job on this engine: a repository is fetched once."""
    fits: tuple[FitPlan, ...] = ()
    """One fit check per pool with replicas on this engine, before that pool's
    download and replicas."""


@dataclass(frozen=True)
class RolloutPlan:
    """One replica's way out of and back into the load balancer during an update.

    `drain` runs before Pulumi stops the replica, `resume` after its new
    container exists (components.steps.rollout). Replicas are replaced in waves of at
    most half of them: a wave starts only when the previous one is back in
    rotation, so at least half serve throughout.
    """

    replica: str
    wave: int
    step: StepCall
    """`components.steps.rollout` with the replica's `RolloutSpec`."""
    pool: str = DEFAULT_POOL
    """Waves are counted per pool: a pool's update waits on none of another's."""
    balancer_secrets: Mapping[str, str] = field(default_factory=dict)
    """Variable -> secret: a standby's engine's TLS material (`RolloutSpec.other_balancers`)."""

    @property
    def drain(self) -> str:
        return shlex.join((*self.step.argv, "drain"))

    @property
    def resume(self) -> str:
        return shlex.join((*self.step.argv, "resume"))


@dataclass(frozen=True)
class PoolPlan:
    """One model pool: what it serves, where its replicas are, how it is checked."""

    name: str
    model: str
    served_name: str
    adapters: tuple[tuple[str, str], ...]
    """(name clients send, Hub id or path) of each LoRA adapter."""
    replicas: tuple[str, ...]
    embedding: bool
    """Served with vLLM's pooling runner: the verify step asks it for an embedding."""
    image: ImagePlan


@dataclass(frozen=True)
class CanaryPlan(StepCall):
    """The first wave of a rollout watched against the replicas not yet replaced.

    A step between the first wave's resume and the second wave's drains
    (components.steps.canary); only a rollout with a second wave has one.
    """

    name: str
    canary: tuple[str, ...]
    """The first wave's replicas."""
    baseline: tuple[str, ...]
    pool: str = DEFAULT_POOL
    """The pool whose rollout it watches."""
    balancer_secrets: Mapping[str, str] = field(default_factory=dict)
    """Variable -> secret: a standby's engine's TLS material (`CanarySpec.other_balancers`)."""


KEEPALIVED_CONFIG_PATH = "/etc/keepalived/keepalived.conf"
KEEPALIVED_COMMAND = (
    "keepalived",
    "--dont-fork",
    "--log-console",
    "--vrrp",
    "--use-file",
    KEEPALIVED_CONFIG_PATH,
)
"""In the foreground with its log on the console (`docker logs`), VRRP only (no LVS)."""
KEEPALIVED_CAPABILITIES = ("CAP_NET_ADMIN", "CAP_NET_BROADCAST", "CAP_NET_RAW")
"""Add and remove the address, send gratuitous ARP, VRRP's raw IP protocol 112; in the
form Docker stores and the provider reads back, else every `up` replaces keepalived
(docs/provider-inputs.md, `capabilities`)."""
KEEPALIVED_STOP_SECONDS = 10
"""Its stop's grace: on SIGTERM keepalived sends priority 0 and removes the address;
without a grace the provider's delete kills it at once, leaving the address on the host."""


@dataclass(frozen=True)
class BalancerPlan:
    """One of the two balancers: its host, its own URL and verify step, its keepalived."""

    host: str
    url: str
    """nginx at its own host's address: what its verify step checks."""
    verify: CheckPlan
    keepalived_name: str
    priority: int
    keepalived_config: str


@dataclass(frozen=True)
class StandbyPlan:
    virtual_address: str
    """With its prefix, as keepalived adds it."""
    url: str
    """The load balancer's URL at the floating address: what clients use."""
    image: ImagePlan
    balancers: tuple[BalancerPlan, BalancerPlan]
    capabilities: tuple[str, ...] = KEEPALIVED_CAPABILITIES
    command: tuple[str, ...] = KEEPALIVED_COMMAND
    config_path: str = KEEPALIVED_CONFIG_PATH
    stop_grace_seconds: int = KEEPALIVED_STOP_SECONDS


@dataclass(frozen=True)
class Plan:
    network: str
    cache: CachePlan
    compile_cache: CompileCachePlan | None
    vllm_image: ImagePlan
    replicas: tuple[ReplicaPlan, ...]
    rollouts: tuple[RolloutPlan, ...]
    load_balancer: LoadBalancerPlan
    verify: CheckPlan
    served_model_name: str
    restart_policy: str
    monitoring: MonitoringPlan | None = None
    pools: tuple[PoolPlan, ...] = ()
    """With 'models', every pool; empty for a single-model stack."""
    hosts: tuple[HostPlan, ...] = ()
    """Every engine with its replicas, downloads, fit and readiness checks."""
    pool_keys: tuple[tuple[str, str], ...] = ((DEFAULT_POOL, ""),)
    """Every pool and its resources' name prefix ('' for `default`), in the
    loader's order: a pool may wait for an earlier one's download."""
    canaries: tuple[CanaryPlan, ...] = ()
    """One canary step per rollout with a second wave (each pool's own); none
    with `rollout.canarySeconds` 0."""
    standby: StandbyPlan | None = None
    """With 'loadBalancer.standby': the second balancer and both keepalived (plan/standby.py)."""
