"""The program `pulumi up` runs, kept apart from `__main__` so tests can run it.

Reads the whole stack config, validates it before declaring anything, and
returns the stack outputs. Pulumi's Python SDK has no public way to list the
config keys of a namespace, so the keys are read from the runtime's config map
(`PULUMI_CONFIG` under the CLI, `set_all_config` under test mocks); that is
what lets a typo in a key name fail instead of being ignored.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components import PROJECT_DIR
from components.config.kubernetes_sections import EngineKind
from components.config.loading import deployment_problems, settings_from_config, split_namespace
from components.config.problems import NAMESPACE, ConfigError
from components.config.settings import Settings
from components.config.vllm_release import old_release_warning
from components.deployment.cluster import VllmCluster, VllmClusterArgs
from components.deployment.kubernetes_cluster import KubernetesCluster, KubernetesClusterArgs
from components.deployment.serving import deployment_running
from components.plan.kubernetes import canary_written


def stack_config() -> dict[str, Any]:
    """Every config key the runtime holds, as `namespace:key` -> raw value."""
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def load_settings(namespace: str = NAMESPACE) -> Settings:
    raw = split_namespace(stack_config(), namespace)
    secret = {key for key in raw if runtime_config.is_config_secret(f"{namespace}:{key}")}
    secret |= {
        key.split(":", 1)[1]
        for key in runtime_config.get_config_secret_keys_env()
        if key.startswith(f"{namespace}:")
    }
    # The same loader `python -m components.cli.check` runs on the stack file.
    return settings_from_config(raw, secret, namespace)


def deploy(name: str = "vllm") -> dict[str, pulumi.Output[Any]]:
    """Declare the deployment; returns what the stack exports."""
    settings = load_settings()
    if settings.engine is EngineKind.KUBERNETES:
        return deploy_kubernetes(settings, name)
    docker_host = pulumi.Config("docker").get("host")
    problems = deployment_problems(settings, docker_host=docker_host, project_dir=PROJECT_DIR)
    if problems:
        raise ConfigError(problems)
    # The stack's image, and a pool's own.
    for key, image in settings.images():
        release_warning = old_release_warning(image.prebuilt, f"{key}.prebuilt")
        if release_warning is not None:
            pulumi.log.warn(release_warning)
    lb = settings.load_balancer
    if settings.api_key is None and not ipaddress.ip_address(lb.bind_address).is_loopback:
        pulumi.log.warn(
            f"the load balancer is published on {lb.bind_address}:{lb.port} without an API "
            "key: anyone who can reach that port can use the model. Set one with "
            "`pulumi config set --secret apiKey <key>`, or bind it to 127.0.0.1 "
            "(`pulumi config set --path loadBalancer.bindAddress 127.0.0.1`)."
        )
    if settings.api_key is None:
        remote = [e.name for e in settings.engines() if not e.runs_load_balancer]
        if remote:
            pulumi.log.warn(
                f"replicas on {', '.join(remote)} are published on their hosts' addresses "
                "for the load balancer to reach, without an API key: anyone on that network "
                "can use them. Set one with `pulumi config set --secret apiKey <key>` "
                "(vLLM then refuses /v1 without it) and firewall the replica ports."
            )
    rolling = deployment_running(settings, docker_host)
    cluster = VllmCluster(
        name, VllmClusterArgs(settings=settings, docker_host=docker_host, rolling=rolling)
    )
    return {
        "lb_url": cluster.lb_url,
        "replica_urls": cluster.replica_urls,
        "replica_names": cluster.replica_names,
        "served_model_name": cluster.served_model_name,
        "verified_models": cluster.verified_models,
        **cluster.monitoring_outputs(),
        **cluster.hosts_outputs(),
        **cluster.pools_outputs(),
    }


def deploy_kubernetes(settings: Settings, name: str) -> dict[str, Any]:
    """`engine: kubernetes`: the same settings onto a cluster (docs/kubernetes.md)."""
    for key, image in settings.images():
        release_warning = old_release_warning(image.prebuilt, f"{key}.prebuilt")
        if release_warning is not None:
            pulumi.log.warn(release_warning)
    if settings.fit_check.enabled:
        pulumi.log.warn(
            "the fit check is skipped on Kubernetes (it runs containers on a Docker engine): "
            "a model that does not fit its GPUs fails at its replicas' startup probe instead"
        )
    if not canary_written(settings):
        pulumi.log.warn(
            "no canary on Kubernetes unless `rollout.canarySeconds` is set: an update replaces "
            "a pool's pods one by one, each ready before the next stops, without a verdict "
            "between them (set it, e.g. 60, for a canary; or 0 to silence this)"
        )
    service = settings.kubernetes.service
    if settings.api_key is None and service.type != "ClusterIP":
        pulumi.log.warn(
            f"the balancer's {service.type} Service has no API key in front of it: anyone who "
            "reaches it can use the models. Set one with `pulumi config set --secret apiKey <key>`."
        )
    cluster = KubernetesCluster(name, KubernetesClusterArgs(settings=settings))
    return cluster.outputs()
