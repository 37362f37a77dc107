"""Rolling updates by the real Pulumi CLI under streaming load: no failed or cut stream.

`pulumi up` runs this project on one stack (tests/support/pulumi_engine.py: the
real engine and CLI; pulumi-docker's and pulumi-command's plugins and the
Python language host are our stand-ins that follow their source), first to
deploy, then again after a stack config change while clients stream chats
through nginx. The vLLM stand-in image plays vLLM.

The update changes a value of `extraEnv`, so every replica's `envs`, which
pulumi-docker can only apply by replacing the container. The engine orders
that replacement (docs/rolling-updates.md): a replica is replaced delete-first,
and before its delete the engine deletes the dependent its replacement
condemns, its rotation command (trigger: the replica's id), whose delete
drains the replica at nginx; the rotation's create, once the new container
exists, puts it back; the next wave's replicas wait for the previous wave's
rotations. All of that is asserted from the engine's event log, in the order
the engine reported its steps. The stand-in stops as vLLM v0.33.0 does: with
`shutdownTimeoutSeconds` > 0 it finishes its streams on SIGTERM and answers
new requests with an abort, with 0 it aborts its streams (and the drain waits
at nginx), so a replica stopped too early, or sent a request while stopping,
shows up here as a failed or cut stream.

Adding and removing a replica (`replicas` 3 -> 4 -> 3) under load: only that
replica (and its rotation command) is created or deleted, the others are
untouched, and nginx gets the new upstream list by a reload in the running
container, never by being replaced.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.docker_engine import remove_named
from tests.support.pulumi_engine import Result, Stack
from tests.support.streaming_load import streaming_load
from tests.test_e2e import API_KEY, ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-roll"
LB_PORT = 18660
LB_URL = f"http://127.0.0.1:{LB_PORT}"
TOKENS = 24


def stack(
    replicas: int,
    revision: str,
    *,
    shutdown_timeout: int = 10,
    stop_grace: int = 20,
    token_ms: int = 40,
) -> dict[str, Any]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=replicas,
        hfCache={"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        basePort=LB_PORT + 1,
        shutdownTimeoutSeconds=shutdown_timeout,
        stopGraceSeconds=stop_grace,
        extraEnv={
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "2",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": str(token_ms),
            "STANDIN_REVISION": revision,
        },
        loadBalancer=loopback_balancer(f"{PREFIX}-lb", LB_PORT, failWindowSeconds=5),
    )


def deploy(directory: Path, replicas: int, revision: str = "1", **options: Any) -> Stack:
    """A stack of this deployment, brought up by `pulumi up`."""
    deployed = Stack(
        directory, "roll", stack(replicas, revision, **options), secrets={"apiKey": API_KEY}
    )
    deployed.up()
    return deployed


def _clean(client: docker.DockerClient, replicas: int) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}-lb", *[f"{PREFIX}{i}" for i in range(replicas)]],
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


def _teardown(client: docker.DockerClient, deployed: Stack | None, replicas: int) -> None:
    try:
        if deployed is not None:
            deployed.destroy()
    finally:
        _clean(client, replicas)


def replica(name: str) -> str:
    """The resource name of a replica's container (the component's name, then the container's)."""
    return f"vllm-{name}"


def rotation(name: str) -> str:
    return f"vllm-{name}-rotation"


def nginx_config(client: docker.DockerClient) -> str:
    output = client.containers.get(f"{PREFIX}-lb").exec_run(["cat", "/etc/nginx/nginx.conf"]).output
    assert isinstance(output, bytes)
    return output.decode()


REPLACED = ["delete-replaced", "replace", "create-replacement"]
"""The steps of a delete-before-replace, as the engine reports them."""


def assert_rolled_in_waves(update: Result, names: list[str]) -> None:
    """Each replica drained before its delete and resumed after its create; each
    wave's first step after the previous wave's last rotation is back."""
    for name in names:
        assert update.ops(replica(name)) == REPLACED, update.changed()
        # The rotation command is condemned by its replica's replacement: deleted
        # (drain) and created again (resume), never updated in place.
        assert update.ops(rotation(name)) == REPLACED, update.changed()
        drained = update.index(rotation(name), "outputs", "delete-replaced")
        assert drained < update.index(replica(name), "pre", "delete-replaced")
        created = update.index(replica(name), "outputs", "create-replacement")
        assert created < update.index(rotation(name), "pre", "create-replacement")
        # What the commands printed: the drain found nginx and the replica, the
        # resume put the new one back (components.steps.rollout).
        said = update.logged(rotation(name))
        assert any(line.startswith(f"{name}: out of rotation") for line in said), said
        assert any(line.startswith(f"{name}: healthy, back in rotation") for line in said), said
    size = max(1, len(names) // 2)
    waves = [names[i : i + size] for i in range(0, len(names), size)]
    for previous, wave in itertools.pairwise(waves):
        back = max(update.index(rotation(n), "outputs", "create-replacement") for n in previous)
        for name in wave:
            # Its replacement starts with its rotation's drain.
            assert update.index(rotation(name), "pre", "delete-replaced") > back, (previous, wave)
            assert update.index(replica(name), "pre", "delete-replaced") > back, (previous, wave)


def _update_under_load(
    client: docker.DockerClient,
    directory: Path,
    replicas: int,
    *,
    workers: int,
    tokens: int,
    warm_up: float = 2,
    **options: Any,
) -> dict[str, Any]:
    """Deploy, then replace every replica by `pulumi up` under `workers`
    back-to-back streams of `tokens` tokens; checks the replacement and its
    waves, returns the figures."""
    _clean(client, replicas)
    deployed: Stack | None = None
    try:
        deployed = deploy(directory, replicas, **options)
        names = [f"{PREFIX}{i}" for i in range(replicas)]
        before = {n: client.containers.get(n).id for n in names}
        lb_id = client.containers.get(f"{PREFIX}-lb").id

        # Read when the program runs: the replicas run, so the waves are declared.
        deployed.write_config(stack(replicas, "2", **options))
        with streaming_load(LB_URL, API_KEY, workers=workers, tokens=tokens) as streams:
            time.sleep(warm_up)
            started = time.monotonic()
            update = deployed.up()
            took = time.monotonic() - started
            time.sleep(2)

        after = {n: client.containers.get(n).id for n in names}
        assert all(after[n] != before[n] for n in names), "every replica must be replaced"
        for name in names:
            env = client.containers.get(name).attrs["Config"]["Env"]
            assert "STANDIN_REVISION=2" in env
        assert_rolled_in_waves(update, names)
        # nginx is neither replaced nor updated: the drains and resumes edit its config.
        assert "vllm-lb" not in update.changed(), update.changed()
        assert client.containers.get(f"{PREFIX}-lb").id == lb_id, "nginx was replaced"
        for name in names:
            assert f"server {name}:8000" in nginx_config(client)
        deployed.preview(expect_no_changes=True)
        # The drain step's own time, as it printed it; "drained after" is the wait
        # on vllm:num_requests_running (shutdownTimeoutSeconds 0), "after" without
        # it only the nginx part (vLLM finishes the streams itself).
        drains = [
            float(m[1])
            for name in names
            for line in update.logged(rotation(name))
            if (m := re.search(r"out of rotation after ([0-9.]+) s", line))
        ]
        return {"took": took, "streams": streams, "started": started, "drains": drains}
    finally:
        _teardown(client, deployed, replicas)


# Two replicas with vLLM's drain are updated under load with the same assertions
# in tests/test_e2e_pools.py (the chat pool) and tests/test_e2e_canary.py (the
# revert), so here: four (two waves of two) and the abort mode.
@pytest.mark.parametrize(("replicas", "shutdown_timeout"), [(4, 10), (2, 0)], ids=["4", "2-abort"])
def test_update_of_every_replica_fails_nothing(
    client: docker.DockerClient, tmp_path: Path, replicas: int, shutdown_timeout: int
) -> None:
    """Short streams; with `shutdownTimeoutSeconds: 0` the drain waits at nginx."""
    result = _update_under_load(
        client,
        tmp_path,
        replicas,
        workers=2 * replicas,
        tokens=TOKENS,
        shutdown_timeout=shutdown_timeout,
    )
    took, streams, started = result["took"], result["streams"], result["started"]
    broken = [s for s in streams if not s.whole]
    during = [s for s in streams if s.finished >= started and s.started <= started + took]
    print(
        f"\nrolling update, {replicas} replicas, shutdown timeout {shutdown_timeout}: "
        f"`pulumi up` {took:.1f} s; {len(streams)} streams ({len(during)} overlapping the "
        f"update), {len(broken)} failed or cut"
    )
    assert during, "no stream overlapped the update"
    assert not broken, broken[:5]
    assert len(result["drains"]) == (replicas if shutdown_timeout else 0)


LONG_TOKENS = 350
LONG_TOKEN_MS = 100


def test_update_under_streams_that_outlast_the_drain_step(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """Streams of 35 s, longer than the whole drain step before vLLM v0.33.0
    (its wait on `vllm:num_requests_running` ended at stopGraceSeconds, 30 s by
    default, and vLLM v0.11 then cut what ran): the step now only takes the
    replica out of nginx, and every stream in flight ends inside vLLM's
    `--shutdown-timeout` (45 s) while Docker waits `stopGraceSeconds` (55 s).
    Figures: docs/rolling-updates.md."""
    replicas, workers = 2, 4
    result = _update_under_load(
        client,
        tmp_path,
        replicas,
        workers=workers,
        tokens=LONG_TOKENS,
        warm_up=5,
        shutdown_timeout=45,
        stop_grace=55,
        token_ms=LONG_TOKEN_MS,
    )
    took, streams, started = result["took"], result["streams"], result["started"]
    broken = [s for s in streams if not s.whole]
    lengths = sorted(s.finished - s.started for s in streams if s.whole)
    # Streams that were running when their replica was told to stop.
    spanning = [s for s in streams if s.started < started + took and s.finished > started]
    print(
        f"\nrolling update, {replicas} replicas under {workers} streams of {LONG_TOKENS} tokens "
        f"x {LONG_TOKEN_MS} ms: `pulumi up` {took:.1f} s; drain steps {result['drains']} s; "
        f"{len(streams)} streams ({len(spanning)} overlapping the update), lasting "
        f"{lengths[0]:.1f}-{lengths[-1]:.1f} s; {len(broken)} failed or cut"
    )
    assert not broken, broken[:5]
    assert len(result["drains"]) == replicas
    assert max(result["drains"]) < lengths[0], "the streams must outlast the drain step"
    assert lengths[0] > 30, "longer than the old drain's bound (stopGraceSeconds' default)"
    # Each replica's stop waited for its streams: the update took longer than the
    # streams' length, far more than the drain steps.
    assert took > lengths[0]
    assert len(spanning) >= workers


def test_adding_and_removing_a_replica_keeps_the_balancer(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """The upstream list changes by a reload in the running nginx, never by replacing it."""
    _clean(client, 4)
    deployed: Stack | None = None
    try:
        deployed = deploy(tmp_path, 3)
        lb_id = client.containers.get(f"{PREFIX}-lb").id
        kept = [f"{PREFIX}{i}" for i in range(3)]
        kept_ids = {n: client.containers.get(n).id for n in kept}
        extra = f"{PREFIX}3"
        for replicas in (4, 3):
            deployed.write_config({"replicas": replicas})
            with streaming_load(LB_URL, API_KEY, workers=4, tokens=TOKENS) as streams:
                time.sleep(1.5)
                started = time.monotonic()
                result = deployed.up()
                took = time.monotonic() - started
                time.sleep(1.5)
            changed = result.changed()
            adding = replicas == 4
            assert (f"server {extra}:8000" in nginx_config(client)) == adding
            # Only the added or removed replica and its rotation command; the others
            # and nginx untouched; nginx's files rewritten and reloaded in place.
            op = "create" if adding else "delete"
            assert result.ops(replica(extra)) == [op], changed
            assert result.ops(rotation(extra)) == [op], changed
            for name in kept:
                assert replica(name) not in changed and rotation(name) not in changed, changed
            assert "vllm-lb" not in changed, changed
            assert result.ops("vllm-lb-config") == ["update"], changed
            reloaded = result.index("vllm-lb-config", "outputs", "update")
            if adding:
                # In rotation only once it serves: created and resumed before the reload.
                assert result.index(rotation(extra), "outputs", "create") < reloaded
            else:
                # Out of nginx's config first, then drained, then stopped.
                assert reloaded < result.index(rotation(extra), "pre", "delete")
                drained = result.index(rotation(extra), "outputs", "delete")
                assert drained < result.index(replica(extra), "pre", "delete")
                said = result.logged(rotation(extra))
                assert any(line.startswith(f"{extra}: out of rotation") for line in said), said
            assert any("reloaded" in line for line in result.logged("vllm-lb-config"))
            assert client.containers.get(f"{PREFIX}-lb").id == lb_id, "nginx was replaced"
            assert {n: client.containers.get(n).id for n in kept} == kept_ids
            present = [c.name for c in client.containers.list(all=True, filters={"name": extra})]
            assert (extra in present) == adding, present

            broken = [s for s in streams if not s.whole]
            print(
                f"\n{'adding' if adding else 'removing'} a replica: `pulumi up` {took:.1f} s, "
                f"{len(streams)} streams, {len(broken)} failed or cut; changed {sorted(changed)}"
            )
            assert streams, "no stream ran"
            assert not broken, broken[:5]
        deployed.preview(expect_no_changes=True)
    finally:
        _teardown(client, deployed, 4)
