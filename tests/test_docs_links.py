"""The documentation points at what exists.

In README.md, docs/*.md and bench/README.md: every relative Markdown link
reaches a file, and its `#anchor` a heading of that file (slugged as GitHub
slugs headings); every repository path (`components/...`, `tests/...`, ...) and
every module (`components.x.y`, `bench.x`, ...) named in backticks exists. A
module name may end in one attribute its file defines
(`components.deployment.program.deploy`).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
# Paths from the repository root, and dotted modules of our own packages, as written.
PATH = re.compile(r"(?<![\w./-])((?:components|standin|tests|bench|scripts|docker|docs)/[\w./-]*)")
MODULE = re.compile(r"(?<![\w./-])((?:components|standin|tests|bench)(?:\.\w+)+)")
# Written like our paths, but not ours.
NOT_OURS = {
    "docker/Dockerfile": "image.build.dockerfile's default, inside the vLLM checkout",
}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation out."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def without_code(text: str) -> str:
    """The text with fenced blocks and code spans blanked (links in them are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), text)


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub("", text)):
        slug = github_slug(match.group(2))
        seen = counts.get(slug, 0)
        counts[slug] = seen + 1
        found.add(slug if seen == 0 else f"{slug}-{seen}")
    return found


def links(text: str) -> list[str]:
    return [m.group(1) for m in LINK.finditer(without_code(text))]


def code(text: str) -> list[str]:
    """What is written in backticks: the fenced blocks and the code spans."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub("", text))]
    return blocks + spans


@functools.cache
def _anchors_of(path: Path) -> set[str]:
    return anchors(path.read_text(encoding="utf-8"))


def broken_links(document: Path, text: str | None = None) -> list[str]:
    """Each relative link of `document` that reaches no file, or no heading of it."""
    text = document.read_text(encoding="utf-8") if text is None else text
    problems = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: ...
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if path_part and not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md":
            own = anchors(text) if path == document else _anchors_of(path)
            if anchor not in own:
                problems.append(f"{target}: no heading #{anchor} in {path.name}")
    return problems


def _defines(source: Path, name: str) -> bool:
    """Whether `source` defines `name` at its top level (or imports it there)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                return True
        elif isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) == name for alias in node.names
        ):
            return True
    return False


def module_exists(dotted: str, root: Path = ROOT) -> bool:
    """`a.b.c` is a module or package under `root`, or a module plus one name it defines."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file():
            source = base.with_suffix(".py")
        elif (base / "__init__.py").is_file():
            source = base / "__init__.py"
        else:
            continue
        rest = parts[n:]
        return not rest or (len(rest) == 1 and _defines(source, rest[0]))
    return False


def missing_names(text: str, root: Path = ROOT) -> list[str]:
    """Paths and modules named in backticks in `text` that do not exist under `root`."""
    problems = []
    for snippet in code(text):
        for path in PATH.findall(snippet):
            if path not in NOT_OURS and not (root / path.rstrip(".")).exists():
                problems.append(f"`{path}`: no such path")
        for module in MODULE.findall(snippet):
            if not module_exists(module, root):
                problems.append(f"`{module}`: no such module")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(document: Path) -> None:
    assert broken_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_and_modules_exist(document: Path) -> None:
    assert missing_names(document.read_text(encoding="utf-8")) == []


# The checks themselves: each must catch what it is for.


def test_slugs_are_githubs() -> None:
    assert github_slug("Several GPU machines (`hosts`)") == "several-gpu-machines-hosts"
    assert github_slug("How Pulumi orders a replacement (pulumi/pulumi @ 1b5949891b3c)") == (
        "how-pulumi-orders-a-replacement-pulumipulumi--1b5949891b3c"
    )
    assert github_slug("`bench.prefix`: prefix-aware routing") == "benchprefix-prefix-aware-routing"
    assert github_slug("The load balancer's metrics") == "the-load-balancers-metrics"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_broken_link_is_caught() -> None:
    document = ROOT / "docs" / "page.md"  # never read: its text is given
    text = "\n".join(
        [
            "# Page",
            "[fine](../README.md#stacks), [also](#page), [web](https://example.com/x.md)",
            "[gone](missing.md), [no heading](../README.md#no-such-heading)",
            "[no own heading](#nowhere), ![gone picture](nothing.png)",
            "`[not a link](missing.md)`",
            "```",
            "[not a link either](missing.md)",
            "```",
        ]
    )
    assert broken_links(document, text) == [
        "missing.md: no such file",
        "../README.md#no-such-heading: no heading #no-such-heading in README.md",
        "#nowhere: no heading #nowhere in page.md",
        "nothing.png: no such file",
    ]


def test_a_stale_path_or_module_is_caught() -> None:
    text = "\n".join(
        [
            "`components/config/settings.py`, `components/steps/`",
            "`python -m components.cli.check`",
            "`components.deployment.program.deploy`, `bench.cold_start`, `standin.hubshim`",
            "`components/gate.py`, `python -m components.check --stack dev`",
            "`components.deployment.program.nothing`, "
            "`components.deployment.program.deploy.too_deep`",
            "```bash",
            ".venv/bin/python -m components.render_config --stack dev",
            "```",
        ]
    )
    assert missing_names(text) == [
        "`components.render_config`: no such module",
        "`components/gate.py`: no such path",
        "`components.check`: no such module",
        "`components.deployment.program.nothing`: no such module",
        "`components.deployment.program.deploy.too_deep`: no such module",
    ]
