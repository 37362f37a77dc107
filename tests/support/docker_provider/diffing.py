"""Check and Diff of the bridged resources, without the engine or Docker.

Values are plain Python (the wire's `PropertyValue`s unwrapped): dicts, lists,
strings, numbers, booleans, None; an unknown value (preview) is Pulumi's
unknown sentinel string `UNKNOWN` (pulumi sdk/go/common/resource/plugin/rpc.go:73,
`pulumi.runtime.rpc.UNKNOWN`).

What the bridge does and this follows (pulumi-terraform-bridge v3.136.0,
pkg/tfbridge/provider.go, "BR" below):

- Check (BR:1045-1088) returns the inputs with the Terraform `Default`s filled
  in (`makeTerraformInputsWithOptions` without `DisableTFDefaults`, then
  `MakeTerraformOutputs`), so `restart: "no"`, `mustRun: true`,
  `waitTimeout: 60`, ... are in the inputs the engine stores and shows.
- Diff (BR:1118-1306) diffs the *state* (`olds`: what Create/Read/Update left,
  i.e. the read-back values) against the checked inputs with Terraform's
  schema rules (SDKv2 `schemaMap.Diff`): an attribute left out of the program
  is no change when it is `Computed`, otherwise it is compared with its zero
  value (so absent, "", 0, false and [] are all the same); a changed
  `ForceNew` attribute makes the change a replacement; a set ignores order;
  an unknown new value is a change. Replacement keys are the top-level names
  (BR:1240-1262); `deleteBeforeReplace` is answered for containers
  (BR:1275-1276, pulumi-docker resources.go:112-114).
- `replaceOnChanges` and `ignoreChanges` are the engine's: it copies ignored
  inputs from the old inputs before Check (pulumi pkg/resource/deploy/
  step_generator.go `processIgnoreChanges`) and turns a changed key covered by
  `replaceOnChanges` into a replacement after Diff (`applyReplaceOnChanges`,
  step_generator.go:3168-3262), using the `diffs` keys returned here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tests.support.docker_provider.godur import DurationError, parse_duration
from tests.support.docker_provider.schema import DELETE_BEFORE_REPLACE, SCHEMAS, Prop

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


class Kind(Enum):
    """pulumirpc.PropertyDiff.Kind."""

    ADD = 0
    ADD_REPLACE = 1
    DELETE = 2
    DELETE_REPLACE = 3
    UPDATE = 4
    UPDATE_REPLACE = 5


_REPLACE = {
    Kind.ADD: Kind.ADD_REPLACE,
    Kind.DELETE: Kind.DELETE_REPLACE,
    Kind.UPDATE: Kind.UPDATE_REPLACE,
}


@dataclass
class Failure:
    property: str
    reason: str


@dataclass
class Diff:
    """What the provider answers to Diff."""

    changes: bool
    replaces: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    detailed: dict[str, Kind] = field(default_factory=dict)
    stables: list[str] = field(default_factory=list)
    delete_before_replace: bool = False


def contains_unknown(value: Any) -> bool:
    if isinstance(value, str):
        return value == UNKNOWN
    if isinstance(value, Mapping):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(contains_unknown(v) for v in value)
    return False


def is_zero(value: Any) -> bool:
    """Terraform's notion of "not set": the zero value of the attribute's type."""
    if value is None or value is False or value == "":
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, Mapping | list | tuple):
        return len(value) == 0
    return False


# -- Check ---------------------------------------------------------------------

_RESTART = re.compile(r"^(no|on-failure|always|unless-stopped)$")  # C:235
_CPU_SET = re.compile(r"^\d+([,-]\d+)*$")  # C:883


DEFAULTS = "__defaults"
"""The bridge's list, in each object of the checked inputs, of the names it filled
from a default (BR pkg/tfbridge/schema.go:133-136, `applyDefaults` 742-986;
`reservedkeys.Defaults`)."""


def _falsy(value: Any) -> bool:
    """`shouldSuppressTFSchemaDefaultValue` (schema.go:991-1006): false, 0, ""."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return bool(value == "")


def without_defaults(value: Any) -> Any:
    """`value` without the `__defaults` lists: what the provider itself works on."""
    if isinstance(value, Mapping):
        return {k: without_defaults(v) for k, v in value.items() if k != DEFAULTS}
    if isinstance(value, list):
        return [without_defaults(v) for v in value]
    return value


def _with_defaults(prop: Prop, value: Any) -> Any:
    """Fill nested `Default`s into an object, or into each object of a list/set."""
    if not prop.fields or not isinstance(value, Mapping | list):
        return value
    if prop.kind == "object" and isinstance(value, Mapping):
        return _object_defaults(prop.fields, value)
    if prop.kind in ("list", "set") and isinstance(value, list):
        return [_object_defaults(prop.fields, v) if isinstance(v, Mapping) else v for v in value]
    return value


def _object_defaults(fields: Mapping[str, Prop], value: Mapping[str, Any]) -> dict[str, Any]:
    """An object's defaults as the bridge fills them: an absent attribute gets its
    schema `Default` unless that is falsy (left out: schema.go:956-967), and the
    names filled are listed, sorted, in `__defaults` (schema.go:982-986)."""
    out = {k: v for k, v in value.items() if v is not None and k != DEFAULTS}
    filled = []
    for name, sub in fields.items():
        if sub.default is None:
            if name in out:
                out[name] = _with_defaults(sub, out[name])
        elif name not in out:
            if not _falsy(sub.default):
                out[name] = sub.default
                filled.append(name)
        elif out[name] == "" and not _falsy(sub.default):
            out[name] = sub.default  # "" read as the default (`ip`'s StateFunc, C:515-522)
        else:
            out[name] = _with_defaults(sub, out[name])
    out[DEFAULTS] = sorted(filled)
    return out


def _validate(type_: str, inputs: Mapping[str, Any]) -> list[Failure]:
    """The ValidateDiagFuncs of the attributes accepted here."""
    failures: list[Failure] = []
    if type_ != "docker:index/container:Container":
        return failures

    def known_str(key: str) -> str | None:
        value = inputs.get(key)
        return value if isinstance(value, str) and value != UNKNOWN else None

    restart = known_str("restart")
    if restart is not None and not _RESTART.match(restart):
        failures.append(Failure("restart", f"invalid restart policy {restart!r} (C:235)"))
    cpu_set = known_str("cpuSet")
    if cpu_set is not None and cpu_set and not _CPU_SET.match(cpu_set):
        failures.append(Failure("cpuSet", f"invalid CPU set {cpu_set!r} (C:883)"))
    health = inputs.get("healthcheck")
    if isinstance(health, Mapping):
        for key in ("interval", "timeout", "startPeriod", "startInterval"):
            text = health.get(key)
            if not isinstance(text, str) or text == UNKNOWN:
                continue
            try:
                nanoseconds = parse_duration(text)
            except DurationError as exc:
                failures.append(Failure(f"healthcheck.{key}", f"{exc} (C:1064-1085)"))
                continue
            if nanoseconds < 0:
                failures.append(Failure(f"healthcheck.{key}", "must be >= 0 (C:1064-1085)"))
    return failures


def check(type_: str, news: Mapping[str, Any]) -> tuple[dict[str, Any], list[Failure]]:
    """The checked inputs (program inputs plus the schema's defaults) and failures."""
    props = SCHEMAS[type_]
    given = {k: v for k, v in news.items() if v is not None and k != DEFAULTS}
    failures = [
        Failure(key, f"{type_} input {key!r} is not modelled by the test provider")
        for key in given
        if key not in props or not props[key].accepted
    ]
    inputs = _object_defaults(props, given)
    failures += _validate(type_, inputs)
    return inputs, failures


# -- Diff ----------------------------------------------------------------------


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _absent(prop: Prop, new: Any) -> bool:
    """Left out of the program. Terraform cannot tell an empty collection from
    none; an explicit "", 0 or false is a value (only an absent one gets the
    `Default`, or keeps a `Computed` state value)."""
    return new is None or (prop.kind != "scalar" and is_zero(new))


def same(prop: Prop, old: Any, new: Any) -> bool:
    """Would Terraform see no change from `old` (state) to `new` (config)?"""
    if contains_unknown(new):
        return False
    if prop.suppress_empty_new and (new is None or new == ""):
        return True
    if _absent(prop, new):
        if prop.computed:
            return True
        if prop.default is not None:
            return same(Prop(kind=prop.kind, fields=prop.fields), old, prop.default)
        return is_zero(old)
    if is_zero(new):  # an explicit "", 0 or false
        return is_zero(old)
    if prop.kind == "scalar":
        if is_zero(old):
            return False
        return bool(_number(old) == _number(new))
    if prop.kind == "map":
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            return False
        return {k: str(v) for k, v in old.items()} == {k: str(v) for k, v in new.items()}
    if prop.kind == "object":
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            return False
        return _same_object(prop.fields, old, new)
    if not isinstance(old, list) or not isinstance(new, list):
        return False
    if prop.kind == "list":
        if len(old) != len(new):
            return False
        return all(_same_element(prop, o, n) for o, n in zip(old, new, strict=True))
    # A set: every new element matches a distinct old one, and none is left over.
    olds = _unique(old)
    news = _unique(new)
    if len(olds) != len(news):
        return False
    unmatched = list(olds)
    for element in news:
        match = next((o for o in unmatched if _same_element(prop, o, element)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True


def _unique(values: Sequence[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return list(seen.values())


def _same_element(prop: Prop, old: Any, new: Any) -> bool:
    if prop.fields:
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            return False
        return _same_object(prop.fields, old, new)
    return bool(_number(old) == _number(new))


def _same_object(
    fields: Mapping[str, Prop], old: Mapping[str, Any], new: Mapping[str, Any]
) -> bool:
    keys = set(fields) | set(old) | set(new)
    return all(same(fields.get(k, Prop()), old.get(k), new.get(k)) for k in keys)


def _forces_new(prop: Prop) -> bool:
    return prop.force_new or any(_forces_new(sub) for sub in prop.fields.values())


def _kind(base: Kind, replace: bool) -> Kind:
    return _REPLACE[base] if replace else base


def _element_diffs(key: str, prop: Prop, old: Any, new: Any) -> dict[str, Kind]:
    """Where inside `key` a change is, as the bridge's detailed diff names it
    (BR pkg/tfbridge/diff.go:60-170 `visitPropertyValue`, 169-260
    `makePropertyDiff`, 360-420 `makeDetailedDiffExtra`): the state is visited
    first, then the config. A one-item block (`healthcheck`, `capabilities`)
    names its fields (`healthcheck.interval`); a list its elements by
    position; a set the elements of the state the config lacks, by their index
    in the state (a delete), then the config's new ones by their index there
    (an update where the state's pass named that index, else an add); a list
    or set whose length changed is also named whole, as an update
    (provider.go's `collectionDiffs`). Empty when there is nothing finer than
    `key` itself (a scalar or map)."""
    replace = _forces_new(prop)
    out: dict[str, Kind] = {}
    if prop.kind == "object" and isinstance(old, Mapping) and isinstance(new, Mapping):
        for name, field_ in prop.fields.items():
            o, n = old.get(name), new.get(name)
            if same(field_, o, n):
                continue
            base = Kind.DELETE if _absent(field_, n) else Kind.ADD if is_zero(o) else Kind.UPDATE
            out[f"{key}.{name}"] = _kind(base, replace or _forces_new(field_))
        return out
    if prop.kind not in ("list", "set") or not isinstance(old, list) or not isinstance(new, list):
        return out
    element = Prop(kind="object", fields=prop.fields) if prop.fields else Prop()
    if prop.kind == "list":
        for index in range(max(len(old), len(new))):
            path = f"{key}[{index}]"
            if index >= len(new):
                out[path] = _kind(Kind.DELETE, replace)
            elif index >= len(old):
                out[path] = _kind(Kind.ADD, replace)
            elif not _same_element(prop, old[index], new[index]):
                finer = _element_diffs(path, element, old[index], new[index]) if prop.fields else {}
                out.update(finer or {path: _kind(Kind.UPDATE, replace)})
    else:
        for index, item in enumerate(old):
            if not any(_same_element(prop, item, n) for n in new):
                out[f"{key}[{index}]"] = _kind(Kind.DELETE, replace)
        for index, item in enumerate(new):
            if not any(_same_element(prop, o, item) for o in old):
                path = f"{key}[{index}]"
                out[path] = _kind(Kind.UPDATE if path in out else Kind.ADD, replace)
    if len(old) != len(new):
        out[key] = Kind.UPDATE
    return out


def diff(
    type_: str,
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    ignore_changes: Sequence[str] = (),
) -> Diff:
    """The bridge's Diff of state `olds` against checked inputs `news`."""
    props = SCHEMAS[type_]
    news = without_defaults(news)
    ignored = {path.split(".", 1)[0].split("[", 1)[0] for path in ignore_changes}
    result = Diff(changes=False)
    for key, prop in props.items():
        if key in ignored:
            continue
        old, new = olds.get(key), news.get(key)
        if same(prop, old, new):
            continue
        if _absent(prop, new):
            kind = Kind.DELETE
        elif is_zero(old):
            kind = Kind.ADD
        else:
            kind = Kind.UPDATE
        if _forces_new(prop):
            kind = _REPLACE[kind]
            result.replaces.append(key)
        if kind in (Kind.UPDATE, Kind.UPDATE_REPLACE):
            result.detailed.update(_element_diffs(key, prop, old, new) or {key: kind})
        else:
            result.detailed[key] = kind
        result.diffs.append(key)
    result.changes = bool(result.diffs)
    result.replaces.sort()
    result.diffs.sort()
    result.stables = sorted(k for k, p in props.items() if p.force_new and k not in result.replaces)
    result.delete_before_replace = bool(result.replaces) and type_ in DELETE_BEFORE_REPLACE
    return result


def planned_state(type_: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, Any]:
    """The state Terraform writes after an Update that does not read back: the
    new inputs, the old value of a `Computed` attribute left out, nothing for
    any other attribute left out; outputs-only keys (`bridge`, ...) unchanged."""
    props = SCHEMAS[type_]
    news = without_defaults(news)
    state = dict(olds)
    for key, prop in props.items():
        new = news.get(key)
        if new is not None and (not is_zero(new) or not prop.computed):
            state[key] = new
        elif not prop.computed:
            state.pop(key, None)
    return state


# -- Read's inputs -----------------------------------------------------------------


def refreshed_inputs(
    type_: str, old_inputs: Mapping[str, Any], state: Mapping[str, Any]
) -> dict[str, Any]:
    """The inputs a refresh stores (BR Read: `ExtractInputsFromOutputs` with
    isRefresh, pkg/tfbridge/schema.go:2012-2022): only the inputs already there,
    each given the read state's value (`extractInputs`, schema.go:1718-1800), so a
    stopped container's `mustRun: true` becomes false and its `ports` []."""
    return _extract_object(SCHEMAS[type_], old_inputs, state)


def _extract_object(
    fields: Mapping[str, Prop], old: Mapping[str, Any], new: Mapping[str, Any]
) -> dict[str, Any]:
    """`extractInputsObject` (schema.go:1802-1845): a key the state lacks is
    dropped; `__defaults` keeps the names whose value the state did not change,
    and a refresh drops it when that leaves it empty (`deleteDefaultsKey`,
    pkg/tfbridge/defaults.go; provider.go Read)."""
    out: dict[str, Any] = {}
    for key, value in old.items():
        if key != DEFAULTS and key in new:
            out[key] = _extract(fields.get(key), value, new[key])
    if isinstance(old.get(DEFAULTS), list):
        kept = sorted(k for k in old[DEFAULTS] if k in out and out[k] == old.get(k))
        if kept:
            out[DEFAULTS] = kept
    return out


def _extract(prop: Prop | None, old: Any, new: Any) -> Any:
    if isinstance(old, list) and isinstance(new, list):
        fields = prop.fields if prop is not None else {}
        element = Prop(kind="object", fields=fields) if fields else None
        result = []
        if prop is not None and prop.kind == "set":
            # Set elements matched by content (matchSetElements); an old one the
            # state no longer has is dropped.
            for item in old:
                match = next((n for n in new if without_defaults(item) == n), None)
                if match is not None:
                    result.append(_extract(element, item, match))
            return result
        for index, item in enumerate(old):
            if index >= len(new):
                break  # schema.go:1745-1748
            result.append(_extract(element, item, new[index]))
        return result
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return _extract_object(prop.fields if prop is not None else {}, old, new)
    return new
