"""The upstream block: one server line per replica and the routing policy."""

from __future__ import annotations

from collections.abc import Sequence

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.lb.directives import d, host_port, is_name
from components.lb.names import AFFINITY_KEY_VARIABLE, Directive
from components.lb.njs import PREFIX_KEY_VARIABLE
from components.lb.pools import ModelPool


def affinity_variable(header: str) -> str:
    """nginx exposes request header `X-Session-Id` as `$http_x_session_id`."""
    return "$http_" + header.lower().replace("-", "_")


def policy_directives(lb: LoadBalancerSettings) -> list[Directive]:
    return pool_policy_directives(lb.policy)


def pool_policy_directives(policy: RoutingPolicy) -> list[Directive]:
    """The balancing directives of one upstream (the single one, or a model pool's)."""
    if policy == RoutingPolicy.LEAST_CONN:
        return [d("least_conn")]
    if policy == RoutingPolicy.ROUND_ROBIN:
        return []
    if policy == RoutingPolicy.POWER_OF_TWO:
        return [d("random", "two", "least_conn")]
    if policy == RoutingPolicy.PREFIX_AFFINITY:
        return [d("hash", PREFIX_KEY_VARIABLE, "consistent")]
    # Hashing the bare header would send every request without it to one
    # replica (they all hash the empty string); the map in `affinity_map`
    # gives those a per-request key instead, so they spread.
    return [d("hash", AFFINITY_KEY_VARIABLE, "consistent")]


def affinity_map(lb: LoadBalancerSettings, pools: Sequence[ModelPool] = ()) -> list[Directive]:
    """The key map, once, if `lb.policy` (with `pools`, any pool's policy) needs it."""
    wanted = [pool.policy for pool in pools] or [lb.policy]
    if RoutingPolicy.SESSION_AFFINITY not in wanted:
        return []
    variable = affinity_variable(lb.affinity_header)
    return [
        d(
            "map",
            variable,
            AFFINITY_KEY_VARIABLE,
            block=[d("default", variable), d("", "$request_id")],
        )
    ]


def is_prefix(lb: LoadBalancerSettings) -> bool:
    return lb.policy == RoutingPolicy.PREFIX_AFFINITY


def server_lines(
    lb: LoadBalancerSettings,
    upstreams: Sequence[Upstream],
    max_conns: str | None = None,
    field: str = "upstreams",
) -> list[Directive]:
    if not upstreams:
        raise ValueError(f"{field}: at least one replica is needed")
    max_fails = str(lb.max_fails)
    fail_window = str(lb.fail_window_seconds)
    bound = [] if max_conns is None else [f"max_conns={max_conns}"]
    lines = []
    for upstream in upstreams:
        host = upstream.host
        args = [
            host_port(host, upstream.port),
            *bound,
            f"max_fails={max_fails}",
            f"fail_timeout={fail_window}s",
        ]
        if lb.dynamic_resolve and is_name(host):
            args.append("resolve")
        lines.append(d("server", *args))
    return lines


def uses_resolve(lb: LoadBalancerSettings, upstreams: Sequence[Upstream]) -> bool:
    return lb.dynamic_resolve and any(is_name(u.host) for u in upstreams)


def _keepalive(keepalive: str) -> list[Directive]:
    """Idle connections kept to the replicas; "0": none, a new connection per request."""
    return [] if keepalive == "0" else [d("keepalive", keepalive)]


def upstream_blocks(
    lb: LoadBalancerSettings,
    name: str,
    balancing: list[Directive],
    upstreams: Sequence[Upstream],
    keepalive: str,
    fallback: str | None = None,
    field: str = "upstreams",
) -> list[Directive]:
    """An upstream of `upstreams` with `balancing`; with `fallback` (prefix_affinity)
    its replicas are bounded by `prefixMaxConns` and a second, least_conn upstream
    of the same replicas takes what the bound turns away."""
    bound = None if fallback is None else str(lb.prefix_max_conns)
    blocks = [
        d(
            "upstream",
            name,
            block=[
                *balancing,
                # Shared memory: every worker sees the same failure and connection
                # counts (without it least_conn, max_fails and max_conns are per worker).
                d("zone", name, "256k"),
                *server_lines(lb, upstreams, bound, field=field),
                *_keepalive(keepalive),
            ],
        )
    ]
    if fallback is not None:
        blocks.append(
            d(
                "upstream",
                fallback,
                block=[
                    d("least_conn"),
                    d("zone", fallback, "256k"),
                    *server_lines(lb, upstreams, field=field),
                    *_keepalive(keepalive),
                ],
            )
        )
    return blocks
