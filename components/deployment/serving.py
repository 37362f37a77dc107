"""Whether the deployment's replicas already run: what decides if an update rolls.

On a first deploy nothing serves and the waves' waits would only slow the cold start,
so their ordering (`dependsOn` only) is declared only when replicas already run. That
is a fact about the engine, read when the program runs through the same `DOCKER_HOST`;
with `hosts`, each host's replicas on that host's engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import docker
from docker.errors import DockerException, NotFound

from components.config.settings import Settings
from components.plan.build import engine_env


def deployment_running(settings: Settings, docker_host: str | None) -> bool:
    """True if any replica of the deployment runs, on whichever engine it is placed."""
    placements = settings.placements()
    local = {"DOCKER_HOST": docker_host} if docker_host else dict(os.environ)
    for engine in settings.engines():
        # The same variables the engine's steps get (plan.engine_env); `local`'s
        # are those of the default provider (`docker:host`).
        environment, secret_environment = engine_env(engine)
        if secret_environment:
            # Its TLS key is a Pulumi secret this check does not hold: it cannot ask,
            # and assumes replicas run (waves cost a first deploy time, never requests).
            return True
        names = [p.name for p in placements if p.engine == engine.name]
        if replicas_running(names, environment if engine.own_provider else local):
            return True
    return False


def replicas_running(names: Sequence[str], environment: Mapping[str, str]) -> bool:
    """True if any of the named containers runs on the engine `environment` names
    (docker-py's variables); False if none does or the engine cannot be asked (then
    there is nothing to keep serving that we know of)."""
    try:
        client = docker.from_env(environment=dict(environment), timeout=10)
        for name in names:
            try:
                if client.containers.get(name).status == "running":
                    return True
            except NotFound:
                continue
    except (DockerException, OSError):
        return False
    return False
