"""Two model pools behind one nginx, by the real Pulumi CLI on a real Docker engine.

`pulumi up` deploys Pulumi.ci.yaml with `models` instead of its single model
(tests/support/pulumi_engine.py: the real engine and CLI, our stand-ins of the
providers' plugins and the language host): a chat pool of two stand-in
replicas serving one LoRA adapter, and an embedding pool of one (vLLM's
pooling runner). The official `openai` client, through nginx, reaches each
pool by the model it names, and the adapter by its own name. Then an update
of the chat pool alone (its `extraEnv`) under streaming load on the chat
model, the adapter and the embedding pool: nothing fails, the chat pool's
canary step watches its first replica against its second before that one is
replaced, and the embedding pool's container and its commands are not touched
(the engine's event log has no operation on them; it has no canary step).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import openai
import pytest

from tests.support.closed_connection import closed_while_idle
from tests.support.deployed import Deployed as Deployment
from tests.support.deployed import deployed_stack
from tests.support.docker_engine import remove_named
from tests.support.streaming_load import Stream, streaming_load
from tests.test_e2e import API_KEY, ci_config, loopback_balancer

pytestmark = pytest.mark.docker

PREFIX = "e2e-pools"
LB_PORT = 18960
LB_URL = f"http://127.0.0.1:{LB_PORT}"
CHAT = (f"{PREFIX}-chat-0", f"{PREFIX}-chat-1")
EMBED = (f"{PREFIX}-embed-0",)
ADAPTER = "tiny-sql"
TOKENS = 16


def pools(revision: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "chat",
            "model": "standin-org/tiny-chat",
            "servedModelName": "tiny-chat",
            "replicas": 2,
            "adapters": [{"name": ADAPTER, "model": "standin-org/tiny-lora"}],
            "extraEnv": {"STANDIN_REVISION": revision},
        },
        {
            "name": "embed",
            "model": "standin-org/tiny-embed",
            "servedModelName": "tiny-embed",
            "extraArgs": ["--runner", "pooling"],
            "policy": "round_robin",
        },
    ]


def stack(revision: str) -> dict[str, Any]:
    config = ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        models=pools(revision),
        hfCache={"volume": f"{PREFIX}-cache", "keepOnDestroy": False},
        basePort=LB_PORT + 1,
        shutdownTimeoutSeconds=10,
        stopGraceSeconds=20,
        # A short canary: the chat pool's (two replicas, two waves); the embedding
        # pool's one replica has nothing to compare with, so it has none.
        rollout={"canarySeconds": 2, "canaryMinRequests": 2},
        extraEnv={
            # The stand-in hub's catalog (standin/hubshim.py): the models and the adapter.
            "STANDIN_HUB_MODELS": "standin-org/tiny-chat,standin-org/tiny-embed,"
            "standin-org/tiny-lora",
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "1",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": "40",
        },
        loadBalancer=loopback_balancer(f"{PREFIX}-lb", LB_PORT, failWindowSeconds=5),
    )
    del config["model"], config["servedModelName"], config["replicas"]
    return config


def _clean(client: docker.DockerClient) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}-lb", *CHAT, *EMBED],
        networks=[f"{PREFIX}-net"],
        volumes=[f"{PREFIX}-cache"],
    )


@pytest.fixture(scope="module")
def deployment(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with deployed_stack(
        client,
        tmp_path_factory.mktemp("pools"),
        "pools",
        stack("1"),
        clean=_clean,
        secrets={"apiKey": API_KEY},
        kind=Deployment,
    ) as deployed:
        yield deployed


def openai_client() -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{LB_URL}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def test_first_up_downloads_each_repository_once_and_checks_each_pool(
    deployment: Deployment,
) -> None:
    first = deployment.first
    # One download job per pool with something to fetch: the chat pool's takes its
    # model and its adapter, the embedding pool's its model.
    said = "\n".join(first.logged("vllm-chat-download"))
    assert "standin-org/tiny-chat" in said and "standin-org/tiny-lora" in said, said
    assert "standin-org/tiny-embed" in "\n".join(first.logged("vllm-embed-download"))
    assert "vllm-download" not in first.changed()
    # A readiness check per pool, and the verify step asked each name through nginx.
    for check in ("vllm-chat-replicas-ready", "vllm-embed-replicas-ready"):
        assert first.ops(check) == ["create"], first.changed()
    answered = deployment.stack.resources()["vllm-verify"]["outputs"]["stdout"]
    for name in ("tiny-chat", ADAPTER, "tiny-embed"):
        assert f'"{name}": "{name}"' in answered, answered


def test_requests_route_by_model_to_their_pool(deployment: Deployment) -> None:
    client = openai_client()
    listed = {m.id for m in client.models.list()}
    assert {"tiny-chat", ADAPTER, "tiny-embed"} <= listed, listed
    hostnames = {
        deployment.client.containers.get(n).attrs["Config"]["Hostname"]: n for n in CHAT + EMBED
    }
    seen = set()
    for _ in range(4):
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        seen.add(hostnames[str(reply.system_fingerprint)])
    assert seen == set(CHAT), seen
    lora = client.completions.create(model=ADAPTER, prompt="select", max_tokens=2)
    assert lora.model == ADAPTER
    assert hostnames[str(lora.system_fingerprint)] in CHAT
    vectors = client.embeddings.create(model="tiny-embed", input=["a", "b"])
    assert vectors.model == "tiny-embed" and len(vectors.data) == 2
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


def _embed_forever(stop: threading.Event, results: list[str | None], retried: list[str]) -> None:
    client = openai_client()
    while not stop.is_set():
        for attempt in (1, 2):
            try:
                got = client.embeddings.create(model="tiny-embed", input="load")
                results.append(None if got.data and got.model == "tiny-embed" else repr(got))
            except Exception as err:  # any failure counts, but one on a closed idle connection
                if attempt == 1 and closed_while_idle(err):
                    retried.append(f"{type(err).__name__}: {err.__cause__}")
                    continue
                results.append(f"{type(err).__name__}: {err} ({err.__cause__!r})")
            break
        time.sleep(0.05)


def test_update_of_one_pool_under_load_on_both_fails_nothing(deployment: Deployment) -> None:
    client = deployment.client
    before = {n: client.containers.get(n).id for n in CHAT + EMBED}
    lb_id = client.containers.get(f"{PREFIX}-lb").id
    deployment.stack.write_config(stack("2"))
    embeds: list[str | None] = []
    retried: list[str] = []
    stop = threading.Event()
    embedder = threading.Thread(target=_embed_forever, args=(stop, embeds, retried))
    embedder.start()
    try:
        with (
            streaming_load(LB_URL, API_KEY, workers=2, tokens=TOKENS) as chats,
            streaming_load(LB_URL, API_KEY, workers=1, tokens=TOKENS, model=ADAPTER) as loras,
        ):
            time.sleep(1.5)
            started = time.monotonic()
            update = deployment.stack.up()
            took = time.monotonic() - started
            time.sleep(1)
    finally:
        stop.set()
        embedder.join(timeout=60)
    streams: list[Stream] = [*chats, *loras]
    broken = [s for s in streams if not s.whole]
    failed = [e for e in embeds if e is not None]
    during = [s for s in streams if s.finished >= started and s.started <= started + took]
    print(
        f"\nupdate of the chat pool: `pulumi up` {took:.1f} s; {len(streams)} streams "
        f"({len(during)} overlapping), {len(broken)} failed or cut; {len(embeds)} embedding "
        f"requests, {len(failed)} failed, {len(retried)} retried once after nginx's reload "
        "closed their idle connection"
    )
    assert during, "no stream overlapped the update"
    assert not broken, broken[:5]
    assert embeds and not failed, failed[:5]
    assert len(retried) <= max(1, len(embeds) // 100), retried
    # The chat pool was replaced, in waves of one; the embedding pool not touched.
    after = {n: client.containers.get(n).id for n in CHAT + EMBED}
    assert all(after[n] != before[n] for n in CHAT)
    assert after[EMBED[0]] == before[EMBED[0]]
    assert client.containers.get(f"{PREFIX}-lb").id == lb_id
    changed = update.changed()
    for name in EMBED:
        assert f"vllm-{name}" not in changed and f"vllm-{name}-rotation" not in changed, changed
    assert not {"vllm-embed-download", "vllm-embed-replicas-ready"} & set(changed), changed
    drained = [update.index(f"vllm-{n}-rotation", "pre", "delete-replaced") for n in CHAT]
    back = update.index(f"vllm-{CHAT[0]}-rotation", "outputs", "create-replacement")
    assert drained[1] > back, "the second chat replica went before the first was back"
    # The chat pool's canary judged its first wave against its second, and only
    # then did the second wave's drain begin; the embedding pool has none.
    said = update.logged("vllm-chat-canary")
    watching = f"canary: watching {CHAT[0]} (the first wave, updated) against {CHAT[1]}"
    assert any(line.startswith(watching) for line in said), said
    assert any(line.startswith(f"canary: {CHAT[0]} no worse than") for line in said), said
    verdict = max(
        i
        for i, s in enumerate(update.steps)
        if s.name == "vllm-chat-canary" and s.kind == "outputs"
    )
    assert drained[1] > verdict
    assert {n for n in deployment.stack.resources() if "canary" in n} == {"vllm-chat-canary"}
    deployment.stack.preview(expect_no_changes=True)


def test_pool_names_and_placement_as_planned(deployment: Deployment) -> None:
    stack_file = Path(deployment.stack.stack_file).read_text()
    assert "models" in stack_file
    ports = {
        n: deployment.client.containers.get(n).attrs["HostConfig"]["PortBindings"]["8000/tcp"][0][
            "HostPort"
        ]
        for n in CHAT + EMBED
    }
    assert ports == {CHAT[0]: "18961", CHAT[1]: "18962", EMBED[0]: "18963"}
