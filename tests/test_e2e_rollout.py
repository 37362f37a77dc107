"""Rolling updates under streaming load: no failed request, no cut stream.

The update changes every replica (their environment), which pulumi-docker can
only do by replacing the containers. The applier replaces them the way
Pulumi's engine orders it (docs/rolling-updates.md): a replaced container's
dependent rotation command is deleted first, which drains the replica at
nginx; wave B starts only when wave A is back in rotation. The stand-in cuts
its streams on SIGTERM, as vLLM does, so any replica stopped while serving
would show up here as a cut stream.
"""

from __future__ import annotations

import time

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


def stack(replicas: int, revision: str) -> dict[str, str]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=replicas,
        hfCache={"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        basePort=LB_PORT + 1,
        stopGraceSeconds=20,
        extraEnv={
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "2",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": "40",
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


@pytest.mark.parametrize("replicas", [2, 4])
def test_update_of_every_replica_fails_nothing(client: docker.DockerClient, replicas: int) -> None:
    _clean(client, replicas)
    first = run_program(stack(replicas, "1"), SECRET_KEYS)
    applier = Applier(client, first.declared)
    update: Applier | None = None
    try:
        applier.apply()
        names = [f"{PREFIX}{i}" for i in range(replicas)]
        before = {n: client.containers.get(n).id for n in names}

        update = Applier(client, run_program(stack(replicas, "2"), SECRET_KEYS).declared)
        update.carry_state_from(applier)
        with streaming_load(LB_URL, API_KEY, workers=2 * replicas, tokens=TOKENS) as streams:
            time.sleep(2)
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

        broken = [s for s in streams if not s.whole]
        during = [s for s in streams if s.finished >= started and s.started <= started + took]
        print(
            f"\nrolling update, {replicas} replicas: {took:.1f} s; "
            f"{len(streams)} streams ({len(during)} overlapping the update), "
            f"{len(broken)} failed or cut"
        )
        assert during, "no stream overlapped the update"
        assert not broken, broken[:5]
    finally:
        if update is not None:
            applier.carry_state_from(update)
        applier.destroy()
        _clean(client, replicas)


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
