"""The Docker client of a step that `pulumi up` runs: the same engine as its provider.

docker-py's `from_env` reads `DOCKER_HOST` and a TLS certificate directory; a host
whose TLS material is PEM text in the stack gets the three PEMs as secret environment
variables, written to a private temporary directory for the life of the process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

import docker
from docker.errors import DockerException
from docker.tls import TLSConfig

from components.plan.specs import DOCKER_TLS_SECRET_ENV, OtherBalancer
from components.steps.runner import StepError


def _material_files(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The PEM files written from the environment, or None when it holds none."""
    pems = {part: environ.get(variable) for part, variable in DOCKER_TLS_SECRET_ENV.items()}
    if not all(pems.values()):
        return None
    directory = tempfile.mkdtemp(prefix="vllm-nginx-tls-")
    os.chmod(directory, 0o700)
    atexit.register(shutil.rmtree, directory, True)
    files: dict[str, str] = {}
    for part, text in pems.items():
        path = os.path.join(directory, f"{part}.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(text))
        files[part] = path
    return files


def engine_client(
    timeout: int = 60, environ: Mapping[str, str] = os.environ
) -> docker.DockerClient:
    """A client for the engine this step's environment (or `environ`) names."""
    files = _material_files(environ)
    if files is None:
        return docker.from_env(timeout=timeout, environment=environ)
    tls = TLSConfig(client_cert=(files["cert"], files["key"]), ca_cert=files["ca"], verify=True)
    return docker.DockerClient(base_url=environ["DOCKER_HOST"], tls=tls, timeout=timeout)


def other_environ(other: OtherBalancer, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Another balancer's engine as `engine_client` reads one: its variables from the
    spec, its TLS material from the variables of this process the spec names."""
    found = dict(other.engine_env)
    found.update({var: environ[held] for var, held in other.tls_env.items() if held in environ})
    return found


def other_engine_client(other: OtherBalancer, timeout: int = 60) -> docker.DockerClient:
    """A client for another balancer's engine; a `StepError` naming it when it does not answer."""
    try:
        return engine_client(timeout, other_environ(other))
    except (DockerException, OSError) as err:
        where = other.engine_env.get("DOCKER_HOST", "?")
        raise StepError(
            f"cannot reach the engine of the balancer {other.name} at {where} ({err}); "
            "start that engine again, then `pulumi up` again"
        ) from None


def reachable_engine(timeout: int = 60) -> docker.DockerClient | None:
    """`engine_client`, or None after saying on stderr which engine it could not reach
    (an `ssh://` host needs paramiko, docker[ssh]); the step then exits 1."""
    try:
        return engine_client(timeout=timeout)
    except (DockerException, OSError) as err:
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        print(f"error: cannot reach the Docker engine at {where}: {err}", file=sys.stderr)
        return None
