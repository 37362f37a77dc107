"""The standby balancer's config rules and plan, on plain data (no engine).

What tests/test_standby_failover.py then runs for real: two nginx with the same
rendered config, a keepalived each, VRRP between two test hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.config.loading import parse_settings
from components.config.problems import ConfigError
from components.plan.build import build_plan
from components.plan.specs import SPEC_ENV, VerifySpec, decode
from components.plan.standby import FIRST_PRIORITY, SECOND_PRIORITY
from tests.support.pulumi_capture import run_program

ROOT = Path(__file__).resolve().parents[1]
KEY = "vllm-nginx:loadBalancer.standby"


def host(name: str, address: str) -> dict[str, Any]:
    return {"name": name, "dockerHost": f"ssh://ops@{name}", "address": address, "gpus": [[0]]}


HOSTS = [host("gpu-a", "10.0.0.11"), host("gpu-b", "10.0.0.12"), host("gpu-c", "10.0.0.13")]
STANDBY = {"hosts": ["gpu-a", "gpu-b"], "virtualAddress": "10.0.0.100/24", "interface": "ens3"}


def raw(**values: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"model": "org/model", "hosts": HOSTS}
    config.update(values)
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in config.items()}


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(**values))
    return [str(p) for p in err.value.problems]


def test_plan_two_balancers_same_nginx_config_and_vrrp() -> None:
    settings = parse_settings(raw(loadBalancer={"standby": STANDBY}))
    plan = build_plan(settings, project_dir=ROOT)
    standby = plan.standby
    assert standby is not None
    assert standby.url == "http://10.0.0.100:8000" == plan.load_balancer.url
    assert [b.host for b in standby.balancers] == ["gpu-a", "gpu-b"]
    assert [b.priority for b in standby.balancers] == [FIRST_PRIORITY, SECOND_PRIORITY]
    # One nginx.conf for both: every replica by its host's address, none by name.
    for replica in plan.replicas:
        assert replica.route is not None and replica.upstream.host.startswith("10.0.0.")
    assert "gpu-a" not in plan.load_balancer.config.split("upstream", 1)[1].split("}")[0]
    for balancer in standby.balancers:
        conf = balancer.keepalived_config
        assert "state BACKUP" in conf and "nopreempt" in conf
        assert "10.0.0.100/24 dev ens3" in conf and "interface ens3" in conf
        assert f"priority {balancer.priority}" in conf
        assert "http://127.0.0.1:8000/_vrrp/alive" in conf and "--fail" not in conf
        assert isinstance(balancer.verify.spec, VerifySpec)
        assert balancer.verify.spec.url == balancer.url != plan.load_balancer.url
    assert isinstance(plan.verify.spec, VerifySpec)
    assert plan.verify.spec.url == "http://10.0.0.100:8000"


def test_without_standby_nothing_changes() -> None:
    plan = build_plan(parse_settings(raw()), project_dir=ROOT)
    assert plan.standby is None
    assert plan.load_balancer.url == "http://10.0.0.11:8000"
    assert any(r.route is None for r in plan.replicas)


def test_every_problem_named_by_its_key() -> None:
    found = problems(
        loadBalancer={
            "standby": {
                "hosts": ["gpu-a", "gpu-a", "gpu-x"],
                "virtualAddress": "10.0.0.11/24",
                "routerId": 0,
            },
            "bindAddress": "10.0.0.11",
            "host": "gpu-c",
        }
    )
    assert any(f"'{KEY}.routerId'" in p for p in found), found
    found = problems(
        loadBalancer={
            "standby": {"hosts": ["gpu-a", "gpu-a", "gpu-x"], "virtualAddress": "10.0.0.11/24"},
            "bindAddress": "10.0.0.11",
            "host": "gpu-c",
        }
    )
    text = "\n".join(found)
    assert f"'{KEY}.hosts': lists 3 hosts" in text
    assert f"'{KEY}.hosts[1]': names gpu-a again" in text
    assert f"'{KEY}.hosts[2]': names no host" in text
    assert "'vllm-nginx:loadBalancer.host': is gpu-c; with" in text
    assert "'vllm-nginx:loadBalancer.bindAddress': is 10.0.0.11" in text
    assert f"'{KEY}.virtualAddress': is hosts[0].address" in text
    assert len(found) == 6, found


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("10.0.0.100", "with its prefix length"),
        ("fe80::1/64", "IPv4 address"),
        ("10.0.0.0/24", "network's own or broadcast"),
        ("10.0.0.255/24", "network's own or broadcast"),
        ("127.0.0.5/8", "other machines reach"),
    ],
)
def test_virtual_address_must_be_an_ipv4_interface(address: str, words: str) -> None:
    found = problems(loadBalancer={"standby": {**STANDBY, "virtualAddress": address}})
    assert len(found) == 1 and found[0].startswith(f"config key '{KEY}.virtualAddress")
    assert words in found[0]


def test_refused_with_monitoring_and_balancer_on_the_first_listed_host() -> None:
    found = problems(loadBalancer={"standby": STANDBY}, monitoring={"enabled": True})
    assert any(f"'{KEY}': cannot be used with 'monitoring.enabled' yet" in p for p in found)
    reversed_hosts = {**STANDBY, "hosts": ["gpu-b", "gpu-a"]}
    settings = parse_settings(raw(loadBalancer={"standby": reversed_hosts}))
    assert settings.load_balancer_host is not None
    assert settings.load_balancer_host.name == "gpu-b"


def test_interface_name_and_refused_without_hosts() -> None:
    found = problems(loadBalancer={"standby": {**STANDBY, "interface": "eth0/../x"}})
    assert len(found) == 1 and found[0].startswith(f"config key '{KEY}.interface")
    config = {"model": "org/model", "loadBalancer": json.dumps({"standby": STANDBY})}
    with pytest.raises(ConfigError) as err:
        parse_settings(config)
    assert [str(p) for p in err.value.problems] == [
        f"config key '{KEY}': needs 'hosts': the two balancers run on two Docker engines "
        "(docs/multi-host.md)"
    ]


def test_program_declares_second_nginx_and_keepalived_on_their_hosts() -> None:
    config = {f"vllm-nginx:{k}": v for k, v in raw(loadBalancer={"standby": STANDBY}).items()}
    run = run_program(config)
    containers = {d.name: d for d in run.of_type("docker:index/container:Container")}
    provider_of = {
        name: run.by_urn(d.provider.rsplit("::", 1)[0]).name if d.provider else None
        for name, d in containers.items()
    }
    assert provider_of["vllm-lb"] == "vllm-gpu-a-docker"
    assert provider_of["vllm-gpu-b-lb"] == "vllm-gpu-b-docker"
    first, second = containers["vllm-lb"], containers["vllm-gpu-b-lb"]
    assert first.inputs["uploads"] == second.inputs["uploads"]  # one nginx.conf for both
    for host in ("gpu-a", "gpu-b"):
        vrrp = containers[f"vllm-{host}-keepalived"]
        assert provider_of[f"vllm-{host}-keepalived"] == f"vllm-{host}-docker"
        assert vrrp.inputs["networkMode"] == "host"
        assert set(vrrp.inputs["capabilities"]["adds"]) == {"NET_ADMIN", "NET_BROADCAST", "NET_RAW"}
        assert f"router_id vllm-nginx-{host}" in vrrp.inputs["uploads"][0]["content"]
    commands = {d.name: d for d in run.of_type("command:local:Command")}
    # Each nginx gets its own reload step (its engine) and verify (its address).
    assert commands["vllm-lb-config"].inputs["environment"]["DOCKER_HOST"] == "ssh://ops@gpu-a"
    assert commands["vllm-gpu-b-lb-config"].inputs["environment"]["DOCKER_HOST"] == (
        "ssh://ops@gpu-b"
    )
    for step, url in (
        ("vllm-verify-gpu-a", "http://10.0.0.11:8000"),
        ("vllm-gpu-b-verify-gpu-b", "http://10.0.0.12:8000"),
        ("vllm-verify", "http://10.0.0.100:8000"),
    ):
        assert decode(VerifySpec, commands[step].inputs["environment"][SPEC_ENV]).url == url
    types = {d.type for d in run.declared}
    assert "vllm-nginx:index:Standby" in types


def test_check_prints_both_balancers() -> None:
    from components.cli.check import _standby_lines

    plan = build_plan(parse_settings(raw(loadBalancer={"standby": STANDBY})), project_dir=ROOT)
    (line,) = _standby_lines(plan)
    assert (
        "10.0.0.100/24 floats" in line and "gpu-a (http://10.0.0.11:8000, holds it first)" in line
    )
    assert _standby_lines(build_plan(parse_settings(raw()), project_dir=ROOT)) == []
