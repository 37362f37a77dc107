"""Stack config in, `Settings` or one `ConfigError` listing every problem out.

Both doors go through `load_config`: `pulumi up` (flat strings and the secret keys)
and the command-line tools (the stack file read as the CLI reads it, encrypted
values as stand-ins, so a rule comparing one is returned as unverified). Only this
module runs the cross-key rules. pydantic's own text echoes values, which could be
tokens, so the messages are written here: the key as written and the rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.config.problems import (
    NAMESPACE,
    SECRET_KEYS,
    ConfigError,
    Problem,
    in_plain_text,
    validation_problems,
)
from components.config.rule import Rule
from components.config.rules import cross_key_rules, disk_rules, remote_engine_rules
from components.config.settings import Settings


def _decode(value: Any) -> Any:
    """Pulumi passes objects and lists as JSON text; scalars stay strings."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"is not valid JSON/YAML structure ({err.msg})") from None
    return value


def _validate_by_alias(data: Mapping[str, Any]) -> Settings:
    # By alias only: a snake_case spelling in a stack file is an unknown key.
    return Settings.model_validate(data, by_alias=True, by_name=False)


@dataclass(frozen=True)
class LoadedConfig:
    """The loader's verdict: settings when every rule holds, else every problem."""

    settings: Settings | None
    problems: tuple[Problem, ...]
    unverified: tuple[Problem, ...] = ()
    """Rules that compare a sealed secret's value: not run on its stand-in (the
    rule text says what could not be verified); never a reason to fail."""


def _unverified(rule: Rule, namespace: str, sealed: Set[str]) -> Problem:
    """The note for a rule not run on stand-ins, saying which of its keys are encrypted."""
    others = " and ".join(f"'{key}'" for key in sorted((rule.involves & sealed) - {rule.key}))
    if rule.key not in sealed:
        why = f"is compared with the encrypted (secure:) {others}"
    elif others:
        why = f"is encrypted (secure:), as is {others}"
    else:
        why = "is encrypted (secure:)"
    them = "them" if rule.key in sealed and others else "it"
    return Problem(
        f"{namespace}:{rule.key}",
        f"{why}, so {rule.secret_check} cannot be verified offline; "
        f"`pulumi up` decrypts {them} and checks",
    )


def _cross_key_problems(
    data: Mapping[str, Any], invalid: Set[str], namespace: str, sealed: Set[str]
) -> tuple[list[Problem], list[Problem]]:
    """The rules between keys, checked on every key that is valid by itself.

    Invalid keys fall back to their defaults here, and a rule involving one is left
    out (it would speak of the default). A rule comparing a sealed value is returned
    apart, as unverified: its stand-in is throwaway, so the verdict means nothing.
    """
    rest = {k: v for k, v in data.items() if k not in invalid}
    try:
        settings = _validate_by_alias(rest)
    except ValidationError:
        return [], []
    problems: list[Problem] = []
    unverified: list[Problem] = []
    for rule in cross_key_rules(settings):
        if rule.involves & invalid:
            continue
        if rule.secret_check and rule.involves & sealed:
            unverified.append(_unverified(rule, namespace, sealed))
        else:
            problems.append(Problem(f"{namespace}:{rule.key}", rule.rule))
    return problems, unverified


def _validate(
    raw: Mapping[str, Any], namespace: str, sealed: Set[str] = frozenset()
) -> LoadedConfig:
    problems: list[Problem] = []
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = _decode(value)
        except ValueError as err:
            problems.append(Problem(f"{namespace}:{key}", str(err)))
    invalid = set(raw) - set(decoded)
    settings: Settings | None = None
    try:
        settings = _validate_by_alias(decoded)
    except ValidationError as err:
        invalid |= {str(e["loc"][0]) for e in err.errors() if e["loc"]}
        problems += validation_problems(err, namespace)
    cross_key, unverified = _cross_key_problems(decoded, invalid, namespace, sealed)
    problems += cross_key
    return LoadedConfig(settings if not problems else None, tuple(problems), tuple(unverified))


def deployment_problems(
    settings: Settings,
    *,
    docker_host: str | None,
    project_dir: Path,
    namespace: str = NAMESPACE,
) -> list[Problem]:
    """What only holds for one deployment: the engine it targets, the files it builds."""
    rules = [*remote_engine_rules(settings, docker_host), *disk_rules(settings, project_dir)]
    return [Problem(f"{namespace}:{rule.key}", rule.rule) for rule in rules]


def _plain_secrets(raw: Mapping[str, Any], secret: Set[str], namespace: str) -> list[Problem]:
    """A token typed in plain text would sit unencrypted in the stack file."""
    how = {"apiKeys": "--path 'apiKeys.<name>.key' <key>"}
    return [
        in_plain_text(f"{namespace}:{key}", how.get(key, key + " ..."))
        for key in SECRET_KEYS
        if key in raw and key not in secret
    ]


def _plain_host_keys(raw: Mapping[str, Any], secret: Set[str], namespace: str) -> list[Problem]:
    """A host's TLS key in plain text: Pulumi marks 'hosts' secret when any leaf is."""
    if "hosts" not in raw or "hosts" in secret:
        return []
    try:
        hosts = _decode(raw["hosts"])
    except ValueError:
        return []
    if not isinstance(hosts, list):
        return []
    keys = [
        f"hosts[{i}].tls.keyMaterial"
        for i, host in enumerate(hosts)
        if isinstance(host, dict)
        and isinstance(host.get("tls"), dict)
        and host["tls"].get("keyMaterial") is not None
    ]
    return [in_plain_text(f"{namespace}:{k}", f"--path '{k}' ...") for k in keys]


def load_config(
    raw: Mapping[str, Any],
    secret: Set[str],
    namespace: str = NAMESPACE,
    *,
    sealed: Set[str] = frozenset(),
) -> LoadedConfig:
    """The one loader: {key without namespace: value as Pulumi passes it} + secret keys.

    Finds every problem at once: secrets given in plain text, values that are
    not valid JSON structures, and every settings rule. `sealed` names the keys
    whose values are stand-ins for encrypted ones (a check without the CLI);
    `pulumi up` has the values and seals nothing, so it runs every rule.
    """
    problems = _plain_secrets(raw, secret, namespace) + _plain_host_keys(raw, secret, namespace)
    loaded = _validate(raw, namespace, sealed)
    problems += loaded.problems
    return LoadedConfig(
        loaded.settings if not problems else None, tuple(problems), loaded.unverified
    )


def settings_from_config(
    raw: Mapping[str, Any], secret: Set[str], namespace: str = NAMESPACE
) -> Settings:
    """`load_config` with real values; raises `ConfigError` naming every problem."""
    loaded = load_config(raw, secret, namespace)
    if loaded.problems or loaded.settings is None:
        raise ConfigError(loaded.problems)
    return loaded.settings


def parse_settings(raw: Mapping[str, Any], namespace: str = NAMESPACE) -> Settings:
    """Validate config given as {key without namespace: value}, secrecy not checked."""
    loaded = _validate(raw, namespace)
    if loaded.problems or loaded.settings is None:
        raise ConfigError(loaded.problems)
    return loaded.settings


def split_namespace(config: Mapping[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    prefix = f"{namespace}:"
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def require_secret(raw: Mapping[str, Any], secret: Set[str], namespace: str = NAMESPACE) -> None:
    problems = _plain_secrets(raw, secret, namespace)
    if problems:
        raise ConfigError(problems)
