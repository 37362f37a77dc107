"""Named API keys ('apiKeys'): one entry per team or user, its key and its limits.

A key's name labels its metrics and names it in the balancer's config, so it is a
short label; the key itself is a secret and is only ever handled as such. The
rules between entries and the rest of the stack: `api_key_rules` (docs/api-keys.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from components.config.sections import ConfigModel
from components.config.values import Int, SafeSecret, ServedName, matching

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
