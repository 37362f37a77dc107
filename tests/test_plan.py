"""Settings -> plan, without Pulumi: the functional core of the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.plan import API_KEY_ENV, HF_TOKEN_ENV, Plan, build_plan
from components.settings import Settings

PROJECT = Path("/srv/project")


def plan(**values: Any) -> Plan:
    settings = Settings.model_validate({"model": "org/model", **values})
    return build_plan(settings, project_dir=PROJECT, python="/venv/bin/python")


def test_guide_layout() -> None:
    p = plan()
    assert [r.name for r in p.replicas] == ["vllm0", "vllm1"]
    assert [r.host_port for r in p.replicas] == [8081, 8082]
    assert [r.gpus for r in p.replicas] == ["device=0", "device=1"]
    assert [r.url for r in p.replicas] == ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    assert p.load_balancer.url == "http://localhost:8000"
    assert p.network == "vllm-nginx"
    assert p.cache.volume == "vllm-hf-cache"
    assert p.vllm_image.name == "vllm/vllm-openai:v0.11.0"
    assert p.vllm_image.build is None


def test_only_later_replicas_are_offline() -> None:
    p = plan(replicas=3)
    assert [r.env.get("HF_HUB_OFFLINE") for r in p.replicas] == [None, "1", "1"]


def test_checks_are_argv_run_by_the_deploying_python() -> None:
    p = plan(replicas=3, readyTimeoutSeconds=99)
    assert p.first_ready.argv == (
        "/venv/bin/python",
        "-m",
        "components.gate",
        "--timeout",
        "99",
        "vllm0",
    )
    assert p.all_ready is not None
    assert p.all_ready.argv[-2:] == ("vllm1", "vllm2")
    assert p.verify.command.startswith("/venv/bin/python -m components.verify --url ")
    assert plan(replicas=1).all_ready is None


def test_secrets_are_named_not_carried() -> None:
    p = plan(hfToken="hf_SECRET", apiKey="KEY_SECRET")
    for replica in p.replicas:
        assert replica.secret_env == (HF_TOKEN_ENV, API_KEY_ENV)
    assert p.verify.secret_env == (API_KEY_ENV,)
    assert "SECRET" not in repr(p)
    assert plan().replicas[0].secret_env == ()


def test_nginx_config_targets_replica_names() -> None:
    config = plan(replicas=3).load_balancer.config
    for name in ("vllm0", "vllm1", "vllm2"):
        assert f"server {name}:8000 " in config
    assert "listen 0.0.0.0:80;" in config


def test_relative_build_context_is_resolved_against_the_project() -> None:
    p = plan(image={"build": {"context": "../vllm"}})
    assert p.vllm_image.build is not None
    assert p.vllm_image.build.context == "/srv/vllm"
    assert p.load_balancer.image.build is not None
    assert p.load_balancer.image.build.context == "/srv/project/docker/nginx"


def test_public_host_in_urls_when_not_on_loopback() -> None:
    p = plan(bindAddress="0.0.0.0", publicHost="gpu-box")
    assert p.replicas[0].url == "http://gpu-box:8081"
    assert plan(loadBalancer={"bindAddress": "127.0.0.1"}).load_balancer.url == (
        "http://127.0.0.1:8000"
    )
