"""Adapter names and paths by the grammar of `vllm serve --lora-modules name=path`
(docs/vllm.md, LoRA adapters): what passes reaches the replica as that name and
path, read back by the stand-in's copy of vLLM's parser; the rest is refused on
its key as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config.loading import parse_settings
from components.config.problems import ConfigError
from components.plan.build import build_plan
from standin.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
KEY = "vllm-nginx:models[1].adapters[0]"
LORA = "`vllm serve --lora-modules` reads an entry with ',' as JSON, which 'name=path' is not, "
SPLIT = "must not contain '=': `vllm serve --lora-modules name=path` splits at the first '='"


def config(name: str, path: str) -> dict[str, str]:
    """Two pools, the second with one adapter (the key then has a non-zero index)."""
    adapter = {"name": name, "model": path}
    models = [
        {"name": "chat", "model": "org/chat"},
        {"name": "lora", "model": "org/base", "adapters": [adapter]},
    ]
    return {"models": json.dumps(models)}


ACCEPTED = [
    ("sql", "org/sql-lora"),
    ("sql.v2", "/adapters/sql"),
    ("org/sql:1", "/adapters/a=b"),  # the path keeps an '=': vLLM splits at the first
    ("a+b@c", "/adapters/x=y=z"),
    ("x~y|z", "org/sql_lora.v2"),
]


@pytest.mark.parametrize(("name", "path"), ACCEPTED)
def test_an_accepted_adapter_reaches_vllm_as_written(name: str, path: str) -> None:
    plan = build_plan(parse_settings(config(name, path)), project_dir=ROOT, python="/py")
    command = next(r.command for r in plan.replicas if r.pool == "lora")
    assert parse_config(command, env={}).lora_modules == ((name, path),)


REFUSED = [
    ("a=b", "org/x", "name", SPLIT),
    ("a,b", "org/x", "name", "must not contain ',': " + LORA),
    ("-a", "org/x", "name", "must not start with '-': `vllm serve --lora-modules` would"),
    ("{a}", "org/x", "name", "must be non-empty and contain no spaces"),
    ("a b", "org/x", "name", "must be non-empty and contain no spaces"),
    ("sql", "/adapters/a,b", "model", "must not contain ',': " + LORA),
    ("sql", "{x}", "model", "must be non-empty and contain no spaces"),
    ("sql", "-x", "model", "must not start with '-'"),
    ("sql", "org/a=b", "model", "must be a Hugging Face repo id"),
]


@pytest.mark.parametrize(("name", "path", "field", "message"), REFUSED)
def test_a_refused_adapter_is_one_problem_on_its_key(
    name: str, path: str, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(config(name, path))
    found = [(p.key, p.rule) for p in caught.value.problems]
    assert len(found) == 1, found
    assert found[0][0] == f"{KEY}.{field}"
    assert found[0][1].startswith(message)
    assert name not in found[0][1] and path not in found[0][1]
