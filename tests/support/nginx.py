"""Run the real nginx binary against rendered configs, on loopback only.

A config that only looks right is worth little: these helpers make every test
go through `nginx -t` or a real nginx master, so a directive the installed
nginx rejects fails a test instead of a deployment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.nginx_config import NginxRuntime, render_guide_config, render_nginx_config
from components.settings import LoadBalancerSettings, Upstream

LOOPBACK = "127.0.0.1"
_NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class NginxMissingError(RuntimeError):
    pass


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_nginx() -> str:
    """The nginx binary; in CI a missing nginx fails, locally the test is skipped.

    A skip in CI would let the one check that matters (does nginx accept the
    config) silently stop running.
    """
    import pytest

    binary = find_nginx()
    if binary is None:
        message = "nginx binary not found (apt-get install -y nginx-light)"
        if in_ci():
            pytest.fail(message + "; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    return binary


def nginx_version(binary: str) -> str:
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def make_sandbox(prefix: str = "nginx-test-") -> Path:
    """A directory nginx's workers can reach.

    Run as root without a `user` directive, nginx's workers run as an
    unprivileged user; pytest's tmp_path sits under a 0700 directory they
    cannot enter, so temp files would fail there.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def loopback_runtime(sandbox: Path, port: int, worker_processes: int | None = 2) -> NginxRuntime:
    return NginxRuntime(
        listen_address=LOOPBACK,
        listen_port=port,
        pid_path=str(sandbox / "nginx.pid"),
        temp_dir=str(sandbox / "temp"),
        error_log=str(sandbox / "error.log"),
        access_log=str(sandbox / "access.log"),
        worker_processes=worker_processes,
    )


def check_config(binary: str, config: str, sandbox: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the text, with the sandbox as prefix so nothing global is touched."""
    conf = sandbox / "nginx.conf"
    conf.write_text(config)
    return subprocess.run(
        [binary, "-t", "-p", str(sandbox), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nginx did not listen on {host}:{port} within {timeout}s")


@dataclass(frozen=True)
class RunningNginx:
    port: int
    sandbox: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.sandbox / "access.log"

    @property
    def error_log(self) -> Path:
        return self.sandbox / "error.log"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_nginx(
    binary: str, config: str, sandbox: Path, port: int, start_timeout: float = 10.0
) -> Iterator[RunningNginx]:
    """A foreground nginx master in its own process group, killed with it on exit.

    `config` must have been rendered with `loopback_runtime(sandbox, port)`.
    """
    checked = check_config(binary, config, sandbox)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t rejected the config:\n{checked.stderr}\n{config}")
    proc = subprocess.Popen(
        [
            binary,
            "-p",
            str(sandbox),
            "-c",
            str(sandbox / "nginx.conf"),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(LOOPBACK, port, start_timeout, proc)
        yield RunningNginx(port=port, sandbox=sandbox, process=proc)
    finally:
        _stop(proc)


@contextlib.contextmanager
def balancer(
    binary: str,
    ports: Sequence[int],
    *,
    guide: bool = False,
    guide_read_timeout: int | None = None,
    sandbox_prefix: str = "nginx-test-",
    **lb_fields: Any,
) -> Iterator[RunningNginx]:
    """A real nginx on loopback in front of replicas on `ports`.

    Our rendered config with `lb_fields` as LoadBalancerSettings (names are
    IP addresses, so no `resolve`), or the guide's config with `guide=True`.
    """
    sandbox = make_sandbox(sandbox_prefix)
    port = free_port()
    runtime = loopback_runtime(sandbox, port)
    upstreams = [Upstream(host=LOOPBACK, port=p) for p in ports]
    if guide:
        config = render_guide_config(upstreams, runtime, guide_read_timeout)
    else:
        lb = LoadBalancerSettings(dynamic_resolve=False, **lb_fields)
        config = render_nginx_config(lb, upstreams, runtime)
    try:
        with running_nginx(binary, config, sandbox, port) as nginx:
            yield nginx
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
