"""The same plan for a cluster: `build_plan`'s replicas, downloads and nginx.conf, as pods.

Nothing is decided twice: command lines, environment, downloads and nginx.conf
come from `build_plan` (with nginx's `resolve` and the fit check off). This adds
what a cluster needs: a StatefulSet, a claim and a download Job per pool, probes
and grace, and a Service per replica named as nginx.conf names the replica; nginx
finds each by its ClusterIP in /etc/hosts, so no cluster DNS is needed
(docs/kubernetes.md).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.config.kubernetes_rules import pre_stop_floor
from components.config.kubernetes_sections import KubernetesSettings, TolerationSettings
from components.config.sections import Backend
from components.config.settings import Settings
from components.containers import CONTAINERS_DIR
from components.plan.build import build_plan
from components.plan.kubernetes_monitoring import KubeMonitoringPlan, build_kubernetes_monitoring
from components.plan.model import (
    HEALTH_PROBE,
    HF_TOKEN_ENV,
    NGINX_COMMAND,
    VLLM_ENTRYPOINT,
    VLLM_PORT,
    CanaryPlan,
    Plan,
    ReplicaPlan,
    SecretUpload,
    step_argv,
)
from components.plan.specs import (
    CanarySpec,
    KubeCanarySpec,
    VerifySpec,
    WatchedReplica,
)

GPU_RESOURCE = "nvidia.com/gpu"
"""NVIDIA's device plugin's resource: whole GPUs, under `limits` only."""
JOB_SCRIPT_DIR = "/opt/vllm-nginx"
JOB_SCRIPT = "download_job.py"
TOKEN_DIR = "/var/run/secrets/vllm-nginx"
TOKEN_FILE = "hf_token"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
"""The label the StatefulSet controller puts on each pod: a replica's Service selects it."""


CANARY_SUFFIX = "-canary"
"""The first wave's StatefulSet: the pool's workload name and this."""


def wait_for(replicas: int) -> tuple[str, ...]:
    """When `pulumi up` counts a StatefulSet rolled out (`pulumi.com/waitFor`): every pod
    ready and of the new revision. The provider checks `observedGeneration` first; its
    own StatefulSet await (4.25.0) returned on an update before any pod was replaced."""
    fields = ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")
    return tuple(f"jsonpath={{.status.{field}}}={replicas}" for field in fields)


STOP_FILE = "/tmp/vllm-nginx-stopping"
"""Made by a replica's `preStop`: from then on its readiness probe fails."""


@dataclass(frozen=True)
class ProbePlan:
    """An HTTP probe on vLLM's port, a TCP one on nginx's (`path` None), or a command."""

    port: int
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int
    path: str | None = "/health"
    command: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ClaimPlan:
    name: str
    storage_class: str | None
    access_mode: str
    size: str
    keep_on_destroy: bool


@dataclass(frozen=True)
class DownloadJobPlan:
    """A pool's download as a Job: its repositories into the pool's claim, the token as a file."""

    name: str
    repos: tuple[str, ...]
    env: Mapping[str, str]
    token: bool
    timeout_seconds: int
    progress_seconds: int
    script: str

    @property
    def args(self) -> tuple[str, ...]:
        models = (word for repo in self.repos for word in ("--model", repo))
        return (*models, "--progress-seconds", str(self.progress_seconds))


@dataclass(frozen=True)
class KubeReplicaPlan:
    """One replica: its Service (the plan's name, nginx's upstream) and the pod it selects."""

    service: str
    pod: str


@dataclass(frozen=True)
class Placement:
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, str], ...]


@dataclass(frozen=True)
class KubeCanaryPlan:
    """A pool's first wave as a StatefulSet of its own, judged by a step (`kube_canary`)
    before the pool's StatefulSet of the other replicas is updated."""

    workload: str
    replicas: int
    argv: tuple[str, ...]
    spec: KubeCanarySpec
    update_timeout_seconds: int

    @property
    def wait_for(self) -> tuple[str, ...]:
        return wait_for(self.replicas)


@dataclass(frozen=True)
class KubePoolPlan:
    """One pool as a StatefulSet of identical pods, each behind a Service of its own."""

    pool: str
    resource_prefix: str
    """Between the component's name and a resource's: '<pool>-', or ''."""
    workload: str
    image: str
    replicas: tuple[KubeReplicaPlan, ...]
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: Mapping[str, str]
    secret_env: tuple[str, ...]
    gpus: int
    """`nvidia.com/gpu` per pod: the tensor-parallel size (0 on the CPU backend)."""
    claim: ClaimPlan
    download: DownloadJobPlan | None
    placement: Placement
    startup: ProbePlan
    readiness: ProbePlan
    liveness: ProbePlan
    pre_stop: tuple[str, ...]
    """The replica's `preStop` command: unready, then wait for the Services to drop it."""
    termination_grace_seconds: int
    min_ready_seconds: int
    """How long a new pod must be ready before the next is replaced: as long as the old
    one takes to leave its Service, so kube-proxy adds the new one first."""
    create_timeout_seconds: int
    """How long `pulumi up` waits for a new pool's pods to be ready (the load)."""
    update_timeout_seconds: int
    """... and for an update, pod after pod: each stops (grace) and loads again."""
    compile_cache: bool
    port: int = VLLM_PORT
    canary: KubeCanaryPlan | None = None
    """With `rollout.canarySeconds`: the first `canary.replicas` replicas are the canary's
    StatefulSet; `workload` holds the others, numbered from there (`ordinals.start`)."""

    @property
    def first_ordinal(self) -> int:
        return self.canary.replicas if self.canary is not None else 0

    @property
    def wait_for(self) -> tuple[str, ...]:
        return wait_for(len(self.replicas) - self.first_ordinal)


@dataclass(frozen=True)
class KubeBalancerPlan:
    """nginx as a Deployment of `replicas` pods behind one Service."""

    name: str
    image: str
    replicas: int
    config: str
    config_path: str
    files: Mapping[str, str]
    secret_files: tuple[SecretUpload, ...]
    container_port: int
    command: tuple[str, ...]
    service_type: str
    service_port: int
    node_port: int | None
    pre_stop_seconds: int
    termination_grace_seconds: int
    readiness: ProbePlan
    reaches: tuple[str, ...]
    """Every Service nginx.conf names (the replicas; the exporter, with monitoring): each
    mapped to its ClusterIP in /etc/hosts."""


@dataclass(frozen=True)
class KubeVerifyPlan:
    """The verify step (`components.steps.verify`), against the balancer's Service."""

    argv: tuple[str, ...]
    spec: VerifySpec
    """Its `url` is filled in by the deployment (a LoadBalancer's address is known there)."""
    scheme: str
    host: str | None
    """`publicHost` for a NodePort; None: the LoadBalancer's address."""
    secret_env: tuple[str, ...]


@dataclass(frozen=True)
class KubernetesPlan:
    """Everything the Kubernetes components declare, with the Docker plan it came from."""

    base: Plan
    kubeconfig: str | None
    context: str | None
    namespace: str
    create_namespace: bool
    pools: tuple[KubePoolPlan, ...]
    balancer: KubeBalancerPlan
    verify: KubeVerifyPlan | None
    """None for a ClusterIP Service: nothing outside the cluster reaches it."""
    lb_url: str | None
    """Known before deploying for a NodePort with `nodePort`; else from the Service."""
    monitoring: KubeMonitoringPlan | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def keeps_claims(self) -> bool:
        """Some claim outlives `pulumi destroy`, so its namespace must too (deleting a
        namespace deletes its claims)."""
        kept = [p.claim.keep_on_destroy for p in self.pools]
        if self.monitoring is not None:
            kept += [m.claim.keep_on_destroy for m in self.monitoring.pieces if m.claim]
        return any(kept)


def cluster_settings(settings: Settings) -> Settings:
    """The settings `build_plan` runs on for a cluster: nginx resolves the replica names
    once from /etc/hosts (no `resolve`), opens a connection per request (a kept one
    would outlive its pod's removal from the Service and reach it draining, where
    vLLM answers new requests with an abort), counts no failures (`max_fails=0`: a
    replica away is refused at once by its empty Service, so a failure mark would only
    outlive its return; docs/kubernetes.md), no fit check (it needs Docker), and a
    canary only when `rollout.canarySeconds` is written (`canary_written`)."""
    lb = settings.load_balancer.model_copy(
        update={"dynamic_resolve": False, "keepalive_connections": 0, "max_fails": 0}
    )
    fit = settings.fit_check.model_copy(update={"enabled": False})
    rollout = settings.rollout
    if not canary_written(settings):
        rollout = rollout.model_copy(update={"canary_seconds": 0})
    return settings.model_copy(update={"load_balancer": lb, "fit_check": fit, "rollout": rollout})


def canary_written(settings: Settings) -> bool:
    """Whether the stack file sets `rollout.canarySeconds`: on a cluster its default (60)
    does not turn the canary on, which gives a pool's first wave a StatefulSet of its own
    (new pod names, once), so a stack deployed without it is not restructured."""
    return (
        "rollout" in settings.model_fields_set
        and "canary_seconds" in settings.rollout.model_fields_set
    )


def _tolerations(found: tuple[TolerationSettings, ...]) -> tuple[Mapping[str, str], ...]:
    return tuple(t.model_dump(by_alias=True, exclude_none=True) for t in found)


def _placement(k8s: KubernetesSettings, pool: str) -> Placement:
    own = next((p for p in k8s.pools if p.pool == pool), None)
    selector = dict(k8s.node_selector)
    tolerations = k8s.tolerations
    if own is not None:
        selector.update(own.node_selector)
        if own.tolerations is not None:
            tolerations = own.tolerations
    return Placement(selector, _tolerations(tolerations))


def _workload(settings: Settings, pool: str, prefix: str) -> str:
    """A single-model stack's pool (name prefix "") names its workload after the stack."""
    stack = settings.name_prefix.rstrip("-")
    return f"{stack}-{pool}" if prefix else stack


def _download(
    settings: Settings, base: Plan, pool: str, prefix: str, workload: str
) -> DownloadJobPlan | None:
    """Every repository the pool's replicas load (its own claim holds them all)."""
    jobs = [d for d in base.hosts[0].downloads if pool in d.pools]
    repos = tuple(dict.fromkeys(m for d in jobs for m in d.spec.models))
    if not repos:
        return None
    env: dict[str, str] = {}
    for job in jobs:
        env.update(job.spec.env)
    return DownloadJobPlan(
        name=f"{workload}-download",
        repos=repos,
        env=env,
        token=any(HF_TOKEN_ENV in d.secret_env for d in jobs),
        timeout_seconds=settings.ready_timeout_seconds,
        progress_seconds=settings.progress_interval_seconds,
        script=(CONTAINERS_DIR / "vllm" / JOB_SCRIPT).read_text(),
    )


def _canary(
    settings: Settings, found: CanaryPlan, workload: str, per_pod_seconds: int, python: str
) -> KubeCanaryPlan:
    """The base plan's canary of a pool (its first wave, by replica name) on the cluster:
    its metrics through the API server's proxy to each replica's Service."""
    k8s = settings.kubernetes
    judge = found.spec
    assert isinstance(judge, CanarySpec)

    def watched(service: str, pod: str) -> WatchedReplica:
        path = f"/api/v1/namespaces/{k8s.namespace}/services/{service}:{VLLM_PORT}/proxy/metrics"
        return WatchedReplica(service, path, pod)

    canary = f"{workload}{CANARY_SUFFIX}"
    first = len(found.canary)
    return KubeCanaryPlan(
        workload=canary,
        replicas=first,
        argv=step_argv(python, "kube_canary"),
        spec=KubeCanarySpec(
            kubeconfig=k8s.kubeconfig,
            context=k8s.context,
            namespace=k8s.namespace,
            canary_workload=canary,
            rest_workload=workload,
            canary=tuple(watched(n, f"{canary}-{i}") for i, n in enumerate(found.canary)),
            baseline=tuple(
                watched(n, f"{workload}-{first + i}") for i, n in enumerate(found.baseline)
            ),
            seconds=judge.seconds,
            max_ttft_ratio=judge.max_ttft_ratio,
            max_error_rate_increase=judge.max_error_rate_increase,
            min_requests=judge.min_requests,
            without_traffic=judge.without_traffic,
            max_wait_seconds=judge.max_wait_seconds,
            progress_seconds=judge.progress_seconds,
        ),
        update_timeout_seconds=first * per_pod_seconds + 60,
    )


def _pool(
    settings: Settings, base: Plan, pool: str, prefix: str, python: str = "python3"
) -> KubePoolPlan:
    mine = [r for r in base.replicas if r.pool == pool]
    first: ReplicaPlan = mine[0]
    for other in mine[1:]:
        # One pod template per pool: its replicas must not differ but in name.
        assert (other.command, other.env) == (first.command, first.env), other.name
    workload = _workload(settings, pool, prefix)
    image = next(i.image for i in base.hosts[0].images if pool in i.pools)
    hc = first.health_check
    k8s = settings.kubernetes
    tp = int(first.command[first.command.index("--tensor-parallel-size") + 1])
    gpu = settings.backend is Backend.GPU
    volume = settings.hf_cache.volume or "vllm-hf-cache"
    probe = ProbePlan(VLLM_PORT, hc.interval_seconds, hc.timeout_seconds, hc.retries)
    pre_stop = k8s.pre_stop_seconds or pre_stop_floor(settings)
    # kube-proxy keeps sending a Service's connections to its only pod while that pod
    # terminates but still passes its readiness probe ("serving"), and a draining vLLM
    # answers /health 200: after `preStop` marks it stopping, readiness fails at once.
    health = shlex.join(HEALTH_PROBE[1:])
    readiness = ProbePlan(
        VLLM_PORT,
        hc.interval_seconds,
        hc.timeout_seconds,
        1,
        command=("sh", "-c", f"test ! -e {STOP_FILE} && {health}"),
    )
    # Each pod's turn in an update: it stops (preStop, drain) and loads again.
    per_pod = settings.ready_timeout_seconds + pre_stop + settings.stop_grace_seconds + pre_stop
    found = next((c for c in base.canaries if c.pool == pool), None)
    canary = _canary(settings, found, workload, per_pod, python) if found else None
    # The base plan's first wave is the pool's first replicas, as the pods are numbered.
    assert found is None or found.canary == tuple(r.name for r in mine[: len(found.canary)])

    def pod(replica: ReplicaPlan) -> str:
        if canary is not None and replica.index < canary.replicas:
            return f"{canary.workload}-{replica.index}"
        return f"{workload}-{replica.index}"

    return KubePoolPlan(
        pool=pool,
        resource_prefix=prefix,
        workload=workload,
        image=image.name,
        replicas=tuple(KubeReplicaPlan(r.name, pod(r)) for r in mine),
        command=VLLM_ENTRYPOINT,
        args=first.command,
        env=dict(first.env),
        secret_env=first.secret_env,
        gpus=tp if gpu else 0,
        claim=ClaimPlan(
            name=f"{volume}-{pool}" if prefix else volume,
            storage_class=k8s.cache.storage_class,
            access_mode=k8s.cache.access_mode,
            size=k8s.cache.size,
            keep_on_destroy=settings.hf_cache.keep_on_destroy,
        ),
        download=_download(settings, base, pool, prefix, workload),
        placement=_placement(k8s, pool),
        # The long load: as many probes as fit in readyTimeoutSeconds.
        startup=ProbePlan(
            VLLM_PORT,
            hc.interval_seconds,
            hc.timeout_seconds,
            max(1, math.ceil(settings.ready_timeout_seconds / hc.interval_seconds)),
        ),
        readiness=readiness,
        liveness=probe,
        pre_stop=("sh", "-c", f"touch {STOP_FILE} && sleep {pre_stop}"),
        # The hook, then vLLM's drain (shutdownTimeoutSeconds) within stopGraceSeconds.
        termination_grace_seconds=pre_stop + settings.stop_grace_seconds,
        # Not nginx's failure window: it keeps no failure mark on Kubernetes (max_fails=0).
        min_ready_seconds=pre_stop,
        create_timeout_seconds=settings.ready_timeout_seconds + 60,
        update_timeout_seconds=len(mine) * per_pod + 60,
        compile_cache=base.compile_cache is not None,
        canary=canary,
    )


def _verify(settings: Settings, base: Plan) -> KubeVerifyPlan | None:
    service = settings.kubernetes.service
    if service.type == "ClusterIP":
        return None
    assert isinstance(base.verify.spec, VerifySpec)
    return KubeVerifyPlan(
        argv=base.verify.argv,
        spec=base.verify.spec,
        scheme="https" if settings.load_balancer.tls else "http",
        host=settings.public_host if service.type == "NodePort" else None,
        secret_env=base.verify.secret_env,
    )


def build_kubernetes_plan(
    settings: Settings, *, project_dir: Path, python: str = "python3"
) -> KubernetesPlan:
    """Settings (with `engine: kubernetes`) in, what the cluster runs out."""
    base = build_plan(cluster_settings(settings), project_dir=project_dir, python=python)
    k8s = settings.kubernetes
    lb = base.load_balancer
    service = k8s.service
    pre_stop = k8s.pre_stop_seconds or pre_stop_floor(settings)
    verify = _verify(settings, base)
    replicas = tuple(r.name for r in base.replicas)
    monitoring = (
        build_kubernetes_monitoring(settings, base.monitoring, replicas)
        if base.monitoring is not None
        else None
    )
    lb_url = None
    if verify is not None and verify.host is not None and service.node_port is not None:
        lb_url = f"{verify.scheme}://{verify.host}:{service.node_port}"
    if service.type == "ClusterIP":
        lb_url = f"http://{lb.name}.{k8s.namespace}.svc:{service.port}"
    return KubernetesPlan(
        base=base,
        kubeconfig=k8s.kubeconfig,
        context=k8s.context,
        namespace=k8s.namespace,
        create_namespace=k8s.create_namespace,
        pools=tuple(_pool(settings, base, pool, prefix, python) for pool, prefix in base.pool_keys),
        balancer=KubeBalancerPlan(
            name=lb.name,
            image=lb.image.name,
            replicas=k8s.balancer_replicas,
            config=lb.config,
            config_path=lb.config_path,
            files=lb.files,
            secret_files=lb.secret_uploads,
            container_port=lb.container_port,
            command=NGINX_COMMAND,
            service_type=service.type,
            service_port=service.port,
            node_port=service.node_port,
            pre_stop_seconds=pre_stop,
            termination_grace_seconds=pre_stop + lb.stop_grace_seconds,
            readiness=ProbePlan(lb.container_port, 2, 2, 3, path=None),
            reaches=(
                *replicas,
                *([monitoring.exporter.name] if monitoring is not None else []),
            ),
        ),
        verify=verify,
        lb_url=lb_url,
        monitoring=monitoring,
        labels={"app.kubernetes.io/part-of": "vllm-nginx"},
    )
