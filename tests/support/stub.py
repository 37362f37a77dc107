"""Stand-in vLLM backends as real subprocesses on loopback ports.

Load-balancer tests and benchmarks need backends that can be stopped, killed and
restarted on the same port (that is how nginx sees a replica fail and come back),
so each stub is a separate `python -m standin` process, not an in-process app.

Typical use::

    with stub_backends(2, tokens=8) as stubs:
        url = stubs[0].base_url            # http://127.0.0.1:<port>/v1
        stubs[1].stop()                    # SIGTERM; stop(signal.SIGKILL) to crash it
        stubs[1].start()                   # same port, same replica id, waits until ready

Output of each process goes to a log file (never a pipe that could fill up and
block a busy stub); `Stub.log_text()` reads it for failure messages. Every stub
started here is also killed at interpreter exit, so a failing test cannot leave
processes behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "standin/tiny-chat"

_live: weakref.WeakSet[Stub] = weakref.WeakSet()


class StubStartError(RuntimeError):
    """A stub exited or did not become ready; the message carries its log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's pick, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on the port (no HTTP involved)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(eq=False)
class Stub:
    """One stand-in process; keeps its port and replica id across restarts.

    `args` are extra command-line arguments (vLLM's or the stand-in's), `env`
    extra environment variables; `hf_home` is the HuggingFace cache it uses.
    """

    port: int
    replica_id: str
    hf_home: Path
    log_path: Path
    model: str = DEFAULT_MODEL
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Root URL, for /health, /metrics and other non-OpenAI paths."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the `openai` client takes as `base_url`."""
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "standin",
            "--model",
            self.model,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--replica-id",
            self.replica_id,
            *self.args,
        ]

    def spawn(self) -> None:
        """Start the process without waiting; `wait_ready` (or `start`) waits."""
        if self.running:
            raise RuntimeError(f"stub {self.replica_id} is already running")
        env = dict(os.environ)
        env["HF_HOME"] = str(self.hf_home)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {self.command()}\n".encode())
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _live.add(self)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until GET /health answers 200, as a deployment's readiness check would."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise StubStartError(
                    f"stub {self.replica_id} exited with {code}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise StubStartError(
            f"stub {self.replica_id} not ready within {timeout}s:\n{self.log_tail()}"
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart, on the same port) and wait until ready."""
        self.spawn()
        self.wait_ready(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig` (SIGTERM: graceful; SIGKILL: crash) and reap; returns the exit code.

        A process that ignores SIGTERM for `timeout` seconds is killed. After a
        graceful SIGTERM the code is -15 with PyPI's uvicorn (>= 0.29 re-raises the
        signal once it has shut down) and 0 with Debian's older uvicorn.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def kill(self) -> int | None:
        """Crash the stub (SIGKILL): no graceful shutdown, connections reset."""
        return self.stop(signal.SIGKILL)

    def restart(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop with `sig`, then start again on the same port."""
        self.stop(sig)
        self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class StubFleet:
    """N stubs sharing one scratch directory (logs and, by default, one HF cache)."""

    stubs: list[Stub]
    workdir: Path

    def __getitem__(self, index: int) -> Stub:
        return self.stubs[index]

    def __iter__(self) -> Iterator[Stub]:
        return iter(self.stubs)

    def __len__(self) -> int:
        return len(self.stubs)

    @property
    def ports(self) -> list[int]:
        return [stub.port for stub in self.stubs]

    @property
    def addresses(self) -> list[str]:
        """`127.0.0.1:<port>` for each stub, as nginx `server` lines want them."""
        return [f"{LOOPBACK}:{stub.port}" for stub in self.stubs]

    def stop_all(self) -> None:
        for stub in self.stubs:
            stub.stop()


def knob_args(
    *,
    ttft_ms: float | None = None,
    token_ms: float | None = None,
    tokens: int | None = None,
    download_seconds: float | None = None,
    load_seconds: float | None = None,
    api_key: str | None = None,
    served_model_name: str | None = None,
) -> list[str]:
    """Stand-in command-line flags for the knobs that are set."""
    pairs = [
        ("--ttft-ms", ttft_ms),
        ("--token-ms", token_ms),
        ("--tokens", tokens),
        ("--download-seconds", download_seconds),
        ("--load-seconds", load_seconds),
        ("--api-key", api_key),
        ("--served-model-name", served_model_name),
    ]
    return [item for flag, value in pairs if value is not None for item in (flag, str(value))]


def make_stubs(
    count: int,
    workdir: Path,
    *,
    model: str = DEFAULT_MODEL,
    hf_home: Path | None = None,
    replica_prefix: str = "stub",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ttft_ms: float | None = None,
    token_ms: float | None = None,
    tokens: int | None = None,
    download_seconds: float | None = None,
    load_seconds: float | None = None,
    api_key: str | None = None,
    served_model_name: str | None = None,
) -> StubFleet:
    """Describe `count` stubs on free ports without starting them.

    Replica ids are `<replica_prefix>0`, `<replica_prefix>1`, ...; knobs are those
    of `knob_args` (ttft_ms, token_ms, tokens, download_seconds, load_seconds,
    api_key, served_model_name).
    """
    cache = hf_home if hf_home is not None else workdir / "hf"
    knobs = knob_args(
        ttft_ms=ttft_ms,
        token_ms=token_ms,
        tokens=tokens,
        download_seconds=download_seconds,
        load_seconds=load_seconds,
        api_key=api_key,
        served_model_name=served_model_name,
    )
    args = [*knobs, *extra_args]
    stubs = []
    used: set[int] = set()
    for index in range(count):
        port = free_port()
        while port in used:
            port = free_port()
        used.add(port)
        stubs.append(
            Stub(
                port=port,
                replica_id=f"{replica_prefix}{index}",
                hf_home=cache,
                log_path=workdir / f"{replica_prefix}{index}.log",
                model=model,
                args=tuple(args),
                env=dict(env or {}),
            )
        )
    return StubFleet(stubs=stubs, workdir=workdir)


@contextlib.contextmanager
def stub_backends(
    count: int,
    *,
    workdir: Path | None = None,
    ready_timeout: float = 20.0,
    **options: Any,
) -> Iterator[StubFleet]:
    """Start `count` stubs, wait until all answer /health, stop them all on exit.

    `options` are those of `make_stubs`. Without `workdir` a temporary directory
    holds the logs and the HF cache and is removed afterwards.
    """
    owned = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="standin-stubs-")) if workdir is None else workdir
    directory.mkdir(parents=True, exist_ok=True)
    fleet = make_stubs(count, directory, **options)
    try:
        for stub in fleet:
            stub.spawn()
        for stub in fleet:
            stub.wait_ready(ready_timeout)
        yield fleet
    finally:
        fleet.stop_all()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _kill_leftovers() -> None:
    for stub in list(_live):
        if stub.running and stub.process is not None:
            stub.process.kill()


atexit.register(_kill_leftovers)
