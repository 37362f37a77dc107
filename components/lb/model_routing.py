"""The nginx side of model routing: the pools' upstreams and named locations,
the njs router on `/v1/` and `GET /v1/models` answered by the balancer.

njs, not a `map` on the model: the model is in the body, which nginx
variables cannot read, and a map matches names ignoring case where vLLM's are
case-sensitive. Each pool gets a single-model deployment's upstream with its
own policy (a prefix_affinity pool also its fallback): docs/load-balancer.md.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from components.config.sections import LoadBalancerSettings
from components.lb.directives import d
from components.lb.errors import error_pages
from components.lb.names import API_PREFIX, BODY_BUFFER, Directive
from components.lb.njs import (
    MODELS_HANDLER,
    POOL_VARIABLE,
    PREFIX_CHARS_VARIABLE,
    PREFIX_KEY_VARIABLE,
    PREFIX_SCRIPT,
    ROUTER_HANDLER,
    ROUTER_MODULE,
    ROUTER_SCRIPT,
    prefix_script,
    router_script,
)
from components.lb.pools import (
    ModelPool,
    fallback_location_name,
    fallback_upstream_name,
    is_prefix_pool,
    location_name,
    upstream_name,
)
from components.lb.upstreams import pool_policy_directives, upstream_blocks

MODELS_PATH = "/v1/models"


def script_dir(prefix_script_path: str) -> str:
    """The directory of the njs files: the one the runtime puts prefix.js in."""
    return posixpath.dirname(prefix_script_path) or "."


def pool_upstreams(
    lb: LoadBalancerSettings, pools: Sequence[ModelPool], keepalive: str
) -> list[Directive]:
    return [
        block
        for index, pool in enumerate(pools)
        for block in upstream_blocks(
            lb,
            upstream_name(pool),
            pool_policy_directives(pool.policy),
            pool.upstreams,
            keepalive,
            fallback=fallback_upstream_name(pool) if is_prefix_pool(pool) else None,
            field=f"pools[{index}].upstreams",
        )
    ]


# A body announced at 1,000,000 bytes or more is routed from its temp file.
BODY_TO_FILE_VARIABLE = "$lb_body_to_file"
BODY_TO_FILE_STATUS = "418"
BODY_FILE_LOCATION = "@lb_router_file"
FILE_BODY_BUFFER = "64k"


def router_http(lb: LoadBalancerSettings, prefix_script_path: str) -> list[Directive]:
    """The router module and the variables it shares with the config."""
    router = posixpath.join(script_dir(prefix_script_path), ROUTER_SCRIPT)
    chars = str(lb.prefix_chars)
    return [
        d("js_import", ROUTER_MODULE, "from", router),
        d("js_var", PREFIX_KEY_VARIABLE),
        d("js_var", PREFIX_CHARS_VARIABLE, chars),
        # The pool that took the request, for the metrics log; empty on a 404.
        d("js_var", POOL_VARIABLE),
        d(
            "map",
            "$http_content_length",
            BODY_TO_FILE_VARIABLE,
            block=[d("default", ""), d("~^[0-9]{7,}$", "1")],
        ),
    ]


def router_locations(
    lb: LoadBalancerSettings,
    pools: Sequence[ModelPool],
    guard: list[Directive],
    limited: bool = False,
    accounting: Sequence[Directive] = (),
) -> list[Directive]:
    """`/v1/` runs the router, `= /v1/models` lists the models; a named location per pool.

    A stalled upload holds at most `/v1/`'s 1 MB buffer; a larger body is routed
    from its temp file, which njs can only read while it exists. The key guard runs
    before the router reads a body (docs/load-balancer.md, "Costs and limits").
    """
    out = [
        d(
            "location",
            API_PREFIX,
            block=[
                *guard,
                d("if", BODY_TO_FILE_VARIABLE, block=[d("return", BODY_TO_FILE_STATUS)]),
                d("error_page", BODY_TO_FILE_STATUS, "=", BODY_FILE_LOCATION),
                # Its own error_page cancels the server's JSON ones: repeated.
                *error_pages(lb, limited=limited),
                d("client_body_buffer_size", BODY_BUFFER),
                d("js_content", ROUTER_HANDLER),
            ],
        ),
        d(
            "location",
            BODY_FILE_LOCATION,
            block=[
                # The whole body goes to the file here: the buffer is only the
                # unit of writing, and what a stalled upload holds in memory.
                d("client_body_buffer_size", FILE_BODY_BUFFER),
                d("client_body_in_file_only", "clean"),
                d("js_content", ROUTER_HANDLER),
            ],
        ),
        d("location", "=", MODELS_PATH, block=[*guard, d("js_content", MODELS_HANDLER)]),
    ]
    for pool in pools:
        main = [d("proxy_request_buffering", "on"), *accounting]
        if is_prefix_pool(pool):
            main.append(d("error_page", "502", "=", fallback_location_name(pool)))
            main.extend(error_pages(lb, except_=(502,), limited=limited))
        main.append(d("proxy_pass", f"http://{upstream_name(pool)}"))
        out.append(d("location", location_name(pool), block=main))
        if is_prefix_pool(pool):
            out.append(
                d(
                    "location",
                    fallback_location_name(pool),
                    block=[
                        d("proxy_request_buffering", "on"),
                        *accounting,
                        d("proxy_pass", f"http://{fallback_upstream_name(pool)}"),
                    ],
                )
            )
    return out


def router_files(prefix_script_path: str, pools: Sequence[ModelPool]) -> dict[str, str]:
    """router.js and prefix.js (it imports it), beside the generated models.js
    (`health.models_script`, which also carries the routing table)."""
    directory = script_dir(prefix_script_path)
    return {
        posixpath.join(directory, ROUTER_SCRIPT): router_script(),
        posixpath.join(directory, PREFIX_SCRIPT): prefix_script(),
    }
