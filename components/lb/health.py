"""The balancer's `/health`: 200 only while every pool has a replica that can serve.

Monitors, target checks, Docker's health check and the verify step ask the
balancer, so the answer comes from the replicas: each pool is probed through
its own upstream (a prefix_affinity pool's unbounded fallback), so nginx's
view from real traffic applies, and answers are cached for a second, so
`/health` costs each pool about one probe a second. docs/load-balancer.md.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence

from components.config.sections import LoadBalancerSettings
from components.lb.directives import d
from components.lb.errors import retry_after_seconds
from components.lb.keys import KeyPolicy, key_table
from components.lb.names import FALLBACK_UPSTREAM_NAME, HEALTH_PATH, UPSTREAM_NAME, Directive
from components.lb.njs import HEALTH_HANDLER, HEALTH_MODULE, HEALTH_SCRIPT
from components.lb.pools import (
    ModelPool,
    fallback_upstream_name,
    is_prefix_pool,
    routing_table,
    upstream_name,
)
from components.lb.upstreams import is_prefix

# The one pool of a stack without model pools.
SINGLE_POOL = "default"
# The balancer's internal locations (probes, error answers); never exposed.
INTERNAL_PREFIX = "/_lb/"
PROBE_PREFIX = INTERNAL_PREFIX + "probe/"
CACHE_ZONE = "lb_health"
# How long one probe's answer stands for every /health in every worker.
CACHE_SECONDS = "1s"
# A replica's /health is answered by its HTTP server's event loop, not the
# engine: well under a second even under load. Longer means the replica
# cannot serve either.
PROBE_CONNECT_TIMEOUT = "2s"
PROBE_READ_TIMEOUT = "5s"
PROBE_TOTAL_TIMEOUT = "8s"


def _probes(lb: LoadBalancerSettings, pools: Sequence[ModelPool]) -> list[tuple[str, str]]:
    """(pool name, upstream to probe through) for every pool."""
    if not pools:
        return [(SINGLE_POOL, FALLBACK_UPSTREAM_NAME if is_prefix(lb) else UPSTREAM_NAME)]
    return [
        (pool.name, fallback_upstream_name(pool) if is_prefix_pool(pool) else upstream_name(pool))
        for pool in pools
    ]


def health_table(lb: LoadBalancerSettings, pools: Sequence[ModelPool]) -> dict[str, object]:
    """What health.js needs: each pool's probe and the names it serves."""
    served = {pool.name: [pool.served_name, *pool.adapters] for pool in pools}
    return {
        "retryAfter": retry_after_seconds(lb),
        "pools": [
            {"name": name, "probe": PROBE_PREFIX + name, "models": served.get(name, [])}
            for name, _ in _probes(lb, pools)
        ],
    }


def models_script(
    lb: LoadBalancerSettings, pools: Sequence[ModelPool], keys: Sequence[KeyPolicy] = ()
) -> str:
    """models.js: the router's table (with pools) and the health table, as an ES
    module njs loads with the config.

    JSON is valid JavaScript, and every name in it passed `safe_token`, so the
    text cannot break out of its string literals. Same pools, same text: a
    `pulumi up` shows a change only when the pools change.
    """
    table = dict(routing_table(pools)) if pools else {}
    if pools and keys:
        table["keys"] = key_table(keys, [pool.served_name for pool in pools])
    table["health"] = health_table(lb, pools)
    return (
        "// Generated from the model pools when nginx.conf is rendered "
        "(components/lb/health.py); do not edit.\n"
        f"export default {json.dumps(table, indent=1)};\n"
    )


def cache_path(temp_dir: str) -> str:
    """Beside the temp directory, not in it: nginx creates only a path's last part."""
    return temp_dir.rstrip("/") + "-health"


def health_http(temp_dir: str, script_directory: str) -> list[Directive]:
    return [
        d("js_import", HEALTH_MODULE, "from", posixpath.join(script_directory, HEALTH_SCRIPT)),
        d(
            "proxy_cache_path",
            cache_path(temp_dir),
            "levels=1",
            f"keys_zone={CACHE_ZONE}:1m",
            "max_size=1m",
            "inactive=1m",
            "use_temp_path=off",
        ),
    ]


def _probe_location(pool: str, upstream: str) -> Directive:
    return d(
        "location",
        "=",
        PROBE_PREFIX + pool,
        block=[
            d("internal"),
            d("access_log", "off"),
            # The client's headers (its API key) and body stay here.
            d("proxy_method", "GET"),
            d("proxy_pass_request_headers", "off"),
            d("proxy_pass_request_body", "off"),
            # The proxy cache needs a buffered response.
            d("proxy_buffering", "on"),
            d("proxy_cache", CACHE_ZONE),
            d("proxy_cache_key", pool),
            d("proxy_cache_valid", "any", CACHE_SECONDS),
            d("proxy_cache_lock", "on"),
            d("proxy_cache_lock_timeout", PROBE_TOTAL_TIMEOUT),
            d("proxy_ignore_headers", "Cache-Control", "Expires", "Set-Cookie", "Vary"),
            d("proxy_connect_timeout", PROBE_CONNECT_TIMEOUT),
            d("proxy_read_timeout", PROBE_READ_TIMEOUT),
            d("proxy_send_timeout", PROBE_READ_TIMEOUT),
            d("proxy_next_upstream", "error", "timeout", "http_500", "http_502", "http_503"),
            d("proxy_next_upstream_tries", "0"),
            d("proxy_next_upstream_timeout", PROBE_TOTAL_TIMEOUT),
            d("proxy_pass", f"http://{upstream}{HEALTH_PATH}"),
        ],
    )


def health_locations(lb: LoadBalancerSettings, pools: Sequence[ModelPool]) -> list[Directive]:
    """`= /health`, `/health/<model>` and one internal probe location per pool."""
    answer = [d("access_log", "off"), d("js_content", HEALTH_HANDLER)]
    return [
        d("location", "=", HEALTH_PATH, block=list(answer)),
        d("location", HEALTH_PATH + "/", block=list(answer)),
        *[_probe_location(pool, upstream) for pool, upstream in _probes(lb, pools)],
    ]


def docker_health_test(container_port: int, tls: bool) -> list[str]:
    """Docker's health check of the nginx container: its own /health, with curl
    (in the official nginx image and in the Debian base the tests use). `-k`
    with TLS: the certificate names the public host, not 127.0.0.1."""
    scheme = "https" if tls else "http"
    insecure = ["-k"] if tls else []
    return [
        "CMD",
        "curl",
        "-fsS",
        *insecure,
        "-o",
        "/dev/null",
        "--max-time",
        "9",
        f"{scheme}://127.0.0.1:{int(container_port)}{HEALTH_PATH}",
    ]
