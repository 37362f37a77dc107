"""Building crossplane directives: crossplane quotes what needs quoting."""

from __future__ import annotations

import ipaddress

from components.lb.names import Directive


def d(directive: str, *args: str, block: list[Directive] | None = None) -> Directive:
    stmt: Directive = {"directive": directive, "args": list(args)}
    if block is not None:
        stmt["block"] = block
    return stmt


def host_port(host: str, port: int) -> str:
    """IPv6 literals need brackets, or nginx reads the last group as the port."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False
