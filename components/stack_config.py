"""Stack config in, `Settings` or one readable `ConfigError` out.

Pulumi hands config over as flat strings (objects and lists as JSON), and
pydantic's own error text echoes the offending value, which could be a token.
This module decodes the values, validates them in one go, and writes its own
message: every problem on one line that names the full key and the rule, never
the value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .settings import Settings

NAMESPACE = "vllm-nginx"
SECRET_KEYS = ("hfToken", "apiKey")


class ConfigError(ValueError):
    """Bad stack config; raised before any resource is declared."""


def _key_path(namespace: str, loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-after", "function-", "tagged-union")):
            continue
        else:
            path += f".{part}" if path else part
    return f"{namespace}:{path}" if path else namespace


def _rule(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (a typo?); see the config reference in README.md"
    if error["type"] == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def format_validation_error(err: ValidationError, namespace: str = NAMESPACE) -> str:
    lines = [
        f"config key '{_key_path(namespace, e['loc'])}': {_rule(e)}"
        for e in err.errors(include_input=False, include_url=False)
    ]
    return "invalid stack config:\n  " + "\n  ".join(lines)


def _decode(key: str, value: Any, namespace: str) -> Any:
    """Pulumi passes objects and lists as JSON text; scalars stay strings."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"invalid stack config:\n  config key '{namespace}:{key}': "
                f"is not valid JSON/YAML structure ({err.msg})"
            ) from None
    return value


def parse_settings(raw: Mapping[str, Any], namespace: str = NAMESPACE) -> Settings:
    """Validate config given as {key without namespace: value}."""
    decoded = {key: _decode(key, value, namespace) for key, value in raw.items()}
    try:
        return Settings.model_validate(decoded)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, namespace)) from None


def split_namespace(config: Mapping[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    prefix = f"{namespace}:"
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def require_secret(raw: Mapping[str, Any], secret: set[str], namespace: str = NAMESPACE) -> None:
    """A token typed in plain text would sit unencrypted in the stack file."""
    plain = [key for key in SECRET_KEYS if key in raw and key not in secret]
    if plain:
        lines = [
            f"config key '{namespace}:{key}': must be set with "
            f"`pulumi config set --secret {key} ...` (it is stored in plain text)"
            for key in plain
        ]
        raise ConfigError("invalid stack config:\n  " + "\n  ".join(lines))


def settings_from_stack_file(path: Path, namespace: str = NAMESPACE) -> Settings:
    """Read `Pulumi.<stack>.yaml` without the Pulumi CLI (for review and tests).

    Encrypted values cannot be read without the CLI, so secrets are left out:
    what this returns is right for everything but the secret values.
    """
    document = yaml.safe_load(path.read_text()) or {}
    config = document.get("config") or {}
    raw = {
        key: (json.dumps(value) if isinstance(value, dict | list) else value)
        for key, value in split_namespace(config, namespace).items()
        if not (isinstance(value, dict) and "secure" in value)
    }
    return parse_settings(raw, namespace)
