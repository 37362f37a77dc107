"""Run the real nginx binary against rendered configs, on loopback only.

A config that only looks right is worth little: these helpers make every test
go through `nginx -t` or a real nginx master, so a directive the installed
nginx rejects fails a test instead of a deployment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config.sections import LoadBalancerSettings, Upstream
from components.lb.guide import render_guide_config
from components.lb.keys import KeyPolicy, render_key_file
from components.lb.names import NJS_MODULE_PATH, TlsFiles
from components.lb.nginx_conf import (
    NginxRuntime,
    render_api_key_map,
    render_extra_files,
    render_nginx_config,
)
from components.lb.pools import ModelPool
from tests.support.processes import stop_group

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


def require_njs() -> str:
    """The njs module's path; like nginx itself, missing in CI is a failure, not a skip.

    `prefix_affinity` cannot be checked without it: `nginx -t` refuses
    `js_import` when the module is not loaded.
    """
    import pytest

    if not os.path.exists(NJS_MODULE_PATH):
        message = (
            f"njs module {NJS_MODULE_PATH} not found (apt-get install -y libnginx-mod-http-js)"
        )
        if in_ci():
            pytest.fail(message + "; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    return NJS_MODULE_PATH


def write_extra_files(
    lb: LoadBalancerSettings,
    runtime: NginxRuntime,
    pools: Sequence[ModelPool] = (),
    keys: Sequence[KeyPolicy] = (),
) -> None:
    """The files the config reads (the njs scripts), where the runtime says, as deployed."""
    for path, text in render_extra_files(lb, runtime, pools, keys).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        Path(path).chmod(0o644)


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


def loopback_runtime(
    sandbox: Path,
    port: int,
    worker_processes: int | None = 2,
    *,
    tls: TlsFiles | None = None,
    api_key_map: str | None = None,
    metrics_syslog: str | None = None,
) -> NginxRuntime:
    return NginxRuntime(
        metrics_syslog=metrics_syslog,
        listen_address=LOOPBACK,
        listen_port=port,
        pid_path=str(sandbox / "nginx.pid"),
        temp_dir=str(sandbox / "temp"),
        error_log=str(sandbox / "error.log"),
        access_log=str(sandbox / "access.log"),
        worker_processes=worker_processes,
        tls=tls,
        api_key_map=api_key_map,
        prefix_script=str(sandbox / "lb" / "prefix.js"),
    )


def write_api_key_map(sandbox: Path, key: str) -> str:
    """The key file as the deployment would upload it: readable by the master only."""
    path = sandbox / "api-key.conf"
    path.write_text(render_api_key_map(key))
    path.chmod(0o600)
    return str(path)


def write_key_file(sandbox: Path, operator_key: str, keys: Mapping[str, str]) -> str:
    """The key file with named keys (digests only, and the operator's key), as deployed."""
    path = sandbox / "api-key.conf"
    path.write_text(render_key_file(operator_key, keys))
    path.chmod(0o600)
    return str(path)


@dataclass(frozen=True)
class Pki:
    """A private CA and a server certificate it signed, for 127.0.0.1 and localhost."""

    ca_certificate: Path
    server: TlsFiles


_SERVER_EXTENSIONS = """\
subjectAltName=IP:127.0.0.1,DNS:localhost
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


def _openssl(command: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *command.split()],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {command} failed:\n{result.stderr}")


def make_test_pki(directory: Path) -> Pki:
    """A CA and a server certificate made with the `openssl` CLI.

    A real chain rather than one self-signed leaf, so the client verifies the
    way it would in production (trusting a CA, checking the name against the
    subjectAltName) instead of pinning the server's own certificate. The
    extensions are those Python's strict X.509 checks insist on.
    """
    if shutil.which("openssl") is None:
        import pytest

        if in_ci():
            pytest.fail("the openssl CLI is needed to make test certificates")
        pytest.skip("the openssl CLI is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    _openssl(
        f"req -x509 {new_key} -keyout ca.key -out ca.crt -days 2 -subj /CN=vllm-nginx-test-CA "
        "-addext basicConstraints=critical,CA:TRUE "
        "-addext keyUsage=critical,keyCertSign,cRLSign",
        directory,
    )
    _openssl(f"req {new_key} -keyout server.key -out server.csr -subj /CN=localhost", directory)
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS)
    _openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
        "-days 2 -extfile server.ext",
        directory,
    )
    (directory / "server.key").chmod(0o600)
    return Pki(
        ca_certificate=directory / "ca.crt",
        server=TlsFiles(
            certificate=str(directory / "server.crt"), key=str(directory / "server.key")
        ),
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
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.sandbox / "access.log"

    @property
    def error_log(self) -> Path:
        return self.sandbox / "error.log"


@contextlib.contextmanager
def running_nginx(
    binary: str,
    config: str,
    sandbox: Path,
    port: int,
    start_timeout: float = 10.0,
    scheme: str = "http",
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
        yield RunningNginx(port=port, sandbox=sandbox, process=proc, scheme=scheme)
    finally:
        stop_group(proc, 5)


@contextlib.contextmanager
def balancer(
    binary: str,
    ports: Sequence[int],
    *,
    guide: bool = False,
    guide_read_timeout: int | None = None,
    sandbox_prefix: str = "nginx-test-",
    tls: TlsFiles | None = None,
    api_key: str | None = None,
    pools: Sequence[ModelPool] = (),
    keys: Sequence[KeyPolicy] = (),
    named_keys: Mapping[str, str] | None = None,
    metrics_syslog: str | None = None,
    **lb_fields: Any,
) -> Iterator[RunningNginx]:
    """A real nginx on loopback in front of replicas on `ports`.

    Our rendered config with `lb_fields` as LoadBalancerSettings (names are
    IP addresses, so no `resolve`), or the guide's config with `guide=True`.
    `tls` serves https with those files; `api_key` writes the key file into
    the sandbox and makes the balancer require the key. With `pools` the
    balancer routes by model (`ports` then only serve the exposed paths). With
    `keys` (their policies) and `named_keys` (name -> key) it checks named keys,
    `api_key` being the operator's; `metrics_syslog` sends the metrics log there.
    """
    sandbox = make_sandbox(sandbox_prefix)
    port = free_port()
    try:
        if api_key is None:
            key_map = None
        elif keys:
            key_map = write_key_file(sandbox, api_key, named_keys or {})
        else:
            key_map = write_api_key_map(sandbox, api_key)
        runtime = loopback_runtime(
            sandbox, port, tls=tls, api_key_map=key_map, metrics_syslog=metrics_syslog
        )
        upstreams = [Upstream(host=LOOPBACK, port=p) for p in ports]
        if guide:
            config = render_guide_config(upstreams, runtime, guide_read_timeout)
        else:
            lb = LoadBalancerSettings(dynamic_resolve=False, **lb_fields)
            config = render_nginx_config(lb, upstreams, runtime, pools, keys)
            write_extra_files(lb, runtime, pools, keys)
        scheme = "http" if tls is None else "https"
        with running_nginx(binary, config, sandbox, port, scheme=scheme) as nginx:
            yield nginx
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
