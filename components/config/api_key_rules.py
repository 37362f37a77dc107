"""The rules of named API keys ('apiKeys') between entries and against the stack:
which models exist, the operator's 'apiKey'. Only the loader runs them."""

from __future__ import annotations

from collections.abc import Iterator

from components.config.api_keys import OPERATOR_KEY_NAME
from components.config.rule import Rule, rule
from components.config.settings import Settings


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
