"""Whether the deployment's replicas already run: what decides if an update rolls.

A rolling update replaces replicas in waves, each waiting until the one before
is back in rotation. On the first deploy nothing is serving, and those waits
would only add to the cold start, so the waves' ordering is declared only when
replicas of this deployment already run. That is a fact about the engine, not
about the stack config, so it is read from the engine when the program runs,
the same way the gate reads health (and through the same `DOCKER_HOST`). The
ordering is `dependsOn` only, which never changes a resource by itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import docker
from docker.errors import DockerException, NotFound


def replicas_running(names: Sequence[str], docker_host: str | None) -> bool:
    """True if any of the named containers runs; False if none does or the engine
    cannot be asked (then there is nothing to keep serving that we know of)."""
    try:
        if docker_host:
            client = docker.DockerClient(base_url=docker_host, timeout=10)
        elif os.environ.get("DOCKER_HOST"):
            client = docker.from_env(timeout=10)
        else:
            client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=10)
        for name in names:
            try:
                if client.containers.get(name).status == "running":
                    return True
            except NotFound:
                continue
    except (DockerException, OSError):
        return False
    return False
