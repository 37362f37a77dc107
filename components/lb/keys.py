"""Named API keys in nginx: who sent a request, what it may use, how much, and its usage.

nginx never holds a named key: njs hashes the presented key (SHA-256) and the
secret key file maps digests to names. Limits are nginx's own `limit_req` and
`limit_conn`, one zone per distinct limit keyed by the name (a zone's rate is
fixed). Models and `max_tokens` are checked by the router, usage read from the
responses by a body filter: docs/api-keys.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import crossplane

from components.config.values import SAFE_TOKEN_RULE, safe_token
from components.containers import CONTAINERS_DIR
from components.lb.directives import d
from components.lb.names import (
    EXPECTED_AUTHORIZATION_VARIABLE,
    UNAUTHORIZED_BODY,
    Directive,
)

KEYS_SCRIPT = "keys.js"
KEYS_MODULE = "lb_keys"
DIGEST_VARIABLE = "$lb_key_digest"
NAME_VARIABLE = "$lb_key_name"
SEEN_VARIABLE = "$lb_key_seen"
RPM_VARIABLE = "$lb_key_rpm"
CONCURRENCY_VARIABLE = "$lb_key_concurrency"
RETRY_VARIABLE = "$lb_key_retry_after"
MODEL_VARIABLE = "$lb_model"
PROMPT_TOKENS_VARIABLE = "$lb_prompt_tokens"
COMPLETION_TOKENS_VARIABLE = "$lb_completion_tokens"
ZONE_SIZE = "1m"
"""Per zone: nginx documents 8,000 to 16,000 states per megabyte for limit_req
(by key length), twice that for limit_conn. The same size on every render, so a
reload keeps the zones' counts."""
CONCURRENCY_RETRY_SECONDS = 1
"""When a slot frees is not known; a second is what a short request takes."""


@dataclass(frozen=True)
class KeyPolicy:
    """One named key as the balancer sees it: its name and limits, never its key."""

    name: str
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    concurrent_requests: int | None = None
    max_tokens: int | None = None


def keys_script() -> str:
    """The text of `keys.js` (the digest and the usage filter), as it reaches nginx."""
    return (CONTAINERS_DIR / "nginx" / KEYS_SCRIPT).read_text(encoding="utf-8")


def retry_after(policy: KeyPolicy) -> int:
    """Seconds until a key over its rate has a request again (one is refilled every 60/rpm s)."""
    if policy.requests_per_minute is None:
        return CONCURRENCY_RETRY_SECONDS
    return max(1, math.ceil(60 / policy.requests_per_minute))


def _by_name(target: str, values: Mapping[str, str]) -> Directive:
    """`map` from the key's name. The source gets a prefix so no name can be one of
    map's own words (`default`, `include`...); names are unique ignoring case, which is
    how a map compares strings."""
    entries = [d("default", "")] + [d(f"k:{name}", value) for name, value in values.items()]
    return d("map", f"k:{NAME_VARIABLE}", target, block=entries)


def rpm_zone(rpm: int) -> str:
    return f"lb_key_rpm_{rpm}"


def concurrency_zone(limit: int) -> str:
    return f"lb_key_conn_{limit}"


def keys_http(
    policies: Sequence[KeyPolicy], script_directory: str, key_file: str
) -> list[Directive]:
    """The digest, the secret key file's maps, the limit zones and the 429's values.

    A zone per distinct limit, named by it: nginx keeps a zone's state over a
    reload only while its name, size and key stay the same.
    """
    rates = sorted({p.requests_per_minute for p in policies if p.requests_per_minute})
    slots = sorted({p.concurrent_requests for p in policies if p.concurrent_requests})
    out = [
        d("js_import", KEYS_MODULE, "from", posixpath.join(script_directory, KEYS_SCRIPT)),
        d("js_set", DIGEST_VARIABLE, f"{KEYS_MODULE}.digest"),
        d("js_var", MODEL_VARIABLE),
        d("js_var", PROMPT_TOKENS_VARIABLE),
        d("js_var", COMPLETION_TOKENS_VARIABLE),
        d("include", key_file),
        # OPTIONS (CORS preflights) needs no key, as without named keys.
        d(
            "map",
            "$request_method",
            SEEN_VARIABLE,
            block=[d("default", NAME_VARIABLE), d("OPTIONS", "-")],
        ),
    ]
    for rpm in rates:
        variable = f"${rpm_zone(rpm)}"
        names = {p.name: NAME_VARIABLE for p in policies if p.requests_per_minute == rpm}
        out.append(_by_name(variable, names))
        out.append(
            d("limit_req_zone", variable, f"zone={rpm_zone(rpm)}:{ZONE_SIZE}", f"rate={rpm}r/m")
        )
    for limit in slots:
        variable = f"${concurrency_zone(limit)}"
        names = {p.name: NAME_VARIABLE for p in policies if p.concurrent_requests == limit}
        out.append(_by_name(variable, names))
        out.append(d("limit_conn_zone", variable, f"zone={concurrency_zone(limit)}:{ZONE_SIZE}"))
    out.append(
        _by_name(
            RPM_VARIABLE,
            {p.name: str(p.requests_per_minute) for p in policies if p.requests_per_minute},
        )
    )
    out.append(
        _by_name(
            CONCURRENCY_VARIABLE,
            {p.name: str(p.concurrent_requests) for p in policies if p.concurrent_requests},
        )
    )
    out.append(_by_name(RETRY_VARIABLE, {p.name: str(retry_after(p)) for p in policies}))
    return out


def map_hash_sizes(policies: Sequence[KeyPolicy]) -> list[Directive]:
    """Before the first `map` (nginx refuses them later): a digest is 64 characters,
    over the default bucket (a cache line), and a thousand keys over the default size."""
    return [
        d("map_hash_bucket_size", "128"),
        d("map_hash_max_size", str(max(2048, 4 * (len(policies) + 1)))),
    ]


def keys_server(policies: Sequence[KeyPolicy]) -> list[Directive]:
    """Server level, so every location the key reaches is limited; an internal
    redirect (the router's, an error page) is not counted again. The replicas get
    the operator's key, never a named one."""
    if not policies:
        return []
    rates = sorted({p.requests_per_minute for p in policies if p.requests_per_minute})
    slots = sorted({p.concurrent_requests for p in policies if p.concurrent_requests})
    out = [d("proxy_set_header", "Authorization", EXPECTED_AUTHORIZATION_VARIABLE)]
    for rpm in rates:
        # A burst of a minute's requests, then one every 60/rpm s: per minute, as said.
        burst = ["burst=" + str(rpm - 1), "nodelay"] if rpm > 1 else []
        out.append(d("limit_req", f"zone={rpm_zone(rpm)}", *burst))
    for limit in slots:
        out.append(d("limit_conn", concurrency_zone(limit), str(limit)))
    if rates:
        out += [d("limit_req_status", "429"), d("limit_req_log_level", "notice")]
    if slots:
        out += [d("limit_conn_status", "429"), d("limit_conn_log_level", "notice")]
    return out


def keys_guard() -> list[Directive]:
    """401 in the rewrite phase unless the presented key's digest names a key."""
    return [
        d(
            "if",
            SEEN_VARIABLE,
            "=",
            "",
            block=[
                d("add_header", "WWW-Authenticate", "Bearer", "always"),
                d("return", "401", UNAUTHORIZED_BODY),
            ],
        )
    ]


def usage_filter() -> list[Directive]:
    """Where a replica answers: read the `usage` it reports into the metrics log."""
    return [d("js_body_filter", f"{KEYS_MODULE}.usage", "buffer_type=buffer")]


def _limit_body(message: str) -> str:
    return json.dumps(
        {"error": {"message": message, "type": "RateLimitError", "param": None, "code": 429}}
    )


RATE_MESSAGE = (
    f"Rate limit reached for API key '{NAME_VARIABLE}': {RPM_VARIABLE} requests per minute "
    f"at this load balancer. Retry after {RETRY_VARIABLE} s."
)
CONCURRENCY_MESSAGE = (
    f"Too many concurrent requests for API key '{NAME_VARIABLE}': at most "
    f"{CONCURRENCY_VARIABLE} at once at this load balancer. Retry when one has finished."
)


def too_many_location(location: str) -> Directive:
    """The 429 of either limit, as an OpenAI error, with the key's `Retry-After`."""
    return d(
        "location",
        "=",
        location,
        block=[
            d("internal"),
            d("types", block=[]),
            d("default_type", "application/json"),
            d("add_header", "Retry-After", RETRY_VARIABLE, "always"),
            d(
                "if",
                "$limit_req_status",
                "=",
                "REJECTED",
                block=[d("return", "429", _limit_body(RATE_MESSAGE))],
            ),
            d("return", "429", _limit_body(CONCURRENCY_MESSAGE)),
        ],
    )


def key_table(policies: Sequence[KeyPolicy], served: Sequence[str]) -> dict[str, object]:
    """What router.js needs per key that has a model list or a `max_tokens` cap."""
    table: dict[str, object] = {}
    for policy in policies:
        if policy.models is None and policy.max_tokens is None:
            continue
        allowed = None if policy.models is None else {name: True for name in policy.models}
        own_served = [name for name in served if allowed is None or name in allowed]
        table[policy.name] = {
            "models": allowed,
            "aliases": ", ".join(own_served),
            "maxTokens": policy.max_tokens,
        }
    return table


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def render_key_file(operator_key: str, keys: Mapping[str, str]) -> str:
    """The secret key file with named keys: digest -> name, and the operator's key.

    The operator's key (`apiKey`) is in it as itself, because nginx sends it to
    the replicas; every key, the operator's too, is recognised by its digest.
    Errors never repeat a key.
    """
    entries = {digest(operator_key): "apiKey"}
    for name, key in keys.items():
        if not isinstance(key, str):
            raise ValueError(f"api_keys.{name}: must be a str")
        try:
            safe_token(key)
        except ValueError:
            raise ValueError(f"api_keys.{name}: {SAFE_TOKEN_RULE}") from None
        entries[digest(key)] = name
    try:
        safe_token(operator_key)
    except ValueError:
        raise ValueError(f"api_key: {SAFE_TOKEN_RULE}") from None
    config = [
        d(
            "map",
            DIGEST_VARIABLE,
            NAME_VARIABLE,
            block=[d("default", ""), *[d(h, name) for h, name in entries.items()]],
        ),
        d(
            "map",
            "$http_authorization",
            EXPECTED_AUTHORIZATION_VARIABLE,
            block=[d("default", f"Bearer {operator_key}")],
        ),
    ]
    return str(crossplane.build(config)) + "\n"
