"""A failed first `pulumi up`, its cause fixed, `pulumi up` again: through the real CLI.

The engine and CLI are real (tests/support/pulumi_engine.py); pulumi-docker's
plugin is the stand-in, which keeps a container whose start the daemon refused
in Docker and in the engine's state with its init error, as the real bridge
does (docs/provider-inputs.md, "A failed start"). Three causes a new user
meets: a replica's host port held by another process; an image that is not
there; a GPU request on an engine without the NVIDIA runtime (a test dockerd
in its own network namespace, restarted with the faked driver's hook on its
PATH as a user installs the toolkit: tests/support/fake_gpus.py).

What it proves: the failed `up` names the cause (the daemon's own words) and
the next command, with no Python traceback; the user fixes the cause and runs
`pulumi up` again, with no `refresh`, and the stack serves; a preview then
expects no changes. The readiness step's own handling of a container that is
not running is tested on the engine directly (last tests).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import openai
import pytest
from docker.errors import ImageNotFound, NotFound
from docker.models.containers import Container

from components.steps.readiness import NotReady, wait_healthy
from tests.support.docker_engine import base_image, remove_named, standin_image
from tests.support.fake_gpus import INVENTORY_ENV, install_hook, inventory
from tests.support.netns_hosts import load_images, netns_hosts
from tests.support.pulumi_engine import PulumiFailed, Stack
from tests.test_e2e import ci_config, loopback_balancer
from tests.test_e2e_multihost import NO_ENGINE

pytestmark = pytest.mark.docker

NEXT = "run `pulumi up` again"
MISSING_IMAGE = "127.0.0.1:1/vllm-nginx-retry:missing"
"""An image no engine has and no registry serves: the pull is refused on loopback."""


def stack_config(prefix: str, port: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "namePrefix": prefix,
        "networkName": f"{prefix}-net",
        "hfCache": {"volume": f"{prefix}-cache", "keepOnDestroy": False},
        "basePort": port + 1,
        "replicas": 1,
        "readyTimeoutSeconds": 600,
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "1"},
        "loadBalancer": loopback_balancer(f"{prefix}-lb", port),
    }
    values.update(overrides)
    return ci_config(**values)


def clean(client: docker.DockerClient, prefix: str) -> None:
    remove_named(
        client,
        containers=(f"{prefix}0", f"{prefix}-lb", f"{prefix}-download"),
        networks=[f"{prefix}-net"],
        volumes=[f"{prefix}-cache"],
    )


def assert_reads_well(failed: PulumiFailed, *causes: str) -> None:
    """One cause in the daemon's words and what to do next; no traceback."""
    for cause in causes:
        assert cause in failed.output, failed.output
    assert NEXT in failed.output, failed.output
    assert "Traceback" not in failed.output, failed.output
    assert "KeyboardInterrupt" not in failed.output, failed.output


def serves(port: int) -> None:
    """A chat completion through nginx with the official client."""
    reply = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30
    ).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


def hold(port: int) -> socket.socket:
    """127.0.0.1:`port` held by this process, as by another program on the machine
    (SO_REUSEADDR only so that a probe's TIME_WAIT from an earlier test does not
    stop the test itself; Docker's bind still fails while this one listens)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    holder = hold(18531)
    try:
        yield holder
    finally:
        holder.close()


def test_a_replica_port_held_then_freed(
    client: docker.DockerClient, tmp_path: Path, held_port: socket.socket
) -> None:
    prefix, port = "e2e-retry-port", 18530
    clean(client, prefix)
    stack = Stack(tmp_path, "retry", stack_config(prefix, port))
    try:
        began = time.monotonic()
        failed = stack.up_failing()
        failed_after = time.monotonic() - began
        assert_reads_well(
            failed,
            "Unable to start container: Error response from daemon:",
            "address already in use",
        )
        said = [x.strip() for x in failed.output.splitlines() if "error" in x or NEXT in x]
        print("\n--- what the failed `up` said:\n" + "\n".join(dict.fromkeys(said)))
        # Kept, as the real provider keeps it: created, never started.
        assert client.containers.get(f"{prefix}0").status == "created"
        held_port.close()
        began = time.monotonic()
        again = stack.up()
        retry_after = time.monotonic() - began
        assert "replace" in again.ops(f"vllm-{prefix}0"), again.changed()
        assert client.containers.get(f"{prefix}0").status == "running"
        serves(port)
        stack.preview(expect_no_changes=True)
        print(f"\n--- port held: up failed after {failed_after:.1f} s, again {retry_after:.1f} s")
    finally:
        stack.destroy()
        clean(client, prefix)


def test_the_load_balancers_port_held_then_freed(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    prefix, port = "e2e-retry-lb", 18540
    clean(client, prefix)
    holder = hold(port)
    stack = Stack(tmp_path, "retry", stack_config(prefix, port))
    try:
        failed = stack.up_failing()
        assert_reads_well(failed, "Unable to start container:", "address already in use")
        assert client.containers.get(f"{prefix}-lb").status == "created"
        holder.close()
        again = stack.up()
        assert "replace" in again.ops("vllm-lb"), again.changed()
        serves(port)
        stack.preview(expect_no_changes=True)
    finally:
        holder.close()
        stack.destroy()
        clean(client, prefix)


def test_an_image_missing_then_present(client: docker.DockerClient, tmp_path: Path) -> None:
    prefix, port = "e2e-retry-image", 18550
    clean(client, prefix)
    with pytest.raises(ImageNotFound):
        client.images.get(MISSING_IMAGE)
    stack = Stack(tmp_path, "retry", stack_config(prefix, port, image={"prebuilt": MISSING_IMAGE}))
    try:
        failed = stack.up_failing()
        assert_reads_well(failed, f"unable to pull image {MISSING_IMAGE}")
        client.images.get(standin_image(client)).tag(MISSING_IMAGE)
        stack.up()
        serves(port)
        stack.preview(expect_no_changes=True)
    finally:
        stack.destroy()
        clean(client, prefix)
        with contextlib.suppress(ImageNotFound, NotFound):
            client.images.remove(MISSING_IMAGE, noprune=True)


def gpu_config(
    host_name: str, docker_host: str, address: str, standin: str, base: str
) -> dict[str, Any]:
    port = 18560
    return {
        "backend": "gpu",
        "model": "standin-org/tiny-chat",
        "servedModelName": "tiny-chat",
        "image": {"prebuilt": standin},
        "namePrefix": "e2e-retry-gpu",
        "networkName": "e2e-retry-gpu-net",
        "hfCache": {"volume": "e2e-retry-gpu-cache", "keepOnDestroy": False},
        "compileCache": {"enabled": False},
        "basePort": port + 1,
        "readyTimeoutSeconds": 600,
        "verifyTimeoutSeconds": 60,
        "shutdownTimeoutSeconds": 0,
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3},
        "fitCheck": {"enabled": False},
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "1"},
        "hosts": [
            {"name": host_name, "dockerHost": docker_host, "address": address, "gpus": [[0]]}
        ],
        "loadBalancer": {
            "host": host_name,
            "name": "e2e-retry-gpu-lb",
            "port": port,
            "bindAddress": address,
            "image": base,
            "dynamicResolve": False,
        },
    }


@pytest.mark.netns
def test_a_gpu_request_without_the_runtime_then_with_it(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """The likeliest first failure on a GPU host: Docker has no NVIDIA runtime, so
    the replica's device request is refused at start. The user installs it and
    restarts Docker (here: the test dockerd, now with the faked driver's hook)."""
    standin, base = standin_image(client), base_image(client)
    hook = install_hook(tmp_path / "driver")
    with_driver = {
        "PATH": f"{hook}:{os.environ['PATH']}",
        INVENTORY_ENV: inventory((0, "NVIDIA GeForce RTX 4090", 24564)),
    }
    with netns_hosts(1) as (host,):
        load_images(host, standin, base)
        replica = f"e2e-retry-gpu-{host.name}-0"
        stack = Stack(
            tmp_path / "project",
            "gpu",
            gpu_config(host.name, host.docker_host, host.address, standin, base),
            env={"DOCKER_HOST": NO_ENGINE},
        )
        try:
            failed = stack.up_failing()
            assert_reads_well(
                failed,
                "Unable to start container: Error response from daemon:",
                'could not select device driver "nvidia"',
            )
            assert host.client().containers.get(replica).status == "created"
            host.stop_engine()
            host.start_engine(env=with_driver)
            again = stack.up()
            assert "replace" in again.ops(f"vllm-{replica}"), again.changed()
            running = host.client().containers.get(replica)
            assert running.status == "running"
            assert running.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]
            stack.preview(expect_no_changes=True)
        finally:
            stack.destroy()


# -- the readiness step on the engine itself ------------------------------------------


READY_NAME = "e2e-retry-ready"


@pytest.fixture
def created(client: docker.DockerClient) -> Iterator[Container]:
    """A replica-like container created with a published port and never started."""
    name = READY_NAME
    remove_named(client, containers=[name])
    container = client.containers.create(
        base_image(client),
        ["python3", "-m", "http.server", "8000"],
        name=name,
        ports={"8000/tcp": ("127.0.0.1", 18532)},
    )
    try:
        yield container
    finally:
        remove_named(client, containers=[name])


def test_readiness_starts_a_replica_an_earlier_up_left_created(
    client: docker.DockerClient, created: Container
) -> None:
    lines: list[str] = []
    took = wait_healthy(
        client,
        [READY_NAME],
        60,
        poll=0.1,
        probes={READY_NAME: "http://127.0.0.1:18532/"},
        progress=lines.append,
    )
    assert READY_NAME in took
    assert any("was created (left by an earlier `up`); started again" in x for x in lines), lines


def test_readiness_fails_at_once_when_the_start_is_refused(
    client: docker.DockerClient,
    created: Container,
) -> None:
    holder = hold(18532)
    try:
        began = time.monotonic()
        with pytest.raises(NotReady) as refused:
            wait_healthy(client, [READY_NAME], 600, poll=0.1)
        seconds = time.monotonic() - began
    finally:
        holder.close()
    message = str(refused.value)
    assert f"replica {READY_NAME} exists but is not running (created)" in message
    assert "could not be started: Error response from daemon:" in message
    assert "address already in use" in message
    assert NEXT in message
    assert seconds < 30, f"took {seconds:.1f} s of a 600 s timeout"
