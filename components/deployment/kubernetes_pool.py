"""One model pool on a cluster: its model cache claim, its download Job, its replicas.

The replicas are one StatefulSet (its pod names are stable, `<workload>-<i>`),
each pod behind a Service of its own named as nginx.conf names the replica.
The StatefulSet depends on the Job, which the provider counts as created only
once it completed: a failed download stops the pool before any replica. With the
canary, the first wave is a StatefulSet of its own, and the pool's waits for its step.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components import PROJECT_DIR
from components.deployment import kubernetes_parts as parts
from components.deployment.kubernetes_parts import env_vars, probe
from components.plan.kubernetes import (
    GPU_RESOURCE,
    JOB_SCRIPT,
    JOB_SCRIPT_DIR,
    POD_NAME_LABEL,
    TOKEN_DIR,
    TOKEN_FILE,
    KubePoolPlan,
)
from components.plan.model import COMPILE_CACHE_MOUNT, HF_CACHE_MOUNT
from components.plan.specs import IN_ROTATION, ROTATION_LABEL, SPEC_ENV, encode

TYPE_TOKEN = "vllm-nginx:index:KubernetesPool"
WAIT_FOR = "pulumi.com/waitFor"
"""pulumi-kubernetes' annotation: the conditions its await checks instead of its own."""

core = k8s.core.v1
meta = k8s.meta.v1


@dataclass(frozen=True)
class KubernetesPoolArgs:
    plan: KubePoolPlan
    scope: parts.Scope
    env_secret: pulumi.Input[str] | None
    """The Secret (by name) the replicas' secret variables come from."""
    token_secret: pulumi.Input[str] | None
    """The Secret (by name) holding the Hugging Face token as `hf_token`."""
    project_dir: Path = PROJECT_DIR
    """Where the canary step runs (`python -m components.steps.kube_canary`)."""


class KubernetesPool(pulumi.ComponentResource):
    """A pool's claim, download Job, StatefulSet and per-replica Services."""

    claim: core.PersistentVolumeClaim
    job: k8s.batch.v1.Job | None
    workload: k8s.apps.v1.StatefulSet
    canary_workload: k8s.apps.v1.StatefulSet | None
    """The first wave's StatefulSet, with `rollout.canarySeconds`."""
    canary: command.local.Command | None
    services: dict[str, core.Service]

    def __init__(
        self, name: str, args: KubernetesPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        plan = args.plan
        prefix = f"{name}-"

        child = partial(parts.child, self, args.scope.provider)

        self.claim = core.PersistentVolumeClaim(
            f"{prefix}cache",
            metadata=args.scope.metadata(plan.claim.name),
            spec=core.PersistentVolumeClaimSpecArgs(
                access_modes=[plan.claim.access_mode],
                storage_class_name=plan.claim.storage_class,
                resources=core.VolumeResourceRequirementsArgs(
                    requests={"storage": plan.claim.size}
                ),
            ),
            opts=child(retain_on_delete=plan.claim.keep_on_destroy),
        )
        cache_volume = core.VolumeArgs(
            name="hf-cache",
            persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(
                claim_name=self.claim.metadata.name
            ),
        )
        cache_mount = core.VolumeMountArgs(name="hf-cache", mount_path=HF_CACHE_MOUNT)
        placement = plan.placement
        tolerations = [core.TolerationArgs(**t) for t in placement.tolerations]  # type: ignore[arg-type]
        self.job = None
        after: list[pulumi.Resource] = []
        if plan.download is not None:
            job = plan.download
            script = core.ConfigMap(
                f"{prefix}download-script",
                metadata=args.scope.metadata(),
                data={JOB_SCRIPT: job.script},
                opts=child(),
            )
            volumes = [
                cache_volume,
                core.VolumeArgs(
                    name="script",
                    config_map=core.ConfigMapVolumeSourceArgs(name=script.metadata.name),
                ),
            ]
            mounts = [
                cache_mount,
                core.VolumeMountArgs(name="script", mount_path=JOB_SCRIPT_DIR, read_only=True),
            ]
            env = dict(job.env)
            if job.token and args.token_secret is not None:
                volumes.append(
                    core.VolumeArgs(
                        name="token",
                        secret=core.SecretVolumeSourceArgs(
                            secret_name=args.token_secret, default_mode=0o400
                        ),
                    )
                )
                mounts.append(
                    core.VolumeMountArgs(name="token", mount_path=TOKEN_DIR, read_only=True)
                )
                env["HF_TOKEN_PATH"] = f"{TOKEN_DIR}/{TOKEN_FILE}"
            timeout = f"{job.timeout_seconds}s"
            self.job = k8s.batch.v1.Job(
                f"{prefix}download",
                metadata=args.scope.metadata(job.name),
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=0,
                    active_deadline_seconds=job.timeout_seconds,
                    template=core.PodTemplateSpecArgs(
                        metadata=meta.ObjectMetaArgs(labels=dict(args.scope.labels)),
                        spec=core.PodSpecArgs(
                            restart_policy="Never",
                            node_selector=dict(placement.node_selector) or None,
                            tolerations=tolerations or None,
                            containers=[
                                core.ContainerArgs(
                                    name="download",
                                    image=plan.image,
                                    image_pull_policy="IfNotPresent",
                                    # Its last lines (the cause) into the pod's status, which
                                    # the provider's error shows: `pulumi up` names the cause.
                                    termination_message_policy="FallbackToLogsOnError",
                                    command=["python3", f"{JOB_SCRIPT_DIR}/{JOB_SCRIPT}"],
                                    args=list(job.args),
                                    env=env_vars(env, (), None),
                                    volume_mounts=mounts,
                                )
                            ],
                            volumes=volumes,
                        ),
                    ),
                ),
                opts=child(
                    depends_on=[self.claim],
                    custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout),
                ),
            )
            after.append(self.job)

        selector = {**args.scope.labels, "app.kubernetes.io/name": plan.workload}
        mounts = [
            cache_mount,
            core.VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
        ]
        volumes = [
            cache_volume,
            # vLLM's tensor-parallel workers share memory through /dev/shm; a pod cannot
            # use the node's IPC namespace as `--ipc host` does without hostIPC.
            core.VolumeArgs(name="dshm", empty_dir=core.EmptyDirVolumeSourceArgs(medium="Memory")),
        ]
        if plan.compile_cache:
            mounts.append(
                core.VolumeMountArgs(name="compile-cache", mount_path=COMPILE_CACHE_MOUNT)
            )
            volumes.append(
                core.VolumeArgs(name="compile-cache", empty_dir=core.EmptyDirVolumeSourceArgs())
            )
        limits = {GPU_RESOURCE: str(plan.gpus)} if plan.gpus else None
        # The headless Service a StatefulSet names; on a cluster with DNS it also
        # gives each pod a name (nginx uses the per-replica Services below).
        headless = core.Service(
            f"{prefix}pods",
            metadata=args.scope.metadata(plan.workload),
            spec=core.ServiceSpecArgs(
                cluster_ip="None",
                selector=selector,
                ports=[core.ServicePortArgs(name="http", port=plan.port, target_port="http")],
            ),
            opts=child(),
        )
        container = core.ContainerArgs(
            name="vllm",
            image=plan.image,
            image_pull_policy="IfNotPresent",
            termination_message_policy="FallbackToLogsOnError",
            command=list(plan.command),
            args=list(plan.args),
            env=env_vars(plan.env, plan.secret_env, args.env_secret),
            ports=[core.ContainerPortArgs(name="http", container_port=plan.port)],
            resources=core.ResourceRequirementsArgs(limits=limits),
            volume_mounts=mounts,
            startup_probe=probe(plan.startup),
            readiness_probe=probe(plan.readiness),
            liveness_probe=probe(plan.liveness),
            # Unready, and dropped by its Service while it waits here;
            # then SIGTERM, and vLLM drains (--shutdown-timeout).
            lifecycle=core.LifecycleArgs(
                pre_stop=core.LifecycleHandlerArgs(
                    exec_=core.ExecActionArgs(command=list(plan.pre_stop))
                )
            ),
        )
        pod_spec = core.PodSpecArgs(
            node_selector=dict(placement.node_selector) or None,
            tolerations=tolerations or None,
            termination_grace_period_seconds=plan.termination_grace_seconds,
            containers=[container],
            volumes=volumes,
        )

        def statefulset(
            resource: str,
            workload: str,
            replicas: int,
            labels: dict[str, str],
            wait: tuple[str, ...],
            update_timeout: int,
            depends_on: list[pulumi.Resource],
            ordinals: k8s.apps.v1.StatefulSetOrdinalsArgs | None = None,
        ) -> k8s.apps.v1.StatefulSet:
            return k8s.apps.v1.StatefulSet(
                resource,
                metadata=args.scope.metadata(
                    workload, annotations={WAIT_FOR: json.dumps(list(wait))}
                ),
                spec=k8s.apps.v1.StatefulSetSpecArgs(
                    service_name=plan.workload,
                    replicas=replicas,
                    ordinals=ordinals,
                    # Every replica at once, as on Docker; updates still go one pod at a time.
                    pod_management_policy="Parallel",
                    min_ready_seconds=plan.min_ready_seconds,
                    selector=meta.LabelSelectorArgs(
                        match_labels={**args.scope.labels, "app.kubernetes.io/name": workload}
                    ),
                    template=core.PodTemplateSpecArgs(
                        metadata=meta.ObjectMetaArgs(labels=labels), spec=pod_spec
                    ),
                ),
                opts=child(
                    depends_on=depends_on,
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{plan.create_timeout_seconds}s", update=f"{update_timeout}s"
                    ),
                ),
            )

        # With a canary, the first wave is a StatefulSet of its own, judged by a step
        # before the other one is updated (docs/kubernetes.md, "The canary").
        canary = plan.canary
        self.canary_workload = None
        self.canary = None
        judged: list[pulumi.Resource] = []
        own: dict[str, tuple[dict[str, str], pulumi.Resource]] = {}
        if canary is not None:
            labels = {
                **args.scope.labels,
                "app.kubernetes.io/name": canary.workload,
                ROTATION_LABEL: IN_ROTATION,
            }
            self.canary_workload = statefulset(
                f"{prefix}canary-replicas",
                canary.workload,
                canary.replicas,
                labels,
                canary.wait_for,
                canary.update_timeout_seconds,
                [*after, headless],
            )
            self.canary = command.local.Command(
                f"{prefix}canary",
                create=shlex.join(canary.argv),
                dir=str(args.project_dir),
                environment={SPEC_ENV: encode(canary.spec)},
                # Again whenever the canary's pods change (a new revision), not on a scale.
                triggers=[
                    self.canary_workload.status.apply(lambda s: s.update_revision if s else "")
                ],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.canary_workload]),
            )
            judged = [self.canary]
            for replica in plan.replicas[: canary.replicas]:
                own[replica.service] = (labels, self.canary_workload)
        self.workload = statefulset(
            f"{prefix}replicas",
            plan.workload,
            len(plan.replicas) - plan.first_ordinal,
            selector,
            plan.wait_for,
            plan.update_timeout_seconds,
            [*after, headless, *judged],
            k8s.apps.v1.StatefulSetOrdinalsArgs(start=plan.first_ordinal) if canary else None,
        )
        self.services = {}
        for replica in plan.replicas:
            labels, workload = own.get(replica.service, (selector, self.workload))
            self.services[replica.service] = core.Service(
                f"{name}-{replica.service}",
                metadata=args.scope.metadata(replica.service),
                spec=core.ServiceSpecArgs(
                    selector={**labels, POD_NAME_LABEL: replica.pod},
                    ports=[core.ServicePortArgs(name="http", port=plan.port, target_port="http")],
                ),
                opts=child(depends_on=[workload]),
            )
        self.register_outputs({"workload": self.workload.metadata.name})
