"""The rules of a standby balancer ('loadBalancer.standby'): which hosts, which address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from components.config.host_rules import no_such_host
from components.config.rule import Rule, rule
from components.config.settings import Settings

KEY = "loadBalancer.standby"


def standby_rules(s: Settings) -> Iterator[Rule]:
    """Two distinct named hosts, nginx published where the floating address arrives."""
    standby = s.load_balancer.standby
    if standby is None:
        return
    if s.hosts is None:
        yield rule(
            KEY,
            "needs 'hosts': the two balancers run on two Docker engines (docs/multi-host.md)",
            "hosts",
        )
        return
    names = [h.name for h in s.hosts]
    if len(standby.hosts) != 2:
        yield rule(
            f"{KEY}.hosts",
            f"lists {len(standby.hosts)} hosts; name exactly two of 'hosts' (they are: "
            f"{', '.join(names)})",
            "hosts",
        )
    for j, name in enumerate(standby.hosts):
        if name not in names:
            yield no_such_host(f"{KEY}.hosts[{j}]", names)
        elif name in standby.hosts[:j]:
            yield rule(
                f"{KEY}.hosts[{j}]",
                f"names {name} again: the standby must run on another machine",
            )
    lb = s.load_balancer
    if lb.host is not None and standby.hosts and lb.host != standby.hosts[0]:
        yield rule(
            "loadBalancer.host",
            f"is {lb.host}; with '{KEY}' nginx runs on its hosts and the first listed "
            f"({standby.hosts[0]}) holds the address first: leave 'loadBalancer.host' out",
            "loadBalancer",
        )
    if s.monitoring.enabled:
        yield rule(
            KEY,
            "cannot be used with 'monitoring.enabled' yet: the second nginx has no exporter "
            "to send its log to; turn monitoring off for a standby balancer",
            "monitoring",
        )
    if lb.bind_address != "0.0.0.0":
        yield rule(
            "loadBalancer.bindAddress",
            f"is {lb.bind_address}; with '{KEY}' it must be 0.0.0.0, so nginx accepts the "
            "floating address on whichever host holds it",
            "loadBalancer",
        )
    vip = ipaddress.IPv4Interface(standby.virtual_address)
    for i, host in enumerate(s.hosts):
        if host.address == str(vip.ip):
            yield rule(
                f"{KEY}.virtualAddress",
                f"is hosts[{i}].address ({host.address}); the floating address must be one "
                "no machine owns",
                "hosts",
            )
