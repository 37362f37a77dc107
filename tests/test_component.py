"""What the program declares, checked under Pulumi's mocks (no CLI, no plugins).

These tests prove the resource graph and the inputs handed to pulumi-docker
and pulumi-command: types, camelCase inputs, parents, dependencies, options
and secrecy. They do not prove that the providers act on them correctly;
the end-to-end tests apply the same declarations to a real Docker engine.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker
import pytest

from components.config.problems import ConfigError
from components.deployment.balancer import TYPE_TOKEN as BALANCER_TYPE
from components.deployment.cluster import TYPE_TOKEN, VllmCluster, VllmClusterArgs
from components.deployment.engine import TYPE_TOKEN as ENGINE_TYPE
from components.deployment.pool import TYPE_TOKEN as POOL_TYPE
from components.deployment.program import load_settings
from components.plan.specs import (
    SPEC_ENV,
    CanarySpec,
    DownloadSpec,
    ReadinessSpec,
    ReloadSpec,
    RolloutSpec,
    Spec,
    VerifySpec,
    WatchedReplica,
    decode,
)
from tests.support.nginx import make_test_pki
from tests.support.pulumi_capture import Declared, Run, run_program

NS = "vllm-nginx"
CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"


def config(**values: Any) -> dict[str, str]:
    base: dict[str, Any] = {"model": "meta-llama/Llama-2-7b-chat-hf"}
    base.update(values)
    return {
        f"{NS}:{key}": json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in base.items()
    }


SECRETS = {"hfToken": "hf_TOPSECRET123", "apiKey": "sk-APIKEY456"}


def deploy(**values: Any) -> Run:
    return run_program(config(**values))


def deploy_with_secrets(**values: Any) -> Run:
    return run_program(config(**SECRETS, **values), [f"{NS}:{k}" for k in SECRETS])


def dep_names(run: Run, declared: Declared) -> set[str]:
    return {run.by_urn(urn).name for urn in declared.dependencies}


def step_spec(declared: Declared, kind: type[Spec]) -> Spec:
    """The spec a step command passes its process (components.plan.specs)."""
    return decode(kind, declared.inputs["environment"][SPEC_ENV])


def replicas(run: Run) -> list[Declared]:
    # Registration order is asynchronous (all replicas wait on the same output).
    found = [c for c in run.of_type(CONTAINER) if c.name != "vllm-lb"]
    return sorted(found, key=lambda c: int(str(c.inputs["name"]).removeprefix("vllm")))


@pytest.fixture(scope="module")
def guide() -> Run:
    return deploy_with_secrets()


def test_component_and_children(guide: Run) -> None:
    (component,) = guide.of_type(TYPE_TOKEN)
    assert TYPE_TOKEN == "vllm-nginx:index:VllmCluster"
    (balancer,) = guide.of_type(BALANCER_TYPE)
    (engine,) = guide.of_type(ENGINE_TYPE)
    (pool,) = guide.of_type(POOL_TYPE)
    assert (BALANCER_TYPE, ENGINE_TYPE, POOL_TYPE) == (
        "vllm-nginx:index:LoadBalancer",
        "vllm-nginx:index:Engine",
        "vllm-nginx:index:Pool",
    )
    children = [d for d in guide.declared if d is not component]
    assert {d.type for d in children} == {
        "docker:index/network:Network",
        "docker:index/volume:Volume",
        "docker:index/remoteImage:RemoteImage",
        CONTAINER,
        COMMAND,
        BALANCER_TYPE,
        ENGINE_TYPE,
        POOL_TYPE,
    }
    parts = {
        balancer.urn: {"vllm-nginx-image", "vllm-lb", "vllm-lb-config", "vllm-verify"},
        engine.urn: {"vllm-network", "vllm-hf-cache", "vllm-compile-cache", "vllm-vllm-image"},
        pool.urn: {
            "vllm-fit",
            "vllm-download",
            "vllm-vllm0",
            "vllm-vllm1",
            "vllm-vllm0-rotation",
            "vllm-vllm1-rotation",
            "vllm-canary",
            "vllm-replicas-ready",
        },
    }
    for urn, names in parts.items():
        assert {d.name for d in children if d.parent == urn} == names
    rest = [d for d in children if d.parent not in parts]
    assert {d.name for d in rest} == {"vllm-balancer", "vllm-engine", "vllm-pool"}
    assert all(d.parent == component.urn for d in rest)
    # A running stack keeps what moved into a part: each names its former parent.
    moved = [d for d in children if d.parent in parts]
    assert all(d.alias_parents == [component.urn] for d in moved), moved


def test_replicas_as_in_the_guide(guide: Run) -> None:
    r0, r1 = replicas(guide)
    for index, replica in enumerate((r0, r1)):
        inputs = replica.inputs
        assert inputs["name"] == f"vllm{index}"
        assert inputs["ipcMode"] == "host"
        assert "gpus" not in inputs, "docker/cli parses gpus= as CSV (device=0,1 breaks)"
        assert inputs["deviceRequests"] == [
            {"driver": "nvidia", "deviceIds": [str(index)], "capabilities": ["gpu"]}
        ]
        assert "shmSize" not in inputs, "docker ignores --shm-size with --ipc host"
        assert inputs["ports"] == [{"internal": 8000, "external": 8081 + index, "ip": "127.0.0.1"}]
        assert inputs["networksAdvanced"] == [{"name": "vllm-nginx", "aliases": [f"vllm{index}"]}]
        assert inputs["volumes"] == [
            {"volumeName": "vllm-hf-cache", "containerPath": "/root/.cache/huggingface"},
            {"volumeName": "vllm-compile-cache", "containerPath": "/root/.cache/vllm"},
        ]
        assert inputs["entrypoints"] == ["vllm", "serve"]
        command = inputs["command"]
        assert command[0] == "meta-llama/Llama-2-7b-chat-hf", "vllm serve takes the model first"
        assert "--model" not in command, "deprecated by vllm serve (refused by v0.11.0)"
        assert command[command.index("--served-model-name") + 1] == "meta-llama/Llama-2-7b-chat-hf"
        assert "--api-key" not in command, "the key must not sit in argv"
        assert inputs["image"] == "@@vllm-vllm-image.imageId@@"
        assert inputs["restart"] == "unless-stopped"
        health = inputs["healthcheck"]
        assert health["tests"][0] == "CMD"
        assert "/health" in health["tests"][-1]
        # As the provider reads them back (Go's Duration.String()), so no drift.
        assert health["startPeriod"] == "30m0s"
        assert health["interval"] == "10s"
        assert health["timeout"] == "5s"
        assert health["startInterval"] == "0s"
        # A start the daemon refused is retried by replacement (docs/failed-up.md).
        assert replica.replace_on_changes == ["healthcheck", "#initerror"]
        assert replica.delete_before_replace
    assert "HF_HUB_OFFLINE=1" in r0.inputs["envs"]
    assert "HF_HUB_OFFLINE=1" in r1.inputs["envs"]


def test_download_step_comes_before_every_replica(guide: Run) -> None:
    download = guide.named("vllm-download")
    assert download.type == COMMAND
    # The job runs on the engine's host network: it does not wait for ours.
    assert dep_names(guide, download) >= {"vllm-hf-cache"}
    assert "vllm-network" not in dep_names(guide, download)
    assert download.inputs["create"].endswith(" -m components.steps.download")
    assert step_spec(download, DownloadSpec) == DownloadSpec(
        models=("meta-llama/Llama-2-7b-chat-hf",),
        name="vllm-download",
        env={},
        timeout_seconds=1800,
        progress_seconds=15,
        image="@@vllm-vllm-image.imageId@@",
        volumes={"vllm-hf-cache": "/root/.cache/huggingface"},
    )
    # The token travels as a secret of the local command, never in its spec.
    assert "TOPSECRET" not in download.inputs["environment"][SPEC_ENV]
    assert download.inputs["environment"]["HF_TOKEN"] == "hf_TOPSECRET123"
    assert "environment" in download.secret_inputs
    assert set(download.additional_secret_outputs) >= {"stdout", "stderr"}
    for replica in replicas(guide):
        assert "vllm-download" in dep_names(guide, replica)


def test_all_replicas_start_together_after_the_download() -> None:
    run = deploy(replicas=4)
    for replica in replicas(run):
        names = dep_names(run, replica)
        assert "vllm-download" in names
        assert not names & {f"vllm-vllm{i}" for i in range(4)}
        assert not names & {"vllm-replicas-ready"}
    ready = run.named("vllm-replicas-ready")
    assert step_spec(ready, ReadinessSpec) == ReadinessSpec(
        replicas=tuple(f"vllm{i}" for i in range(4)),
        probes={f"vllm{i}": f"http://127.0.0.1:{8081 + i}/health" for i in range(4)},
        timeout_seconds=1800,
        progress_seconds=15,
    )
    assert ready.inputs["triggers"] == [f"@@vllm-vllm{i}.id@@" for i in range(4)]
    assert not [d for d in run.declared if d.name.endswith("vllm0-ready")]


def test_local_model_path_has_no_download_step() -> None:
    run = deploy(model="/models/llama")
    assert not [d for d in run.declared if d.name == "vllm-download"]
    for replica in replicas(run):
        assert "vllm-download" not in dep_names(run, replica)
        assert "HF_HUB_OFFLINE=1" not in replica.inputs["envs"]


def test_compile_cache_volume_can_be_turned_off() -> None:
    run = deploy(compileCache={"enabled": False})
    assert not [d for d in run.declared if d.name == "vllm-compile-cache"]
    for replica in replicas(run):
        assert len(replica.inputs["volumes"]) == 1


def test_load_balancer_after_replicas_with_rendered_config(guide: Run) -> None:
    lb = guide.named("vllm-lb")
    assert dep_names(guide, lb) >= {"vllm-vllm0", "vllm-vllm1", "vllm-replicas-ready"}
    assert lb.inputs["name"] == "nginx-lb"
    assert lb.inputs["ports"] == [{"internal": 80, "external": 8000, "ip": "0.0.0.0"}]
    assert lb.inputs["image"] == "@@vllm-nginx-image.imageId@@"
    assert lb.inputs["command"] == ["nginx", "-g", "daemon off;"]
    assert lb.inputs["stopSignal"] == "SIGQUIT"
    config, _health, _table, _key_file = lb.inputs["uploads"]
    assert config["file"] == "/etc/nginx/nginx.conf"
    # The balancer's /health (njs) checks the replicas, and Docker asks it.
    assert [u["file"] for u in (_health, _table)] == [
        "/etc/nginx/lb/health.js",
        "/etc/nginx/lb/models.js",
    ]
    assert lb.inputs["healthcheck"]["tests"] == [
        "CMD",
        "curl",
        "-fsS",
        "-o",
        "/dev/null",
        "--max-time",
        "9",
        "http://127.0.0.1:80/health",
    ]
    assert "server vllm0:8000" in config["content"]
    assert "server vllm1:8000" in config["content"]
    assert "least_conn;" in config["content"]
    assert "vllm2" not in config["content"]
    assert lb.delete_before_replace


def test_load_balancer_checks_the_api_key_itself(guide: Run) -> None:
    """The key file is uploaded as a secret; the main config only includes it."""
    lb = guide.named("vllm-lb")
    config, _health, _table, key_file = lb.inputs["uploads"]
    assert "include /etc/nginx/api-key.conf;" in config["content"]
    assert "APIKEY" not in config["content"]
    assert key_file["file"] == "/etc/nginx/api-key.conf"
    assert "Bearer sk-APIKEY456" in key_file["content"]
    assert "uploads" in lb.secret_inputs
    assert "uploads" in lb.additional_secret_outputs
    plain = deploy().named("vllm-lb")
    assert len(plain.inputs["uploads"]) == 3
    assert "api-key" not in plain.inputs["uploads"][0]["content"]


def test_tls_on_the_load_balancer(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    certificate = Path(pki.server.certificate).read_text()
    key = Path(pki.server.key).read_text()
    run = run_program(
        config(loadBalancer={"tls": True}, tlsCertificate=certificate, tlsKey=key),
        [f"{NS}:tlsKey"],
    )
    lb = run.named("vllm-lb")
    assert lb.inputs["ports"] == [{"internal": 443, "external": 8000, "ip": "0.0.0.0"}]
    uploads = {u["file"]: u["content"] for u in lb.inputs["uploads"]}
    assert uploads["/etc/nginx/tls/server.crt"] == certificate
    assert uploads["/etc/nginx/tls/server.key"] == key
    assert "listen 0.0.0.0:443 ssl backlog=4096;" in uploads["/etc/nginx/nginx.conf"]
    assert "PRIVATE KEY" not in uploads["/etc/nginx/nginx.conf"]
    assert "uploads" in lb.secret_inputs and "uploads" in lb.additional_secret_outputs
    assert run.outputs["lb_url"] == "https://localhost:8000"
    verify = run.named("vllm-verify")
    assert step_spec(verify, VerifySpec).url == "https://localhost:8000"
    assert verify.inputs["environment"]["VLLM_NGINX_LB_CERTIFICATE"] == certificate
    assert "environment" in verify.secret_inputs
    for declared in run.declared:
        visible = {k: v for k, v in declared.inputs.items() if k not in declared.secret_inputs}
        assert "PRIVATE KEY" not in _flatten(visible), declared.name


def test_tls_key_must_be_secret_and_match(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    certificate = Path(pki.server.certificate).read_text()
    key = Path(pki.server.key).read_text()
    declared: list[Declared] = []
    values = config(loadBalancer={"tls": True}, tlsCertificate=certificate, tlsKey=key)
    with pytest.raises(ConfigError, match="'vllm-nginx:tlsKey': must be set with") as caught:
        run_program(values, declared=declared)
    assert "PRIVATE KEY" not in str(caught.value)
    other = make_test_pki(tmp_path / "other")
    values[f"{NS}:tlsKey"] = Path(other.server.key).read_text()
    with pytest.raises(ConfigError, match="is not the private key of 'tlsCertificate'"):
        run_program(values, [f"{NS}:tlsKey"], declared=declared)
    assert declared == []


def test_open_load_balancer_without_a_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        deploy()
    assert "published on 0.0.0.0:8000 without an API key" in caplog.text
    assert "pulumi config set --secret apiKey" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        deploy(loadBalancer={"bindAddress": "127.0.0.1"})
        deploy_with_secrets()
    assert "without an API key" not in caplog.text


def test_replica_set_change_changes_lb_config() -> None:
    run = deploy(replicas=3)
    content = run.named("vllm-lb").inputs["uploads"][0]["content"]
    assert "server vllm2:8000" in content


def test_nginx_image_runs_as_published(guide: Run) -> None:
    """No build (and so no BuildKit): the uploaded nginx.conf replaces the stock one."""
    image = guide.named("vllm-nginx-image")
    assert image.type == "docker:index/remoteImage:RemoteImage"
    assert image.inputs["name"] == "nginx:1.28.0"
    assert not guide.of_type("docker:index/image:Image")


def test_an_image_older_than_the_oldest_supported_release_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A warning, not a failure: `pulumi up` goes on and declares the replicas."""
    with caplog.at_level("WARNING"):
        run = deploy(image={"prebuilt": "vllm/vllm-openai:v0.11.0"})
    assert "'image.prebuilt' is vllm/vllm-openai:v0.11.0, vLLM v0.11.0, older than v0.18.0" in (
        caplog.text
    )
    assert "--shutdown-timeout" in caplog.text
    assert len(replicas(run)) == 2
    for image in ("vllm/vllm-openai:v0.18.0", "vllm/vllm-openai:latest", "my/vllm:v0.11.0"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            deploy(image={"prebuilt": image})
        assert "older than v0.18.0" not in caplog.text, image
    caplog.clear()
    with caplog.at_level("WARNING"):
        deploy()  # the pinned release
    assert "older than" not in caplog.text


def test_prebuilt_image_by_default(guide: Run) -> None:
    image = guide.named("vllm-vllm-image")
    assert image.type == "docker:index/remoteImage:RemoteImage"
    assert image.inputs["name"] == "vllm/vllm-openai:v0.33.0"
    assert image.inputs["keepLocally"] is True
    # RemoteImage's default create timeout is 20 minutes; the image is ~10 GB.
    assert image.custom_timeouts == {"create": "90m", "update": "90m"}


def test_pull_timeout_and_keep_are_settings() -> None:
    run = deploy(image={"pullTimeoutMinutes": 240, "keepOnDestroy": False})
    for name in ("vllm-vllm-image", "vllm-nginx-image"):
        image = run.named(name)
        assert image.custom_timeouts == {"create": "240m", "update": "240m"}
        assert image.inputs["keepLocally"] is False


def test_image_built_from_vllm_source_with_proxies(tmp_path: Path) -> None:
    checkout = tmp_path / "vllm"
    (checkout / "docker").mkdir(parents=True)
    (checkout / "docker" / "Dockerfile").write_text("FROM scratch\n")
    run = deploy(
        image={"build": {"context": str(checkout)}},
        proxy={"http": "http://proxy:3128", "https": "http://proxy:3128", "no": "localhost"},
    )
    image = run.named("vllm-vllm-image")
    assert image.type == "docker:index/image:Image"
    build = image.inputs["build"]
    assert build["context"] == str(checkout)
    assert build["dockerfile"] == str(checkout / "docker" / "Dockerfile")
    assert build["target"] == "vllm-openai"
    assert build["args"] == {
        "http_proxy": "http://proxy:3128",
        "https_proxy": "http://proxy:3128",
        "no_proxy": "localhost",
    }
    for replica in replicas(run):
        assert replica.inputs["image"] == "@@vllm-vllm-image.repoDigest@@"
        assert "https_proxy=http://proxy:3128" in replica.inputs["envs"]
        assert "HTTPS_PROXY=http://proxy:3128" in replica.inputs["envs"]


def test_cpu_backend_pins_disjoint_cores() -> None:
    run = deploy(backend="cpu", model="Qwen/Qwen2.5-0.5B-Instruct", cpu={"kvcacheSpaceGb": 8})
    sets = []
    for index, replica in enumerate(replicas(run)):
        inputs = replica.inputs
        assert "gpus" not in inputs and "deviceRequests" not in inputs
        cores = f"{index * 4}-{index * 4 + 3}"
        sets.append(inputs["cpuSet"])
        assert inputs["cpuSet"] == cores
        assert f"VLLM_CPU_OMP_THREADS_BIND={cores}" in inputs["envs"]
        assert "VLLM_CPU_KVCACHE_SPACE=8" in inputs["envs"]
        # As vLLM's CPU docs run it: NUMA calls need SYS_NICE and mbind/set_mempolicy.
        assert inputs["capabilities"] == {"adds": ["CAP_SYS_NICE"]}
        assert inputs["securityOpts"] == ["label=disable", "seccomp=unconfined"]
    assert sets == ["0-3", "4-7"]
    image = run.named("vllm-vllm-image").inputs["name"]
    assert image == "vllm/vllm-openai-cpu:v0.33.0-x86_64"


def test_cpu_tensor_parallel_binds_one_range_per_rank() -> None:
    run = deploy(
        backend="cpu",
        replicas=1,
        tensorParallelSize=2,
        cpu={"cpuSets": ["0-3,8-11"]},
    )
    (replica,) = replicas(run)
    assert replica.inputs["cpuSet"] == "0-3,8-11"
    assert "VLLM_CPU_OMP_THREADS_BIND=0-3|8-11" in replica.inputs["envs"]


def test_tensor_parallel_gpus() -> None:
    run = deploy(tensorParallelSize=2, gpus=[[0, 1], [2, 3]])
    assert [r.inputs["deviceRequests"][0]["deviceIds"] for r in replicas(run)] == [
        ["0", "1"],
        ["2", "3"],
    ]
    assert all("gpus" not in r.inputs for r in replicas(run))
    command = replicas(run)[0].inputs["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2"


def test_extra_args_and_env() -> None:
    run = deploy(extraArgs=["--max-model-len", "4096"], extraEnv={"VLLM_LOGGING_LEVEL": "DEBUG"})
    for replica in replicas(run):
        assert replica.inputs["command"][-2:] == ["--max-model-len", "4096"]
        assert "VLLM_LOGGING_LEVEL=DEBUG" in replica.inputs["envs"]


def test_cache_volume_kept_on_destroy(guide: Run) -> None:
    volume = guide.named("vllm-hf-cache")
    assert volume.inputs["name"] == "vllm-hf-cache"
    assert volume.retain_on_delete
    assert (
        not deploy(hfCache={"volume": "cache", "keepOnDestroy": False})
        .named("vllm-hf-cache")
        .retain_on_delete
    )


def test_cache_on_host_path() -> None:
    run = deploy(hfCache={"hostPath": "/data/hf"})
    assert [v.name for v in run.of_type("docker:index/volume:Volume")] == ["vllm-compile-cache"]
    for replica in replicas(run):
        assert replica.inputs["volumes"][0] == {
            "hostPath": "/data/hf",
            "containerPath": "/root/.cache/huggingface",
        }
    download = step_spec(run.named("vllm-download"), DownloadSpec)
    assert download.volumes == {"/data/hf": "/root/.cache/huggingface"}


def test_verify_step_is_an_output(guide: Run) -> None:
    verify = guide.named("vllm-verify")
    assert verify.type == COMMAND
    assert "vllm-lb" in dep_names(guide, verify)
    assert verify.inputs["create"].endswith("-m components.steps.verify")
    assert step_spec(verify, VerifySpec) == VerifySpec(
        url="http://localhost:8000", models=("meta-llama/Llama-2-7b-chat-hf",), timeout_seconds=120
    )
    assert guide.outputs["verified_models"] == "@@vllm-verify.stdout@@"
    # The step's environment (the API key) is secret; the model list is not.
    assert "verified_models" not in guide.secret_outputs


def test_outputs(guide: Run) -> None:
    assert guide.outputs["lb_url"] == "http://localhost:8000"
    assert guide.outputs["replica_urls"] == ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    assert guide.outputs["replica_names"] == ["vllm0", "vllm1"]
    assert guide.outputs["served_model_name"] == "meta-llama/Llama-2-7b-chat-hf"


def _flatten(value: Any) -> str:
    return json.dumps(value)


def test_secrets_stay_secret(guide: Run) -> None:
    for replica in replicas(guide):
        assert "envs" in replica.secret_inputs
        assert "envs" in replica.additional_secret_outputs
        assert not [e for e in replica.inputs["envs"] if e.startswith("HF_TOKEN")]
        assert "VLLM_API_KEY=sk-APIKEY456" in replica.inputs["envs"]
    verify = guide.named("vllm-verify")
    assert "environment" in verify.secret_inputs
    assert verify.inputs["environment"]["VLLM_API_KEY"] == "sk-APIKEY456"
    for declared in guide.declared:
        visible = {k: v for k, v in declared.inputs.items() if k not in declared.secret_inputs}
        assert "TOPSECRET" not in _flatten(visible), declared.name
        assert "APIKEY" not in _flatten(visible), declared.name
    assert "TOPSECRET" not in _flatten(guide.outputs)
    assert "APIKEY" not in _flatten(guide.outputs)


def test_without_secrets_env_is_plain() -> None:
    run = deploy()
    for replica in replicas(run):
        assert "envs" not in replica.secret_inputs
        assert not any(e.startswith(("HF_TOKEN=", "VLLM_API_KEY=")) for e in replica.inputs["envs"])


def test_single_replica_has_one_readiness_check() -> None:
    run = deploy(replicas=1, gpus=[[3]])
    assert [r.inputs["deviceRequests"][0]["deviceIds"] for r in replicas(run)] == [["3"]]
    assert step_spec(run.named("vllm-replicas-ready"), ReadinessSpec).replicas == ("vllm0",)
    assert dep_names(run, run.named("vllm-lb")) >= {"vllm-vllm0", "vllm-replicas-ready"}


def test_docker_host_reaches_the_checks() -> None:
    run = run_program({**config(publicHost="gpu-box"), "docker:host": "ssh://ops@gpu-box"})
    for name in ("vllm-download", "vllm-replicas-ready"):
        environment = run.named(name).inputs["environment"]
        assert set(environment) == {"DOCKER_HOST", SPEC_ENV}
        assert environment["DOCKER_HOST"] == "ssh://ops@gpu-box"
    assert step_spec(run.named("vllm-verify"), VerifySpec).url == "http://gpu-box:8000"


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ({}, "'vllm-nginx:publicHost': must name the Docker host"),
        ({"publicHost": "gpu-box", "loadBalancer": {"bindAddress": "127.0.0.1"}}, "loopback"),
    ],
)
def test_remote_engine_needs_a_reachable_load_balancer(values: dict[str, Any], rule: str) -> None:
    """With `docker:host=ssh://...`, `localhost` in the verify URL is the wrong machine."""
    declared: list[Declared] = []
    with pytest.raises(ConfigError, match=rule):
        run_program({**config(**values), "docker:host": "tcp://gpu-box:2376"}, declared=declared)
    assert declared == []
    local = run_program({**config(), "docker:host": "unix:///var/run/docker.sock"})
    assert local.outputs["lb_url"] == "http://localhost:8000"


def test_provider_from_opts_reaches_every_docker_child() -> None:
    def program() -> dict[str, Any]:
        provider = docker.Provider("remote", host="ssh://ops@gpu-box")
        cluster = VllmCluster(
            "vllm",
            VllmClusterArgs(settings=load_settings(), docker_host="ssh://ops@gpu-box"),
            opts=pulumi.ResourceOptions(providers=[provider]),
        )
        return {"lb_url": cluster.lb_url}

    run = run_program(config(), program=program)
    provider = run.named("remote")
    assert provider.inputs["host"] == "ssh://ops@gpu-box"
    docker_children = [d for d in run.declared if d.type.startswith("docker:index/")]
    assert docker_children
    for child in docker_children:
        assert child.provider.startswith(provider.urn), child.name


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"replicas": 0}, "vllm-nginx:replicas"),
        ({"gpus": [[0], [0]]}, r"vllm-nginx:gpus\[1\]': uses GPU 0"),
        ({"extraEnv": {"HF_TOKEN": "hf_x"}}, "must not set HF_TOKEN"),
        ({"namePrefix": "v" * 62, "replicas": 11}, "at most 63"),
        ({"loadBalancer": {"exposePaths": ["/health"]}}, "answers /health itself"),
        ({"image": {"build": {"context": "/no/such/checkout"}}}, "is not a directory"),
        ({"loadBalancer": {"port": 8081}}, "collides"),
        ({"model": "a;b"}, "vllm-nginx:model"),
        ({"typo": 1}, "vllm-nginx:typo"),
    ],
)
def test_bad_config_declares_nothing(values: dict[str, Any], key: str) -> None:
    declared: list[Declared] = []
    with pytest.raises(ConfigError, match=key):
        run_program(config(**values), declared=declared)
    assert declared == []
    # The same recorder does see resources when the config is good.
    run_program(config(), declared=declared)
    assert len(declared) > 5


def test_plain_text_token_declares_nothing() -> None:
    declared: list[Declared] = []
    with pytest.raises(ConfigError, match="must be set with `pulumi config set --secret"):
        run_program(config(hfToken="hf_plain"), declared=declared)
    assert declared == []


def test_gates_get_secrets_only_to_redact_them(guide: Run) -> None:
    for name in ("vllm-replicas-ready",):
        gate = guide.named(name)
        assert "environment" in gate.secret_inputs
        environment = dict(gate.inputs["environment"])
        assert environment.pop(SPEC_ENV) and environment == {
            "HF_TOKEN": "hf_TOPSECRET123",
            "VLLM_API_KEY": "sk-APIKEY456",
        }


def _run_main() -> dict[str, Any]:
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "__main__.py"))
    return {}


def test_main_declares_the_deployment() -> None:
    declared: list[Declared] = []
    run_program(config(), program=_run_main, declared=declared)
    assert {d.name for d in declared} >= {"vllm", "vllm-vllm0", "vllm-lb", "vllm-verify"}


def test_main_turns_config_errors_into_a_plain_pulumi_error() -> None:
    declared: list[Declared] = []
    with pytest.raises(pulumi.RunError, match=r"config key 'vllm-nginx:replicas'") as caught:
        run_program(config(replicas=0), program=_run_main, declared=declared)
    assert caught.value.__cause__ is None
    assert declared == []


def _deploy_rolling(rolling: bool, replicas_count: int, canary: int | None = None) -> Run:
    def program() -> dict[str, Any]:
        cluster = VllmCluster("vllm", VllmClusterArgs(settings=load_settings(), rolling=rolling))
        return {"lb_url": cluster.lb_url}

    values: dict[str, Any] = {"replicas": replicas_count}
    if canary is not None:
        values["rollout"] = {"canarySeconds": canary}
    return run_program(config(**values), program=program)


def test_each_replica_has_a_rotation_step_run_around_its_replacement() -> None:
    run = _deploy_rolling(True, 4)
    for index in range(4):
        rotation = run.named(f"vllm-vllm{index}-rotation")
        assert rotation.type == COMMAND
        assert rotation.inputs["triggers"] == [f"@@vllm-vllm{index}.id@@"]
        assert rotation.inputs["create"].endswith("-m components.steps.rollout resume")
        assert rotation.inputs["delete"].endswith("-m components.steps.rollout drain")
        assert step_spec(rotation, RolloutSpec) == RolloutSpec(
            lb="nginx-lb",
            replica=f"vllm{index}",
            port=8000,
            upstream=f"vllm{index}:8000",
            drain_seconds=90,  # the drain bounded by stopGraceSeconds
            resume_seconds=1800,
            # Back in rotation once its /health answers, not at Docker's next probe.
            probe=f"http://127.0.0.1:{8081 + index}/health",
            # vLLM finishes its requests on SIGTERM (--shutdown-timeout): nginx only.
            vllm_drains=True,
        )
        assert rotation.delete_before_replace
        assert f"vllm-vllm{index}" in dep_names(run, rotation)


def test_update_waves_keep_half_serving_only_once_replicas_run() -> None:
    rolling = _deploy_rolling(True, 4, canary=0)
    for index in (2, 3):
        names = dep_names(rolling, rolling.named(f"vllm-vllm{index}"))
        assert {"vllm-vllm0-rotation", "vllm-vllm1-rotation"} <= names
    for index in (0, 1):
        assert not any(
            n.endswith("-rotation") for n in dep_names(rolling, rolling.named(f"vllm-vllm{index}"))
        )
    first = _deploy_rolling(False, 4, canary=0)
    for index in range(4):
        assert not any(
            n.endswith("-rotation") for n in dep_names(first, first.named(f"vllm-vllm{index}"))
        )
    three = _deploy_rolling(True, 3, canary=0)  # waves of one: never fewer than half serving
    assert "vllm-vllm1-rotation" in dep_names(three, three.named("vllm-vllm2"))


def test_config_changes_reach_nginx_by_reload_not_replacement(guide: Run) -> None:
    lb = guide.named("vllm-lb")
    assert lb.ignore_changes == ["uploads"]
    assert lb.replace_on_changes == ["#initerror"]
    reload = guide.named("vllm-lb-config")
    assert reload.inputs["triggers"] == ["@@vllm-lb.id@@"]
    assert reload.inputs["create"].endswith("-m components.steps.lb_reload")
    assert step_spec(reload, ReloadSpec) == ReloadSpec("nginx-lb")
    files = json.loads(reload.inputs["environment"]["VLLM_NGINX_LB_FILES"])
    assert set(files) == {
        "/etc/nginx/nginx.conf",
        "/etc/nginx/api-key.conf",
        "/etc/nginx/lb/health.js",
        "/etc/nginx/lb/models.js",
    }
    assert "environment" in reload.secret_inputs, "the API key file is in there"
    assert {"vllm-lb", "vllm-replicas-ready"} <= dep_names(guide, reload)
    assert "vllm-lb-config" in dep_names(guide, guide.named("vllm-verify"))


def test_the_second_wave_waits_for_the_canarys_verdict() -> None:
    """The canary runs after the first wave's resume, before the second wave's drains:
    the second wave's replicas (whose replacement starts with their rotation's
    drain) depend on it, and it re-runs only when a first-wave replica is replaced."""
    rolling = _deploy_rolling(True, 4)
    watch = rolling.named("vllm-canary")
    assert watch.type == COMMAND
    assert {"vllm-vllm0-rotation", "vllm-vllm1-rotation"} <= dep_names(rolling, watch)
    assert watch.inputs["triggers"] == ["@@vllm-vllm0.id@@", "@@vllm-vllm1.id@@"]
    assert watch.inputs["create"].endswith("-m components.steps.canary")
    spec = step_spec(watch, CanarySpec)
    assert spec.lb == "nginx-lb"
    assert spec.canary[0] == WatchedReplica("vllm0", "http://127.0.0.1:8081/metrics", "vllm0:8000")
    assert spec.baseline[-1] == WatchedReplica(
        "vllm3", "http://127.0.0.1:8084/metrics", "vllm3:8000"
    )
    assert (spec.seconds, spec.max_ttft_ratio, spec.max_error_rate_increase) == (60, 1.5, 0.02)
    assert (spec.min_requests, spec.without_traffic, spec.max_wait_seconds) == (20, "proceed", 600)
    assert "delete" not in watch.inputs or not watch.inputs["delete"]
    # The first wave's container ids (12 characters each; the mocks' ids are names).
    ids = watch.inputs["environment"]["VLLM_NGINX_CANARY_CONTAINERS"]
    assert ids == "@@vllm-vllm0,@@vllm-vllm1"
    for index in (2, 3):
        names = dep_names(rolling, rolling.named(f"vllm-vllm{index}"))
        assert "vllm-canary" in names
        assert not any(n.endswith("-rotation") for n in names), names
    # nginx after it: on a first deploy it finds no nginx and returns at once.
    first = _deploy_rolling(False, 4)
    assert "vllm-canary" in dep_names(first, first.named("vllm-lb"))
    assert "vllm-canary" not in dep_names(first, first.named("vllm-vllm2"))
    # No second wave (one replica), or canarySeconds 0: no canary step.
    assert not [d for d in _deploy_rolling(True, 1).declared if d.name == "vllm-canary"]
    assert not [d for d in _deploy_rolling(True, 4, canary=0).declared if d.name == "vllm-canary"]
