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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .nginx_config import NginxRuntime, render_nginx_config
from .settings import Backend, Settings, Upstream

VLLM_PORT = 8000
"""Port vLLM listens on inside its container, as in the guide."""

HF_CACHE_MOUNT = "/root/.cache/huggingface"
NGINX_CONFIG_PATH = "/etc/nginx/nginx.conf"
NGINX_PORT = 80

HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"

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
    """An image by name; built locally when `build` is set, else used as published."""

    name: str
    build: ImageBuild | None = None


@dataclass(frozen=True)
class CachePlan:
    volume: str | None
    host_path: str | None
    keep_on_destroy: bool
    mount_path: str = HF_CACHE_MOUNT


@dataclass(frozen=True)
class HealthCheckPlan:
    test: tuple[str, ...]
    interval_seconds: int
    timeout_seconds: int
    retries: int
    start_period_seconds: int


@dataclass(frozen=True)
class ReplicaPlan:
    index: int
    name: str
    bind_address: str
    host_port: int
    gpus: str | None
    command: tuple[str, ...]
    env: Mapping[str, str]
    secret_env: tuple[str, ...]
    shm_size_mb: int
    health_check: HealthCheckPlan
    url: str
    container_port: int = VLLM_PORT
    ipc_mode: str = "host"

    @property
    def upstream(self) -> Upstream:
        return Upstream(host=self.name, port=self.container_port)


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
class LoadBalancerPlan:
    name: str
    image: ImagePlan
    bind_address: str
    host_port: int
    config: str
    url: str
    config_path: str = NGINX_CONFIG_PATH
    container_port: int = NGINX_PORT


@dataclass(frozen=True)
class Plan:
    network: str
    cache: CachePlan
    vllm_image: ImagePlan
    replicas: tuple[ReplicaPlan, ...]
    first_ready: CheckPlan
    all_ready: CheckPlan | None
    load_balancer: LoadBalancerPlan
    verify: CheckPlan
    served_model_name: str
    restart_policy: str


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
        return ImagePlan(name=image.prebuilt)
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


def _replica(settings: Settings, index: int, gpus: tuple[int, ...]) -> ReplicaPlan:
    command = (
        "--model",
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
    if settings.backend is Backend.CPU:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu.kvcache_space_gb)
        env["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpu.omp_threads_bind
    if index > 0:
        # Replica 0 filled the cache; the others must not download again.
        env["HF_HUB_OFFLINE"] = "1"
    env.update(settings.extra_env)
    secret_env = _secret_env(settings)
    host_port = settings.base_port + index
    hc = settings.health_check
    return ReplicaPlan(
        index=index,
        name=f"{settings.name_prefix}{index}",
        bind_address=settings.bind_address,
        host_port=host_port,
        gpus=("device=" + ",".join(str(g) for g in gpus)) if gpus else None,
        command=command,
        env=env,
        secret_env=secret_env,
        shm_size_mb=settings.shm_size_mb,
        health_check=HealthCheckPlan(
            test=HEALTH_PROBE,
            interval_seconds=hc.interval_seconds,
            timeout_seconds=hc.timeout_seconds,
            retries=hc.retries,
            start_period_seconds=settings.ready_timeout_seconds,
        ),
        url=f"http://{_url_host(settings.public_host, settings.bind_address)}:{host_port}",
    )


def _url_host(public_host: str, bind_address: str) -> str:
    """Where a client on the deploying machine reaches a published port."""
    if bind_address.startswith("127."):
        return bind_address
    return public_host


def _ready_check(
    name: str, containers: tuple[str, ...], settings: Settings, python: str
) -> CheckPlan:
    return CheckPlan(
        name=name,
        argv=(
            python,
            "-m",
            "components.gate",
            "--timeout",
            str(settings.ready_timeout_seconds),
            *containers,
        ),
        # Not used by the gate, only redacted from the replica logs it prints.
        secret_env=_secret_env(settings),
    )


def build_plan(settings: Settings, *, project_dir: Path, python: str = "python3") -> Plan:
    """Turn settings into the deployment: names, ports, GPUs, env, nginx config."""
    groups = settings.gpu_groups()
    replicas = tuple(_replica(settings, i, groups[i]) for i in range(settings.replicas))
    lb = settings.load_balancer
    nginx_config = render_nginx_config(
        lb,
        [r.upstream for r in replicas],
        NginxRuntime(listen_port=NGINX_PORT),
    )
    lb_url = f"http://{_url_host(settings.public_host, lb.bind_address)}:{lb.port}"
    names = tuple(r.name for r in replicas)
    cache = settings.hf_cache
    return Plan(
        network=settings.network_name,
        cache=CachePlan(
            volume=cache.volume,
            host_path=os.path.expanduser(cache.host_path) if cache.host_path else None,
            keep_on_destroy=cache.keep_on_destroy,
        ),
        vllm_image=_vllm_image(settings, project_dir),
        replicas=replicas,
        first_ready=_ready_check(f"{names[0]}-ready", names[:1], settings, python),
        all_ready=(
            _ready_check("replicas-ready", names[1:], settings, python) if len(names) > 1 else None
        ),
        load_balancer=LoadBalancerPlan(
            name=lb.name,
            image=ImagePlan(
                name=f"{lb.name}:local",
                build=ImageBuild(
                    context=str(project_dir / "docker" / "nginx"),
                    dockerfile="Dockerfile",
                    target=None,
                    args={"BASE_IMAGE": lb.base_image},
                ),
            ),
            bind_address=lb.bind_address,
            host_port=lb.port,
            config=nginx_config,
            url=lb_url,
        ),
        verify=CheckPlan(
            name="verify",
            argv=(
                python,
                "-m",
                "components.verify",
                "--url",
                lb_url,
                "--model",
                settings.model_name,
                "--timeout",
                str(settings.verify_timeout_seconds),
            ),
            secret_env=(API_KEY_ENV,) if settings.api_key is not None else (),
        ),
        served_model_name=settings.model_name,
        restart_policy=settings.restart_policy,
    )
