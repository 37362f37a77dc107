"""Named API keys ('apiKeys'): one entry per team or user, its key and its limits.

A key's name labels its metrics and names it in the balancer's config, so it is a
short label; the key itself is a secret and is only ever handled as such. The
rules between entries and the rest of the stack (which models exist, the
operator's 'apiKey') are `api_key_rules`, run by the loader (docs/api-keys.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from components.config.rule import Rule, rule
from components.config.sections import ConfigModel
from components.config.values import Int, SafeSecret, ServedName, matching

if TYPE_CHECKING:
    from components.config.settings import Settings

OPERATOR_KEY_NAME = "apiKey"
"""The name the single 'apiKey' carries among the named keys (labels, logs)."""
MAX_REQUESTS_PER_MINUTE = 6_000_000
MAX_CONCURRENT_REQUESTS = 1_000_000

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
key_name = matching(
    _KEY_NAME,
    "is not a valid key name: 1-64 letters, digits, '_', '.' or '-', starting with a "
    "letter or digit (it labels the key's metrics)",
)
KeyName = Annotated[str, AfterValidator(key_name)]


class ApiKeySettings(ConfigModel):
    """One named key; written as the key alone (a string) or as this object."""

    key: SafeSecret = Field(
        description=(
            "the key clients send as `Authorization: Bearer <key>`, **secret** (`pulumi config "
            "set --secret --path 'apiKeys.<name>.key' <key>`; `apiKeys.<name>` alone may be "
            "the key); the balancer keeps only its SHA-256"
        )
    )
    models: tuple[ServedName, ...] | None = Field(
        None,
        description=(
            "the model names (served names, adapter names) this key may use; others get "
            "404 as an unknown model and `GET /v1/models` lists only these (needs `models`)"
        ),
    )
    requests_per_minute: Annotated[Int, Field(ge=1, le=MAX_REQUESTS_PER_MINUTE)] | None = Field(
        None,
        description=(
            "requests per minute this key may send to this balancer; more: 429 with "
            "`Retry-After` (a burst of this many, refilled evenly over the minute)"
        ),
    )
    concurrent_requests: Annotated[Int, Field(ge=1, le=MAX_CONCURRENT_REQUESTS)] | None = Field(
        None,
        description="requests of this key in flight at once at this balancer; more: 429",
    )
    max_tokens: Annotated[Int, Field(ge=1)] | None = Field(
        None,
        description=(
            "the largest `max_tokens` a generation of this key may ask for; a larger or "
            "missing one: 400 (needs `models`)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _key_alone(cls, value: Any) -> Any:
        return {"key": value} if isinstance(value, str) else value


ApiKeys = dict[KeyName, ApiKeySettings]


def served_names(settings: Settings) -> tuple[str, ...]:
    """Every name a client may send as `model`: served names, then adapters."""
    names: list[str] = []
    for pool in settings.pools():
        names.append(pool.served_name)
        names.extend(adapter.name for adapter in pool.adapters)
    return tuple(names)


def api_key_rules(settings: Settings) -> Iterator[Rule]:
    """The entries against each other and against the stack, each on its key."""
    keys = settings.api_keys
    if not keys:
        return
    if settings.api_key is None:
        yield rule(
            "apiKeys",
            "needs 'apiKey' too: the operator's key, which the replicas, the verify step and "
            "Prometheus use (`pulumi config set --secret apiKey <key>`)",
            "apiKey",
        )
    seen: dict[str, str] = {OPERATOR_KEY_NAME.lower(): "apiKey"}
    values: dict[str, str] = {}
    if settings.api_key is not None:
        values[settings.api_key.get_secret_value()] = "apiKey"
    served = served_names(settings)
    for name, entry in keys.items():
        where = f"apiKeys.{name}"
        other = seen.get(name.lower())
        if other is not None:
            yield rule(
                where,
                f"has the name of '{other}' (names are compared ignoring case: they label "
                "metrics and the balancer's limits)",
                "apiKey",
            )
        seen.setdefault(name.lower(), where)
        secret = entry.key.get_secret_value()
        if secret in values:
            yield rule(
                f"{where}.key",
                f"is the same key as '{values[secret]}': each key must be its own, so the "
                "balancer knows whose request it is",
                "apiKey",
                secret_check="whether it is a key no other entry has",
            )
        values.setdefault(secret, where)
        if settings.models is None:
            for field, key in (("models", "models"), ("max_tokens", "maxTokens")):
                if getattr(entry, field) is not None:
                    yield rule(
                        f"{where}.{key}",
                        "needs model pools ('models'): the balancer reads a request's model "
                        "and max_tokens only where it routes by model",
                        "models",
                    )
            continue
        for index, model in enumerate(entry.models or ()):
            if model not in served:
                yield rule(
                    f"{where}.models[{index}]",
                    f"'{model}' is not a name this stack serves; served names and adapters: "
                    f"{', '.join(served)}",
                    "models",
                )
