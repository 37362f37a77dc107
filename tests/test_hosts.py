"""Several hosts in one stack: the rules on `hosts`, and what is declared per host.

Without an engine: settings and plan in plain Python, declarations under
Pulumi's mocks. The two-host run on real engines is tests/test_e2e_multihost.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.cli.check import main as check_main
from components.config.loading import parse_settings, settings_from_config
from components.config.problems import ConfigError
from components.deployment import serving
from components.plan.build import build_plan
from components.plan.specs import SPEC_ENV, DownloadSpec, ReadinessSpec, decode
from tests.support.nginx import make_test_pki
from tests.support.pulumi_capture import Declared, Run, run_program

ROOT = Path(__file__).resolve().parent.parent
NS = "vllm-nginx"
PROVIDER = "pulumi:providers:docker"


def host(name: str, address: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "dockerHost": f"ssh://ops@{name}", "address": address, **more}


TWO = [host("gpu-a", "10.0.0.11", gpus=[[0], [1]]), host("gpu-b", "10.0.0.12", gpus=[[0], [1]])]


def raw(**values: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"model": "org/model", "hosts": TWO}
    config.update(values)
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in config.items()}


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(**values))
    return [str(p) for p in err.value.problems]


def test_two_hosts_place_replicas_on_their_own_gpus() -> None:
    settings = parse_settings(raw(loadBalancer={"host": "gpu-b"}))
    placed = [
        (p.host.name if p.host else None, p.name, p.port, p.gpus) for p in settings.placements()
    ]
    assert placed == [
        ("gpu-a", "vllm-gpu-a-0", 8081, (0,)),
        ("gpu-a", "vllm-gpu-a-1", 8082, (1,)),
        ("gpu-b", "vllm-gpu-b-0", 8081, (0,)),
        ("gpu-b", "vllm-gpu-b-1", 8082, (1,)),
    ]
    assert settings.load_balancer_host is not None
    assert settings.load_balancer_host.name == "gpu-b"


def test_each_problem_named_by_its_key_all_at_once() -> None:
    hosts = [
        host("a", "10.0.0.1", gpus=[[0], [0]]),
        host("a", "10.0.0.2", replicas=1),
        host("c", "10.0.0.1", replicas=1),
        host("d", "gpu-d.lan", replicas=3, gpus=[[0], [1]]),
    ]
    found = problems(hosts=hosts, loadBalancer={"host": "z"}, replicas=4)
    assert found == [
        "config key 'vllm-nginx:replicas': must not be set with 'hosts': each host says its "
        "own ('hosts[i].replicas')",
        "config key 'vllm-nginx:hosts[0].gpus[1]': uses GPU 0, which another replica on host a "
        "uses too",
        "config key 'vllm-nginx:hosts[1].name': a is also the name of hosts[0]",
        "config key 'vllm-nginx:hosts[1].dockerHost': is the engine of hosts[0] too: one host "
        "per engine",
        "config key 'vllm-nginx:hosts[3].bindAddress': is required when 'address' is a name: "
        "Docker publishes ports on an IP address (the host's address on the network the load "
        "balancer uses)",
        "config key 'vllm-nginx:hosts[3].gpus': lists 2 replicas but 'hosts[3].replicas' is 3",
        "config key 'vllm-nginx:loadBalancer.host': names no host in 'hosts' (they are: a, c, d)",
        "config key 'vllm-nginx:hosts[2].address': 10.0.0.1 with ports 8081-8081 reaches a port "
        "of host a too (the same address:port twice); give one of them another 'basePort'",
    ]


def test_value_rules_name_the_nested_key() -> None:
    found = problems(
        hosts=[
            host("A_b", "10.0.0.1", replicas=1),
            host("b", "not an address", replicas=0, dockerHost="http://b"),
        ]
    )
    assert found == [
        "config key 'vllm-nginx:hosts[0].name': must be a DNS-safe name: 1-63 lowercase "
        "letters, digits or '-', starting and ending with a letter or digit",
        "config key 'vllm-nginx:hosts[1].dockerHost': must be a Docker endpoint: "
        "unix:///path/to/docker.sock (this machine), ssh://user@host, or tcp://host:2376 "
        "(with 'tls')",
        "config key 'vllm-nginx:hosts[1].address': must be an IP address or a DNS host name",
        "config key 'vllm-nginx:hosts[1].replicas': Input should be greater than or equal to 1",
    ]
    assert problems(hosts=[]) == [
        "config key 'vllm-nginx:hosts': must list at least one host (or be left out: one engine)"
    ]


def test_ports_replica_counts_and_the_lb_port() -> None:
    found = problems(
        hosts=[host("a", "10.0.0.1", replicas=2, basePort=65535), host("b", "10.0.0.2")],
        loadBalancer={"host": "b", "port": 8081, "bindAddress": "0.0.0.0"},
    )
    assert found == [
        "config key 'vllm-nginx:hosts[1].replicas': is required: say how many replicas run on "
        "this host ('replicas', or one entry per replica in 'gpus' / 'cpuSets')",
        "config key 'vllm-nginx:hosts[0].basePort': 65535 + 2 replicas on host a passes port 65535",
    ]
    assert problems(hosts=[host("a", "10.0.0.1", replicas=2)], loadBalancer={"port": 8082}) == [
        "config key 'vllm-nginx:loadBalancer.port': 8082 collides with the replica ports "
        "8081-8082 of host a, where the load balancer runs"
    ]
    # The same address on two hosts is fine when their ports differ.
    parse_settings(
        raw(
            hosts=[
                host("a", "10.0.0.1", replicas=2),
                host("b", "10.0.0.1", replicas=2, basePort=9001),
            ]
        )
    )


def test_single_host_keys_are_refused_with_hosts() -> None:
    found = problems(gpus=[[0]], bindAddress="0.0.0.0", publicHost="x")
    rule = "must not be set with 'hosts': each host says its own"
    assert found == [
        f"config key 'vllm-nginx:gpus': {rule} ('hosts[i].gpus')",
        f"config key 'vllm-nginx:bindAddress': {rule} ('hosts[i].bindAddress')",
        f"config key 'vllm-nginx:publicHost': {rule} ('hosts[i].address')",
    ]
    with pytest.raises(
        ConfigError, match=r"'vllm-nginx:loadBalancer\.host': is set but 'hosts' is not"
    ):
        parse_settings({"model": "m", "loadBalancer": json.dumps({"host": "a"})})


def test_cpu_hosts_pin_their_own_cores() -> None:
    settings = parse_settings(
        raw(
            backend="cpu",
            hosts=[
                host("a", "10.0.0.1", cpuSets=["0-3", "4-7"]),
                host("b", "10.0.0.2", replicas=1),
            ],
            cpu={"coresPerReplica": 2},
        )
    )
    assert [p.cores for p in settings.placements()] == [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1)]
    assert problems(backend="cpu", hosts=[host("a", "10.0.0.1", cpuSets=["0-3", "3-5"])]) == [
        "config key 'vllm-nginx:hosts[0].cpuSets[1]': uses CPU 3, which another replica on "
        "host a uses too"
    ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a certificate with its key: TLS material as a stack would hold it."""
    made = make_test_pki(tmp_path_factory.mktemp("pki"))
    return {
        "caMaterial": made.ca_certificate.read_text(),
        "certMaterial": Path(made.server.certificate).read_text(),
        "keyMaterial": Path(made.server.key).read_text(),
    }


def _tls_host(pki: dict[str, str]) -> tuple[dict[str, Any], str]:
    return (
        host("tls", "10.0.0.3", replicas=1, dockerHost="tcp://10.0.0.3:2376", tls=pki),
        pki["keyMaterial"],
    )


def test_tls_key_must_be_a_secret_and_is_never_echoed(pki: dict[str, str]) -> None:
    tls_host, key = _tls_host(pki)
    config = raw(hosts=[tls_host])
    with pytest.raises(ConfigError) as err:
        settings_from_config(config, set())
    assert [str(p) for p in err.value.problems] == [
        "config key 'vllm-nginx:hosts[0].tls.keyMaterial': must be set with `pulumi config set "
        "--secret --path 'hosts[0].tls.keyMaterial' ...` (it is stored in plain text)"
    ]
    assert key not in str(err.value)
    settings_from_config(config, {"hosts"})
    no_tls = host("t", "10.0.0.3", replicas=1, dockerHost="tcp://10.0.0.3:2376")
    assert problems(hosts=[no_tls]) == [
        "config key 'vllm-nginx:hosts[0].tls': is required with a tcp:// 'dockerHost': an "
        "engine's API without TLS gives root on that machine to anyone who reaches the port"
    ]


def test_plan_routes_by_name_on_the_lb_host_and_by_address_elsewhere() -> None:
    plan = build_plan(parse_settings(raw()), project_dir=ROOT)
    assert [str(r.upstream) for r in plan.replicas] == [
        "vllm-gpu-a-0:8000",
        "vllm-gpu-a-1:8000",
        "10.0.0.12:8081",
        "10.0.0.12:8082",
    ]
    assert "server 10.0.0.12:8082 max_fails" in plan.load_balancer.config
    assert [r.bind_address for r in plan.replicas] == ["10.0.0.11"] * 2 + ["10.0.0.12"] * 2
    assert plan.load_balancer.url == "http://10.0.0.11:8000"
    assert [h.engine_env for h in plan.hosts] == [
        {"DOCKER_HOST": "ssh://ops@gpu-a"},
        {"DOCKER_HOST": "ssh://ops@gpu-b"},
    ]


def _deploy(**values: Any) -> Run:
    config = {f"{NS}:{k}": v for k, v in raw(**values).items()}
    return run_program(config)


def _provider_name(run: Run, declared: Declared) -> str | None:
    if not declared.provider:
        return None
    return run.by_urn(declared.provider.rsplit("::", 1)[0]).name


def test_each_host_its_provider_network_cache_download_replicas_and_check() -> None:
    run = _deploy()
    providers = {d.name: d.inputs for d in run.of_type(PROVIDER)}
    assert providers == {
        "vllm-gpu-a-docker": {"host": "ssh://ops@gpu-a"},
        "vllm-gpu-b-docker": {"host": "ssh://ops@gpu-b"},
    }
    docker_resources = [d for d in run.declared if d.type.startswith("docker:index/")]
    by_host = {d.name: _provider_name(run, d) for d in docker_resources}
    assert by_host == {
        "vllm-gpu-a-network": "vllm-gpu-a-docker",
        "vllm-gpu-a-hf-cache": "vllm-gpu-a-docker",
        "vllm-gpu-a-compile-cache": "vllm-gpu-a-docker",
        "vllm-gpu-a-vllm-image": "vllm-gpu-a-docker",
        "vllm-vllm-gpu-a-0": "vllm-gpu-a-docker",
        "vllm-vllm-gpu-a-1": "vllm-gpu-a-docker",
        "vllm-gpu-b-network": "vllm-gpu-b-docker",
        "vllm-gpu-b-hf-cache": "vllm-gpu-b-docker",
        "vllm-gpu-b-compile-cache": "vllm-gpu-b-docker",
        "vllm-gpu-b-vllm-image": "vllm-gpu-b-docker",
        "vllm-vllm-gpu-b-0": "vllm-gpu-b-docker",
        "vllm-vllm-gpu-b-1": "vllm-gpu-b-docker",
        "vllm-nginx-image": "vllm-gpu-a-docker",
        "vllm-lb": "vllm-gpu-a-docker",
    }
    deps = {d.name: {run.by_urn(u).name for u in d.dependencies} for d in run.declared}
    # Each host's download waits for its own image, cache and fit check only: they
    # run in parallel.
    assert deps["vllm-gpu-b-fit"] == {"vllm-gpu-b-hf-cache", "vllm-gpu-b-vllm-image"}
    assert deps["vllm-gpu-b-download"] == {
        "vllm-gpu-b-hf-cache",
        "vllm-gpu-b-vllm-image",
        "vllm-gpu-b-fit",
    }
    assert "vllm-gpu-b-download" in deps["vllm-vllm-gpu-b-0"]
    assert "vllm-gpu-a-download" not in deps["vllm-vllm-gpu-b-0"]
    assert {"vllm-gpu-a-replicas-ready", "vllm-gpu-b-replicas-ready"} <= deps["vllm-lb"]
    commands = {d.name: d.inputs for d in run.of_type("command:local:Command")}
    for name in ("vllm-gpu-b-download", "vllm-gpu-b-replicas-ready"):
        assert commands[name]["environment"]["DOCKER_HOST"] == "ssh://ops@gpu-b"
        assert set(commands[name]["environment"]) == {"DOCKER_HOST", SPEC_ENV}
    ready = decode(ReadinessSpec, commands["vllm-gpu-b-replicas-ready"]["environment"][SPEC_ENV])
    assert ready.replicas == ("vllm-gpu-b-0", "vllm-gpu-b-1")
    download = decode(DownloadSpec, commands["vllm-gpu-b-download"]["environment"][SPEC_ENV])
    assert download.image == "@@vllm-gpu-b-vllm-image.imageId@@"
    assert run.outputs["hosts"]["gpu-b"] == {
        "docker_host": "ssh://ops@gpu-b",
        "replica_names": ["vllm-gpu-b-0", "vllm-gpu-b-1"],
        "replica_urls": ["http://10.0.0.12:8081", "http://10.0.0.12:8082"],
        "load_balancer": False,
    }
    assert run.outputs["lb_url"] == "http://10.0.0.11:8000"
    # Each engine's network, caches and image moved under its Engine component, nginx
    # under the LoadBalancer, the pool's fit checks, downloads, replicas, rotations,
    # canary and readiness checks (on both engines) under its Pool: each names the
    # cluster, its parent before, as its alias.
    (cluster,) = run.of_type("vllm-nginx:index:VllmCluster")
    kinds = (":Engine", ":LoadBalancer", ":Pool")
    parts = {d.urn: d.name for d in run.declared if d.type.endswith(kinds)}
    assert sorted(parts.values()) == [
        "vllm-balancer",
        "vllm-gpu-a-engine",
        "vllm-gpu-b-engine",
        "vllm-pool",
    ]
    moved = [d for d in run.declared if d.parent in parts]
    assert len(moved) == 27 and all(d.alias_parents == [cluster.urn] for d in moved)
    in_pool = {d.name for d in moved if run.by_urn(d.parent).name == "vllm-pool"}
    assert {"vllm-vllm-gpu-a-0", "vllm-vllm-gpu-b-1", "vllm-gpu-b-replicas-ready"} <= in_pool
    assert all(d.parent in parts for d in run.declared if d.name in deps["vllm-lb"])


def test_tls_material_reaches_provider_and_steps_as_secrets(pki: dict[str, str]) -> None:
    tls_host, key = _tls_host(pki)
    config = {f"{NS}:{k}": v for k, v in raw(hosts=[tls_host]).items()}
    run = run_program(config, [f"{NS}:hosts"])
    (provider,) = run.of_type(PROVIDER)
    assert provider.inputs["keyMaterial"] == key
    assert {"caMaterial", "certMaterial", "keyMaterial"} <= set(provider.secret_inputs)
    download = run.named("vllm-tls-download")
    assert download.inputs["environment"]["VLLM_NGINX_DOCKER_KEY"] == key
    assert "environment" in download.secret_inputs
    assert download.inputs["environment"]["DOCKER_HOST"] == "tcp://10.0.0.3:2376"
    assert key not in json.dumps(run.outputs)


def test_the_example_two_host_stack_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["--stack", "twohost"]) == 0
    out = capsys.readouterr().out
    assert "gpu-a" in out and "gpu-b" in out


def test_key_hints_reach_into_host_entries() -> None:
    """A snake_case or dotted key in a list entry gets the hint a top-level one gets."""
    second = {
        "name": "gpu-b",
        "docker_host": "ssh://ops@gpu-b",
        "address": "10.0.0.12",
        "base_port": 9000,
        "gpus": [[0]],
    }
    first = {**TWO[0], "tls": {"cert_path": "/certs"}, "tls.certPath": "/certs"}
    found = problems(hosts=[first, second])
    camel = "unknown key; keys are camelCase: did you mean"
    for line in (
        f"config key 'vllm-nginx:hosts[1].docker_host': {camel} 'hosts[1].dockerHost'?",
        f"config key 'vllm-nginx:hosts[1].base_port': {camel} 'hosts[1].basePort'?",
        f"config key 'vllm-nginx:hosts[0].tls.cert_path': {camel} 'hosts[0].tls.certPath'?",
        "config key 'vllm-nginx:hosts[0].tls.certPath': unknown key; nested keys are written "
        "as YAML: `tls:` in 'hosts[0]', with `certPath: ...` indented below it, or set with "
        "`pulumi config set --path 'hosts[0].tls.certPath' <value>` (--path makes the dot "
        "mean nesting)",
    ):
        assert line in found, found
    assert "config key 'vllm-nginx:hosts[1].dockerHost': is required" in found


def test_misspelt_keys_in_host_entries_get_the_closest_key() -> None:
    second = {**TWO[1], "adress": TWO[1]["address"], "tls": {"certPth": "/certs"}}
    del second["address"]
    first = {**TWO[0], "dockerhost": TWO[0]["dockerHost"], "replcas": 1}
    del first["dockerHost"]
    found = problems(hosts=[first, second])
    for line in (
        "config key 'vllm-nginx:hosts[0].dockerhost': unknown key; keys are camelCase: "
        "did you mean 'hosts[0].dockerHost'?",
        "config key 'vllm-nginx:hosts[0].replcas': unknown key (a typo?): "
        "did you mean 'hosts[0].replicas'?",
        "config key 'vllm-nginx:hosts[1].adress': unknown key (a typo?): "
        "did you mean 'hosts[1].address'?",
        "config key 'vllm-nginx:hosts[1].tls.certPth': unknown key (a typo?): "
        "did you mean 'hosts[1].tls.certPath'?",
    ):
        assert line in found, found


MONITORED = {"monitoring": {"enabled": True}, "grafanaPassword": "grafana-pw-123"}


def test_monitoring_scrapes_replicas_on_other_hosts_where_nginx_reaches_them() -> None:
    plan = build_plan(parse_settings(raw(**MONITORED)), project_dir=ROOT).monitoring
    assert plan is not None
    config = yaml.safe_load(plan.prometheus.uploads[0].content)
    vllm = next(job for job in config["scrape_configs"] if job["job_name"] == "vllm")
    assert [(c["targets"], c["labels"]["replica"]) for c in vllm["static_configs"]] == [
        (["vllm-gpu-a-0:8000"], "vllm-gpu-a-0"),
        (["vllm-gpu-a-1:8000"], "vllm-gpu-a-1"),
        (["10.0.0.12:8081"], "vllm-gpu-b-0"),
        (["10.0.0.12:8082"], "vllm-gpu-b-1"),
    ]
    assert [w for w in plan.lb_exporter.command if w.startswith("--replica=")] == [
        "--replica=vllm-gpu-a-0:8000",
        "--replica=vllm-gpu-a-1:8000",
        "--replica=vllm-gpu-b-0=10.0.0.12:8081",
        "--replica=vllm-gpu-b-1=10.0.0.12:8082",
    ]


def test_monitoring_ports_clash_only_with_the_load_balancer_hosts_replicas() -> None:
    clash = {"enabled": True, "prometheus": {"port": 8082}}
    assert problems(grafanaPassword="pw", monitoring=clash) == [
        "config key 'vllm-nginx:monitoring.prometheus.port': 8082 is the port of replica "
        "vllm-gpu-a-1 on host gpu-a, where monitoring runs with the load balancer"
    ]
    # Host gpu-b's replicas publish 8081-8082 on their own machine: no clash there.
    moved = [{**TWO[0], "basePort": 9001}, TWO[1]]
    parse_settings(raw(grafanaPassword="pw", monitoring=clash, hosts=moved))


def test_monitoring_runs_on_the_load_balancers_engine() -> None:
    config = {f"{NS}:{k}": v for k, v in raw(**MONITORED).items()}
    run = run_program(config, [f"{NS}:grafanaPassword"])
    monitoring = [
        d for d in run.declared if d.type.startswith("docker:index/") and "monitoring" in d.name
    ]
    assert {d.name for d in monitoring} >= {
        "vllm-monitoring-prometheus",
        "vllm-monitoring-grafana",
        "vllm-monitoring-lb-exporter",
    }
    assert {_provider_name(run, d) for d in monitoring} == {"vllm-gpu-a-docker"}


def test_an_update_rolls_when_replicas_run_on_any_host(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, str]
) -> None:
    """Whether replicas already run (so an update goes in waves) is asked of each
    host's own engine; the stack's own engine holds none of them."""
    asked: list[tuple[list[str], str | None]] = []

    def running(names: list[str], environment: dict[str, str]) -> bool:
        asked.append((list(names), environment.get("DOCKER_HOST")))
        return environment.get("DOCKER_HOST") == "ssh://ops@gpu-b"

    monkeypatch.setattr(serving, "replicas_running", running)
    assert serving.deployment_running(parse_settings(raw()), None)
    assert asked == [
        (["vllm-gpu-a-0", "vllm-gpu-a-1"], "ssh://ops@gpu-a"),
        (["vllm-gpu-b-0", "vllm-gpu-b-1"], "ssh://ops@gpu-b"),
    ]
    # A host whose TLS key is a stack secret cannot be asked: assume it serves.
    tls_host, _key = _tls_host(pki)
    asked.clear()
    assert serving.deployment_running(parse_settings(raw(hosts=[tls_host])), None)
    assert asked == []


def test_steps_reach_the_load_balancers_engine_as_the_download_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rotation and config steps take their engine from `engine_client`, which
    also reads TLS material handed over as secrets (docker-py's `from_env` does not)."""
    from docker.errors import DockerException

    from components.plan.specs import SPEC_ENV, ReloadSpec, RolloutSpec, encode
    from components.steps import lb_reload as reload
    from components.steps import rollout

    def engine_client(timeout: int = 60) -> object:
        raise DockerException("asked through engine_client")

    monkeypatch.setattr(rollout, "engine_client", engine_client)
    monkeypatch.setattr(reload, "engine_client", engine_client)
    monkeypatch.setenv(reload.FILES_ENV, "{}")
    spec = RolloutSpec("lb", "r", 8000, "r:8000", 1, 1, "http://r/health", False)
    monkeypatch.setenv(SPEC_ENV, encode(spec))
    assert rollout.main(["drain"]) == 1
    # The drain a rotation declared before specs kept in state (for one release).
    assert rollout.main(["drain", "--lb", "lb", "--replica", "r", "--timeout", "1"]) == 1
    monkeypatch.setenv(SPEC_ENV, encode(ReloadSpec("lb")))
    assert reload.main() == 1
    assert capsys.readouterr().err.count("asked through engine_client") == 3
