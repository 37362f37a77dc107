"""Building crossplane directives from values that are checked once more.

Every value taken from settings goes through its validator again here, so a
value that slipped past the settings (a model built with `model_construct`)
still cannot end a directive or open a block.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from components.lb.names import Directive


def checked(field: str, value: str, validator: Callable[[str], str]) -> str:
    """Defence in depth: name the field when a value would not be safe in the config."""
    try:
        return validator(value)
    except ValueError as err:
        raise ValueError(f"{field}: {value!r} {err}") from None


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


def check_port(field: str, port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{field}: {port!r} must be a port number 1-65535")
    return port


def check_positive(field: str, value: int, minimum: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}: {value!r} must be an integer >= {minimum}")
    return str(value)
