"""The Kubernetes engine's top component: one `KubernetesPlan` wired into pulumi-kubernetes.

Nothing here decides anything: the provider for the stack's cluster, the
namespace, the stack's secrets as Kubernetes Secrets (values stay Pulumi
secrets), one KubernetesPool per pool, the KubernetesBalancer after every
pool's replicas, and the verify step against the balancer's Service.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import PROJECT_DIR
from components.config.settings import Settings
from components.deployment import kubernetes_parts as parts
from components.deployment.cluster import _secret_values
from components.deployment.kubernetes_balancer import (
    KubernetesBalancer,
    KubernetesBalancerArgs,
    verify_command,
)
from components.deployment.kubernetes_monitoring import (
    KubernetesMonitoring,
    KubernetesMonitoringArgs,
)
from components.deployment.kubernetes_pool import KubernetesPool, KubernetesPoolArgs
from components.plan.kubernetes import TOKEN_FILE, KubernetesPlan, build_kubernetes_plan
from components.plan.model import HF_TOKEN_ENV
from components.plan.specs import SPEC_ENV, encode

TYPE_TOKEN = "vllm-nginx:index:KubernetesCluster"


@dataclass(frozen=True)
class KubernetesClusterArgs:
    settings: Settings
    project_dir: Path = PROJECT_DIR
    python: str = sys.executable


class KubernetesCluster(pulumi.ComponentResource):
    """The stack's pools and balancer on one cluster."""

    lb_url: pulumi.Output[str]
    verified_models: pulumi.Output[str]

    def __init__(
        self, name: str, args: KubernetesClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        settings = args.settings
        # The plan first: if it cannot be made, nothing has been registered.
        self.plan: KubernetesPlan = build_kubernetes_plan(
            settings, project_dir=args.project_dir, python=args.python
        )
        super().__init__(TYPE_TOKEN, name, None, opts)
        plan = self.plan
        secrets = _secret_values(settings)
        self.provider = k8s.Provider(
            f"{name}-kubernetes",
            kubeconfig=os.path.expanduser(plan.kubeconfig) if plan.kubeconfig else None,
            context=plan.context,
            opts=pulumi.ResourceOptions(parent=self),
        )

        child = partial(parts.child, self, self.provider)

        labels = dict(plan.labels)
        namespace: pulumi.Input[str] = plan.namespace
        if plan.create_namespace:
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=plan.namespace, labels=labels),
                # Deleting a namespace deletes its claims: kept with the model cache.
                opts=child(retain_on_delete=plan.keeps_claims),
            ).metadata.name

        scope = parts.Scope(self.provider, namespace, labels, secrets)

        def secret(resource: str, data: dict[str, pulumi.Output[str]]) -> pulumi.Output[str]:
            return k8s.core.v1.Secret(
                f"{name}-{resource}",
                metadata=scope.metadata(),
                string_data=data,
                opts=child(),
            ).metadata.name

        env_names = sorted({n for p in plan.pools for n in p.secret_env})
        env_secret = (
            secret("replica-env", {n: secrets[n] for n in env_names}) if env_names else None
        )
        token_secret = (
            secret("hf-token", {TOKEN_FILE: secrets[HF_TOKEN_ENV]})
            if HF_TOKEN_ENV in secrets
            else None
        )
        self.pools: list[KubernetesPool] = []
        for pool in plan.pools:
            self.pools.append(
                KubernetesPool(
                    f"{name}-{pool.resource_prefix}pool",
                    KubernetesPoolArgs(
                        plan=pool,
                        scope=scope,
                        env_secret=env_secret,
                        token_secret=token_secret,
                    ),
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        cluster_ips = {n: s.spec.cluster_ip for p in self.pools for n, s in p.services.items()}
        starts_after: list[pulumi.Resource] = [p.workload for p in self.pools]
        self.monitoring: KubernetesMonitoring | None = None
        if plan.monitoring is not None:
            self.monitoring = KubernetesMonitoring(
                f"{name}-monitoring",
                KubernetesMonitoringArgs(
                    plan=plan.monitoring,
                    scope=scope,
                    cluster_ips=cluster_ips,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            cluster_ips = {**cluster_ips, **self.monitoring.cluster_ips}
            # nginx resolves the exporter's name at start: it must exist and listen.
            starts_after.append(self.monitoring.exporter)
        self.balancer = KubernetesBalancer(
            f"{name}-balancer",
            KubernetesBalancerArgs(
                plan=plan.balancer,
                scope=scope,
                cluster_ips=cluster_ips,
                starts_after=starts_after,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        verify = plan.verify
        self.lb_url = parts.service_url(
            self.balancer.service,
            plan.lb_url,
            verify.scheme if verify is not None else "http",
            verify.host if verify is not None else None,
            plan.balancer.service_port,
        )
        self.verified_models = pulumi.Output.from_input("")
        if plan.verify is not None:
            verify = plan.verify
            spec = self.lb_url.apply(lambda url: encode(dataclasses.replace(verify.spec, url=url)))
            check = verify_command(
                f"{name}-verify",
                verify.argv,
                {SPEC_ENV: spec, **{key: secrets[key] for key in verify.secret_env}},
                [
                    self.balancer.config.metadata.name,
                    *(p.workload.metadata.generation for p in self.pools),
                ],
                args.project_dir,
                pulumi.ResourceOptions(
                    parent=self, depends_on=[self.balancer.deployment, self.balancer.service]
                ),
            )
            self.verified_models = pulumi.Output.unsecret(check.stdout)
        self.register_outputs(self.outputs())

    def outputs(self) -> dict[str, Any]:
        base = self.plan.base
        outputs: dict[str, Any] = {
            "lb_url": self.lb_url,
            "namespace": self.plan.namespace,
            "replica_names": [r.name for r in base.replicas],
            "served_model_name": base.served_model_name,
            "verified_models": self.verified_models,
        }
        if self.monitoring is not None:
            outputs["prometheus_url"] = self.monitoring.prometheus_url
            outputs["grafana_url"] = self.monitoring.grafana_url
        if base.pools:
            outputs["pools"] = {
                pool.name: {
                    "model": pool.model,
                    "served_model_name": pool.served_name,
                    "adapters": [n for n, _ in pool.adapters],
                    "replica_names": list(pool.replicas),
                }
                for pool in base.pools
            }
        return outputs
