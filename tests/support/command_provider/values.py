"""Property values as pulumi-command's framework sees them, and its diff of them.

pulumi-command 1.2.1 is built on pulumi-go-provider v1.3.0 (PC provider/go.mod:11),
whose `infer` layer decodes the engine's values, diffs them and flows secrets
and unknowns. This module holds what that needs on top of the Python SDK's
`PropertyValue` (`pulumi.provider.experimental.property_value`):

- unknowns: the wire carries them as one of Pulumi's sentinel strings (pulumi
  sdk v3.274.1 go/common/resource/sig, `Unknown*Value`; the engine sends
  `UnknownStringValue` for every computed value, go/propertyrpc/marshal.go:109,
  159), which `PropertyValue.unmarshal` reads as a plain string and whose
  `Computed` it cannot marshal. `from_wire` turns them into `Computed`,
  `to_wire` back into the string sentinel.
- nulls: the framework unmarshals with `SkipNulls` (GP provider.go:649-658),
  which drops null map entries at every level, never array elements (pulumi
  sdk v3.274.1 go/common/resource/plugin/rpc.go:328-343).
- equality and the detailed diff: ports of pulumi's
  `resource.PropertyValue.DeepEquals`/`diff` (sdk go/common/resource/
  properties_diff.go:188-470) and `plugin.NewDetailedDiffFromObjectDiff`
  (go/common/resource/plugin/provider.go:755-821), which GP's `diff`
  calls (GP infer/resource.go:1215-1218). A secret is a wrapper there: it
  equals only another secret of an equal value, and the diff does not look
  inside it.

"GP" is pulumi/pulumi-go-provider at tag v1.3.0 (`3bfb720d`); "PC" is
pulumi/pulumi-command at tag v1.2.1 (`7f3eb6f3`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pulumi
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from pulumi.provider.experimental.property_value import (
    Computed,
    PropertyValue,
    ResourceReference,
)

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
"""sig.UnknownStringValue: what an unknown value is on the wire."""

UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # UnknownBoolValue
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # UnknownNumberValue
        UNKNOWN,  # UnknownStringValue
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # UnknownArrayValue
        "030794c1-ac77-496b-92df-f27374a8bd58",  # UnknownAssetValue
        "e48ece36-62e2-4504-bad9-02848725956a",  # UnknownArchiveValue
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # UnknownObjectValue
    }
)
"""sig.IsUnknown (sdk go/common/resource/sig): any of these is an unknown."""

PropertyMap = dict[str, PropertyValue]


# -- wire ----------------------------------------------------------------------------


def _from_wire(value: PropertyValue) -> PropertyValue:
    inner = value.value
    if isinstance(inner, str) and inner in UNKNOWN_SENTINELS:
        return PropertyValue(Computed(), is_secret=value.is_secret)
    if isinstance(inner, Mapping):
        return value.with_value(
            {k: _from_wire(v) for k, v in entries(value).items() if not _null(v)}
        )
    if is_array(value):
        return value.with_value([_from_wire(v) for v in items(value)])
    return value


def from_wire(struct: struct_pb2.Struct) -> PropertyMap:
    """An engine property map: unknown sentinels as `Computed`, null entries dropped."""
    return {
        k: _from_wire(v) for k, v in PropertyValue.unmarshal_map(struct).items() if not _null(v)
    }


def _null(value: PropertyValue) -> bool:
    """What `SkipNulls` skips: a null, not a secret whose value is null."""
    return value.value is None and not value.is_secret


def _to_wire(value: PropertyValue) -> PropertyValue:
    inner = value.value
    if isinstance(inner, Computed):
        return PropertyValue(UNKNOWN, is_secret=value.is_secret)
    if isinstance(inner, Mapping):
        return value.with_value({k: _to_wire(v) for k, v in entries(value).items()})
    if is_array(value):
        return value.with_value([_to_wire(v) for v in items(value)])
    return value


def to_wire(values: Mapping[str, PropertyValue]) -> struct_pb2.Struct:
    return PropertyValue.marshal_map({k: _to_wire(v) for k, v in values.items()})


def items(value: PropertyValue) -> tuple[PropertyValue, ...]:
    """The elements of an array value."""
    return tuple(cast(Sequence[PropertyValue], value.value))


def entries(value: PropertyValue) -> dict[str, PropertyValue]:
    """The entries of an object value."""
    return dict(cast(Mapping[str, PropertyValue], value.value))


def is_array(value: PropertyValue) -> bool:
    inner = value.value
    return isinstance(inner, Sequence) and not isinstance(inner, str)


def is_object(value: PropertyValue) -> bool:
    return isinstance(value.value, Mapping)


def is_computed(value: PropertyValue) -> bool:
    return isinstance(value.value, Computed)


def contains_unknowns(value: PropertyValue) -> bool:
    inner = value.value
    if isinstance(inner, Computed):
        return True
    if isinstance(inner, Mapping):
        return any(contains_unknowns(v) for v in entries(value).values())
    if is_array(value):
        return any(contains_unknowns(v) for v in items(value))
    return False


def plain(value: PropertyValue) -> Any:
    """The value with secrets unwrapped, as the command sees it (known values only)."""
    inner = value.value
    if isinstance(inner, Computed):
        raise ValueError("an unknown value cannot be used outside a preview")
    if isinstance(inner, Mapping):
        return {k: plain(v) for k, v in entries(value).items()}
    if is_array(value):
        return [plain(v) for v in items(value)]
    return inner


def wrap(value: Any) -> PropertyValue:
    """Plain Python (str, bool, int/float, None, list, dict) as a PropertyValue."""
    if isinstance(value, PropertyValue):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return PropertyValue(value)
    if isinstance(value, int | float):
        return PropertyValue(float(value))
    if isinstance(value, Mapping):
        return PropertyValue({str(k): wrap(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return PropertyValue([wrap(v) for v in value])
    raise TypeError(f"cannot wrap {type(value).__name__}")


# -- equality --------------------------------------------------------------------------


def deep_equals(a: PropertyValue, b: PropertyValue) -> bool:
    """`PropertyValue.DeepEquals` (properties_diff.go:358-470): a secret equals only
    a secret; two unknowns are equal; assets by value; references by URN and ID."""
    if a.is_secret or b.is_secret:
        return (
            a.is_secret and b.is_secret and deep_equals(a.with_secret(False), b.with_secret(False))
        )
    if isinstance(a.value, Computed) or isinstance(b.value, Computed):
        return isinstance(a.value, Computed) and isinstance(b.value, Computed)
    if is_array(a) or is_array(b):
        if not (is_array(a) and is_array(b)):
            return False
        xs, ys = items(a), items(b)
        return len(xs) == len(ys) and all(deep_equals(x, y) for x, y in zip(xs, ys, strict=True))
    if is_object(a) or is_object(b):
        if not (is_object(a) and is_object(b)):
            return False
        return map_deep_equals(entries(a), entries(b))
    if isinstance(a.value, ResourceReference) or isinstance(b.value, ResourceReference):
        if not (isinstance(a.value, ResourceReference) and isinstance(b.value, ResourceReference)):
            return False
        if a.value.urn != b.value.urn:
            return False
        ida, idb = a.value.resource_id, b.value.resource_id
        if ida is None or idb is None:
            return ida is None and idb is None
        return deep_equals(ida, idb)
    if isinstance(a.value, pulumi.Asset | pulumi.Archive):
        return type(a.value) is type(b.value) and vars(a.value) == vars(b.value)
    # Primitives: Go's interface equality, so a type change is a difference.
    return type(a.value) is type(b.value) and a.value == b.value


def map_deep_equals(a: Mapping[str, PropertyValue], b: Mapping[str, PropertyValue]) -> bool:
    """`PropertyMap.DeepEquals` (properties_diff.go:334-356): a null entry equals absence."""
    for key, value in a.items():
        if key in b:
            if not deep_equals(value, b[key]):
                return False
        elif value.value is not None:
            return False
    return all(key in a or value.value is None for key, value in b.items())


# -- the diff -----------------------------------------------------------------------------


class Kind(enum.Enum):
    """plugin.DiffKind as the framework reports it (GP infer/resource.go:1232-1245)."""

    ADD = "ADD"
    ADD_REPLACE = "ADD_REPLACE"
    DELETE = "DELETE"
    DELETE_REPLACE = "DELETE_REPLACE"
    UPDATE = "UPDATE"
    UPDATE_REPLACE = "UPDATE_REPLACE"

    def as_replace(self) -> Kind:
        return {
            Kind.ADD: Kind.ADD_REPLACE,
            Kind.DELETE: Kind.DELETE_REPLACE,
            Kind.UPDATE: Kind.UPDATE_REPLACE,
        }.get(self, self)

    @property
    def is_replace(self) -> bool:
        return self in (Kind.ADD_REPLACE, Kind.DELETE_REPLACE, Kind.UPDATE_REPLACE)


PathElement = str | int


@dataclass
class ObjectDiff:
    adds: dict[str, PropertyValue] = field(default_factory=dict)
    deletes: dict[str, PropertyValue] = field(default_factory=dict)
    updates: dict[str, ValueDiff] = field(default_factory=dict)

    def any_changes(self) -> bool:
        return bool(self.adds or self.deletes or self.updates)


@dataclass
class ArrayDiff:
    adds: dict[int, PropertyValue] = field(default_factory=dict)
    deletes: dict[int, PropertyValue] = field(default_factory=dict)
    updates: dict[int, ValueDiff] = field(default_factory=dict)


@dataclass
class ValueDiff:
    old: PropertyValue
    new: PropertyValue
    object: ObjectDiff | None = None
    array: ArrayDiff | None = None


def diff_maps(
    olds: Mapping[str, PropertyValue], news: Mapping[str, PropertyValue]
) -> ObjectDiff | None:
    """`PropertyMap.diff` (properties_diff.go:188-254); None when nothing changed."""
    result = ObjectDiff()
    for key, old in olds.items():
        if key in news:
            new = news[key]
            changed = diff_values(old, new)
            if changed is not None:
                if old.value is None:
                    result.adds[key] = new
                elif new.value is None:
                    result.deletes[key] = old
                else:
                    result.updates[key] = changed
        elif old.value is not None:
            result.deletes[key] = old
    for key, new in news.items():
        if key not in olds and new.value is not None:
            result.adds[key] = new
    return result if result.any_changes() else None


def diff_values(old: PropertyValue, new: PropertyValue) -> ValueDiff | None:
    """`PropertyValue.diff` (properties_diff.go:274-331): arrays element by element,
    objects key by key, anything else (secrets included) whole."""
    if is_array(old) and is_array(new) and not old.is_secret and not new.is_secret:
        xs, ys = items(old), items(new)
        array = ArrayDiff()
        for i in range(len(xs), len(ys)):
            array.adds[i] = ys[i]
        for i in range(len(ys), len(xs)):
            array.deletes[i] = xs[i]
        for i in range(min(len(xs), len(ys))):
            changed = diff_values(xs[i], ys[i])
            if changed is not None:
                array.updates[i] = changed
        if not (array.adds or array.deletes or array.updates):
            return None
        return ValueDiff(old, new, array=array)
    if is_object(old) and is_object(new) and not old.is_secret and not new.is_secret:
        changed_map = diff_maps(entries(old), entries(new))
        return None if changed_map is None else ValueDiff(old, new, object=changed_map)
    if deep_equals(old, new):
        return None
    return ValueDiff(old, new)


def format_path(path: Sequence[PathElement]) -> str:
    """`PropertyPath.String` (properties_path.go:578-612)."""
    out: list[str] = []
    for i, element in enumerate(path):
        if isinstance(element, int):
            out.append(f"[{element}]")
            continue
        quoted = any(not (c.isascii() and (c.isalnum() or c == "_")) for c in element)
        if quoted:
            escaped = element.replace('"', '\\"')
            out.append(f'["{escaped}"]')
        else:
            out.append(element if i == 0 else f".{element}")
    return "".join(out)


def detailed_diff(changes: ObjectDiff | None) -> dict[str, Kind]:
    """`NewDetailedDiffFromObjectDiff(diff, false)` (plugin/provider.go:755-821)."""
    out: dict[str, Kind] = {}
    if changes is not None:
        _object_detail([], changes, out)
    return out


def _object_detail(prefix: list[PathElement], changes: ObjectDiff, out: dict[str, Kind]) -> None:
    for key, value_diff in changes.updates.items():
        _value_detail([*prefix, key], value_diff, out)
    for key in changes.adds:
        out[format_path([*prefix, key])] = Kind.ADD
    for key in changes.deletes:
        out[format_path([*prefix, key])] = Kind.DELETE


def _array_detail(prefix: list[PathElement], changes: ArrayDiff, out: dict[str, Kind]) -> None:
    for index, value_diff in changes.updates.items():
        _value_detail([*prefix, index], value_diff, out)
    for index in changes.adds:
        out[format_path([*prefix, index])] = Kind.ADD
    for index in changes.deletes:
        out[format_path([*prefix, index])] = Kind.DELETE


def _value_detail(prefix: list[PathElement], changes: ValueDiff, out: dict[str, Kind]) -> None:
    if changes.object is not None:
        _object_detail(prefix, changes.object, out)
    elif changes.array is not None:
        _array_detail(prefix, changes.array, out)
    elif changes.old.value is None and changes.new.value is not None:
        out[format_path(prefix)] = Kind.ADD
    elif changes.old.value is not None and changes.new.value is None:
        out[format_path(prefix)] = Kind.DELETE
    else:
        out[format_path(prefix)] = Kind.UPDATE


def head(path: str) -> str:
    """The top-level key of a detailed-diff path (GP provider.go:191-197)."""
    if path.startswith('["'):
        end = path.index('"]')
        return path[2:end].replace('\\"', '"')
    cut = len(path)
    for stop in (".", "["):
        pos = path.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return path[:cut]
