"""What to run, as plain data: the deployment before any engine sees it.

The plan is computed from validated settings alone, so it can be printed,
compared and tested without Pulumi, and the same plan could drive another
engine than pulumi-docker. Secret values never enter the plan: a replica lists
the *names* of the secret environment variables it needs, and the Pulumi shell
joins them with the secret values.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.config.sections import Backend, HostSettings, Upstream
from components.config.settings import Placement, Settings
from components.config.values import format_cpu_set
from components.lb.nginx_conf import (
    CONTAINER_API_KEY_MAP,
    CONTAINER_TLS_FILES,
    NginxRuntime,
    render_extra_files,
    render_nginx_config,
)
from components.plan.monitoring import MonitoringPlan, build_monitoring_plan
from components.steps.engine import DOCKER_TLS_SECRET_ENV

VLLM_PORT = 8000
"""Port vLLM listens on inside its container, as in the guide."""

HF_CACHE_MOUNT = "/root/.cache/huggingface"
COMPILE_CACHE_MOUNT = "/root/.cache/vllm"
"""`VLLM_CACHE_ROOT`'s default in vLLM's images: torch.compile / Inductor / Triton
artifacts keyed by a hash of the model and compile config (see README)."""
NGINX_CONFIG_PATH = "/etc/nginx/nginx.conf"
NGINX_PORT = 80

HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"
LB_CERTIFICATE_ENV = "VLLM_NGINX_LB_CERTIFICATE"
"""The verify step trusts the load balancer's own certificate (it may be self-signed)."""
NGINX_TLS_PORT = 443

# Names of the secret values the shell joins with the plan.
API_KEY_MAP_SECRET = "api_key_map"
TLS_CERTIFICATE_SECRET = "tls_certificate"
TLS_KEY_SECRET = "tls_key"

VLLM_ENTRYPOINT = ("vllm", "serve")
"""Declared rather than inherited, so every vLLM image (GPU, CPU, built from a
checkout) starts the same way and takes the model as its first argument;
`--model` is deprecated by `vllm serve`."""

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
class DownloadPlan:
    """The one-shot job that fills the model cache before any replica starts.

    Its argv lacks the image, which only Pulumi knows (an image id or digest):
    `argv(image)` adds it. The token reaches it as a secret environment variable
    of the local command and goes into the job container as a file.
    """

    name: str
    model: str
    env: Mapping[str, str]
    timeout_seconds: int
    progress_seconds: int
    secret_env: tuple[str, ...]
    python: str

    def argv(self, image: str, volumes: tuple[str, ...]) -> tuple[str, ...]:
        words = [
            self.python,
            "-m",
            "components.steps.download",
            "--image",
            image,
            "--model",
            self.model,
            "--name",
            self.name,
            "--timeout",
            str(self.timeout_seconds),
            "--progress-seconds",
            str(self.progress_seconds),
        ]
        for volume in volumes:
            words += ["--volume", volume]
        for key, value in self.env.items():
            words += ["--env", f"{key}={value}"]
        return tuple(words)

    def command(self, image: str, volumes: tuple[str, ...]) -> str:
        return shlex.join(self.argv(image, volumes))


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
    host: str | None = None
    """The 'hosts' entry it runs on (None: the one engine of a stack without 'hosts')."""
    route: Upstream | None = None
    """How nginx reaches it from another engine: its host's address and published port."""

    @property
    def upstream(self) -> Upstream:
        """By container name on the load balancer's network, else by `route`."""
        return self.route or Upstream(host=self.name, port=self.container_port)


@dataclass(frozen=True)
class CheckPlan:
    """A command run where `pulumi up` runs; a non-zero exit fails the update."""

    name: str
    argv: tuple[str, ...]
    secret_env: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class SecretUpload:
    """A file put into a container whose content is a secret: the plan names the
    secret, the Pulumi shell supplies the value (and keeps it a Pulumi secret)."""

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
    secret_uploads: tuple[SecretUpload, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    """Other plain files the config reads (the njs router of `prefix_affinity`)."""
    config_path: str = NGINX_CONFIG_PATH
    container_port: int = NGINX_PORT
    command: tuple[str, ...] = NGINX_COMMAND
    stop_signal: str = NGINX_STOP_SIGNAL
    stop_grace_seconds: int = 30


def host_tls_secret(host: str, part: str) -> str:
    """The name of one host's TLS material among the secrets the shell supplies."""
    return f"docker_tls_{part}:{host}"


@dataclass(frozen=True)
class HostPlan:
    """One Docker engine and what runs on it; the steps that talk to it get its env.

    A stack without 'hosts' has one, unnamed: the engine of the default
    provider (`docker:host`), and resources named as they always were.
    """

    name: str | None
    docker_host: str | None
    replicas: tuple[ReplicaPlan, ...]
    download: DownloadPlan | None
    ready: CheckPlan
    runs_load_balancer: bool
    engine_env: Mapping[str, str] = field(default_factory=dict)
    """`DOCKER_HOST` and, for a certificate directory, Docker's TLS variables."""
    engine_secret_env: Mapping[str, str] = field(default_factory=dict)
    """Variable -> name of the secret: the TLS material the steps' client reads."""
    tls_cert_path: str | None = None
    tls_materials: bool = False

    @property
    def resource_prefix(self) -> str:
        """What goes between the component's name and a resource's own name."""
        return f"{self.name}-" if self.name is not None else ""


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
    drain: tuple[str, ...]
    resume: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    network: str
    cache: CachePlan
    compile_cache: CompileCachePlan | None
    vllm_image: ImagePlan
    download: DownloadPlan | None
    replicas: tuple[ReplicaPlan, ...]
    ready: CheckPlan
    rollouts: tuple[RolloutPlan, ...]
    load_balancer: LoadBalancerPlan
    verify: CheckPlan
    served_model_name: str
    restart_policy: str
    monitoring: MonitoringPlan | None = None
    hosts: tuple[HostPlan, ...] = ()
    """Every engine with its replicas, download and readiness steps; `download`
    and `ready` above are the first one's (the only one without 'hosts')."""


def _proxy_vars(settings: Settings) -> dict[str, str]:
    """The guide's proxy settings, as build args (`http_proxy`, ...)."""
    pairs = (
        ("http_proxy", settings.proxy.http),
        ("https_proxy", settings.proxy.https),
        ("no_proxy", settings.proxy.no),
    )
    return {key: value for key, value in pairs if value is not None}


def _proxy_env(settings: Settings) -> dict[str, str]:
    """Both spellings in containers, since tools disagree on which one they read."""
    lower = _proxy_vars(settings)
    return {**lower, **{key.upper(): value for key, value in lower.items()}}


def _resolve(path: str, base: Path) -> str:
    """`~` and relative paths mean the same whatever directory Pulumi runs in."""
    return str((base / os.path.expanduser(path)).resolve())


def _vllm_image(settings: Settings, project_dir: Path) -> ImagePlan:
    image = settings.vllm_image
    if image.build is None:
        assert image.prebuilt is not None
        return ImagePlan(
            name=image.prebuilt,
            pull_timeout_minutes=image.pull_timeout_minutes,
            keep_locally=image.keep_on_destroy,
        )
    build = image.build
    args = {key.lower(): value for key, value in _proxy_env(settings).items() if key.islower()}
    args.update(build.args)
    return ImagePlan(
        name=build.tag,
        build=ImageBuild(
            context=_resolve(build.context, project_dir),
            dockerfile=build.dockerfile,
            target=build.target,
            args=args,
        ),
    )


def _secret_env(settings: Settings) -> tuple[str, ...]:
    """Names of the secret variables this deployment sets (values stay out of the plan)."""
    return tuple(
        name
        for name, value in ((HF_TOKEN_ENV, settings.hf_token), (API_KEY_ENV, settings.api_key))
        if value is not None
    )


def _omp_bind(cores: tuple[int, ...], ranks: int) -> str:
    """One core list per tensor-parallel rank, `|`-separated, as vLLM's CPU backend reads it."""
    size = len(cores) // ranks
    return "|".join(format_cpu_set(cores[r * size : (r + 1) * size]) for r in range(ranks))


def _replica(settings: Settings, index: int, at: Placement) -> ReplicaPlan:
    gpus, cores = at.gpus, at.cores
    command = (
        settings.model,
        "--served-model-name",
        settings.model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
        *settings.extra_args,
    )
    env = _proxy_env(settings)
    cpu = settings.backend is Backend.CPU
    if cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu.kvcache_space_gb)
        env["VLLM_CPU_OMP_THREADS_BIND"] = (
            _omp_bind(cores, settings.tensor_parallel_size) if cores else "nobind"
        )
    env.update(settings.extra_env)
    if not is_local_model(settings.model):
        # The download step filled the cache: a replica that still finds a file
        # missing must fail, not fetch it (N replicas would download N times).
        env["HF_HUB_OFFLINE"] = "1"
    # The token is the download step's alone; a replica only needs the API key.
    secret_env = tuple(name for name in _secret_env(settings) if name != HF_TOKEN_ENV)
    host_port = at.port
    hc = settings.health_check
    bind_address, public_host, route = settings.bind_address, settings.public_host, None
    if at.host is not None:
        bind_address, public_host = at.host.publish_address, at.host.address
        if at.host is not settings.load_balancer_host:
            # Another engine: nginx reaches it where it is published, not by name.
            route = Upstream(host=at.host.address, port=host_port)
    return ReplicaPlan(
        index=index,
        name=at.name,
        host=at.host.name if at.host is not None else None,
        route=route,
        bind_address=bind_address,
        host_port=host_port,
        gpu_ids=tuple(str(g) for g in gpus),
        cpu_set=format_cpu_set(cores) if cores else None,
        capabilities=CPU_CAPABILITIES if cpu else (),
        security_opts=CPU_SECURITY_OPTS if cpu else (),
        command=command,
        env=env,
        secret_env=secret_env,
        stop_grace_seconds=settings.stop_grace_seconds,
        health_check=HealthCheckPlan(
            test=HEALTH_PROBE,
            interval_seconds=hc.interval_seconds,
            timeout_seconds=hc.timeout_seconds,
            retries=hc.retries,
            start_period_seconds=settings.ready_timeout_seconds,
        ),
        url=f"http://{_url_host(public_host, bind_address)}:{host_port}",
    )


def _url_host(public_host: str, bind_address: str) -> str:
    """Where a client on the deploying machine reaches a published port."""
    if bind_address.startswith("127."):
        return bind_address
    return public_host


def is_local_model(model: str) -> bool:
    """A path in the container (vLLM loads it from disk): nothing to download."""
    return model.startswith("/")


def _download(settings: Settings, python: str) -> DownloadPlan | None:
    if is_local_model(settings.model):
        return None
    env = _proxy_env(settings)
    # The job sees what the replicas see (HF_ENDPOINT, HF_HUB_ENABLE_HF_TRANSFER,
    # proxies), but must be online and must not find a token in its environment.
    env.update(
        (key, value)
        for key, value in settings.extra_env.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", HF_TOKEN_ENV)
    )
    return DownloadPlan(
        name=f"{settings.name_prefix}-download",
        model=settings.model,
        env=env,
        timeout_seconds=settings.ready_timeout_seconds,
        progress_seconds=settings.progress_interval_seconds,
        secret_env=(HF_TOKEN_ENV,) if settings.hf_token is not None else (),
        python=python,
    )


def _ready_check(
    name: str, replicas: tuple[ReplicaPlan, ...], settings: Settings, python: str
) -> CheckPlan:
    # Each replica's /health where it is published, asked as soon as it can
    # answer; its name alone falls back on Docker's health status (components.steps.readiness).
    probes = [("--probe", f"{r.name}={r.url}/health") for r in replicas]
    return CheckPlan(
        name=name,
        argv=(
            python,
            "-m",
            "components.steps.readiness",
            "--timeout",
            str(settings.ready_timeout_seconds),
            "--progress-seconds",
            str(settings.progress_interval_seconds),
            *(word for probe in probes for word in probe),
            *(r.name for r in replicas),
        ),
        # Not used by the check, only redacted from the replica logs it prints.
        secret_env=_secret_env(settings),
    )


def _rollouts(
    settings: Settings, replicas: Sequence[ReplicaPlan], lb_name: str, python: str
) -> tuple[RolloutPlan, ...]:
    size = max(1, len(replicas) // 2)
    engines = {h.name: h for h in settings.hosts or ()}
    lb_host = settings.load_balancer_host if settings.hosts is not None else None

    def elsewhere(replica: ReplicaPlan) -> tuple[str, ...]:
        """A replica on another engine than nginx's: the drain reads its metrics there."""
        host = engines.get(replica.host) if replica.host is not None else None
        if host is None or lb_host is None or host is lb_host:
            return ()
        if host.tls is not None:
            return ()  # TLS material stays in the provider; the drain waits the grace period
        return ("--replica-engine", host.docker_host)

    def argv(action: str, replica: ReplicaPlan, timeout: int) -> tuple[str, ...]:
        return (
            python,
            "-m",
            "components.steps.rollout",
            action,
            "--lb",
            lb_name,
            "--replica",
            replica.name,
            "--port",
            str(replica.container_port),
            "--upstream",
            str(replica.upstream),
            "--timeout",
            str(timeout),
            *elsewhere(replica),
        )

    return tuple(
        RolloutPlan(
            replica=r.name,
            wave=index // size,
            drain=argv("drain", r, settings.stop_grace_seconds),
            resume=(
                *argv("resume", r, settings.ready_timeout_seconds),
                "--probe",
                f"{r.url}/health",
            ),
        )
        for index, r in enumerate(replicas)
    )


def engine_env(host: HostSettings) -> tuple[dict[str, str], dict[str, str]]:
    """What docker-py's `from_env` (and our TLS-material reader) need to reach an engine."""
    env = {"DOCKER_HOST": host.docker_host}
    secret_env: dict[str, str] = {}
    tls = host.tls
    if tls is not None and tls.cert_path is not None:
        env["DOCKER_TLS_VERIFY"] = "1"
        env["DOCKER_CERT_PATH"] = os.path.expanduser(tls.cert_path)
    elif tls is not None:
        secret_env = {
            var: host_tls_secret(host.name, part) for part, var in DOCKER_TLS_SECRET_ENV.items()
        }
    return env, secret_env


def _hosts(
    settings: Settings, replicas: tuple[ReplicaPlan, ...], python: str
) -> tuple[HostPlan, ...]:
    download = _download(settings, python)
    if settings.hosts is None:
        return (
            HostPlan(
                name=None,
                docker_host=None,
                replicas=replicas,
                download=download,
                ready=_ready_check("replicas-ready", replicas, settings, python),
                runs_load_balancer=True,
            ),
        )
    plans = []
    for host in settings.hosts:
        mine = tuple(r for r in replicas if r.host == host.name)
        env, secret_env = engine_env(host)
        plans.append(
            HostPlan(
                name=host.name,
                docker_host=host.docker_host,
                replicas=mine,
                download=download,
                ready=_ready_check(f"{host.name}-replicas-ready", mine, settings, python),
                runs_load_balancer=host is settings.load_balancer_host,
                engine_env=env,
                engine_secret_env=secret_env,
                tls_cert_path=env.get("DOCKER_CERT_PATH"),
                tls_materials=bool(secret_env),
            )
        )
    return tuple(plans)


def build_plan(settings: Settings, *, project_dir: Path, python: str = "python3") -> Plan:
    """Turn settings into the deployment: names, ports, GPUs, env, nginx config."""
    replicas = tuple(_replica(settings, i, at) for i, at in enumerate(settings.placements()))
    lb = settings.load_balancer
    # The key check and the TLS files live in files of their own, uploaded as
    # secrets: the main config stays plain text that can be printed and diffed.
    uploads: list[SecretUpload] = []
    if settings.api_key is not None:
        uploads.append(SecretUpload(CONTAINER_API_KEY_MAP, API_KEY_MAP_SECRET))
    if lb.tls:
        uploads.append(SecretUpload(CONTAINER_TLS_FILES.certificate, TLS_CERTIFICATE_SECRET))
        uploads.append(SecretUpload(CONTAINER_TLS_FILES.key, TLS_KEY_SECRET))
    listen_port = NGINX_TLS_PORT if lb.tls else NGINX_PORT
    monitoring = build_monitoring_plan(settings, {r.name: str(r.upstream) for r in replicas})
    runtime = NginxRuntime(
        listen_port=listen_port,
        tls=CONTAINER_TLS_FILES if lb.tls else None,
        api_key_map=CONTAINER_API_KEY_MAP if settings.api_key is not None else None,
        metrics_syslog=monitoring.lb_syslog if monitoring is not None else None,
    )
    nginx_config = render_nginx_config(lb, [r.upstream for r in replicas], runtime)
    scheme = "https" if lb.tls else "http"
    lb_host = settings.load_balancer_host
    public_host = lb_host.address if lb_host is not None else settings.public_host
    lb_url = f"{scheme}://{_url_host(public_host, lb.bind_address)}:{lb.port}"
    hosts = _hosts(settings, replicas, python)
    cache = settings.hf_cache
    compile_cache = settings.compile_cache
    return Plan(
        network=settings.network_name,
        cache=CachePlan(
            volume=cache.volume,
            host_path=os.path.expanduser(cache.host_path) if cache.host_path else None,
            keep_on_destroy=cache.keep_on_destroy,
        ),
        compile_cache=(
            CompileCachePlan(volume=compile_cache.volume, keep_on_destroy=cache.keep_on_destroy)
            if compile_cache.enabled
            else None
        ),
        vllm_image=_vllm_image(settings, project_dir),
        download=hosts[0].download,
        replicas=replicas,
        ready=hosts[0].ready,
        hosts=hosts,
        rollouts=_rollouts(settings, replicas, lb.name, python),
        load_balancer=LoadBalancerPlan(
            name=lb.name,
            image=ImagePlan(
                name=lb.image,
                pull_timeout_minutes=settings.vllm_image.pull_timeout_minutes,
                keep_locally=settings.vllm_image.keep_on_destroy,
            ),
            bind_address=lb.bind_address,
            host_port=lb.port,
            config=nginx_config,
            url=lb_url,
            secret_uploads=tuple(uploads),
            files=render_extra_files(lb, runtime),
            container_port=listen_port,
            stop_grace_seconds=settings.stop_grace_seconds,
        ),
        verify=CheckPlan(
            name="verify",
            argv=(
                python,
                "-m",
                "components.steps.verify",
                "--url",
                lb_url,
                "--model",
                settings.model_name,
                "--timeout",
                str(settings.verify_timeout_seconds),
            ),
            secret_env=tuple(
                name
                for name, value in (
                    (API_KEY_ENV, settings.api_key),
                    (LB_CERTIFICATE_ENV, settings.tls_certificate if lb.tls else None),
                )
                if value is not None
            ),
        ),
        served_model_name=settings.model_name,
        restart_policy=settings.restart_policy,
        monitoring=monitoring,
    )
