"""Rolling updates under streaming load: no failed request, no cut stream.

The update changes every replica (their environment), which pulumi-docker can
only do by replacing the containers. The applier replaces them the way
Pulumi's engine orders it (docs/rolling-updates.md): a replaced container's
dependent rotation command is deleted first, which takes the replica out of
nginx; wave B starts only when wave A is back in rotation. The stand-in stops
as vLLM v0.33.0 does: with `shutdownTimeoutSeconds` > 0 it finishes its
streams on SIGTERM and rejects new requests with an abort, with 0 it aborts
its streams (and the drain waits at nginx), so a replica stopped too early, or
sent a request while stopping, shows up here as a failed or cut stream.
"""

from __future__ import annotations

import re
import time
from typing import Any

import docker
import pytest

from tests.support.docker_apply import Applier
from tests.support.docker_engine import remove_named
from tests.support.pulumi_capture import run_program
from tests.support.streaming_load import streaming_load
from tests.test_e2e import API_KEY, SECRET_KEYS, ci_config

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
) -> dict[str, str]:
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
        loadBalancer={
            "name": f"{PREFIX}-lb",
            "port": LB_PORT,
            "bindAddress": "127.0.0.1",
            "image": "vllm-nginx/base:bookworm",
            "dynamicResolve": False,
            "failWindowSeconds": 5,
        },
    )


def _clean(client: docker.DockerClient, replicas: int) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}-lb", *[f"{PREFIX}{i}" for i in range(replicas)]],
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


def _update_under_load(
    client: docker.DockerClient,
    replicas: int,
    *,
    workers: int,
    tokens: int,
    warm_up: float = 2,
    **options: Any,
) -> dict[str, Any]:
    """Deploy, then replace every replica under `workers` back-to-back streams of
    `tokens` tokens; checks the replacement and its waves, returns the figures."""
    _clean(client, replicas)
    first = run_program(stack(replicas, "1", **options), SECRET_KEYS)
    applier = Applier(client, first.declared)
    update: Applier | None = None
    try:
        applier.apply()
        names = [f"{PREFIX}{i}" for i in range(replicas)]
        before = {n: client.containers.get(n).id for n in names}

        update = Applier(client, run_program(stack(replicas, "2", **options), SECRET_KEYS).declared)
        update.carry_state_from(applier)
        with streaming_load(LB_URL, API_KEY, workers=workers, tokens=tokens) as streams:
            time.sleep(warm_up)
            started = time.monotonic()
            applied = update.apply()
            took = time.monotonic() - started
            time.sleep(2)

        after = {n: client.containers.get(n).id for n in names}
        assert all(after[n] != before[n] for n in names), "every replica must be replaced"
        for name in names:
            env = client.containers.get(name).attrs["Config"]["Env"]
            assert "STANDIN_REVISION=2" in env
        drained = [n for n in update.deleted_commands if n.endswith("-rotation")]
        assert len(drained) == replicas, update.deleted_commands
        # Waves: the second wave's containers are created after the first wave is back.
        timings = applied.timings
        size = max(1, replicas // 2)
        first_wave_back = max(timings[f"vllm-{PREFIX}{i}-rotation"].finished for i in range(size))
        for i in range(size, replicas):
            assert timings[f"vllm-{PREFIX}{i}"].started >= first_wave_back

        drains = [
            float(m[1])
            for out in update.delete_outputs.values()
            if (m := re.search(r"out of rotation after ([0-9.]+) s", out))
        ]
        replaced = [timings[f"vllm-{n}"].finished - timings[f"vllm-{n}"].started for n in names]
        return {
            "took": took,
            "streams": streams,
            "started": started,
            "drains": drains,
            "replaced": replaced,
        }
    finally:
        if update is not None:
            applier.carry_state_from(update)
        applier.destroy()
        _clean(client, replicas)


@pytest.mark.parametrize(
    ("replicas", "shutdown_timeout"), [(2, 10), (4, 10), (2, 0)], ids=["2", "4", "2-abort"]
)
def test_update_of_every_replica_fails_nothing(
    client: docker.DockerClient, replicas: int, shutdown_timeout: int
) -> None:
    """Short streams; with `shutdownTimeoutSeconds: 0` the drain waits at nginx."""
    result = _update_under_load(
        client,
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
        f"{took:.1f} s; {len(streams)} streams ({len(during)} overlapping the update), "
        f"{len(broken)} failed or cut"
    )
    assert during, "no stream overlapped the update"
    assert not broken, broken[:5]
    assert len(result["drains"]) == (replicas if shutdown_timeout else 0)


LONG_TOKENS = 350
LONG_TOKEN_MS = 100


def test_update_under_streams_that_outlast_the_drain_step(client: docker.DockerClient) -> None:
    """Streams of 35 s, longer than the whole drain step before vLLM v0.33.0
    (its wait on `vllm:num_requests_running` ended at stopGraceSeconds, 30 s by
    default, and vLLM v0.11 then cut what ran): the step now only takes the
    replica out of nginx, and every stream in flight ends inside vLLM's
    `--shutdown-timeout` (45 s) while Docker waits `stopGraceSeconds` (55 s).
    Figures: docs/rolling-updates.md."""
    replicas, workers = 2, 4
    result = _update_under_load(
        client,
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
        f"x {LONG_TOKEN_MS} ms: {took:.1f} s; drain steps {result['drains']} s; replica "
        f"replaced in {[round(t, 1) for t in result['replaced']]} s; {len(streams)} streams "
        f"({len(spanning)} overlapping the update), lasting {lengths[0]:.1f}-{lengths[-1]:.1f} s; "
        f"{len(broken)} failed or cut"
    )
    assert not broken, broken[:5]
    assert len(result["drains"]) == replicas
    assert max(result["drains"]) < lengths[0], "the streams must outlast the drain step"
    assert lengths[0] > 30, "longer than the old drain's bound (stopGraceSeconds' default)"
    # A replica's stop waited for its streams: longer than the drain step by far.
    assert min(result["replaced"]) > 5
    assert len(spanning) >= workers


def test_adding_and_removing_a_replica_keeps_the_balancer(client: docker.DockerClient) -> None:
    """The upstream list changes by a reload in the running nginx, never by replacing it."""
    _clean(client, 3)
    first = run_program(stack(2, "1"), SECRET_KEYS)
    applier = Applier(client, first.declared)
    current = applier
    try:
        applier.apply()
        lb_id = client.containers.get(f"{PREFIX}-lb").id
        kept = {n: client.containers.get(n).id for n in (f"{PREFIX}0", f"{PREFIX}1")}
        for replicas in (3, 2):
            step = Applier(client, run_program(stack(replicas, "1"), SECRET_KEYS).declared)
            step.carry_state_from(current)
            with streaming_load(LB_URL, API_KEY, workers=4, tokens=TOKENS) as streams:
                time.sleep(1.5)
                started = time.monotonic()
                applied = step.apply()
                took = time.monotonic() - started
                time.sleep(1.5)
            current = step
            output = (
                client.containers.get(f"{PREFIX}-lb")
                .exec_run(["cat", "/etc/nginx/nginx.conf"])
                .output
            )
            assert isinstance(output, bytes)
            config = output.decode()
            assert (f"server {PREFIX}2:8000" in config) == (replicas == 3), config
            broken = [s for s in streams if not s.whole]
            print(
                f"\n{'adding' if replicas == 3 else 'removing'} a replica: {took:.1f} s, "
                f"{len(streams)} streams, {len(broken)} failed or cut; deleted {applied.deleted}"
            )
            assert not broken, broken[:5]
            assert client.containers.get(f"{PREFIX}-lb").id == lb_id, "nginx was replaced"
            assert {n: client.containers.get(n).id for n in kept} == kept
        assert f"vllm-{PREFIX}2" in applied.deleted
    finally:
        applier.carry_state_from(current)
        applier.destroy()
        _clean(client, 3)
