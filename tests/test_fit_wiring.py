"""The fit check's place in the plan and the graph, under Pulumi's mocks (no engine).

What it proves: one fit step per engine, before that engine's download and
every replica on it, after the image; its spec carries each replica's
GPUs, the tensor-parallel size, vLLM's arguments and the settings, read back
as planned; the token reaches it as a secret variable, never in its spec;
`fitCheck.enabled: false` declares none. With model pools: one per pool and
engine, with that pool's model, tensor-parallel size, GPUs, vLLM arguments and
image, before that pool's download and replicas only. The step itself on a real
engine: tests/test_e2e_fit.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.plan.specs import SPEC_ENV, FitReplica, FitSpec, decode
from components.steps.fit import next_steps
from tests.support.pulumi_capture import Run, run_program
from tests.test_component import (
    COMMAND,
    NS,
    SECRETS,
    dep_names,
    deploy,
    deploy_with_secrets,
    replicas,
    step_spec,
)

FIT = "vllm-fit"
IMAGE = "@@vllm-vllm-image.imageId@@"


def test_fit_comes_after_the_image_and_before_the_download_and_every_replica() -> None:
    run = deploy_with_secrets()
    fit = run.named(FIT)
    assert fit.type == COMMAND
    assert fit.inputs["create"].endswith(" -m components.steps.fit")
    spec = step_spec(fit, FitSpec)
    assert spec.image == IMAGE  # waits for the image
    assert (spec.model, spec.name, spec.backend) == ("meta-llama/Llama-2-7b-chat-hf", FIT, "gpu")
    assert (spec.tensor_parallel_size, spec.warn_above_percent, spec.cpu_kvcache_gb) == (1, 90, 4)
    assert spec.replicas == (FitReplica("vllm0", ("0",)), FitReplica("vllm1", ("1",)))
    assert spec.volumes == {}  # a hub model: its small files only, no cache
    env = fit.inputs["environment"]
    assert SECRETS["hfToken"] not in env[SPEC_ENV]
    assert env["HF_TOKEN"] == SECRETS["hfToken"] and set(env) == {"HF_TOKEN", SPEC_ENV}
    assert "environment" in fit.secret_inputs
    assert FIT in dep_names(run, run.named("vllm-download"))
    for replica in replicas(run):
        assert {FIT, "vllm-download"} <= dep_names(run, replica)


def test_switched_off_declares_no_fit_step() -> None:
    run = deploy(fitCheck={"enabled": False})
    assert not [d for d in run.declared if d.name == FIT]
    assert FIT not in dep_names(run, run.named("vllm-download"))


def test_groups_arguments_and_a_local_model() -> None:
    run = deploy(
        model="/models/llama",
        tensorParallelSize=2,
        replicas=2,
        extraArgs=["--max-model-len", "8192", "--gpu-memory-utilization=0.8"],
        fitCheck={"warnAbovePercent": 80},
    )
    spec = step_spec(run.named(FIT), FitSpec)
    assert spec.replicas == (FitReplica("vllm0", ("0", "1")), FitReplica("vllm1", ("2", "3")))
    # A path in the container: read through the model cache's mount.
    assert spec.volumes == {"vllm-hf-cache": "/root/.cache/huggingface"}
    assert spec.warn_above_percent == 80
    assert spec.extra_args == ("--max-model-len", "8192", "--gpu-memory-utilization=0.8")
    for replica in replicas(run):  # no download step: the replicas wait for the check
        assert FIT in dep_names(run, replica)


def test_one_fit_step_per_engine_with_its_replicas() -> None:
    hosts = [
        {"name": "gpu-a", "dockerHost": "ssh://ops@gpu-a", "address": "10.0.0.11", "gpus": [[0]]},
        {"name": "gpu-b", "dockerHost": "ssh://ops@gpu-b", "address": "10.0.0.12", "gpus": [[1]]},
    ]
    run = deploy(hosts=hosts)
    for name, gpu in (("gpu-a", 0), ("gpu-b", 1)):
        fit = run.named(f"vllm-{name}-fit")
        assert step_spec(fit, FitSpec).replicas == (FitReplica(f"vllm-{name}-0", (str(gpu),)),)
        assert fit.inputs["environment"]["DOCKER_HOST"] == f"ssh://ops@{name}"
        assert f"vllm-{name}-fit" in dep_names(run, run.named(f"vllm-{name}-download"))
    # Each engine's advice names the key that gave its replicas their GPUs.
    read = step_spec(run.named("vllm-gpu-b-fit"), FitSpec)
    assert read.config_key == "" and read.gpus_key == "hosts[1].gpus"
    assert "(tensorParallelSize and hosts[1].gpus, extraArgs --max-model-len," in (
        next_steps(read.config_key, read.gpus_key)
    )


def settings(**values: Any) -> Any:
    raw: dict[str, Any] = {"model": "org/model", **values}
    return parse_settings({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()})


def test_the_step_reads_back_what_the_plan_says() -> None:
    plan = build_plan(
        settings(
            backend="cpu",
            replicas=2,
            extraArgs=["--max-model-len", "-1", "--dtype", "float16"],
            extraEnv={"HF_ENDPOINT": "http://hub.lan"},
            cpu={"kvcacheSpaceGb": 12},
        ),
        project_dir=Path("."),
    )
    (fit,) = plan.hosts[0].fits
    args = decode(FitSpec, fit.environment("img", "cache")[SPEC_ENV])
    assert args.backend == "cpu" and args.cpu_kvcache_gb == 12
    assert args.replicas == (FitReplica("vllm0", ()), FitReplica("vllm1", ()))
    assert args.extra_args == ("--max-model-len", "-1", "--dtype", "float16")
    # The hub the download job asks is the one the facts come from.
    assert args.env["HF_ENDPOINT"] == "http://hub.lan"
    assert args.volumes == {} and args.image == "img"
    # A stack without 'models': the keys are the stack's own.
    assert args.config_key == "" and args.gpus_key is None
    assert "(tensorParallelSize and gpus, extraArgs --max-model-len," in next_steps("")
    assert (
        build_plan(settings(fitCheck={"enabled": False}), project_dir=Path(".")).hosts[0].fits == ()
    )


def deploy_pools(models: list[dict[str, Any]], **values: Any) -> Run:
    config = {"models": models, **values}
    return run_program(
        {f"{NS}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    )


def test_one_fit_step_per_pool_before_its_own_download_and_replicas() -> None:
    run = deploy_pools(
        [
            {
                "name": "chat",
                "model": "org/chat",
                "tensorParallelSize": 2,
                "gpus": [[0, 1], [2, 3]],
                "extraArgs": ["--max-model-len", "4096"],
                "adapters": [{"name": "sql", "model": "org/sql-lora"}],
            },
            {
                "name": "embed",
                "model": "org/embed",
                "gpus": [[4]],
                "extraArgs": ["--runner", "pooling"],
                "image": {"prebuilt": "org/vllm:embed"},
            },
        ],
        extraArgs=["--dtype", "half"],
    )
    fits = {c.name for c in run.of_type(COMMAND) if c.name.endswith("-fit")}
    assert fits == {"vllm-chat-fit", "vllm-embed-fit"}
    chat = step_spec(run.named("vllm-chat-fit"), FitSpec)
    embed = step_spec(run.named("vllm-embed-fit"), FitSpec)
    # Each on its own pool's image.
    assert chat.image == "@@vllm-vllm-image.imageId@@"
    assert embed.image == "@@vllm-embed-vllm-image.imageId@@"
    read = chat
    assert (read.model, read.name, read.tensor_parallel_size) == ("org/chat", "vllm-chat-fit", 2)
    # Its advice names the pool's keys: models[0].tensorParallelSize, not the stack's.
    assert read.config_key == "models[0]."
    assert "(models[0].tensorParallelSize and models[0].gpus, models[0].extraArgs " in (
        next_steps(read.config_key)
    )
    assert read.replicas == (
        FitReplica("vllm-chat-0", ("0", "1")),
        FitReplica("vllm-chat-1", ("2", "3")),
    )
    # The stack's extraArgs, then the pool's, as its replicas get them; not its adapters.
    assert read.extra_args == ("--dtype", "half", "--max-model-len", "4096")
    assert "sql-lora" not in str(chat)
    read = embed
    assert (read.model, read.name, read.tensor_parallel_size) == ("org/embed", "vllm-embed-fit", 1)
    assert read.config_key == "models[1]."
    assert read.replicas == (FitReplica("vllm-embed-0", ("4",)),)
    assert read.extra_args == ("--dtype", "half", "--runner", "pooling")
    for pool, other in (("chat", "embed"), ("embed", "chat")):
        assert dep_names(run, run.named(f"vllm-{pool}-download")) >= {f"vllm-{pool}-fit"}
        assert f"vllm-{other}-fit" not in dep_names(run, run.named(f"vllm-{pool}-download"))
        for replica in run.of_type("docker:index/container:Container"):
            if replica.name.startswith(f"vllm-vllm-{pool}-"):
                assert {f"vllm-{pool}-fit", f"vllm-{pool}-download"} <= dep_names(run, replica)
                assert f"vllm-{other}-fit" not in dep_names(run, replica)


def test_a_shared_download_waits_for_its_owners_fit_only() -> None:
    """Two pools of one model fetch it once: the job is the first pool's and waits
    for that pool's check; the second pool's replicas wait for their own check
    and that job, so one pool's failing check stops none of the other's steps."""
    run = deploy_pools(
        [
            {"name": "short", "model": "org/m", "servedModelName": "m", "gpus": [[0]]},
            {
                "name": "long",
                "model": "org/m",
                "servedModelName": "m-long",
                "gpus": [[1]],
                "extraArgs": ["--max-model-len=32768"],
            },
        ]
    )
    assert "vllm-long-download" not in {c.name for c in run.of_type(COMMAND)}
    download = dep_names(run, run.named("vllm-short-download"))
    assert "vllm-short-fit" in download and "vllm-long-fit" not in download
    long = dep_names(run, run.named("vllm-vllm-long-0"))
    assert {"vllm-long-fit", "vllm-short-download"} <= long
    assert "vllm-short-fit" not in long
    long_fit = step_spec(run.named("vllm-long-fit"), FitSpec)
    assert long_fit.replicas == (FitReplica("vllm-long-0", ("1",)),)
    assert long_fit.extra_args == ("--max-model-len=32768",)


def test_pools_on_two_engines_one_fit_step_per_pool_and_engine() -> None:
    hosts = [
        {"name": "a", "dockerHost": "unix:///var/run/a.sock", "address": "10.0.0.1"},
        {"name": "b", "dockerHost": "unix:///var/run/b.sock", "address": "10.0.0.2"},
    ]
    models: list[dict[str, Any]] = [
        {
            "name": "chat",
            "model": "o/chat",
            "hosts": [{"host": "a", "gpus": [[0], [1]]}, {"host": "b", "replicas": 1}],
        },
        {"name": "embed", "model": "o/embed", "hosts": [{"host": "b"}]},
    ]
    run = deploy_pools(models, hosts=hosts)
    fits = {c.name: c for c in run.of_type(COMMAND) if c.name.endswith("-fit")}
    assert set(fits) == {"vllm-a-chat-fit", "vllm-b-chat-fit", "vllm-b-embed-fit"}
    replicas_of = {name: step_spec(fit, FitSpec).replicas for name, fit in fits.items()}
    assert replicas_of == {
        "vllm-a-chat-fit": (
            FitReplica("vllm-chat-a-0", ("0",)),
            FitReplica("vllm-chat-a-1", ("1",)),
        ),
        "vllm-b-chat-fit": (FitReplica("vllm-chat-b-0", ("0",)),),
        "vllm-b-embed-fit": (FitReplica("vllm-embed-b-0", ("1",)),),
    }
    for name, fit in fits.items():
        host = name.split("-")[1]
        assert fit.inputs["environment"]["DOCKER_HOST"] == f"unix:///var/run/{host}.sock"
    # The GPU key each engine's advice names: the pool's entry for that host.
    keys = {name: step_spec(fit, FitSpec).gpus_key for name, fit in fits.items()}
    assert keys == {
        "vllm-a-chat-fit": "models[0].hosts[0].gpus",
        "vllm-b-chat-fit": "models[0].hosts[1].gpus",
        "vllm-b-embed-fit": "models[1].hosts[0].gpus",
    }
    assert "(models[0].tensorParallelSize and models[0].hosts[1].gpus, models[0].extraArgs" in (
        next_steps("models[0].", keys["vllm-b-chat-fit"])
    )
    assert "vllm-b-chat-fit" not in dep_names(run, run.named("vllm-vllm-embed-b-0"))
    assert "vllm-b-embed-fit" in dep_names(run, run.named("vllm-vllm-embed-b-0"))
