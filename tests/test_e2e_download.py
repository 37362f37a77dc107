"""The download step on a real engine: once, first, without the token in any env.

Same method as test_e2e.py: the program's declarations applied in graph order
with the Docker SDK, the stand-in image playing vLLM. The download job is the
real `components/containers/vllm/download_job.py` run by the real `components.steps.download` in a
container of the stand-in image, whose `huggingface_hub` is the stand-in hub
(`standin/hubshim.py`): what this proves is our side (order, token as a file,
warm cache, error mapping, cleanup), not huggingface_hub's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.errors import NotFound

from tests.support.docker_apply import Applied, Applier, ApplyError
from tests.support.docker_engine import remove_named
from tests.support.pulumi_capture import run_program
from tests.test_e2e import ci_config

pytestmark = pytest.mark.docker

PREFIX = "e2e-dl"
TOKEN = "hf_standin_valid_token"
GATED = "standin-org/gated-chat"
SECRETS = ["vllm-nginx:apiKey", "vllm-nginx:hfToken"]


def stack(prefix: str, port: int, **overrides: Any) -> dict[str, str]:
    values: dict[str, Any] = {
        "namePrefix": prefix,
        "networkName": f"{prefix}-net",
        "hfCache": {"volume": f"{prefix}-cache", "keepOnDestroy": False},
        "compileCache": {"volume": f"{prefix}-compile"},
        "basePort": port + 1,
        "replicas": 2,
        "progressIntervalSeconds": 1,
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "4", "STANDIN_LOAD_SECONDS": "1"},
        "loadBalancer": {
            "name": f"{prefix}-lb",
            "port": port,
            "bindAddress": "127.0.0.1",
            "image": "vllm-nginx/base:bookworm",
            "dynamicResolve": False,
        },
    }
    values.update(overrides)
    return ci_config(**values)


def clean(client: docker.DockerClient, prefix: str) -> None:
    remove_named(
        client,
        containers=(f"{prefix}0", f"{prefix}1", f"{prefix}-lb", f"{prefix}-download"),
        networks=[f"{prefix}-net"],
        volumes=[f"{prefix}-cache", f"{prefix}-compile"],
    )


def _downloads(client: docker.DockerClient, container: str) -> list[str]:
    out = client.containers.get(container).exec_run(
        ["cat", "/root/.cache/huggingface/standin-downloads.log"]
    )
    if out.exit_code != 0 or not isinstance(out.output, bytes):
        return []
    return out.output.decode().strip().splitlines()


@pytest.fixture(scope="module")
def deployed(client: docker.DockerClient) -> Iterator[tuple[Applier, Applied, dict[str, str]]]:
    clean(client, PREFIX)
    config = stack(PREFIX, 18700, model=GATED, servedModelName="tiny-chat")
    config["vllm-nginx:hfToken"] = TOKEN
    run = run_program(config, SECRETS)
    applier = Applier(client, run.declared)
    try:
        yield applier, applier.apply(), config
    finally:
        applier.destroy()
        clean(client, PREFIX)


def test_download_runs_once_before_every_replica(
    client: docker.DockerClient, deployed: tuple[Applier, Applied, dict[str, str]]
) -> None:
    _, applied, _ = deployed
    download = applied.timings["vllm-download"]
    replicas = [applied.timings[f"vllm-{PREFIX}{i}"] for i in range(2)]
    assert all(r.started >= download.finished for r in replicas)
    # Together, not one after another.
    assert abs(replicas[0].started - replicas[1].started) < 1.0
    assert _downloads(client, f"{PREFIX}0") == _downloads(client, f"{PREFIX}1")
    assert len(_downloads(client, f"{PREFIX}0")) == 1
    fetched = client.containers.get(f"{PREFIX}0").exec_run(
        ["cat", "/root/.cache/huggingface/standin-hub-files.log"]
    )
    assert isinstance(fetched.output, bytes)
    files = [line.split()[-1] for line in fetched.output.decode().splitlines()]
    assert "model-00002-of-00002.safetensors" in files
    assert not [f for f in files if f.startswith("original/") or f.endswith(".bin")]
    assert "consolidated.safetensors" not in files
    with pytest.raises(NotFound):
        client.containers.get(f"{PREFIX}-download")


def test_progress_is_reported(deployed: tuple[Applier, Applied, dict[str, str]]) -> None:
    _, applied, _ = deployed
    out = applied.outputs["vllm-download"]["stdout"]
    progress = [line for line in out.splitlines() if "progress:" in line]
    assert len(progress) >= 2, out
    assert " of " in progress[-1] and "files" in progress[-1]
    ready = applied.outputs["vllm-replicas-ready"]["stdout"]
    assert "[ready] waiting for 2 replica(s): loading:" in ready
    assert f"{PREFIX}1 healthy after" in ready


def test_no_replica_gets_the_token(
    client: docker.DockerClient, deployed: tuple[Applier, Applied, dict[str, str]]
) -> None:
    _, applied, _ = deployed
    for i in range(2):
        env = client.containers.get(f"{PREFIX}{i}").attrs["Config"]["Env"]
        assert "HF_HUB_OFFLINE=1" in env
        assert not [e for e in env if e.startswith("HF_TOKEN")]
        assert TOKEN not in json.dumps(env)
    for outputs in applied.outputs.values():
        assert TOKEN not in json.dumps(outputs)


def test_warm_cache_does_not_download(
    client: docker.DockerClient, deployed: tuple[Applier, Applied, dict[str, str]]
) -> None:
    _, _, config = deployed
    again = Applier(client, run_program(config, SECRETS).declared)
    applied = again.apply()
    out = applied.outputs["vllm-download"]["stdout"]
    assert "already in the cache" in out
    took = applied.timings["vllm-download"]
    assert took.finished - took.started < 4.0
    assert len(_downloads(client, f"{PREFIX}0")) == 1


def _fails(client: docker.DockerClient, prefix: str, port: int, **overrides: Any) -> str:
    token = overrides.pop("token", None)
    config = stack(prefix, port, **overrides)
    if token:
        config["vllm-nginx:hfToken"] = token
    run = run_program(config, SECRETS if token else SECRETS[:1])
    applier = Applier(client, run.declared)
    try:
        with pytest.raises(ApplyError) as caught:
            applier.apply()
        names = {c.name for c in client.containers.list(all=True)}
        assert not names & {f"{prefix}0", f"{prefix}1", f"{prefix}-lb", f"{prefix}-download"}
        message = str(caught.value)
        assert "vllm-download" in message
        return message
    finally:
        applier.destroy()
        clean(client, prefix)


def test_gated_model_without_token_stops_before_any_replica(client: docker.DockerClient) -> None:
    message = _fails(client, "e2e-dl-gated", 18710, model=GATED)
    assert f"download of {GATED} failed (access refused): 401: {GATED} is gated" in message


def test_unknown_model_stops_before_any_replica(client: docker.DockerClient) -> None:
    message = _fails(client, "e2e-dl-unknown", 18720, model="standin-org/no-such-model")
    expected = "download of standin-org/no-such-model failed (model not found): 401: no model"
    assert expected in message


def test_no_network_stops_before_any_replica(client: docker.DockerClient) -> None:
    extra = {"HF_ENDPOINT": "http://hub.e2e-dl.invalid", "STANDIN_DOWNLOAD_SECONDS": "1"}
    message = _fails(client, "e2e-dl-nonet", 18730, extraEnv=extra)
    assert "failed (no network): cannot reach the hub at http://hub.e2e-dl.invalid" in message


def test_disk_full_stops_before_any_replica(client: docker.DockerClient) -> None:
    prefix = "e2e-dl-full"
    clean(client, prefix)
    # A 1 MiB tmpfs volume for a model of 2 MiB: the cache fills up for real.
    client.volumes.create(
        f"{prefix}-cache",
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"},
    )
    extra = {"STANDIN_HUB_WEIGHT_BYTES": "1048576", "STANDIN_DOWNLOAD_SECONDS": "0"}
    message = _fails(client, prefix, 18740, extraEnv=extra)
    assert "download of standin-org/tiny-chat failed (disk full)" in message


def test_wrong_token_is_never_printed(client: docker.DockerClient) -> None:
    message = _fails(client, "e2e-dl-badtok", 18750, model=GATED, token="hf_wrong_secret_1")
    assert "refused the token" in message
    assert "hf_wrong_secret_1" not in message
