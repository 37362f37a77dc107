"""The rules of a multi-host deployment ('hosts'): counts, devices, ports, names."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from components.config.engine_rules import Wording, device_rules, listed_rules, one_engine_rules
from components.config.rule import Rule, replaced_keys, rule
from components.config.sections import Backend, HostSettings, is_remote_engine
from components.config.settings import Settings

SINGLE_HOST_KEYS = {
    "replicas": ("replicas", "replicas"),
    "gpus": ("gpus", "gpus"),
    "bind_address": ("bindAddress", "bindAddress"),
    "public_host": ("publicHost", "address"),
    "cpu.cpu_sets": ("cpu.cpuSets", "cpuSets"),
}
"""Top-level fields that 'hosts' replaces: the key, and the per-host key that says it instead."""


HOSTS = Wording(names=" ('<prefix>-<host>-<i>')", name="'namePrefix'-host-number", scope="hosts")


def no_such_host(key: str, names: Iterable[str]) -> Rule:
    """`key` names a host that 'hosts' does not list."""
    return rule(key, f"names no host in 'hosts' (they are: {', '.join(names)})", "hosts")


def _host_count_rules(s: Settings, i: int, host: HostSettings) -> Iterator[Rule]:
    key = f"hosts[{i}]"
    cpu = s.backend is Backend.CPU
    if s.models is not None:
        for field, value in (
            ("replicas", host.replicas),
            ("gpus", host.gpus),
            ("cpuSets", host.cpu_sets),
        ):
            if value is not None:
                yield rule(
                    f"{key}.{field}",
                    "must not be set with 'models': each pool says its own "
                    "('models[i].hosts[j].{field}')".replace("{field}", field),
                    "hosts",
                    "models",
                )
        if s.replica_count_on(host) == 0:
            yield rule(
                key,
                f"runs no replica of any pool: name host {host.name} in a "
                "'models[i].hosts' entry, or leave it out",
                "hosts",
                "models",
            )
        return
    if host.replica_count == 0:
        yield rule(
            f"{key}.replicas",
            "is required: say how many replicas run on this host ('replicas', or one entry "
            "per replica in 'gpus' / 'cpuSets')",
            "hosts",
        )
    yield from listed_rules(key, host.gpus, host.cpu_sets, host.replicas, cpu, "hosts", "hosts")


def _host_device_rules(s: Settings, i: int, host: HostSettings) -> Iterator[Rule]:
    """A GPU or core belongs to one replica of its host; other hosts have their own."""
    key = f"hosts[{i}]"
    if s.models is not None:
        return  # per pool: `pool_rules`
    on = f" on host {host.name}"
    gpus = [(f"{key}.gpus[{r}]", r, ids) for r, ids in enumerate(host.gpus or ())]
    yield from device_rules(gpus, "GPU", s.tensor_parallel_size, on, "hosts")
    placed = [p for p in s.placements() if p.host is host]
    cores = [(at.devices_key("cpuSets"), at.index, at.cores) for at in placed]
    yield from device_rules(cores, "CPU", s.tensor_parallel_size, on, "hosts", "cpu")


def _overlap(a: str, b: str) -> bool:
    """Two binds on one engine clash when they are the same address or either is every one."""
    return a == b or "0.0.0.0" in (a, b) or "::" in (a, b)


def _host_port_rules(s: Settings, lb_host: HostSettings | None) -> Iterator[Rule]:
    assert s.hosts is not None
    base = s.base_port
    # Where the load balancer reaches each replica on another host: address:port,
    # which must name one replica only.
    reached: dict[tuple[str, int], str] = {}
    for i, host in enumerate(s.hosts):
        key = f"hosts[{i}]"
        count = s.replica_count_on(host)
        if count == 0:
            continue  # no ports; its count is reported on its own
        first = host.base_port if host.base_port is not None else base
        last = first + count - 1
        port_key = f"{key}.basePort" if host.base_port is not None else "basePort"
        if last > 65535:
            yield rule(
                port_key,
                f"{first} + {count} replicas on host {host.name} passes port 65535",
                "hosts",
                "basePort",
            )
            continue
        clash = next(
            (
                reached[(host.address, port)]
                for port in range(first, last + 1)
                if (host.address, port) in reached
            ),
            None,
        )
        if clash is not None:
            yield rule(
                f"{key}.address",
                f"{host.address} with ports {first}-{last} reaches a port of {clash} too "
                "(the same address:port twice); give one of them another 'basePort'",
                "hosts",
                "basePort",
            )
        for port in range(first, last + 1):
            reached.setdefault((host.address, port), f"host {host.name}")
        lb = s.load_balancer
        if (
            host is lb_host
            and first <= lb.port <= last
            and _overlap(lb.bind_address, host.publish_address)
        ):
            yield rule(
                "loadBalancer.port",
                f"{lb.port} collides with the replica ports {first}-{last} of host {host.name}, "
                "where the load balancer runs",
                "hosts",
                "basePort",
                "loadBalancer",
            )


def host_rules(s: Settings) -> Iterator[Rule]:
    lb = s.load_balancer
    if s.hosts is None:
        if lb.host is not None:
            yield rule("loadBalancer.host", "is set but 'hosts' is not", "hosts")
        return
    yield from replaced_keys(s.keys_set(), SINGLE_HOST_KEYS, "hosts", "each host")
    names: dict[str, int] = {}
    engines: dict[str, int] = {}
    for i, host in enumerate(s.hosts):
        if host.name in names:
            yield rule(
                f"hosts[{i}].name", f"{host.name} is also the name of hosts[{names[host.name]}]"
            )
        names.setdefault(host.name, i)
        if host.docker_host in engines:
            yield rule(
                f"hosts[{i}].dockerHost",
                f"is the engine of hosts[{engines[host.docker_host]}] too: one host per engine",
            )
        engines.setdefault(host.docker_host, i)
        if host.bind_address is None:
            try:
                ipaddress.ip_address(host.address)
            except ValueError:
                yield rule(
                    f"hosts[{i}].bindAddress",
                    "is required when 'address' is a name: Docker publishes ports on an IP "
                    "address (the host's address on the network the load balancer uses)",
                )
        if host.tls is not None and not host.docker_host.startswith("tcp://"):
            yield rule(f"hosts[{i}].tls", "is only for a tcp:// 'dockerHost'")
        if host.docker_host.startswith("tcp://") and host.tls is None:
            yield rule(
                f"hosts[{i}].tls",
                "is required with a tcp:// 'dockerHost': an engine's API without TLS gives "
                "root on that machine to anyone who reaches the port",
            )
        yield from _host_count_rules(s, i, host)
        yield from _host_device_rules(s, i, host)
    if lb.host is not None and lb.host not in names:
        yield no_such_host("loadBalancer.host", names)
    lb_host = s.load_balancer_host if lb.host is None or lb.host in names else None
    yield from _host_port_rules(s, lb_host)
    if (
        lb_host is not None
        and ipaddress.ip_address(lb.bind_address).is_loopback
        and is_remote_engine(lb_host.docker_host)
    ):
        yield rule(
            "loadBalancer.bindAddress",
            f"is a loopback address on host {lb_host.name}, a remote engine: nothing outside "
            "it (the verify step included) can reach the load balancer",
            "hosts",
        )
    yield from one_engine_rules([p.name for p in s.placements()], None, lb, HOSTS)
