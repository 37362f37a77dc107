"""The guide's own nginx config, rendered for the benchmark that compares with it."""

from __future__ import annotations

from collections.abc import Sequence

import crossplane

from components.config.sections import Upstream
from components.lb.directives import d, host_port
from components.lb.names import UPSTREAM_NAME
from components.lb.nginx_conf import NginxRuntime, main_context, temp_paths


def render_guide_config(
    upstreams: Sequence[Upstream],
    runtime: NginxRuntime | None = None,
    read_timeout_seconds: int | None = None,
) -> str:
    """The guide's config, kept as the baseline the tests and benchmark beat.

    nginx defaults plus `least_conn` and `max_fails=3 fail_timeout=10000s`,
    proxying every path. `read_timeout_seconds` stands in for the default 60 s
    so a test can show the cut-off without waiting a minute.
    """
    rt = runtime or NginxRuntime()
    if rt.tls is not None or rt.api_key_map is not None:
        raise ValueError("runtime: the guide's config has neither TLS nor an API key check")
    if not upstreams:
        raise ValueError("upstreams: at least one replica is needed")
    servers = []
    for upstream in upstreams:
        address = host_port(upstream.host, upstream.port)
        servers.append(d("server", address, "max_fails=3", "fail_timeout=10000s"))
    location = [
        d("proxy_pass", f"http://{UPSTREAM_NAME}"),
        d("proxy_set_header", "Host", "$host"),
        d("proxy_set_header", "X-Real-IP", "$remote_addr"),
        d("proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        d("proxy_set_header", "X-Forwarded-Proto", "$scheme"),
    ]
    if read_timeout_seconds is not None:
        location.append(d("proxy_read_timeout", f"{read_timeout_seconds}s"))
    http_block = [
        d("access_log", rt.access_log),
        *temp_paths(rt),
        d("upstream", UPSTREAM_NAME, block=[d("least_conn"), *servers]),
        d("server", block=[d("listen", rt.listen), d("location", "/", block=location)]),
    ]
    config = [*main_context(rt, []), d("http", block=http_block)]
    return str(crossplane.build(config)) + "\n"
