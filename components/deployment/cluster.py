"""The cluster component: maps a `Plan` onto pulumi-docker and pulumi-command.

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
from components.deployment.balancer import LoadBalancer, LoadBalancerArgs
from components.deployment.engine import Engine, EngineArgs
from components.deployment.monitoring import Monitoring, MonitoringArgs
from components.deployment.parts import check_command
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
    JobPlan,
    Plan,
    ReplicaPlan,
    RolloutPlan,
    host_tls_secret,
)
from components.plan.monitoring import GRAFANA_PASSWORD_SECRET, PROMETHEUS_API_KEY_SECRET
from components.steps.canary import CONTAINERS_ENV as CANARY_CONTAINERS_ENV

TYPE_TOKEN = "vllm-nginx:index:VllmCluster"


@dataclass
class HostResources:
    """What one engine holds, filled in as `_host` declares it."""

    plan: HostPlan
    provider: docker.Provider | None
    network: docker.Network
    cache_volume: docker.Volume | None
    compile_volume: docker.Volume | None
    images: dict[str | None, pulumi.Output[str]]
    """Pool (None: the one pool of a single-model stack) -> the image it runs here."""
    replicas: list[docker.Container] = field(default_factory=list)
    downloads: dict[str | None, list[command.local.Command]] = field(default_factory=dict)
    """Pool (None without 'models') -> the download jobs its replicas wait for."""
    fits: dict[str | None, command.local.Command] = field(default_factory=dict)
    """Pool (None without 'models') -> its fit check on this engine."""
    checks: list[command.local.Command] = field(default_factory=list)
    """Every readiness check on this engine (one per pool)."""


@dataclass(frozen=True)
class VllmClusterArgs:
    """Validated settings plus where the deploying machine runs its checks."""

    settings: Settings
    docker_host: str | None = None
    """The engine the checks talk to; the same one the docker provider targets."""
    project_dir: Path = PROJECT_DIR
    python: str = sys.executable
    rolling: bool = True
    """Declare the update waves (components.deployment.serving decides: only when replicas run)."""


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
        host_of = {r.name: h for h in self.hosts for r in h.plan.replicas}
        # Replicas, in waves across all hosts: a wave's replicas wait for the
        # previous wave of their pool to be back in rotation, so an update keeps
        # at least half of each pool serving and one pool's update never waits on
        # another's. On a first deploy no wave waits (components.deployment.serving).
        self.replicas = []
        self.containers: dict[str, docker.Container] = {}
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
                self.containers[replica.name] = container
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
        self.balancer = LoadBalancer(
            f"{name}-balancer",
            LoadBalancerArgs(
                plan=lb,
                verify=plan.verify,
                restart_policy=plan.restart_policy,
                network=self.network,
                provider=lb_host.provider,
                engine_environment=self._engine_environment(lb_host.plan),
                verify_environment={
                    **{key: self._secrets[key] for key in plan.verify.secret_env},
                    **self._engine_environment(None),
                },
                secrets=self._secrets,
                starts_after=lb_after,
                reloads_after=[*self.rotations, *(c for h in self.hosts for c in h.checks)],
                replica_ids=[c.id for c in self.replicas],
                exporter=self.monitoring.lb_exporter if self.monitoring is not None else None,
                project_dir=self._args.project_dir,
                python=self._args.python,
                moved_from=self,
                names=name,
            ),
            opts=child,
        )
        self.load_balancer = self.balancer.container
        self.lb_config = self.balancer.config
        self.verify = self.balancer.verify

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
        engine = Engine(
            f"{prefix}engine",
            EngineArgs(
                plan=host,
                network=plan.network,
                cache=plan.cache,
                compile_cache=plan.compile_cache,
                provider=provider,
                names=prefix,
                moved_from=self,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        resources = HostResources(
            plan=host,
            provider=provider,
            network=engine.network,
            cache_volume=engine.cache_volume,
            compile_volume=engine.compile_volume,
            images=engine.images,
        )
        # Each pool's fit check, once its image is here: a model that cannot fit
        # stops `pulumi up` before its download and its replicas. Then one
        # download per repository, then every replica of its pools at once:
        # each loads from the cache offline, so none waits for another's load
        # (docs/design.md, start-up order). The replicas and the readiness check
        # come after, in waves across hosts.
        for fit in host.fits:
            resources.fits[fit.pool] = self._job_step(f"{prefix}{fit.step_name}", fit, resources)
        for download in host.downloads:
            # A job waits for the fit check of the pool that owns it (the same
            # repositories), not for another pool's that shares them.
            owner = resources.fits.get(download.pool)
            job = self._job_step(
                f"{prefix}{download.step_name}",
                download,
                resources,
                [owner] if owner is not None else [],
            )
            for pool in download.pools:
                resources.downloads.setdefault(pool, []).append(job)
        return resources

    def _readiness(self, name: str, host: HostResources) -> list[command.local.Command]:
        """One readiness check per pool on this engine, after that pool's replicas."""
        checks = []
        for check in host.plan.ready:
            mine = [self.containers[replica] for replica in check.waits_for]
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
            image=host.images[replica.pool],
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
                replace_on_changes=["healthcheck"],
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
        image = host.images[job.pool]
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
        return check_command(
            f"{name}-{check.name}",
            check,
            environment,
            triggers,
            self._args.project_dir,
            pulumi.ResourceOptions(parent=self, depends_on=list(after)),
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
