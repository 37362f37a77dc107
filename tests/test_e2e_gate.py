"""The readiness check through the real Pulumi CLI: it passes as soon as replicas
serve, and when they do not, `pulumi up` stops with a useful error.

`pulumi up` runs this project (tests/support/pulumi_engine.py: the real engine
and CLI; pulumi-docker's and pulumi-command's plugins and the Python language
host are our stand-ins that follow their source) on the real Docker engine,
the vLLM stand-in image playing vLLM, with stacks made to fail: replicas too
slow for `readyTimeoutSeconds`, and replicas crashing at start. In both, `up`
exits non-zero, its output names the replica and shows the end of its log,
the engine starts no step after the check (nginx, its config, verify), and
`pulumi destroy` then removes everything, the cache too (`keepOnDestroy: false`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.docker_engine import remove_named
from tests.support.pulumi_engine import PulumiFailed, Stack, names
from tests.test_e2e import ci_config, loopback_balancer

pytestmark = pytest.mark.docker

AFTER_THE_CHECK = {"vllm-lb", "vllm-lb-config", "vllm-verify"}


def failing_stack(prefix: str, port: int, **overrides: Any) -> dict[str, Any]:
    return ci_config(
        namePrefix=prefix,
        networkName=f"{prefix}-net",
        hfCache={"volume": f"{prefix}-cache", "keepOnDestroy": False},
        basePort=port + 1,
        replicas=2,
        loadBalancer=loopback_balancer(f"{prefix}-lb", port),
        **overrides,
    )


def _names(client: docker.DockerClient) -> set[str]:
    return {c.name or "" for c in client.containers.list(all=True)}


def _assert_destroyed(client: docker.DockerClient, stack: Stack, prefix: str) -> None:
    """`pulumi destroy` left nothing of the stack, the cache volume included."""
    assert stack.resources() == {}
    assert not {n for n in _names(client) if n.startswith(prefix)}
    assert not client.networks.list(names=[f"{prefix}-net"])
    assert f"{prefix}-cache" not in {v.name for v in client.volumes.list()}


def _up_expecting_failure(
    client: docker.DockerClient, directory: Path, prefix: str, config: dict[str, Any]
) -> tuple[PulumiFailed, set[str]]:
    """The failed `up`, and the containers that existed when it stopped."""
    stack = Stack(directory, "gate", config)
    try:
        failed = stack.up_failing()
        existing = _names(client)
        result = failed.result
        assert result.index("vllm-replicas-ready", "failed") >= 0, result.changed()
        assert not set(names(result.steps)) & AFTER_THE_CHECK, result.changed()
        assert "Traceback" not in failed.output
    finally:
        stack.destroy()
    _assert_destroyed(client, stack, prefix)
    return failed, existing


def test_ready_once_health_answers_not_at_dockers_next_probe(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """The check asks each replica's /health at its published port. Docker's own
    probe runs every `healthCheck.intervalSeconds` (60 here), so had the check
    waited for Docker's verdict it would still be waiting: the whole deployment
    is up while Docker has not run its first probe."""
    prefix = "e2e-quick"
    config = failing_stack(
        prefix,
        18350,
        healthCheck={"intervalSeconds": 60},
        extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "1"},
    )
    stack = Stack(tmp_path, "gate", config)
    try:
        up = stack.up()
        for name in ("e2e-quick0", "e2e-quick1"):
            health = client.containers.get(name).attrs["State"]["Health"]
            assert health["Status"] == "starting", health
            assert not health["Log"], "Docker has probed already: the test proves nothing"
        said = stack.resources()["vllm-replicas-ready"]["outputs"]["stdout"]
        assert "e2e-quick0 ready after" in said and "e2e-quick1 ready after" in said
        assert up.index("vllm-lb") > up.index("vllm-replicas-ready", "outputs")
        assert "e2e-quick-lb" in _names(client)
    finally:
        stack.destroy()
    _assert_destroyed(client, stack, prefix)


def test_replica_not_ready_in_time(client: docker.DockerClient, tmp_path: Path) -> None:
    config = failing_stack(
        "e2e-slow",
        18300,
        readyTimeoutSeconds=3,
        extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "60"},
    )
    failed, existing = _up_expecting_failure(client, tmp_path, "e2e-slow", config)
    message = failed.output
    assert "command:local:Command (vllm-replicas-ready):" in message
    assert "replica e2e-slow0 not ready after 3 s (readyTimeoutSeconds)" in message
    assert "last 40 log lines" in message
    assert "standin-org/tiny-chat" in message, "the log tail should show the stand-in's output"
    assert {"e2e-slow0", "e2e-slow1"} <= existing
    assert "e2e-slow-lb" not in existing


def test_replica_crashing_at_start(client: docker.DockerClient, tmp_path: Path) -> None:
    # A setting the stand-in refuses at start, as vLLM refuses a bad argument.
    config = failing_stack(
        "e2e-crash", 18400, extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_TOKENS": "0"}
    )
    failed, existing = _up_expecting_failure(client, tmp_path, "e2e-crash", config)
    message = failed.output
    assert "command:local:Command (vllm-replicas-ready):" in message
    # Both replicas crash; the check names whichever it finds first.
    assert re.search(r"replica e2e-crash[01] is \w+ \(exited \d+ time\(s\)\)", message), message
    assert "STANDIN_TOKENS must be a whole number" in message
    assert {"e2e-crash0", "e2e-crash1"} <= existing
    assert "e2e-crash-lb" not in existing


@pytest.fixture(autouse=True)
def _cleanup(client: docker.DockerClient) -> Iterator[None]:
    """Whatever a failed test left (the stacks' own destroy runs first)."""
    yield
    for prefix in ("e2e-slow", "e2e-crash", "e2e-quick"):
        remove_named(
            client,
            containers=(f"{prefix}0", f"{prefix}1", f"{prefix}-lb", f"{prefix}-download"),
            networks=[f"{prefix}-net"],
            volumes=[f"{prefix}-cache"],
        )
