"""Stack config parsing and validation, without Pulumi.

Each bad input from the component issue must fail with one message naming
the full config key and the rule, and must never echo a secret value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.config.loading import (
    load_config,
    parse_settings,
    require_secret,
    settings_from_config,
)
from components.config.problems import ConfigError, Problem
from components.config.sections import Backend, RoutingPolicy
from components.config.stack_file import settings_from_stack_file
from tests.support.nginx import make_test_pki

ROOT = Path(__file__).resolve().parent.parent


def raw(**overrides: Any) -> dict[str, Any]:
    """Config as Pulumi hands it over: strings, objects and lists as JSON."""
    config: dict[str, Any] = {"model": "org/model"}
    config.update(overrides)
    return {
        key: json.dumps(value) if isinstance(value, dict | list) else value
        for key, value in config.items()
    }


def test_defaults_reproduce_the_guide() -> None:
    settings = parse_settings(raw())
    assert settings.backend is Backend.GPU
    assert settings.replicas == 2
    assert tuple(p.gpus for p in settings.placements()) == ((0,), (1,))
    assert settings.base_port == 8081
    assert settings.bind_address == "127.0.0.1"
    assert settings.load_balancer.port == 8000
    assert settings.load_balancer.policy is RoutingPolicy.LEAST_CONN
    assert settings.model_name == "org/model"
    assert settings.hf_cache.keep_on_destroy


@pytest.mark.parametrize(
    "model",
    ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-2-7b-chat-hf", "a_b/c.d", "/models/x"],
)
def test_model_ids_vllm_and_the_hub_accept(model: str) -> None:
    assert parse_settings(raw(model=model)).model == model


def test_scalars_arrive_as_strings_and_are_coerced() -> None:
    settings = parse_settings(raw(replicas="3", tensorParallelSize="2"))
    assert settings.replicas == 3
    assert tuple(p.gpus for p in settings.placements()) == ((0, 1), (2, 3), (4, 5))


def test_stack_files_parse() -> None:
    dev = settings_from_stack_file(ROOT / "Pulumi.dev.yaml")
    assert dev.model == "meta-llama/Llama-2-7b-chat-hf"
    assert dev.replicas == 2
    assert dev.hf_cache.host_path == "~/.cache/huggingface"
    cpu = settings_from_stack_file(ROOT / "Pulumi.cpu.yaml")
    assert cpu.backend is Backend.CPU
    assert cpu.vllm_image.prebuilt == "vllm/vllm-openai-cpu:v0.33.0-x86_64"
    assert tuple(p.cores for p in cpu.placements()) == ((0, 1, 2, 3), (4, 5, 6, 7))


BAD = [
    (raw(replicas=0), "vllm-nginx:replicas", "greater than or equal to 1"),
    (raw(gpus=[[0], [0]]), "vllm-nginx:gpus[1]", "uses GPU 0, which another replica"),
    (raw(gpus=[["a"], [1]]), "vllm-nginx:gpus[0][0]", "valid integer"),
    (raw(gpus=[[0.5], [1]]), "vllm-nginx:gpus[0][0]", "valid integer"),
    (raw(gpus=[[-1], [1]]), "vllm-nginx:gpus[0][0]", "greater than or equal to 0"),
    (raw(tensorParallelSize=2, gpus=[[0], [1]]), "vllm-nginx:gpus[0]", "'tensorParallelSize' is 2"),
    (raw(replicas=3, gpus=[[0], [1]]), "vllm-nginx:gpus", "'replicas' is 3"),
    (raw(basePort=70000), "vllm-nginx:basePort", "less than or equal to 65535"),
    (raw(basePort=65535), "vllm-nginx:basePort", "passes port 65535"),
    (raw(loadBalancer={"port": 0}), "vllm-nginx:loadBalancer.port", "greater than or equal to 1"),
    (raw(loadBalancer={"port": 8082}), "vllm-nginx:loadBalancer.port", "collides with the replica"),
    (raw(namePrefix="vLLM_"), "vllm-nginx:namePrefix", "DNS-safe"),
    (raw(networkName="vllm_nginx"), "vllm-nginx:networkName", "DNS-safe"),
    (raw(loadBalancer={"name": "nginx lb"}), "vllm-nginx:loadBalancer.name", "DNS-safe"),
    (
        raw(loadBalancer={"name": "vllm1"}),
        "vllm-nginx:loadBalancer.name",
        "collides with a replica",
    ),
    (raw(hfCache={"volume": "HF cache"}), "vllm-nginx:hfCache.volume", "DNS-safe"),
    (raw(model="org/model\nserver"), "vllm-nginx:model", "no spaces, quotes, newlines"),
    (raw(model='org/"model'), "vllm-nginx:model", "no spaces, quotes"),
    (raw(model="org/model;"), "vllm-nginx:model", "';'"),
    (raw(model="org/{model"), "vllm-nginx:model", "'{'"),
    (raw(model="org/model}"), "vllm-nginx:model", "'}'"),
    (raw(model="org/my model"), "vllm-nginx:model", "no spaces"),
    (raw(servedModelName="a b"), "vllm-nginx:servedModelName", "no spaces"),
    (raw(model="--help"), "vllm-nginx:model", "would read it as an option"),
    (raw(model="-tp"), "vllm-nginx:model", "would read it as an option"),
    (raw(model="org/-model"), "vllm-nginx:model", "Hugging Face repo id"),
    (raw(model="org/model-"), "vllm-nginx:model", "Hugging Face repo id"),
    (raw(model="a/b/c"), "vllm-nginx:model", "at most one '/'"),
    (raw(model="org/model.git"), "vllm-nginx:model", "'.git'"),
    (raw(model="org--x/model"), "vllm-nginx:model", "no '--' or '..'"),
    (raw(model="org/mo..del"), "vllm-nginx:model", "no '--' or '..'"),
    (raw(model="./models/llama"), "vllm-nginx:model", "absolute path inside the container"),
    (raw(model="~/models/llama"), "vllm-nginx:model", "absolute path inside the container"),
    (raw(model="org/" + "m" * 97), "vllm-nginx:model", "1-96 characters"),
    (raw(model="café/model"), "vllm-nginx:model", "no spaces"),
    (raw(servedModelName="--port"), "vllm-nginx:servedModelName", "would read it as an option"),
    (raw(extraArgs=["4096"]), "vllm-nginx:extraArgs", "must begin with an option"),
    (raw(extraArgs=["--max-model-len", "4096; rm -rf /"]), "vllm-nginx:extraArgs[1]", "';'"),
    (raw(extraEnv={"FOO": "$(id)"}), "vllm-nginx:extraEnv.FOO", "'$'"),
    (raw(extraEnv={"BAD NAME": "x"}), "vllm-nginx:extraEnv.BAD NAME", "variable name"),
    (raw(proxy={"http": "http://p:3128 x"}), "vllm-nginx:proxy.http", "no spaces"),
    (raw(backend="cpu", cpu={"cpuSets": ["0-3", "4-{"]}), "vllm-nginx:cpu.cpuSets[1]", "0-3"),
    (raw(backend="cpu", cpu={"cpuSets": ["3-1", "4"]}), "vllm-nginx:cpu.cpuSets[0]", "ranges"),
    (raw(backend="cpu", cpu={"cpuSets": ["0-3", "3-5"]}), "vllm-nginx:cpu.cpuSets[1]", "CPU 3"),
    (raw(backend="cpu", cpu={"cpuSets": ["0-3"]}), "vllm-nginx:cpu.cpuSets", "lists 1 replicas"),
    (
        raw(backend="cpu", tensorParallelSize=2, cpu={"cpuSets": ["0-2", "3-5"]}),
        "vllm-nginx:cpu.cpuSets[0]",
        "not a multiple of 'tensorParallelSize' 2",
    ),
    (raw(cpu={"coresPerReplica": -1}), "vllm-nginx:cpu.coresPerReplica", "greater than or equal"),
    (
        raw(image={"pullTimeoutMinutes": 0}),
        "vllm-nginx:image.pullTimeoutMinutes",
        "greater than or equal to 1",
    ),
    (
        raw(loadBalancer={"affinityHeader": "X-Session\nId"}),
        "vllm-nginx:loadBalancer.affinityHeader",
        "header name",
    ),
    (
        raw(loadBalancer={"exposePaths": ["/metrics;"]}),
        "vllm-nginx:loadBalancer.exposePaths[0]",
        "URL path",
    ),
    (raw(publicHost="bad host"), "vllm-nginx:publicHost", "host name"),
    (raw(bindAddress="localhost"), "vllm-nginx:bindAddress", "IP address"),
    (raw(readyTimeoutSeconds=0), "vllm-nginx:readyTimeoutSeconds", "greater than or equal to 1"),
    (raw(verifyTimeoutSeconds=-5), "vllm-nginx:verifyTimeoutSeconds", "greater than or equal to 1"),
    (
        raw(loadBalancer={"readTimeoutSeconds": 0}),
        "vllm-nginx:loadBalancer.readTimeoutSeconds",
        "greater than or equal to 1",
    ),
    (
        raw(healthCheck={"intervalSeconds": 0}),
        "vllm-nginx:healthCheck.intervalSeconds",
        "greater than or equal to 1",
    ),
    (raw(replica=2), "vllm-nginx:replica", "unknown key"),
    (raw(loadBalancer={"prot": 80}), "vllm-nginx:loadBalancer.prot", "unknown key"),
    (raw(backend="tpu"), "vllm-nginx:backend", "'gpu' or 'cpu'"),
    (raw(loadBalancer={"policy": "fastest"}), "vllm-nginx:loadBalancer.policy", "least_conn"),
    (
        raw(image={"prebuilt": "a:b", "build": {"context": "."}}),
        "vllm-nginx:image",
        "only one",
    ),
    (raw(hfCache={"hostPath": "relative/dir"}), "vllm-nginx:hfCache.hostPath", "absolute path"),
    (
        raw(loadBalancer={"failWindowSeconds": 60}),
        "vllm-nginx:loadBalancer.failWindowSeconds",
        "less than or equal to 15",
    ),
    (raw(gpus="[[0], [1]"), "vllm-nginx:gpus", "not valid JSON"),
    (
        raw(rollout={"canarySeconds": -1}),
        "vllm-nginx:rollout.canarySeconds",
        "greater than or equal to 0",
    ),
    (
        raw(rollout={"canaryMaxTtftRatio": 0.9}),
        "vllm-nginx:rollout.canaryMaxTtftRatio",
        "greater than or equal to 1",
    ),
    (
        raw(rollout={"canaryMaxErrorRateIncrease": 2}),
        "vllm-nginx:rollout.canaryMaxErrorRateIncrease",
        "less than or equal to 1",
    ),
    (
        raw(rollout={"canaryWithoutTraffic": "skip"}),
        "vllm-nginx:rollout.canaryWithoutTraffic",
        "'proceed' or 'wait'",
    ),
]


@pytest.mark.parametrize(("config", "key", "rule"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_input_names_key_and_rule(config: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    message = str(caught.value)
    assert f"config key '{key}" in message, message
    assert rule in message, message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(replicas=0, basePort=0, modle="x"))
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid stack config:"
    assert len(lines) == 4, lines


def test_secret_values_never_echoed() -> None:
    token = "hf_SECRET value;"
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(hfToken=token, replicas=0))
    assert "hfToken" in str(caught.value)
    assert "SECRET" not in str(caught.value)
    settings = parse_settings(raw(hfToken="hf_abc", apiKey="key123"))
    assert "hf_abc" not in repr(settings)
    assert "key123" not in repr(settings)
    assert settings.hf_token is not None
    assert settings.hf_token.get_secret_value() == "hf_abc"


def test_plain_text_token_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        require_secret({"hfToken": "hf_abc", "apiKey": "k"}, secret={"apiKey"})
    assert "config key 'vllm-nginx:hfToken': must be set with `pulumi config set --secret" in str(
        caught.value
    )
    assert "hf_abc" not in str(caught.value)
    require_secret({"hfToken": "hf_abc"}, secret={"hfToken"})


def test_explicit_gpu_groups_for_tensor_parallelism() -> None:
    settings = parse_settings(raw(replicas=2, tensorParallelSize=2, gpus=[[0, 2], [1, 3]]))
    assert tuple(p.gpus for p in settings.placements()) == ((0, 2), (1, 3))


def test_fewer_gpu_groups_than_replicas_beside_monitoring_is_a_problem_not_a_crash() -> None:
    # The monitoring rules place every replica; a short 'gpus' ended in IndexError.
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(replicas=2, gpus=[[0]], monitoring={"enabled": True}))
    assert [(p.key, p.rule) for p in caught.value.problems] == [
        ("vllm-nginx:gpus", "lists 1 replicas but 'replicas' is 2"),
        (
            "vllm-nginx:grafanaPassword",
            "is required with 'monitoring.enabled' true "
            "(`pulumi config set --secret grafanaPassword`)",
        ),
    ]


def test_cpu_backend_has_no_gpus() -> None:
    settings = parse_settings(raw(backend="cpu", image={"prebuilt": "vllm-cpu:local"}))
    assert tuple(p.gpus for p in settings.placements()) == ((), ())
    with pytest.raises(ConfigError, match="'vllm-nginx:gpus': must not be set with 'backend' cpu"):
        parse_settings(raw(backend="cpu", image={"prebuilt": "x:y"}, gpus=[[0], [1]]))


def test_one_loader_reports_plain_secrets_with_every_other_problem() -> None:
    # What program.load_settings (pulumi up) and components.cli.check both call.
    with pytest.raises(ConfigError) as caught:
        settings_from_config(raw(hfToken="hf_abc", apiKey="k", replicas=0), secret={"apiKey"})
    assert caught.value.problems == (
        Problem(
            "vllm-nginx:hfToken",
            "must be set with `pulumi config set --secret hfToken ...` "
            "(it is stored in plain text)",
        ),
        Problem("vllm-nginx:replicas", "Input should be greater than or equal to 1"),
    )
    assert "hf_abc" not in str(caught.value)
    settings = settings_from_config(raw(hfToken="hf_abc"), secret={"hfToken"})
    assert settings.hf_token is not None


def test_dotted_key_hints_at_nesting() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_config({"model": "m", "loadBalancer.port": "9000"}, secret=set())
    (problem,) = caught.value.problems
    assert problem.key == "vllm-nginx:loadBalancer.port"
    assert "written as YAML under `vllm-nginx:loadBalancer:`" in problem.rule
    assert "`pulumi config set --path 'loadBalancer.port' <value>`" in problem.rule


def test_bad_json_structure_does_not_also_report_required() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_config({"model": "m", "loadBalancer": "{port: 1"}, secret=set())
    assert [p.key for p in caught.value.problems] == ["vllm-nginx:loadBalancer"]


def test_options_that_only_begin_like_a_managed_flag_pass() -> None:
    args = [
        "--max-model-len", "-1",  # auto-fit: a value, not an option
        "--config-format", "auto",  # longer than --config: another option
        "--ssl-ca-certs", "/ca.pem",
        "-O3",
        "--gpu-memory-utilization=0.9",
    ]  # fmt: skip
    assert parse_settings(raw(extraArgs=args)).extra_args == tuple(args)


def test_stop_grace_must_cover_vllms_shutdown_timeout() -> None:
    settings = parse_settings(raw())
    assert (settings.shutdown_timeout_seconds, settings.stop_grace_seconds) == (60, 90)
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(shutdownTimeoutSeconds=120))
    (problem,) = caught.value.problems
    assert problem.key == "vllm-nginx:stopGraceSeconds"
    assert "is 90 but must be at least 'shutdownTimeoutSeconds' (120) + 10 = 130" in problem.rule
    assert parse_settings(raw(shutdownTimeoutSeconds=120, stopGraceSeconds=130))
    # 0 is vLLM's own default: abort at once, nothing to cover.
    assert parse_settings(raw(shutdownTimeoutSeconds=0, stopGraceSeconds=0))
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(shutdownTimeoutSeconds=3600))
    assert caught.value.problems[0].key == "vllm-nginx:shutdownTimeoutSeconds"


# The adversarial stack files of issue 8: each refused with the key as written and the rule.
HOLES = [
    # Secrets by the side door.
    (raw(extraEnv={"HF_TOKEN": "hf_x"}), "vllm-nginx:extraEnv", "must not set HF_TOKEN"),
    (raw(extraEnv={"VLLM_API_KEY": "k"}), "vllm-nginx:extraEnv", "pulumi config set --secret"),
    (raw(extraEnv={"hugging_face_hub_token": "x"}), "vllm-nginx:extraEnv", "must not set"),
    (raw(extraArgs=["--api-key", "k"]), "vllm-nginx:extraArgs", "must not set --api-key"),
    (raw(extraArgs=["--api-key=k"]), "vllm-nginx:extraArgs", "must not set --api-key"),
    # Flags and variables the deployment manages.
    (raw(extraArgs=["--port", "9000"]), "vllm-nginx:extraArgs", "must not set --port"),
    (raw(extraArgs=["--host=::"]), "vllm-nginx:extraArgs", "must not set --host"),
    (raw(extraArgs=["--served-model-name", "x"]), "vllm-nginx:extraArgs", "servedModelName"),
    (raw(extraArgs=["--model", "x"]), "vllm-nginx:extraArgs", "must not set --model"),
    (raw(extraArgs=["--tensor_parallel_size", "2"]), "vllm-nginx:extraArgs", "tensorParallel"),
    (raw(extraArgs=["-tp", "2"]), "vllm-nginx:extraArgs", "must not set -tp"),
    (raw(extraArgs=["-tp=2"]), "vllm-nginx:extraArgs", "must not set -tp"),
    # Abbreviations vLLM's argparse (allow_abbrev) takes for a managed flag.
    (raw(extraArgs=["--served", "x"]), "vllm-nginx:extraArgs", "abbreviation of --served-model"),
    (raw(extraArgs=["--tensor-parallel", "2"]), "vllm-nginx:extraArgs", "'tensorParallelSize'"),
    (raw(extraArgs=["--tensor_par=2"]), "vllm-nginx:extraArgs", "must not set --tensor_par"),
    (raw(extraArgs=["--api-k", "k"]), "vllm-nginx:extraArgs", "set 'apiKey'"),
    (raw(extraArgs=["--shutdown", "5"]), "vllm-nginx:extraArgs", "'shutdownTimeoutSeconds'"),
    (raw(extraArgs=["--mod", "x"]), "vllm-nginx:extraArgs", "abbreviation of --model"),
    (raw(extraArgs=["--po", "1"]), "vllm-nginx:extraArgs", "abbreviation of --port"),
    (raw(extraArgs=["-t", "2"]), "vllm-nginx:extraArgs", "abbreviation of -tp"),
    (raw(extraArgs=["-as", "2"]), "vllm-nginx:extraArgs", "abbreviation of -asc"),
    (raw(extraArgs=["--h", "x"]), "vllm-nginx:extraArgs", "--host or --headless"),
    # Flags that break the deployment, each with its reason.
    (raw(extraArgs=["--shutdown-timeout", "5"]), "vllm-nginx:extraArgs", "stopGraceSeconds"),
    (raw(extraArgs=["--config", "c.yaml"]), "vllm-nginx:extraArgs", "a config file could set"),
    (raw(extraArgs=["--uds", "/tmp/s"]), "vllm-nginx:extraArgs", "TCP port 8000"),
    (raw(extraArgs=["--grpc"]), "vllm-nginx:extraArgs", "serves gRPC"),
    (raw(extraArgs=["--headless"]), "vllm-nginx:extraArgs", "never answer /health"),
    (raw(extraArgs=["--api-server-count", "2"]), "vllm-nginx:extraArgs", "one API server"),
    (raw(extraArgs=["-asc", "2"]), "vllm-nginx:extraArgs", "one API server"),
    (raw(extraArgs=["--ssl-keyfile", "k"]), "vllm-nginx:extraArgs", "'loadBalancer.tls'"),
    (raw(extraArgs=["--ssl_certfile=c"]), "vllm-nginx:extraArgs", "plain HTTP"),
    (raw(extraEnv={"VLLM_ENGINE_READY_TIMEOUT_S": "60"}), "vllm-nginx:extraEnv", "readyTimeout"),
    (raw(extraEnv={"HF_HUB_OFFLINE": "0"}), "vllm-nginx:extraEnv", "must not set HF_HUB_OFFLINE"),
    (raw(extraEnv={"VLLM_CPU_OMP_THREADS_BIND": "0-3"}), "vllm-nginx:extraEnv", "cpuSets"),
    (raw(extraEnv={"https_proxy": "http://p:1"}), "vllm-nginx:extraEnv", "proxy.https"),
    # Values Docker or nginx would refuse later.
    (raw(networkName="host"), "vllm-nginx:networkName", "Docker's own networks"),
    (raw(networkName="bridge"), "vllm-nginx:networkName", "Docker's own networks"),
    (raw(networkName="none"), "vllm-nginx:networkName", "Docker's own networks"),
    (raw(hfCache={"hostPath": "/"}), "vllm-nginx:hfCache.hostPath", "system directory"),
    (raw(hfCache={"hostPath": "/etc/hf"}), "vllm-nginx:hfCache.hostPath", "system directory"),
    (raw(hfCache={"hostPath": "/var/lib/docker"}), "vllm-nginx:hfCache.hostPath", "system"),
    (raw(hfCache={"hostPath": "/data/hf:ro"}), "vllm-nginx:hfCache.hostPath", "':'"),
    (raw(hfCache={"hostPath": "/data/../etc"}), "vllm-nginx:hfCache.hostPath", "'..'"),
    (raw(healthCheck={"intervalSeconds": 10**9}), "vllm-nginx:healthCheck.intervalSeconds", "less"),
    (raw(readyTimeoutSeconds=10**8), "vllm-nginx:readyTimeoutSeconds", "less than or equal"),
    (raw(loadBalancer={"connectTimeoutSeconds": 300}), "vllm-nginx:loadBalancer.connect", "75"),
    (raw(loadBalancer={"maxBodySizeMb": 10**7}), "vllm-nginx:loadBalancer.maxBodySizeMb", "less"),
    (raw(loadBalancer={"workerConnections": 10**7}), "vllm-nginx:loadBalancer.worker", "65535"),
    (raw(loadBalancer={"keepaliveConnections": 10**6}), "vllm-nginx:loadBalancer.keep", "4096"),
    (raw(image={"prebuilt": "vllm/vllm-openai:"}), "vllm-nginx:image.prebuilt", "image reference"),
    (raw(image={"prebuilt": "vllm/vllm-openai:a:b"}), "vllm-nginx:image.prebuilt", "reference"),
    (raw(image={"prebuilt": "vLLM/Openai:1"}), "vllm-nginx:image.prebuilt", "lowercase name"),
    (raw(loadBalancer={"image": "nginx::1"}), "vllm-nginx:loadBalancer.image", "reference"),
    (raw(image={"prebuilt": "x@sha256:abc"}), "vllm-nginx:image.prebuilt", "reference"),
    (
        raw(image={"build": {"context": "/src", "args": {"1BAD": "x"}}}),
        "vllm-nginx:image.build.args.1BAD",
        "build-arg name",
    ),
    # Type looseness.
    (raw(loadBalancer={"port": True}), "vllm-nginx:loadBalancer.port", "not true/false"),
    (raw(healthCheck={"retries": False}), "vllm-nginx:healthCheck.retries", "not true/false"),
    (raw(base_port=9000), "vllm-nginx:base_port", "did you mean 'basePort'"),
    (raw(shmSizeMb=64), "vllm-nginx:shmSizeMb", "size /dev/shm on the host"),
    (raw(loadBalancer={"baseImage": "nginx:1"}), "vllm-nginx:loadBalancer.baseImage", "is now"),
    (
        raw(loadBalancer={"bind_address": "1.2.3.4"}),
        "vllm-nginx:loadBalancer.bind_address",
        "keys are camelCase: did you mean 'loadBalancer.bindAddress'?",
    ),
    # Tracebacks after something was declared, before.
    (raw(namePrefix="v" * 62, replicas=11), "vllm-nginx:namePrefix", "at most 63"),
    (raw(loadBalancer={"exposePaths": ["/health"]}), "vllm-nginx:loadBalancer.expose", "/health"),
    (raw(loadBalancer={"exposePaths": ["/v1/models"]}), "vllm-nginx:loadBalancer.expose", "/v1/"),
    # TLS.
    (raw(loadBalancer={"tls": True}), "vllm-nginx:tlsCertificate", "is required with"),
    (raw(tlsKey="not a key"), "vllm-nginx:tlsKey", "unencrypted PEM private key"),
    (raw(tlsCertificate="-----BEGIN CERTIFICATE-----\nx"), "vllm-nginx:tlsCertificate", "PEM"),
]


@pytest.mark.parametrize(("config", "key", "rule"), HOLES, ids=[h[1] + ":" + h[2] for h in HOLES])
def test_holes_are_closed(config: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_config(config, secret={"tlsKey"} & set(config))
    message = str(caught.value)
    assert f"config key '{key}" in message, message
    assert rule in message, message
    for value in ("hf_x", "not a key"):
        assert value not in message


def test_name_prefix_may_end_with_a_dash() -> None:
    settings = parse_settings(raw(namePrefix="vllm-"))
    assert settings.replica_names() == ("vllm-0", "vllm-1")


def test_a_type_error_does_not_hide_the_rules_between_other_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            raw(
                replicas=3,
                gpus=[[0], [1]],  # cross-key: 2 groups for 3 replicas
                loadBalancer={"port": 8082, "policy": "fastest"},  # type error in the same key
                healthCheck={"retries": "many"},  # plain type error
            )
        )
    keys = {p.key for p in caught.value.problems}
    assert keys == {
        "vllm-nginx:loadBalancer.policy",
        "vllm-nginx:healthCheck.retries",
        "vllm-nginx:gpus",
    }, keys


def test_a_rule_on_an_invalid_key_is_not_reported_against_its_default() -> None:
    # replicas is invalid: "gpus lists 2 but replicas is 2 (the default)" would be noise.
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(replicas=0, gpus=[[0], [1], [2]]))
    assert [p.key for p in caught.value.problems] == ["vllm-nginx:replicas"]


def test_a_sealed_tls_key_leaves_the_match_to_pulumi_up(tmp_path: Path) -> None:
    """The check seals encrypted values (it holds stand-ins); `pulumi up` seals nothing."""
    certificate = Path(make_test_pki(tmp_path / "a").server.certificate).read_text()
    other_key = Path(make_test_pki(tmp_path / "b").server.key).read_text()
    config = raw(loadBalancer={"tls": True}, tlsCertificate=certificate, tlsKey=other_key)
    loaded = load_config(config, {"tlsKey"}, sealed={"tlsKey"})
    assert loaded.problems == ()
    assert loaded.settings is not None
    assert [str(p) for p in loaded.unverified] == [
        "config key 'vllm-nginx:tlsKey': is encrypted (secure:), so whether it is the private "
        "key of 'tlsCertificate' cannot be verified offline; `pulumi up` decrypts it and checks"
    ]
    with pytest.raises(ConfigError) as caught:
        settings_from_config(config, {"tlsKey"})
    assert [str(p) for p in caught.value.problems] == [
        "config key 'vllm-nginx:tlsKey': is not the private key of 'tlsCertificate'"
    ]


TYPO = "unknown key (a typo?): did you mean"
CASE = "unknown key; keys are camelCase: did you mean"
HINTS = [
    (raw(replcas=3), "replcas", f"{TYPO} 'replicas'?"),
    (raw(loadBalancer={"prot": 80}), "loadBalancer.prot", f"{TYPO} 'loadBalancer.port'?"),
    (
        raw(loadBalancer={"bindadress": "0.0.0.0"}),
        "loadBalancer.bindadress",
        f"{TYPO} 'loadBalancer.bindAddress'?",
    ),
    (
        raw(monitoring={"prometheus": {"retentionDay": 3}}),
        "monitoring.prometheus.retentionDay",
        f"{TYPO} 'monitoring.prometheus.retentionDays'?",
    ),
    # Case and snake_case: the camelCase hint, also where `to_camel` alone misses it.
    (raw(base_port=9000), "base_port", f"{CASE} 'basePort'?"),
    (raw(TensorParallelSize=1), "TensorParallelSize", f"{CASE} 'tensorParallelSize'?"),
    (raw(loadBalancer={"BindAddress": "0.0.0.0"}), "loadBalancer.BindAddress", CASE),
    # Nothing close: the plain message, no guess.
    (raw(quantization="awq"), "quantization", "unknown key (a typo?); see the config reference"),
    # Close in letters, wrong in meaning (a vLLM argument, not 'model'): below the cutoff.
    (raw(maxModelLen=4096), "maxModelLen", "unknown key (a typo?); see the config reference"),
]


@pytest.mark.parametrize(("config", "key", "rule"), HINTS, ids=[h[1] for h in HINTS])
def test_unknown_key_gets_the_closest_valid_key(
    config: dict[str, Any], key: str, rule: str
) -> None:
    """One line per misspelt key, the suggestion as a full path the way the user writes it."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    about = [str(p) for p in caught.value.problems if p.key == f"vllm-nginx:{key}"]
    assert len(about) == 1, caught.value.problems
    assert about[0].startswith(f"config key 'vllm-nginx:{key}': {rule}"), about[0]


def test_a_misspelt_key_gets_no_second_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw(replcas=3, loadBalancer={"prot": 80}))
    assert [str(p) for p in caught.value.problems] == [
        f"config key 'vllm-nginx:loadBalancer.prot': {TYPO} 'loadBalancer.port'?",
        f"config key 'vllm-nginx:replcas': {TYPO} 'replicas'?",
    ]


def test_a_sealed_certificate_leaves_the_match_to_pulumi_up(tmp_path: Path) -> None:
    """Sealed, the certificate's value is a stand-in; `pulumi up` has the real one and checks it."""
    certificate = Path(make_test_pki(tmp_path / "a").server.certificate).read_text()
    other_key = Path(make_test_pki(tmp_path / "b").server.key).read_text()
    config = raw(loadBalancer={"tls": True}, tlsCertificate=certificate, tlsKey=other_key)
    secret = {"tlsKey", "tlsCertificate"}
    loaded = load_config(config, secret, sealed=secret)
    assert loaded.problems == ()
    assert [str(p) for p in loaded.unverified] == [
        "config key 'vllm-nginx:tlsKey': is encrypted (secure:), as is 'tlsCertificate', so "
        "whether it is the private key of 'tlsCertificate' cannot be verified offline; "
        "`pulumi up` decrypts them and checks"
    ]
    with pytest.raises(ConfigError) as caught:
        settings_from_config(config, secret)
    assert [str(p) for p in caught.value.problems] == [
        "config key 'vllm-nginx:tlsKey': is not the private key of 'tlsCertificate'"
    ]
    not_pem = raw(loadBalancer={"tls": True}, tlsCertificate="not a certificate", tlsKey=other_key)
    with pytest.raises(ConfigError) as caught:
        settings_from_config(not_pem, secret)
    assert [p.key for p in caught.value.problems] == ["vllm-nginx:tlsCertificate"]
    assert "must be a PEM certificate" in str(caught.value)


def test_the_stand_ins_for_certificate_and_key_never_match() -> None:
    """Two stand-ins that matched would pass the pair silently, without the unverified note."""
    from pydantic import SecretStr

    from components.config.stack_file import PEM_STAND_INS, _placeholder_pem
    from components.config.values import key_matches_certificate

    pem = _placeholder_pem()
    key = SecretStr(pem[PEM_STAND_INS["tlsKey"]])
    certificate = SecretStr(pem[PEM_STAND_INS["tlsCertificate"]])
    assert not key_matches_certificate(key, certificate)
