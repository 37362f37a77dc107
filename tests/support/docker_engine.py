"""Shared helpers for tests that need the real Docker engine.

Why these exist: image and end-to-end tests all need the same few things (an
engine that answers, the locally made base image, the project's two images built
once per session, scratch networks/volumes/containers that are always removed,
files uploaded into containers before they start), and each of them has a
failure mode worth handling once: in CI a missing engine must fail the run,
locally it only skips; the base image may have to be made first; host traffic
may only go to ports published on 127.0.0.1.

Entry points:

- `docker_client()`: a client whose engine answered a ping (fail in CI, skip locally).
- `base_image(client)`: tag of the offline Debian base, made with
  scripts/base-image.sh when missing.
- `standin_image(client)`: the project's vLLM stand-in image, built once per
  session (`build_image` for anything else); tag `STANDIN_TAG`.
- `Scratch`: creates labelled networks, volumes and containers and removes them
  all on `close()` (a context manager; `remove_leftovers` sweeps crashed sessions).
- `put_file`, `published_port`, `wait_for_log`, `wait_for_http`, `wait_for_exit`,
  `container_logs`: the small steps every container test repeats.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import docker.errors
import httpx
import pytest
from docker.models.containers import Container
from docker.models.networks import Network
from docker.models.volumes import Volume

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
BASE_IMAGE_TAG = os.environ.get("VLLM_NGINX_BASE_IMAGE", "vllm-nginx/base:bookworm")
STANDIN_TAG = os.environ.get("VLLM_NGINX_STANDIN_TAG", "vllm-nginx/standin:test")
"""Override to keep concurrent sessions on one engine from replacing each other's image."""
MONITORING_IMAGE_TAG = os.environ.get(
    "VLLM_NGINX_MONITORING_IMAGE", "vllm-nginx/monitoring:bookworm"
)
KEEPALIVED_IMAGE_TAG = os.environ.get(
    "VLLM_NGINX_KEEPALIVED_IMAGE", "vllm-nginx/keepalived:bookworm"
)
GRAFANA_STANDIN_TAG = "vllm-nginx/grafana-standin:test"
#: Label on everything `Scratch` creates, so leftovers of a killed session can be found.
TEST_LABEL = "vllm-nginx.test"

_client: docker.DockerClient | None = None
_built: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """A missing tool fails in CI (a silent skip would hide a broken runner), skips locally."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def docker_client() -> docker.DockerClient:
    """A client for the engine in DOCKER_HOST or the default socket, once it answers."""
    global _client
    if _client is not None:
        return _client
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        unavailable(f"no Docker engine answers ({exc}); run `bash scripts/docker-engine.sh start`")
    _client = client
    return client


def _scripted_image(client: docker.DockerClient, tag: str, env: str, *flags: str) -> str:
    """`tag`, made by scripts/base-image.sh (with `flags`, told the tag in `env`) if missing."""
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    script = REPO_ROOT / "scripts" / "base-image.sh"
    result = subprocess.run(
        ["bash", str(script), *flags],
        env={**os.environ, env: tag},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        unavailable(f"cannot make {tag}: {result.stderr[-2000:]}")
    return tag


def base_image(client: docker.DockerClient) -> str:
    """The offline base image's tag; runs scripts/base-image.sh if the image is missing.

    The script caches its rootfs, so after the first run on a machine this is a
    `docker import` of a few seconds.
    """
    return _scripted_image(client, BASE_IMAGE_TAG, "BASE_IMAGE_TAG")


def monitoring_image(client: docker.DockerClient) -> str:
    """The offline base plus Debian's Prometheus; `base-image.sh --monitoring` if missing."""
    return _scripted_image(client, MONITORING_IMAGE_TAG, "MONITORING_IMAGE_TAG", "--monitoring")


def keepalived_image(client: docker.DockerClient) -> str:
    """The offline base plus Debian's keepalived; `base-image.sh --keepalived` if missing."""
    return _scripted_image(client, KEEPALIVED_IMAGE_TAG, "KEEPALIVED_IMAGE_TAG", "--keepalived")


def grafana_standin_image(client: docker.DockerClient) -> str:
    """Grafana's offline stand-in (docker/grafana-standin), built once per session."""
    build_image(
        client,
        GRAFANA_STANDIN_TAG,
        dockerfile="docker/grafana-standin/Dockerfile",
        buildargs={"BASE_IMAGE": base_image(client)},
    )
    return GRAFANA_STANDIN_TAG


def build_image(
    client: docker.DockerClient,
    tag: str,
    *,
    dockerfile: str,
    context: Path = REPO_ROOT,
    buildargs: Mapping[str, str] | None = None,
) -> str:
    """Build `dockerfile` (relative to `context`) as `tag` once per session; returns the id.

    The engine's classic builder is used (the CLI here has no buildx). When a rebuild
    moves the tag, the previous image is removed if nothing uses it, so sessions do
    not pile up dangling images.
    """
    if tag in _built:
        return _built[tag]
    try:
        previous: str | None = client.images.get(tag).id
    except docker.errors.ImageNotFound:
        previous = None
    try:
        image, _ = client.images.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(buildargs or {}),
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        pytest.fail(f"building {tag} from {dockerfile} failed: {exc}\n{log[-3000:]}")
    if previous is not None and previous != image.id:
        with suppress(docker.errors.APIError):
            client.images.remove(previous)
    assert image.id is not None
    _built[tag] = image.id
    return image.id


def standin_image(client: docker.DockerClient) -> str:
    """`vllm-nginx/standin:test`: the vLLM stand-in on the offline base (repo root context)."""
    build_image(
        client,
        STANDIN_TAG,
        dockerfile="docker/standin/Dockerfile",
        buildargs={"BASE_IMAGE": base_image(client)},
    )
    return STANDIN_TAG


class Scratch:
    """Networks, volumes and containers for one test (or module), removed together.

    Names get a random suffix so parallel sessions do not collide; everything
    carries `TEST_LABEL=<session id>`. Containers are removed first (forced,
    with anonymous volumes), then networks, then volumes.
    """

    def __init__(self, client: docker.DockerClient, prefix: str = "vnt") -> None:
        self.client = client
        self.session = uuid.uuid4().hex[:8]
        self.prefix = prefix
        self.labels = {TEST_LABEL: self.session}
        self.containers: list[Container] = []
        self.networks: list[Network] = []
        self.volumes: list[Volume] = []

    def name(self, base: str) -> str:
        """A unique name: `<prefix>-<session>-<base>`."""
        return f"{self.prefix}-{self.session}-{base}"

    def network(self, base: str = "net") -> Network:
        network = self.client.networks.create(self.name(base), driver="bridge", labels=self.labels)
        self.networks.append(network)
        return network

    def volume(self, base: str = "vol") -> Volume:
        volume = self.client.volumes.create(self.name(base), labels=self.labels)
        self.volumes.append(volume)
        return volume

    def create(self, image: str, base: str, **kwargs: Any) -> Container:
        """`containers.create` with a unique name and the label; not started.

        Publish ports on loopback only, e.g. `ports={"8000/tcp": (LOOPBACK, None)}`.
        """
        labels = {**self.labels, **kwargs.pop("labels", {})}
        container = self.client.containers.create(
            image, name=self.name(base), labels=labels, **kwargs
        )
        self.containers.append(container)
        return container

    def run(self, image: str, base: str, **kwargs: Any) -> Container:
        """Create and start (detached)."""
        container = self.create(image, base, **kwargs)
        container.start()
        container.reload()
        return container

    def close(self) -> None:
        for container in reversed(self.containers):
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for network in reversed(self.networks):
            with suppress(docker.errors.NotFound):
                network.remove()
        for volume in reversed(self.volumes):
            with suppress(docker.errors.NotFound):
                volume.remove(force=True)
        self.containers.clear()
        self.networks.clear()
        self.volumes.clear()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def scratch(client: docker.DockerClient, prefix: str = "vnt") -> Iterator[Scratch]:
    """`with scratch(client) as s:` for fixtures that prefer a generator."""
    with Scratch(client, prefix) as made:
        yield made


def remove_leftovers(client: docker.DockerClient) -> None:
    """Remove everything any (crashed) test session labelled with `TEST_LABEL`."""
    filters: dict[str, str | list[str] | bool] = {"label": TEST_LABEL}
    for container in client.containers.list(all=True, filters=filters):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=filters):
        network.remove()
    for volume in client.volumes.list(filters=filters):
        volume.remove(force=True)


def remove_named(
    client: docker.DockerClient,
    *,
    containers: Iterable[str] = (),
    networks: Iterable[str] = (),
    volumes: Iterable[str] = (),
) -> None:
    """Force-remove a deployment's fixed-name resources, skipping those already gone.

    Deployments (unlike `Scratch`) use the names their stack file gives, so a
    crashed run leaves them behind under those names.
    """
    for name in containers:
        with suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
    for name in networks:
        for network in client.networks.list(names=[name]):
            network.remove()
    for name in volumes:
        with suppress(docker.errors.NotFound):
            client.volumes.get(name).remove(force=True)


def put_file(container: Container, path: str, content: str | bytes, mode: int = 0o644) -> None:
    """Write one file into a container (created or running) via `put_archive`.

    Used to upload configs before `start()`, as the deployment's `uploads` does.
    """
    data = content.encode() if isinstance(content, str) else content
    target = PurePosixPath(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(target.name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(data))
    if not container.put_archive(str(target.parent), buffer.getvalue()):
        raise RuntimeError(f"put_archive to {path} in {container.name} failed")


def published_port(container: Container, internal: str = "8000/tcp") -> int:
    """The host port published for `internal` (bound to a loopback address)."""
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(internal) or []
    for binding in bindings:
        if binding.get("HostIp", "").startswith("127."):
            return int(binding["HostPort"])
    raise AssertionError(f"{container.name}: {internal} not published on loopback: {bindings}")


def container_logs(container: Container) -> str:
    return bytes(container.logs(stdout=True, stderr=True)).decode(errors="replace")


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, on_timeout: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.1)


def wait_for_log(container: Container, text: str, timeout: float = 30.0) -> str:
    """Wait until the container's output contains `text`; returns the whole log."""

    def present() -> bool:
        container.reload()
        if container.status in {"exited", "dead"} and text not in container_logs(container):
            raise AssertionError(
                f"{container.name} exited ({container.attrs['State']['ExitCode']}) before "
                f"logging {text!r}:\n{container_logs(container)[-3000:]}"
            )
        return text in container_logs(container)

    wait_until(present, timeout, f"{text!r} in {container.name}", lambda: container_logs(container))
    return container_logs(container)


def wait_for_http(
    url: str, timeout: float = 30.0, status: int = 200, container: Container | None = None
) -> httpx.Response:
    """Poll `url` until it answers `status` (connection errors count as not yet)."""
    last: list[httpx.Response] = []

    def answers() -> bool:
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            return False
        last[:] = [response]
        return response.status_code == status

    def describe() -> str:
        seen = f"last answer: {last[0].status_code} {last[0].text[:300]}" if last else ""
        return seen + ("\n" + container_logs(container)[-3000:] if container else "")

    wait_until(answers, timeout, url, describe)
    return last[0]


def wait_for_exit(container: Container, timeout: float = 60.0) -> int:
    """Wait for the container to stop; returns its exit code."""
    result = container.wait(timeout=timeout)
    return int(result["StatusCode"])
