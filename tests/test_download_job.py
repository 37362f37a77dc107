"""The download job's own logic, in-process with the stand-in hub library.

The job script runs unchanged here, with `standin.hubshim` installed as
`huggingface_hub` (as the stand-in image does) and a temporary HF_HOME: which
files it takes, the manifest that makes a warm run offline and instant, and how
each failure maps to an exit code and a sentence. The same job on a real engine,
through `components.steps.download`, is in tests/test_e2e_download.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.containers.vllm import download_job as job
from standin import hubshim


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setitem(sys.modules, "huggingface_hub", hubshim)
    for name in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("STANDIN_DOWNLOAD_SECONDS", "0")
    yield tmp_path


def test_selects_what_vllm_loads() -> None:
    files = [
        "config.json",
        "tokenizer.model",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        "original/tokenizer.model",
        "README.md",
        "chat_template.jinja",
    ]
    weights, support = job.select_files(files)
    assert weights == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert support == ["chat_template.jinja", "config.json", "tokenizer.model"]
    bin_only, _ = job.select_files(["pytorch_model.bin", "training_args.bin", "config.json"])
    assert bin_only == ["pytorch_model.bin"]
    index = {"weight_map": {"x": "a.safetensors"}}
    assert job.indexed_shards(index, ["a.safetensors", "b.safetensors"]) == ["a.safetensors"]


def test_a_mistral_format_repo_is_taken_in_mistral_format() -> None:
    """vLLM >= 0.17's `load_format=auto`: `consolidated*.safetensors` at the top
    wins over the Hugging Face shards beside it, with `params.json` and
    Mistral's tokenizer (Mistral-7B-Instruct-v0.3's layout)."""
    files = [
        "config.json",
        "params.json",
        "consolidated.safetensors",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer.model.v3",
        "tokenizer_config.json",
        "README.md",
    ]
    weights, support = job.select_files(files)
    assert weights == ["consolidated.safetensors"]
    assert "params.json" in support and "tokenizer.model.v3" in support
    assert not [f for f in support if f.startswith("model-")]
    sharded, _ = job.select_files(
        ["consolidated-00001-of-00002.safetensors", "consolidated-00002-of-00002.safetensors",
         "consolidated.safetensors.index.json", "tekken.json", "params.json"]
    )  # fmt: skip
    assert len(sharded) == 2
    # Weights only at the top of the repository, where vLLM globs them.
    nested, _ = job.select_files(["sub/consolidated.safetensors", "model.safetensors"])
    assert nested == ["model.safetensors"]


def test_downloads_then_finds_the_cache_warm(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert job.main(["--model", "standin-org/tiny-chat", "--progress-seconds", "5"]) == 0
    fetched = [line.split()[-1] for line in (hub / hubshim.FILES_LOG).read_text().splitlines()]
    assert "model-00001-of-00002.safetensors" in fetched
    assert "config.json" in fetched
    assert not [f for f in fetched if f.startswith("original/") or f.endswith(".bin")]
    assert "consolidated.safetensors" not in fetched
    assert "README.md" not in fetched
    capsys.readouterr()
    assert job.main(["--model", "standin-org/tiny-chat"]) == 0
    assert "already in the cache" in capsys.readouterr().out
    assert len((hub / "standin-downloads.log").read_text().splitlines()) == 1


def test_downloads_a_mistral_format_repo_as_vllm_would_load_it(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert job.main(["--model", "standin-org/mistral-chat"]) == 0
    fetched = [line.split()[-1] for line in (hub / hubshim.FILES_LOG).read_text().splitlines()]
    assert "consolidated.safetensors" in fetched
    assert {"params.json", "tokenizer.model.v3", "config.json"} <= set(fetched)
    assert not [f for f in fetched if f.startswith("model-0000")]
    assert "1 weight files .safetensors, Mistral format" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "token", "code", "text"),
    [
        ("standin-org/gated-chat", None, job.EXIT_AUTH, "401: standin-org/gated-chat is gated"),
        ("standin-org/gated-chat", "hf_wrong", job.EXIT_AUTH, "401: the hub refused the token"),
        ("standin-org/nope", None, job.EXIT_NOT_FOUND, "401: no model standin-org/nope on the"),
        ("standin-org/nope", "hf_standin_valid_token", job.EXIT_NOT_FOUND, "404: no model"),
        ("standin-org/gated-chat", "hf_standin_valid_token", job.EXIT_OK, None),
    ],
)
def test_failures_map_to_a_cause(
    hub: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model: str,
    token: str | None,
    code: int,
    text: str | None,
) -> None:
    if token is not None:
        (hub / "token-file").write_text(token)
        monkeypatch.setenv("HF_TOKEN_PATH", str(hub / "token-file"))
    assert job.main(["--model", model]) == code
    out = capsys.readouterr().out
    if text is not None:
        assert job.ERROR_PREFIX + text.split(":")[0] in out
        assert text in out
    assert "hf_standin_valid_token" not in out


def test_unreachable_hub_is_a_network_error(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert job.main(["--model", "standin-org/tiny-chat"]) == job.EXIT_NETWORK
    assert "cannot reach the hub at http://127.0.0.1:9" in capsys.readouterr().out


def test_full_disk_is_named() -> None:
    error = OSError(28, "No space left on device")
    assert job.classify(error, "m", False)[0] == job.EXIT_DISK_FULL


def test_a_pools_model_and_adapters_in_one_job(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--model` again for each adapter: each fetched once, in order; the first
    repository that fails stops the job with its own cause."""
    monkeypatch.setenv("STANDIN_HUB_MODELS", "standin-org/tiny-chat,standin-org/tiny-lora")
    argv = ["--model", "standin-org/tiny-chat", "--model", "standin-org/tiny-lora"]
    assert job.main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("done: standin-org/tiny-chat") < out.index("done: standin-org/tiny-lora")
    for repo in ("models--standin-org--tiny-chat", "models--standin-org--tiny-lora"):
        assert list((hub / "hub" / repo / "snapshots").iterdir()), repo
    assert job.main([*argv, "--model", "standin-org/nope"]) == job.EXIT_NOT_FOUND
    out = capsys.readouterr().out
    assert out.count("already in the cache") == 2
    assert job.ERROR_PREFIX + "401: no model standin-org/nope" in out
