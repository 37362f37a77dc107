"""The readiness check on a real engine: it passes as soon as replicas serve, and when
they do not, `pulumi up` must stop with a useful error.

Same method as test_e2e.py (declared resources applied in graph order), with
stacks made to fail: replicas too slow for `readyTimeoutSeconds`, and replicas
crashing at start. In both, the error names a replica and shows the end of its
log, and nothing after the check (nginx) is created.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.support.docker_apply import Applier, ApplyError
from tests.support.docker_engine import (
    remove_named,
)
from tests.support.pulumi_capture import run_program
from tests.test_e2e import ci_config

pytestmark = pytest.mark.docker


def failing_stack(prefix: str, port: int, **overrides: Any) -> dict[str, str]:
    return ci_config(
        namePrefix=prefix,
        networkName=f"{prefix}-net",
        hfCache={"volume": f"{prefix}-cache", "keepOnDestroy": False},
        basePort=port + 1,
        replicas=2,
        loadBalancer={
            "name": f"{prefix}-lb",
            "port": port,
            "bindAddress": "127.0.0.1",
            "image": "vllm-nginx/base:bookworm",
            "dynamicResolve": False,
        },
        **overrides,
    )


def _names(client: docker.DockerClient) -> set[str]:
    return {c.name or "" for c in client.containers.list(all=True)}


def _apply_expecting_failure(
    client: docker.DockerClient, config: dict[str, str]
) -> tuple[str, set[str]]:
    """The error, and the containers that existed when the update stopped."""
    run = run_program(config, ["vllm-nginx:apiKey"])
    applier = Applier(client, run.declared)
    with pytest.raises(ApplyError) as caught:
        applier.apply()
    existing = _names(client)
    # keepOnDestroy is false in these stacks: teardown removes the cache too.
    assert applier.destroy() == []
    volume = json.loads(config["vllm-nginx:hfCache"])["volume"]
    assert volume not in {v.name for v in client.volumes.list()}
    return str(caught.value), existing


def test_ready_once_health_answers_not_at_dockers_next_probe(
    client: docker.DockerClient,
) -> None:
    """The check asks each replica's /health at its published port. Docker's own
    probe runs every `healthCheck.intervalSeconds` (60 here), so had the check
    waited for Docker's verdict it would still be waiting: the whole deployment
    is up while Docker has not run its first probe."""
    config = failing_stack(
        "e2e-quick",
        18350,
        healthCheck={"intervalSeconds": 60},
        extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "1"},
    )
    applier = Applier(client, run_program(config, ["vllm-nginx:apiKey"]).declared)
    try:
        applied = applier.apply()
        for name in ("e2e-quick0", "e2e-quick1"):
            health = client.containers.get(name).attrs["State"]["Health"]
            assert health["Status"] == "starting", health
            assert not health["Log"], "Docker has probed already: the test proves nothing"
        said = applied.outputs["vllm-replicas-ready"]["stdout"]
        assert "e2e-quick0 ready after" in said and "e2e-quick1 ready after" in said
        assert "e2e-quick-lb" in _names(client)
    finally:
        assert applier.destroy() == []


def test_replica_not_ready_in_time(client: docker.DockerClient) -> None:
    config = failing_stack(
        "e2e-slow",
        18300,
        readyTimeoutSeconds=3,
        extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_LOAD_SECONDS": "60"},
    )
    message, existing = _apply_expecting_failure(client, config)
    assert "vllm-replicas-ready" in message
    assert "replica e2e-slow0 not ready after 3 s (readyTimeoutSeconds)" in message
    assert "last 40 log lines" in message
    assert "standin-org/tiny-chat" in message, "the log tail should show the stand-in's output"
    assert {"e2e-slow0", "e2e-slow1"} <= existing
    assert "e2e-slow-lb" not in existing


def test_replica_crashing_at_start(client: docker.DockerClient) -> None:
    # A setting the stand-in refuses at start, as vLLM refuses a bad argument.
    config = failing_stack(
        "e2e-crash", 18400, extraEnv={"STANDIN_DOWNLOAD_SECONDS": "0", "STANDIN_TOKENS": "0"}
    )
    message, existing = _apply_expecting_failure(client, config)
    # Both replicas crash; the check names whichever it finds first.
    assert re.search(r"replica e2e-crash[01] is \w+ \(exited \d+ time\(s\)\)", message), message
    assert "STANDIN_TOKENS must be a whole number" in message
    assert {"e2e-crash0", "e2e-crash1"} <= existing
    assert "e2e-crash-lb" not in existing


@pytest.fixture(autouse=True)
def _cleanup(client: docker.DockerClient) -> Iterator[None]:
    yield
    for prefix in ("e2e-slow", "e2e-crash", "e2e-quick"):
        remove_named(
            client,
            containers=(f"{prefix}0", f"{prefix}1", f"{prefix}-lb", f"{prefix}-download"),
            networks=[f"{prefix}-net"],
            volumes=[f"{prefix}-cache"],
        )
