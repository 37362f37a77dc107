"""The standby balancer's config rules and plan, on plain data (no engine); the
rotation and canary steps editing both balancers, against scripted nginx.

What tests/test_standby_failover.py then runs for real: two nginx with the same
rendered config, a keepalived each, VRRP between two test hosts; and
tests/test_e2e_standby.py through the real Pulumi CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from components.config.loading import parse_settings, settings_from_config
from components.config.problems import ConfigError
from components.plan.build import build_plan
from components.plan.model import KEEPALIVED_STOP_SECONDS, host_tls_secret
from components.plan.specs import (
    DOCKER_TLS_SECRET_ENV,
    SPEC_ENV,
    CanarySpec,
    OtherBalancer,
    RolloutSpec,
    VerifySpec,
    WatchedReplica,
    decode,
)
from components.plan.standby import FIRST_PRIORITY, SECOND_PRIORITY
from components.steps import canary, nginx_edit, rollout
from components.steps.canary_compare import Scrape, Thresholds
from components.steps.engine import other_engine_client, other_environ
from components.steps.runner import StepError
from tests.support.nginx import make_test_pki
from tests.support.pulumi_capture import run_program
from tests.test_rollout import CONFIG, FakeClient, FakeNginx

ROOT = Path(__file__).resolve().parents[1]
INF = math.inf
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
        assert set(vrrp.inputs["capabilities"]["adds"]) == {
            "CAP_NET_ADMIN",
            "CAP_NET_BROADCAST",
            "CAP_NET_RAW",
        }
        assert f"router_id vllm-nginx-{host}" in vrrp.inputs["uploads"][0]["content"]
        # Stopped, not killed: it gives the address up (priority 0, address removed).
        assert vrrp.inputs["destroyGraceSeconds"] == KEEPALIVED_STOP_SECONDS
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
    # The first listed host's keepalived, the check through the address, then the
    # second's: only the first can win the first election (nopreempt keeps it there).
    after = {
        name: {run.by_urn(urn).name for urn in run.named(name).dependencies}
        for name in ("vllm-gpu-a-keepalived", "vllm-verify", "vllm-gpu-b-keepalived")
    }
    assert "vllm-gpu-a-keepalived" in after["vllm-verify"]
    assert "vllm-gpu-b-keepalived" not in after["vllm-verify"]
    assert {"vllm-verify", "vllm-gpu-b-lb"} <= after["vllm-gpu-b-keepalived"]
    assert "vllm-verify" not in after["vllm-gpu-a-keepalived"]
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


# --- updates reach both balancers ---------------------------------------------------


def _updating(**more: Any) -> dict[str, Any]:
    """Two replicas a host (so an update has a canary), the standby on gpu-a and gpu-b."""
    hosts = [host("gpu-a", "10.0.0.11"), host("gpu-b", "10.0.0.12")]
    for entry in hosts:
        entry["gpus"] = [[0], [1]]
    return raw(
        hosts=hosts,
        loadBalancer={"standby": STANDBY},
        rollout={"canarySeconds": 5},
        **more,
    )


def test_rotations_and_canary_are_given_the_second_balancer_and_its_engine() -> None:
    plan = build_plan(parse_settings(_updating()), project_dir=ROOT)
    other = OtherBalancer("nginx-lb", {"DOCKER_HOST": "ssh://ops@gpu-b"})
    assert plan.rollouts and plan.canaries
    for step in plan.rollouts:
        spec = decode(RolloutSpec, step.step.environment[SPEC_ENV])
        # The first is on the steps' own engine (gpu-a's, from their environment).
        assert spec.lb == "nginx-lb" and spec.other_balancers == (other,)
        assert step.balancer_secrets == {}
    (canary,) = plan.canaries
    assert decode(CanarySpec, canary.environment[SPEC_ENV]).other_balancers == (other,)
    alone = build_plan(parse_settings(raw(rollout={"canarySeconds": 5})), project_dir=ROOT)
    assert all(r.step.spec.other_balancers == () for r in alone.rollouts)  # type: ignore[attr-defined]
    assert all(c.spec.other_balancers == () for c in alone.canaries)  # type: ignore[attr-defined]


def test_the_second_balancers_tls_material_reaches_the_steps_as_secrets_of_their_own(
    tmp_path: Path,
) -> None:
    made = make_test_pki(tmp_path)
    pem = {
        "caMaterial": made.ca_certificate.read_text(),
        "certMaterial": Path(made.server.certificate).read_text(),
        "keyMaterial": Path(made.server.key).read_text(),
    }
    config = _updating()
    hosts = json.loads(config["hosts"])
    hosts[1].update(dockerHost="tcp://10.0.0.12:2376", tls=pem)
    config["hosts"] = json.dumps(hosts)
    plan = build_plan(settings_from_config(config, {"hosts"}), project_dir=ROOT)
    spec = plan.rollouts[0].step.spec
    assert isinstance(spec, RolloutSpec)
    (other,) = spec.other_balancers
    assert other.engine_env == {"DOCKER_HOST": "tcp://10.0.0.12:2376"}
    held = {part: f"{var}_BALANCER1" for part, var in DOCKER_TLS_SECRET_ENV.items()}
    assert other.tls_env == {DOCKER_TLS_SECRET_ENV[p]: v for p, v in held.items()}
    secrets = {v: host_tls_secret("gpu-b", p) for p, v in held.items()}
    assert plan.rollouts[0].balancer_secrets == secrets == plan.canaries[0].balancer_secrets
    # Declared: each rotation and the canary get the PEMs in those variables, as secrets.
    run = run_program({f"vllm-nginx:{k}": v for k, v in config.items()}, ["vllm-nginx:hosts"])
    steps = [d for d in run.of_type("command:local:Command") if d.name.endswith("-rotation")]
    steps.append(run.named("vllm-canary"))
    assert len(steps) == 5
    for step in steps:
        environment = step.inputs["environment"]
        assert environment[held["key"]] == pem["keyMaterial"], step.name
        assert environment[held["ca"]] == pem["caMaterial"]
        assert "environment" in step.secret_inputs
        # Its own engine is still gpu-a's, the standby's reached through the spec.
        assert environment["DOCKER_HOST"] == "ssh://ops@gpu-a"
        assert pem["keyMaterial"] not in environment[SPEC_ENV]


def test_a_spec_of_the_release_before_reads_as_one_balancer() -> None:
    """State may hold a rotation's spec written before `other_balancers` existed: the
    drain kept there runs once more after the upgrade (docs/architecture.md)."""
    before = (
        '{"lb":"nginx-lb","replica":"vllm0","port":8000,"upstream":"vllm0:8000",'
        '"drain_seconds":30,"resume_seconds":600,"probe":"http://127.0.0.1:8081/health",'
        '"vllm_drains":true,"replica_engine":null}'
    )
    assert decode(RolloutSpec, before).other_balancers == ()
    canary_before = (
        '{"lb":"nginx-lb","canary":[],"baseline":[],"seconds":5,"max_ttft_ratio":1.5,'
        '"max_error_rate_increase":0.02,"min_requests":10,"without_traffic":"proceed",'
        '"max_wait_seconds":600,"progress_seconds":5.0}'
    )
    assert decode(CanarySpec, canary_before).other_balancers == ()


def _two_nginx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeNginx, FakeNginx]:
    """Two scripted nginx (tests/test_rollout.py), each with its own copy of the config;
    the step's `sed` is pointed at whichever is edited."""
    pair = []
    for name in ("one", "two"):
        config = tmp_path / name / "nginx.conf"
        config.parent.mkdir()
        config.write_text(CONFIG)
        pair.append(_OwnConfig(config, lingering_looks=0))
    monkeypatch.setattr(nginx_edit, "NGINX_CONFIG", "/etc/nginx/nginx.conf")
    return pair[0], pair[1]


class _OwnConfig(FakeNginx):
    """A FakeNginx whose edits land in its own file whatever path the step names."""

    def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
        argv = [str(self.config) if a == nginx_edit.NGINX_CONFIG else a for a in argv]
        return super().exec_run(argv)


def test_drain_and_resume_edit_every_balancer_each_on_its_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = _two_nginx(tmp_path, monkeypatch)
    engines = {"a": FakeClient({"nginx-lb": one}), "b": FakeClient({"nginx-lb": two})}
    said = rollout.drain(
        engines["a"],  # type: ignore[arg-type]
        "nginx-lb",
        "vllm0",
        8000,
        30,
        vllm_drains=True,
        others=[(engines["b"], "nginx-lb")],  # type: ignore[list-item]
    )
    assert said.startswith("vllm0: out of rotation after ") and " in 2 balancers;" in said
    for nginx in (one, two):
        assert f"{nginx_edit.DRAINED}server vllm0:8000" in nginx.config.read_text()
        assert "\n    server vllm1:8000" in nginx.config.read_text()
        assert nginx.calls.count("nginx") == 2  # nginx -t, then the reload
    said = rollout.resume(
        engines["a"],  # type: ignore[arg-type]
        "nginx-lb",
        "vllm0",
        8000,
        5,
        probe=None,
        others=[(engines["b"], "nginx-lb")],  # type: ignore[list-item]
        replica_client=FakeClient({"vllm0": _Healthy()}),  # type: ignore[arg-type]
    )
    assert said.endswith(" in 2 balancers") and "back in rotation" in said
    assert one.config.read_text() == two.config.read_text() == CONFIG


def test_a_worse_canary_leaves_every_balancer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = _two_nginx(tmp_path, monkeypatch)
    replicas = [
        WatchedReplica("vllm0", "http://vllm0/metrics", "vllm0:8000"),
        WatchedReplica("vllm1", "http://vllm1/metrics", "vllm1:8000"),
    ]
    slow, fast = {0.1: 0.0, 1.0: 100.0, INF: 100.0}, {0.1: 100.0, 1.0: 100.0, INF: 100.0}
    calls = {"vllm0": 0, "vllm1": 0}

    def fetch(url: str) -> Scrape:
        name = url.split("/")[2]
        calls[name] += 1
        scale = calls[name] - 1  # nothing at the start, 100 requests by the end
        buckets = slow if name == "vllm0" else fast
        return Scrape({k: v * scale for k, v in buckets.items()}, 100.0 * scale, 0.0)

    limits = canary.Watch(0.2, Thresholds(1.5, 0.02, 10), progress=0.1)
    with pytest.raises(canary.CanaryFailed) as failed:
        canary.run(
            FakeClient({"nginx-lb": one}),  # type: ignore[arg-type]
            "nginx-lb",
            replicas[:1],
            replicas[1:],
            limits,
            fetch=fetch,
            others=[(FakeClient({"nginx-lb": two}), "nginx-lb")],  # type: ignore[list-item]
        )
    assert "vllm0 taken out of rotation in 2 balancers; vllm1 keeps serving" in str(failed.value)
    for nginx in (one, two):
        assert f"{nginx_edit.DRAINED}server vllm0:8000" in nginx.config.read_text()
        assert "\n    server vllm1:8000" in nginx.config.read_text()


def test_a_balancer_whose_engine_does_not_answer_stops_the_step_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = _two_nginx(tmp_path, monkeypatch)
    gone = docker.DockerClient(
        base_url=f"unix://{tmp_path}/no-engine.sock", timeout=2, version="1.41"
    )
    with pytest.raises(StepError) as err:
        rollout.drain(
            FakeClient({"nginx-lb": one}),  # type: ignore[arg-type]
            "nginx-lb",
            "vllm0",
            8000,
            30,
            vllm_drains=True,
            others=[(gone, "nginx-lb")],
        )
    message = str(err.value)
    assert message.startswith("cannot reach the engine of the balancer nginx-lb at http+docker")
    assert message.endswith("start that engine again, then `pulumi up` again")
    # Nothing was edited: the balancers stay in step.
    assert one.config.read_text() == CONFIG


def test_the_step_reaches_the_other_engine_from_its_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`act` builds the other balancer's client from the spec (its DOCKER_HOST) and the
    PEMs from the variables the spec names; the step's own engine is its environment."""
    made = make_test_pki(tmp_path)
    monkeypatch.setenv("VLLM_NGINX_DOCKER_CA_BALANCER1", made.ca_certificate.read_text())
    monkeypatch.setenv(
        "VLLM_NGINX_DOCKER_CERT_BALANCER1", Path(made.server.certificate).read_text()
    )
    monkeypatch.setenv("VLLM_NGINX_DOCKER_KEY_BALANCER1", Path(made.server.key).read_text())
    for variable in DOCKER_TLS_SECRET_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    other = OtherBalancer(
        "nginx-lb",
        {"DOCKER_HOST": "tcp://10.0.0.12:2376"},
        {v: f"{v}_BALANCER1" for v in DOCKER_TLS_SECRET_ENV.values()},
    )
    environ = other_environ(other)
    assert environ["DOCKER_HOST"] == "tcp://10.0.0.12:2376"
    assert environ["VLLM_NGINX_DOCKER_KEY"] == Path(made.server.key).read_text()
    assert set(environ) == {"DOCKER_HOST", *DOCKER_TLS_SECRET_ENV.values()}
    # A dead engine at construction (docker-py asks its version): named, what to do.
    gone = OtherBalancer("nginx-lb", {"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    with pytest.raises(StepError) as err:
        other_engine_client(gone, timeout=2)
    assert str(err.value).startswith(
        f"cannot reach the engine of the balancer nginx-lb at unix://{tmp_path}/none.sock ("
    )
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def drain(*args: Any, **kwargs: Any) -> str:
        seen.append((args, kwargs))
        return "ok"

    monkeypatch.setattr(rollout, "other_engine_client", lambda b: f"client of {b.engine_env}")
    monkeypatch.setattr(rollout, "engine_client", lambda: "own")
    monkeypatch.setattr(rollout, "drain", drain)
    spec = RolloutSpec("nginx-lb", "vllm0", 8000, "vllm0:8000", 30, 60, "", True,
                       other_balancers=(other,))  # fmt: skip
    assert rollout.act("drain", spec) == "ok"
    ((args, kwargs),) = seen
    assert args[:2] == ("own", "nginx-lb")
    assert kwargs["others"] == [("client of {'DOCKER_HOST': 'tcp://10.0.0.12:2376'}", "nginx-lb")]


class _Healthy:
    name = "vllm0"
    status = "running"
    attrs: ClassVar[dict[str, Any]] = {"State": {"Health": {"Status": "healthy"}}}

    def reload(self) -> None:
        return None
