"""Go's `time.ParseDuration` and `time.Duration.String`, as the provider uses them.

terraform-provider-docker v4.5.0 parses the health-check durations with
`time.ParseDuration` when it creates a container
(internal/provider/resource_docker_container_funcs.go:143-157) and reads them
back with `Duration.String()` (same file, 960-972), so `1800s` goes in and
`30m0s` comes back. The formatting below follows Go's `time/format.go`
(`Duration.String`, `fmtFrac`, `fmtInt`); the parsing follows `ParseDuration`
for the units Go accepts.
"""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,  # U+00B5, as Go accepts it
    "μs": 10**3,  # U+03BC
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """Not a duration `time.ParseDuration` accepts."""


def parse_duration(text: str) -> int:
    """Nanoseconds of a Go duration string (`90s`, `1m30s`, `1.5h`, `0`)."""
    rest = text
    sign = 1
    if rest and rest[0] in "+-":
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise DurationError(f"time: invalid duration {text!r}")
    total = 0
    while rest:
        match = _PART.match(rest)
        if match is None or not (match.group(1) or match.group(2)):
            raise DurationError(f"time: invalid duration {text!r}")
        whole, frac, unit = match.group(1) or "0", match.group(2) or "", match.group(3)
        scale = _UNITS[unit]
        total += int(whole) * scale
        if frac:
            # Go keeps the fraction's digits and truncates the product.
            total += int(frac) * scale // 10 ** len(frac)
        rest = rest[match.end() :]
    return sign * total


def _frac(value: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fractional digits of `value` at `prec`, trailing zeros dropped."""
    value, digits = divmod(value, 10**prec)
    text = f"{digits:0{prec}d}".rstrip("0") if digits else ""
    return (f".{text}" if text else ""), value


def format_duration(nanoseconds: int) -> str:
    """Go's `time.Duration.String()`: `0s`, `500ms`, `1.5s`, `1m30s`, `1h0m0s`."""
    negative = nanoseconds < 0
    u = -nanoseconds if negative else nanoseconds
    if u < 10**9:
        if u == 0:
            return "0s"
        if u < 10**3:
            text = f"{u}ns"
        elif u < 10**6:
            frac, whole = _frac(u, 3)
            text = f"{whole}{frac}µs"
        else:
            frac, whole = _frac(u, 6)
            text = f"{whole}{frac}ms"
    else:
        frac, seconds = _frac(u, 9)
        text = f"{seconds % 60}{frac}s"
        minutes = seconds // 60
        if minutes:
            text = f"{minutes % 60}m{text}"
            hours = minutes // 60
            if hours:
                text = f"{hours}h{text}"
    return f"-{text}" if negative else text
