"""Named API keys by the real Pulumi CLI on a real Docker engine: a key added and one
removed under streaming load, each by `pulumi config set --secret --path` and `pulumi up`.

Pulumi.ci.yaml with two stand-in replicas and one named key with a rate limit.
While clients stream with that key, a second key is added (`up`), used, and
removed (`up`): every stream ends whole, only the load balancer's config step
runs, the replicas and the nginx container keep their ids, and neither key is
in the state file, the stack outputs or `docker inspect` (docs/api-keys.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import docker
import openai
import pytest

from tests.support.deployed import Deployed as Deployment
from tests.support.deployed import deployed_stack
from tests.support.docker_engine import remove_named
from tests.support.streaming_load import streaming_load
from tests.test_e2e import API_KEY, ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-keys"
LB_PORT = 18970
LB_URL = f"http://127.0.0.1:{LB_PORT}"
REPLICAS = (f"{PREFIX}0", f"{PREFIX}1")
TEAM_A = "sk-e2e-team-a-0123456789"
TEAM_B = "sk-e2e-team-b-9876543210"


def stack() -> dict[str, Any]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=2,
        hfCache={"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        basePort=LB_PORT + 1,
        loadBalancer=loopback_balancer(f"{PREFIX}-lb", LB_PORT, failWindowSeconds=5),
    )


def _clean(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}-lb", *REPLICAS],
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


def set_key(deployment: Deployment, name: str, key: str) -> None:
    # From stdin, never argv; `--path` makes `apiKeys.<name>` an entry of the map.
    deployment.stack.run("config", "set", "--secret", "--path", f"apiKeys.{name}", input=key)


@pytest.fixture(scope="module")
def deployment(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    # The named key is set with `--path` before the first `up`.
    with deployed_stack(
        client,
        tmp_path_factory.mktemp("keys"),
        "keys",
        {**stack(), "apiKeys": {"team-a": {"requestsPerMinute": 6000}}},
        clean=_clean,
        secrets={"apiKey": API_KEY},
        kind=Deployment,
        before_up=lambda stack: stack.run(
            "config", "set", "--secret", "--path", "apiKeys.team-a.key", input=TEAM_A
        ),
    ) as deployed:
        yield deployed


def client_of(key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{LB_URL}/v1", api_key=key, max_retries=0, timeout=30)


def ids(deployment: Deployment) -> dict[str, str | None]:
    return {n: deployment.client.containers.get(n).id for n in (*REPLICAS, f"{PREFIX}-lb")}


def test_a_key_added_and_removed_under_load_fails_nothing(deployment: Deployment) -> None:
    before = ids(deployment)
    assert [m.id for m in client_of(TEAM_A).models.list()] == ["tiny-chat"]
    with pytest.raises(openai.AuthenticationError):
        client_of(TEAM_B).models.list()
    with streaming_load(LB_URL, TEAM_A, workers=3, tokens=24) as streams:
        time.sleep(1.5)
        set_key(deployment, "team-b", TEAM_B)
        added = deployment.stack.up()
        assert [m.id for m in client_of(TEAM_B).models.list()] == ["tiny-chat"]
        deployment.stack.run("config", "rm", "--path", "apiKeys.team-b")
        removed = deployment.stack.up()
        time.sleep(1)
    broken = [s for s in streams if not s.whole]
    print(
        f"\nkey added then removed under load: {len(streams)} streams, {len(broken)} failed; "
        f"changed on add: {sorted(added.changed())}, on remove: {sorted(removed.changed())}"
    )
    assert len(streams) > 20 and broken == [], broken[:3]
    with pytest.raises(openai.AuthenticationError):
        client_of(TEAM_B).models.list()
    client_of(TEAM_A).models.list()
    # Only the balancer's config step ran: no replica, not nginx itself.
    for update in (added, removed):
        changed = update.changed()
        assert set(changed) <= {"vllm-lb-config", "vllm-lb", "vllm-verify"}, changed
        assert changed.get("vllm-lb", ["update"]) == ["update"], changed
    assert ids(deployment) == before


def test_no_key_in_state_outputs_or_docker_inspect(deployment: Deployment) -> None:
    state = deployment.stack.state()
    outputs = json.dumps(deployment.stack.outputs(show_secrets=False))
    inspected = json.dumps(
        [deployment.client.api.inspect_container(n) for n in (*REPLICAS, f"{PREFIX}-lb")]
    )
    for key in (TEAM_A, TEAM_B):
        assert key not in state and key not in outputs and key not in inspected
