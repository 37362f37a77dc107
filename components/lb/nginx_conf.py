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

The `prefix_affinity` policy needs more than nginx.conf: njs, nginx's
JavaScript module, reads the request body and picks the routing key (see
`_prefix_routing`). The config loads the module from `NginxRuntime.njs_module`
(`/usr/lib/nginx/modules/ngx_http_js_module.so` both in the official image and
in Debian's `libnginx-mod-http-js`), and imports the script from
`NginxRuntime.prefix_script`; `render_extra_files` returns that script's text
under that path, for the deployment to upload beside the config. Other
policies load no module and need no extra file.

Two security options are driven by the caller through `NginxRuntime`, because
what they need (a certificate, a secret key) only exists at deployment time:

- `tls` makes the one server speak TLS only, so the API key and the prompts
  are not sent in the clear when the balancer is reachable beyond loopback;
- `api_key_map` makes the balancer itself refuse requests without the API key,
  so unauthenticated traffic never reaches (and never queues on) a replica.
  The key stays out of this text, which is printed for review and stored in
  Pulumi state as plain data: it lives in a separate file rendered by
  `render_api_key_map` and uploaded as a secret, which this config `include`s.

The text is produced by crossplane's builder from directive lists rather than
by string formatting, and every value taken from settings is checked again
with the validators in `settings.py`: a value that slipped past the settings
(say, a model built with `model_construct`) must still not be able to end a
directive or open a block.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import crossplane

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.config.values import (
    SAFE_TOKEN_RULE,
    header_name,
    host_name,
    ip_address,
    safe_token,
    url_path,
)
from components.containers.exporter.lb_exporter import LOG_FORMAT as METRICS_LOG_FORMAT
from components.containers.exporter.lb_exporter import SYSLOG_TAG as METRICS_SYSLOG_TAG
from components.lb.njs import (
    FALLBACK_LOCATION,
    PREFIX_CHARS_VARIABLE,
    PREFIX_HANDLER,
    PREFIX_KEY_VARIABLE,
    PREFIX_LOCATION,
    PREFIX_MODULE,
    prefix_script,
)

Directive = dict[str, Any]

UPSTREAM_NAME = "vllm_backends"
# prefix_affinity's second upstream: least_conn without a bound, for requests
# without a usable prompt and for overflow when every replica is at its bound.
FALLBACK_UPSTREAM_NAME = "vllm_backends_fallback"
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


# The variable the API key file defines; see `render_api_key_map`.
EXPECTED_AUTHORIZATION_VARIABLE = "$lb_expected_authorization"
# Modern protocols only: TLS 1.0 and 1.1 are deprecated (RFC 8996) and every
# OpenAI client library speaks 1.2 or 1.3.
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
UNAUTHORIZED_BODY = json.dumps(
    {
        "error": {
            "message": "Missing or invalid API key: send it as the header "
            "Authorization: Bearer <key>",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)


@dataclass(frozen=True)
class TlsFiles:
    """Where the deployment puts the certificate (chain) and its private key.

    Paths, not contents: the private key is a secret and must not end up in
    the config text, which is stored in Pulumi state as plain data.
    """

    certificate: str
    key: str


# Where the deployment is expected to upload the secret files in the container.
# nginx's master process (root) reads them once at start; workers never do.
CONTAINER_TLS_FILES = TlsFiles(
    certificate="/etc/nginx/tls/server.crt", key="/etc/nginx/tls/server.key"
)
CONTAINER_API_KEY_MAP = "/etc/nginx/api-key.conf"
# Where nginx.org's packages (the official image) and Debian's
# libnginx-mod-http-js both install njs's HTTP module.
NJS_MODULE_PATH = "/usr/lib/nginx/modules/ngx_http_js_module.so"
# Where the deployment is expected to upload the prefix_affinity script.
CONTAINER_PREFIX_SCRIPT = "/etc/nginx/lb/prefix.js"
# The body njs reads must be in memory (a body nginx spilled to a temp file is
# routed by the fallback); larger than any text prompt, allocated only as
# large as each body.
PREFIX_BODY_BUFFER = "1m"
BODY_BUFFER = "1m"


@dataclass(frozen=True)
class NginxRuntime:
    """What differs between the container and a test on loopback.

    The container's nginx listens on port 80 on every interface (docker
    publishes it); tests and benchmarks run a private nginx on a loopback port
    with its own pid file, temp directory and log files.

    `tls` and `api_key_map` are paths to files holding secrets, which is why
    they live here and not in `LoadBalancerSettings`: the settings say whether
    the features are on, the deployment decides where the secrets are put.
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
    if policy is RoutingPolicy.PREFIX_AFFINITY:
        return [_d("hash", PREFIX_KEY_VARIABLE, "consistent")]
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


def _is_prefix(lb: LoadBalancerSettings) -> bool:
    return RoutingPolicy(lb.policy) is RoutingPolicy.PREFIX_AFFINITY


def _server_lines(
    lb: LoadBalancerSettings, upstreams: Sequence[Upstream], max_conns: str | None = None
) -> list[Directive]:
    if not upstreams:
        raise ValueError("upstreams: at least one replica is needed")
    max_fails = _check_positive("max_fails", lb.max_fails)
    fail_window = _check_positive("fail_window_seconds", lb.fail_window_seconds)
    bound = [] if max_conns is None else [f"max_conns={max_conns}"]
    lines = []
    for index, upstream in enumerate(upstreams):
        host = _checked(f"upstreams[{index}].host", upstream.host, host_name)
        port = _check_port(f"upstreams[{index}].port", upstream.port)
        args = [
            _host_port(host, port),
            *bound,
            f"max_fails={max_fails}",
            f"fail_timeout={fail_window}s",
        ]
        if lb.dynamic_resolve and _is_name(host):
            args.append("resolve")
        lines.append(_d("server", *args))
    return lines


def _uses_resolve(lb: LoadBalancerSettings, upstreams: Sequence[Upstream]) -> bool:
    return lb.dynamic_resolve and any(_is_name(u.host) for u in upstreams)


def _proxy_settings(lb: LoadBalancerSettings) -> list[Directive]:
    # vLLM answers 500 to what arrives while it shuts down (its engine stops
    # before its HTTP server), as when its machine goes down: another replica
    # can answer it. A 500 nginx passes on counts as the replica's failure.
    retry_on = ["error", "timeout", "http_500", "http_502", "http_503"]
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


def _api_key_guard() -> list[Directive]:
    """Answer 401 in the rewrite phase, before an upstream is even chosen.

    A byte-exact `if ... !=` and not a `map` lookup on the header: nginx
    matches a map's string keys ignoring case, which would accept
    `bearer <KEY>` for `Bearer <key>`, so a key in any case. An `if` in a
    location that ends the request with `return` is one of the uses nginx
    documents as safe (the `add_header` beside it only shapes that 401).

    Only `Authorization: Bearer <key>` counts (what the OpenAI clients send
    and vLLM's `--api-key` checks): no `x-api-key`, no query parameter.
    nginx answers 400 to a request with two Authorization headers, so no
    client can make the balancer and the replica read different ones.

    The empty `types` makes the 401 `application/json` even for a path with an
    extension nginx knows (`.html`); proxied responses keep the replica's type.
    """
    return [
        _d("types", block=[]),
        _d("default_type", "application/json"),
        _d(
            "if",
            "$http_authorization",
            "!=",
            EXPECTED_AUTHORIZATION_VARIABLE,
            block=[
                # `always`: without it add_header is skipped on a 4xx.
                _d("add_header", "WWW-Authenticate", "Bearer", "always"),
                _d("return", "401", UNAUTHORIZED_BODY),
            ],
        ),
    ]


def _prefix_locations(guard: list[Directive]) -> list[Directive]:
    """`/v1/` runs the njs router; it redirects to one of two named locations.

    The API key check runs in the rewrite phase, before `js_content` (content
    phase) reads the body, so a refused request never reaches the router or
    a replica. Named locations cannot be requested by clients.

    The body njs read stays the request's body: after `internalRedirect` the
    proxy module finds it already read and sends it (nginx's
    `ngx_http_read_client_request_body` returns at once when a body exists).
    `proxy_request_buffering on` in both: the body is complete in memory by
    then anyway, and the proxy's unbuffered path expects to read it itself.

    `hash ... consistent` skips a replica at `max_conns` (or failed, or tried)
    and takes the next point of the ring, up to 20 points, then any replica
    under its bound (ngx_http_upstream_hash_module.c). With every replica at
    its bound nginx has no peer and answers 502 itself; `error_page 502 =`
    sends that request to the least_conn upstream, where it queues at the
    least busy replica instead. A 502 from a replica is passed through as is
    (no `proxy_intercept_errors`), after `proxy_next_upstream` tried others.
    """
    fallback_pass = _d("proxy_pass", f"http://{FALLBACK_UPSTREAM_NAME}")
    return [
        _d(
            "location",
            API_PREFIX,
            block=[
                *guard,
                _d("client_body_buffer_size", PREFIX_BODY_BUFFER),
                _d("js_content", PREFIX_HANDLER),
            ],
        ),
        _d(
            "location",
            PREFIX_LOCATION,
            block=[
                _d("proxy_request_buffering", "on"),
                _d("error_page", "502", "=", FALLBACK_LOCATION),
                _d("proxy_pass", f"http://{UPSTREAM_NAME}"),
            ],
        ),
        _d(
            "location",
            FALLBACK_LOCATION,
            block=[_d("proxy_request_buffering", "on"), fallback_pass],
        ),
    ]


def _locations(lb: LoadBalancerSettings, require_api_key: bool) -> list[Directive]:
    guard = _api_key_guard() if require_api_key else []
    if _is_prefix(lb):
        # Exposed paths (GET /metrics ...) carry no prompt: least_conn.
        proxied = [*guard, _d("proxy_pass", f"http://{FALLBACK_UPSTREAM_NAME}")]
        api_locations = _prefix_locations(guard)
    else:
        proxied = [*guard, _d("proxy_pass", f"http://{UPSTREAM_NAME}")]
        api_locations = [_d("location", API_PREFIX, block=list(proxied))]
    locations = [
        *api_locations,
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
    tls: TlsFiles | None
    api_key_map: str | None
    njs_module: str
    prefix_script: str
    metrics_syslog: str | None


def _check_tls(tls: TlsFiles | None) -> TlsFiles | None:
    if tls is None:
        return None
    return TlsFiles(
        certificate=_checked("runtime.tls.certificate", tls.certificate, safe_token),
        key=_checked("runtime.tls.key", tls.key, safe_token),
    )


def _check_runtime(runtime: NginxRuntime) -> _CheckedRuntime:
    listen_address = _checked("runtime.listen_address", runtime.listen_address, ip_address)
    listen_port = _check_port("runtime.listen_port", runtime.listen_port)
    api_key_map = runtime.api_key_map
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
        tls=_check_tls(runtime.tls),
        api_key_map=(
            None
            if api_key_map is None
            else _checked("runtime.api_key_map", api_key_map, safe_token)
        ),
        njs_module=_checked("runtime.njs_module", runtime.njs_module, safe_token),
        prefix_script=_checked("runtime.prefix_script", runtime.prefix_script, safe_token),
        metrics_syslog=_check_syslog(runtime.metrics_syslog),
    )


def _check_syslog(target: str | None) -> str | None:
    if target is None:
        return None
    host, _, port = target.rpartition(":")
    _checked("runtime.metrics_syslog", host, host_name)
    _check_port("runtime.metrics_syslog", int(port) if port.isdigit() else 0)
    return target


def _metrics_log(rt: _CheckedRuntime) -> list[Directive]:
    """A second access log, for the metrics exporter: UDP, so a missing exporter
    never slows a request; `escape=json` keeps every value a JSON string."""
    if rt.metrics_syslog is None:
        return []
    return [
        _d("log_format", "lb_metrics", "escape=json", METRICS_LOG_FORMAT),
        _d(
            "access_log",
            f"syslog:server={rt.metrics_syslog},tag={METRICS_SYSLOG_TAG},nohostname",
            "lb_metrics",
        ),
    ]


def _main_context(
    rt: _CheckedRuntime, events: list[Directive], modules: Sequence[str] = ()
) -> list[Directive]:
    return [
        # load_module must come before any block (nginx refuses it later).
        *[_d("load_module", module) for module in modules],
        _d("worker_processes", rt.workers),
        _d("pid", rt.pid_path),
        # Not `info`: at that level nginx logs both values of a duplicated
        # Authorization header, i.e. the API key.
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


def _listen(rt: _CheckedRuntime) -> list[Directive]:
    if rt.tls is None:
        return [_d("listen", rt.listen)]
    # TLS only on the one port: a plain request to it gets nginx's 400, never
    # a redirect, since a redirect would come after the key was sent in clear.
    return [
        _d("listen", rt.listen, "ssl"),
        _d("ssl_certificate", rt.tls.certificate),
        _d("ssl_certificate_key", rt.tls.key),
        _d("ssl_protocols", *TLS_PROTOCOLS),
        # A client that opens a new connection per request (a script, a
        # short-lived process) resumes instead of a full handshake, whichever
        # worker accepts it: the cache is shared by all workers.
        _d("ssl_session_cache", "shared:lb_tls:10m"),
        _d("ssl_session_timeout", "1h"),
        # Debian's 1.22 never rotates ticket keys (automatic rotation came in
        # 1.23.2), so there tickets would weaken forward secrecy until a
        # restart; the shared cache gives resumption on every version.
        _d("ssl_session_tickets", "off"),
    ]


def render_api_key_map(key: str) -> str:
    """The file that `NginxRuntime.api_key_map` points at, holding the API key.

    It defines the exact `Authorization` value a request must carry. Kept out
    of the main config so the key is only ever in this file, which the
    deployment uploads as a secret; the main config only compares against the
    variable. The key must use the same safe alphabet as every other value, so
    it can neither end the quoted string nor expand a variable; the error
    never repeats the key, since it may be printed or logged.
    """
    if not isinstance(key, str):
        raise ValueError("api_key: must be a str (a SecretStr's get_secret_value())")
    try:
        safe_token(key)
    except ValueError:
        raise ValueError(f"api_key: {SAFE_TOKEN_RULE}") from None
    config = [
        _d(
            "map",
            # The source is irrelevant (only `default` is set); a map rather
            # than `set` so the value is defined once, at http level. Never
            # add string keys here: map matches them ignoring case.
            "$http_authorization",
            EXPECTED_AUTHORIZATION_VARIABLE,
            block=[_d("default", f"Bearer {key}")],
        )
    ]
    return str(crossplane.build(config)) + "\n"


def render_nginx_config(
    lb: LoadBalancerSettings,
    upstreams: Sequence[Upstream],
    runtime: NginxRuntime = NginxRuntime(),
) -> str:
    """The whole main config: no `user`, no mime.types, no stock includes.

    It must work unchanged on the official image and on Debian's package, whose
    stock files and worker users differ; `daemon` and `master_process` stay on
    the command line so the same file serves a container and a test. The one
    `include` is the caller's API key file, only when `runtime.api_key_map` is
    set; nginx refuses to start without that file, so the check cannot be
    silently lost.
    """
    rt = _check_runtime(runtime)
    worker_connections = _check_positive("worker_connections", lb.worker_connections, minimum=64)
    keepalive = _check_positive("keepalive_connections", lb.keepalive_connections)
    body_size = _check_positive("max_body_size_mb", lb.max_body_size_mb)

    prefix = _is_prefix(lb)
    upstream_block = [
        *_policy_directives(lb),
        # Shared memory: every worker sees the same failure and connection
        # counts (without it least_conn, max_fails and max_conns are per worker).
        _d("zone", UPSTREAM_NAME, "256k"),
        *_server_lines(
            lb,
            upstreams,
            _check_positive("prefix_max_conns", lb.prefix_max_conns) if prefix else None,
        ),
        _d("keepalive", keepalive),
    ]
    upstream_blocks = [_d("upstream", UPSTREAM_NAME, block=upstream_block)]
    if prefix:
        upstream_blocks.append(
            _d(
                "upstream",
                FALLBACK_UPSTREAM_NAME,
                block=[
                    _d("least_conn"),
                    _d("zone", FALLBACK_UPSTREAM_NAME, "256k"),
                    *_server_lines(lb, upstreams),
                    _d("keepalive", keepalive),
                ],
            )
        )
    resolver: list[Directive] = []
    if _uses_resolve(lb, upstreams):
        resolver = [
            _d("resolver", _checked("resolver", lb.resolver, ip_address), "valid=5s", "ipv6=off")
        ]
    http_block = [
        _d("log_format", "lb", LOG_FORMAT),
        _d("access_log", rt.access_log, "lb"),
        *_metrics_log(rt),
        _d("default_type", "application/octet-stream"),
        _d("server_tokens", "off"),
        _d("client_max_body_size", f"{body_size}m"),
        # nginx's default (8k on x86-64) writes any longer prompt to a temp file
        # before it goes upstream: about 45 ms more time to first token for a
        # 14 kB chat (bench.prefix). Memory is taken only as large as each body.
        _d("client_body_buffer_size", BODY_BUFFER),
        *_temp_paths(rt),
        *resolver,
        *_affinity_map(lb),
        *(_prefix_http(lb, rt) if prefix else []),
        *([] if rt.api_key_map is None else [_d("include", rt.api_key_map)]),
        *upstream_blocks,
        _d(
            "server",
            block=[
                *_listen(rt),
                *_proxy_settings(lb),
                *_locations(lb, require_api_key=rt.api_key_map is not None),
            ],
        ),
    ]
    config = [
        *_main_context(
            rt,
            [_d("worker_connections", worker_connections)],
            modules=[rt.njs_module] if prefix else (),
        ),
        _d("http", block=http_block),
    ]
    return str(crossplane.build(config)) + "\n"


def _prefix_http(lb: LoadBalancerSettings, rt: _CheckedRuntime) -> list[Directive]:
    """The script and the two variables it shares with the config (njs >= 0.5.3 for js_var)."""
    chars = _check_positive("prefix_chars", lb.prefix_chars, minimum=16)
    return [
        _d("js_import", PREFIX_MODULE, "from", rt.prefix_script),
        _d("js_var", PREFIX_KEY_VARIABLE),
        _d("js_var", PREFIX_CHARS_VARIABLE, chars),
    ]


def render_extra_files(
    lb: LoadBalancerSettings, runtime: NginxRuntime = NginxRuntime()
) -> dict[str, str]:
    """Files the rendered config reads besides itself: {path in the container: text}.

    Empty unless the policy is `prefix_affinity`, which imports its njs script
    from `runtime.prefix_script`. The deployment uploads these next to
    nginx.conf (they hold no secret); the module itself
    (`runtime.njs_module`) must already be in the image.
    """
    if not _is_prefix(lb):
        return {}
    path = _checked("runtime.prefix_script", runtime.prefix_script, safe_token)
    return {path: prefix_script()}


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
    if rt.tls is not None or rt.api_key_map is not None:
        raise ValueError("runtime: the guide's config has neither TLS nor an API key check")
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
