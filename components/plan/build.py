"""Settings in, `Plan` out: every name, port, GPU, command line and config decided here.

Pure and deterministic, so `components.cli.check` prints exactly what `pulumi up`
will declare, and the tests check it without Pulumi.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from components.config.sections import (
    Backend,
    ImageSettings,
    RolloutSettings,
    Upstream,
)
from components.config.settings import DEFAULT_POOL, Engine, Placement, Pool, Settings
from components.config.values import format_cpu_set
from components.lb.keys import KeyPolicy
from components.lb.names import CONTAINER_API_KEY_MAP, CONTAINER_TLS_FILES
from components.lb.nginx_conf import NginxRuntime, render_extra_files, render_nginx_config
from components.lb.pools import ModelPool, model_pool
from components.plan.fit_check import fit_plan
from components.plan.model import (
    API_KEY_ENV,
    API_KEY_MAP_SECRET,
    CPU_CAPABILITIES,
    CPU_SECURITY_OPTS,
    HEALTH_PROBE,
    HF_TOKEN_ENV,
    LB_CERTIFICATE_ENV,
    NGINX_PORT,
    NGINX_TLS_PORT,
    TLS_CERTIFICATE_SECRET,
    TLS_KEY_SECRET,
    VLLM_PORT,
    CachePlan,
    CanaryPlan,
    CheckPlan,
    CompileCachePlan,
    DownloadPlan,
    EngineImage,
    FitPlan,
    HealthCheckPlan,
    HostPlan,
    ImageBuild,
    ImagePlan,
    LoadBalancerPlan,
    Plan,
    PoolPlan,
    ReplicaPlan,
    RolloutPlan,
    SecretUpload,
    StepCall,
    host_tls_secret,
    step_argv,
)
from components.plan.monitoring import build_monitoring_plan
from components.plan.specs import (
    DOCKER_TLS_SECRET_ENV,
    CanarySpec,
    DownloadSpec,
    OtherBalancer,
    ReadinessSpec,
    ReloadSpec,
    RolloutSpec,
    VerifySpec,
    WatchedReplica,
)
from components.plan.standby import build_standby_plan

OtherBalancers = tuple[OtherBalancer, ...]


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


def _vllm_image(
    settings: Settings, project_dir: Path, image: ImageSettings | None = None
) -> ImagePlan:
    image = image or settings.vllm_image
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


def is_embedding(args: Sequence[str]) -> bool:
    """Served by vLLM's pooling runner, as its extraArgs say (docs/vllm.md): with
    `--runner auto` vLLM decides from the model's architecture, which the plan cannot
    read before the download, so an embedding pool says so (docs/model-pools.md)."""
    words = [w for arg in args for w in arg.split("=", 1)]
    pairs = set(itertools.pairwise(words))
    return bool(pairs & {("--runner", "pooling"), ("--convert", "embed")})


def _lora_args(pool: Pool) -> tuple[str, ...]:
    """vLLM's LoRA options for a pool's adapters (docs/vllm.md, LoRA adapters).

    A Hub id as an adapter's path is resolved by vLLM with `snapshot_download`,
    which offline returns the snapshot the download step put in the cache.
    `--max-loras` lets every adapter be in one batch; extraArgs after it win."""
    if not pool.adapters:
        return ()
    return (
        "--enable-lora",
        "--max-loras",
        str(len(pool.adapters)),
        "--lora-modules",
        *(f"{a.name}={a.model}" for a in pool.adapters),
    )


def _repos(pool: Pool) -> tuple[str, ...]:
    """What the download step fetches for a pool: its model and adapters from the Hub."""
    found = [pool.model, *(a.model for a in pool.adapters)]
    return tuple(dict.fromkeys(m for m in found if not is_local_model(m)))


def _replica(
    settings: Settings, pool: Pool, index: int, at: Placement, engine: Engine
) -> ReplicaPlan:
    gpus, cores = at.gpus, at.cores
    command = (
        pool.model,
        "--served-model-name",
        pool.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        "--tensor-parallel-size",
        str(pool.tensor_parallel_size),
        # 0, vLLM's default, aborts what it runs on SIGTERM (docs/vllm.md).
        "--shutdown-timeout",
        str(settings.shutdown_timeout_seconds),
        *_lora_args(pool),
        *pool.extra_args,
    )
    env = _proxy_env(settings)
    # A slow first load must fail at the readiness step's timeout, with its log,
    # not at vLLM's own (600 s; docs/vllm.md).
    env["VLLM_ENGINE_READY_TIMEOUT_S"] = str(settings.ready_timeout_seconds)
    cpu = settings.backend is Backend.CPU
    if cpu:
        # Always set: it has no default (docs/vllm.md); `nobind` is no pinning.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu.kvcache_space_gb)
        env["VLLM_CPU_OMP_THREADS_BIND"] = (
            _omp_bind(cores, pool.tensor_parallel_size) if cores else "nobind"
        )
    env.update(pool.extra_env)
    if _repos(pool):
        # The download step filled the cache: a replica that still finds a file
        # missing must fail, not fetch it (N replicas would download N times).
        env["HF_HUB_OFFLINE"] = "1"
    # The token is the download step's alone; a replica only needs the API key.
    secret_env = tuple(name for name in _secret_env(settings) if name != HF_TOKEN_ENV)
    host_port = at.port
    hc = settings.health_check
    bind_address, public_host = engine.publish_address, engine.address
    # Another engine than nginx's: nginx reaches it where it is published, not by name.
    # With a standby balancer every replica: both balancers run the same config.
    route = None
    if not engine.runs_load_balancer or settings.load_balancer.standby is not None:
        route = Upstream(host=public_host, port=host_port)
    return ReplicaPlan(
        index=index,
        name=at.name,
        host=engine.name,
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
        pool=pool.name,
    )


def _url_host(public_host: str, bind_address: str) -> str:
    """Where a client on the deploying machine reaches a published port."""
    if bind_address.startswith("127."):
        return bind_address
    return public_host


def is_local_model(model: str) -> bool:
    """A path in the container (vLLM loads it from disk): nothing to download."""
    return model.startswith("/")


def _downloads(settings: Settings, python: str) -> tuple[DownloadPlan, ...]:
    """One job per pool with something new to fetch; a repository is fetched once,
    and a pool whose repositories an earlier pool fetches waits for that one."""
    jobs: list[tuple[Pool, list[str], list[str]]] = []
    owner: dict[str, int] = {}
    """Repository -> the job that fetches it."""
    for pool in settings.pools():
        repos = _repos(pool)
        new = [repo for repo in repos if repo not in owner]
        if new:
            owner.update(dict.fromkeys(new, len(jobs)))
            jobs.append((pool, new, []))
        for job in dict.fromkeys(owner[repo] for repo in repos):
            jobs[job][2].append(pool.name)
    return tuple(
        _download(settings, pool, tuple(new), tuple(pools), python) for pool, new, pools in jobs
    )


def _download(
    settings: Settings,
    pool: Pool,
    repos: tuple[str, ...],
    pools: tuple[str, ...],
    python: str,
) -> DownloadPlan:
    return DownloadPlan(
        argv=step_argv(python, "download"),
        step_name=f"{pool.prefix}download",
        spec=DownloadSpec(
            name=f"{settings.name_prefix}-{pool.prefix}download",
            models=repos,
            env=_job_env(settings, pool),
            timeout_seconds=settings.ready_timeout_seconds,
            progress_seconds=settings.progress_interval_seconds,
        ),
        secret_env=(HF_TOKEN_ENV,) if settings.hf_token is not None else (),
        pool=pool.name,
        pools=pools,
    )


def _job_env(settings: Settings, pool: Pool) -> dict[str, str]:
    """What a pool's jobs that ask the hub (download, fit check) see: what its
    replicas see (HF_ENDPOINT, HF_HUB_ENABLE_HF_TRANSFER, proxies), but online
    and without a token in their environment."""
    env = _proxy_env(settings)
    env.update(
        (key, value)
        for key, value in pool.extra_env.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", HF_TOKEN_ENV)
    )
    return env


def _fits(
    settings: Settings, replicas: tuple[ReplicaPlan, ...], python: str
) -> tuple[FitPlan, ...]:
    """A fit check per pool with replicas among these (one engine's)."""
    fits = (
        fit_plan(
            settings,
            pool,
            tuple(r for r in replicas if r.pool == pool.name),
            # A local model asks no hub: the proxies alone.
            _job_env(settings, pool) if _repos(pool) else _proxy_env(settings),
            python,
        )
        for pool in settings.pools()
    )
    return tuple(fit for fit in fits if fit is not None)


def _ready_check(
    name: str, replicas: tuple[ReplicaPlan, ...], settings: Settings, python: str
) -> CheckPlan:
    # Each replica's /health where it is published, asked as soon as it can
    # answer; unreachable, Docker's health status (components.steps.readiness).
    return CheckPlan(
        name=name,
        waits_for=tuple(r.name for r in replicas),
        argv=step_argv(python, "readiness"),
        spec=ReadinessSpec(
            replicas=tuple(r.name for r in replicas),
            probes={r.name: f"{r.url}/health" for r in replicas},
            timeout_seconds=settings.ready_timeout_seconds,
            progress_seconds=settings.progress_interval_seconds,
        ),
        # Not used by the check, only redacted from the replica logs it prints.
        secret_env=_secret_env(settings),
    )


def _other_balancers(settings: Settings, lb_name: str) -> tuple[OtherBalancers, dict[str, str]]:
    """The standby's nginx as the rotation and canary steps reach it (the first balancer
    is on their own engine), and its engine's TLS material: variable -> secret."""
    standby = settings.load_balancer.standby
    if standby is None:
        return (), {}
    engines = {e.name: e for e in settings.engines()}
    others: list[OtherBalancer] = []
    secrets: dict[str, str] = {}
    for j, host in enumerate(standby.hosts[1:], start=1):
        env, secret_env = engine_env(engines[host])
        # Its own variables: the step's own engine's material keeps the usual ones.
        held = {variable: f"{variable}_BALANCER{j}" for variable in secret_env}
        secrets.update({held[variable]: secret for variable, secret in secret_env.items()})
        others.append(OtherBalancer(lb_name, env, held))
    return tuple(others), secrets


def _rollouts(
    settings: Settings, replicas: Sequence[ReplicaPlan], lb_name: str, python: str
) -> tuple[RolloutPlan, ...]:
    """Waves of at most half of a pool, counted in each pool on its own."""
    in_pool: dict[str, list[ReplicaPlan]] = {}
    for r in replicas:
        in_pool.setdefault(r.pool, []).append(r)
    wave_of = {
        r.name: index // max(1, len(mine) // 2)
        for mine in in_pool.values()
        for index, r in enumerate(mine)
    }
    engines = {e.name: e for e in settings.engines()}
    others, secrets = _other_balancers(settings, lb_name)

    def elsewhere(replica: ReplicaPlan) -> str | None:
        """A replica on another engine than nginx's: the steps ask that engine."""
        engine = engines[replica.host]
        if engine.runs_load_balancer or engine.tls is not None:
            return None  # TLS material stays in the provider; the drain waits the grace period
        return engine.docker_host

    return tuple(
        RolloutPlan(
            replica=r.name,
            wave=wave_of[r.name],
            step=StepCall(
                argv=step_argv(python, "rollout"),
                spec=RolloutSpec(
                    lb=lb_name,
                    replica=r.name,
                    port=r.container_port,
                    upstream=str(r.upstream),
                    drain_seconds=settings.stop_grace_seconds,
                    resume_seconds=settings.ready_timeout_seconds,
                    probe=f"{r.url}/health",
                    # vLLM finishes its requests on SIGTERM (components.steps.rollout):
                    # the drain only takes the replica out of nginx.
                    vllm_drains=settings.shutdown_timeout_seconds > 0,
                    replica_engine=elsewhere(r),
                    other_balancers=others,
                ),
            ),
            pool=r.pool,
            balancer_secrets=secrets,
        )
        for r in replicas
    )


def canary_plan(
    rollout: RolloutSettings,
    replicas: Sequence[ReplicaPlan],
    rollouts: Sequence[RolloutPlan],
    lb_name: str,
    python: str,
    pool: str = DEFAULT_POOL,
    prefix: str = "",
    others: tuple[OtherBalancers, dict[str, str]] = ((), {}),
) -> CanaryPlan | None:
    """The canary step of one rollout: its first wave against the rest.

    None when `rollout.canarySeconds` is 0 or the rollout has a single wave
    (one replica): there is nothing left on the old version to compare with.
    Per rollout (its replicas and their waves): each model pool's rollout has
    its own waves, so each gets its own step, named like the pool's other
    resources (`<pool>-canary`); a single-model stack's is `canary`.
    """
    first = [r for r, w in zip(replicas, rollouts, strict=True) if w.wave == 0]
    rest = [r for r, w in zip(replicas, rollouts, strict=True) if w.wave > 0]
    if rollout.canary_seconds == 0 or not first or not rest:
        return None

    def side(group: Sequence[ReplicaPlan]) -> tuple[WatchedReplica, ...]:
        return tuple(WatchedReplica(r.name, f"{r.url}/metrics", str(r.upstream)) for r in group)

    return CanaryPlan(
        name=f"{prefix}canary",
        pool=pool,
        canary=tuple(r.name for r in first),
        baseline=tuple(r.name for r in rest),
        argv=step_argv(python, "canary"),
        spec=CanarySpec(
            lb=lb_name,
            canary=side(first),
            baseline=side(rest),
            seconds=rollout.canary_seconds,
            max_ttft_ratio=rollout.canary_max_ttft_ratio,
            max_error_rate_increase=rollout.canary_max_error_rate_increase,
            min_requests=rollout.canary_min_requests,
            without_traffic=rollout.canary_without_traffic,
            max_wait_seconds=rollout.canary_max_wait_seconds,
            other_balancers=others[0],
        ),
        balancer_secrets=others[1],
    )


def _canaries(
    settings: Settings,
    replicas: Sequence[ReplicaPlan],
    rollouts: Sequence[RolloutPlan],
    lb_name: str,
    python: str,
) -> tuple[CanaryPlan, ...]:
    """A canary per pool: a pool's first wave is compared with that pool's own
    old replicas (another pool serves another model, so its figures say nothing)."""
    plans = []
    others = _other_balancers(settings, lb_name)
    for pool in settings.pools():
        mine = [(r, w) for r, w in zip(replicas, rollouts, strict=True) if r.pool == pool.name]
        first, waves = [r for r, _ in mine], [w for _, w in mine]
        plans.append(
            canary_plan(
                settings.rollout, first, waves, lb_name, python, pool.name, pool.prefix, others
            )
        )
    return tuple(p for p in plans if p is not None)


def engine_env(engine: Engine) -> tuple[dict[str, str], dict[str, str]]:
    """What docker-py's `from_env` (and our TLS-material reader) need to reach an
    engine; nothing for `local`, which the deployment reaches by `docker:host`."""
    env = {"DOCKER_HOST": engine.docker_host} if engine.docker_host else {}
    secret_env: dict[str, str] = {}
    tls = engine.tls
    if tls is not None and tls.cert_path is not None:
        env["DOCKER_TLS_VERIFY"] = "1"
        env["DOCKER_CERT_PATH"] = os.path.expanduser(tls.cert_path)
    elif tls is not None:
        secret_env = {
            var: host_tls_secret(engine.name, part) for part, var in DOCKER_TLS_SECRET_ENV.items()
        }
    return env, secret_env


def _ready_checks(
    settings: Settings, replicas: tuple[ReplicaPlan, ...], prefix: str, python: str
) -> tuple[CheckPlan, ...]:
    """One readiness check per pool with replicas on this engine, so each pool's
    replicas are checked, and their logs shown, apart from another pool's."""
    checks = []
    for pool in settings.pools():
        mine = tuple(r for r in replicas if r.pool == pool.name)
        if mine:
            checks.append(
                _ready_check(f"{prefix}{pool.prefix}replicas-ready", mine, settings, python)
            )
    return tuple(checks)


def _engine_images(
    settings: Settings, project_dir: Path, here: set[str]
) -> tuple[EngineImage, ...]:
    """Each image the pools with replicas on one engine run, pulled there once: the
    stack's as `vllm-image`, another as its first pool's (`<pool>-vllm-image`)."""
    stack = _vllm_image(settings, project_dir)
    found: list[EngineImage] = []
    for pool in settings.pools():
        if pool.name not in here:
            continue
        image = _vllm_image(settings, project_dir, pool.image)
        same = next((i for i, e in enumerate(found) if e.image == image), None)
        if same is not None:
            found[same] = replace(found[same], pools=(*found[same].pools, pool.name))
        else:
            resource = "vllm-image" if image == stack else f"{pool.prefix}vllm-image"
            found.append(EngineImage(resource, image, (pool.name,)))
    return tuple(found)


def _hosts(
    settings: Settings, replicas: tuple[ReplicaPlan, ...], project_dir: Path, python: str
) -> tuple[HostPlan, ...]:
    downloads = _downloads(settings, python)
    plans = []
    for engine in settings.engines():
        mine = tuple(r for r in replicas if r.host == engine.name)
        env, secret_env = engine_env(engine)
        # A pool with no replica on this engine needs none of its repositories here.
        here = {r.pool for r in mine}
        plans.append(
            HostPlan(
                name=engine.name,
                resource_prefix=engine.prefix,
                own_provider=engine.own_provider,
                docker_host=engine.docker_host,
                replicas=mine,
                ready=_ready_checks(settings, mine, engine.prefix, python),
                images=_engine_images(settings, project_dir, here),
                runs_load_balancer=engine.runs_load_balancer,
                engine_env=env,
                engine_secret_env=secret_env,
                downloads=tuple(d for d in downloads if here & set(d.pools)),
                fits=_fits(settings, mine, python),
            )
        )
    return tuple(plans)


def _key_policies(settings: Settings) -> tuple[KeyPolicy, ...]:
    """The named keys as the balancer sees them: names and limits, never a key."""
    return tuple(
        KeyPolicy(
            name=name,
            models=entry.models,
            requests_per_minute=entry.requests_per_minute,
            concurrent_requests=entry.concurrent_requests,
            max_tokens=entry.max_tokens,
        )
        for name, entry in (settings.api_keys or {}).items()
    )


def _model_pools(settings: Settings, replicas: tuple[ReplicaPlan, ...]) -> list[ModelPool]:
    """The pools as nginx routes them; none without 'models'."""
    return [
        model_pool(pool, tuple(r.upstream for r in replicas if r.pool == pool.name))
        for pool in settings.routed_pools()
    ]


def _pool_plans(
    settings: Settings, replicas: tuple[ReplicaPlan, ...], project_dir: Path
) -> tuple[PoolPlan, ...]:
    return tuple(
        PoolPlan(
            name=pool.name,
            model=pool.model,
            served_name=pool.served_name,
            adapters=tuple((a.name, a.model) for a in pool.adapters),
            replicas=tuple(r.name for r in replicas if r.pool == pool.name),
            embedding=is_embedding(pool.extra_args),
            image=_vllm_image(settings, project_dir, pool.image),
        )
        for pool in settings.routed_pools()
    )


def _verify(settings: Settings, pools: tuple[PoolPlan, ...], url: str) -> VerifySpec:
    """The one model's name; with pools, every name clients may send, each probed
    through the load balancer, embedding pools as such."""
    timeout = settings.verify_timeout_seconds
    if not pools:
        return VerifySpec(url=url, models=(settings.model_name,), timeout_seconds=timeout)
    names = [(n, p.embedding) for p in pools for n in (p.served_name, *(a for a, _ in p.adapters))]
    return VerifySpec(
        url=url,
        models=tuple(n for n, _ in names),
        embeddings=tuple(n for n, embedding in names if embedding),
        probe=True,
        timeout_seconds=timeout,
    )


def build_plan(settings: Settings, *, project_dir: Path, python: str = "python3") -> Plan:
    """Turn settings into the deployment: names, ports, GPUs, env, nginx config."""
    engines = {e.name: e for e in settings.engines()}
    replicas = tuple(
        _replica(settings, pool, i, at, engines[at.engine])
        for pool in settings.pools()
        for i, at in enumerate(pool.placements)
    )
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
    model_pools = _model_pools(settings, replicas)
    keys = _key_policies(settings)
    nginx_config = render_nginx_config(
        lb, [r.upstream for r in replicas], runtime, pools=model_pools, keys=keys
    )
    pools = _pool_plans(settings, replicas, project_dir)
    scheme = "https" if lb.tls else "http"
    public_host = next(e.address for e in engines.values() if e.runs_load_balancer)
    lb_url = f"{scheme}://{_url_host(public_host, lb.bind_address)}:{lb.port}"
    if lb.standby is not None:
        vip = lb.standby.virtual_address.split("/")[0]
        lb_url = f"{scheme}://{vip}:{lb.port}"
    hosts = _hosts(settings, replicas, project_dir, python)
    rollouts = _rollouts(settings, replicas, lb.name, python)
    cache = settings.hf_cache
    compile_cache = settings.compile_cache
    plan = Plan(
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
        replicas=replicas,
        hosts=hosts,
        rollouts=rollouts,
        canaries=_canaries(settings, replicas, rollouts, lb.name, python),
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
            reload=StepCall(step_argv(python, "lb_reload"), ReloadSpec(lb.name)),
            secret_uploads=tuple(uploads),
            files=render_extra_files(lb, runtime, pools=model_pools, keys=keys),
            container_port=listen_port,
            stop_grace_seconds=settings.stop_grace_seconds,
        ),
        verify=CheckPlan(
            name="verify",
            argv=step_argv(python, "verify"),
            spec=_verify(settings, pools, lb_url),
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
        pools=pools,
        pool_keys=tuple((pool.name, pool.prefix) for pool in settings.pools()),
    )
    return replace(plan, standby=build_standby_plan(settings, lb.name, scheme, plan.verify))
