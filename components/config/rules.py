"""Rules that tie several keys together, reported all at once, each on its key.

Kept apart from the models because pydantic runs a model's own validators
only when all its fields are valid: a rule here still runs, and its problem is
reported beside the per-key ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

from components.config.api_key_rules import api_key_rules
from components.config.engine_rules import Wording, device_rules, one_engine_rules
from components.config.host_rules import host_rules
from components.config.kubernetes_rules import kubernetes_rules
from components.config.pool_rules import pool_rules
from components.config.rule import Rule, rule
from components.config.sections import Backend, is_remote_engine
from components.config.settings import SHUTDOWN_MARGIN_SECONDS, Settings
from components.config.standby_rules import standby_rules
from components.config.values import (
    key_matches_certificate,
)


def _gpu_rules(s: Settings) -> Iterator[Rule]:
    if s.gpus is None or s.hosts is not None or s.models is not None:
        return
    if s.backend is Backend.CPU:
        yield rule("gpus", "must not be set with 'backend' cpu", "backend")
        return
    if len(s.gpus) != s.replicas:
        yield rule(
            "gpus", f"lists {len(s.gpus)} replicas but 'replicas' is {s.replicas}", "replicas"
        )
    found = [(f"gpus[{r}]", r, ids) for r, ids in enumerate(s.gpus)]
    yield from device_rules(found, "GPU", s.tensor_parallel_size, "")


def _cpu_rules(s: Settings) -> Iterator[Rule]:
    if s.backend is not Backend.CPU or s.hosts is not None or s.models is not None:
        return
    sets = s.cpu.cpu_sets
    if sets is not None and len(sets) != s.replicas:
        yield rule(
            "cpu.cpuSets",
            f"lists {len(sets)} replicas but 'replicas' is {s.replicas}",
            "replicas",
            "backend",
        )
    found = [(at.devices_key("cpuSets"), at.index, at.cores) for at in s.placements()]
    yield from device_rules(found, "CPU", s.tensor_parallel_size, "", "backend")


SINGLE_MODEL = Wording(
    names="",
    count="replicas",
    ports="'basePort' + 'replicas'",
    name="'namePrefix' + number",
    scope="replicas",
)
POOLS = Wording(
    names=" ('<prefix>-<pool>-<i>')",
    count="replicas of all pools",
    ports="'basePort' + the replicas of all pools",
    name="'namePrefix'-pool-number",
    scope="models",
)


def _name_and_port_rules(s: Settings) -> Iterator[Rule]:
    """The one engine's replica names and ports; with 'hosts' the hosts rules check each."""
    placed = s.placements()
    if s.hosts is not None or not placed:
        return
    words = SINGLE_MODEL if s.models is None else POOLS
    ports = (s.base_port, max(p.port for p in placed))
    yield from one_engine_rules([p.name for p in placed], ports, s.load_balancer, words)


def _tls_rules(s: Settings) -> Iterator[Rule]:
    tls = s.load_balancer.tls
    if tls and s.tls_certificate is None:
        yield rule("tlsCertificate", "is required with 'loadBalancer.tls' true", "loadBalancer")
    if tls and s.tls_key is None:
        yield rule(
            "tlsKey",
            "is required with 'loadBalancer.tls' true "
            "(`pulumi config set --secret tlsKey < server.key`)",
            "loadBalancer",
        )
    if not tls and (s.tls_certificate is not None or s.tls_key is not None):
        key = "tlsCertificate" if s.tls_certificate is not None else "tlsKey"
        yield rule(key, "is set but 'loadBalancer.tls' is false", "loadBalancer")
    if (
        s.tls_key is not None
        and s.tls_certificate is not None
        and not key_matches_certificate(s.tls_key, s.tls_certificate)
    ):
        yield rule(
            "tlsKey",
            "is not the private key of 'tlsCertificate'",
            "tlsCertificate",
            secret_check="whether it is the private key of 'tlsCertificate'",
        )


def _monitoring_rules(s: Settings) -> Iterator[Rule]:
    mon = s.monitoring
    if not mon.enabled:
        if s.grafana_password is not None:
            yield rule("grafanaPassword", "is set but 'monitoring.enabled' is false", "monitoring")
        return
    if s.grafana_password is None:
        yield rule(
            "grafanaPassword",
            "is required with 'monitoring.enabled' true "
            "(`pulumi config set --secret grafanaPassword`)",
            "monitoring",
        )
    last_port = max((p.port for p in s.placements()), default=s.base_port)
    # Monitoring runs where nginx does: only that engine's replica ports can clash.
    lb_host = s.load_balancer_host
    beside = {p.port: p for p in s.placements() if p.host is lb_host}
    taken_ports = {s.load_balancer.port: "'loadBalancer.port'"}
    for key, port in (
        ("monitoring.prometheus.port", mon.prometheus.port),
        ("monitoring.grafana.port", mon.grafana.port),
    ):
        if lb_host is None and s.base_port <= port <= last_port:
            yield rule(
                key,
                f"{port} collides with the replica ports {s.base_port}-{last_port} "
                "('basePort' + 'replicas')",
                "basePort",
                "replicas",
                "models",
            )
        elif lb_host is not None and port in beside:
            yield rule(
                key,
                f"{port} is the port of replica {beside[port].name} on host {lb_host.name}, "
                "where monitoring runs with the load balancer",
                "hosts",
            )
        elif port in taken_ports:
            yield rule(key, f"{port} is also {taken_ports[port]}", "loadBalancer")
        taken_ports.setdefault(port, f"'{key}'")
    taken_names = {name: "a replica name ('namePrefix' + number)" for name in s.replica_names()}
    taken_names[s.load_balancer.name] = "'loadBalancer.name'"
    for key, name in (
        ("monitoring.prometheus.name", mon.prometheus.name),
        ("monitoring.grafana.name", mon.grafana.name),
        ("monitoring.lbExporter.name", mon.lb_exporter.name),
    ):
        if name in taken_names:
            yield rule(
                key,
                f"{name} collides with {taken_names[name]}",
                "namePrefix",
                "replicas",
                "loadBalancer",
            )
        taken_names.setdefault(name, f"'{key}'")
    taken_volumes = {s.hf_cache.volume: "'hfCache.volume'"} if s.hf_cache.volume else {}
    for key, volume in (
        ("monitoring.prometheus.volume", mon.prometheus.volume),
        ("monitoring.grafana.volume", mon.grafana.volume),
    ):
        if volume in taken_volumes:
            yield rule(key, f"{volume} is also {taken_volumes[volume]}", "hfCache")
        taken_volumes.setdefault(volume, f"'{key}'")


def _shutdown_rules(s: Settings) -> Iterator[Rule]:
    need = s.shutdown_timeout_seconds + SHUTDOWN_MARGIN_SECONDS
    if s.shutdown_timeout_seconds and s.stop_grace_seconds < need:
        yield rule(
            "stopGraceSeconds",
            f"is {s.stop_grace_seconds} but must be at least 'shutdownTimeoutSeconds' "
            f"({s.shutdown_timeout_seconds}) + {SHUTDOWN_MARGIN_SECONDS} = {need}: Docker "
            "kills a replica it stops after stopGraceSeconds, and vLLM takes up to "
            "shutdownTimeoutSeconds to finish its requests, then time to exit",
            "shutdownTimeoutSeconds",
        )


def cross_key_rules(settings: Settings) -> list[Rule]:
    """Every rule that ties several keys together, all broken ones at once."""
    return [
        *host_rules(settings),
        *standby_rules(settings),
        *pool_rules(settings),
        *_gpu_rules(settings),
        *_cpu_rules(settings),
        *_name_and_port_rules(settings),
        *_tls_rules(settings),
        *_monitoring_rules(settings),
        *_shutdown_rules(settings),
        *api_key_rules(settings),
        *kubernetes_rules(settings),
    ]


def disk_rules(settings: Settings, project_dir: Path) -> list[Rule]:
    """What must exist where `pulumi up` runs: the vLLM checkout to build, its Dockerfile
    (the stack's image, and a pool's own)."""
    rules: list[Rule] = []
    for key, image in settings.images():
        build = image.build
        if build is None:
            continue
        context = (project_dir / Path(build.context).expanduser()).resolve()
        if not context.is_dir():
            rules.append(rule(f"{key}.build.context", f"is not a directory (looked in {context})"))
            continue
        dockerfile = (context / build.dockerfile).resolve()
        if not dockerfile.is_relative_to(context):
            rules.append(rule(f"{key}.build.dockerfile", f"must be inside '{key}.build.context'"))
        elif not dockerfile.is_file():
            rules.append(
                rule(f"{key}.build.dockerfile", f"does not exist (looked for {dockerfile})")
            )
    return rules


def remote_engine_rules(settings: Settings, docker_host: str | None) -> list[Rule]:
    """What breaks when the engine is remote: the verify step runs where `pulumi up`
    runs and reaches the load balancer by `publicHost` on its published address.
    With 'hosts', `docker:host` is not used and the rules are per host."""
    if not is_remote_engine(docker_host) or settings.hosts is not None:
        return []
    rules = []
    if settings.public_host in {"localhost", "127.0.0.1", "::1"}:
        rules.append(
            rule(
                "publicHost",
                "must name the Docker host: `docker:host` is a remote engine, and the verify "
                "step and the output URLs reach the load balancer by this name",
            )
        )
    if ipaddress.ip_address(settings.load_balancer.bind_address).is_loopback:
        rules.append(
            rule(
                "loadBalancer.bindAddress",
                "is a loopback address on a remote engine: nothing outside that host "
                "(the verify step included) can reach the load balancer",
            )
        )
    return rules
