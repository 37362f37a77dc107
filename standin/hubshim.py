"""The stand-in image's `huggingface_hub`: the few calls the download job makes.

Debian 12 has no `python3-huggingface-hub` and the test machines cannot reach
the hub or PyPI from an image build, so the stand-in image installs this module
under the name `huggingface_hub` (docker/standin/Dockerfile). The download job
(`components/containers/vllm/download_job.py`) then runs unchanged in the stand-in image and in
vLLM's: what differs is only the library below it.

What it keeps from the real library, because the deployment depends on it:

- the token comes from `HF_TOKEN`, else the file named by `HF_TOKEN_PATH`, else
  `$HF_HOME/token`;
- a gated model without a token is refused with `GatedRepoError` (401), an
  unknown id with `RepositoryNotFoundError` (401 without a token, 404 with
  one, as the hub answers), a token the hub does not know with a 401;
- an unreachable `HF_ENDPOINT` raises an error whose class is a
  `ConnectionError`, as requests' is;
- files land in the hub cache layout (`blobs/`, `snapshots/<commit>/`,
  `refs/main`), written to `blobs/<id>.incomplete` first and renamed, so a
  full disk fails with `ENOSPC` and progress can be measured from outside.

The "hub" is a catalog in the environment (`STANDIN_HUB_MODELS`,
`STANDIN_HUB_GATED`, `STANDIN_HUB_TOKENS`). Every model carries what real repos
carry besides what vLLM loads: a `.bin` twin of the weights and `original/`. A
model whose name has `mistral` in it is laid out as Mistral's repos are (e.g.
Mistral-7B-Instruct-v0.3): the Hugging Face shards plus the Mistral format, a
`consolidated.safetensors` the index does not list, `params.json` and
`tokenizer.model.v3`, which vLLM v0.17 and later load instead. Weight files
take `STANDIN_DOWNLOAD_SECONDS` in total (both shards together). Each
download of `config.json` appends a line to `<HF_HOME>/standin-downloads.log`
and every file to `standin-hub-files.log`, so tests can count downloads and
see what was fetched. A model named like one of `REAL_SHAPES` carries a real
model's `config.json` and weight size (in the index), for the fit check.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from standin.hfcache import DOWNLOAD_LOG, HubCache

__all__ = [
    "EntryNotFoundError",
    "GatedRepoError",
    "HfApi",
    "HfHubHTTPError",
    "HubConnectionError",
    "LocalEntryNotFoundError",
    "ModelInfo",
    "RepoSibling",
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "hf_hub_download",
]

FILES_LOG = "standin-hub-files.log"
DEFAULT_MODELS = "standin-org/tiny-chat,standin-org/gated-chat,standin-org/mistral-chat"
DEFAULT_GATED = "standin-org/gated-chat"
DEFAULT_TOKENS = "hf_standin_valid_token"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

_LLAMA_31_70B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
_QWEN_25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 151936,
}
REAL_SHAPES: dict[str, tuple[dict[str, object], int, int]] = {
    "llama-3.1-70b-instruct": (_LLAMA_31_70B, 141107412992, 131072),
    "qwen2.5-0.5b-instruct": (_QWEN_25_05B, 988065536, 131072),
}
"""A model named like one of these (`standin-org/Qwen2.5-0.5B-Instruct`) carries
that real model's `config.json`, its weights' `metadata.total_size` in the index
and its tokenizer's `model_max_length`, for the fit check (Llama-3.1-70B-Instruct
and Qwen2.5-0.5B-Instruct as published on the hub; tests/test_memory_fit.py
cites them). The shards themselves keep the stand-in's small size."""


@dataclass
class _Response:
    status_code: int


class HfHubHTTPError(Exception):
    """Carries `response.status_code`, as the real one does."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.response = _Response(status)


class RepositoryNotFoundError(HfHubHTTPError):
    pass


class GatedRepoError(RepositoryNotFoundError):
    pass


class RevisionNotFoundError(HfHubHTTPError):
    pass


class EntryNotFoundError(HfHubHTTPError):
    pass


class LocalEntryNotFoundError(EntryNotFoundError, FileNotFoundError):
    pass


class HubConnectionError(ConnectionError):
    """requests' ConnectionError is an OSError named `ConnectionError`; so is this."""


@dataclass(frozen=True)
class RepoSibling:
    rfilename: str
    size: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    id: str
    sha: str
    siblings: list[RepoSibling] = field(default_factory=list)


def _list(env: Mapping[str, str], name: str, default: str) -> set[str]:
    return {item.strip() for item in env.get(name, default).split(",") if item.strip()}


def _token(env: Mapping[str, str]) -> str | None:
    if env.get("HF_TOKEN"):
        return env["HF_TOKEN"].strip()
    cache = HubCache.from_env(env)
    path = Path(env.get("HF_TOKEN_PATH") or cache.home / "token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _weight_bytes(env: Mapping[str, str]) -> int:
    return int(env.get("STANDIN_HUB_WEIGHT_BYTES", "262144"))


def _files(model: str, env: Mapping[str, str]) -> dict[str, int | bytes]:
    """File name -> content (bytes) or, for weights, a size to fill."""
    weights = _weight_bytes(env)
    config: dict[str, object] = {
        "architectures": ["StandinForCausalLM"],
        "model_type": "standin",
        "name": model,
    }
    index: dict[str, object] = {
        "metadata": {},
        "weight_map": {"a.weight": SHARDS[0], "b.weight": SHARDS[1]},
    }
    tokenizer = {"model_max_length": 4096}
    real = REAL_SHAPES.get(model.rsplit("/", 1)[-1].lower())
    if real is not None:
        config = {**real[0], "name": model}
        index["metadata"] = {"total_size": real[1]}
        tokenizer = {"model_max_length": real[2]}
    files: dict[str, int | bytes] = {
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "README.md": f"# {model}\n".encode(),
        "config.json": json.dumps(config, indent=2).encode(),
        "generation_config.json": b'{"max_new_tokens": 16}\n',
        "tokenizer.json": b'{"model": {"type": "BPE"}}\n',
        "tokenizer_config.json": json.dumps(tokenizer).encode() + b"\n",
        "special_tokens_map.json": b'{"eos_token": "</s>"}\n',
        "model.safetensors.index.json": json.dumps(index).encode(),
        SHARDS[0]: weights,
        SHARDS[1]: weights,
        "pytorch_model.bin": 2 * weights,
        "original/consolidated.00.pth": 2 * weights,
        "original/params.json": b"{}\n",
    }
    if "mistral" in model:
        files["consolidated.safetensors"] = 2 * weights
        files["params.json"] = b'{"dim": 64, "n_layers": 2}\n'
        files["tokenizer.model.v3"] = b"sentencepiece v3\n"
    return files


def _commit(model: str) -> str:
    return hashlib.sha1(model.encode()).hexdigest()


def _check_access(model: str, env: Mapping[str, str]) -> None:
    endpoint = env.get("HF_ENDPOINT")
    if endpoint:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=3).close()
        except OSError as err:
            raise HubConnectionError(
                f"HTTPSConnectionPool(host={parts.hostname!r}, port={port}): "
                f"Max retries exceeded ({err})"
            ) from err
    token = _token(env)
    url = f"{endpoint or 'https://huggingface.co'}/api/models/{model}"
    if token is not None and token not in _list(env, "STANDIN_HUB_TOKENS", DEFAULT_TOKENS):
        raise HfHubHTTPError(
            f"401 Client Error: Unauthorized for url: {url} "
            "(Invalid credentials in Authorization header)",
            401,
        )
    if model not in _list(env, "STANDIN_HUB_MODELS", DEFAULT_MODELS):
        status = 404 if token else 401
        raise RepositoryNotFoundError(
            f"{status} Client Error. Repository Not Found for url: {url}. "
            "Please make sure you specified the correct `repo_id` and `repo_type`.",
            status,
        )
    if model in _list(env, "STANDIN_HUB_GATED", DEFAULT_GATED) and token is None:
        raise GatedRepoError(
            f"401 Client Error. Cannot access gated repo for url {url}. "
            f"Access to model {model} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in.",
            401,
        )


class HfApi:
    def model_info(
        self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False
    ) -> ModelInfo:
        env = os.environ
        _check_access(repo_id, env)
        files = _files(repo_id, env)
        siblings = [
            RepoSibling(name, (len(v) if isinstance(v, bytes) else v) if files_metadata else None)
            for name, v in files.items()
        ]
        return ModelInfo(id=repo_id, sha=_commit(repo_id), siblings=siblings)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _fill(tmp: Path, size: int, seconds: float) -> str:
    """Write `size` bytes in chunks over `seconds`; the sha256 names the blob."""
    digest = hashlib.sha256()
    chunk = 65536
    steps = max(1, -(-size // chunk))
    pause = seconds / steps
    with tmp.open("wb") as out:
        written = 0
        while written < size:
            block = bytes([written // chunk % 251]) * min(chunk, size - written)
            out.write(block)
            out.flush()
            digest.update(block)
            written += len(block)
            if pause:
                time.sleep(pause)
    return digest.hexdigest()


def hf_hub_download(repo_id: str, filename: str, *, revision: str | None = None) -> str:
    env = os.environ
    _check_access(repo_id, env)
    files = _files(repo_id, env)
    if filename not in files:
        raise EntryNotFoundError(f"404 Client Error. Entry Not Found: {filename}", 404)
    cache = HubCache.from_env(env)
    repo = cache.repo_dir(repo_id)
    commit = _commit(repo_id)
    snapshot = repo / "snapshots" / commit
    target = snapshot / filename
    if target.is_file():
        return str(target)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    content = files[filename]
    tmp = blobs / f"{hashlib.sha1(filename.encode()).hexdigest()}.incomplete"
    if isinstance(content, bytes):
        tmp.write_bytes(content)
        blob_id = hashlib.sha256(content).hexdigest()
    else:
        total = float(env.get("STANDIN_DOWNLOAD_SECONDS", "0") or 0)
        # Both indexed shards together take the simulated download time.
        blob_id = _fill(tmp, content, total * content / (2 * _weight_bytes(env)))
    blob = blobs / blob_id
    tmp.replace(blob)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.symlink_to(os.path.relpath(blob, target.parent))
    refs = repo / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / (revision or "main")).write_text(commit)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _append(cache.home / FILES_LOG, f"{stamp} {repo_id} {filename}\n")
    if filename == "config.json":
        _append(cache.home / DOWNLOAD_LOG, f"download-job {stamp} {repo_id}\n")
    return str(target)
