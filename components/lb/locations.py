"""What the balancer serves: `/v1/` proxied for LLM traffic, its own `/health`,
the paths the settings expose, the API-key guard and prefix routing's njs hand-off.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.config.sections import LoadBalancerSettings
from components.lb.directives import d
from components.lb.errors import TOO_MANY_LOCATION, error_locations, error_pages
from components.lb.health import INTERNAL_PREFIX, health_locations
from components.lb.keys import KeyPolicy, keys_guard, too_many_location
from components.lb.model_routing import router_locations
from components.lb.names import (
    API_PREFIX,
    AUTHORIZATION_VARIABLE,
    EXPECTED_AUTHORIZATION_VARIABLE,
    FALLBACK_UPSTREAM_NAME,
    HEALTH_PATH,
    PREFIX_BODY_BUFFER,
    PRESENTED_AUTHORIZATION_VARIABLE,
    UNAUTHORIZED_BODY,
    UPSTREAM_NAME,
    Directive,
)
from components.lb.njs import (
    FALLBACK_LOCATION,
    PREFIX_HANDLER,
    PREFIX_LOCATION,
)
from components.lb.pools import ModelPool
from components.lb.upstreams import is_prefix


def proxy_settings(lb: LoadBalancerSettings) -> list[Directive]:
    # vLLM answers 500 to what arrives while it shuts down (its engine stops
    # before its HTTP server), as when its machine goes down: another replica
    # can answer it. A 500 nginx passes on counts as the replica's failure.
    retry_on = ["error", "timeout", "http_500", "http_502", "http_503"]
    if lb.retry_non_idempotent:
        # A completion is a POST: without this, nginx only retries one that
        # failed before any byte reached the replica (connect errors).
        retry_on.append("non_idempotent")
    return [
        d("proxy_http_version", "1.1"),
        d("proxy_set_header", "Connection", ""),
        d("proxy_set_header", "Host", "$host"),
        d("proxy_set_header", "X-Real-IP", "$remote_addr"),
        d("proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        d("proxy_set_header", "X-Forwarded-Proto", "$scheme"),
        d("proxy_buffering", "off"),
        # vLLM parses the whole JSON body before it starts, so streaming the
        # request gains nothing, while a buffered body can be sent again to
        # another replica when the first one fails before answering.
        d("proxy_request_buffering", "on" if lb.buffer_requests else "off"),
        d(
            "proxy_connect_timeout",
            str(lb.connect_timeout_seconds) + "s",
        ),
        d(
            "proxy_read_timeout",
            str(lb.read_timeout_seconds) + "s",
        ),
        d(
            "proxy_send_timeout",
            str(lb.send_timeout_seconds) + "s",
        ),
        d("proxy_next_upstream", *retry_on),
        d(
            "proxy_next_upstream_tries",
            str(lb.next_upstream_tries),
        ),
    ]


def api_key_maps() -> list[Directive]:
    """The `Authorization` header read as vLLM reads it (`authenticate.py` `verify_token`).

    The scheme `bearer` in any case, one space, the rest as it is (trailing spaces
    and tabs dropped, as the replica's HTTP parser drops them), giving `Bearer
    <rest>` to compare byte for byte with the key file's value. A regex, never a
    string key: a map matches string keys ignoring case. OPTIONS (CORS
    preflights) is not asked for the key, as in vLLM (docs/load-balancer.md).
    """
    return [
        d(
            "map",
            "$http_authorization",
            AUTHORIZATION_VARIABLE,
            block=[d("default", ""), d("~*^bearer (.*?)[ \t]*$", "Bearer $1")],
        ),
        d(
            "map",
            "$request_method",
            PRESENTED_AUTHORIZATION_VARIABLE,
            block=[
                d("default", AUTHORIZATION_VARIABLE),
                d("OPTIONS", EXPECTED_AUTHORIZATION_VARIABLE),
            ],
        ),
    ]


def api_key_guard() -> list[Directive]:
    """Answer 401 in the rewrite phase, before an upstream is chosen or a body read.

    A byte-exact `if ... !=` of `api_key_maps`'s value against the expected one;
    an `if` ending in `return` is a use nginx documents as safe. Only
    `Authorization: Bearer <key>` counts, as in vLLM (docs/load-balancer.md).
    """
    return [
        d(
            "if",
            PRESENTED_AUTHORIZATION_VARIABLE,
            "!=",
            EXPECTED_AUTHORIZATION_VARIABLE,
            block=[
                # `always`: without it add_header is skipped on a 4xx.
                d("add_header", "WWW-Authenticate", "Bearer", "always"),
                d("return", "401", UNAUTHORIZED_BODY),
            ],
        ),
    ]


def prefix_locations(
    lb: LoadBalancerSettings,
    guard: list[Directive],
    limited: bool = False,
    accounting: Sequence[Directive] = (),
) -> list[Directive]:
    """`/v1/` runs the njs router; it redirects to one of two named locations.

    The key check runs in the rewrite phase, before `js_content` reads the body,
    so a refused request reaches neither the router nor a replica. With every
    replica at `max_conns` nginx answers 502 itself, and `error_page 502 =`
    queues the request on the least_conn upstream instead; that `error_page`
    cancels the server's, so the JSON ones are repeated (docs/load-balancer.md).
    """
    fallback_pass = d("proxy_pass", f"http://{FALLBACK_UPSTREAM_NAME}")
    return [
        d(
            "location",
            API_PREFIX,
            block=[
                *guard,
                d("client_body_buffer_size", PREFIX_BODY_BUFFER),
                d("js_content", PREFIX_HANDLER),
            ],
        ),
        d(
            "location",
            PREFIX_LOCATION,
            block=[
                d("proxy_request_buffering", "on"),
                *accounting,
                d("error_page", "502", "=", FALLBACK_LOCATION),
                *error_pages(lb, except_=(502,), limited=limited),
                d("proxy_pass", f"http://{UPSTREAM_NAME}"),
            ],
        ),
        d(
            "location",
            FALLBACK_LOCATION,
            block=[d("proxy_request_buffering", "on"), *accounting, fallback_pass],
        ),
    ]


def locations(
    lb: LoadBalancerSettings,
    require_api_key: bool,
    pools: Sequence[ModelPool] = (),
    keys: Sequence[KeyPolicy] = (),
    accounting: Sequence[Directive] = (),
) -> list[Directive]:
    """Every location; with named `keys` their guard and 429, and `accounting`
    (the usage filter) where a replica answers a request of the API."""
    guard = keys_guard() if keys else api_key_guard() if require_api_key else []
    limited = bool(keys)
    if pools:
        # Model routing: exposed paths carry no model, any replica answers them.
        proxied = [*guard, d("proxy_pass", f"http://{UPSTREAM_NAME}")]
        api_locations = router_locations(lb, pools, guard, limited, accounting)
    elif is_prefix(lb):
        # Exposed paths (GET /metrics ...) carry no prompt: least_conn.
        proxied = [*guard, d("proxy_pass", f"http://{FALLBACK_UPSTREAM_NAME}")]
        api_locations = prefix_locations(lb, guard, limited, accounting)
    else:
        proxied = [*guard, d("proxy_pass", f"http://{UPSTREAM_NAME}")]
        api_locations = [
            d("location", API_PREFIX, block=[*guard, *accounting, *proxied[len(guard) :]])
        ]
    locations = [*api_locations, *health_locations(lb, pools)]
    seen: set[str] = set()
    for index, path in enumerate(lb.expose_paths):
        if path == HEALTH_PATH or path.startswith((HEALTH_PATH + "/", INTERNAL_PREFIX)):
            raise ValueError(
                f"expose_paths[{index}]: {path} is answered by the load balancer itself "
                f"({HEALTH_PATH} reports the balancer's health, not one replica's; "
                f"{INTERNAL_PREFIX} is its internal paths)"
            )
        if path in seen:
            continue
        seen.add(path)
        locations.append(d("location", "=", path, block=list(proxied)))
    # The server's error_page makes this 404 the API's JSON error.
    locations.append(d("location", "/", block=[d("return", "404")]))
    return locations


def server_errors(lb: LoadBalancerSettings, limited: bool = False) -> list[Directive]:
    """Server-level: every response nginx makes itself is JSON (components/lb/errors.py).

    The empty `types` makes it `application/json` even for a path with an
    extension nginx knows (`.html`); proxied responses keep the replica's type.
    `recursive_error_pages` lets a 502 of prefix_affinity's fallback, reached
    through an `error_page` itself, still become JSON.
    """
    return [
        d("types", block=[]),
        d("default_type", "application/json"),
        d("recursive_error_pages", "on"),
        *error_pages(lb, limited=limited),
        *error_locations(lb),
        *([too_many_location(TOO_MANY_LOCATION)] if limited else []),
    ]
