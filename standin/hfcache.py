"""Simulated model download into the HuggingFace cache.

The deployment's cache handling (one shared cache, download once, start the other
replicas offline) is only testable if the stand-in uses the cache the way vLLM
does: the hub layout, a lock so that concurrent replicas do not both download,
no download when the cache already holds the model, and a hard failure when
``HF_HUB_OFFLINE=1`` and the model is missing. Each real download appends a line
to ``<HF_HOME>/standin-downloads.log`` so tests can count downloads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

DOWNLOAD_LOG = "standin-downloads.log"
_TRUE = {"1", "true", "yes", "on"}


class OfflineCacheMiss(RuntimeError):
    """The model must be downloaded but the hub is off limits."""


@dataclass(frozen=True)
class HubCache:
    """Where the cache lives: HuggingFace's own environment rules."""

    home: Path
    hub: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HubCache:
        """Resolve like huggingface_hub: HF_HOME, then XDG_CACHE_HOME, then ~/.cache."""
        if env.get("HF_HOME"):
            home = Path(env["HF_HOME"])
        elif env.get("XDG_CACHE_HOME"):
            home = Path(env["XDG_CACHE_HOME"]) / "huggingface"
        else:
            home = Path(os.path.expanduser("~")) / ".cache" / "huggingface"
        hub_override = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        hub = Path(hub_override) if hub_override else home / "hub"
        return cls(home=home, hub=hub)

    def repo_dir(self, model: str) -> Path:
        """`org/name` -> `hub/models--org--name`, as the hub library names it."""
        return self.hub / ("models--" + model.replace("/", "--"))

    def snapshot_dir(self, model: str) -> Path | None:
        """The snapshot `refs/main` points at, if it is complete."""
        repo = self.repo_dir(model)
        try:
            commit = (repo / "refs" / "main").read_text().strip()
        except OSError:
            return None
        snapshot = repo / "snapshots" / commit
        return snapshot if (snapshot / "config.json").is_file() else None


def is_offline(env: Mapping[str, str]) -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) forbids network access."""
    return any(
        env.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _write_blob(repo: Path, snapshot: Path, name: str, content: bytes) -> None:
    digest = hashlib.sha256(content).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(digest + ".incomplete")
    tmp.write_bytes(content)
    tmp.replace(blob)
    link = snapshot / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, snapshot))


def ensure_model(
    model: str,
    *,
    env: Mapping[str, str],
    replica_id: str,
    download_seconds: float,
    log: Callable[[str], None],
) -> Path:
    """Return the model's snapshot directory, "downloading" it first if needed.

    The check happens again after the lock is taken: the replica that waited for
    another one's download must find the files and not download a second time.
    """
    local = Path(model)
    if local.is_dir():
        log(f"model {model} is a local directory; nothing to download")
        return local

    cache = HubCache.from_env(env)
    found = cache.snapshot_dir(model)
    if found is not None:
        log(f"model {model} found in cache {cache.hub}; no download")
        return found
    if is_offline(env):
        raise OfflineCacheMiss(
            f"HF_HUB_OFFLINE is set and the cache {cache.hub} does not hold {model}: "
            "cannot find the requested files in the local cache and outgoing traffic "
            "has been disabled"
        )

    lock_path = cache.hub / ".locks" / cache.repo_dir(model).name / "standin.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is downloading {model}; waiting for its lock")
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            found = cache.snapshot_dir(model)
            if found is not None:
                log(f"model {model} appeared in cache {cache.hub} while waiting; no download")
                return found
            return _download(cache, model, replica_id, download_seconds, log)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _download(
    cache: HubCache,
    model: str,
    replica_id: str,
    download_seconds: float,
    log: Callable[[str], None],
) -> Path:
    log(f"downloading {model} into {cache.hub} ({download_seconds:g}s simulated)")
    started = time.monotonic()
    time.sleep(download_seconds)
    commit = hashlib.sha1(model.encode()).hexdigest()
    repo = cache.repo_dir(model)
    # Files go into a scratch snapshot that is renamed at the end, and refs/main is
    # written last: a replica killed mid-download leaves no snapshot that looks complete.
    scratch = repo / "snapshots" / (commit + ".incomplete")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    config = {"architectures": ["StandinForCausalLM"], "model_type": "standin", "name": model}
    _write_blob(repo, scratch, "config.json", json.dumps(config, indent=2).encode())
    _write_blob(repo, scratch, "tokenizer_config.json", b'{"model_max_length": 4096}\n')
    _write_blob(repo, scratch, "model.safetensors", b"standin weights for " + model.encode())
    snapshot = repo / "snapshots" / commit
    shutil.rmtree(snapshot, ignore_errors=True)
    scratch.rename(snapshot)
    refs = repo / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)
    cache.home.mkdir(parents=True, exist_ok=True)
    line = f"{replica_id} {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {model}\n"
    fd = os.open(cache.home / DOWNLOAD_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    log(f"downloaded {model} in {time.monotonic() - started:.1f}s")
    return snapshot
