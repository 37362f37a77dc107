"""The fit check's place in the plan and the graph, under Pulumi's mocks (no engine).

What it proves: one fit step per engine, before that engine's download and
every replica on it, after the image; its command line carries each replica's
GPUs, the tensor-parallel size, vLLM's arguments and the settings, and the
step's own parser reads it back as planned; the token reaches it as a secret,
never on its command line; `fitCheck.enabled: false` declares none. The step
itself on a real engine: tests/test_e2e_fit.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.steps.fit import Replica, parser
from tests.test_component import COMMAND, SECRETS, dep_names, deploy, deploy_with_secrets, replicas

FIT = "vllm-fit"
IMAGE = "@@vllm-vllm-image.imageId@@"


def test_fit_comes_after_the_image_and_before_the_download_and_every_replica() -> None:
    run = deploy_with_secrets()
    fit = run.named(FIT)
    assert fit.type == COMMAND
    create = fit.inputs["create"]
    assert f" -m components.steps.fit --image {IMAGE} " in create  # waits for the image
    assert "--model meta-llama/Llama-2-7b-chat-hf --name vllm-fit --backend gpu " in create
    assert "--tensor-parallel-size 1 --warn-above-percent 90 --cpu-kvcache-gb 4" in create
    assert create.endswith("--replica vllm0=0 --replica vllm1=1")
    assert "--volume" not in create  # a hub model: its small files only, no cache
    assert SECRETS["hfToken"] not in create
    assert fit.inputs["environment"] == {"HF_TOKEN": SECRETS["hfToken"]}
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
    create = run.named(FIT).inputs["create"]
    assert "--replica vllm0=0,1 --replica vllm1=2,3" in create
    # A path in the container: read through the model cache's mount.
    assert "--volume vllm-hf-cache:/root/.cache/huggingface" in create
    assert "--warn-above-percent 80" in create
    assert create.endswith(
        "--extra-arg=--max-model-len --extra-arg=8192 --extra-arg=--gpu-memory-utilization=0.8"
    )
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
        assert fit.inputs["create"].endswith(f"--replica vllm-{name}-0={gpu}")
        assert fit.inputs["environment"]["DOCKER_HOST"] == f"ssh://ops@{name}"
        assert f"vllm-{name}-fit" in dep_names(run, run.named(f"vllm-{name}-download"))


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
    fit = plan.hosts[0].fit
    assert fit is not None
    args = parser().parse_args(list(fit.argv("img", ("cache:/root/.cache/huggingface",))[3:]))
    assert args.backend == "cpu" and args.cpu_kvcache_gb == 12
    assert args.replica == [Replica("vllm0", ()), Replica("vllm1", ())]
    assert args.extra_arg == ["--max-model-len", "-1", "--dtype", "float16"]
    # The hub the download job asks is the one the facts come from.
    assert ("HF_ENDPOINT", "http://hub.lan") in args.env
    assert args.volume == []
    assert (
        build_plan(settings(fitCheck={"enabled": False}), project_dir=Path(".")).hosts[0].fit
        is None
    )
