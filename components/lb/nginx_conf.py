"""The load balancer's complete nginx.conf, rendered from typed settings.

The guide's config holds back streamed tokens, cuts silent generations, keeps a
failed replica out for hours and opens a connection per request; each directive
here answers one of those, and only `/v1/`, `/health` and the exposed paths are
served. Why each: docs/load-balancer.md.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import crossplane

from components.config.sections import LoadBalancerSettings, Upstream
from components.config.values import (
    SAFE_TOKEN_RULE,
    safe_token,
)
from components.containers.exporter.lb_exporter import SYSLOG_TAG as METRICS_SYSLOG_TAG
from components.containers.exporter.lb_exporter import log_format as metrics_log_format
from components.lb.directives import d, host_port
from components.lb.health import health_http, models_script
from components.lb.keys import (
    KEYS_SCRIPT,
    KeyPolicy,
    keys_http,
    keys_script,
    keys_server,
    map_hash_sizes,
    usage_filter,
)
from components.lb.locations import api_key_maps, locations, proxy_settings, server_errors
from components.lb.model_routing import (
    pool_upstreams,
    router_files,
    router_http,
    script_dir,
)
from components.lb.names import (
    BODY_BUFFER,
    CONTAINER_PREFIX_SCRIPT,
    EXPECTED_AUTHORIZATION_VARIABLE,
    FALLBACK_UPSTREAM_NAME,
    LOG_FORMAT,
    NJS_MODULE_PATH,
    TLS_PROTOCOLS,
    UPSTREAM_NAME,
    Directive,
    TlsFiles,
)
from components.lb.njs import (
    HEALTH_SCRIPT,
    PREFIX_CHARS_VARIABLE,
    PREFIX_KEY_VARIABLE,
    PREFIX_MODULE,
    ROUTING_TABLE_SCRIPT,
    health_script,
    prefix_script,
)
from components.lb.pools import ModelPool
from components.lb.upstreams import (
    affinity_map,
    is_prefix,
    policy_directives,
    uses_resolve,
)
from components.lb.upstreams import upstream_blocks as upstream_blocks_of


@dataclass(frozen=True)
class NginxRuntime:
    """What differs between the container and a test on loopback.

    The container's nginx listens on port 80 on every interface (docker
    publishes it); tests and benchmarks run a private nginx on a loopback port
    with its own pid file, temp directory and logs. `tls` and `api_key_map` are
    paths to files holding secrets: the settings say whether a feature is on,
    the deployment decides where its secret is put.
    """

    listen_address: str = "0.0.0.0"
    listen_port: int = 80
    pid_path: str = "/tmp/nginx.pid"
    temp_dir: str = "/tmp/nginx"
    error_log: str = "stderr"
    access_log: str = "/dev/stdout"
    worker_processes: int | None = None
    tls: TlsFiles | None = None
    api_key_map: str | None = None
    njs_module: str = NJS_MODULE_PATH
    prefix_script: str = CONTAINER_PREFIX_SCRIPT
    metrics_syslog: str | None = None
    """`host:port` of the load balancer's metrics exporter (monitoring): every
    request is also sent there as one JSON syslog line. nginx resolves the host
    once, at start, and refuses to start if it cannot."""

    @property
    def listen(self) -> str:
        return host_port(self.listen_address, self.listen_port)

    @property
    def workers(self) -> str:
        return "auto" if self.worker_processes is None else str(self.worker_processes)


def _metrics_log(rt: NginxRuntime, pools: bool = False, keys: bool = False) -> list[Directive]:
    """A second access log, for the metrics exporter: UDP, so a missing exporter
    never slows a request; `escape=json` keeps every value a JSON string. With
    model routing each line also names the pool, with named keys the key's name."""
    if rt.metrics_syslog is None:
        return []
    log_format = metrics_log_format(pools, keys)
    return [
        d("log_format", "lb_metrics", "escape=json", log_format),
        d(
            "access_log",
            f"syslog:server={rt.metrics_syslog},tag={METRICS_SYSLOG_TAG},nohostname",
            "lb_metrics",
        ),
    ]


def main_context(
    rt: NginxRuntime,
    events: list[Directive],
    modules: Sequence[str] = (),
    open_files: str | None = None,
) -> list[Directive]:
    return [
        # load_module must come before any block (nginx refuses it later).
        *[d("load_module", module) for module in modules],
        d("worker_processes", rt.workers),
        *([] if open_files is None else [d("worker_rlimit_nofile", open_files)]),
        d("pid", rt.pid_path),
        # Not `info`: at that level nginx logs both values of a duplicated
        # Authorization header, i.e. the API key.
        d("error_log", rt.error_log, "warn"),
        d("events", block=events),
    ]


def temp_paths(rt: NginxRuntime) -> list[Directive]:
    # One directory for both: nginx creates only the last path component, and
    # a container has /tmp but nothing below it.
    return [
        d("client_body_temp_path", rt.temp_dir),
        d("proxy_temp_path", rt.temp_dir),
    ]


# nginx's default accept queue on Linux is 511: a burst of new streams (10,000
# opened over 8 s in bench/capacity) overflowed it, and every dropped SYN costs
# its client a retransmission (1 s, then 3 s...): TTFT p50 through nginx went
# from 54 ms to 1.2 s. The kernel caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = "backlog=4096"


def _listen(rt: NginxRuntime) -> list[Directive]:
    if rt.tls is None:
        return [d("listen", rt.listen, LISTEN_BACKLOG)]
    # TLS only on the one port: a plain request to it gets nginx's 400, never
    # a redirect, since a redirect would come after the key was sent in clear.
    return [
        d("listen", rt.listen, "ssl", LISTEN_BACKLOG),
        d("ssl_certificate", rt.tls.certificate),
        d("ssl_certificate_key", rt.tls.key),
        d("ssl_protocols", *TLS_PROTOCOLS),
        # A client that opens a new connection per request (a script, a
        # short-lived process) resumes instead of a full handshake, whichever
        # worker accepts it: the cache is shared by all workers.
        d("ssl_session_cache", "shared:lb_tls:10m"),
        d("ssl_session_timeout", "1h"),
        # Debian's 1.22 never rotates ticket keys (automatic rotation came in
        # 1.23.2), so there tickets would weaken forward secrecy until a
        # restart; the shared cache gives resumption on every version.
        d("ssl_session_tickets", "off"),
    ]


def render_api_key_map(key: str) -> str:
    """The file that `NginxRuntime.api_key_map` points at: the expected `Authorization`.

    Kept out of the main config so the key is only in this file, uploaded as a
    secret. The key must use the safe alphabet of every other value, so it can
    neither end the quoted string nor expand a variable; the error never repeats
    the key, since it may be printed or logged (docs/load-balancer.md).
    """
    if not isinstance(key, str):
        raise ValueError("api_key: must be a str (a SecretStr's get_secret_value())")
    try:
        safe_token(key)
    except ValueError:
        raise ValueError(f"api_key: {SAFE_TOKEN_RULE}") from None
    config = [
        d(
            "map",
            # The source is irrelevant (only `default` is set); a map rather
            # than `set` so the value is defined once, at http level. Never
            # add string keys here: map matches them ignoring case.
            "$http_authorization",
            EXPECTED_AUTHORIZATION_VARIABLE,
            block=[d("default", f"Bearer {key}")],
        )
    ]
    return str(crossplane.build(config)) + "\n"


def render_nginx_config(
    lb: LoadBalancerSettings,
    upstreams: Sequence[Upstream],
    runtime: NginxRuntime = NginxRuntime(),
    pools: Sequence[ModelPool] = (),
    keys: Sequence[KeyPolicy] = (),
) -> str:
    """The whole main config: no `user`, no mime.types, no stock includes.

    So it works unchanged on the official image and on Debian's package; `daemon`
    and `master_process` stay on the command line so one file serves a container
    and a test. The one `include` is the API key file (`runtime.api_key_map`),
    which nginx refuses to start without, so the check cannot be silently lost.
    With named `keys` that file maps key digests to names (`render_key_file`).
    """
    rt = runtime
    if keys and rt.api_key_map is None:
        raise ValueError("named API keys need the key file (runtime.api_key_map)")
    worker_connections = str(lb.worker_connections)
    keepalive = str(lb.keepalive_connections)
    body_size = str(lb.max_body_size_mb)

    # With model routing the pools are routed by their own policies; the
    # upstream of every replica only serves the exposed paths (no prompt).
    prefix = is_prefix(lb) and not pools
    upstream_blocks = upstream_blocks_of(
        lb,
        UPSTREAM_NAME,
        policy_directives(lb) if not pools else [d("least_conn")],
        upstreams,
        keepalive,
        fallback=FALLBACK_UPSTREAM_NAME if prefix else None,
    )
    upstream_blocks.extend(pool_upstreams(lb, pools, keepalive))
    resolver: list[Directive] = []
    if uses_resolve(lb, [*upstreams, *(u for pool in pools for u in pool.upstreams)]):
        resolver = [d("resolver", lb.resolver, "valid=5s", "ipv6=off")]
    accounting = usage_filter() if keys and rt.metrics_syslog is not None else []
    http_block = [
        *(map_hash_sizes(keys) if keys else []),
        d("log_format", "lb", LOG_FORMAT),
        d("access_log", rt.access_log, "lb"),
        *_metrics_log(rt, pools=bool(pools), keys=bool(keys)),
        d("default_type", "application/octet-stream"),
        d("server_tokens", "off"),
        d("client_max_body_size", f"{body_size}m"),
        # nginx's default (8k on x86-64) writes any longer prompt to a temp file
        # before it goes upstream: about 45 ms more time to first token for a
        # 14 kB chat (bench.prefix). Memory is taken only as large as each body.
        d("client_body_buffer_size", BODY_BUFFER),
        *temp_paths(rt),
        *resolver,
        *affinity_map(lb, pools),
        *(_prefix_http(lb, rt) if prefix else []),
        *(router_http(lb, rt.prefix_script) if pools else []),
        *health_http(rt.temp_dir, script_dir(rt.prefix_script)),
        *(
            []
            if rt.api_key_map is None
            else [*api_key_maps(), *keys_http(keys, script_dir(rt.prefix_script), rt.api_key_map)]
            if keys
            else [d("include", rt.api_key_map), *api_key_maps()]
        ),
        *upstream_blocks,
        d(
            "server",
            block=[
                *_listen(rt),
                *server_errors(lb, limited=bool(keys)),
                *proxy_settings(lb),
                *keys_server(keys),
                *locations(
                    lb,
                    require_api_key=rt.api_key_map is not None,
                    pools=pools,
                    keys=keys,
                    accounting=accounting,
                ),
            ],
        ),
    ]
    config = [
        *main_context(
            rt,
            [d("worker_connections", worker_connections)],
            # Every connection is a file, and so are temp files and logs: without
            # this a container's soft limit (1024 by default) caps a worker well
            # below worker_connections (bench/capacity: 10,000 streams).
            open_files=str(2 * int(worker_connections)),
            # Always: /health is answered by njs (components/lb/health.py).
            modules=[rt.njs_module],
        ),
        d("http", block=http_block),
    ]
    return str(crossplane.build(config)) + "\n"


def _prefix_http(lb: LoadBalancerSettings, rt: NginxRuntime) -> list[Directive]:
    """The script and the two variables it shares with the config (njs >= 0.5.3 for js_var)."""
    chars = str(lb.prefix_chars)
    return [
        d("js_import", PREFIX_MODULE, "from", rt.prefix_script),
        d("js_var", PREFIX_KEY_VARIABLE),
        d("js_var", PREFIX_CHARS_VARIABLE, chars),
    ]


def render_extra_files(
    lb: LoadBalancerSettings,
    runtime: NginxRuntime = NginxRuntime(),
    pools: Sequence[ModelPool] = (),
    keys: Sequence[KeyPolicy] = (),
) -> dict[str, str]:
    """Files the rendered config reads besides itself: {path in the container: text}.

    Beside `runtime.prefix_script`: health.js and models.js always; router.js and
    prefix.js with `pools`, prefix.js alone for prefix_affinity; keys.js with named
    `keys`. They hold no secret; the njs module itself must be in the image.
    """
    directory = script_dir(runtime.prefix_script)
    files = {
        posixpath.join(directory, HEALTH_SCRIPT): health_script(),
        posixpath.join(directory, ROUTING_TABLE_SCRIPT): models_script(lb, pools, keys),
    }
    if keys:
        files[posixpath.join(directory, KEYS_SCRIPT)] = keys_script()
    if pools:
        files.update(router_files(runtime.prefix_script, pools))
    elif is_prefix(lb):
        files[runtime.prefix_script] = prefix_script()
    return files
