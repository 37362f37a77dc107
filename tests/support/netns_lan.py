"""One shared Ethernet segment for test hosts, as machines on one LAN switch.

The test hosts (`tests.support.netns_hosts`) reach each other routed through
this machine, each on its own /24; VRRP needs more: one broadcast domain where
the floating address's owner answers ARP and multicast advertisements reach
every balancer. A bridge on this machine (`vnhlan`, 198.19.0.1/24) takes a
second veth of each host, which sees it as `lan0` at 198.19.0.(10+i); the
machine's own address on the bridge is where the test's clients come from.
198.19.0.0/24 is in RFC 2544's testing range, as the hosts' addresses are.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence

from tests.support.netns_hosts import NetnsHost

BRIDGE = "vnhlan"
INTERFACE = "lan0"
MACHINE = "198.19.0.1"
PREFIX = 24


def lan_address(host: NetnsHost) -> str:
    return f"198.19.0.{10 + host.index}"


def _run(*argv: str, check: bool = True) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _remove(hosts: Sequence[NetnsHost]) -> None:
    for host in hosts:
        _run("ip", "link", "del", f"{host.name}l", check=False)
    _run("ip", "link", "del", BRIDGE, check=False)


@contextlib.contextmanager
def netns_lan(hosts: Sequence[NetnsHost]) -> Iterator[str]:
    """The bridge with every host on it as `lan0`; yields the interface name in the hosts."""
    _remove(hosts)
    try:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{MACHINE}/{PREFIX}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for host in hosts:
            outside = f"{host.name}l"
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", f"{host.name}L")
            _run("ip", "link", "set", f"{host.name}L", "netns", host.name)
            _run("ip", "link", "set", outside, "master", BRIDGE)
            _run("ip", "link", "set", outside, "up")
            inside = ("ip", "netns", "exec", host.name)
            _run(*inside, "ip", "link", "set", f"{host.name}L", "name", INTERFACE)
            _run(*inside, "ip", "addr", "add", f"{lan_address(host)}/{PREFIX}", "dev", INTERFACE)
            _run(*inside, "ip", "link", "set", INTERFACE, "up")
        yield INTERFACE
    finally:
        _remove(hosts)


def addresses_in(host: NetnsHost) -> str:
    """`ip -4 addr show lan0` inside the host: who holds the floating address."""
    return subprocess.run(
        ["ip", "netns", "exec", host.name, "ip", "-4", "-o", "addr", "show", INTERFACE],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
