"""The load balancer's complete nginx.conf, rendered from typed settings.

The guide's config is nginx defaults plus `least_conn` and
`max_fails=3 fail_timeout=10000s`. Measured against stub LLM servers that is
wrong for this traffic in four ways, and each directive below answers one:

- `proxy_buffering on` holds back small SSE chunks (time to first token went
  from 53 ms to 781 ms), so buffering is off in both directions;
- `proxy_read_timeout 60s` cuts off any generation that is silent for a minute
  (every non-streaming one longer than that), so the read/send timeouts come
  from settings (an hour by default) and only connecting stays short;
- `fail_timeout=10000s` keeps a replica that failed three times out of the pool
  for about 2.8 hours, so the window is bounded (at most 15 s by the settings)
  and shared by all workers through the upstream `zone`;
- HTTP/1.0 to the upstream opens a connection per request, so the upstream
  gets HTTP/1.1 with `Connection ""` and a `keepalive` pool.

Only `/v1/`, the load balancer's own `/health` and the paths the settings
expose are served: vLLM's `--api-key` guards `/v1` only, so `/metrics`,
`/tokenize`, `/version` and the rest would otherwise be open to anyone who
reaches the balancer.

Which nginx runs this matters for one feature. The pinned base image
`nginx:1.28.0` supports `server <name> resolve;` with a `resolver` and a `zone`
(open source nginx since 1.27.3), so a replica container that is recreated with
a new address is found again without reloading nginx. Debian 12's nginx 1.22
rejects that parameter: with it, set `dynamic_resolve` to false (names are then
resolved once, at start, and nginx refuses to start if one is unknown).

The text is produced by crossplane's builder from directive lists rather than
by string formatting, and every value taken from settings is checked again
with the validators in `settings.py`: a value that slipped past the settings
(say, a model built with `model_construct`) must still not be able to end a
directive or open a block.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import crossplane

from components.settings import (
    LoadBalancerSettings,
    RoutingPolicy,
    Upstream,
    header_name,
    host_name,
    ip_address,
    safe_token,
    url_path,
)

Directive = dict[str, Any]

UPSTREAM_NAME = "vllm_backends"
HEALTH_PATH = "/health"
API_PREFIX = "/v1/"
AFFINITY_KEY_VARIABLE = "$lb_affinity_key"

# Everything an operator needs to see which replica answered and where the time
# went; the Authorization header (the API key) and request bodies never appear.
LOG_FORMAT = (
    '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
    "request_time=$request_time upstream=$upstream_addr "
    "upstream_status=$upstream_status upstream_connect_time=$upstream_connect_time "
    "upstream_header_time=$upstream_header_time "
    "upstream_response_time=$upstream_response_time"
)


@dataclass(frozen=True)
class NginxRuntime:
    """What differs between the container and a test on loopback.

    The container's nginx listens on port 80 on every interface (docker
    publishes it); tests and benchmarks run a private nginx on a loopback port
    with its own pid file, temp directory and log files.
    """

    listen_address: str = "0.0.0.0"
    listen_port: int = 80
    pid_path: str = "/tmp/nginx.pid"
    temp_dir: str = "/tmp/nginx"
    error_log: str = "stderr"
    access_log: str = "/dev/stdout"
    worker_processes: int | None = None


def _checked(field: str, value: str, validator: Callable[[str], str]) -> str:
    """Defence in depth: name the field when a value would not be safe in the config."""
    try:
        return validator(value)
    except ValueError as err:
        raise ValueError(f"{field}: {value!r} {err}") from None


def _d(directive: str, *args: str, block: list[Directive] | None = None) -> Directive:
    stmt: Directive = {"directive": directive, "args": list(args)}
    if block is not None:
        stmt["block"] = block
    return stmt


def _host_port(host: str, port: int) -> str:
    """IPv6 literals need brackets, or nginx reads the last group as the port."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _check_port(field: str, port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{field}: {port!r} must be a port number 1-65535")
    return port


def _check_positive(field: str, value: int, minimum: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}: {value!r} must be an integer >= {minimum}")
    return str(value)


def affinity_variable(header: str) -> str:
    """nginx exposes request header `X-Session-Id` as `$http_x_session_id`."""
    return "$http_" + _checked("affinity_header", header, header_name).lower().replace("-", "_")


def _policy_directives(lb: LoadBalancerSettings) -> list[Directive]:
    policy = RoutingPolicy(lb.policy)
    if policy is RoutingPolicy.LEAST_CONN:
        return [_d("least_conn")]
    if policy is RoutingPolicy.ROUND_ROBIN:
        return []
    if policy is RoutingPolicy.POWER_OF_TWO:
        return [_d("random", "two", "least_conn")]
    # Hashing the bare header would send every request without it to one
    # replica (they all hash the empty string); the map in `_affinity_map`
    # gives those a per-request key instead, so they spread.
    return [_d("hash", AFFINITY_KEY_VARIABLE, "consistent")]


def _affinity_map(lb: LoadBalancerSettings) -> list[Directive]:
    if RoutingPolicy(lb.policy) is not RoutingPolicy.SESSION_AFFINITY:
        return []
    variable = affinity_variable(lb.affinity_header)
    return [
        _d(
            "map",
            variable,
            AFFINITY_KEY_VARIABLE,
            block=[_d("default", variable), _d("", "$request_id")],
        )
    ]


def _server_lines(lb: LoadBalancerSettings, upstreams: Sequence[Upstream]) -> list[Directive]:
    if not upstreams:
        raise ValueError("upstreams: at least one replica is needed")
    max_fails = _check_positive("max_fails", lb.max_fails)
    fail_window = _check_positive("fail_window_seconds", lb.fail_window_seconds)
    lines = []
    for index, upstream in enumerate(upstreams):
        host = _checked(f"upstreams[{index}].host", upstream.host, host_name)
        port = _check_port(f"upstreams[{index}].port", upstream.port)
        args = [_host_port(host, port), f"max_fails={max_fails}", f"fail_timeout={fail_window}s"]
        if lb.dynamic_resolve and _is_name(host):
            args.append("resolve")
        lines.append(_d("server", *args))
    return lines


def _uses_resolve(lb: LoadBalancerSettings, upstreams: Sequence[Upstream]) -> bool:
    return lb.dynamic_resolve and any(_is_name(u.host) for u in upstreams)


def _proxy_settings(lb: LoadBalancerSettings) -> list[Directive]:
    retry_on = ["error", "timeout", "http_502", "http_503"]
    if lb.retry_non_idempotent:
        # A completion is a POST: without this, nginx only retries one that
        # failed before any byte reached the replica (connect errors).
        retry_on.append("non_idempotent")
    return [
        _d("proxy_http_version", "1.1"),
        _d("proxy_set_header", "Connection", ""),
        _d("proxy_set_header", "Host", "$host"),
        _d("proxy_set_header", "X-Real-IP", "$remote_addr"),
        _d("proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        _d("proxy_set_header", "X-Forwarded-Proto", "$scheme"),
        _d("proxy_buffering", "off"),
        # vLLM parses the whole JSON body before it starts, so streaming the
        # request gains nothing, while a buffered body can be sent again to
        # another replica when the first one fails before answering.
        _d("proxy_request_buffering", "on" if lb.buffer_requests else "off"),
        _d(
            "proxy_connect_timeout",
            _check_positive("connect_timeout_seconds", lb.connect_timeout_seconds) + "s",
        ),
        _d(
            "proxy_read_timeout",
            _check_positive("read_timeout_seconds", lb.read_timeout_seconds) + "s",
        ),
        _d(
            "proxy_send_timeout",
            _check_positive("send_timeout_seconds", lb.send_timeout_seconds) + "s",
        ),
        _d("proxy_next_upstream", *retry_on),
        _d(
            "proxy_next_upstream_tries",
            _check_positive("next_upstream_tries", lb.next_upstream_tries, minimum=0),
        ),
    ]


def _locations(lb: LoadBalancerSettings) -> list[Directive]:
    proxied = [_d("proxy_pass", f"http://{UPSTREAM_NAME}")]
    locations = [
        _d("location", API_PREFIX, block=list(proxied)),
        _d(
            "location",
            "=",
            HEALTH_PATH,
            block=[
                _d("access_log", "off"),
                _d("default_type", "text/plain"),
                _d("return", "200", "ok\n"),
            ],
        ),
    ]
    seen: set[str] = set()
    for index, path in enumerate(lb.expose_paths):
        path = _checked(f"expose_paths[{index}]", path, url_path)
        if path == HEALTH_PATH:
            raise ValueError(
                f"expose_paths[{index}]: {HEALTH_PATH} is answered by the load balancer "
                "itself (it reports the balancer's health, not one replica's)"
            )
        if path in seen:
            continue
        seen.add(path)
        locations.append(_d("location", "=", path, block=list(proxied)))
    locations.append(_d("location", "/", block=[_d("return", "404")]))
    return locations


@dataclass(frozen=True)
class _CheckedRuntime:
    listen: str
    pid_path: str
    temp_dir: str
    error_log: str
    access_log: str
    workers: str


def _check_runtime(runtime: NginxRuntime) -> _CheckedRuntime:
    listen_address = _checked("runtime.listen_address", runtime.listen_address, ip_address)
    listen_port = _check_port("runtime.listen_port", runtime.listen_port)
    return _CheckedRuntime(
        listen=_host_port(listen_address, listen_port),
        pid_path=_checked("runtime.pid_path", runtime.pid_path, safe_token),
        temp_dir=_checked("runtime.temp_dir", runtime.temp_dir, safe_token),
        error_log=_checked("runtime.error_log", runtime.error_log, safe_token),
        access_log=_checked("runtime.access_log", runtime.access_log, safe_token),
        workers=(
            "auto"
            if runtime.worker_processes is None
            else _check_positive("runtime.worker_processes", runtime.worker_processes)
        ),
    )


def _main_context(rt: _CheckedRuntime, events: list[Directive]) -> list[Directive]:
    return [
        _d("worker_processes", rt.workers),
        _d("pid", rt.pid_path),
        _d("error_log", rt.error_log, "warn"),
        _d("events", block=events),
    ]


def _temp_paths(rt: _CheckedRuntime) -> list[Directive]:
    # One directory for both: nginx creates only the last path component, and
    # a container has /tmp but nothing below it.
    return [
        _d("client_body_temp_path", rt.temp_dir),
        _d("proxy_temp_path", rt.temp_dir),
    ]


def render_nginx_config(
    lb: LoadBalancerSettings,
    upstreams: Sequence[Upstream],
    runtime: NginxRuntime = NginxRuntime(),
) -> str:
    """The whole main config: no `include`, no `user`, no mime.types.

    It must work unchanged on the official image and on Debian's package, whose
    stock files and worker users differ; `daemon` and `master_process` stay on
    the command line so the same file serves a container and a test.
    """
    rt = _check_runtime(runtime)
    worker_connections = _check_positive("worker_connections", lb.worker_connections, minimum=64)
    keepalive = _check_positive("keepalive_connections", lb.keepalive_connections)
    body_size = _check_positive("max_body_size_mb", lb.max_body_size_mb)

    upstream_block = [
        *_policy_directives(lb),
        # Shared memory: every worker sees the same failure and connection
        # counts (without it least_conn and max_fails are per worker).
        _d("zone", UPSTREAM_NAME, "256k"),
        *_server_lines(lb, upstreams),
        _d("keepalive", keepalive),
    ]
    resolver: list[Directive] = []
    if _uses_resolve(lb, upstreams):
        resolver = [
            _d("resolver", _checked("resolver", lb.resolver, ip_address), "valid=5s", "ipv6=off")
        ]
    http_block = [
        _d("log_format", "lb", LOG_FORMAT),
        _d("access_log", rt.access_log, "lb"),
        _d("default_type", "application/octet-stream"),
        _d("server_tokens", "off"),
        _d("client_max_body_size", f"{body_size}m"),
        *_temp_paths(rt),
        *resolver,
        *_affinity_map(lb),
        _d("upstream", UPSTREAM_NAME, block=upstream_block),
        _d("server", block=[_d("listen", rt.listen), *_proxy_settings(lb), *_locations(lb)]),
    ]
    config = [
        *_main_context(rt, [_d("worker_connections", worker_connections)]),
        _d("http", block=http_block),
    ]
    return str(crossplane.build(config)) + "\n"


def render_guide_config(
    upstreams: Sequence[Upstream],
    runtime: NginxRuntime = NginxRuntime(),
    read_timeout_seconds: int | None = None,
) -> str:
    """The guide's config, kept as the baseline the tests and benchmark beat.

    nginx defaults plus `least_conn` and `max_fails=3 fail_timeout=10000s`,
    proxying every path. `read_timeout_seconds` stands in for the default 60 s
    so a test can show the cut-off without waiting a minute.
    """
    rt = _check_runtime(runtime)
    if not upstreams:
        raise ValueError("upstreams: at least one replica is needed")
    servers = []
    for index, upstream in enumerate(upstreams):
        host = _checked(f"upstreams[{index}].host", upstream.host, host_name)
        port = _check_port(f"upstreams[{index}].port", upstream.port)
        servers.append(_d("server", _host_port(host, port), "max_fails=3", "fail_timeout=10000s"))
    location = [
        _d("proxy_pass", f"http://{UPSTREAM_NAME}"),
        _d("proxy_set_header", "Host", "$host"),
        _d("proxy_set_header", "X-Real-IP", "$remote_addr"),
        _d("proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        _d("proxy_set_header", "X-Forwarded-Proto", "$scheme"),
    ]
    if read_timeout_seconds is not None:
        timeout = _check_positive("read_timeout_seconds", read_timeout_seconds)
        location.append(_d("proxy_read_timeout", f"{timeout}s"))
    http_block = [
        _d("access_log", rt.access_log),
        *_temp_paths(rt),
        _d("upstream", UPSTREAM_NAME, block=[_d("least_conn"), *servers]),
        _d("server", block=[_d("listen", rt.listen), _d("location", "/", block=location)]),
    ]
    config = [*_main_context(rt, []), _d("http", block=http_block)]
    return str(crossplane.build(config)) + "\n"
