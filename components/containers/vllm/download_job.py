"""The download job: runs inside the vLLM image and fills the shared Hugging Face cache.

Run in a one-shot container with the image's own Python (standard library and
`huggingface_hub` only), so files land where the replicas look for them offline. It takes
the files vLLM loads and nothing else (docs/vllm.md, "Model files and caches"); the
token comes as a file. `--facts` prints a model's config and weight bytes for the fit
check instead; exit codes and the last line tell the step the cause.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_AUTH = 10
EXIT_NOT_FOUND = 11
EXIT_DISK_FULL = 12
EXIT_NETWORK = 13
ERROR_PREFIX = "vllm-nginx-download: error: "
FACTS_PREFIX = "vllm-nginx-facts: "
"""`--facts` prints one line with this prefix and the JSON the fit check reads."""

WEIGHT_FORMATS = (".safetensors", ".bin", ".pt")
"""vLLM's `load_format=auto` order: the first extension the repository has wins."""
MISTRAL_WEIGHTS = "consolidated*.safetensors"
"""At the top of a repository, they make `load_format=auto` load Mistral's format."""
MISTRAL_INDEX = "consolidated.safetensors.index.json"
MISTRAL_TOKENIZER = "tokenizer.model.v*"
"""Mistral's sentencepiece tokenizers (`.v3`, `.v7`); `tekken.json` is a `.json`."""
OTHER_WEIGHTS = (".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".ot", ".tflite")
NOT_NEEDED_BIN = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
"""Training leftovers vLLM filters out of `.bin`/`.pt` checkpoints."""
SUPPORT_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py", ".vocab", ".spm")
"""Config, tokenizer (sentencepiece, tiktoken, BPE vocab/merges), chat templates,
and `trust_remote_code` modules."""
IGNORED_DIRS = ("original/",)
SAFETENSORS_INDEX = "model.safetensors.index.json"


def hub_cache(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps models: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def repo_folder(model: str) -> str:
    return "models--" + model.replace("/", "--")


def mistral_format(files: Iterable[str]) -> bool:
    """vLLM's `load_format=auto` picks Mistral's format for this repository."""
    return any("/" not in f and fnmatch.fnmatch(f, MISTRAL_WEIGHTS) for f in files)


def select_files(files: Iterable[str]) -> tuple[list[str], list[str]]:
    """(weights, support files) that vLLM will read, from a repository listing."""
    candidates = [f for f in files if not f.startswith(IGNORED_DIRS)]
    weights: list[str] = []
    if mistral_format(candidates):
        weights = [f for f in candidates if "/" not in f and fnmatch.fnmatch(f, MISTRAL_WEIGHTS)]
    for suffix in WEIGHT_FORMATS if not weights else ():
        weights = [f for f in candidates if "/" not in f and f.endswith(suffix)]
        if weights:
            break
    weights = [f for f in weights if Path(f).name not in NOT_NEEDED_BIN]
    support = [
        f
        for f in candidates
        if (f.endswith(SUPPORT_SUFFIXES) or fnmatch.fnmatch(Path(f).name, MISTRAL_TOKENIZER))
        and not f.endswith(WEIGHT_FORMATS + OTHER_WEIGHTS)
    ]
    return sorted(weights), sorted(support)


def indexed_shards(index: dict[str, Any], weights: Sequence[str]) -> list[str]:
    """The safetensors files the index maps weights to (vLLM ignores the others)."""
    listed = set((index.get("weight_map") or {}).values())
    kept = [w for w in weights if w in listed]
    return kept or list(weights)


def _manifest_path(cache: Path, model: str) -> Path:
    return cache.parent / "vllm-nginx" / "downloads" / (repo_folder(model) + ".json")


def cached(cache: Path, model: str) -> dict[str, Any] | None:
    """The manifest of an earlier complete download, if every file is still there."""
    try:
        manifest = json.loads(_manifest_path(cache, model).read_text())
        repo = cache / repo_folder(model)
        commit = (repo / "refs" / "main").read_text().strip()
    except (OSError, ValueError):
        return None
    if manifest.get("commit") != commit:
        return None
    snapshot = repo / "snapshots" / commit
    if all((snapshot / name).is_file() for name in manifest.get("files", {})):
        return dict(manifest)
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def say(message: str) -> None:
    print(f"[download] {message}", flush=True)


class Progress:
    """Reports files and bytes at a fixed interval, so a long download never looks hung.

    Bytes of the file being fetched are read from the size of its `.incomplete`
    blob, which is where huggingface_hub writes before renaming.
    """

    def __init__(self, blobs: Path, files: int, total: int, interval: float) -> None:
        self.blobs = blobs
        self.files = files
        self.total = total
        self.interval = interval
        self.done_files = 0
        self.done_bytes = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def partial(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.blobs.glob("*.incomplete"))
        except OSError:
            return 0

    def line(self) -> str:
        got = min(self.done_bytes + self.partial(), self.total)
        pct = 100.0 * got / self.total if self.total else 100.0
        elapsed = time.monotonic() - self.started
        return (
            f"{self.done_files}/{self.files} files, {_size(got)} of {_size(self.total)} "
            f"({pct:.0f}%) after {elapsed:.0f} s"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            say("progress: " + self.line())


def download(model: str, interval: float) -> int:
    import huggingface_hub  # the image's own; imported here so --help works without it

    cache = hub_cache(os.environ)
    found = cached(cache, model)
    if found is not None:
        say(
            f"{model} is already in the cache (commit {found['commit'][:12]}, "
            f"{len(found['files'])} files); nothing to download"
        )
        return EXIT_OK

    say(f"asking the hub about {model}")
    info = huggingface_hub.HfApi().model_info(model, files_metadata=True)
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    weights, support = select_files(sizes)
    if not weights:
        raise LookupError(f"{model} has no safetensors, .bin or .pt weights vLLM could load")
    index = MISTRAL_INDEX if mistral_format(weights) else SAFETENSORS_INDEX
    if index in support and weights[0].endswith(".safetensors"):
        index_path = huggingface_hub.hf_hub_download(model, index)
        weights = indexed_shards(json.loads(Path(index_path).read_text()), weights)
    files = support + weights
    total = sum(sizes.get(f, 0) for f in files)
    skipped = sorted(set(sizes) - set(files))
    say(
        f"{model} at {str(info.sha)[:12]}: {len(files)} files, {_size(total)} "
        f"({len(weights)} weight files {Path(weights[0]).suffix}"
        f"{', Mistral format' if mistral_format(weights) else ''}); not needed: "
        + (", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else "") if skipped else "none")
    )
    blobs = cache / repo_folder(model) / "blobs"
    with Progress(blobs, len(files), total, interval) as progress:
        for name in files:
            huggingface_hub.hf_hub_download(model, name)
            progress.done_files += 1
            progress.done_bytes += sizes.get(name, 0)
            say(f"got {name} ({_size(sizes.get(name, 0))}); {progress.line()}")
    commit = (cache / repo_folder(model) / "refs" / "main").read_text().strip()
    manifest = _manifest_path(cache, model)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"model": model, "commit": commit, "files": {f: sizes.get(f, 0) for f in files}})
    )
    tmp.replace(manifest)
    say(f"done: {model} at {commit[:12]}, {len(files)} files, {_size(total)}")
    return EXIT_OK


def facts(model: str) -> dict[str, Any]:
    """What the fit check needs, without the weights: `config.json` and the bytes
    of the weight files this job would fetch.

    A repository is asked for its listing with sizes and for its small JSON files
    only; a local path (vLLM loads it from disk) is read where it is.
    """
    sizes: dict[str, int]
    if model.startswith("/"):
        root = Path(model)
        if not root.is_dir():
            raise LookupError(f"{model} is not a directory in the vLLM image")
        sizes = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

        def read(name: str) -> Any:
            return json.loads((root / name).read_text())

    else:
        import huggingface_hub  # the image's own, as in download()

        info = huggingface_hub.HfApi().model_info(model, files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}

        def read(name: str) -> Any:
            return json.loads(Path(huggingface_hub.hf_hub_download(model, name)).read_text())

    weights, support = select_files(sizes)
    if not weights:
        raise LookupError(f"{model} has no safetensors, .bin or .pt weights vLLM could load")
    source = "the weight files' sizes"
    total = sum(sizes.get(w, 0) for w in weights)
    index = MISTRAL_INDEX if mistral_format(weights) else SAFETENSORS_INDEX
    if index in support and weights[0].endswith(".safetensors"):
        listing = read(index)
        weights = indexed_shards(listing, weights)
        total = sum(sizes.get(w, 0) for w in weights)
        declared = (listing.get("metadata") or {}).get("total_size")
        if isinstance(declared, int) and declared > 0:
            total, source = declared, f"{index} metadata.total_size"
    config = read("config.json") if "config.json" in sizes else None
    return {
        "model": model,
        "config": config,
        "weight_bytes": total,
        "weights_from": source,
        "weight_files": len(weights),
    }


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def classify(exc: BaseException, model: str, has_token: bool) -> tuple[int, str]:
    """Exit code and a sentence a person can act on; by class name, so that any
    `huggingface_hub` version (and requests or httpx below it) maps the same."""
    chain = _chain(exc)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return EXIT_DISK_FULL, "disk full: no space left in the Hugging Face cache"
    if "GatedRepoError" in names:
        why = "no token was given" if not has_token else "the token has no access to it"
        return EXIT_AUTH, (
            f"401: {model} is gated and {why}; accept its terms on the model page "
            "and set hfToken (pulumi config set --secret hfToken)"
        )
    status = next((s for s in map(_status, chain) if s is not None), None)
    if "RepositoryNotFoundError" in names or "RevisionNotFoundError" in names or status == 404:
        # The hub answers 401 rather than 404 to a request without a token.
        private = "" if has_token else " (or it is private: set hfToken)"
        return EXIT_NOT_FOUND, f"{status or 404}: no model {model} on the hub{private}"
    if status in (401, 403):
        return EXIT_AUTH, f"{status}: the hub refused the token for {model} (invalid or expired)"
    network = {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "ProxyError"}
    if names & network or "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return EXIT_NETWORK, f"cannot reach the hub at {endpoint}: no network, DNS or proxy"
    if isinstance(exc, LookupError):
        return EXIT_NOT_FOUND, str(exc)
    return EXIT_OTHER, f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help="a repository to fetch; again for more (a pool's model, then its LoRA adapters)",
    )
    parser.add_argument("--progress-seconds", type=float, default=15.0)
    parser.add_argument(
        "--facts", action="store_true", help="print what the fit check needs; download nothing"
    )
    args = parser.parse_args(argv)
    token_path = os.environ.get("HF_TOKEN_PATH")
    has_token = bool(token_path and Path(token_path).is_file())
    if args.facts:
        # The fit check asks about the pool's model: the first --model. LoRA
        # adapters (any further --model) are small and not counted.
        model = args.model[0]
        try:
            print(FACTS_PREFIX + json.dumps(facts(model)), flush=True)
            return EXIT_OK
        except Exception as exc:
            code, cause = classify(exc, model, has_token)
            print(ERROR_PREFIX + cause, flush=True)
            return code
    for model in args.model:
        try:
            download(model, args.progress_seconds)
        except Exception as exc:
            code, cause = classify(exc, model, has_token)
            print(ERROR_PREFIX + cause, flush=True)
            return code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
