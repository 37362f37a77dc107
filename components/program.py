"""The program `pulumi up` runs, kept apart from `__main__` so tests can run it.

Reads the whole stack config, validates it before declaring anything, and
returns the stack outputs. Pulumi's Python SDK has no public way to list the
config keys of a namespace, so the keys are read from the runtime's config map
(`PULUMI_CONFIG` under the CLI, `set_all_config` under test mocks); that is
what lets a typo in a key name fail instead of being ignored.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from .cluster import VllmCluster, VllmClusterArgs
from .settings import Settings, remote_engine_problems
from .stack_config import NAMESPACE, ConfigError, settings_from_config, split_namespace


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
    # The same loader `python -m components.check` runs on the stack file.
    return settings_from_config(raw, secret, namespace)


def deploy(name: str = "vllm") -> dict[str, pulumi.Output[Any]]:
    """Declare the deployment; returns what the stack exports."""
    settings = load_settings()
    docker_host = pulumi.Config("docker").get("host")
    problems = remote_engine_problems(settings, docker_host)
    if problems:
        raise ConfigError(
            "invalid stack config:\n  "
            + "\n  ".join(f"config key '{NAMESPACE}': {problem}" for problem in problems)
        )
    cluster = VllmCluster(name, VllmClusterArgs(settings=settings, docker_host=docker_host))
    return {
        "lb_url": cluster.lb_url,
        "replica_urls": cluster.replica_urls,
        "replica_names": cluster.replica_names,
        "served_model_name": cluster.served_model_name,
        "verified_models": cluster.verified_models,
    }
