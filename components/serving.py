"""Whether the deployment's replicas already run: what decides if an update rolls.

A rolling update replaces replicas in waves, each waiting until the one before
is back in rotation. On the first deploy nothing is serving, and those waits
would only add to the cold start, so the waves' ordering is declared only when
replicas of this deployment already run. That is a fact about the engine, not
about the stack config, so it is read from the engine when the program runs,
the same way the gate reads health (and through the same `DOCKER_HOST`). The
ordering is `dependsOn` only, which never changes a resource by itself.

With `hosts`, each host's replicas are asked for on that host's engine: asking
only the stack's own engine found none there, so an update of a multi-host
deployment replaced every replica at once and cut every stream in flight.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import docker
from docker.errors import DockerException, NotFound
from docker.tls import TLSConfig

from .settings import HostSettings, Settings


def deployment_running(settings: Settings, docker_host: str | None) -> bool:
    """True if any replica of the deployment runs, on whichever engine it is placed."""
    if settings.hosts is None:
        return replicas_running(settings.replica_names(), docker_host)
    return any(_host_running(settings, host) for host in settings.hosts)


def _host_running(settings: Settings, host: HostSettings) -> bool:
    names = [p.name for p in settings.placements() if p.host is host]
    tls = host.tls
    if tls is not None and tls.cert_path is None:
        # Its key is a Pulumi secret this check does not hold: it cannot ask, and
        # assumes replicas run (waves cost a first deploy time, never requests).
        return True
    return replicas_running(names, host.docker_host, cert_path=tls.cert_path if tls else None)


def replicas_running(
    names: Sequence[str], docker_host: str | None, *, cert_path: str | None = None
) -> bool:
    """True if any of the named containers runs; False if none does or the engine
    cannot be asked (then there is nothing to keep serving that we know of)."""
    try:
        if docker_host and cert_path:
            directory = os.path.expanduser(cert_path)
            tls = TLSConfig(
                client_cert=(f"{directory}/cert.pem", f"{directory}/key.pem"),
                ca_cert=f"{directory}/ca.pem",
                verify=True,
            )
            client = docker.DockerClient(base_url=docker_host, tls=tls, timeout=10)
        elif docker_host:
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
