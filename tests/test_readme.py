"""The README's config reference is the one generated from the settings models."""

from __future__ import annotations

from pathlib import Path

from components.config.reference import DESCRIPTIONS, config_rows, reference
from components.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end] == reference(), "run: python -m components.config.reference"


def test_every_key_is_described() -> None:
    keys = {key for key, _type, _default in config_rows(Settings)}
    assert keys == set(DESCRIPTIONS), keys ^ set(DESCRIPTIONS)
