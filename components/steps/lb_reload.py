"""Put a new config into the running load balancer and reload it, instead of replacing it.

pulumi-docker's `uploads` is force-new (docs/provider-inputs.md): a config change
would replace nginx and drop every connection. This step, re-run whenever the files or
the container change, writes them in, checks them with `nginx -t` and reloads. The
files arrive as JSON in `VLLM_NGINX_LB_FILES` (a secret when one of them is).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import PurePosixPath

import docker
from docker.errors import NotFound
from docker.models.containers import Container

from components.plan.specs import ReloadSpec
from components.steps.engine import engine_client
from components.steps.runner import StepError, run_step

FILES_ENV = "VLLM_NGINX_LB_FILES"


def _archive(files: Mapping[str, str]) -> bytes:
    """One tar of the files at their full paths, extracted at `/` (directories made)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(str(PurePosixPath(path)).lstrip("/"))
            info.size = len(data)
            # Only nginx's master (root) reads them; the key must not be world-readable.
            info.mode = 0o600 if path.endswith((".key", "api-key.conf")) else 0o644
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read(lb: Container, path: str) -> str | None:
    code, output = lb.exec_run(["cat", path])
    if code != 0 or not isinstance(output, bytes):
        return None
    return output.decode("utf-8", "replace")


def reload(client: docker.DockerClient, lb_name: str, files: Mapping[str, str]) -> str:
    try:
        lb = client.containers.get(lb_name)
    except NotFound:
        raise StepError(f"load balancer {lb_name} does not exist") from None
    if lb.status != "running":
        # A start the daemon refused is reported on the container itself; the
        # next `up` replaces it (docs/failed-up.md).
        raise StepError(
            f"load balancer {lb_name} is {lb.status}, not running; "
            "fix the cause its error above names and run `pulumi up` again"
        )
    current = {path: _read(lb, path) for path in files}
    changed = {path: text for path, text in files.items() if current[path] != text}
    if not changed:
        return f"{lb_name}: config unchanged"
    if not lb.put_archive("/", _archive(changed)):
        raise StepError(f"writing the config into {lb_name} failed")
    code, output = lb.exec_run(["nginx", "-t", "-q"])
    if code != 0:
        # Put the old files back so a restart of the container still works.
        previous = {p: t for p, t in current.items() if p in changed and t is not None}
        if previous:
            lb.put_archive("/", _archive(previous))
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        raise StepError(f"nginx in {lb_name} refused the new config: {text.strip()}")
    code, output = lb.exec_run(["nginx", "-s", "reload"])
    if code != 0:
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        raise StepError(f"nginx in {lb_name} did not reload: {text.strip()}")
    return f"{lb_name}: reloaded with {len(changed)} changed file(s): " + ", ".join(sorted(changed))


def main() -> int:
    def body(spec: ReloadSpec) -> str:
        files = os.environ.get(FILES_ENV)
        if files is None:
            raise StepError(f"{FILES_ENV} is not set: this step runs under `pulumi up`")
        return reload(engine_client(), spec.lb, json.loads(files))

    return run_step(ReloadSpec, body)


if __name__ == "__main__":
    sys.exit(main())
