"""The config reference table in docs/configuration.md, generated from the settings models.

Generated rather than written by hand so that a key added to the settings models
cannot be missing from the documentation: `tests/test_readme.py` compares the
table between the markers of docs/configuration.md with this output.
`python -m components.config.reference` prints it; `--write` puts it in place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from components import PROJECT_DIR
from components.config.problems import NAMESPACE
from components.config.settings import Settings

DOCUMENT = PROJECT_DIR / "docs" / "configuration.md"
"""The page that holds the table, between `START` and `END`."""
POOL_IMAGE = "models[i].image."
START = "<!-- config-reference:start -->\n"
END = "<!-- config-reference:end -->"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "string"
    if origin is None:
        name = getattr(annotation, "__name__", str(annotation))
        return {"SecretStr": "secret string", "str": "string", "int": "integer"}.get(name, name)
    if str(origin).endswith("Annotated") or origin.__name__ == "Annotated":
        return _type_name(args[0])
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "map of string"
    if getattr(origin, "__name__", "") == "Literal":
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if len(args) == 1:
        return _type_name(args[0])
    return " or ".join(_type_name(a) for a in args)


def _format(value: Any) -> str:
    if value is None or value == {} or value == ():
        return "-"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{getattr(value, 'value', value)}`"


def _default(field: FieldInfo, parent: BaseModel | None, name: str) -> str:
    if parent is not None:
        return _format(getattr(parent, name))
    if field.default_factory is not None:
        return _format(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "**required**"
    return _format(field.default)


ENTRIES = (("list", (tuple, list), 0, "[i]."), ("map", (dict,), 1, ".<name>."))
"""Keys of objects with entries: 'hosts' (`hosts[i].name`), 'apiKeys' (`apiKeys.<name>.key`),
with the origins of their annotation and where its entry's type stands in it."""


def _entry_model(annotation: Any, kinds: tuple[type, ...], at: int) -> type[BaseModel] | None:
    """The model of an entry of `annotation` (through `| None` and `Annotated`), else None."""
    if get_origin(annotation) in kinds:
        args = get_args(annotation)
        item = args[at] if len(args) > at else None
        return item if isinstance(item, type) and issubclass(item, BaseModel) else None
    for arg in get_args(annotation):
        if arg is not type(None) and (found := _entry_model(arg, kinds, at)) is not None:
            return found
    return None


def config_rows(
    model: type[BaseModel], prefix: str = "", parent: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """One row per leaf key (key, type, default, meaning); nested defaults come from
    the parent's default, meanings from the fields' descriptions."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        sub = next((a for a in nested if issubclass(a, BaseModel)), None)
        entries = ((s, _entry_model(annotation, k, at), t) for s, k, at, t in ENTRIES)
        found = next(((s, e, t) for s, e, t in entries if e is not None), None)
        if found is not None:
            # One row for the key, then one per key of an entry: `hosts[i].name`.
            shape, entry, tail = found
            kind = f"{shape} of objects ({entry.__name__.removesuffix('Settings')})"
            rows.append((key, kind, "-", field.description or ""))
            rows.extend(config_rows(entry, key + tail))
            continue
        if sub is not None:
            default = getattr(parent, name) if parent is not None else field.default
            rows.extend(
                config_rows(sub, key + ".", default if isinstance(default, BaseModel) else None)
            )
            continue
        meaning = field.description or ""
        if key.startswith(POOL_IMAGE):
            # A pool's `image` keys mean what the stack's do, for that pool's replicas.
            stack_key = "image." + key.removeprefix(POOL_IMAGE)
            meaning = f"as `{stack_key}`, for this pool (default: the stack's `image`)"
        rows.append((key, _type_name(annotation), _default(field, parent, name), meaning))
    return rows


def reference() -> str:
    lines = [
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, type_name, default, meaning in config_rows(Settings):
        lines.append(f"| `{NAMESPACE}:{key}` | {type_name} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def current_table(document: str) -> str:
    """The table as it stands between the markers of `document`."""
    start = document.index(START) + len(START)
    return document[start : document.index(END, start)]


def with_table(document: str, table: str) -> str:
    """`document` with `table` between its markers."""
    start = document.index(START) + len(START)
    return document[:start] + table + document[document.index(END, start) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.config.reference",
        description="Print the config reference table generated from the settings models.",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"replace the table in {DOCUMENT.relative_to(PROJECT_DIR)} instead of printing it",
    )
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(reference())
        return 0
    DOCUMENT.write_text(with_table(DOCUMENT.read_text(), reference()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
