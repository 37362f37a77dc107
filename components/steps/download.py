"""The download step: fill the shared model cache once, before any replica exists.

Runs a one-shot container of the vLLM image on the provider's engine (`DOCKER_HOST`),
so the files are fetched by the `huggingface_hub` the replicas read them with; on the
host network, which starts faster than a bridge endpoint. The token is copied in as a
file, never an environment variable, and the container is removed whatever the
outcome. Progress comes with a heartbeat; a failure names the model, cause and log tail.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container

from components.containers import CONTAINERS_DIR
from components.containers.vllm.download_job import (
    ERROR_PREFIX,
    EXIT_AUTH,
    EXIT_DISK_FULL,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
)
from components.plan.specs import DownloadSpec
from components.steps.engine import reachable_engine
from components.steps.readiness import redact
from components.steps.runner import spec_of

JOB_DIR = "/tmp/vllm-nginx-download"
JOB_SCRIPT = "job.py"
TOKEN_FILE = "hf_token"
LABEL = "vllm-nginx.download"
LOG_LINES = 20
CAUSES = {
    EXIT_AUTH: "access refused",
    EXIT_NOT_FOUND: "model not found",
    EXIT_DISK_FULL: "disk full",
    EXIT_NETWORK: "no network",
}


class DownloadFailed(RuntimeError):
    """The job did not fill the cache; the message is meant for the user."""


def job_archive(script: str, token: str) -> bytes:
    """The job script and the token, as the tar `put_archive` takes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(Path(JOB_DIR).name)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o700
        tar.addfile(folder)
        entries = [(JOB_SCRIPT, script.encode(), 0o644), (TOKEN_FILE, token.encode(), 0o600)]
        for name, data, mode in entries:
            info = tarfile.TarInfo(f"{Path(JOB_DIR).name}/{name}")
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _say(message: str) -> None:
    print(message, flush=True)


def _lines(container: Container) -> Iterator[str]:
    pending = ""
    for chunk in container.logs(stream=True, follow=True):
        pending += chunk.decode("utf-8", "replace")
        while "\n" in pending:
            line, pending = pending.split("\n", 1)
            yield line
    if pending:
        yield pending


def exit_code(container: Container) -> int:
    """Its exit code once its output has ended: read, or waited for if not yet exited."""
    container.reload()
    state = container.attrs.get("State", {})
    if state.get("Status") == "exited":
        return int(state.get("ExitCode", 1))
    return int(container.wait(timeout=60).get("StatusCode", 1))


def remove_leftover(client: docker.DockerClient, name: str) -> None:
    """A job killed with `pulumi up` leaves its container; only ours is removed."""
    try:
        old = client.containers.get(name)
    except NotFound:
        return
    if old.labels.get(LABEL) != "job":
        raise DownloadFailed(f"a container named {name} exists and is not a download job")
    old.remove(force=True)


def job_container(
    client: docker.DockerClient,
    *,
    image: str,
    name: str,
    args: Sequence[str],
    env: dict[str, str],
    volumes: dict[str, dict[str, str]],
    network: str | None,
    token: str | None,
) -> Container:
    """The job script in a created container, ready to start: with a token, script
    and token are files put in before it starts (the token never an environment
    variable); without one, the script is simply the command. A leftover of an
    earlier, killed run of the same name goes first. The fit check runs the same
    script (`--facts`) this way."""
    remove_leftover(client, name)
    environment = dict(env)
    if token:
        environment["HF_TOKEN_PATH"] = f"{JOB_DIR}/{TOKEN_FILE}"
    script = (CONTAINERS_DIR / "vllm" / "download_job.py").read_text()
    # Without a token nothing needs to be put into the container before it
    # starts, and an upload into a created container costs a filesystem mount.
    entrypoint = ["python3", f"{JOB_DIR}/{JOB_SCRIPT}"] if token else ["python3", "-c", script]
    container = client.containers.create(
        image,
        name=name,
        entrypoint=entrypoint,
        command=list(args),
        environment=environment,
        volumes=volumes,
        network=network,
        labels={LABEL: "job"},
        detach=True,
    )
    if token:
        try:
            container.put_archive("/tmp", job_archive(script, token))
        except BaseException:
            with contextlib.suppress(NotFound, APIError):
                container.remove(force=True)
            raise
    return container


def run_job(
    client: docker.DockerClient,
    *,
    image: str,
    model: str,
    name: str,
    more_models: Sequence[str] = (),
    volumes: dict[str, dict[str, str]],
    network: str | None,
    env: dict[str, str],
    token: str | None,
    timeout: float,
    interval: float,
) -> None:
    """Run the job to completion; raise `DownloadFailed` naming the model and cause."""
    try:
        container = job_container(
            client,
            image=image,
            name=name,
            args=[
                *(word for repo in (model, *more_models) for word in ("--model", repo)),
                "--progress-seconds",
                f"{interval:g}",
            ],
            env=env,
            volumes=volumes,
            network=network,
            token=token,
        )
    except ImageNotFound:
        raise DownloadFailed(f"download of {model}: image {image} is not on the engine") from None
    seen: list[str] = []
    try:
        container.start()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            try:
                for line in _lines(container):
                    lines.put(line)
            finally:
                lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        started = last = time.monotonic()
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            else:
                if line is None:
                    break
                line = redact(line, os.environ)
                seen.append(line)
                _say(line)
                last = time.monotonic()
            now = time.monotonic()
            if now - started > timeout:
                container.stop(timeout=5)
                raise DownloadFailed(
                    f"download of {model} did not finish within {timeout:.0f} s "
                    "(readyTimeoutSeconds); last lines:\n" + "\n".join(seen[-LOG_LINES:])
                )
            if now - last >= interval:
                _say(f"[download] {model}: job running for {now - started:.0f} s, no news")
                last = now
        code = exit_code(container)
    finally:
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True)
    if code == 0:
        return
    said = [line[len(ERROR_PREFIX) :] for line in seen if line.startswith(ERROR_PREFIX)]
    cause = said[-1] if said else f"the job exited with code {code}"
    kind = CAUSES.get(code, "failed")
    raise DownloadFailed(
        f"download of {model} failed ({kind}): {cause}\n"
        f"last {LOG_LINES} lines of the download job:\n" + "\n".join(seen[-LOG_LINES:])
    )


def mounts(volumes: Mapping[str, str], mode: str = "rw") -> dict[str, dict[str, str]]:
    """Source (a volume or a host path) -> mount path, as docker-py mounts it."""
    return {source: {"bind": target, "mode": mode} for source, target in volumes.items()}


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # `pulumi cancel` or Ctrl-C: unwind so the job container (and token) is removed.
    raise SystemExit(128 + signum)


def main() -> int:
    spec = spec_of(DownloadSpec)
    if spec is None:
        return 2
    signal.signal(signal.SIGTERM, stop_on_signal)
    client = reachable_engine(timeout=300)
    if client is None:
        return 1
    started = time.monotonic()
    try:
        run_job(
            client,
            image=spec.image,
            model=spec.models[0],
            more_models=spec.models[1:],
            name=spec.name,
            volumes=mounts(spec.volumes),
            # The job only reaches the hub: the engine's own network is enough, and
            # a container on it starts without a bridge endpoint to set up.
            network="host",
            env=dict(spec.env),
            token=os.environ.get("HF_TOKEN") or None,
            timeout=spec.timeout_seconds,
            interval=spec.progress_seconds,
        )
    except DownloadFailed as err:
        print(f"error: {redact(str(err), os.environ)}", file=sys.stderr)
        return 1
    _say(f"download step for {', '.join(spec.models)} done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
