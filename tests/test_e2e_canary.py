"""Canary updates by the real Pulumi CLI under streaming load: a slower image stops after
the first wave, an equal one goes through.

Two stand-in replicas, so an update has two waves, `[canary0]` then
`[canary1]`; `rollout.canarySeconds` is short. The images are the test's own:
tags built `FROM` the stand-in image, one whose `ENV` makes time to first token
eight times slower (400 ms, the stand-in's default being 50 ms), one whose
`ENV` is the same (only a label differs, so the replicas are replaced all the
same). The stack sets no `STANDIN_TTFT_MS`: the image decides, as a new vLLM
image or new arguments would.

The slower image: `pulumi up` replaces the first replica, the canary step
watches it against the second under the clients' streams, fails the update
with its message, takes the canary out of nginx, and the second replica keeps
serving, not replaced; no stream fails. Then the equal image (the revert):
`pulumi up` replaces the canary again, puts it back, the canary passes, and
the second wave is replaced; no stream fails, and a preview shows no change.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from tests.support.deployed import Deployed, deployed_stack
from tests.support.docker_engine import STANDIN_TAG, remove_named
from tests.support.pulumi_engine import Result
from tests.support.streaming_load import Stream, streaming_load
from tests.test_e2e import API_KEY, ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-canary"
LB_PORT = 18670
LB_URL = f"http://127.0.0.1:{LB_PORT}"
NAMES = (f"{PREFIX}0", f"{PREFIX}1")
SLOW = "vllm-nginx/standin-canary:slow"
EQUAL = "vllm-nginx/standin-canary:equal"
CANARY = "vllm-canary"
WORKERS = 6
TOKENS = 8


def stack(image: str) -> dict[str, Any]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=2,
        image={"prebuilt": image},
        hfCache={"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        basePort=LB_PORT + 1,
        shutdownTimeoutSeconds=10,
        stopGraceSeconds=20,
        # No STANDIN_TTFT_MS: the image's own environment sets it.
        extraEnv={
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "1",
            "STANDIN_TOKEN_MS": "10",
        },
        rollout={"canarySeconds": 3, "canaryMinRequests": 8},
        loadBalancer=loopback_balancer(f"{PREFIX}-lb", LB_PORT, failWindowSeconds=5),
    )


def _image(client: docker.DockerClient, tag: str, lines: str) -> None:
    dockerfile = f"FROM {STANDIN_TAG}\n{lines}\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)


def _clean(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}-lb", *NAMES],
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


class Deployment(Deployed):
    def ids(self) -> dict[str, str]:
        return {n: str(self.client.containers.get(n).id) for n in NAMES}

    def image_of(self, name: str) -> str:
        return str(self.client.containers.get(name).attrs["Image"])

    def nginx_config(self) -> str:
        lb = self.client.containers.get(f"{PREFIX}-lb")
        output = lb.exec_run(["cat", "/etc/nginx/nginx.conf"]).output
        assert isinstance(output, bytes)
        return output.decode()

    def update(self, image: str, *, failing: bool) -> tuple[str, list[Stream], Result]:
        """`pulumi up` to `image` under streams; what it printed, the streams, the result."""
        self.stack.write_config(stack(image))
        with streaming_load(LB_URL, API_KEY, workers=WORKERS, tokens=TOKENS) as streams:
            time.sleep(0.5)
            started = time.monotonic()
            if failing:
                failed = self.stack.up_failing()
                output, result = failed.output, failed.result
            else:
                result = self.stack.up()
                output = "\n".join(text for _name, text in result.messages)
            print(f"\n`pulumi up` to {image}: {time.monotonic() - started:.1f} s")
            time.sleep(0.5)
        return output, streams, result


@pytest.fixture(scope="module")
def deployment(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    _image(client, SLOW, "ENV STANDIN_TTFT_MS=400")
    _image(client, EQUAL, 'LABEL vllm-nginx.test.canary="equal"')
    try:
        with deployed_stack(
            client,
            tmp_path_factory.mktemp("canary"),
            "canary",
            stack(STANDIN_TAG),
            clean=_clean,
            secrets={"apiKey": API_KEY},
            kind=Deployment,
        ) as deployed:
            yield deployed
    finally:
        for tag in (SLOW, EQUAL):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)


def canary_message(result: Result) -> str:
    """The canary step's failure, as the step printed it (each line once; the CLI's
    live display repeats them behind the resource's status)."""
    lines = result.logged(CANARY)
    start = next(i for i, line in enumerate(lines) if line.startswith("canary failed:"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("What to do:"))
    return "\n".join(lines[start : end + 1])


def diagnostics(output: str) -> str:
    """What `pulumi up` shows the user for the canary at the end, under Diagnostics."""
    lines = output.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.strip() == f"command:local:Command ({CANARY}):"
    )
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("What to do:"))
    return "\n".join(lines[start : end + 1])


def test_first_deploy_has_no_canary(deployment: Deployment) -> None:
    said = deployment.first.logged(CANARY)
    first_id = deployment.ids()[NAMES[0]][:12]
    assert said == [
        f"canary: no load balancer yet (first deploy): {NAMES[0]} not watched",
        f"canary: done for containers {first_id}",
    ], said


def test_a_slower_image_stops_after_the_first_wave(deployment: Deployment) -> None:
    before = deployment.ids()
    old_image = deployment.image_of(NAMES[1])
    output, streams, result = deployment.update(SLOW, failing=True)
    message = canary_message(result)
    shown = diagnostics(output)
    print(f"\n`pulumi up` ended with:\n{shown}")
    assert all(line.strip() in shown for line in message.splitlines())
    broken = [s for s in streams if not s.whole]
    print(f"{len(streams)} streams during the update, {len(broken)} failed or cut")

    assert message.startswith(
        f"canary failed: {NAMES[0]} (the first wave, updated) is worse than {NAMES[1]}"
    ), message
    assert "rollout.canaryMaxTtftRatio 1.5) WORSE" in message, message
    assert message.endswith(
        "What to do: revert the change (or raise rollout.canaryMaxTtftRatio if this is "
        "expected), then `pulumi up` again."
    )
    # The first wave only: the canary replaced, the second replica untouched.
    after = deployment.ids()
    assert after[NAMES[0]] != before[NAMES[0]]
    assert after[NAMES[1]] == before[NAMES[1]]
    assert deployment.image_of(NAMES[1]) == old_image
    assert result.ops(f"vllm-{NAMES[1]}") == [], result.changed()
    # The canary out of rotation, the old replica in it, serving.
    config = deployment.nginx_config()
    assert f"#drained# server {NAMES[0]}:8000" in config, config
    assert f"#drained# server {NAMES[1]}" not in config and f"server {NAMES[1]}:8000" in config
    hostnames = {deployment.client.containers.get(n).attrs["Config"]["Hostname"]: n for n in NAMES}
    answered = set()
    for _ in range(6):
        response = httpx.post(
            f"{LB_URL}/v1/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        answered.add(hostnames[response.headers["x-replica"]])
    assert answered == {NAMES[1]}
    assert streams, "no stream ran"
    assert not broken, broken[:5]

    # `pulumi up` again, nothing reverted: the same canary is put back, watched
    # again and taken out again; still nothing else replaced.
    again_output, again_streams, again = deployment.update(SLOW, failing=True)
    said = again.logged(CANARY)
    assert f"canary: {NAMES[0]} back in rotation to be watched again" in said, said
    assert canary_message(again).startswith(f"canary failed: {NAMES[0]}"), again_output[-3000:]
    assert deployment.ids() == after
    assert f"#drained# server {NAMES[0]}:8000" in deployment.nginx_config()
    assert not [s for s in again_streams if not s.whole]


def test_the_revert_to_an_equal_image_completes(deployment: Deployment) -> None:
    _output, streams, result = deployment.update(EQUAL, failing=False)
    said = result.logged(CANARY)
    print("\n" + "\n".join(said))
    broken = [s for s in streams if not s.whole]
    print(f"{len(streams)} streams during the update, {len(broken)} failed or cut")
    assert any(
        line.startswith(f"canary: {NAMES[0]} no worse than {NAMES[1]}, the update goes on")
        for line in said
    ), said
    equal = deployment.client.images.get(EQUAL).id
    assert all(deployment.image_of(n) == equal for n in NAMES)
    # Both replaced, the second wave after the canary's verdict, both in rotation.
    verdict = max(i for i, s in enumerate(result.steps) if s.name == CANARY and s.kind == "outputs")
    assert result.index(f"vllm-{NAMES[1]}-rotation", "pre", "delete-replaced") > verdict
    config = deployment.nginx_config()
    assert "#drained#" not in config, config
    assert not broken, broken[:5]
    deployment.stack.preview(expect_no_changes=True)

    # A canary setting alone: the step is updated, finds the same first wave it
    # passed, and does not watch it again; nothing else changes.
    values = stack(EQUAL)
    values["rollout"] = {**values["rollout"], "canaryMinRequests": 9}
    deployment.stack.write_config(values)
    settings_only = deployment.stack.up()
    assert settings_only.changed() == {CANARY: ["update"]}, settings_only.changed()
    said = settings_only.logged(CANARY)
    assert said[0].startswith(f"canary: {NAMES[0]} unchanged since the canary passed them"), said
