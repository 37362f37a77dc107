"""Model pools as the program declares them, under Pulumi's mocks: a download per
repository, replicas per pool waiting only for their own download, a readiness
check per pool, update waves per pool (one pool's never waits on another's), a
pool's own image, and nginx with the pools' router."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.deployment.cluster import VllmCluster, VllmClusterArgs
from components.deployment.program import load_settings
from components.plan.specs import CanarySpec, DownloadSpec, VerifySpec
from tests.support.pulumi_capture import Run, run_program
from tests.test_component import COMMAND, CONTAINER, dep_names, step_spec

NS = "vllm-nginx"
MODELS: list[dict[str, Any]] = [
    {
        "name": "chat",
        "model": "Qwen/Qwen2.5-1.5B-Instruct",
        "servedModelName": "chat",
        "replicas": 4,
        "adapters": [{"name": "sql", "model": "org/sql-lora"}],
    },
    {
        "name": "embed",
        "model": "BAAI/bge-base-en-v1.5",
        "servedModelName": "embed",
        "replicas": 2,
        "extraArgs": ["--runner", "pooling"],
        "image": {"prebuilt": "org/vllm:embed"},
    },
]


def deploy(rolling: bool = True, **values: Any) -> Run:
    config = {"models": MODELS, **values}

    def program() -> dict[str, Any]:
        cluster = VllmCluster("vllm", VllmClusterArgs(settings=load_settings(), rolling=rolling))
        return {"lb_url": cluster.lb_url}

    return run_program(
        {
            f"{NS}:{k}": json.dumps(v) if isinstance(v, dict | list) else str(v)
            for k, v in config.items()
        },
        program=program,
    )


def test_resources_per_pool() -> None:
    run = deploy()
    containers = {str(c.inputs["name"]) for c in run.of_type(CONTAINER)}
    assert containers == {
        *(f"vllm-chat-{i}" for i in range(4)),
        "vllm-embed-0",
        "vllm-embed-1",
        "nginx-lb",
    }
    commands = {c.name for c in run.of_type(COMMAND)}
    assert {
        "vllm-chat-download",
        "vllm-embed-download",
        "vllm-chat-replicas-ready",
        "vllm-embed-replicas-ready",
        "vllm-verify",
        "vllm-lb-config",
    } <= commands
    assert "vllm-download" not in commands and "vllm-replicas-ready" not in commands
    chat = step_spec(run.named("vllm-chat-download"), DownloadSpec)
    assert chat.models == ("Qwen/Qwen2.5-1.5B-Instruct", "org/sql-lora")
    assert chat.name == "vllm-chat-download"
    embed = step_spec(run.named("vllm-embed-download"), DownloadSpec)
    # Its pool's image fetches it (the image's own huggingface_hub).
    assert embed.image == "@@vllm-embed-vllm-image.imageId@@"
    assert embed.models == ("BAAI/bge-base-en-v1.5",)


def test_replicas_wait_for_their_pools_download_and_image_only() -> None:
    run = deploy()
    for i in range(4):
        chat = run.named(f"vllm-vllm-chat-{i}")
        assert "vllm-chat-download" in dep_names(run, chat)
        assert "vllm-embed-download" not in dep_names(run, chat)
        assert chat.inputs["image"] == "@@vllm-vllm-image.imageId@@"
    embed = run.named("vllm-vllm-embed-0")
    assert dep_names(run, embed) >= {"vllm-embed-download"}
    assert "vllm-chat-download" not in dep_names(run, embed)
    assert embed.inputs["image"] == "@@vllm-embed-vllm-image.imageId@@"
    ready = run.named("vllm-embed-replicas-ready")
    assert ready.inputs["triggers"] == ["@@vllm-vllm-embed-0.id@@", "@@vllm-vllm-embed-1.id@@"]
    assert "vllm-chat-0" not in ready.inputs["create"]
    # nginx waits for every pool's readiness.
    assert {"vllm-chat-replicas-ready", "vllm-embed-replicas-ready"} <= dep_names(
        run, run.named("vllm-lb")
    )


def test_rollout_waves_are_per_pool() -> None:
    run = deploy(rollout={"canarySeconds": 0})
    # Chat: waves of two; its second wave waits for its first, not for the embed pool.
    for i in (2, 3):
        names = dep_names(run, run.named(f"vllm-vllm-chat-{i}"))
        assert {"vllm-vllm-chat-0-rotation", "vllm-vllm-chat-1-rotation"} <= names
        assert not {n for n in names if "embed" in n}, names
    for i in (0, 1):
        assert not any(
            n.endswith("-rotation") for n in dep_names(run, run.named(f"vllm-vllm-chat-{i}"))
        )
    # Embed: waves of one, waiting on its own pool only.
    names = dep_names(run, run.named("vllm-vllm-embed-1"))
    assert "vllm-vllm-embed-0-rotation" in names
    assert not {n for n in names if "chat" in n}, names
    assert not any(n.endswith("-rotation") for n in dep_names(run, run.named("vllm-vllm-embed-0")))


def test_each_pool_with_a_second_wave_has_its_own_canary() -> None:
    """A pool's first wave is watched against that pool's old replicas (another
    pool serves another model), and only that pool's second wave waits for it."""
    run = deploy()
    canaries = {c.name for c in run.of_type(COMMAND) if c.name.endswith("canary")}
    assert canaries == {"vllm-chat-canary", "vllm-embed-canary"}
    chat = run.named("vllm-chat-canary")
    assert {"vllm-vllm-chat-0-rotation", "vllm-vllm-chat-1-rotation"} <= dep_names(run, chat)
    assert not {n for n in dep_names(run, chat) if "embed" in n or "chat-2" in n}
    assert chat.inputs["triggers"] == ["@@vllm-vllm-chat-0.id@@", "@@vllm-vllm-chat-1.id@@"]
    spec = step_spec(chat, CanarySpec)
    assert [r.name for r in spec.canary] == ["vllm-chat-0", "vllm-chat-1"]
    assert [r.name for r in spec.baseline] == ["vllm-chat-2", "vllm-chat-3"]
    embed = run.named("vllm-embed-canary")
    assert "vllm-vllm-embed-0-rotation" in dep_names(run, embed)
    assert not {n for n in dep_names(run, embed) if "chat" in n or "embed-1" in n}
    spec = step_spec(embed, CanarySpec)
    assert [r.name for r in (*spec.canary, *spec.baseline)] == ["vllm-embed-0", "vllm-embed-1"]
    # Each second wave waits for its own pool's verdict only.
    for i in (2, 3):
        names = dep_names(run, run.named(f"vllm-vllm-chat-{i}"))
        assert "vllm-chat-canary" in names and "vllm-embed-canary" not in names, names
    names = dep_names(run, run.named("vllm-vllm-embed-1"))
    assert "vllm-embed-canary" in names and "vllm-chat-canary" not in names, names
    for i in (0, 1):
        assert not {n for n in dep_names(run, run.named(f"vllm-vllm-chat-{i}")) if "canary" in n}
    # nginx waits for both (on a first deploy they find no nginx and return at once).
    assert {"vllm-chat-canary", "vllm-embed-canary"} <= dep_names(run, run.named("vllm-lb"))
    # A pool of one has no second wave, so no canary; the other keeps its own.
    one = [{**MODELS[0]}, {**MODELS[1], "replicas": 1}]
    single = {c.name for c in deploy(models=one).of_type(COMMAND) if c.name.endswith("canary")}
    assert single == {"vllm-chat-canary"}


def test_replica_commands_and_nginx_router() -> None:
    run = deploy()
    command = run.named("vllm-vllm-chat-0").inputs["command"]
    at = command.index("--enable-lora")
    assert command[at : at + 5] == [
        "--enable-lora",
        "--max-loras",
        "1",
        "--lora-modules",
        "sql=org/sql-lora",
    ]
    reload = run.named("vllm-lb-config")
    files = json.loads(reload.inputs["environment"]["VLLM_NGINX_LB_FILES"])
    conf = files["/etc/nginx/nginx.conf"]
    for i in range(4):
        assert f"server vllm-chat-{i}:8000" in conf
    assert "server vllm-embed-1:8000" in conf
    verify = step_spec(run.named("vllm-verify"), VerifySpec)
    assert verify.models == ("chat", "sql", "embed") and verify.embeddings == ("embed",)
    assert verify.probe


def test_pools_output_and_a_pools_old_image_warns(caplog: pytest.LogCaptureFixture) -> None:
    config = {
        f"{NS}:models": json.dumps(
            [
                {"name": "chat", "model": "o/chat", "adapters": [{"name": "a", "model": "o/a"}]},
                {
                    "name": "old",
                    "model": "o/old",
                    "image": {"prebuilt": "vllm/vllm-openai:v0.11.0"},
                },
            ]
        )
    }
    with caplog.at_level("WARNING"):
        result = run_program(config)
    assert result.outputs["pools"] == {
        "chat": {
            "model": "o/chat",
            "served_model_name": "o/chat",
            "adapters": ["a"],
            "replica_names": ["vllm-chat-0"],
        },
        "old": {
            "model": "o/old",
            "served_model_name": "o/old",
            "adapters": [],
            "replica_names": ["vllm-old-0"],
        },
    }
    assert "'models[1].image.prebuilt' is vllm/vllm-openai:v0.11.0, vLLM v0.11.0" in caplog.text
    assert "'image.prebuilt'" not in caplog.text


def test_pools_on_two_hosts_download_and_check_per_host() -> None:
    hosts = [
        {"name": "a", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
        {"name": "b", "dockerHost": "unix:///var/run/b.sock", "address": "10.0.0.2"},
    ]
    models = [
        {
            "name": "chat",
            "model": "o/chat",
            "hosts": [{"host": "a", "gpus": [[0], [1]]}, {"host": "b", "replicas": 1}],
        },
        {"name": "embed", "model": "o/embed", "hosts": [{"host": "b"}]},
    ]
    run = run_program(
        {f"{NS}:hosts": json.dumps(hosts), f"{NS}:models": json.dumps(models)},
        program=lambda: {
            "lb_url": VllmCluster("vllm", VllmClusterArgs(settings=load_settings())).lb_url
        },
    )
    containers = {str(c.inputs["name"]) for c in run.of_type(CONTAINER)}
    assert containers == {
        "vllm-chat-a-0",
        "vllm-chat-a-1",
        "vllm-chat-b-0",
        "vllm-embed-b-0",
        "nginx-lb",
    }
    commands = {c.name for c in run.of_type(COMMAND)}
    # Host a runs no embedding replica: no embedding download there.
    assert {"vllm-a-chat-download", "vllm-b-chat-download", "vllm-b-embed-download"} <= commands
    assert "vllm-a-embed-download" not in commands
    assert {"vllm-a-chat-replicas-ready", "vllm-b-chat-replicas-ready"} <= commands
    assert "vllm-b-embed-replicas-ready" in commands
    b_embed = run.named("vllm-vllm-embed-b-0")
    assert b_embed.inputs["ports"] == [{"internal": 8000, "external": 8082, "ip": "10.0.0.2"}]
    assert "vllm-b-embed-download" in dep_names(run, b_embed)
    assert "vllm-b-chat-download" not in dep_names(run, b_embed)


def test_only_the_images_in_use_are_pulled_or_built(tmp_path: Path) -> None:
    """Every pool with an image of its own: the stack's image is not pulled; two
    pools built from one checkout share one build."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    build = {"build": {"context": str(tmp_path), "args": {"A": "1"}}}
    models = [
        {"name": "one", "model": "o/one", "image": build},
        {"name": "two", "model": "o/two", "image": build},
        {"name": "three", "model": "o/three", "image": {"prebuilt": "org/vllm:x"}},
    ]
    run = run_program({f"{NS}:models": json.dumps(models)})
    pulled = {str(r.inputs["name"]) for r in run.of_type("docker:index/remoteImage:RemoteImage")}
    assert pulled == {"org/vllm:x", "nginx:1.28.0"}, "the stack's vLLM image is not used"
    built = run.of_type("docker:index/image:Image")
    assert [b.name for b in built] == ["vllm-one-vllm-image"]
    two = run.named("vllm-vllm-two-0")
    assert two.inputs["image"] == "@@vllm-one-vllm-image.repoDigest@@"
    assert run.named("vllm-vllm-three-0").inputs["image"] == "@@vllm-three-vllm-image.imageId@@"


def test_each_pool_is_a_component_whose_children_keep_their_names_and_alias() -> None:
    """One Pool per pool across engines; what moved into it names the cluster, its
    parent before, as its alias, so a running stack keeps its replicas. A pool whose
    repository an earlier pool fetches waits for that pool's download."""
    hosts = [
        {"name": "a", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
        {"name": "b", "dockerHost": "unix:///var/run/b.sock", "address": "10.0.0.2"},
    ]
    models = [
        {"name": "chat", "model": "o/chat", "hosts": [{"host": "a"}, {"host": "b"}]},
        {"name": "again", "model": "o/chat", "servedModelName": "again", "hosts": [{"host": "b"}]},
    ]
    run = run_program(
        {f"{NS}:hosts": json.dumps(hosts), f"{NS}:models": json.dumps(models)},
        program=lambda: {
            "lb_url": VllmCluster("vllm", VllmClusterArgs(settings=load_settings())).lb_url
        },
    )
    (cluster,) = run.of_type("vllm-nginx:index:VllmCluster")
    pools = {d.name: d for d in run.of_type("vllm-nginx:index:Pool")}
    assert set(pools) == {"vllm-chat-pool", "vllm-again-pool"}
    assert all(p.parent == cluster.urn for p in pools.values())
    children = {
        name: {d.name for d in run.declared if d.parent == pool.urn} for name, pool in pools.items()
    }
    assert children["vllm-chat-pool"] == {
        "vllm-a-chat-fit",
        "vllm-b-chat-fit",
        "vllm-a-chat-download",
        "vllm-b-chat-download",
        "vllm-vllm-chat-a-0",
        "vllm-vllm-chat-b-0",
        "vllm-vllm-chat-a-0-rotation",
        "vllm-vllm-chat-b-0-rotation",
        "vllm-a-chat-replicas-ready",
        "vllm-b-chat-replicas-ready",
        "vllm-chat-canary",
    }
    assert children["vllm-again-pool"] == {
        "vllm-b-again-fit",
        "vllm-vllm-again-b-0",
        "vllm-vllm-again-b-0-rotation",
        "vllm-b-again-replicas-ready",
    }
    moved = [d for d in run.declared if d.parent in {p.urn for p in pools.values()}]
    assert len(moved) == 15 and all(d.alias_parents == [cluster.urn] for d in moved)
    assert "vllm-b-chat-download" in dep_names(run, run.named("vllm-vllm-again-b-0"))
    assert "vllm-a-chat-download" not in dep_names(run, run.named("vllm-vllm-again-b-0"))
