"""The stand-in as vLLM v0.33.0 serves what model pools need: embeddings from a
pooling runner, LoRA adapters from `--lora-modules` (listed in /v1/models and
answered by name), each adapter found in the cache at start-up like the model.

Real `python -m standin` processes through the official `openai` client."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from standin.config import parse_config
from tests.support.stub import free_port, stub_backends
from tests.test_standin import run_standin

BASE = "acme/tiny-chat"
ADAPTER = "acme/tiny-lora"


@pytest.fixture(scope="module")
def lora():
    with stub_backends(
        1,
        model=BASE,
        served_model_name="tiny",
        tokens=3,
        ttft_ms=5,
        token_ms=1,
        extra_args=("--enable-lora", "--max-loras", "2", "--lora-modules", f"sql={ADAPTER}"),
    ) as stubs:
        yield stubs[0]


@pytest.fixture(scope="module")
def embedder():
    with stub_backends(
        1, model="acme/tiny-embed", served_model_name="embed", extra_args=("--runner", "pooling")
    ) as stubs:
        yield stubs[0]


def client(stub) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="unused", max_retries=0, timeout=10)


def test_adapters_are_listed_after_the_base_model(lora):
    cards = {m.id: m for m in client(lora).models.list()}
    assert list(cards) == ["tiny", "sql"]
    assert cards["sql"].root == ADAPTER  # type: ignore[attr-defined]
    assert cards["sql"].parent == "tiny"  # type: ignore[attr-defined]


def test_a_request_naming_an_adapter_is_answered_as_the_adapter(lora):
    got = client(lora).completions.create(model="sql", prompt="hi", max_tokens=2)
    assert got.model == "sql"
    base = client(lora).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert base.model == "tiny"
    with pytest.raises(openai.NotFoundError):
        client(lora).completions.create(model="other", prompt="hi", max_tokens=1)


def test_the_adapter_was_fetched_like_the_model(lora):
    snapshots = list((lora.hf_home / "hub").glob("models--acme--tiny-lora/snapshots/*"))
    assert snapshots, "the adapter is not in the cache"


def test_embeddings_in_vllms_shape_floats_and_base64(embedder):
    # The openai client asks for base64 by default and decodes it.
    got = client(embedder).embeddings.create(model="embed", input=["one", "two"])
    assert got.model == "embed" and [d.index for d in got.data] == [0, 1]
    for item in got.data:
        assert math.isclose(sum(x * x for x in item.embedding), 1.0, rel_tol=1e-5)
    raw = httpx.post(
        f"{embedder.base_url}/embeddings",
        json={"model": "embed", "input": "one", "encoding_format": "float"},
    ).json()
    assert raw["object"] == "list" and raw["id"].startswith("embd-")
    assert raw["data"][0]["object"] == "embedding"
    assert raw["data"][0]["embedding"] == pytest.approx(got.data[0].embedding, rel=1e-6)
    assert raw["usage"]["prompt_tokens"] == 1


def test_a_pooling_model_has_no_generate_routes_and_a_generative_one_no_embeddings(embedder, lora):
    with pytest.raises(openai.NotFoundError):
        client(embedder).completions.create(model="embed", prompt="hi", max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client(lora).embeddings.create(model="tiny", input="hi")


def test_lora_options_as_vllm_parses_them():
    config = parse_config(
        [
            BASE,
            "--enable-lora",
            "--lora-modules",
            "a=/models/a",
            '{"name": "b", "path": "org/b"}',
            "--max-loras",
            "2",
            "--max-lora-rank",
            "64",
        ],
        env={},
    )
    assert config.lora_modules == (("a", "/models/a"), ("b", "org/b"))
    assert (config.max_loras, config.max_lora_rank, config.enable_lora) == (2, 64, True)
    assert not config.ignored_args
    with pytest.raises(SystemExit):
        parse_config([BASE, "--lora-modules", "a=/models/a"], env={})


def test_offline_without_the_adapter_in_the_cache_fails_to_start(tmp_path):
    hf = tmp_path / "hf"
    local = tmp_path / "model"  # the base model is a local directory: nothing to fetch
    local.mkdir()
    result = run_standin(
        [
            str(local),
            "--port",
            str(free_port()),
            "--host",
            "127.0.0.1",
            "--enable-lora",
            "--lora-modules",
            f"sql={ADAPTER}",
        ],
        {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "HF_HUB_OFFLINE" in result.stderr and ADAPTER in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_verify_step_probes_each_name_by_its_kind(lora, embedder, capsys, monkeypatch) -> None:
    from components.plan.specs import SPEC_ENV, VerifySpec, encode
    from components.steps import verify

    def run(spec: VerifySpec) -> int:
        monkeypatch.setenv(SPEC_ENV, encode(spec))
        return verify.main()

    assert run(VerifySpec(lora.url, ("tiny", "sql"), 120, probe=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["answered"] == {"tiny": "tiny", "sql": "sql"}
    embed = VerifySpec(embedder.url, ("embed",), 5, embeddings=("embed",), probe=True)
    assert run(embed) == 0
    assert json.loads(capsys.readouterr().out)["answered"] == {"embed": "embed"}
    # Asked for a completion, an embedding model has no such route: the step fails.
    assert run(VerifySpec(embedder.url, ("embed",), 5, probe=True)) == 1
    assert "a completion request for 'embed'" in capsys.readouterr().err
    # Without probe, today's check of /v1/models alone.
    assert run(VerifySpec(lora.url, ("sql",), 120)) == 0
    assert json.loads(capsys.readouterr().out) == {"url": lora.url, "models": ["tiny", "sql"]}
