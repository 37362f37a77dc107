"""Start-up of the stand-in: flags, the exec script, the gRPC server, the port on stdout.

As the real host's `main` (main.go:112-215): `-version` prints the version and exits;
the exec script is found (below); with an engine address the engine's health is
checked every 5 minutes and a dead engine stops the host (rpcutil health.go:29-68); the
server listens on 127.0.0.1 on a port the kernel picks (rpcutil serve.go:79-80) and the
port is the first line on stdout, which is how the engine learns where to connect
(pkg/v3@v3.274.1 resource/plugin/plugin.go:376-431, `parsePort` 450-474); SIGINT stops
serving (main.go:176-183). A missing exec script is an error before any port is printed
(main.go:146-162), exit code 1 (`cmdutil.Exit`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime.proto import language_pb2_grpc

from tests.support.python_language_host.flags import FlagError, Flags, parse
from tests.support.python_language_host.host import VERSION, LanguageHost

EXEC_NAME = "pulumi-language-python-exec"
#: Where scripts/pulumi-toolchain.sh keeps its Go module cache.
TOOLCHAIN_CACHE = "/var/cache/vllm-nginx/pulumi-toolchain"
#: The exec script inside the sdk/v3 module (the proxy serves it; the host's module it is not).
EXEC_IN_MODULE = f"github.com/pulumi/pulumi/sdk/v3@{VERSION}/python/cmd/{EXEC_NAME}"
HEALTH_INTERVAL_SECONDS = 300.0


def executor_candidates() -> list[Path]:
    """Where the exec script may be, in order.

    The real host takes `-use-executor` as given, or else the script next to its own
    binary (main.go:146-162). The stand-in's launcher is not in a Pulumi install, so
    after `bin/` next to it come $PULUMI_LANGUAGE_PYTHON_EXEC, then the sdk/v3 module of
    the same version in $GOMODCACHE and in the toolchain cache
    ($PULUMI_TOOLCHAIN_CACHE/go/mod, default /var/cache/vllm-nginx/pulumi-toolchain).
    """
    candidates: list[Path] = []
    explicit = os.environ.get("PULUMI_LANGUAGE_PYTHON_EXEC", "")
    if explicit:
        candidates.append(Path(explicit))
    candidates.append(Path(__file__).resolve().parent / "bin" / EXEC_NAME)
    gomodcache = os.environ.get("GOMODCACHE", "")
    if gomodcache:
        candidates.append(Path(gomodcache) / EXEC_IN_MODULE)
    cache = os.environ.get("PULUMI_TOOLCHAIN_CACHE", "") or TOOLCHAIN_CACHE
    candidates.append(Path(cache) / "go" / "mod" / EXEC_IN_MODULE)
    return candidates


def find_executor(flags: Flags) -> str | None:
    if flags.use_executor:
        return flags.use_executor
    for candidate in executor_candidates():
        if candidate.is_file():
            return str(candidate)
    return None


class _Health:
    """`rpcutil.Healthcheck`: the engine's grpc.health.v1 Check every interval; any
    answer but OK or UNIMPLEMENTED stops the host."""

    def __init__(self, stop: threading.Event, interval: float = HEALTH_INTERVAL_SECONDS) -> None:
        self.stop = stop
        self.interval = interval

    def watch(self, address: str) -> None:
        if address:
            threading.Thread(target=self._loop, args=(address,), daemon=True).start()

    def _loop(self, address: str) -> None:
        channel = grpc.insecure_channel(address)
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        while not self.stop.wait(self.interval):
            try:
                check(b"", timeout=30)  # an empty HealthCheckRequest
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    self.stop.set()
                    return


def _logger(flags: Flags) -> Any:
    def log(level: int, message: str) -> None:
        if flags.logtostderr and flags.verbose >= level:
            stamp = datetime.now().strftime("%m%d %H:%M:%S.%f")
            print(f"I{stamp} {os.getpid()} pulumi-language-python] {message}", file=sys.stderr)

    return log


def main(argv: Sequence[str]) -> int:
    try:
        flags = parse(argv)
    except FlagError as exc:
        print(exc, file=sys.stderr)
        return 2
    if flags.version:
        print(VERSION)
        return 0
    executor = find_executor(flags)
    if executor is None:
        looked = ", ".join(str(p) for p in executor_candidates())
        print(f"error: missing executor {EXEC_NAME} (looked at {looked})", file=sys.stderr)
        return 1
    log = _logger(flags)
    log(3, f"language host identified executor from path: `{executor}`")

    stop = threading.Event()
    health = _Health(stop)
    health.watch(flags.engine_address)
    host = LanguageHost(executor, flags.engine_address, flags.tracing, health.watch, log)
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=_GRPC_CHANNEL_OPTIONS)
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(host, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(port, flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(grace=5).wait()
    return 0
