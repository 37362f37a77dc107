"""What a user reads about a bad config: one line per problem, never the value.

pydantic's own error text echoes the offending value, which could be a token,
so the messages are written here: each names the key as the user writes it
(`hosts[1].gpus[0]`), the rule, and the closest valid key for a misspelt one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from components.config.settings import Settings

NAMESPACE = "vllm-nginx"
SECRET_KEYS = ("hfToken", "apiKey", "apiKeys", "tlsKey", "grafanaPassword")
# Namespaces whose keys a stack of this project may legitimately hold besides its own.
OTHER_NAMESPACES = frozenset({"docker", "command", "pulumi"})


@dataclass(frozen=True)
class Problem:
    """One broken rule; `key` is the config key as written ('' for the file itself)."""

    key: str
    rule: str

    def __str__(self) -> str:
        return f"config key '{self.key}': {self.rule}" if self.key else self.rule


def in_plain_text(key: str, how: str) -> Problem:
    """A secret typed in plain text, which would sit unencrypted in the stack file."""
    return Problem(
        key, f"must be set with `pulumi config set --secret {how}` (it is stored in plain text)"
    )


class ConfigError(ValueError):
    """Bad stack config; raised before any resource is declared. Lists every problem."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("invalid stack config:\n  " + "\n  ".join(map(str, self.problems)))


def _written_path(loc: Iterable[int | str]) -> str:
    """A pydantic error location as the user writes the key: `hosts[1].tls.keyMaterial`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-after", "function-", "tagged-union")) or part == "[key]":
            continue
        else:
            path += f".{part}" if path else part
    return path


def _key_path(namespace: str, loc: Iterable[int | str]) -> str:
    path = _written_path(loc)
    return f"{namespace}:{path}" if path else namespace


def _nesting_hint(namespace: str, where: str, name: str) -> str:
    """`loadBalancer.port` written as one key: Pulumi stores it under that literal name.

    `where` is the object holding it ('' for the top level, 'hosts[0]' for a
    list entry): the YAML advice and the `--path` differ between the two.
    """
    head, _, rest = name.partition(".")
    below = f"`{rest.split('.')[0]}: ...` indented below it"
    if where:
        yaml_form = f"as YAML: `{head}:` in '{where}', with {below}"
    else:
        yaml_form = f"as YAML under `{namespace}:{head}:` ({below})"
    dotted = f"{where}.{name}" if where else name
    return (
        f"unknown key; nested keys are written {yaml_form}, or set with "
        f"`pulumi config set --path '{dotted}' <value>` (--path makes the dot mean nesting)"
    )


RETIRED_KEYS = {
    "shmSizeMb": "was removed: replicas share the host's IPC namespace (`--ipc host`, as in "
    "the guide), where a container's own /dev/shm size does nothing; size /dev/shm on the host",
    "loadBalancer.baseImage": "is now 'loadBalancer.image': nginx runs as published, "
    "nothing is built",
    "cpu.ompThreadsBind": "was removed: the bind follows each replica's cores, set "
    "'cpu.coresPerReplica' or 'cpu.cpuSets'",
}
"""Keys earlier versions took, with what to write instead."""


def _known_keys(annotation: Any, prefix: str = "") -> Iterator[str]:
    """Every key path a stack file may hold, a list's entries as `[]`: 'hosts[].dockerHost',
    a map's as `{}`: 'apiKeys{}.maxTokens'.

    Descends through whatever wraps a model (`| None`, `Annotated`, `tuple[...]`),
    so the hints reach the keys of a list entry as they reach an object's.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            key = f"{prefix}.{info.alias or name}" if prefix else info.alias or name
            yield key
            yield from _known_keys(info.annotation, key)
        return
    if get_origin(annotation) is dict:
        yield from _known_keys(get_args(annotation)[1], f"{prefix}{{}}")
        return
    entries = get_origin(annotation) in (tuple, list)
    for arg in get_args(annotation):
        yield from _known_keys(arg, f"{prefix}[]" if entries else prefix)


KNOWN_KEYS = frozenset(_known_keys(Settings))


def _keys_by_level(known: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Keyed by object (`KNOWN_KEYS` form, '' for the top level): a misspelt key is
    compared only with the names valid where it was written."""
    levels: dict[str, set[str]] = {}
    for key in known:
        parent, _, name = key.rpartition(".")
        levels.setdefault(parent, set()).add(name)
    return {parent: tuple(sorted(names)) for parent, names in levels.items()}


KEYS_BY_LEVEL = _keys_by_level(KNOWN_KEYS)
SUGGESTION_CUTOFF = 0.7
"""`difflib` similarity a misspelt key needs to get a suggestion. At the default 0.6,
`maxModelLen` (a vLLM argument) would be offered 'model' and a top-level `tls` 'tlsKey';
at 0.7 the slips seen in practice (`replcas`, `prot`, `bindadress`) still are."""


MAP_KEYS = frozenset(key.split("{}")[0] for key in KNOWN_KEYS if "{}" in key)
"""Keys whose entries are named by the user ('apiKeys'): any name, then the entry's keys."""


def _key_form(path: str) -> str:
    """`hosts[1].dockerHost` -> `hosts[].dockerHost`, `apiKeys.team-a` -> `apiKeys{}`:
    the form of `KNOWN_KEYS` (an entry's name may hold dots, so the rest is its name)."""
    for key in MAP_KEYS:
        if path.startswith(key + "."):
            return key + "{}"
    return re.sub(r"\[\d+\]", "[]", path)


def _loose(name: str) -> str:
    """A key with case, `_` and `-` dropped: `docker_host`, `DockerHost` and
    `dockerhost` all mean `dockerHost`, so they get the camelCase hint rather
    than a guess."""
    return name.lower().replace("_", "").replace("-", "")


def _closest_key(where: str, name: str) -> str | None:
    """The valid key in the object at `where` that `name` most likely meant, if any.

    Only that object's keys are candidates: a key valid elsewhere would be a
    different mistake (a misplaced key), and a suggestion must be a key the user
    can write right there.
    """
    candidates = {_loose(key): key for key in KEYS_BY_LEVEL.get(_key_form(where), ())}
    loose = _loose(name)
    if loose in candidates:
        return candidates[loose]
    close = difflib.get_close_matches(loose, candidates, n=1, cutoff=SUGGESTION_CUTOFF)
    return candidates[close[0]] if close else None


def _rule(error: Mapping[str, Any], namespace: str) -> str:
    if error["type"] == "extra_forbidden":
        name = str(error["loc"][-1]) if error["loc"] else ""
        where = _written_path(error["loc"][:-1])
        if "." in name:
            return _nesting_hint(namespace, where, name)
        written = f"{where}.{name}" if where else name
        if _key_form(written) in RETIRED_KEYS:
            return f"unknown key: it {RETIRED_KEYS[_key_form(written)]}"
        closest = _closest_key(where, name)
        if closest is None:
            return "unknown key (a typo?); see the config reference in docs/configuration.md"
        meant = f"{where}.{closest}" if where else closest
        if _loose(closest) == _loose(name):
            return f"unknown key; keys are camelCase: did you mean '{meant}'?"
        return f"unknown key (a typo?): did you mean '{meant}'?"
    if error["type"] == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_problems(err: ValidationError, namespace: str = NAMESPACE) -> list[Problem]:
    return [
        Problem(_key_path(namespace, e["loc"]), _rule(e, namespace))
        for e in err.errors(include_input=False, include_url=False)
    ]
