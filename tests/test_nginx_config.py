"""The renderer's output: accepted by the real nginx, shaped as promised, not injectable."""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import crossplane
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.config.values import SAFE_TOKEN_RULE
from components.lb.guide import render_guide_config
from components.lb.names import (
    CONTAINER_API_KEY_MAP,
    CONTAINER_PREFIX_SCRIPT,
    CONTAINER_TLS_FILES,
    EXPECTED_AUTHORIZATION_VARIABLE,
    FALLBACK_UPSTREAM_NAME,
    LOG_FORMAT,
    NJS_MODULE_PATH,
    UNAUTHORIZED_BODY,
    UPSTREAM_NAME,
    TlsFiles,
)
from components.lb.nginx_conf import (
    NginxRuntime,
    render_api_key_map,
    render_extra_files,
    render_nginx_config,
)
from components.lb.njs import prefix_script
from components.lb.pools import ModelPool
from components.lb.upstreams import affinity_variable
from tests.support.nginx import (
    Pki,
    check_config,
    loopback_runtime,
    make_sandbox,
    make_test_pki,
    require_nginx,
    require_njs,
    write_api_key_map,
    write_extra_files,
)

pytestmark = pytest.mark.nginx

# --- strategies --------------------------------------------------------------

header_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,20}", fullmatch=True)
url_paths = st.from_regex(r"/[A-Za-z0-9._~/-]{0,24}", fullmatch=True).filter(
    lambda p: "//" not in p and ".." not in p and p != "/health" and not p.startswith("/v1")
)
ipv4 = st.ip_addresses(v=4).map(str)
# Names must resolve when nginx -t loads them (without `resolve` nginx looks
# them up at start), so the real-binary run uses IPs and localhost only.
resolvable_hosts = st.one_of(ipv4, st.sampled_from(["127.0.0.1", "::1", "localhost"]))
ports = st.integers(min_value=1, max_value=65535)
# settings.safe_token's alphabet: what an API key may contain.
api_keys = st.from_regex(r"[A-Za-z0-9._:/@%+=,~|\-\[\]*]{1,80}", fullmatch=True)


def lb_settings(dynamic_resolve: bool) -> st.SearchStrategy[LoadBalancerSettings]:
    return st.builds(
        LoadBalancerSettings,
        policy=st.sampled_from(list(RoutingPolicy)),
        affinity_header=header_names,
        # The whole range the settings allow, bounds included.
        prefix_chars=st.integers(16, 65536),
        prefix_max_conns=st.integers(1, 100000),
        read_timeout_seconds=st.integers(1, 7 * 86400),
        send_timeout_seconds=st.integers(1, 7 * 86400),
        connect_timeout_seconds=st.integers(1, 75),
        max_fails=st.integers(1, 1000),
        fail_window_seconds=st.integers(1, 15),
        next_upstream_tries=st.integers(0, 20),
        retry_non_idempotent=st.booleans(),
        buffer_requests=st.booleans(),
        keepalive_connections=st.integers(0, 4096),
        max_body_size_mb=st.integers(1, 100 * 1024),
        worker_connections=st.integers(64, 65535),
        expose_paths=st.lists(url_paths, max_size=5).map(tuple),
        dynamic_resolve=st.just(dynamic_resolve),
    )


def upstream_lists(hosts: st.SearchStrategy[str]) -> st.SearchStrategy[list[Upstream]]:
    return st.lists(st.builds(Upstream, host=hosts, port=ports), min_size=1, max_size=8)


# --- helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return require_nginx()


@pytest.fixture(scope="module")
def sandbox() -> Any:
    path = make_sandbox()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(sandbox) -> Pki:
    return make_test_pki(sandbox / "pki")


def parse(config: str, check_ctx: bool = True) -> list[dict[str, Any]]:
    """crossplane's own parser: catches what the builder could get wrong structurally.

    `check_ctx=False` for the API key file, whose `map` sits in the `http`
    block that includes it, not at the top level.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
        handle.write(config)
        name = handle.name
    try:
        payload = crossplane.parse(name, single=True, comments=False, check_ctx=check_ctx)
    finally:
        Path(name).unlink()
    assert payload["status"] == "ok", payload["errors"]
    parsed: list[dict[str, Any]] = payload["config"][0]["parsed"]
    return parsed


def find(block: list[dict[str, Any]], directive: str) -> list[dict[str, Any]]:
    return [d for d in block if d["directive"] == directive]


def walk(block: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in block:
        out.append(d)
        out.extend(walk(d.get("block", [])))
    return out


def http_of(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (http,) = find(parsed, "http")
    block: list[dict[str, Any]] = http["block"]
    return block


def upstream_of(parsed: list[dict[str, Any]], name: str = UPSTREAM_NAME) -> list[dict[str, Any]]:
    upstreams = find(http_of(parsed), "upstream")
    # One upstream, or (prefix_affinity) the hash one and its least_conn fallback.
    assert [u["args"] for u in upstreams] in (
        [[UPSTREAM_NAME]],
        [[UPSTREAM_NAME], [FALLBACK_UPSTREAM_NAME]],
    )
    (upstream,) = [u for u in upstreams if u["args"] == [name]]
    block: list[dict[str, Any]] = upstream["block"]
    return block


def server_of(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (server,) = find(http_of(parsed), "server")
    block: list[dict[str, Any]] = server["block"]
    return block


def locations(parsed: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    return {tuple(d["args"]): d["block"] for d in find(server_of(parsed), "location")}


def args_of(block: list[dict[str, Any]], directive: str) -> list[str]:
    (d,) = find(block, directive)
    args: list[str] = d["args"]
    return args


UPSTREAMS = [Upstream(host="127.0.0.1", port=8001), Upstream(host="127.0.0.2", port=8002)]


# --- the real binary accepts everything the renderer produces ------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lb=lb_settings(dynamic_resolve=False),
    upstreams=upstream_lists(resolvable_hosts),
    tls=st.booleans(),
    api_key=st.none() | api_keys,
)
def test_every_rendered_config_passes_nginx_t(
    nginx_binary, sandbox, pki, lb, upstreams, tls, api_key
):
    if lb.policy is RoutingPolicy.PREFIX_AFFINITY:
        require_njs()
    key_map = None if api_key is None else write_api_key_map(sandbox, api_key)
    runtime = loopback_runtime(sandbox, 18080, tls=pki.server if tls else None, api_key_map=key_map)
    config = render_nginx_config(lb, upstreams, runtime)
    write_extra_files(lb, runtime)
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, f"{result.stderr}\n{config}"


def move_scripts(config: str, files: dict[str, str], sandbox: Path) -> str:
    """The njs files written into the sandbox, and the config pointed at them."""
    for container_path, text in files.items():
        local = sandbox / posixpath.basename(container_path)
        local.write_text(text)
        config = config.replace(container_path, str(local))
    return config


@pytest.mark.parametrize("policy", list(RoutingPolicy))
def test_each_policy_with_container_runtime_passes_nginx_t(nginx_binary, sandbox, policy):
    # The container defaults (port 80, /tmp paths, stderr/stdout logs) as shipped;
    # the njs script where the deployment uploads it, moved into the sandbox.
    lb = LoadBalancerSettings(policy=policy, dynamic_resolve=False, expose_paths=("/metrics",))
    config = render_nginx_config(lb, [Upstream(host="localhost", port=8000)], NginxRuntime())
    require_njs()
    for container_path, text in render_extra_files(lb).items():
        assert container_path.startswith(posixpath.dirname(CONTAINER_PREFIX_SCRIPT) + "/")
        local = sandbox / posixpath.basename(container_path)
        local.write_text(text)
        config = config.replace(container_path, str(local))
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, f"{result.stderr}\n{config}"


def test_container_tls_and_key_paths_pass_nginx_t(nginx_binary, sandbox, pki):
    """The suggested in-container paths, with files where a deployment would put them."""
    config = render_nginx_config(
        LoadBalancerSettings(dynamic_resolve=False, expose_paths=("/metrics",)),
        [Upstream(host="localhost", port=8000)],
        NginxRuntime(tls=CONTAINER_TLS_FILES, api_key_map=CONTAINER_API_KEY_MAP),
    )
    moved = {
        CONTAINER_TLS_FILES.certificate: pki.server.certificate,
        CONTAINER_TLS_FILES.key: pki.server.key,
        CONTAINER_API_KEY_MAP: write_api_key_map(sandbox, "sk-container"),
    }
    for container_path, local_path in moved.items():
        config = config.replace(container_path, local_path)
    require_njs()
    config = move_scripts(config, render_extra_files(LoadBalancerSettings()), sandbox)
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, f"{result.stderr}\n{config}"


def test_a_missing_key_file_stops_nginx_rather_than_serving_unguarded(nginx_binary, sandbox):
    runtime = loopback_runtime(sandbox, 18080, api_key_map=str(sandbox / "absent.conf"))
    result = check_config(
        nginx_binary, render_nginx_config(LoadBalancerSettings(), UPSTREAMS, runtime), sandbox
    )
    assert result.returncode != 0
    assert "absent.conf" in result.stderr


def test_guide_config_passes_nginx_t(nginx_binary, sandbox):
    config = render_guide_config(UPSTREAMS, loopback_runtime(sandbox, 18080), 2)
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, result.stderr


def test_debian_1_22_rejects_resolve_which_is_why_dynamic_resolve_exists(nginx_binary, sandbox):
    """Documents the module docstring's claim against the installed nginx."""
    from tests.support.nginx import nginx_version

    version = nginx_version(nginx_binary)
    config = render_nginx_config(
        LoadBalancerSettings(dynamic_resolve=True),
        [Upstream(host="localhost", port=8000)],
        loopback_runtime(sandbox, 18080),
    )
    result = check_config(nginx_binary, config, sandbox)
    major, minor, patch = (int(x) for x in version.split("/")[-1].split(".")[:3])
    if (major, minor, patch) >= (1, 27, 3):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert 'invalid parameter "resolve"' in result.stderr


# --- dynamic resolve: structure only (1.22 here cannot load it) ---------------

any_hosts = st.one_of(
    ipv4,
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z]{2,6})?", fullmatch=True),
)


@settings(max_examples=100, deadline=None)
@given(lb=lb_settings(dynamic_resolve=True), upstreams=upstream_lists(any_hosts))
def test_resolve_only_on_names_and_resolver_only_when_needed(lb, upstreams):
    parsed = parse(render_nginx_config(lb, upstreams))
    servers = find(upstream_of(parsed), "server")
    assert len(servers) == len(upstreams)
    for line, upstream in zip(servers, upstreams, strict=True):
        is_name = any(c.isalpha() for c in upstream.host) and ":" not in upstream.host
        is_name = is_name and not upstream.host.replace(".", "").isdigit()
        assert ("resolve" in line["args"]) == is_name, (line, upstream)
    resolvers = find(http_of(parsed), "resolver")
    if any("resolve" in s["args"] for s in servers):
        assert [r["args"] for r in resolvers] == [["127.0.0.11", "valid=5s", "ipv6=off"]]
        assert find(upstream_of(parsed), "zone"), "resolve needs a shared zone"
    else:
        assert resolvers == []


def test_dynamic_resolve_false_never_resolves():
    lb = LoadBalancerSettings(dynamic_resolve=False)
    parsed = parse(render_nginx_config(lb, [Upstream(host="vllm0", port=8000)]))
    assert "resolve" not in args_of(upstream_of(parsed), "server")
    assert find(http_of(parsed), "resolver") == []


# --- structure of the default and of each policy ------------------------------


def test_defaults_fit_llm_traffic():
    parsed = parse(render_nginx_config(LoadBalancerSettings(), UPSTREAMS))
    upstream = upstream_of(parsed)
    assert find(upstream, "least_conn")
    assert args_of(upstream, "zone")[0] == UPSTREAM_NAME
    assert args_of(upstream, "keepalive") == ["32"]
    assert [s["args"] for s in find(upstream, "server")] == [
        ["127.0.0.1:8001", "max_fails=3", "fail_timeout=10s"],
        ["127.0.0.2:8002", "max_fails=3", "fail_timeout=10s"],
    ]
    # keepalive must follow the balancing method, or nginx ignores the method's
    # peer selection for cached connections.
    names = [d["directive"] for d in upstream]
    assert names.index("least_conn") < names.index("keepalive")

    server = server_of(parsed)
    assert args_of(server, "proxy_buffering") == ["off"]
    assert args_of(server, "proxy_request_buffering") == ["on"]
    assert args_of(server, "proxy_http_version") == ["1.1"]
    assert args_of(server, "proxy_read_timeout") == ["3600s"]
    assert args_of(server, "proxy_send_timeout") == ["3600s"]
    assert args_of(server, "proxy_connect_timeout") == ["5s"]
    assert args_of(server, "proxy_next_upstream") == [
        "error",
        "timeout",
        "http_500",
        "http_502",
        "http_503",
        "non_idempotent",
    ]
    assert args_of(server, "proxy_next_upstream_tries") == ["2"]
    headers = {tuple(d["args"][:1]): d["args"][1:] for d in find(server, "proxy_set_header")}
    assert headers == {
        ("Connection",): [""],
        ("Host",): ["$host"],
        ("X-Real-IP",): ["$remote_addr"],
        ("X-Forwarded-For",): ["$proxy_add_x_forwarded_for"],
        ("X-Forwarded-Proto",): ["$scheme"],
    }
    # proxy_set_header in a location would silently drop all server-level ones.
    for block in locations(parsed).values():
        assert not find(block, "proxy_set_header")

    http = http_of(parsed)
    assert args_of(http, "client_max_body_size") == ["100m"]
    assert args_of(find(parsed, "events")[0]["block"], "worker_connections") == ["4096"]
    assert args_of(server, "listen") == ["0.0.0.0:80", "backlog=4096"]
    assert args_of(parsed, "pid") == ["/tmp/nginx.pid"]


def test_nothing_depends_on_stock_files_or_users():
    parsed = parse(render_nginx_config(LoadBalancerSettings(expose_paths=("/metrics",)), UPSTREAMS))
    names = {d["directive"] for d in walk(parsed)}
    assert not names & {"include", "user", "daemon", "master_process"}
    # The one `types`, empty: nginx's own responses are JSON whatever the path.
    assert all(d["block"] == [] for d in walk(parsed) if d["directive"] == "types")


def test_log_format_has_upstream_timings_and_no_secrets():
    parsed = parse(render_nginx_config(LoadBalancerSettings(), UPSTREAMS))
    (fmt,) = find(http_of(parsed), "log_format")
    text = " ".join(fmt["args"])
    for variable in (
        "$upstream_addr",
        "$upstream_status",
        "$upstream_connect_time",
        "$upstream_header_time",
        "$upstream_response_time",
        "$request_time",
    ):
        assert variable in text
    assert "authorization" not in text.lower()
    assert "$http_" not in LOG_FORMAT
    assert args_of(http_of(parsed), "access_log") == ["/dev/stdout", "lb"]


def test_round_robin_has_no_balancing_directive():
    parsed = parse(render_nginx_config(LoadBalancerSettings(policy="round_robin"), UPSTREAMS))
    names = {d["directive"] for d in upstream_of(parsed)}
    assert not names & {"least_conn", "random", "hash", "ip_hash"}


def test_power_of_two_is_random_two_least_conn():
    parsed = parse(render_nginx_config(LoadBalancerSettings(policy="power_of_two"), UPSTREAMS))
    assert args_of(upstream_of(parsed), "random") == ["two", "least_conn"]


def test_session_affinity_hashes_the_header_and_spreads_requests_without_it():
    lb = LoadBalancerSettings(policy="session_affinity", affinity_header="X-Chat-Session")
    parsed = parse(render_nginx_config(lb, UPSTREAMS))
    assert args_of(upstream_of(parsed), "hash") == ["$lb_affinity_key", "consistent"]
    (map_block,) = find(http_of(parsed), "map")
    assert map_block["args"] == ["$http_x_chat_session", "$lb_affinity_key"]
    entries = {d["directive"]: d["args"] for d in map_block["block"]}
    assert entries == {"default": ["$http_x_chat_session"], "": ["$request_id"]}
    assert affinity_variable("X-Session-Id") == "$http_x_session_id"


def test_public_surface_is_v1_health_and_exposed_paths_only():
    lb = LoadBalancerSettings(expose_paths=("/metrics", "/version", "/metrics"))
    parsed = parse(render_nginx_config(lb, UPSTREAMS))
    locs = locations(parsed)
    public = {k for k in locs if not k[0].startswith("@") and not find(locs[k], "internal")}
    assert public == {
        ("/v1/",),
        ("=", "/health"),
        ("/health/",),
        ("=", "/metrics"),
        ("=", "/version"),
        ("/",),
    }
    proxy = [f"http://{UPSTREAM_NAME}"]
    assert args_of(locs[("/v1/",)], "proxy_pass") == proxy
    assert args_of(locs[("=", "/metrics")], "proxy_pass") == proxy
    assert args_of(locs[("=", "/health")], "js_content") == ["lb_health.health"]
    assert args_of(locs[("=", "/_lb/probe/default")], "proxy_pass") == [
        f"http://{UPSTREAM_NAME}/health"
    ]
    assert args_of(locs[("/",)], "return") == ["404"]


def test_exposing_health_is_refused_because_the_lb_answers_it():
    # The settings refuse it already; the renderer refuses it again (defence in depth).
    lb = LoadBalancerSettings.model_construct(
        **{**LoadBalancerSettings().__dict__, "expose_paths": ("/health",)}
    )
    with pytest.raises(ValueError, match=r"expose_paths\[0\]"):
        render_nginx_config(lb, UPSTREAMS)


def test_ipv6_upstreams_are_bracketed():
    parsed = parse(render_nginx_config(LoadBalancerSettings(), [Upstream(host="::1", port=8000)]))
    assert args_of(upstream_of(parsed), "server")[0] == "[::1]:8000"


def test_no_upstreams_is_an_error():
    with pytest.raises(ValueError, match="upstreams"):
        render_nginx_config(LoadBalancerSettings(), [])


# --- TLS and the API key check ------------------------------------------------

TLS = TlsFiles(certificate="/etc/nginx/tls/server.crt", key="/etc/nginx/tls/server.key")
KEY = "sk-Mixed.Case_Key+42"


def test_no_tls_and_no_key_check_unless_asked():
    parsed = parse(render_nginx_config(LoadBalancerSettings(expose_paths=("/metrics",)), UPSTREAMS))
    names = {d["directive"] for d in walk(parsed)}
    assert not {n for n in names if n.startswith("ssl")}
    assert not names & {"include", "if"}
    # add_header only for the Retry-After of nginx's own 5xx.
    assert {d["args"][0] for d in walk(parsed) if d["directive"] == "add_header"} == {"Retry-After"}
    assert args_of(server_of(parsed), "listen") == ["0.0.0.0:80", "backlog=4096"]


def test_tls_listens_with_ssl_modern_protocols_and_a_shared_session_cache():
    parsed = parse(render_nginx_config(LoadBalancerSettings(), UPSTREAMS, NginxRuntime(tls=TLS)))
    server = server_of(parsed)
    assert [d["args"] for d in find(server, "listen")] == [["0.0.0.0:80", "ssl", "backlog=4096"]]
    assert args_of(server, "ssl_certificate") == [TLS.certificate]
    assert args_of(server, "ssl_certificate_key") == [TLS.key]
    assert args_of(server, "ssl_protocols") == ["TLSv1.2", "TLSv1.3"]
    assert args_of(server, "ssl_session_cache")[0].startswith("shared:")
    assert args_of(server, "ssl_session_tickets") == ["off"]
    # Streaming is unaffected by TLS.
    assert args_of(server, "proxy_buffering") == ["off"]
    assert CONTAINER_TLS_FILES == TLS


def test_every_proxied_location_checks_the_key_and_health_does_not():
    lb = LoadBalancerSettings(expose_paths=("/metrics", "/version"))
    runtime = NginxRuntime(api_key_map=CONTAINER_API_KEY_MAP)
    parsed = parse(render_nginx_config(lb, UPSTREAMS, runtime))
    assert args_of(http_of(parsed), "include") == ["/etc/nginx/api-key.conf"]
    locs = locations(parsed)
    for args in (("/v1/",), ("=", "/metrics"), ("=", "/version")):
        block = locs[args]
        names = [d["directive"] for d in block]
        # The check comes before proxy_pass in the text (nginx runs the
        # rewrite phase first either way; this keeps it obvious for a reader).
        assert names.index("if") < names.index("proxy_pass"), args
        (check,) = find(block, "if")
        assert check["args"] == [
            "$lb_presented_authorization",
            "!=",
            EXPECTED_AUTHORIZATION_VARIABLE,
        ]
        # Nothing in the `if` but the 401 and its header: the safe use of `if`.
        assert {d["directive"] for d in check["block"]} == {"add_header", "return"}
        assert args_of(check["block"], "return") == ["401", UNAUTHORIZED_BODY]
        assert args_of(check["block"], "add_header") == ["WWW-Authenticate", "Bearer", "always"]
    # The 401's type: JSON even for a path with an extension nginx knows.
    assert args_of(server_of(parsed), "default_type") == ["application/json"]
    assert find(server_of(parsed), "types")[0]["block"] == []
    assert not find(locs[("=", "/health")], "if")
    assert not find(locs[("/",)], "if")


def test_unauthorized_body_is_an_openai_error():
    error = json.loads(UNAUTHORIZED_BODY)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert error["message"]


def test_the_key_file_defines_the_exact_authorization_value_and_the_main_config_has_no_key():
    key_file = render_api_key_map(KEY)
    (map_block,) = find(parse(key_file, check_ctx=False), "map")
    assert map_block["args"][1] == EXPECTED_AUTHORIZATION_VARIABLE
    assert map_block["block"] == [
        {"directive": "default", "line": 2, "args": [f"Bearer {KEY}"]},
    ]
    main = render_nginx_config(
        LoadBalancerSettings(), UPSTREAMS, NginxRuntime(api_key_map=CONTAINER_API_KEY_MAP)
    )
    assert KEY not in main
    assert "Bearer sk" not in main


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=40) | api_keys)
def test_any_key_is_either_refused_without_echo_or_stored_exactly(key):
    try:
        key_file = render_api_key_map(key)
    except ValueError as err:
        # One fixed message whatever the key: nothing of it is echoed.
        assert str(err) == f"api_key: {SAFE_TOKEN_RULE}"
        return
    (map_block,) = find(parse(key_file, check_ctx=False), "map")
    assert [d["args"] for d in map_block["block"]] == [[f"Bearer {key}"]]


@pytest.mark.parametrize("value", ["a b", 'a"b', "a'b", "a;b", "a}b", "$host", "a\nb", "a\\b"])
def test_unsafe_keys_are_refused_without_echoing_them(value):
    secret = f"sk-SECRET{value}SECRET"
    with pytest.raises(ValueError, match="api_key") as refused:
        render_api_key_map(secret)
    assert "SECRET" not in str(refused.value)


def test_an_empty_key_is_refused():
    """`Bearer ` alone must never be the expected value."""
    with pytest.raises(ValueError, match="api_key"):
        render_api_key_map("")


def test_a_secret_str_is_refused_not_rendered_as_asterisks():
    from pydantic import SecretStr

    with pytest.raises(ValueError, match="get_secret_value"):
        render_api_key_map(cast(str, SecretStr(KEY)))


def test_the_guide_config_refuses_tls_and_key_instead_of_ignoring_them():
    for runtime in (NginxRuntime(tls=TLS), NginxRuntime(api_key_map=CONTAINER_API_KEY_MAP)):
        with pytest.raises(ValueError, match="guide"):
            render_guide_config(UPSTREAMS, runtime)


# --- injection ---------------------------------------------------------------

NASTY = [
    "a\nb",
    "a;b",
    "a{b",
    "a}b",
    'a"b',
    "a'b",
    "a b",
    "a\tb",
    "$host",
    "a\\b",
    "a;\ninclude /etc/passwd;",
    "x } server { listen 81; }",
    "\ud800",  # a lone surrogate: no UTF-8 file can hold it
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_settings_reject_injection_in_host_path_and_header(value):
    with pytest.raises(ValidationError):
        Upstream(host=value, port=8000)
    if value:  # "/" + "" is the valid path "/"
        with pytest.raises(ValidationError):
            LoadBalancerSettings(expose_paths=("/" + value,))
    with pytest.raises(ValidationError):
        LoadBalancerSettings(affinity_header=value)
    with pytest.raises(ValidationError):
        LoadBalancerSettings(resolver=value)


# Any text but a backslash: crossplane quotes `'$http_\'` with the closing quote
# escaped, so a trailing one breaks the config. The loader refuses it in every key
# (NASTY's "a\\b" above), and only the loader checks now. Nor a lone surrogate
# (codec="utf-8" leaves them out): no UTF-8 file can hold one, and the loader refuses it too.
NO_BACKSLASH = st.characters(codec="utf-8", blacklist_characters="\\")


@settings(max_examples=200, deadline=None)
@given(
    host=st.text(NO_BACKSLASH, max_size=30),
    path=st.text(NO_BACKSLASH, max_size=30),
    header=st.text(NO_BACKSLASH, max_size=30),
)
def test_arbitrary_text_cannot_change_the_configs_structure(host, path, header):
    """The loader refuses such values; were one to get past it, crossplane quotes it."""
    lb = LoadBalancerSettings.model_construct(
        policy=RoutingPolicy.SESSION_AFFINITY, affinity_header=header, expose_paths=("/" + path,)
    )
    try:
        config = render_nginx_config(lb, [Upstream.model_construct(host=host, port=8000)])
    except ValueError:
        return
    parsed = parse(config)
    # Exactly the structure we asked for: one server line, one extra location.
    assert len(find(upstream_of(parsed), "server")) == 1
    public = [k for k, block in locations(parsed).items() if not find(block, "internal")]
    assert len(public) == 5


# --- prefix_affinity ------------------------------------------------------------


def test_prefix_affinity_hashes_the_prompt_key_with_a_bound_and_a_least_conn_fallback():
    lb = LoadBalancerSettings(policy="prefix_affinity", prefix_chars=512, prefix_max_conns=7)
    parsed = parse(render_nginx_config(lb, UPSTREAMS))
    assert parsed[0]["directive"] == "load_module"
    assert parsed[0]["args"] == [NJS_MODULE_PATH]
    primary = upstream_of(parsed)
    assert args_of(primary, "hash") == ["$lb_prefix_key", "consistent"]
    assert [s["args"] for s in find(primary, "server")] == [
        ["127.0.0.1:8001", "max_conns=7", "max_fails=3", "fail_timeout=10s"],
        ["127.0.0.2:8002", "max_conns=7", "max_fails=3", "fail_timeout=10s"],
    ]
    fallback = upstream_of(parsed, FALLBACK_UPSTREAM_NAME)
    assert find(fallback, "least_conn")
    assert args_of(fallback, "zone")[0] == FALLBACK_UPSTREAM_NAME
    assert all("max_conns" not in " ".join(s["args"]) for s in find(fallback, "server"))
    http = http_of(parsed)
    assert [d["args"] for d in find(http, "js_import")] == [
        ["lb_prefix", "from", CONTAINER_PREFIX_SCRIPT],
        ["lb_health", "from", "/etc/nginx/lb/health.js"],
    ]
    assert [d["args"] for d in find(http, "js_var")] == [
        ["$lb_prefix_key"],
        ["$lb_prefix_chars", "512"],
    ]
    locs = locations(parsed)
    assert args_of(locs[("/v1/",)], "js_content") == ["lb_prefix.route"]
    assert not find(locs[("/v1/",)], "proxy_pass")
    assert args_of(locs[("@lb_prefix",)], "proxy_pass") == [f"http://{UPSTREAM_NAME}"]
    assert find(locs[("@lb_prefix",)], "error_page")[0]["args"] == ["502", "=", "@lb_fallback"]
    # Its own error_page cancels the server's: the other JSON ones are repeated.
    assert len(find(locs[("@lb_prefix",)], "error_page")) == len(
        find(server_of(parsed), "error_page")
    )
    assert args_of(locs[("@lb_fallback",)], "proxy_pass") == [f"http://{FALLBACK_UPSTREAM_NAME}"]
    # The script names the same locations and variables the config defines.
    script = prefix_script()
    for name in ("'@lb_prefix'", "'@lb_fallback'", "lb_prefix_key", "lb_prefix_chars"):
        assert name in script


def test_prefix_affinity_checks_the_key_before_the_router_and_serves_exposed_paths_least_conn():
    lb = LoadBalancerSettings(policy="prefix_affinity", expose_paths=("/metrics",))
    runtime = NginxRuntime(api_key_map=CONTAINER_API_KEY_MAP)
    locs = locations(parse(render_nginx_config(lb, UPSTREAMS, runtime)))
    names = [d["directive"] for d in locs[("/v1/",)]]
    assert names.index("if") < names.index("js_content")
    assert find(locs[("=", "/metrics")], "if")
    assert args_of(locs[("=", "/metrics")], "proxy_pass") == [f"http://{FALLBACK_UPSTREAM_NAME}"]


@pytest.mark.parametrize(
    "policy", [p for p in RoutingPolicy if p is not RoutingPolicy.PREFIX_AFFINITY]
)
def test_other_policies_load_njs_for_health_only(policy):
    """/health is njs (components/lb/health.py); nothing else of njs is used."""
    lb = LoadBalancerSettings(policy=policy)
    config = parse(render_nginx_config(lb, UPSTREAMS))
    assert [d["args"] for d in walk(config) if d["directive"] == "js_import"] == [
        ["lb_health", "from", "/etc/nginx/lb/health.js"]
    ]
    assert not {d["directive"] for d in walk(config)} & {"js_var"}
    assert list(render_extra_files(lb)) == ["/etc/nginx/lb/health.js", "/etc/nginx/lb/models.js"]


def test_extra_files_follow_the_runtime():
    lb = LoadBalancerSettings(policy="prefix_affinity")
    assert render_extra_files(lb)[CONTAINER_PREFIX_SCRIPT] == prefix_script()
    runtime = NginxRuntime(prefix_script="/srv/lb.js", njs_module="/opt/njs.so")
    assert list(render_extra_files(lb, runtime)) == [
        "/srv/health.js",
        "/srv/models.js",
        "/srv/lb.js",
    ]
    config = render_nginx_config(lb, UPSTREAMS, runtime)
    assert "load_module /opt/njs.so;" in config
    assert "js_import lb_prefix from /srv/lb.js;" in config


def test_the_official_image_and_debian_put_njs_in_the_same_place(nginx_binary, sandbox):
    """Debian's libnginx-mod-http-js is what the tests load; nginx.org's package
    (the official image, --modules-path=/usr/lib/nginx/modules) ships the same file name."""
    require_njs()
    lb = LoadBalancerSettings(policy="prefix_affinity", dynamic_resolve=False)
    runtime = loopback_runtime(sandbox, 18080)
    write_extra_files(lb, runtime)
    result = check_config(nginx_binary, render_nginx_config(lb, UPSTREAMS, runtime), sandbox)
    assert result.returncode == 0, result.stderr


def test_prompts_stay_in_memory_on_their_way_upstream():
    """A body over client_body_buffer_size is written to a temp file first (about 45 ms
    more time to first token for a 14 kB chat prompt): the buffer holds long prompts."""
    parsed = parse(render_nginx_config(LoadBalancerSettings(), UPSTREAMS))
    http = find(parsed, "http")[0]["block"]
    assert args_of(http, "client_body_buffer_size") == ["1m"]


# --- model routing (pools) ------------------------------------------------------


def make_pools(count: int, policies: list[RoutingPolicy]) -> list[ModelPool]:
    return [
        ModelPool(
            name=f"pool-{index}",
            served_name=f"org/model-{index}",
            model=f"org/Model-{index}-Instruct",
            upstreams=(
                Upstream(host=f"127.0.1.{index}", port=8000),
                Upstream(host=f"127.0.2.{index}", port=8001),
            ),
            policy=policies[index % len(policies)],
            adapters=(f"lora-{index}",) if index % 2 == 0 else (),
        )
        for index in range(count)
    ]


def every_replica(pools: list[ModelPool]) -> list[Upstream]:
    return [upstream for pool in pools for upstream in pool.upstreams]


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("api_key", [None, "sk-pools"], ids=["open", "key"])
def test_model_routing_configs_pass_nginx_t(nginx_binary, sandbox, pki, count, tls, api_key):
    require_njs()
    pools = make_pools(count, list(RoutingPolicy)[count - 1 :] + list(RoutingPolicy))
    lb = LoadBalancerSettings(dynamic_resolve=False, expose_paths=("/metrics",))
    key_map = None if api_key is None else write_api_key_map(sandbox, api_key)
    runtime = loopback_runtime(sandbox, 18080, tls=pki.server if tls else None, api_key_map=key_map)
    config = render_nginx_config(lb, every_replica(pools), runtime, pools)
    write_extra_files(lb, runtime, pools)
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, f"{result.stderr}\n{config}"
    upstream_names = [u["args"][0] for u in find(http_of(parse(config)), "upstream")]
    assert upstream_names[0] == UPSTREAM_NAME
    for pool in pools:
        assert f"pool_{pool.name}" in upstream_names


@pytest.mark.parametrize("policy", list(RoutingPolicy))
def test_each_policy_in_a_pool_passes_nginx_t_with_the_container_paths(
    nginx_binary, sandbox, policy
):
    """Every policy in the first pool beside a prefix_affinity pool, with the
    container's paths for the njs files moved into the sandbox together (the
    router imports its neighbours by relative path)."""
    require_njs()
    pools = make_pools(2, [policy, RoutingPolicy.PREFIX_AFFINITY])
    lb = LoadBalancerSettings(dynamic_resolve=False)
    config = render_nginx_config(
        lb,
        every_replica(pools),
        NginxRuntime(metrics_syslog="127.0.0.1:5514"),
        pools,
    )
    files = render_extra_files(lb, NginxRuntime(), pools)
    container_dir = CONTAINER_PREFIX_SCRIPT.rsplit("/", 1)[0]
    assert sorted(files) == [
        f"{container_dir}/{n}" for n in ("health.js", "models.js", "prefix.js", "router.js")
    ]
    local_dir = sandbox / f"container-lb-{policy}"
    local_dir.mkdir(exist_ok=True)
    for path, text in files.items():
        (local_dir / path.rsplit("/", 1)[1]).write_text(text)
    local_dir.chmod(0o755)
    config = config.replace(container_dir + "/", f"{local_dir}/")
    result = check_config(nginx_binary, config, sandbox)
    assert result.returncode == 0, f"{result.stderr}\n{config}"
    (pool_upstream,) = [
        u["block"] for u in find(http_of(parse(config)), "upstream") if u["args"] == ["pool_pool-0"]
    ]
    expected = {
        RoutingPolicy.LEAST_CONN: [["least_conn"]],
        RoutingPolicy.ROUND_ROBIN: [],
        RoutingPolicy.POWER_OF_TWO: [["random", "two", "least_conn"]],
        RoutingPolicy.SESSION_AFFINITY: [["hash", "$lb_affinity_key", "consistent"]],
        RoutingPolicy.PREFIX_AFFINITY: [["hash", "$lb_prefix_key", "consistent"]],
    }[policy]
    balancing = [
        [u["directive"], *u["args"]]
        for u in pool_upstream
        if u["directive"] in {"least_conn", "random", "hash"}
    ]
    assert balancing == expected
    # The metrics log names the pool the router chose.
    assert '"pool":"$lb_pool"' in config


def test_a_prefix_pool_gets_its_fallback_and_the_router_runs_after_the_key_check():
    pools = make_pools(2, [RoutingPolicy.PREFIX_AFFINITY, RoutingPolicy.LEAST_CONN])
    parsed = parse(
        render_nginx_config(
            LoadBalancerSettings(max_body_size_mb=40),
            every_replica(pools),
            NginxRuntime(api_key_map=CONTAINER_API_KEY_MAP),
            pools,
        )
    )
    names = [u["args"][0] for u in find(http_of(parsed), "upstream")]
    assert names == [UPSTREAM_NAME, "pool_pool-0", "pool_pool-0_fallback", "pool_pool-1"]
    where = locations(parsed)
    api = where[("/v1/",)]
    names = [d["directive"] for d in api]
    assert names[0] == "if" and api[0]["args"][0] == "$lb_presented_authorization"  # key first
    assert names[-2:] == ["client_body_buffer_size", "js_content"]
    # A body announced at 1,000,000 bytes or more goes to the router in the
    # location that keeps its temp file (readable by njs 0.7.9 too).
    assert api[1]["args"] == ["$lb_body_to_file"]
    file_route = where[("@lb_router_file",)]
    assert args_of(file_route, "client_body_in_file_only") == ["clean"]
    assert args_of(file_route, "js_content") == ["lb_router.route"]
    assert args_of(api, "client_body_buffer_size") == [
        "1m"
    ]  # a larger body goes to a temp file the router reads
    assert args_of(api, "js_content") == ["lb_router.route"]
    assert args_of(where[("=", "/v1/models")], "js_content") == ["lb_router.models"]
    assert find(where[("=", "/v1/models")], "if")  # the key guard
    assert find(where[("@pool_pool-0",)], "error_page")[0]["args"] == [
        "502",
        "=",
        "@pool_pool-0_fallback",
    ]
    assert args_of(where[("@pool_pool-0_fallback",)], "proxy_pass") == [
        "http://pool_pool-0_fallback"
    ]
    assert args_of(where[("@pool_pool-1",)], "proxy_pass") == ["http://pool_pool-1"]
    assert not find(where[("@pool_pool-1",)], "error_page")


def test_the_routing_table_is_the_same_text_for_the_same_pools():
    pools = make_pools(3, list(RoutingPolicy))
    first = render_extra_files(LoadBalancerSettings(), NginxRuntime(), pools)
    again = render_extra_files(
        LoadBalancerSettings(), NginxRuntime(), make_pools(3, list(RoutingPolicy))
    )
    assert first == again
    table = first[CONTAINER_PREFIX_SCRIPT.rsplit("/", 1)[0] + "/models.js"]
    data = json.loads(table.split("export default ", 1)[1].rstrip().rstrip(";"))
    assert data["names"] == {
        "org/model-0": "pool-0",
        "lora-0": "pool-0",
        "org/model-1": "pool-1",
        "org/model-2": "pool-2",
        "lora-2": "pool-2",
    }
    assert data["aliases"] == "org/model-0, org/model-1, org/model-2"
    assert [c["id"] for c in data["cards"]] == [
        "org/model-0",
        "lora-0",
        "org/model-1",
        "org/model-2",
        "lora-2",
    ]
