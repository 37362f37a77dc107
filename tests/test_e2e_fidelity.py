"""What the program declares, as the real engine and the provider read it back and change it.

`pulumi up` runs this project (tests/support/pulumi_engine.py: the real engine
and CLI; pulumi-docker's and pulumi-command's plugins and the Python language
host are our stand-ins that follow their source) on the real Docker engine, a
stack with CPU pinning (one core per replica), so every input the CPU
replicas declare is in play. pulumi-docker reads a container back from
`docker inspect` (its Read) and the engine diffs what it read against what the
program declares: anything the daemon reports otherwise than we declare it (a
health-check duration not in Go's canonical form, a security option the
daemon adds, a capability not in the client's normal form) would show as a
change on every later `up`. So these tests show, through the engine:

- the containers run what was declared (`docker inspect`);
- after `up`, a preview and a refresh find nothing to change, and after the
  refresh (the state now holds what the provider read) a preview still finds
  nothing: what we declare is what the provider reads back;
- a changed health check replaces the replicas (`replace_on_changes`, deleting
  first) and the engine then runs the new values; nginx is not replaced;
- nginx stops cleanly on its declared signal.

The provider's own rules behind this (a health check is neither force-new nor
updated by the provider, a non-canonical duration reads back as a change) are
tested on a small program in tests/test_docker_provider.py. Facts and sources:
docs/provider-inputs.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.support.deployed import Deployed, deployed_stack
from tests.support.docker_engine import remove_named
from tests.test_e2e import ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-fid"
REPLICAS = (f"{PREFIX}0", f"{PREFIX}1")
LB_NAME = f"{PREFIX}-lb"
MODEL = "standin-org/tiny-chat"
HEALTH = {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3}
SECOND = 1_000_000_000


def stack_config(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "namePrefix": PREFIX,
        "networkName": f"{PREFIX}-net",
        "hfCache": {"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        "basePort": 18601,
        "replicas": 2,
        # One core each: this machine has two.
        "cpu": {"cpuSets": ["0", "1"]},
        "stopGraceSeconds": 5,
        "rollout": {"canarySeconds": 0},  # not judged here (tests/test_e2e_canary.py)
        "healthCheck": HEALTH,
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "1", "STANDIN_LOAD_SECONDS": "1"},
        "loadBalancer": loopback_balancer(LB_NAME, 18600),
    }
    values.update(overrides)
    return ci_config(**values)


def _clean(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=(LB_NAME, *REPLICAS, f"{PREFIX}-download"),
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


@pytest.fixture(scope="module")
def deployed(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    directory = tmp_path_factory.mktemp("fid")
    with deployed_stack(client, directory, "fid", stack_config(), clean=_clean, kind=Deployed) as d:
        yield d


def _ids(client: docker.DockerClient) -> dict[str, str]:
    return {name: client.containers.get(name).id or "" for name in (*REPLICAS, LB_NAME)}


def test_engine_runs_what_was_declared(deployed: Deployed) -> None:
    client = deployed.client
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
        assert health["Interval"] == 1 * SECOND
        assert health["StartPeriod"] == 120 * SECOND
    lb = client.containers.get(LB_NAME).attrs
    assert lb["Config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert lb["Config"]["StopSignal"] == "SIGQUIT"


def test_what_is_declared_is_what_the_provider_reads_back(deployed: Deployed) -> None:
    """No change before a refresh, none found by it, none after it: every input
    of the replicas and nginx reads back as declared (durations in Go's form,
    the daemon's `label=disable` with `--ipc host`, `CAP_SYS_NICE`)."""
    client, stack = deployed.client, deployed.stack
    before = _ids(client)
    stack.preview(expect_no_changes=True)
    stack.refresh(expect_no_changes=True)
    stack.preview(expect_no_changes=True)
    assert _ids(client) == before
    resources = stack.resources()
    for name in REPLICAS:
        declared = resources[f"vllm-{name}"]["inputs"]
        read = resources[f"vllm-{name}"]["outputs"]
        assert read["healthcheck"] == declared["healthcheck"]
        assert read["healthcheck"]["startPeriod"] == "2m0s"
        assert sorted(read["securityOpts"]) == sorted(declared["securityOpts"])
        assert "label=disable" in read["securityOpts"]
        assert read["capabilities"]["adds"] == declared["capabilities"]["adds"] == ["CAP_SYS_NICE"]
        for key in ("entrypoints", "command", "cpuSet", "ipcMode", "restart"):
            assert read[key] == declared[key], key
    lb = resources["vllm-lb"]["outputs"]
    assert lb["stopSignal"] == "SIGQUIT"


def test_lb_stops_cleanly_on_its_declared_signal(deployed: Deployed) -> None:
    """The provider stops with the declared signal (SIGQUIT: nginx finishes what is in flight)."""
    lb = deployed.client.containers.get(LB_NAME)
    lb.stop(timeout=5)
    lb.reload()
    assert lb.attrs["State"]["ExitCode"] == 0
    lb.start()


def test_health_check_change_takes_effect_by_replacement(deployed: Deployed) -> None:
    """pulumi-docker neither replaces nor updates a container whose health check
    changed; `replace_on_changes=["healthcheck"]` makes the engine replace it,
    deleting first, and the new container runs the new values."""
    client, stack = deployed.client, deployed.stack
    before = _ids(client)
    stack.write_config({"healthCheck": {**HEALTH, "intervalSeconds": 2}})
    preview = stack.preview()
    for name in REPLICAS:
        assert "replace" in preview.ops(f"vllm-{name}"), preview.changed()
    up = stack.up()
    for name in REPLICAS:
        assert up.ops(f"vllm-{name}") == ["delete-replaced", "replace", "create-replacement"]
    assert "vllm-lb" not in up.changed(), up.changed()
    after = _ids(client)
    assert all(after[n] != before[n] for n in REPLICAS)
    assert after[LB_NAME] == before[LB_NAME]
    for name in REPLICAS:
        health = client.containers.get(name).attrs["Config"]["Healthcheck"]
        assert health["Interval"] == 2 * SECOND
        assert health["Timeout"] == 2 * SECOND and health["Retries"] == 3
    stack.preview(expect_no_changes=True)
