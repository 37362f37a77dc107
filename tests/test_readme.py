"""The config reference in docs/configuration.md is the one generated from the settings models."""

from __future__ import annotations

from components.config.reference import (
    DOCUMENT,
    config_rows,
    current_table,
    reference,
    with_table,
)
from components.config.settings import Settings


def test_config_reference_is_current() -> None:
    assert current_table(DOCUMENT.read_text()) == reference(), (
        "run: python -m components.config.reference --write"
    )


def test_every_key_is_described_on_its_field() -> None:
    undescribed = [key for key, _type, _default, meaning in config_rows(Settings) if not meaning]
    assert undescribed == []


def test_write_replaces_only_the_table() -> None:
    document = "intro\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\nrest\n"
    written = with_table(document, "| new |\n")
    assert written == (
        "intro\n<!-- config-reference:start -->\n| new |\n<!-- config-reference:end -->\nrest\n"
    )
    assert current_table(written) == "| new |\n"
