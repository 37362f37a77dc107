"""What the real provider would read back, and what a change does, on the real engine.

pulumi-docker reads a container back from `docker inspect` after every `up`
(the provider's Read) and diffs it against the declared inputs: anything that
reads back differently shows as a change on every later `up`. The applier's
`read_back` follows the provider's Read for the inputs we declare (health
check durations as Go's `Duration.String()`, command, entry point, CPU set,
security options, stop signal), and its update follows the provider's
force-new rules (`IN_PLACE`), so these tests show, on a real engine, that a
second `up` is a no-op and that a changed health check takes effect.
Facts and sources: docs/provider-inputs.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import docker
import pytest

from tests.support.docker_apply import Applier
from tests.support.docker_engine import remove_named
from tests.support.pulumi_capture import Run, run_program
from tests.test_e2e import SECRET_KEYS, ci_config

pytestmark = pytest.mark.docker

PREFIX = "e2e-fid"
REPLICAS = (f"{PREFIX}0", f"{PREFIX}1")
LB_NAME = f"{PREFIX}-lb"
MODEL = "standin-org/tiny-chat"


def stack(**overrides: Any) -> dict[str, str]:
    values: dict[str, Any] = {
        "namePrefix": PREFIX,
        "networkName": f"{PREFIX}-net",
        "hfCache": {"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        "basePort": 18601,
        "replicas": 2,
        # One core each: this machine has two.
        "cpu": {"cpuSets": ["0", "1"]},
        "stopGraceSeconds": 5,
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "1", "STANDIN_LOAD_SECONDS": "1"},
        "loadBalancer": {
            "name": LB_NAME,
            "port": 18600,
            "bindAddress": "127.0.0.1",
            "image": "vllm-nginx/base:bookworm",
            "dynamicResolve": False,
        },
    }
    values.update(overrides)
    return ci_config(**values)


def _clean(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=(LB_NAME, *REPLICAS),
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers(client: docker.DockerClient) -> Iterator[None]:
    _clean(client)
    yield
    _clean(client)


@pytest.fixture(scope="module")
def deployed(client: docker.DockerClient) -> Iterator[tuple[Run, Applier]]:
    run = run_program(stack(), SECRET_KEYS)
    applier = Applier(client, run.declared)
    try:
        applier.apply()
        yield run, applier
    finally:
        applier.destroy()


def _ids(client: docker.DockerClient) -> dict[str, str]:
    return {name: client.containers.get(name).id or "" for name in REPLICAS}


def test_engine_runs_what_was_declared(
    client: docker.DockerClient, deployed: tuple[Run, Applier]
) -> None:
    for index, name in enumerate(REPLICAS):
        attrs = client.containers.get(name).attrs
        config, host = attrs["Config"], attrs["HostConfig"]
        assert config["Entrypoint"] == ["vllm", "serve"]
        assert config["Cmd"][0] == MODEL
        assert host["CpusetCpus"] == str(index)
        assert f"VLLM_CPU_OMP_THREADS_BIND={index}" in config["Env"]
        assert "seccomp=unconfined" in host["SecurityOpt"]
        assert any("SYS_NICE" in cap for cap in host["CapAdd"])
        assert host["IpcMode"] == "host"
        health = config["Healthcheck"]
        assert health["Interval"] == 1_000_000_000
        assert health["StartPeriod"] == 120 * 1_000_000_000
    lb = client.containers.get(LB_NAME).attrs
    assert lb["Config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert lb["Config"]["StopSignal"] == "SIGQUIT"


def test_second_up_reads_back_no_change(deployed: tuple[Run, Applier]) -> None:
    _run, applier = deployed
    assert applier.drift() == {}
    again = applier.apply()
    assert again.created == []


def test_a_non_canonical_duration_would_show_on_every_up(deployed: tuple[Run, Applier]) -> None:
    """What the program declared before: `120s` reads back as `2m0s`."""
    _run, applier = deployed
    state = applier.container_state[f"vllm-{REPLICAS[0]}"]
    saved = copy.deepcopy(state)
    try:
        state["healthcheck"]["startPeriod"] = "120s"
        drift = applier.drift()
        assert drift[f"vllm-{REPLICAS[0]}"]["healthcheck"][1]["startPeriod"] == "2m0s"
    finally:
        applier.container_state[f"vllm-{REPLICAS[0]}"] = saved


def test_health_check_change_takes_effect_only_by_replacement(
    client: docker.DockerClient, deployed: tuple[Run, Applier]
) -> None:
    _run, applier = deployed
    before = _ids(client)
    changed = run_program(stack(healthCheck={"intervalSeconds": 2}), SECRET_KEYS)

    # Without replace_on_changes the provider updates in place and its Update
    # ignores the health check: the state says 2 s, the engine keeps 1 s.
    unreplaced = [
        replace(d, replace_on_changes=[]) if d.type.endswith("container:Container") else d
        for d in changed.declared
    ]
    plain = Applier(client, unreplaced)
    plain.carry_state_from(applier)
    plain.apply()
    assert _ids(client) == before
    assert set(plain.updated_in_place) >= {f"vllm-{n}" for n in REPLICAS}
    interval = client.containers.get(REPLICAS[0]).attrs["Config"]["Healthcheck"]["Interval"]
    assert interval == 1_000_000_000
    assert plain.drift(), "the next refresh would show the engine's old health check"

    # As declared (replace_on_changes=["healthcheck"]): replaced, and in effect.
    declared = Applier(client, changed.declared)
    declared.carry_state_from(applier)
    declared.apply()
    after = _ids(client)
    assert all(after[n] != before[n] for n in REPLICAS)
    interval = client.containers.get(REPLICAS[0]).attrs["Config"]["Healthcheck"]["Interval"]
    assert interval == 2_000_000_000
    assert declared.drift() == {}
    applier.carry_state_from(declared)


def test_lb_stops_cleanly_on_its_declared_signal(
    client: docker.DockerClient, deployed: tuple[Run, Applier]
) -> None:
    """The provider stops with the declared signal (SIGQUIT: nginx finishes what is in flight)."""
    lb = client.containers.get(LB_NAME)
    lb.stop(timeout=5)
    lb.reload()
    assert lb.attrs["State"]["ExitCode"] == 0
    lb.start()


def test_daemon_additions_are_declared(deployed: tuple[Run, Applier]) -> None:
    """With `--ipc host` the daemon adds `label=disable`; undeclared, every `up` would
    replace the CPU replicas (security_opts is a force-new set)."""
    _run, applier = deployed
    name = f"vllm-{REPLICAS[0]}"
    state = applier.container_state[name]
    saved = copy.deepcopy(state)
    try:
        state["securityOpts"] = ["seccomp=unconfined"]
        read = applier.drift()[name]["securityOpts"][1]
        assert read == ["label=disable", "seccomp=unconfined"]
        state["securityOpts"] = saved["securityOpts"]
        state["capabilities"] = {"adds": ["SYS_NICE"]}
        assert applier.drift()[name]["capabilities"][1] == {"adds": ["CAP_SYS_NICE"]}
    finally:
        applier.container_state[name] = saved
