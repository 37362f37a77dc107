"""Settings -> plan, without Pulumi: the functional core of the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.config.settings import Settings
from components.plan.build import build_plan
from components.plan.model import API_KEY_ENV, HF_TOKEN_ENV, Plan, go_duration
from components.plan.specs import (
    SPEC_ENV,
    DownloadSpec,
    ReadinessSpec,
    RolloutSpec,
    VerifySpec,
    decode,
)

PROJECT = Path("/srv/project")


def plan(**values: Any) -> Plan:
    settings = Settings.model_validate({"model": "org/model", **values})
    return build_plan(settings, project_dir=PROJECT, python="/venv/bin/python")


def test_guide_layout() -> None:
    p = plan()
    assert [r.name for r in p.replicas] == ["vllm0", "vllm1"]
    assert [r.host_port for r in p.replicas] == [8081, 8082]
    assert [r.gpu_ids for r in p.replicas] == [("0",), ("1",)]
    assert [r.url for r in p.replicas] == ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    assert p.load_balancer.url == "http://localhost:8000"
    assert p.network == "vllm-nginx"
    assert p.cache.volume == "vllm-hf-cache"
    assert p.vllm_image.name == "vllm/vllm-openai:v0.33.0"
    assert p.vllm_image.build is None


def test_every_replica_is_offline_after_the_download_step() -> None:
    p = plan(replicas=3)
    assert [r.env.get("HF_HUB_OFFLINE") for r in p.replicas] == ["1", "1", "1"]
    (download,) = p.hosts[0].downloads
    assert download.spec.models == ("org/model",)
    assert download.spec.name == "vllm-download"


def test_local_model_path_has_no_download_and_stays_online() -> None:
    p = plan(model="/models/llama")
    assert p.hosts[0].downloads == ()
    assert all("HF_HUB_OFFLINE" not in r.env for r in p.replicas)


def test_download_job_is_online_and_never_gets_the_token_as_env() -> None:
    p = plan(
        hfToken="hf_SECRET",
        # (HF_HUB_OFFLINE and HF_TOKEN cannot be set here: the settings refuse them.)
        extraEnv={"TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": "http://mirror:8080"},
    )
    (download,) = p.hosts[0].downloads
    assert dict(download.spec.env) == {"HF_ENDPOINT": "http://mirror:8080"}
    assert download.secret_env == (HF_TOKEN_ENV,)
    assert download.command == "/venv/bin/python -m components.steps.download"
    environment = download.environment("sha256:abc", "cache")
    assert "SECRET" not in str(environment)
    spec = decode(DownloadSpec, environment[SPEC_ENV])
    assert spec.image == "sha256:abc" and spec.volumes == {"cache": "/root/.cache/huggingface"}
    assert spec.env == {"HF_ENDPOINT": "http://mirror:8080"}


def test_checks_are_specs_run_by_the_deploying_python() -> None:
    p = plan(replicas=3, readyTimeoutSeconds=99, progressIntervalSeconds=7)
    (ready,) = p.hosts[0].ready
    assert ready.command == "/venv/bin/python -m components.steps.readiness"
    assert decode(ReadinessSpec, ready.environment[SPEC_ENV]) == ReadinessSpec(
        replicas=("vllm0", "vllm1", "vllm2"),
        probes={f"vllm{i}": f"http://127.0.0.1:{8081 + i}/health" for i in range(3)},
        timeout_seconds=99,
        progress_seconds=7,
    )
    assert p.verify.command == "/venv/bin/python -m components.steps.verify"
    assert p.verify.spec == VerifySpec(
        url="http://localhost:8000", models=("org/model",), timeout_seconds=120
    )


def test_secrets_are_named_not_carried() -> None:
    p = plan(hfToken="hf_SECRET", apiKey="KEY_SECRET")
    for replica in p.replicas:
        assert replica.secret_env == (API_KEY_ENV,)
    assert p.verify.secret_env == (API_KEY_ENV,)
    assert "SECRET" not in repr(p)
    assert plan().replicas[0].secret_env == ()


def test_nginx_config_targets_replica_names() -> None:
    config = plan(replicas=3).load_balancer.config
    for name in ("vllm0", "vllm1", "vllm2"):
        assert f"server {name}:8000 " in config
    assert "listen 0.0.0.0:80 backlog=4096;" in config


def test_relative_build_context_is_resolved_against_the_project() -> None:
    p = plan(image={"build": {"context": "../vllm"}})
    assert p.vllm_image.build is not None
    assert p.vllm_image.build.context == "/srv/vllm"
    assert p.load_balancer.image.build is None, "nginx runs as published"


def test_public_host_in_urls_when_not_on_loopback() -> None:
    p = plan(bindAddress="0.0.0.0", publicHost="gpu-box")
    assert p.replicas[0].url == "http://gpu-box:8081"
    assert plan(loadBalancer={"bindAddress": "127.0.0.1"}).load_balancer.url == (
        "http://127.0.0.1:8000"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (5, "5s"),
        (59, "59s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (1800, "30m0s"),
        (3600, "1h0m0s"),
        (3661, "1h1m1s"),
        (86400, "24h0m0s"),
    ],
)
def test_durations_are_written_as_go_reads_them_back(seconds: int, text: str) -> None:
    assert go_duration(seconds) == text


def test_health_check_durations_are_canonical() -> None:
    hc = plan(readyTimeoutSeconds=5400, healthCheck={"intervalSeconds": 120}).replicas[0]
    assert hc.health_check.durations() == {
        "interval": "2m0s",
        "timeout": "5s",
        "start_period": "1h30m0s",
        "start_interval": "0s",
    }


def test_model_is_positional_after_vllm_serve() -> None:
    replica = plan().replicas[0]
    assert replica.entrypoint == ("vllm", "serve")
    assert replica.command[0] == "org/model"
    assert "--model" not in replica.command


def test_replicas_drain_on_sigterm_and_wait_as_long_as_the_readiness_step() -> None:
    replica = plan(
        shutdownTimeoutSeconds=45, stopGraceSeconds=60, readyTimeoutSeconds=2400
    ).replicas[0]
    assert replica.command[replica.command.index("--shutdown-timeout") + 1] == "45"
    assert replica.stop_grace_seconds == 60
    # vLLM's own default (600 s) would give up on a slow first load before the step does.
    assert replica.env["VLLM_ENGINE_READY_TIMEOUT_S"] == "2400"
    assert plan().replicas[0].command[-2:] == ("--shutdown-timeout", "60")
    extra = plan(extraArgs=["--max-model-len", "4096"]).replicas[0].command
    assert extra[-4:] == ("--shutdown-timeout", "60", "--max-model-len", "4096")


def test_the_drain_leaves_the_requests_to_vllm_unless_it_aborts_them() -> None:
    (drained,) = plan(replicas=1).rollouts
    assert drained.drain.endswith("-m components.steps.rollout drain")
    assert drained.resume.endswith("-m components.steps.rollout resume")
    spec = drained.step.spec
    assert isinstance(spec, RolloutSpec) and spec.vllm_drains and spec.drain_seconds == 90
    # vLLM's default: SIGTERM aborts, so the drain waits at nginx as before.
    (waiting,) = plan(replicas=1, shutdownTimeoutSeconds=0, stopGraceSeconds=30).rollouts
    spec = waiting.step.spec
    assert isinstance(spec, RolloutSpec) and not spec.vllm_drains and spec.drain_seconds == 30


def test_cpu_replicas_get_disjoint_cores_and_matching_omp_binds() -> None:
    p = plan(backend="cpu", replicas=3, cpu={"coresPerReplica": 2})
    assert [r.cpu_set for r in p.replicas] == ["0-1", "2-3", "4-5"]
    binds = [r.env["VLLM_CPU_OMP_THREADS_BIND"] for r in p.replicas]
    assert binds == ["0-1", "2-3", "4-5"]
    assert all(r.gpu_ids == () for r in p.replicas)
    unpinned = plan(backend="cpu", cpu={"coresPerReplica": 0}).replicas[0]
    assert unpinned.cpu_set is None
    assert unpinned.env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    # Legacy from vLLM v0.18 but honoured, and with no 4 GiB default any more.
    assert unpinned.env["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_explicit_cpu_sets_split_per_tensor_parallel_rank() -> None:
    p = plan(backend="cpu", replicas=2, tensorParallelSize=2, cpu={"cpuSets": ["0-3", "8,9,12,13"]})
    assert [r.cpu_set for r in p.replicas] == ["0-3", "8-9,12-13"]
    assert [r.env["VLLM_CPU_OMP_THREADS_BIND"] for r in p.replicas] == ["0-1|2-3", "8-9|12-13"]
