"""docs/architecture.md is the map of `components/` and `standin/`, and it is kept true.

Its Files table must name every .py, .js and .json file there (and nothing
that is gone); its Packages table says what each package may import, and every
module's imports, read with `ast`, must keep to its row. A few rules hold
whatever the table says (`FIXED_RULES`). Adding a file or a package is adding a
row to the page, not editing this test.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
MAPPED = ("components", "standin")
SUFFIXES = {".py", ".js", ".json"}
PULUMI = ("pulumi", "pulumi_docker", "pulumi_command", "pulumi_kubernetes")

# Rules a table row cannot loosen: (package, forbidden imports, why).
FIXED_RULES = [
    (package, PULUMI, "only components.deployment may import Pulumi")
    for package in (
        "components.config",
        "components.plan",
        "components.lb",
        "components.steps",
        "components.containers",
        "components.cli",
        "standin",
    )
] + [
    ("components.containers", ("components",), "container files run without `components`"),
    (
        "components.config",
        tuple(
            f"components.{p}" for p in ("plan", "lb", "deployment", "steps", "containers", "cli")
        ),
        "config is the bottom layer",
    ),
    ("standin", ("components",), "the stand-in is not part of the program"),
]


def table(text: str, first_header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose first header cell is `first_header`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with first column {first_header!r} in {PAGE.name}")


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def files_on_disk() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for top in MAPPED
        for path in (ROOT / top).rglob("*")
        if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts
    }


def files_in_table() -> dict[str, list[str]]:
    return {name: row for row in table(PAGE.read_text(), "file") for name in backticked(row[0])}


def import_rules() -> dict[str, list[str]]:
    """Package -> what it may import besides the standard library, from the page."""
    rules = {}
    for row in table(PAGE.read_text(), "package"):
        (package,) = backticked(row[0])
        rules[package] = backticked(row[2])
    return rules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, wherever it is (functions too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                # `from package import module` imports the module itself.
                full = f"{source}.{alias.name}"
                yield node.lineno, full if is_module(full) else source


def covers(allowed: str, module: str) -> bool:
    """`components` alone is the package root; any other name covers what is under it."""
    if allowed == "components":
        return module == "components"
    return module == allowed or module.startswith(allowed + ".")


def rule_for(module: str, rules: dict[str, list[str]]) -> str | None:
    """The longest package row that contains `module`."""
    matching = [p for p in rules if module == p or module.startswith(p + ".")]
    return max(matching, key=len, default=None)


def python_modules() -> list[Path]:
    return sorted(
        path
        for top in MAPPED
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def violations(path: Path, rules: dict[str, list[str]]) -> list[str]:
    module = module_name(path)
    package = rule_for(module, rules)
    if package is None:
        return [f"{module}: no row in the Packages table of {PAGE.name}"]
    found = []
    for line, imported in imports(path):
        if imported.split(".")[0] in sys.stdlib_module_names:
            continue
        if not any(covers(allowed, imported) for allowed in rules[package]):
            found.append(f"{path.relative_to(ROOT)}:{line} imports {imported} ({package}'s row)")
    return found


def test_every_file_has_a_row() -> None:
    missing = files_on_disk() - set(files_in_table())
    assert not missing, f"add rows to the Files table of docs/architecture.md: {sorted(missing)}"


def test_every_row_names_a_file() -> None:
    gone = set(files_in_table()) - files_on_disk()
    assert not gone, f"rows for files that are gone: {sorted(gone)}"


def test_every_row_says_where_it_runs() -> None:
    assert [name for name, row in files_in_table().items() if len(row) < 3 or not row[1]] == []


def test_every_package_row_is_a_package() -> None:
    assert [p for p in import_rules() if not is_module(p)] == []


@pytest.mark.parametrize("path", python_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_keep_to_the_table(path: Path) -> None:
    assert violations(path, import_rules()) == []


@pytest.mark.parametrize(("package", "forbidden", "why"), FIXED_RULES)
def test_fixed_rules(package: str, forbidden: tuple[str, ...], why: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in python_modules()
        if rule_for(module_name(path), {package: []}) is not None
        for line, imported in imports(path)
        if any(imported == f or imported.startswith(f + ".") for f in forbidden)
    ]
    assert broken == [], why


# The checks themselves.


def test_an_import_outside_the_row_is_caught() -> None:
    rules = import_rules()
    module = ROOT / "components" / "config" / "values.py"
    assert violations(module, rules) == []
    assert violations(module, {**rules, "components.config": ["pydantic"]}) != []
    # `components` alone allows the root package, not what is under it.
    assert covers("components", "components")
    assert not covers("components", "components.deployment.cluster")
    assert covers("components.steps.engine", "components.steps.engine")
    assert not covers("components.steps.engine", "components.steps.engineering")


def test_from_package_import_module_counts_as_the_module() -> None:
    njs = {name for _line, name in imports(ROOT / "components" / "lb" / "njs.py")}
    assert "components.containers" in njs  # CONTAINERS_DIR: a name, not a module
    download = {name for _line, name in imports(ROOT / "components" / "steps" / "download.py")}
    assert "components.containers.vllm.download_job" in download
