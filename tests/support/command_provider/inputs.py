"""`command:local:Command`'s inputs: the framework's Check and Diff of them.

The inputs are the struct `CommandInputs` = `common.ResourceInputs` + `local.BaseInputs`
(PC local/command.go:45-48, common/inputs.go:6-15, local/base.go:24-33), every field
optional. The outputs are the inputs plus `stdout`, `stderr` (always present)
and the optional `assets`/`archive` (PC local/command.go:51-54, local/base.go:131-136).

pulumi-command implements neither Check nor Diff for this resource
(PC local/commandController.go:27-31 asserts only CustomResource, CustomUpdate and
CustomDelete), so both are pulumi-go-provider's defaults:

- Check (GP infer/resource.go:994-1047): decode the inputs into the struct (an
  unknown or wrongly typed field is a check failure, GP :1098-1130 with the
  mapper's messages, pulumi sdk go/common/util/mapper/errors.go:98-166), apply
  the struct's defaults (it declares none: PC Annotate methods only Describe)
  and its secret tags (none), and hand the inputs back as they came. Unknowns
  pass (GP infer/internal/ende/ende.go:180-183 types them).
- Diff (GP infer/resource.go:1132-1253): old inputs against new inputs, the
  ignored keys copied from the state first, `version` and `__`-prefixed keys
  dropped; every changed path is an update unless its path is a top-level input
  whose schema says `replaceOnChanges`, which only `triggers` does
  (PC common/inputs.go:10; schema.json:359-360). A change inside `triggers`
  (`triggers[0]`) is therefore an *update* from the provider: the replacement
  comes from the engine, because the generated SDK adds the resource option
  `replace_on_changes=["triggers[*]"]` (pulumi_command 1.2.1
  local/command.py:807) and the engine turns a matching path into a replace
  (pulumi pkg v3.274.1 resource/deploy/step_generator.go:3311-3349). `triggers`
  appearing or disappearing is a replace from the provider itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pulumi.provider.experimental.property_value import Computed, PropertyValue

from tests.support.command_provider.values import (
    Kind,
    PropertyMap,
    detailed_diff,
    diff_maps,
    entries,
    head,
    is_array,
    is_object,
    items,
)

__all__ = ["FIELDS", "REPLACE_ON_CHANGES", "CheckFailure", "Diff", "Kind", "check", "diff"]

STRUCT = "local.CommandInputs"
"""How the mapper names the struct in its messages (reflect.Type's String)."""

STRING = "string"
BOOL = "bool"
STRINGS = "[]string"
STRING_MAP = "map[string]string"
ANY_LIST = "[]interface {}"
LOGGING = "local.Logging"

FIELDS: dict[str, str] = {
    # common.ResourceInputs (PC common/inputs.go:10-14)
    "triggers": ANY_LIST,
    "create": STRING,
    "update": STRING,
    "delete": STRING,
    # local.BaseInputs (PC local/base.go:25-32)
    "stdin": STRING,
    "logging": LOGGING,
    "interpreter": STRINGS,
    "dir": STRING,
    "environment": STRING_MAP,
    "assetPaths": STRINGS,
    "archivePaths": STRINGS,
    "addPreviousOutputInEnv": BOOL,
}
"""Every input field and its Go type, in the struct's order."""

REPLACE_ON_CHANGES = frozenset({"triggers"})
"""Inputs tagged `provider:"replaceOnChanges"` (PC common/inputs.go:10)."""

NOT_MODELLED = ("assetPaths", "archivePaths")
"""Accepted by pulumi-command (they glob files into `assets`/`archive` after the
command, PC local/commandOutputs.go:116-140); refused by this stand-in rather
than ignored."""

LOGGING_VALUES = ("stdout", "stderr", "stdoutAndStderr", "none")
"""PC local/logging.go:11-16. Check does not enforce them (a string decodes into
`Logging`); any other value logs neither stream (logging.go:27-32)."""


@dataclass(frozen=True)
class CheckFailure:
    property: str
    reason: str


def _go_type(value: PropertyValue) -> str:
    """The Go type of a decoded value (`PropertyValue.Mappable`), for messages."""
    inner = value.value
    if isinstance(inner, bool):
        return "bool"
    if isinstance(inner, float):
        return "float64"
    if isinstance(inner, str):
        return "string"
    if is_array(value):
        return "[]interface {}"
    if is_object(value):
        return "map[string]interface {}"
    return "interface {}"


def _wrong(key: str, expect: str, got: PropertyValue) -> CheckFailure:
    """mapper.NewWrongTypeError (errors.go:155-166)."""
    return CheckFailure(
        key, f"Field '{key}' on '{STRUCT}' must be a '{expect}'; got '{_go_type(got)}' instead"
    )


def _known(value: PropertyValue) -> bool:
    return not isinstance(value.value, Computed)


def _check_field(key: str, go_type: str, value: PropertyValue) -> list[CheckFailure]:
    if not _known(value):
        return []
    if go_type in (STRING, LOGGING):
        return [] if isinstance(value.value, str) else [_wrong(key, go_type, value)]
    if go_type == BOOL:
        return [] if isinstance(value.value, bool) else [_wrong(key, go_type, value)]
    if go_type == ANY_LIST:
        return [] if is_array(value) else [_wrong(key, go_type, value)]
    if go_type == STRINGS:
        if not is_array(value):
            return [_wrong(key, go_type, value)]
        for i, item in enumerate(items(value)):
            if _known(item) and not isinstance(item.value, str):
                return [_wrong(f"{key}[{i}]", STRING, item)]
        return []
    if go_type == STRING_MAP:
        if not is_object(value):
            return [_wrong(key, go_type, value)]
        for name, item in entries(value).items():
            if _known(item) and not isinstance(item.value, str):
                return [_wrong(f"{key}[{name}] value", STRING, item)]
        return []
    raise AssertionError(go_type)


def check(news: Mapping[str, PropertyValue]) -> tuple[PropertyMap, list[CheckFailure]]:
    """GP's default Check: the inputs back as given, or the decoding failures
    (then the inputs are still returned, GP infer/resource.go:1031-1037)."""
    failures: list[CheckFailure] = []
    for key, go_type in FIELDS.items():
        if key in news:
            failures.extend(_check_field(key, go_type, news[key]))
    for key in sorted(set(news) - set(FIELDS)):
        # mapper.NewUnrecognizedError (errors.go:133-139)
        failures.append(CheckFailure(key, f"Unrecognized field '{key}' on '{STRUCT}'"))
    for key in NOT_MODELLED:
        if key in news:
            failures.append(
                CheckFailure(key, f"{key} is not modelled by the pulumi-command test stand-in")
            )
    return dict(news), failures


@dataclass
class Diff:
    changes: bool
    detailed: dict[str, Kind] = field(default_factory=dict)

    @property
    def diffs(self) -> list[str]:
        """The changed top-level keys (GP provider.go:191-225)."""
        return sorted({head(path) for path in self.detailed})

    @property
    def replaces(self) -> list[str]:
        return sorted({head(path) for path, kind in self.detailed.items() if kind.is_replace})


def diff(
    old_inputs: Mapping[str, PropertyValue] | None,
    state: Mapping[str, PropertyValue],
    news: Mapping[str, PropertyValue],
    ignore_changes: Sequence[str] = (),
) -> Diff:
    """GP's Diff for a resource with an Update (GP infer/resource.go:1132-1253).

    `old_inputs` are the engine's (it sends them when Configure said it would,
    GP provider.go:780 and infer/resource.go:1194-1213); without them the old
    inputs are the state's values of the input fields."""
    inputs = dict(news)
    for key in ignore_changes:
        if key in state:
            inputs[key] = state[key]
    inputs = {k: v for k, v in inputs.items() if k != "version" and not k.startswith("__")}
    if old_inputs is None:
        old_inputs = {k: state.get(k, PropertyValue(None)) for k in FIELDS}
    changes = diff_maps(dict(old_inputs), inputs)
    detailed = {
        path: kind.as_replace() if path in REPLACE_ON_CHANGES else kind
        for path, kind in detailed_diff(changes).items()
    }
    return Diff(changes=changes is not None and changes.any_changes(), detailed=detailed)
