"""`python -m standin --model ...`: start up like vLLM, then serve.

Order matters and is what the deployment relies on: download (or find) the model,
"load" it, and only then bind the port. Until then connections are refused, as
with vLLM, so readiness checks see the same states they will see in production.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from standin.app import StandinServer
from standin.config import parse_config
from standin.hfcache import HubCache, OfflineCacheMiss, ensure_model
from standin.shutdown import DiesWithEngine, Engine, VllmLikeServer


def _log(message: str) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} standin: {message}", file=sys.stderr, flush=True)


def _running_for() -> float:
    """Seconds since this process (the container's `vllm serve`) started.

    vLLM's load time includes its own start-up (interpreter, imports, CUDA
    init), so the simulated L counts from here: the stand-in's imports are
    inside L rather than added to it.
    """
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # As PID 1 in a container, SIGTERM is ignored unless handled, and `docker stop`
    # would wait for its SIGKILL. Raising unwinds the download, releasing its lock.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in; the exit code is non-zero when start-up fails."""
    config = parse_config(sys.argv[1:] if argv is None else argv)
    _log(
        f"replica {config.replica_id}: model {config.model} served as "
        f"{', '.join(config.served_model_names)}; tensor_parallel_size="
        f"{config.tensor_parallel_size}; ttft={config.ttft_ms:g}ms token={config.token_ms:g}ms "
        f"default tokens={config.tokens}; api key {'set' if config.api_key else 'not set'}"
    )
    for warning in config.warnings:
        print(f"WARNING standin: {warning}", file=sys.stderr, flush=True)
    if config.ignored_args:
        _log(f"accepted but not simulated: {' '.join(config.ignored_args)}")

    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cached = Path(config.model).is_dir() or (
            HubCache.from_env(os.environ).snapshot_dir(config.model) is not None
        )
        ensure_model(
            config.model,
            env=os.environ,
            replica_id=config.replica_id,
            download_seconds=config.download_seconds,
            log=_log,
        )
        # Static adapters load at start-up and a failure stops it
        # (vllm/entrypoints/openai/models/serving.py:124-140); a Hub id is found
        # with `snapshot_download`, from the cache when offline
        # (vllm/lora/utils.py:342-395).
        for name, path in config.lora_modules:
            if not path.startswith("/"):
                _log(f"LoRA adapter {name}: {path}")
                ensure_model(
                    path,
                    env=os.environ,
                    replica_id=config.replica_id,
                    download_seconds=config.download_seconds,
                    log=_log,
                )
        if config.load_seconds:
            # From the start of the process, or from the end of its own download.
            done = config.load_seconds - (_running_for() if cached else 0.0)
            _log(f"loading model weights ({config.load_seconds:g}s simulated from start)")
            time.sleep(max(0.0, done))
    except OfflineCacheMiss as exc:
        print(f"ERROR standin: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)

    _log("model loaded; starting the API server")
    # SIGTERM as vLLM v0.33.0 handles it: the engine drains for up to
    # --shutdown-timeout (or aborts, with 0) while HTTP keeps serving, then the
    # HTTP server closes (standin/shutdown.py).
    engine = Engine()
    server = VllmLikeServer(
        uvicorn.Config(
            DiesWithEngine(StandinServer(config, engine=engine).build(), engine),
            host=config.host,
            port=config.port,
            log_level="info",
            access_log=config.access_log,
        ),
        engine,
        config.shutdown_timeout,
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
