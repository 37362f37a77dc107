"""The download step through the real Pulumi CLI: once, first, the token never shown.

`pulumi up` runs this project (tests/support/pulumi_engine.py: the real engine
and CLI; pulumi-docker's and pulumi-command's plugins and the Python language
host are our stand-ins that follow their source) on the real Docker engine,
with `hfToken` set by `pulumi config set --secret` as a user sets it. The
download job is the real `components/containers/vllm/download_job.py`, run by
the real `components.steps.download` in a container of the vLLM stand-in
image, whose `huggingface_hub` is the stand-in hub (`standin/hubshim.py`):
what this proves is our side (order in the engine's graph, the token as a
file and as a Pulumi secret, warm cache, error mapping, cleanup), not
huggingface_hub's.

What it proves: the engine starts no replica before the download step is done
and starts them together; the job's progress reaches the user while it runs;
the token is in no container's `docker inspect` (the job's included, watched
while it runs), not in the stack file, the state file, the CLI's output or its
event log; a re-run on a warm cache downloads nothing; each download failure
stops `up` before any replica step starts, with the model and the cause in
`up`'s output, and no replica container exists.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import APIError, NotFound

from tests.support.docker_engine import remove_named
from tests.support.pulumi_engine import PulumiFailed, Result, Stack, is_secret, names, reveal
from tests.test_e2e import ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-dl"
TOKEN = "hf_standin_valid_token"
GATED = "standin-org/gated-chat"
JOB_TOKEN_PATH = "HF_TOKEN_PATH=/tmp/vllm-nginx-download/hf_token"


def stack(prefix: str, port: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "namePrefix": prefix,
        "networkName": f"{prefix}-net",
        "hfCache": {"volume": f"{prefix}-cache", "keepOnDestroy": False},
        "compileCache": {"volume": f"{prefix}-compile"},
        "basePort": port + 1,
        "replicas": 2,
        "progressIntervalSeconds": 1,
        "extraEnv": {"STANDIN_DOWNLOAD_SECONDS": "4", "STANDIN_LOAD_SECONDS": "1"},
        "loadBalancer": loopback_balancer(f"{prefix}-lb", port),
    }
    values.update(overrides)
    return ci_config(**values)


def containers_of(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}0", f"{prefix}1", f"{prefix}-lb", f"{prefix}-download")


def replica_resources(prefix: str) -> set[str]:
    return {f"vllm-{prefix}0", f"vllm-{prefix}1"}


def clean(client: docker.DockerClient, prefix: str) -> None:
    remove_named(
        client,
        containers=containers_of(prefix),
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


class JobWatcher:
    """`docker inspect` of the download job while it exists: the step removes it
    when it ends, so only a look during `up` can see what it ran with."""

    def __init__(self, client: docker.DockerClient, name: str) -> None:
        self.client = client
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.seen.append(self.client.api.inspect_container(self.name))
            except (NotFound, APIError):
                continue

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def assert_token_hidden(
    client: docker.DockerClient, stack_: Stack, token: str, job: JobWatcher
) -> None:
    """Nowhere a user or another user of the host could read it."""
    assert job.seen, "the download job was never seen running: the check proves nothing"
    for attrs in job.seen:
        assert JOB_TOKEN_PATH in attrs["Config"]["Env"], "the job got no token file"
        assert token not in json.dumps(attrs)
    for container in client.containers.list(all=True):
        assert token not in json.dumps(container.attrs), container.name
    assert "secure:" in stack_.stack_file.read_text()
    assert token not in stack_.stack_file.read_text()
    assert token not in stack_.state()
    assert token not in stack_.logs_text(events=True)


@dataclass
class Deployed:
    client: docker.DockerClient
    stack: Stack
    first: Result
    job: JobWatcher


@pytest.fixture(scope="module")
def deployed(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    clean(client, PREFIX)
    config = stack(PREFIX, 18700, model=GATED, servedModelName="tiny-chat")
    deployment = Stack(tmp_path_factory.mktemp("dl"), "dl", config, secrets={"hfToken": TOKEN})
    try:
        with JobWatcher(client, f"{PREFIX}-download") as job:
            first = deployment.up()
        yield Deployed(client, deployment, first, job)
    finally:
        try:
            deployment.destroy()
        finally:
            clean(client, PREFIX)


def test_download_runs_once_before_every_replica(deployed: Deployed) -> None:
    client, up = deployed.client, deployed.first
    for name in sorted(replica_resources(PREFIX)):
        assert up.index(name) > up.index("vllm-download", "outputs")
    # Together, not one after another (Docker's creation times are precise).
    created = [client.api.inspect_container(f"{PREFIX}{i}")["Created"] for i in range(2)]
    starts = sorted(_timestamp(c) for c in created)
    assert starts[1] - starts[0] < 1.0, created
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


def _timestamp(created: str) -> float:
    return datetime.fromisoformat(created[:26].rstrip("Z")).timestamp()


def test_progress_is_reported(deployed: Deployed) -> None:
    # While it runs: each line reaches the engine as the step's message.
    said = deployed.first.logged("vllm-download")
    progress = [line for line in said if "progress:" in line]
    assert len(progress) >= 2, said
    assert " of " in progress[-1] and "files" in progress[-1]
    assert progress[-1] in deployed.first.output  # what `up` printed
    ready = deployed.first.logged("vllm-replicas-ready")
    assert any("[ready] waiting for 2 replica(s): loading:" in line for line in ready), ready
    # And kept in the state, secret (the step's environment holds the token).
    resources = deployed.stack.resources()
    stdout = resources["vllm-download"]["outputs"]["stdout"]
    assert is_secret(stdout)
    assert [line for line in reveal(stdout).splitlines() if "progress:" in line]
    assert f"{PREFIX}1 ready after" in resources["vllm-replicas-ready"]["outputs"]["stdout"]


def test_token_only_in_the_download_step_and_only_as_a_secret(deployed: Deployed) -> None:
    client = deployed.client
    for i in range(2):
        env = client.containers.get(f"{PREFIX}{i}").attrs["Config"]["Env"]
        assert "HF_HUB_OFFLINE=1" in env
        assert not [e for e in env if e.startswith("HF_TOKEN")]
    holders = []
    for name, resource in deployed.stack.resources().items():
        for part in ("inputs", "outputs"):
            for key, value in (resource.get(part) or {}).items():
                if TOKEN in json.dumps(reveal(value)):
                    assert TOKEN not in json.dumps(_outside_secrets(value)), (name, part, key)
                    holders.append((name, part, key))
    # The download step uses it; the readiness check gets it only to redact it
    # from the replicas' log tails (components.steps.readiness.redact).
    expected = {("vllm-download", "environment"), ("vllm-replicas-ready", "environment")}
    assert {(n, k) for n, _, k in holders} == expected, holders
    assert_token_hidden(client, deployed.stack, TOKEN, deployed.job)


def _outside_secrets(value: Any) -> Any:
    """An exported value with every secret (wherever it is nested) left out."""
    if is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _outside_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_outside_secrets(v) for v in value]
    return value


def test_warm_cache_does_not_download(deployed: Deployed) -> None:
    """The step run again (`up --replace`, as after a changed step command) finds
    the cache full: it fetches nothing, takes far less than a download, and the
    engine touches nothing else."""
    client, deployment = deployed.client, deployed.stack
    urn = deployment.resources()["vllm-download"]["urn"]
    again = deployment.up("--replace", urn)
    assert set(again.changed()) == {"vllm-download"}, again.changed()
    said = "\n".join(again.logged("vllm-download"))
    assert "already in the cache" in said
    took = re.search(r"download step for \S+ done in ([\d.]+) s", said)
    assert took is not None, said
    assert float(took.group(1)) < 4.0  # STANDIN_DOWNLOAD_SECONDS
    assert len(_downloads(client, f"{PREFIX}0")) == 1


def _fails(
    client: docker.DockerClient, directory: Path, prefix: str, port: int, **overrides: Any
) -> PulumiFailed:
    """`up` of a stack whose download fails: stopped before any replica step.

    Leftovers of an earlier run are removed first, except with `prepared=True`
    (the test made something the stack is to find)."""
    token = overrides.pop("token", None)
    if not overrides.pop("prepared", False):
        clean(client, prefix)
    failing = Stack(
        directory,
        "fail",
        stack(prefix, port, **overrides),
        secrets={"hfToken": token} if token else None,
    )
    try:
        with JobWatcher(client, f"{prefix}-download") as job:
            failed = failing.up_failing()
        steps = failed.result.steps
        assert failed.result.index("vllm-download", "failed") >= 0
        assert not set(names(steps)) & {*replica_resources(prefix), "vllm-lb"}, names(steps)
        existing = {c.name for c in client.containers.list(all=True)}
        assert not existing & set(containers_of(prefix)), existing
        assert "command:local:Command (vllm-download):" in failed.output
        assert "Traceback" not in failed.output
        if token:
            assert_token_hidden(client, failing, token, job)
        return failed
    finally:
        try:
            failing.destroy()
        finally:
            clean(client, prefix)


def test_gated_model_without_token_stops_before_any_replica(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    failed = _fails(client, tmp_path, "e2e-dl-gated", 18710, model=GATED)
    assert f"download of {GATED} failed (access refused): 401: {GATED} is gated" in failed.output


def test_unknown_model_stops_before_any_replica(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    failed = _fails(client, tmp_path, "e2e-dl-unknown", 18720, model="standin-org/no-such-model")
    expected = "download of standin-org/no-such-model failed (model not found): 401: no model"
    assert expected in failed.output


def test_no_network_stops_before_any_replica(client: docker.DockerClient, tmp_path: Path) -> None:
    extra = {"HF_ENDPOINT": "http://hub.e2e-dl.invalid", "STANDIN_DOWNLOAD_SECONDS": "1"}
    failed = _fails(client, tmp_path, "e2e-dl-nonet", 18730, extraEnv=extra)
    assert "failed (no network): cannot reach the hub at http://hub.e2e-dl.invalid" in failed.output


def test_disk_full_stops_before_any_replica(client: docker.DockerClient, tmp_path: Path) -> None:
    prefix = "e2e-dl-full"
    clean(client, prefix)
    # A 1 MiB tmpfs volume for a model of 2 MiB: the cache fills up for real.
    # The program's docker.Volume of that name takes it over (Docker's create
    # of an existing local volume returns it).
    client.volumes.create(
        f"{prefix}-cache",
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"},
    )
    extra = {"STANDIN_HUB_WEIGHT_BYTES": "1048576", "STANDIN_DOWNLOAD_SECONDS": "0"}
    failed = _fails(client, tmp_path, prefix, 18740, extraEnv=extra, prepared=True)
    assert "download of standin-org/tiny-chat failed (disk full)" in failed.output


def test_wrong_token_is_never_printed(client: docker.DockerClient, tmp_path: Path) -> None:
    failed = _fails(
        client, tmp_path, "e2e-dl-badtok", 18750, model=GATED, token="hf_wrong_secret_1"
    )
    assert "refused the token" in failed.output
    assert "hf_wrong_secret_1" not in failed.output
