"""One model pool across every engine it runs on: the fit check, the download,
the replicas, their update waves and canary, and each engine's readiness check.

One component per pool (not per pool and engine) because a pool's update waves
and its canary span engines: a wave waits for the pool's previous one wherever
it ran. Its children were the cluster's before this component existed; each
carries an alias to that parent, so a running stack keeps its replicas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.deployment.engine import Engine
from components.deployment.parts import RETRY_FAILED_START, check_command
from components.plan.model import (
    CachePlan,
    CanaryPlan,
    CompileCachePlan,
    HostPlan,
    JobPlan,
    ReplicaPlan,
    RolloutPlan,
)
from components.plan.specs import SPEC_ENV
from components.steps.canary import CONTAINERS_ENV as CANARY_CONTAINERS_ENV

TYPE_TOKEN = "vllm-nginx:index:Pool"

DownloadKey = tuple[int, str]
"""(engine index, pool): the download jobs a pool's replicas wait for there."""


@dataclass(frozen=True)
class EngineParts:
    """One engine as a pool sees it: its plan, what its Engine declared, how to reach it."""

    plan: HostPlan
    engine: Engine
    provider: docker.Provider | None
    environment: Mapping[str, pulumi.Input[str]]
    """How a step reaches this engine (endpoint, TLS variables, secrets)."""


@dataclass(frozen=True)
class PoolArgs:
    """The pool's share of the plan and the engines it runs on."""

    pool: str
    """The pool (`default` for a stack without 'models')."""
    replicas: Sequence[tuple[ReplicaPlan, RolloutPlan]]
    canary: CanaryPlan | None
    engines: Sequence[EngineParts]
    balancer_environment: Mapping[str, pulumi.Input[str]]
    """How the rotation and canary steps reach nginx's engine."""
    earlier_downloads: Mapping[DownloadKey, Sequence[command.local.Command]]
    """Downloads an earlier pool declared that this one's replicas wait for."""
    cache: CachePlan
    compile_cache: CompileCachePlan | None
    restart_policy: str
    secrets: Mapping[str, pulumi.Output[str]]
    rolling: bool
    project_dir: Path
    moved_from: pulumi.Resource
    """The cluster, these resources' parent before this component: their alias."""
    names: str
    """What its resources' names start with (the cluster's name), as before."""


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


class Pool(pulumi.ComponentResource):
    """A pool's replicas, from its fit check to its readiness on every engine."""

    containers: dict[str, docker.Container]
    """Replica name -> its container, in the plan's order."""
    rotations: list[command.local.Command]
    canary: command.local.Command | None
    checks: list[command.local.Command]
    downloads: dict[DownloadKey, list[command.local.Command]]
    """The downloads this pool declared, by engine and every pool that waits for them."""

    def __init__(
        self, name: str, args: PoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        self._args = args
        self._moved = [pulumi.Alias(parent=args.moved_from)]
        mine = args.pool
        prefix = args.names
        self.downloads = {}
        fits: dict[int, command.local.Command] = {}
        # The fit check once the image is on the engine: a model that cannot fit
        # stops `pulumi up` before its download and its replicas. Then one download
        # per repository; every replica then loads from the cache offline, so none
        # waits for another's load (docs/design.md, start-up order).
        for index, engine in enumerate(args.engines):
            names = f"{prefix}-{engine.plan.resource_prefix}"
            for fit in engine.plan.fits:
                if fit.pool == mine:
                    fits[index] = self._job(f"{names}{fit.step_name}", fit, engine)
            for download in engine.plan.downloads:
                if download.pool != mine:
                    continue
                owner = [fits[index]] if index in fits else []
                job = self._job(f"{names}{download.step_name}", download, engine, owner)
                for pool in download.pools:
                    self.downloads.setdefault((index, pool), []).append(job)
        engine_of = {r.name: i for i, e in enumerate(args.engines) for r in e.plan.replicas}

        # Replicas in waves across engines: a wave waits for the previous one to be
        # back in rotation, and the second for the canary's verdict, so an update
        # keeps at least half the pool serving. A first deploy has no waits.
        self.containers = {}
        self.rotations = []
        self.canary = None
        previous: list[pulumi.Resource] = []
        for wave in sorted({rollout.wave for _, rollout in args.replicas}):
            resumed: list[pulumi.Resource] = []
            first: list[docker.Container] = []
            for replica, rollout in args.replicas:
                if rollout.wave != wave:
                    continue
                index = engine_of[replica.name]
                after = [
                    *([fits[index]] if index in fits else []),
                    *args.earlier_downloads.get((index, mine), []),
                    *self.downloads.get((index, mine), []),
                    *(previous if args.rolling else []),
                ]
                container = self._replica(replica, args.engines[index], after)
                self.containers[replica.name] = container
                rotation = self._rotation(rollout, container)
                self.rotations.append(rotation)
                resumed.append(rotation)
                first.append(container)
            previous = resumed
            if wave == 0 and args.canary is not None:
                self.canary = self._canary(args.canary, first, resumed)
                previous = [self.canary]

        # Each engine's readiness check, after this pool's replicas there.
        self.checks = []
        for engine in args.engines:
            for check in engine.plan.ready:
                if check.waits_for[0] not in self.containers:
                    continue  # another pool's
                waits = [self.containers[r] for r in check.waits_for]
                environment: dict[str, pulumi.Input[str]] = {
                    key: args.secrets[key] for key in check.secret_env
                }
                environment.update(engine.environment)
                self.checks.append(
                    check_command(
                        f"{prefix}-{check.name}",
                        check,
                        environment,
                        [c.id for c in waits],
                        args.project_dir,
                        self._child(depends_on=waits),
                    )
                )
        self.register_outputs({"replica_names": [r.name for r, _ in args.replicas]})

    def _child(self, **more: object) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, aliases=self._moved, **more)  # type: ignore[arg-type]

    def _replica(
        self, replica: ReplicaPlan, engine: EngineParts, after: Sequence[pulumi.Resource]
    ) -> docker.Container:
        args = self._args
        plain = [f"{key}={value}" for key, value in replica.env.items()]
        secret = [_env_entry(key, args.secrets[key]) for key in replica.secret_env]
        envs: pulumi.Input[list[str]] = (
            pulumi.Output.all(*plain, *secret).apply(list) if secret else plain
        )
        hc = replica.health_check
        durations = hc.durations()
        parts = engine.engine
        if args.cache.volume is not None:
            volume = docker.ContainerVolumeArgs(
                volume_name=parts.cache_volume.name if parts.cache_volume else None,
                container_path=args.cache.mount_path,
            )
        else:
            volume = docker.ContainerVolumeArgs(
                host_path=args.cache.host_path, container_path=args.cache.mount_path
            )
        volumes = [volume]
        if args.compile_cache is not None and parts.compile_volume is not None:
            volumes.append(
                docker.ContainerVolumeArgs(
                    volume_name=parts.compile_volume.name,
                    container_path=args.compile_cache.mount_path,
                )
            )
        return docker.Container(
            f"{args.names}-{replica.name}",
            name=replica.name,
            image=parts.images[replica.pool],
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
                docker.ContainerNetworksAdvancedArgs(
                    name=parts.network.name, aliases=[replica.name]
                )
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
            restart=args.restart_policy,
            # Without it the provider's delete stops with a 0 s timeout: the
            # container is killed at once, cutting every stream in flight.
            destroy_grace_seconds=replica.stop_grace_seconds,
            opts=self._child(
                provider=engine.provider,
                depends_on=list(after),
                delete_before_replace=True,
                additional_secret_outputs=["envs"],
                # The provider neither replaces nor updates a container whose
                # health check changed; replacing is the only way it takes effect.
                replace_on_changes=["healthcheck", RETRY_FAILED_START],
            ),
        )

    def _job(
        self,
        resource_name: str,
        job: JobPlan,
        engine: EngineParts,
        after: Sequence[pulumi.Resource] = (),
    ) -> command.local.Command:
        """A step that runs short containers of the pool's image (download, fit
        check): a local command, so it streams their output and fails `pulumi up`
        before any replica exists. It waits for the image through its spec
        and runs on the engine's host network, so not for the replicas' network."""
        args = self._args
        parts = engine.engine
        cache = args.cache
        source: pulumi.Input[str] = (
            parts.cache_volume.name if parts.cache_volume is not None else str(cache.host_path)
        )
        spec = pulumi.Output.all(parts.images[job.pool], source).apply(
            lambda values: job.environment(str(values[0]), str(values[1]))[SPEC_ENV]
        )
        environment: dict[str, pulumi.Input[str]] = {
            key: args.secrets[key] for key in job.secret_env
        }
        environment.update(engine.environment)
        environment[SPEC_ENV] = spec
        volume = [parts.cache_volume] if parts.cache_volume is not None else []
        return command.local.Command(
            resource_name,
            create=job.command,
            dir=str(args.project_dir),
            environment=environment,
            opts=self._child(
                depends_on=[*volume, *after],
                # Redacted already; secret anyway, as pulumi-command keeps stdout
                # plain even when the environment holds a secret.
                additional_secret_outputs=["stdout", "stderr"],
            ),
        )

    def _secret_variables(self, secrets: Mapping[str, str]) -> dict[str, pulumi.Output[str]]:
        """Variable -> its secret's value (a standby's engine's TLS material)."""
        return {variable: self._args.secrets[secret] for variable, secret in secrets.items()}

    def _rotation(self, rollout: RolloutPlan, replica: docker.Container) -> command.local.Command:
        """Drain (delete) before the replica stops, resume (create) once it is back.

        Its trigger is the replica's id, so replacing the replica condemns this
        command first (delete-before-replace deletes dependents before the
        resource), which is what runs the drain before the stop.
        """
        args = self._args
        return command.local.Command(
            f"{args.names}-{rollout.replica}-rotation",
            create=rollout.resume,
            delete=rollout.drain,
            dir=str(args.project_dir),
            environment={
                **rollout.step.environment,
                **args.balancer_environment,
                **self._secret_variables(rollout.balancer_secrets),
            },
            triggers=[replica.id],
            opts=self._child(depends_on=[replica], delete_before_replace=True),
        )

    def _canary(
        self,
        canary: CanaryPlan,
        first: Sequence[docker.Container],
        resumed: Sequence[pulumi.Resource],
    ) -> command.local.Command:
        """The first wave watched under traffic once its rotations resumed it.

        Its triggers are the first wave's container ids: replacing one of them
        runs it again; nothing else does, so an unchanged stack shows no diff.
        """
        args = self._args
        return command.local.Command(
            f"{args.names}-{canary.name}",
            create=canary.command,
            dir=str(args.project_dir),
            environment={
                **canary.environment,
                **args.balancer_environment,
                **self._secret_variables(canary.balancer_secrets),
                # Which containers it watched: a run that finds them done does not
                # watch again (only a rollout.canary* setting changed).
                CANARY_CONTAINERS_ENV: pulumi.Output.all(*[c.id for c in first]).apply(
                    lambda ids: ",".join(str(i)[:12] for i in ids)
                ),
            },
            triggers=[c.id for c in first],
            opts=self._child(depends_on=list(resumed)),
        )
