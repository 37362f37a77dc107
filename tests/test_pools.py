"""Model pools ('models'), without Pulumi: every rule on its key as written, the
plan per pool (names, ports, devices, LoRA options, downloads, waves, nginx,
verify), and `components.cli.check` printing the pools of Pulumi.multimodel.yaml.

A stack without 'models' must plan exactly what it did before pools existed:
tests/test_plan.py and tests/test_component.py hold that, unchanged."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from components.cli.check import run as run_check
from components.config.loading import deployment_problems, parse_settings
from components.config.problems import ConfigError
from components.plan.build import build_plan
from components.plan.model import Plan
from components.plan.specs import ReadinessSpec, VerifySpec
from tests.support.pulumi_capture import run_program

ROOT = Path(__file__).resolve().parent.parent
NS = "vllm-nginx"

CHAT: dict[str, Any] = {"name": "chat", "model": "Qwen/Qwen2.5-1.5B-Instruct", "replicas": 2}
EMBED: dict[str, Any] = {
    "name": "embed",
    "model": "BAAI/bge-base-en-v1.5",
    "extraArgs": ["--runner", "pooling"],
}


def raw(**config: Any) -> dict[str, Any]:
    """As Pulumi hands config over: objects and lists as JSON text."""
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in config.items()}


def problems(**config: Any) -> dict[str, str]:
    """Every problem of a config, by key as written (without the namespace)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(**config))
    found: dict[str, str] = {}
    for problem in caught.value.problems:
        key = problem.key.removeprefix(f"{NS}:")
        assert key not in found, f"two problems on {key}: {found[key]!r}, {problem.rule!r}"
        found[key] = problem.rule
    return found


def plan(**config: Any) -> Plan:
    settings = parse_settings(raw(**config))
    return build_plan(settings, project_dir=ROOT, python="/venv/bin/python")


# --- config rules --------------------------------------------------------------


def test_model_or_models_is_required_and_not_both() -> None:
    assert problems() == {"model": "is required (or list model pools in 'models')"}
    found = problems(model="org/m", servedModelName="m", replicas=2, models=[CHAT])
    assert found == {
        "model": "must not be set with 'models': each pool says its own ('models[i].model')",
        "servedModelName": "must not be set with 'models': each pool says its own "
        "('models[i].servedModelName')",
        "replicas": "must not be set with 'models': each pool says its own ('models[i].replicas')",
    }
    assert problems(models=[]) == {
        "models": "must list at least one model pool (or be left out: set 'model')"
    }


def test_pool_keys_are_checked_as_the_top_level_ones_are() -> None:
    found = problems(
        models=[
            {**CHAT, "model": "--served-model-name"},
            {**EMBED, "name": "Embed_1", "servedModelName": "-x"},
            {"name": "lora", "model": "org/base", "adapters": [{"name": "a", "model": "a//b"}]},
            {"name": "args", "model": "org/m", "extraArgs": ["--port", "1"], "replicas": 0},
        ]
    )
    assert found["models[0].model"].startswith(
        "must not start with '-': `vllm serve` would read it as an option"
    )
    assert found["models[1].servedModelName"] == (
        "must not start with '-': `vllm serve --served-model-name` would read it as an option"
    )
    assert "DNS label" in found["models[1].name"] or "lowercase" in found["models[1].name"]
    assert found["models[2].adapters[0].model"].startswith("must be a Hugging Face repo id")
    assert found["models[3].extraArgs"].startswith("must not set --port")
    assert found["models[3].replicas"] == "Input should be greater than or equal to 1"


def test_names_are_unique_across_pools_adapters_included() -> None:
    found = problems(
        models=[
            {**CHAT, "servedModelName": "chat", "adapters": [{"name": "sql", "model": "o/sql"}]},
            {**EMBED, "name": "chat", "adapters": [{"name": "chat", "model": "o/x"}]},
            {"name": "third", "model": "o/m", "servedModelName": "sql", "gpus": [[5]]},
        ]
    )
    assert found == {
        "models[1].name": "chat is also the name of models[0]",
        "models[1].adapters[0].name": "chat is also served as models[0].servedModelName: "
        "a request names one model, which must go to one pool",
        "models[2].servedModelName": "sql is also served as models[0].adapters[0].name: "
        "a request names one model, which must go to one pool",
    }


def test_gpus_are_disjoint_across_pools_and_sized_by_the_pools_tensor_parallel_size() -> None:
    found = problems(
        models=[
            {**CHAT, "tensorParallelSize": 2, "gpus": [[0, 1], [2]]},
            {**EMBED, "gpus": [[1]]},
            {"name": "small", "model": "o/s", "gpus": [[3], [4]], "replicas": 1},
        ]
    )
    assert found == {
        "models[0].gpus[1]": "has 1 GPUs but 'models[0].tensorParallelSize' is 2",
        "models[1].gpus[0]": "gives replica vllm-embed-0 GPU 1, which replica vllm-chat-0 "
        "uses too; replicas share no GPU or CPU core, in a pool or across pools",
        "models[2].gpus": "lists 2 replicas but 'models[2].replicas' is 1",
    }
    # A pool without 'gpus' takes the next GPUs after those of the pools before it.
    p = plan(models=[{**CHAT, "gpus": [[1], [2]]}, EMBED])
    assert [r.gpu_ids for r in p.replicas] == [("1",), ("2",), ("3",)]
    # ... and so do CPU cores ('cpu.coresPerReplica' blocks after listed sets).
    p = plan(backend="cpu", models=[{**CHAT, "cpuSets": ["0-3", "4-7"]}, EMBED])
    assert [r.cpu_set for r in p.replicas] == ["0-3", "4-7", "8-11"]


def test_cpu_sets_are_disjoint_and_per_backend() -> None:
    found = problems(
        backend="cpu",
        models=[
            {**CHAT, "cpuSets": ["0-3", "4-7"]},
            {**EMBED, "cpuSets": ["6-9"], "gpus": [[0]]},
        ],
    )
    assert found == {
        "models[1].gpus": "must not be set with 'backend' cpu",
        "models[1].cpuSets[0]": "gives replica vllm-embed-0 CPU 6, which replica vllm-chat-1 "
        "uses too; replicas share no GPU or CPU core, in a pool or across pools",
    }
    assert problems(models=[{**CHAT, "cpuSets": ["0-1", "2-3"]}]) == {
        "models[0].cpuSets": "is for 'backend' cpu; GPU pools list 'gpus'"
    }


def test_lora_options_belong_to_adapters_with_models() -> None:
    found = problems(
        extraArgs=["--enable-lora"],
        models=[{**CHAT, "extraArgs": ["--lora-modules", "a=b"]}, EMBED],
    )
    assert found == {
        "extraArgs": "must not set --enable-lora: the deployment sets it for a pool that "
        "lists 'adapters' (with 'models')",
        "models[0].extraArgs": "must not set --lora-modules: list the adapters in the pool's "
        "'adapters' (name and model) (with 'models')",
    }
    # Without 'models' a stack keeps its extraArgs as they were.
    assert parse_settings(raw(model="o/m", extraArgs=["--enable-lora"])).extra_args


def test_ports_names_and_the_load_balancer_across_pools() -> None:
    found = problems(
        basePort=7999,
        loadBalancer={"port": 8001, "name": "vllm-chat-1"},
        models=[CHAT, EMBED],
    )
    assert found == {
        "loadBalancer.port": "8001 collides with the replica ports 7999-8001 "
        "('basePort' + the replicas of all pools)",
        "loadBalancer.name": "vllm-chat-1 collides with a replica name ('namePrefix'-pool-number)",
    }
    assert problems(basePort=65534, models=[CHAT, EMBED]) == {
        "basePort": "65534 + 3 replicas of all pools passes port 65535"
    }


HOSTS = [
    {"name": "a", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
    {"name": "b", "dockerHost": "ssh://u@b", "address": "10.0.0.2"},
]


def test_with_hosts_each_pool_says_where_its_replicas_go() -> None:
    found = problems(
        hosts=[{**HOSTS[0], "gpus": [[0]]}, HOSTS[1]],
        models=[
            {**CHAT, "hosts": [{"host": "a", "gpus": [[0], [1]]}, {"host": "c"}]},
            {**EMBED, "gpus": [[2]]},
            {"name": "x", "model": "o/x", "hosts": [{"host": "a", "gpus": [[1]]}]},
        ],
    )
    assert found == {
        "hosts[0].gpus": "must not be set with 'models': each pool says its own "
        "('models[i].hosts[j].gpus')",
        "hosts[1]": "runs no replica of any pool: name host b in a 'models[i].hosts' entry, "
        "or leave it out",
        "models[0].replicas": "must not be set with 'hosts': each of 'models[0].hosts' says "
        "its own",
        "models[0].hosts[1].host": "names no host in 'hosts' (they are: a, b)",
        "models[1].gpus": "must not be set with 'hosts': each of 'models[1].hosts' says its own",
        "models[1].hosts": "is required with 'hosts': say on which hosts the pool's replicas "
        "run (`- host: <hosts[i].name>`, with 'replicas', 'gpus' or 'cpuSets')",
        "models[2].hosts[0].gpus[0]": "gives replica vllm-x-a-0 GPU 1 on host a, which replica "
        "vllm-chat-a-1 uses too; replicas share no GPU or CPU core, in a pool or across pools",
    }


def test_placements_with_hosts_count_ports_per_host() -> None:
    p = plan(
        hosts=[{**HOSTS[0], "basePort": 9000}, HOSTS[1]],
        models=[
            {**CHAT, "replicas": None, "hosts": [{"host": "a", "replicas": 1}, {"host": "b"}]},
            {**EMBED, "hosts": [{"host": "a", "gpus": [[3]]}]},
        ],
    )
    placed = [(r.name, r.host, r.host_port, r.gpu_ids) for r in p.replicas]
    assert placed == [
        ("vllm-chat-a-0", "a", 9000, ("0",)),
        ("vllm-chat-b-0", "b", 8081, ("0",)),
        ("vllm-embed-a-0", "a", 9001, ("3",)),
    ]
    assert [len(h.downloads) for h in p.hosts] == [2, 1], "host b runs no embedding replica"
    assert [c.name for c in p.hosts[0].ready] == ["a-chat-replicas-ready", "a-embed-replicas-ready"]
    assert [c.name for c in p.hosts[1].ready] == ["b-chat-replicas-ready"]


# --- the plan -------------------------------------------------------------------


def test_pools_name_place_and_command_their_replicas() -> None:
    p = plan(
        extraArgs=["--max-model-len", "4096"],
        extraEnv={"HF_ENDPOINT": "http://hub"},
        models=[
            {
                **CHAT,
                "servedModelName": "chat",
                "adapters": [
                    {"name": "sql", "model": "org/sql-lora"},
                    {"name": "local", "model": "/adapters/local"},
                ],
                "extraArgs": ["--max-lora-rank", "64"],
                "extraEnv": {"HF_ENDPOINT": "http://mirror", "X": "1"},
            },
            {**EMBED, "tensorParallelSize": 2, "image": {"prebuilt": "org/vllm:embed"}},
        ],
    )
    assert [(r.name, r.pool, r.host_port, r.gpu_ids) for r in p.replicas] == [
        ("vllm-chat-0", "chat", 8081, ("0",)),
        ("vllm-chat-1", "chat", 8082, ("1",)),
        ("vllm-embed-0", "embed", 8083, ("2", "3")),
    ]
    chat = p.replicas[0].command
    assert chat[:3] == ("Qwen/Qwen2.5-1.5B-Instruct", "--served-model-name", "chat")
    lora = chat[chat.index("--enable-lora") :]
    assert lora == (
        "--enable-lora",
        "--max-loras",
        "2",
        "--lora-modules",
        "sql=org/sql-lora",
        "local=/adapters/local",
        # The stack's extraArgs, then the pool's (vLLM keeps an option's last value).
        "--max-model-len",
        "4096",
        "--max-lora-rank",
        "64",
    )
    assert p.replicas[0].env["HF_ENDPOINT"] == "http://mirror" and p.replicas[0].env["X"] == "1"
    assert p.replicas[0].env["HF_HUB_OFFLINE"] == "1"
    embed = p.replicas[2].command
    assert embed[embed.index("--tensor-parallel-size") + 1] == "2"
    assert "--enable-lora" not in embed and embed[-2:] == ("--runner", "pooling")
    assert p.replicas[2].env["HF_ENDPOINT"] == "http://hub"
    assert [(pool.name, pool.embedding, pool.image.name) for pool in p.pools] == [
        ("chat", False, "vllm/vllm-openai:v0.33.0"),
        ("embed", True, "org/vllm:embed"),
    ]


def test_one_download_per_repository_with_its_adapters() -> None:
    p = plan(
        models=[
            {**CHAT, "adapters": [{"name": "sql", "model": "org/sql"}]},
            {
                "name": "other",
                "model": CHAT["model"],
                "servedModelName": "other",
                "adapters": [{"name": "b", "model": "o/b"}],
            },
            {"name": "again", "model": CHAT["model"], "servedModelName": "again"},
            {"name": "local", "model": "/models/x", "servedModelName": "local"},
        ]
    )
    downloads = p.hosts[0].downloads
    assert [(d.spec.name, d.spec.models, d.pools) for d in downloads] == [
        ("vllm-chat-download", (CHAT["model"], "org/sql"), ("chat", "other", "again")),
        ("vllm-other-download", ("o/b",), ("other",)),
    ]
    local = next(r for r in p.replicas if r.pool == "local")
    assert "HF_HUB_OFFLINE" not in local.env, "a local model is not downloaded"


def test_readiness_and_rollout_waves_are_per_pool() -> None:
    p = plan(models=[{**CHAT, "replicas": 4}, {**EMBED, "replicas": 1}])
    assert [c.name for c in p.hosts[0].ready] == ["chat-replicas-ready", "embed-replicas-ready"]
    chat_ready = p.hosts[0].ready[0].spec
    assert isinstance(chat_ready, ReadinessSpec)
    assert chat_ready.replicas == tuple(f"vllm-chat-{i}" for i in range(4))
    # Waves of at most half of a pool, counted in each pool.
    assert [(r.replica, r.pool, r.wave) for r in p.rollouts] == [
        ("vllm-chat-0", "chat", 0),
        ("vllm-chat-1", "chat", 0),
        ("vllm-chat-2", "chat", 1),
        ("vllm-chat-3", "chat", 1),
        ("vllm-embed-0", "embed", 0),
    ]


def test_nginx_routes_by_model_and_verify_probes_each_name() -> None:
    p = plan(
        models=[
            {**CHAT, "servedModelName": "chat", "adapters": [{"name": "sql", "model": "o/s"}]},
            {**EMBED, "servedModelName": "embed", "policy": "round_robin"},
        ]
    )
    config = p.load_balancer.config
    for replica in ("vllm-chat-0:8000", "vllm-chat-1:8000", "vllm-embed-0:8000"):
        assert f"server {replica}" in config
    served = "\n".join(p.load_balancer.files.values())
    assert '"sql"' in served and '"embed"' in served
    verify = p.verify.spec
    assert isinstance(verify, VerifySpec)
    assert (verify.models, verify.embeddings, verify.probe) == (
        ("chat", "sql", "embed"),
        ("embed",),
        True,
    )
    assert p.served_model_name == "chat, embed"


def test_monitoring_labels_each_replica_with_its_pool_and_model() -> None:
    p = plan(
        grafanaPassword="pw-123456",
        monitoring={"enabled": True},
        models=[{**CHAT, "servedModelName": "chat"}, EMBED],
    )
    assert p.monitoring is not None
    config = p.monitoring.prometheus.uploads[0].content
    assert "pool: chat\n" in config and "model: chat\n" in config
    assert "pool: embed\n" in config and f"model: {EMBED['model']}\n" in config


def test_a_stack_without_models_plans_as_before() -> None:
    p = plan(model="org/m", replicas=2)
    assert [r.name for r in p.replicas] == ["vllm0", "vllm1"] and not p.pools
    assert [d.spec.name for d in p.hosts[0].downloads] == ["vllm-download"]
    assert [c.name for c in p.hosts[0].ready] == ["replicas-ready"]
    assert p.verify.spec == VerifySpec(
        url=p.load_balancer.url, models=("org/m",), timeout_seconds=120
    )


# --- the check CLI and the example stack ------------------------------------------


def test_check_prints_the_pools_of_the_example_stack() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_check("multimodel", ROOT, out, err) == 0, err.getvalue()
    text = out.getvalue()
    assert "pools          2, 3 replicas, GPU backend, on network vllm-mm" in text
    assert (
        "  pool chat      Qwen/Qwen2.5-1.5B-Instruct as qwen-chat, tensor parallel size 1, "
        "policy least_conn" in text
    )
    assert (
        "  pool embed     BAAI/bge-base-en-v1.5 as bge-embed, embeddings, tensor parallel "
        "size 1, policy round_robin" in text
    )
    for line in (
        "    vllm-mm-chat-0  GPU 0       http://127.0.0.1:8281",
        "    vllm-mm-chat-1  GPU 1       http://127.0.0.1:8282",
        "    vllm-mm-embed-0  GPU 2       http://127.0.0.1:8283",
    ):
        assert line in text, text
    assert "by model to its pool" in text
    # A fit check line per pool, under its pool's line.
    lines = text.splitlines()
    for pool in ("chat", "embed"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  pool {pool} "))
        assert lines[at + 1] == "    fit check    runs before the download and the replicas"


def check_output(tmp_path: Path, stack: str, config: str) -> str:
    """`components.cli.check` on a stack file holding `config` (its YAML lines)."""
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / f"Pulumi.{stack}.yaml").write_text("config:\n" + config)
    out, err = io.StringIO(), io.StringIO()
    assert run_check(stack, tmp_path, out, err) == 0, err.getvalue()
    return out.getvalue()


def test_check_prints_a_pools_adapters(tmp_path: Path) -> None:
    out = check_output(
        tmp_path,
        "lora",
        "  vllm-nginx:models:\n"
        "    - name: chat\n"
        "      model: org/base\n"
        "      adapters:\n"
        "        - name: sql\n"
        "          model: org/sql-lora\n",
    )
    assert "    adapter      sql (org/sql-lora)" in out
    assert "    vllm-chat-0  GPU 0" in out


def test_check_says_per_pool_when_the_fit_check_is_off(tmp_path: Path) -> None:
    out = check_output(
        tmp_path,
        "off",
        "  vllm-nginx:fitCheck:\n"
        "    enabled: false\n"
        "  vllm-nginx:models:\n"
        "    - {name: a, model: org/a}\n"
        "    - {name: b, model: org/b}\n",
    )
    assert out.splitlines().count("    fit check    off (fitCheck.enabled false)") == 2


def test_fewer_gpu_groups_than_replicas_is_a_problem_not_a_crash() -> None:
    assert problems(models=[{**CHAT, "replicas": 3, "gpus": [[0]]}]) == {
        "models[0].gpus": "lists 1 replicas but 'models[0].replicas' is 3"
    }


def test_a_pools_own_image_build_must_exist_where_pulumi_up_runs(tmp_path: Path) -> None:
    settings = parse_settings(
        raw(models=[CHAT, {**EMBED, "image": {"build": {"context": "no-such-checkout"}}}])
    )
    found = deployment_problems(settings, docker_host=None, project_dir=tmp_path)
    assert [(p.key, p.rule) for p in found] == [
        (
            f"{NS}:models[1].image.build.context",
            f"is not a directory (looked in {tmp_path / 'no-such-checkout'})",
        )
    ]


def test_pool_and_host_names_must_not_join_into_one_replica_name() -> None:
    hosts = [
        {"name": "b-c", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
        {"name": "c", "dockerHost": "unix:///var/run/b.sock", "address": "10.0.0.2"},
    ]
    found = problems(
        hosts=hosts,
        models=[
            {"name": "a", "model": "o/a", "hosts": [{"host": "b-c"}]},
            {"name": "a-b", "model": "o/b", "hosts": [{"host": "c"}]},
        ],
    )
    assert found == {
        "models[1].name": "makes the replica name vllm-a-b-c-0, which a replica of pool a has "
        "too; rename one of the pools"
    }


def test_host_and_pool_names_must_not_join_into_one_step_name() -> None:
    """'<host>-<pool>' names each engine's fit, download and readiness resources."""
    hosts = [
        {"name": "x", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
        {"name": "x-y", "dockerHost": "unix:///var/run/b.sock", "address": "10.0.0.2"},
    ]
    models = [
        {"name": "y-z", "model": "o/a", "hosts": [{"host": "x"}]},
        {"name": "z", "model": "o/b", "hosts": [{"host": "x-y"}]},
    ]
    assert problems(hosts=hosts, models=models) == {
        "models[1].name": "on host x-y makes the step names '<name>-x-y-z-fit' (and -download, "
        "-replicas-ready), which pool y-z on host x makes too; rename one of the pools"
    }
    # Renamed, the program (under mocks) declares no two resources of one type and name;
    # without the rule it declared vllm-x-y-z-fit, -download and -replicas-ready twice.
    models[1]["name"] = "w"
    run = run_program({f"{NS}:{k}": v for k, v in raw(hosts=hosts, models=models).items()})
    names = [(d.type, d.name) for d in run.declared]
    assert len(names) == len(set(names)) and ("command:local:Command", "vllm-x-y-w-fit") in names


def test_a_misspelt_pool_key_gets_the_pools_own_key_suggested() -> None:
    found = problems(
        models=[{**CHAT, "servedName": "x", "adapters": [{"name": "a", "modle": "o/a"}]}]
    )
    assert found["models[0].servedName"] == (
        "unknown key (a typo?): did you mean 'models[0].servedModelName'?"
    )
    assert found["models[0].adapters[0].modle"] == (
        "unknown key (a typo?): did you mean 'models[0].adapters[0].model'?"
    )
    assert found["models[0].adapters[0].model"] == "is required"


def test_two_replicas_of_one_pool_share_no_gpu_either() -> None:
    assert problems(models=[{**CHAT, "gpus": [[0], [0]]}]) == {
        "models[0].gpus[1]": "gives replica vllm-chat-1 GPU 0, which replica vllm-chat-0 uses "
        "too; replicas share no GPU or CPU core, in a pool or across pools"
    }
