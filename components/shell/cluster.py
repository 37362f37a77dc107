"""The thin Pulumi shell: maps a `Plan` onto pulumi-docker and pulumi-command.

Nothing here decides anything; names, ports, GPUs, env and the nginx config
all come from `plan.build_plan`. What this module owns is the resource graph:
which resource waits for which (images, network and caches first, the download
step, every replica at once, their readiness, then nginx, then the verify
check), and that secrets travel as Pulumi secrets.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components import PROJECT_DIR
from components.config.settings import Settings
from components.lb.health import docker_health_test
from components.lb.nginx_conf import render_api_key_map
from components.plan.build import build_plan
from components.plan.model import (
    API_KEY_ENV,
    API_KEY_MAP_SECRET,
    HF_TOKEN_ENV,
    LB_CERTIFICATE_ENV,
    TLS_CERTIFICATE_SECRET,
    TLS_KEY_SECRET,
    CanaryPlan,
    CheckPlan,
    HostPlan,
    ImagePlan,
    JobPlan,
    LoadBalancerPlan,
    Plan,
    ReplicaPlan,
    RolloutPlan,
    host_tls_secret,
)
from components.plan.monitoring import GRAFANA_PASSWORD_SECRET, PROMETHEUS_API_KEY_SECRET
from components.shell.monitoring import Monitoring, MonitoringArgs
from components.steps.canary import CONTAINERS_ENV as CANARY_CONTAINERS_ENV
from components.steps.lb_reload import FILES_ENV as LB_FILES_ENV

TYPE_TOKEN = "vllm-nginx:index:VllmCluster"
RETRY_FAILED_START = "#initerror"
"""A container whose start failed is kept in state with its init error, and the
next `up` would only update it, which never starts it; with this path in
`replace_on_changes` the engine replaces it instead (docs/failed-up.md)."""


@dataclass
class HostResources:
    """What one engine holds, filled in as `_host` declares it."""

    plan: HostPlan
    provider: docker.Provider | None
    network: docker.Network
    cache_volume: docker.Volume | None
    compile_volume: docker.Volume | None
    image: pulumi.Output[str]
    fit: command.local.Command | None = None
    """The first of `fits` (the only one without 'models')."""
    download: command.local.Command | None = None
    replicas: list[docker.Container] = field(default_factory=list)
    ready: command.local.Command | None = None
    downloads: dict[str | None, list[command.local.Command]] = field(default_factory=dict)
    """Pool (None without 'models') -> the download jobs its replicas wait for."""
    pool_images: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    """Pool -> its own image, when it has one other than the stack's."""
    fits: dict[str | None, command.local.Command] = field(default_factory=dict)
    """Pool (None without 'models') -> its fit check on this engine."""
    members: list[tuple[ReplicaPlan, docker.Container]] = field(default_factory=list)
    checks: list[command.local.Command] = field(default_factory=list)
    """Every readiness check on this engine (one per pool with 'models')."""


@dataclass(frozen=True)
class VllmClusterArgs:
    """Validated settings plus where the deploying machine runs its checks."""

    settings: Settings
    docker_host: str | None = None
    """The engine the checks talk to; the same one the docker provider targets."""
    project_dir: Path = PROJECT_DIR
    python: str = sys.executable
    rolling: bool = True
    """Declare the update waves (components.shell.serving decides: only when replicas run)."""


def _env_entry(key: str, value: pulumi.Output[str]) -> pulumi.Output[str]:
    """`KEY=value`, still secret, for docker's env list."""
    return value.apply(lambda text: f"{key}={text}")


def _gpu_requests(ids: Sequence[str]) -> list[docker.ContainerDeviceRequestArgs] | None:
    """GPUs as an explicit device request, read back by the provider as declared.

    `gpus="device=0,1"` goes through docker/cli's CSV parser in the provider
    and arrives as `device=0` plus a bare count, which the daemon refuses.
    """
    if not ids:
        return None
    return [
        docker.ContainerDeviceRequestArgs(
            driver="nvidia", device_ids=list(ids), capabilities=["gpu"]
        )
    ]


def _secret_values(settings: Settings) -> dict[str, pulumi.Output[str]]:
    """Every secret the plan refers to by name, as a Pulumi secret."""
    values: dict[str, str] = {}
    if settings.hf_token is not None:
        values[HF_TOKEN_ENV] = settings.hf_token.get_secret_value()
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        values[API_KEY_ENV] = key
        values[API_KEY_MAP_SECRET] = render_api_key_map(key)
        values[PROMETHEUS_API_KEY_SECRET] = key
    if settings.grafana_password is not None:
        values[GRAFANA_PASSWORD_SECRET] = settings.grafana_password.get_secret_value()
    if settings.tls_certificate is not None:
        values[TLS_CERTIFICATE_SECRET] = settings.tls_certificate.get_secret_value()
        values[LB_CERTIFICATE_ENV] = settings.tls_certificate.get_secret_value()
    if settings.tls_key is not None:
        values[TLS_KEY_SECRET] = settings.tls_key.get_secret_value()
    for host in settings.hosts or ():
        tls = host.tls
        if tls is None or tls.key_material is None:
            continue
        for part, pem in (
            ("ca", tls.ca_material),
            ("cert", tls.cert_material),
            ("key", tls.key_material),
        ):
            if pem is not None:
                values[host_tls_secret(host.name, part)] = pem.get_secret_value()
    return {name: pulumi.Output.secret(value) for name, value in values.items()}


class VllmCluster(pulumi.ComponentResource):
    """N vLLM replicas behind one nginx, as in vLLM's "Using Nginx" guide."""

    lb_url: pulumi.Output[str]
    replica_urls: pulumi.Output[list[str]]
    replica_names: pulumi.Output[list[str]]
    served_model_name: pulumi.Output[str]
    verified_models: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: VllmClusterArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        settings = args.settings
        # The plan first: if it cannot be made, nothing (not even this component)
        # has been registered with Pulumi.
        self.plan: Plan = build_plan(settings, project_dir=args.project_dir, python=args.python)
        super().__init__(TYPE_TOKEN, name, None, opts)
        self._args = args
        plan = self.plan
        self._secrets = _secret_values(settings)

        child = pulumi.ResourceOptions(parent=self)
        # Per host: its engine, network, caches, image and download. Hosts share
        # nothing, so their downloads and loads run at the same time.
        self.hosts = [self._host(name, host) for host in plan.hosts]
        lb_host = next(h for h in self.hosts if h.plan.runs_load_balancer)
        self.network = lb_host.network
        self.download = self.hosts[0].download
        host_of = {r.name: h for h in self.hosts for r in h.plan.replicas}
        # Replicas, in waves across all hosts: a wave's replicas wait for the
        # previous wave of their pool to be back in rotation, so an update keeps
        # at least half of each pool serving and one pool's update never waits on
        # another's. On a first deploy no wave waits (components.shell.serving).
        self.replicas = []
        self.rotations: list[command.local.Command] = []
        # One canary per pool with a second wave, keyed by pool (None: no 'models').
        self.canaries: dict[str | None, command.local.Command] = {}
        canary_of = {c.pool: c for c in plan.canaries}
        previous_wave: dict[str | None, list[pulumi.Resource]] = {}
        for wave in sorted({r.wave for r in plan.rollouts}):
            this_wave: dict[str | None, list[pulumi.Resource]] = {}
            containers: dict[str | None, list[docker.Container]] = {}
            for replica, rollout in zip(plan.replicas, plan.rollouts, strict=True):
                if rollout.wave != wave:
                    continue
                host = host_of[replica.name]
                fit = host.fits.get(replica.pool)
                after = [*([fit] if fit is not None else []), *host.downloads.get(replica.pool, [])]
                waits = previous_wave.get(rollout.pool, []) if args.rolling else []
                container = self._replica(name, replica, host, [*after, *waits])
                host.replicas.append(container)
                host.members.append((replica, container))
                self.replicas.append(container)
                rotation = self._rotation(name, rollout, container, lb_host.plan)
                self.rotations.append(rotation)
                this_wave.setdefault(rollout.pool, []).append(rotation)
                containers.setdefault(rollout.pool, []).append(container)
            previous_wave.update(this_wave)
            if wave == 0:
                # A pool's next wave waits for its canary's verdict, not only its resume.
                for pool, resumed in this_wave.items():
                    if (canary := canary_of.get(pool)) is not None:
                        watch = self._canary(name, canary, containers[pool], resumed, lb_host.plan)
                        self.canaries[pool] = watch
                        previous_wave[pool] = [watch]
        # nginx waits for every host's readiness (of every pool).
        for host in self.hosts:
            host.checks = self._readiness(name, host)
            host.ready = host.checks[0]
        self.ready = self.hosts[0].ready
        nginx_image_ref = self._image(
            f"{name}-nginx-image", plan.load_balancer.image, lb_host.provider
        )
        lb_after: list[pulumi.Resource] = [
            *self.replicas,
            *(check for h in self.hosts for check in h.checks),
            # On a first deploy the canaries then find no nginx and return at once.
            *self.canaries.values(),
        ]

        self.monitoring: Monitoring | None = None
        if plan.monitoring is not None:
            self.monitoring = Monitoring(
                f"{name}-monitoring",
                MonitoringArgs(plan.monitoring, self.network, self._secrets, lb_host.provider),
                opts=child,
            )
            lb_after.append(self.monitoring.lb_exporter)

        lb = plan.load_balancer
        self.load_balancer = docker.Container(
            f"{name}-lb",
            name=lb.name,
            image=nginx_image_ref,
            command=list(lb.command),
            stop_signal=lb.stop_signal,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=self.network.name)],
            ports=[
                docker.ContainerPortArgs(
                    internal=lb.container_port, external=lb.host_port, ip=lb.bind_address
                )
            ],
            uploads=[
                docker.ContainerUploadArgs(file=lb.config_path, content=lb.config),
                *[
                    docker.ContainerUploadArgs(file=path, content=text)
                    for path, text in lb.files.items()
                ],
                *[
                    docker.ContainerUploadArgs(file=up.path, content=self._secrets[up.secret])
                    for up in lb.secret_uploads
                ],
            ],
            restart=plan.restart_policy,
            # The balancer's /health: unhealthy while a pool has no replica that serves.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=docker_health_test(lb.container_port, lb.url.startswith("https:")),
                interval="10s",
                timeout="10s",
                retries=3,
            ),
            destroy_grace_seconds=lb.stop_grace_seconds,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=lb_host.provider,
                depends_on=lb_after,
                delete_before_replace=True,
                # The provider keeps uploads in state as given (never read back).
                additional_secret_outputs=["uploads"] if lb.secret_uploads else None,
                # Uploads are force-new: a changed config would replace nginx and
                # drop its connections. `lb_config` puts it in and reloads instead.
                ignore_changes=["uploads"],
                replace_on_changes=[RETRY_FAILED_START],
            ),
        )
        self.lb_config = self._lb_config(
            name,
            lb,
            [*self.rotations, *(check for h in self.hosts for check in h.checks)],
            lb_host.plan,
        )
        self.verify = self._check(
            name,
            plan.verify,
            [self.load_balancer, self.lb_config],
            [self.load_balancer.id, *[c.id for c in self.replicas]],
        )

        self.lb_url = pulumi.Output.from_input(lb.url)
        self.replica_urls = pulumi.Output.from_input([r.url for r in plan.replicas])
        self.replica_names = pulumi.Output.all(*[c.name for c in self.replicas]).apply(list)
        self.served_model_name = pulumi.Output.from_input(plan.served_model_name)
        self.host_outputs: pulumi.Output[dict[str, dict[str, object]]] | None = None
        if plan.hosts[0].name is not None:
            self.host_outputs = pulumi.Output.from_input(
                {
                    str(host.name): {
                        "docker_host": host.docker_host,
                        "replica_names": [r.name for r in host.replicas],
                        "replica_urls": [r.url for r in host.replicas],
                        "load_balancer": host.runs_load_balancer,
                    }
                    for host in plan.hosts
                }
            )
        # The verify step prints no secret. pulumi-command 1.2.1 keeps stdout
        # plain even with a secret environment; 0.8 marked every output secret
        # (pulumi/pulumi-command#256), so a pin change must not hide the models.
        self.verified_models = pulumi.Output.unsecret(self.verify.stdout)
        self.register_outputs(
            {
                "lb_url": self.lb_url,
                "replica_urls": self.replica_urls,
                "replica_names": self.replica_names,
                "served_model_name": self.served_model_name,
                "verified_models": self.verified_models,
                **self.monitoring_outputs(),
                **self.hosts_outputs(),
                **self.pools_outputs(),
            }
        )

    def pools_outputs(self) -> dict[str, pulumi.Output[Any]]:
        """With 'models': per pool, its served name, adapters and replicas."""
        if not self.plan.pools:
            return {}
        return {
            "pools": pulumi.Output.from_input(
                {
                    pool.name: {
                        "model": pool.model,
                        "served_model_name": pool.served_name,
                        "adapters": [name for name, _ in pool.adapters],
                        "replica_names": list(pool.replicas),
                    }
                    for pool in self.plan.pools
                }
            )
        }

    def hosts_outputs(self) -> dict[str, pulumi.Output[Any]]:
        """Per host, its replicas (names, URLs) and engine; only with 'hosts'."""
        if self.host_outputs is None:
            return {}
        return {"hosts": self.host_outputs}

    def _host(self, name: str, host: HostPlan) -> HostResources:
        """One engine's share of the graph, through that engine's provider."""
        plan = self.plan
        provider = self._engine_provider(name, host)
        prefix = f"{name}-{host.resource_prefix}"

        def opts(**more: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, **more)

        network = docker.Network(f"{prefix}network", name=plan.network, opts=opts())
        cache_volume: docker.Volume | None = None
        if plan.cache.volume is not None:
            cache_volume = docker.Volume(
                f"{prefix}hf-cache",
                name=plan.cache.volume,
                opts=opts(retain_on_delete=plan.cache.keep_on_destroy),
            )
        compile_volume: docker.Volume | None = None
        if plan.compile_cache is not None:
            compile_volume = docker.Volume(
                f"{prefix}compile-cache",
                name=plan.compile_cache.volume,
                opts=opts(retain_on_delete=plan.compile_cache.keep_on_destroy),
            )
        # A pool with an image of its own pulls (or builds) it on this engine once;
        # the stack's image only if a replica here runs it.
        here = {r.pool for r in host.replicas}
        pool_images: dict[str, pulumi.Output[str]] = {}
        for own in plan.pools:
            if own.image == plan.vllm_image or own.name not in here:
                continue
            # An image plan holds mappings (build args): compared, not hashed.
            first = next(p for p in plan.pools if p.image == own.image and p.name in here)
            if first.name not in pool_images:
                pool_images[first.name] = self._image(
                    f"{prefix}{first.name}-vllm-image", own.image, provider
                )
            pool_images[own.name] = pool_images[first.name]
        stack_image = not plan.pools or any(
            p.image == plan.vllm_image and p.name in here for p in plan.pools
        )
        resources = HostResources(
            plan=host,
            provider=provider,
            network=network,
            cache_volume=cache_volume,
            compile_volume=compile_volume,
            image=(
                self._image(f"{prefix}vllm-image", plan.vllm_image, provider)
                if stack_image
                else next(iter(pool_images.values()))
            ),
            pool_images=pool_images,
        )
        # Each pool's fit check, once its image is here: a model that cannot fit
        # stops `pulumi up` before its download and its replicas. Then one
        # download per repository, then every replica of its pools at once:
        # each loads from the cache offline, so none waits for another's load
        # (docs/design.md, start-up order). The replicas and the readiness check
        # come after, in waves across hosts.
        for fit in host.fits:
            resources.fits[fit.pool] = self._job_step(
                f"{prefix}{fit.pool}-fit" if fit.pool else f"{prefix}fit", fit, resources
            )
        resources.fit = next(iter(resources.fits.values()), None)
        for download in host.downloads:
            # A job waits for the fit check of the pool that owns it (the same
            # repositories), not for another pool's that shares them.
            owner = resources.fits.get(download.pool)
            job = self._job_step(
                f"{prefix}{download.pool}-download" if download.pool else f"{prefix}download",
                download,
                resources,
                [owner] if owner is not None else [],
            )
            if resources.download is None:
                resources.download = job
            for pool in download.pools or (None,):
                resources.downloads.setdefault(pool, []).append(job)
        return resources

    def _readiness(self, name: str, host: HostResources) -> list[command.local.Command]:
        """The engine's readiness check, or with 'models' one per pool on it."""
        if not host.plan.pool_ready:
            return [
                self._check(
                    name,
                    host.plan.ready,
                    host.replicas,
                    [c.id for c in host.replicas],
                    engine=host.plan,
                )
            ]
        checks = []
        for pool, check in host.plan.pool_ready.items():
            mine = [c for r, c in host.members if r.pool == pool]
            checks.append(self._check(name, check, mine, [c.id for c in mine], engine=host.plan))
        return checks

    def _engine_provider(self, name: str, host: HostPlan) -> docker.Provider | None:
        """An explicit provider per named host; the unnamed one uses the default."""
        if host.name is None:
            return None

        def material(part: str) -> pulumi.Output[str] | None:
            assert host.name is not None
            return self._secrets[host_tls_secret(host.name, part)] if host.tls_materials else None

        return docker.Provider(
            f"{name}-{host.name}-docker",
            host=host.docker_host,
            cert_path=host.tls_cert_path,
            ca_material=material("ca"),
            cert_material=material("cert"),
            # A Pulumi secret, so the key stays encrypted in the provider's state.
            key_material=material("key"),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def monitoring_outputs(self) -> dict[str, pulumi.Output[str]]:
        """The monitoring URLs, only when monitoring is on."""
        if self.monitoring is None:
            return {}
        return {
            "prometheus_url": self.monitoring.prometheus_url,
            "grafana_url": self.monitoring.grafana_url,
        }

    def _image(
        self, resource_name: str, image: ImagePlan, provider: docker.Provider | None = None
    ) -> pulumi.Output[str]:
        """A reference that changes with the image, so containers follow a rebuild."""
        if image.build is None:
            pull = f"{image.pull_timeout_minutes}m"
            remote = docker.RemoteImage(
                resource_name,
                name=image.name,
                keep_locally=image.keep_locally,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    provider=provider,
                    custom_timeouts=pulumi.CustomTimeouts(create=pull, update=pull),
                ),
            )
            return remote.image_id
        build = image.build
        built = docker.Image(
            resource_name,
            image_name=image.name,
            build=docker.DockerBuildArgs(
                context=build.context,
                dockerfile=str(Path(build.context) / build.dockerfile),
                target=build.target,
                args=dict(build.args),
            ),
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        return built.repo_digest

    def _replica(
        self,
        name: str,
        replica: ReplicaPlan,
        host: HostResources,
        after: Sequence[pulumi.Resource],
    ) -> docker.Container:
        plain = [f"{key}={value}" for key, value in replica.env.items()]
        secret = [_env_entry(key, self._secrets[key]) for key in replica.secret_env]
        envs: pulumi.Input[list[str]] = (
            pulumi.Output.all(*plain, *secret).apply(list) if secret else plain
        )
        hc = replica.health_check
        durations = hc.durations()
        if self.plan.cache.volume is not None:
            volume = docker.ContainerVolumeArgs(
                volume_name=host.cache_volume.name if host.cache_volume else None,
                container_path=self.plan.cache.mount_path,
            )
        else:
            volume = docker.ContainerVolumeArgs(
                host_path=self.plan.cache.host_path,
                container_path=self.plan.cache.mount_path,
            )
        volumes = [volume]
        if self.plan.compile_cache is not None and host.compile_volume is not None:
            volumes.append(
                docker.ContainerVolumeArgs(
                    volume_name=host.compile_volume.name,
                    container_path=self.plan.compile_cache.mount_path,
                )
            )
        return docker.Container(
            f"{name}-{replica.name}",
            name=replica.name,
            image=host.pool_images.get(str(replica.pool), host.image),
            entrypoints=list(replica.entrypoint),
            command=list(replica.command),
            envs=envs,
            ipc_mode=replica.ipc_mode,
            device_requests=_gpu_requests(replica.gpu_ids),
            cpu_set=replica.cpu_set,
            capabilities=(
                docker.ContainerCapabilitiesArgs(adds=list(replica.capabilities))
                if replica.capabilities
                else None
            ),
            security_opts=list(replica.security_opts) or None,
            volumes=volumes,
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=host.network.name, aliases=[replica.name])
            ],
            ports=[
                docker.ContainerPortArgs(
                    internal=replica.container_port,
                    external=replica.host_port,
                    ip=replica.bind_address,
                )
            ],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(hc.test),
                interval=durations["interval"],
                timeout=durations["timeout"],
                retries=hc.retries,
                start_period=durations["start_period"],
                start_interval=durations["start_interval"],
            ),
            restart=self.plan.restart_policy,
            # Without it the provider's delete stops with a 0 s timeout: the
            # container is killed at once, cutting every stream in flight.
            destroy_grace_seconds=replica.stop_grace_seconds,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=host.provider,
                depends_on=list(after),
                delete_before_replace=True,
                additional_secret_outputs=["envs"],
                # The provider neither replaces nor updates a container whose
                # health check changed; replacing is the only way it takes effect.
                replace_on_changes=["healthcheck", RETRY_FAILED_START],
            ),
        )

    def _job_step(
        self,
        resource_name: str,
        job: JobPlan,
        host: HostResources,
        after: Sequence[pulumi.Resource] = (),
    ) -> command.local.Command:
        """A step that runs short containers of its pool's image (the download,
        the fit check): a local command, so it can run them and stream their
        output, and fail `pulumi up` before any replica exists. It waits for the
        image through its command line."""
        cache = self.plan.cache
        volume_source: pulumi.Input[str] = (
            host.cache_volume.name if host.cache_volume is not None else str(cache.host_path)
        )
        image = host.pool_images.get(str(job.pool), host.image)
        create = pulumi.Output.all(image, volume_source).apply(
            lambda values: job.command(str(values[0]), (f"{values[1]}:{cache.mount_path}",))
        )
        environment: dict[str, pulumi.Input[str]] = {
            key: self._secrets[key] for key in job.secret_env
        }
        environment.update(self._engine_environment(host.plan))
        # The jobs need the internet, not the replicas' network: they run on the
        # engine's host network (components.steps.download), so need not wait for it.
        depends_on: list[pulumi.Resource] = []
        if host.cache_volume is not None:
            depends_on.append(host.cache_volume)
        return command.local.Command(
            resource_name,
            create=create,
            dir=str(self._args.project_dir),
            environment=environment,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*depends_on, *after],
                # Redacted already; secret anyway, as pulumi-command keeps stdout
                # plain even when the environment holds a secret.
                additional_secret_outputs=["stdout", "stderr"],
            ),
        )

    def _lb_config(
        self,
        name: str,
        lb: LoadBalancerPlan,
        after: Sequence[pulumi.Resource],
        lb_host: HostPlan,
    ) -> command.local.Command:
        """Every file of the load balancer, written into the running container and
        reloaded whenever one changes (or the container is new)."""
        files: dict[str, pulumi.Input[str]] = {lb.config_path: lb.config, **lb.files}
        files.update({up.path: self._secrets[up.secret] for up in lb.secret_uploads})
        environment: dict[str, pulumi.Input[str]] = {
            LB_FILES_ENV: pulumi.Output.json_dumps(files),
            **self._engine_environment(lb_host),
        }
        return command.local.Command(
            f"{name}-lb-config",
            create=shlex.join(
                (self._args.python, "-m", "components.steps.lb_reload", "--lb", lb.name)
            ),
            dir=str(self._args.project_dir),
            environment=environment,
            # A reload also resolves nginx's syslog target again: a replaced exporter
            # (new replicas to label) may have a new address, and nginx follows it
            # without being replaced itself.
            triggers=[
                self.load_balancer.id,
                *([self.monitoring.lb_exporter.id] if self.monitoring is not None else []),
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.load_balancer, *after]),
        )

    def _rotation(
        self, name: str, rollout: RolloutPlan, replica: docker.Container, lb_host: HostPlan
    ) -> command.local.Command:
        """Drain (delete) before the replica stops, resume (create) once it is back.

        Its trigger is the replica's id, so replacing the replica condemns this
        command first (a delete-before-replace deletes its dependents before
        the resource), which is what runs the drain before the stop.
        """
        # The load balancer's engine; a replica on another engine is named in argv.
        environment = self._engine_environment(lb_host)
        return command.local.Command(
            f"{name}-{rollout.replica}-rotation",
            create=shlex.join(rollout.resume),
            delete=shlex.join(rollout.drain),
            dir=str(self._args.project_dir),
            environment=environment,
            triggers=[replica.id],
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[replica], delete_before_replace=True
            ),
        )

    def _canary(
        self,
        name: str,
        canary: CanaryPlan,
        first: Sequence[docker.Container],
        resumed: Sequence[pulumi.Resource],
        lb_host: HostPlan,
    ) -> command.local.Command:
        """The first wave watched under traffic once its rotations resumed it.

        Its triggers are the first wave's container ids: replacing one of them
        runs it again; nothing else does, so an unchanged stack shows no diff.
        """
        return command.local.Command(
            f"{name}-{canary.name}",
            create=canary.command,
            dir=str(self._args.project_dir),
            environment={
                **self._engine_environment(lb_host),
                # Which containers it watched: a run that finds them done does not
                # watch again (only a rollout.canary* setting changed).
                CANARY_CONTAINERS_ENV: pulumi.Output.all(*[c.id for c in first]).apply(
                    lambda ids: ",".join(str(i)[:12] for i in ids)
                ),
            },
            triggers=[c.id for c in first],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(resumed)),
        )

    def _check(
        self,
        name: str,
        check: CheckPlan,
        after: Sequence[pulumi.Resource],
        triggers: Sequence[pulumi.Output[str]],
        engine: HostPlan | None = None,
    ) -> command.local.Command:
        environment: dict[str, pulumi.Input[str]] = {
            key: self._secrets[key] for key in check.secret_env
        }
        environment.update(self._engine_environment(engine))
        return command.local.Command(
            f"{name}-{check.name}",
            create=check.command,
            dir=str(self._args.project_dir),
            environment=environment,
            triggers=list(triggers),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )

    def _engine_environment(self, host: HostPlan | None) -> dict[str, pulumi.Input[str]]:
        """How a step reaches an engine: `docker:host` without 'hosts', else the
        host's endpoint, its TLS variables and (as secrets) its TLS material."""
        if host is None or host.name is None:
            return {"DOCKER_HOST": self._args.docker_host} if self._args.docker_host else {}
        environment: dict[str, pulumi.Input[str]] = dict(host.engine_env)
        for variable, secret in host.engine_secret_env.items():
            environment[variable] = self._secrets[secret]
        return environment
