"""The Python stand-in for pulumi-docker's plugin (tests/support/docker_provider).

Three layers:

- unit tests of its Check/Diff rules, Go durations and request bodies, with
  neither the Pulumi engine nor Docker (each rule cites the provider source
  in the module it tests);
- `docker` tests that drive the provider's methods against the real engine,
  without the Pulumi CLI: a create reads back to a state that the next Diff
  finds unchanged, a refresh reads the same, a delete leaves nothing;
- one `docker` test with the real Pulumi engine (the CLI built by
  scripts/pulumi-toolchain.sh) running a small program through the plugin:
  up, no-change preview, no-drift refresh, a replaced container
  (delete-before-replace), destroy.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pulumi
import pytest
import yaml
from pulumi import automation as auto
from pulumi.provider.experimental import provider as px

from tests.support.docker_engine import REPO_ROOT, base_image
from tests.support.docker_provider import diffing, engine, godur, native_image
from tests.support.docker_provider.diffing import UNKNOWN, Kind
from tests.support.docker_provider.provider import (
    REMOTE_IMAGE,
    TIMEOUT_KEY,
    DockerProvider,
    meta,
    plain_map,
    wrap_map,
)
from tests.support.docker_provider.schema import CONTAINER
from tests.support.pulumi_engine import toolchain_bin

CONTAINER_T = "docker:index/container:Container"
NETWORK_T = "docker:index/network:Network"
VOLUME_T = "docker:index/volume:Volume"
IMAGE_T = "docker:index/remoteImage:RemoteImage"
IMAGE_NATIVE_T = "docker:index/image:Image"
PROVIDER_INPUTS = {"host", "certPath", "caMaterial", "certMaterial", "keyMaterial", "version"}
PLUGIN_BIN = REPO_ROOT / "tests" / "support" / "docker_provider" / "bin"


# -- Go durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1800s", "30m0s"),
        ("60s", "1m0s"),
        ("90s", "1m30s"),
        ("5s", "5s"),
        ("1h", "1h0m0s"),
        ("0s", "0s"),
        ("0", "0s"),
        ("500ms", "500ms"),
        ("1.5s", "1.5s"),
        ("1m0.25s", "1m0.25s"),
        ("2h45m", "2h45m0s"),
        ("1500us", "1.5ms"),
        ("-90s", "-1m30s"),
    ],
)
def test_go_durations_read_back_canonical(text, canonical):
    assert godur.format_duration(godur.parse_duration(text)) == canonical


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1.s2"])
def test_go_duration_rejects_what_go_rejects(text):
    with pytest.raises(godur.DurationError):
        godur.parse_duration(text)


# -- Check -------------------------------------------------------------------------


def replica(**overrides: Any) -> dict[str, Any]:
    """A replica container as the program declares it (components/deployment/pool.py)."""
    inputs: dict[str, Any] = {
        "name": "r0",
        "image": "sha256:" + "a" * 64,
        "entrypoints": ["vllm", "serve"],
        "command": ["org/model", "--port", "8000"],
        "envs": ["A=1", "HF_TOKEN=secret"],
        "ipcMode": "host",
        "cpuSet": "0",
        "capabilities": {"adds": ["CAP_SYS_NICE"]},
        "securityOpts": ["label=disable", "seccomp=unconfined"],
        "volumes": [{"volumeName": "cache", "containerPath": "/root/.cache/huggingface"}],
        "networksAdvanced": [{"name": "net", "aliases": ["r0"]}],
        "ports": [{"internal": 8000, "external": 18001, "ip": "127.0.0.1"}],
        "healthcheck": {
            "tests": ["CMD", "curl", "-f", "http://localhost:8000/health"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "startPeriod": "30m0s",
            "startInterval": "0s",
        },
        "restart": "unless-stopped",
        "destroyGraceSeconds": 30,
    }
    inputs.update(overrides)
    return inputs


def checked(type_: str, news: dict[str, Any]) -> dict[str, Any]:
    inputs, failures = diffing.check(type_, news)
    assert failures == []
    return inputs


def test_check_fills_in_the_schema_defaults():
    inputs = checked(CONTAINER_T, {"name": "c", "image": "i", "ports": [{"internal": 80}]})
    assert inputs["restart"] == "no"  # C:230-236
    assert inputs["mustRun"] is True  # C:122-127
    assert inputs["waitTimeout"] == 60  # C:79-91
    assert inputs["start"] is True and inputs["removeVolumes"] is True
    assert inputs["networkMode"] == "bridge"
    assert inputs["ports"] == [
        {"internal": 80, "ip": "0.0.0.0", "protocol": "tcp", "__defaults": ["ip", "protocol"]}
    ]
    assert "destroyGraceSeconds" not in inputs  # no default: a 0 s stop (CF:1085-1097)
    # A falsy default is left out (BR schema.go:956-967, 991-1006); the names
    # filled are listed in `__defaults` (schema.go:982-986).
    for falsy in ("wait", "attach", "rm", "tty", "logs", "privileged"):
        assert falsy not in inputs, falsy
    assert {"mustRun", "restart", "start", "waitTimeout"} <= set(inputs["__defaults"])
    assert inputs["__defaults"] == sorted(inputs["__defaults"])
    assert not set(inputs["__defaults"]) & {"name", "image", "ports"}


def test_check_fills_in_nested_defaults_of_the_health_check_and_uploads():
    inputs = checked(
        CONTAINER_T,
        {
            "name": "c",
            "image": "i",
            "healthcheck": {"tests": ["CMD", "true"]},
            "uploads": [{"file": "/a", "content": "x"}],
        },
    )
    assert inputs["healthcheck"] == {
        "tests": ["CMD", "true"],
        "interval": "0s",
        "timeout": "0s",
        "startPeriod": "0s",
        "startInterval": "0s",
        "__defaults": ["interval", "startInterval", "startPeriod", "timeout"],
    }  # `retries` (default 0) left out
    assert inputs["uploads"] == [{"file": "/a", "content": "x", "__defaults": []}]


def test_check_refuses_what_it_does_not_model_and_invalid_values():
    _, failures = diffing.check(
        CONTAINER_T,
        {
            "name": "c",
            "image": "i",
            "gpus": "all",
            "dns": ["1.1.1.1"],
            "restart": "sometimes",
            "cpuSet": "0-",
            "healthcheck": {"tests": ["CMD", "true"], "interval": "10"},
        },
    )
    assert {f.property for f in failures} == {
        "gpus",
        "dns",
        "restart",
        "cpuSet",
        "healthcheck.interval",
    }


def test_check_leaves_unknowns_alone():
    inputs = checked(CONTAINER_T, replica(image=UNKNOWN, envs=UNKNOWN))
    assert inputs["image"] == UNKNOWN and inputs["envs"] == UNKNOWN


# -- Diff --------------------------------------------------------------------------


def read_back(inputs: dict[str, Any]) -> dict[str, Any]:
    """What the provider's Read leaves in the state for `replica()` on a running
    container (CF:750-981): read fields in Docker's form, the rest as declared."""
    state = dict(inputs)
    state.update(
        {
            "id": "c0ffee",
            "bridge": "",
            "networkDatas": [{"networkName": "net", "ipAddress": "172.18.0.2"}],
            "hostname": "c0ffee123456",
            "command": inputs["command"],
            "entrypoints": inputs["entrypoints"],
            "securityOpts": ["seccomp=unconfined", "label=disable"],
            "capabilities": {"adds": ["CAP_SYS_NICE"], "drops": []},
            "ports": [{"internal": 8000, "external": 18001, "ip": "127.0.0.1", "protocol": "tcp"}],
            "init": False,
            "shmSize": 64,
            "logDriver": "json-file",
            "logOpts": None,
            "stopSignal": "",
            "stopTimeout": None,
            "memory": 0,
            "memorySwap": 0,
            "dns": [],
            "tmpfs": {},
            "mounts": [],
            "runtime": "runc",
            "platform": "linux",
            "user": "",
            "workingDir": "/",
        }
    )
    return state


def test_a_second_up_of_what_was_read_back_is_no_change():
    inputs = checked(CONTAINER_T, replica())
    result = diffing.diff(CONTAINER_T, read_back(inputs), inputs)
    assert result.changes is False, result.detailed


def test_a_non_canonical_duration_is_a_change_on_every_up_but_not_a_replacement():
    """`1800s` reads back `30m0s` and nothing suppresses the difference (C:1045-1096);
    healthcheck is not ForceNew, so only `replace_on_changes` makes it a replacement
    (the engine's applyReplaceOnChanges, on the `diffs` keys)."""
    state = read_back(checked(CONTAINER_T, replica()))
    news = checked(
        CONTAINER_T, replica(healthcheck={**replica()["healthcheck"], "startPeriod": "1800s"})
    )
    result = diffing.diff(CONTAINER_T, state, news)
    assert result.diffs == ["healthcheck"]
    # The detailed diff names the field (BR diff.go:60-170; a one-item block).
    assert result.detailed == {"healthcheck.startPeriod": Kind.UPDATE}
    assert result.replaces == [] and result.delete_before_replace is False


def test_a_changed_env_replaces_the_container_deleting_first():
    state = read_back(checked(CONTAINER_T, replica()))
    result = diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, replica(envs=["A=2"])))
    assert result.replaces == ["envs"]
    # By element (BR diff.go:360-420): the state's elements the config lacks by
    # their index there, then the config's new one at an index already named (an
    # update), and the set whole since its length changed (provider.go's
    # collectionDiffs).
    assert result.detailed == {
        "envs[0]": Kind.UPDATE_REPLACE,
        "envs[1]": Kind.DELETE_REPLACE,
        "envs": Kind.UPDATE,
    }
    assert result.delete_before_replace is True  # pulumi-docker resources.go:112-114


def test_the_detailed_diff_names_elements_and_fields():
    """An env added to a set of three is `envs[3]`; a changed published port
    `ports[0].external`; the engine's replaceOnChanges still sees them under
    their top-level key (`diffs`)."""
    state = read_back(checked(CONTAINER_T, replica(envs=["A=1", "B=2", "C=3"])))
    added = diffing.diff(
        CONTAINER_T, state, checked(CONTAINER_T, replica(envs=["A=1", "B=2", "C=3", "D=4"]))
    )
    assert added.detailed == {"envs[3]": Kind.ADD_REPLACE, "envs": Kind.UPDATE}
    assert added.diffs == ["envs"]
    moved = replica(
        envs=["A=1", "B=2", "C=3"],
        ports=[{"internal": 8000, "external": 18002, "ip": "127.0.0.1"}],
    )
    result = diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, moved))
    assert result.detailed == {"ports[0].external": Kind.UPDATE_REPLACE}
    assert result.replaces == ["ports"]


def test_a_refresh_of_a_stopped_container_rewrites_its_inputs():
    """BR Read stores the inputs it had, each with the read state's value
    (schema.go:1718-1800, 2012-2022): `mustRun` false, `ports` empty; what the
    state lacks is dropped; what Read does not read (envs) stays."""
    inputs = checked(CONTAINER_T, replica())
    stopped = {**read_back(inputs), "mustRun": False, "ports": []}
    stopped.pop("destroyGraceSeconds")
    refreshed = diffing.refreshed_inputs(CONTAINER_T, inputs, stopped)
    assert inputs["mustRun"] is True and inputs["ports"]
    assert refreshed["mustRun"] is False
    assert refreshed["ports"] == []
    assert "destroyGraceSeconds" not in refreshed
    assert refreshed["envs"] == inputs["envs"]
    assert set(refreshed) <= set(inputs)


def test_the_state_carries_the_timeouts_the_engine_gave():
    """A RemoteImage created with the program's 90 min pull timeout: `__meta` has
    it for create, the 20 min defaults for the rest (BR:1340-1352; I:10-12),
    written as Go's json.Marshal writes a map."""
    written = meta(REMOTE_IMAGE, "create", 90 * 60)["__meta"]
    assert written == (
        '{"e2bfb730-ecaa-11e6-8f88-34363bc7c4c0":{"create":5400000000000,'
        '"delete":1200000000000,"update":1200000000000},"schema_version":"0"}'
    )
    assert meta(NETWORK_T, "create", 0) == {}


def test_sets_ignore_order_and_lists_do_not():
    state = read_back(checked(CONTAINER_T, replica()))
    reordered = replica(
        envs=["HF_TOKEN=secret", "A=1"], securityOpts=["seccomp=unconfined", "label=disable"]
    )
    assert diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, reordered)).changes is False
    swapped = replica(command=["--port", "8000", "org/model"])
    assert diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, swapped)).replaces == ["command"]


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"restart": "always"}, Kind.UPDATE),
        ({"cpuSet": "1"}, Kind.UPDATE),
        ({"destroyGraceSeconds": 5}, Kind.UPDATE),
        ({"waitTimeout": 120}, Kind.UPDATE),
        ({"mustRun": False}, Kind.UPDATE),
    ],
)
def test_inputs_that_update_in_place(change, kind):
    state = read_back(checked(CONTAINER_T, replica()))
    result = diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, replica(**change)))
    (key,) = change
    assert result.detailed == {key: kind} and result.replaces == []


def test_inputs_the_schema_updates_in_place_include_the_cpu_set():
    """cpuSet, init, memoryReservation and maxRetryCount are not ForceNew in
    terraform-provider-docker v4.5.0 (the applier of old replaced on them)."""
    not_forced = {k for k, p in CONTAINER.items() if not p.force_new}
    assert {"cpuSet", "init", "memoryReservation", "maxRetryCount", "restart"} <= not_forced


def test_leaving_out_a_computed_input_is_no_change_and_an_optional_one_is():
    state = read_back(checked(CONTAINER_T, replica()))
    without_command = {k: v for k, v in replica().items() if k != "command"}
    assert diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, without_command)).changes is False
    without_grace = {k: v for k, v in replica().items() if k != "destroyGraceSeconds"}
    result = diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, without_grace))
    assert result.detailed == {"destroyGraceSeconds": Kind.DELETE}


def test_an_unknown_image_in_a_preview_is_a_replacement():
    state = read_back(checked(CONTAINER_T, replica()))
    result = diffing.diff(CONTAINER_T, state, checked(CONTAINER_T, replica(image=UNKNOWN)))
    assert result.replaces == ["image"] and result.delete_before_replace is True


def test_ports_compare_with_their_defaults_and_in_any_order():
    two: list[dict[str, Any]] = [
        {"internal": 80, "external": 8080, "ip": "127.0.0.1"},
        {"internal": 81, "external": 8081},
    ]
    state = {
        **checked(CONTAINER_T, {"name": "c", "image": "i", "ports": two}),
        "ports": [
            {"internal": 80, "external": 8080, "ip": "127.0.0.1", "protocol": "tcp"},
            {"internal": 81, "external": 8081, "ip": "0.0.0.0", "protocol": "tcp"},
        ],
    }
    same = checked(CONTAINER_T, {"name": "c", "image": "i", "ports": two})
    assert diffing.diff(CONTAINER_T, state, same).changes is False
    ip_empty = checked(
        CONTAINER_T, {"name": "c", "image": "i", "ports": [two[0], {**two[1], "ip": ""}]}
    )
    assert diffing.diff(CONTAINER_T, state, ip_empty).changes is False
    moved = checked(
        CONTAINER_T, {"name": "c", "image": "i", "ports": [two[0], {**two[1], "external": 9}]}
    )
    assert diffing.diff(CONTAINER_T, state, moved).replaces == ["ports"]


def test_capabilities_must_be_declared_in_the_clients_normal_form():
    """The Go client sends CAP_-prefixed upper-case names; Read reports them as
    stored, with no DiffSuppressFunc (C:268), so `sys_nice` replaces every time."""
    state = read_back(checked(CONTAINER_T, replica()))
    result = diffing.diff(
        CONTAINER_T, state, checked(CONTAINER_T, replica(capabilities={"adds": ["sys_nice"]}))
    )
    assert result.replaces == ["capabilities"]


def test_ignored_and_user_suppressed_inputs():
    state = read_back(checked(CONTAINER_T, replica()))
    news = checked(CONTAINER_T, replica(envs=["A=3"], user=""))
    assert diffing.diff(CONTAINER_T, state, news, ["envs"]).changes is False


def test_network_and_volume_replace_but_never_delete_first():
    network = checked(NETWORK_T, {"name": "n"})
    assert network["ipamDriver"] == "default"
    state = {
        **network,
        "id": "n1",
        "driver": "bridge",
        "scope": "local",
        "options": {},
        "labels": [],
    }
    assert diffing.diff(NETWORK_T, state, network).changes is False
    renamed = diffing.diff(NETWORK_T, state, checked(NETWORK_T, {"name": "m"}))
    assert renamed.replaces == ["name"] and renamed.delete_before_replace is False
    volume = checked(VOLUME_T, {"name": "v"})
    vstate = {
        **volume,
        "id": "v",
        "driver": "local",
        "driverOpts": {},
        "mountpoint": "/x",
        "labels": [],
    }
    assert diffing.diff(VOLUME_T, vstate, volume).changes is False


def test_remote_image_keep_locally_updates_in_place():
    news = checked(IMAGE_T, {"name": "nginx:1.27", "keepLocally": True})
    state = {**news, "keepLocally": False, "imageId": "sha256:x", "repoDigest": "", "id": "x"}
    result = diffing.diff(IMAGE_T, state, news)
    assert result.detailed == {"keepLocally": Kind.ADD} and result.replaces == []


def test_planned_state_after_an_update_is_the_new_inputs():
    """No Read after a container Update (CF:991-1076): the state takes the new
    health check although the container still runs the old one."""
    old = read_back(checked(CONTAINER_T, replica()))
    new = checked(CONTAINER_T, replica(healthcheck={**replica()["healthcheck"], "retries": 9}))
    planned = diffing.planned_state(
        CONTAINER_T, old, {k: v for k, v in new.items() if k != "command"}
    )
    assert planned["healthcheck"]["retries"] == 9
    assert planned["command"] == old["command"]  # computed, left out: kept
    assert planned["bridge"] == old["bridge"]  # outputs only: kept


# -- what the program declares -----------------------------------------------------------


def _as_pulumi_config(config: dict[str, Any]) -> dict[str, str]:
    """Config as the runtime hands it to the program: namespaced keys, strings and JSON."""
    return {
        (k if ":" in k else f"vllm-nginx:{k}"): json.dumps(v)
        if isinstance(v, dict | list)
        else str(v).lower()
        if isinstance(v, bool)
        else str(v)
        for k, v in config.items()
    }


def _stack_file(name: str) -> dict[str, str]:
    document = yaml.safe_load((REPO_ROOT / name).read_text())
    return _as_pulumi_config(document.get("config") or {})


def _program_configs(tmp_path: Path) -> dict[str, dict[str, str]]:
    from tests.test_e2e import ci_config
    from tests.test_e2e_monitoring import monitoring_config

    checkout = tmp_path / "vllm"
    (checkout / "docker").mkdir(parents=True)
    (checkout / "docker" / "Dockerfile").write_text("FROM scratch\n")
    return {
        "ci": _as_pulumi_config(ci_config()),
        "monitoring": _as_pulumi_config(
            {**monitoring_config(), "apiKey": "k", "grafanaPassword": "pw"}
        ),
        "build": _as_pulumi_config(ci_config(image={"build": {"context": str(checkout)}})),
        "twohost": _stack_file("Pulumi.twohost.yaml"),
        "cpu": _stack_file("Pulumi.cpu.yaml"),
    }


SECRET_KEYS = tuple(f"vllm-nginx:{k}" for k in ("apiKey", "grafanaPassword", "hfToken", "tlsKey"))


def test_every_docker_input_the_program_declares_is_modelled(tmp_path):
    """Check accepts every input of every stack file's docker resources, so the
    real-engine runs of the program meet no "not modelled" failure."""
    from tests.support.pulumi_capture import run_program

    types_seen: set[str] = set()
    for label, config in _program_configs(tmp_path).items():
        run = run_program(config, [k for k in SECRET_KEYS if k in config])
        for declared in run.declared:
            if not declared.type.startswith("docker:") and "providers:docker" not in declared.type:
                continue
            types_seen.add(declared.type)
            if declared.type == "pulumi:providers:docker":
                assert set(declared.inputs) <= PROVIDER_INPUTS, (label, declared.inputs)
                continue
            if declared.type == IMAGE_NATIVE_T:
                _, failures = native_image.check(declared.inputs)
            else:
                _, failures = diffing.check(declared.type, declared.inputs)
            assert failures == [], (label, declared.name, failures)
    assert types_seen == {
        CONTAINER_T,
        NETWORK_T,
        VOLUME_T,
        IMAGE_T,
        IMAGE_NATIVE_T,
        "pulumi:providers:docker",
    }


# -- request bodies ------------------------------------------------------------------


def test_create_body_follows_the_provider_and_the_go_client():
    inputs = checked(CONTAINER_T, replica(capabilities={"adds": ["sys_nice", "CAP_SYS_NICE"]}))
    body = engine.container_body(inputs, api_version_ok_144=False)
    host = body["HostConfig"]
    assert host["CapAdd"] == ["CAP_SYS_NICE"]  # MB client normalizeCapabilities
    assert host["Init"] is False  # always explicit (CF:444-445)
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18001"}]}
    assert host["Binds"] == ["cache:/root/.cache/huggingface:rw"]
    assert host["NetworkMode"] == "bridge"
    assert body["Healthcheck"]["StartPeriod"] == 1800 * 10**9
    assert body["Volumes"] == {"/root/.cache/huggingface": {}}


def test_a_start_interval_needs_api_1_44():
    health = {**replica()["healthcheck"], "startInterval": "1s"}
    inputs = checked(CONTAINER_T, replica(healthcheck=health))
    with pytest.raises(engine.ProviderError, match=r"1\.44"):
        engine.container_body(inputs, api_version_ok_144=False)
    assert (
        engine.container_body(inputs, api_version_ok_144=True)["Healthcheck"]["StartInterval"]
        == 10**9
    )


def test_uploads_are_one_tar_entry_named_by_the_whole_path():
    data = engine._upload_tar(
        {"file": "/etc/nginx/tls/key.pem", "content": "k", "executable": False}
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        (member,) = archive.getmembers()
    assert member.name == "/etc/nginx/tls/key.pem" and member.mode == 0o644
    data = engine._upload_tar({"file": "/run.sh", "content": "#!/bin/sh", "executable": True})
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmembers()[0].mode == 0o744
    with pytest.raises(engine.ProviderError, match="only one of"):
        engine._upload_tar({"file": "/x", "content": "a", "contentBase64": "Yg=="})


def test_provider_config_defaults_and_tls_rules(monkeypatch):
    env = {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_CERT_PATH": "/certs"}
    config = engine.EngineConfig.from_args({"sshOpts": '["-o","X=1"]'}, env)
    assert config.host == "tcp://127.0.0.1:2376" and config.cert_path == "/certs"
    assert config.ssh_opts == ["-o", "X=1"]
    assert engine.EngineConfig.from_args({}, {}).host == "unix:///var/run/docker.sock"
    with pytest.raises(engine.ProviderError, match="cert_path must not be specified"):
        engine.make_client(engine.EngineConfig(cert_material="c", key_material="k", cert_path="/x"))
    with pytest.raises(engine.ProviderError, match="must be specified"):
        engine.make_client(engine.EngineConfig(cert_material="c"))


# -- the native Image --------------------------------------------------------------------


def test_image_check_adds_the_context_digest_and_a_change_rebuilds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "ctx" / "app.txt").write_text("1")
    (tmp_path / "ctx" / ".dockerignore").write_text("*.log\n")
    news = {"imageName": "x:1", "skipPush": True, "build": {"context": "ctx"}}
    inputs, failures = native_image.check(news)
    assert failures == []
    assert inputs["build"]["dockerfile"] == "ctx/Dockerfile"
    assert inputs["buildOnPreview"] is False
    assert inputs["build"]["platform"].startswith("linux/")
    digest = inputs["build"]["contextDigest"]
    (tmp_path / "ctx" / "debug.log").write_text("ignored")
    assert native_image.check(news)[0]["build"]["contextDigest"] == digest
    (tmp_path / "ctx" / "app.txt").write_text("2")
    changed, _ = native_image.check(news)
    assert changed["build"]["contextDigest"] != digest
    result = native_image.diff({"__inputs": inputs}, changed)
    assert result.detailed == {"build": Kind.UPDATE} and result.replaces == []
    assert native_image.diff({"__inputs": inputs}, inputs).changes is False


def test_image_check_wants_skip_push_and_an_existing_dockerfile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    _, failures = native_image.check(
        {"imageName": "x", "build": {"context": "."}, "skipPush": False}
    )
    assert [f.property for f in failures] == ["skipPush"]
    with pytest.raises(engine.ProviderError, match="could not open dockerfile"):
        native_image.check({"imageName": "x", "skipPush": True, "build": {"context": "nowhere"}})


# -- the provider object, without an engine -------------------------------------------------


def test_values_cross_the_wire_unchanged():
    value = {"a": 1, "b": [True, "x", None, 2.5], "c": {"d": []}}
    assert plain_map(wrap_map(value)) == value


def test_provider_config_changes_update_and_never_replace():
    provider = DockerProvider()
    request = px.DiffRequest(
        "urn:pulumi:s::p::pulumi:providers:docker::h",
        "id",
        wrap_map({"host": "ssh://a", "version": "5.2.0"}),
        wrap_map({"host": "ssh://b", "version": "5.2.0"}),
        [],
    )
    result = asyncio.run(provider.diff_config(request))
    assert result.changes is True and result.replaces == [] and result.diffs == ["host"]


def test_configure_declines_secrets_and_supports_preview():
    response = asyncio.run(DockerProvider().configure(px.ConfigureRequest({}, {}, True, True)))
    assert response.accept_secrets is False and response.supports_preview is True


# -- the provider against the real Docker engine (no Pulumi CLI) ---------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def names(client: docker.DockerClient) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    made = {"container": f"dp-c-{suffix}", "network": f"dp-n-{suffix}", "volume": f"dp-v-{suffix}"}
    yield made
    from tests.support.docker_engine import remove_named

    remove_named(
        client, containers=[made["container"]], networks=[made["network"]], volumes=[made["volume"]]
    )


def _urn(type_: str, name: str) -> str:
    return f"urn:pulumi:test::dp::{type_}::{name}"


@pytest.mark.docker
def test_provider_create_reads_back_to_no_change_and_deletes(client, names):
    provider = DockerProvider()
    run = asyncio.run

    def create(type_: str, news: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        check = run(provider.check(px.CheckRequest(_urn(type_, "r"), {}, wrap_map(news), b"")))
        assert not check.failures, [(f.property, f.reason) for f in check.failures or []]
        assert check.inputs is not None
        made = run(provider.create(px.CreateRequest(_urn(type_, "r"), check.inputs, 0, False)))
        assert made.resource_id
        return made.resource_id, plain_map(check.inputs), plain_map(made.properties)

    network_id, _, _ = create(NETWORK_T, {"name": names["network"]})
    volume_id, _, _ = create(VOLUME_T, {"name": names["volume"]})
    _, _, image = create(IMAGE_T, {"name": base_image(client), "keepLocally": True})
    assert image["imageId"].startswith("sha256:")
    port = _free_port()
    declared = {
        "name": names["container"],
        "image": image["imageId"],
        "command": ["sleep", "infinity"],
        "envs": ["GREETING=hello"],
        "networksAdvanced": [{"name": names["network"], "aliases": ["web"]}],
        "volumes": [{"volumeName": names["volume"], "containerPath": "/data"}],
        "ports": [{"internal": 8000, "external": port, "ip": "127.0.0.1"}],
        "healthcheck": {"tests": ["CMD", "true"], "interval": "90s", "timeout": "5s", "retries": 2},
        "capabilities": {"adds": ["CAP_SYS_NICE"]},
        "uploads": [{"file": "/etc/greeting/hello.txt", "content": "hi"}],
        "destroyGraceSeconds": 2,
        "stopSignal": "SIGTERM",
    }
    container_id, inputs, state = create(CONTAINER_T, declared)
    # The state's shape: the timeouts and schema version in `__meta` (C:12-14, 26).
    assert json.loads(state["__meta"]) == {
        TIMEOUT_KEY: {"create": 1200000000000, "delete": 1200000000000, "update": 1200000000000},
        "schema_version": "2",
    }
    assert state["healthcheck"]["interval"] == "1m30s"  # read back as Go prints it
    assert state["image"] == image["imageId"]  # sha256: IDs read back as container.Image
    live = client.containers.get(names["container"])
    assert live.attrs["HostConfig"]["Init"] is False
    assert "web" in live.attrs["NetworkSettings"]["Networks"][names["network"]]["Aliases"]
    assert live.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert "bridge" not in live.attrs["NetworkSettings"]["Networks"]
    archive, _ = live.get_archive("/etc/greeting/hello.txt")
    assert b"hi" in b"".join(archive)

    # A second `up` with `90s` declared: a change every time (no DiffSuppressFunc).
    again = run(
        provider.diff(
            px.DiffRequest(
                _urn(CONTAINER_T, "r"), container_id, wrap_map(state), wrap_map(inputs), []
            )
        )
    )
    assert again.diffs == ["healthcheck"] and again.replaces == []
    # Declared as Go prints it, the Diff of state against the inputs finds nothing.
    inputs["healthcheck"]["interval"] = "1m30s"
    same = run(
        provider.diff(
            px.DiffRequest(
                _urn(CONTAINER_T, "r"), container_id, wrap_map(state), wrap_map(inputs), []
            )
        )
    )
    assert same.changes is False, same.detailed_diff
    # A refresh reads the same state.
    read = run(
        provider.read(
            px.ReadRequest(_urn(CONTAINER_T, "r"), container_id, wrap_map(state), wrap_map(inputs))
        )
    )
    assert read.resource_id == container_id and plain_map(read.properties) == state

    # In place: the restart policy reaches the engine; the health check only the state.
    news = {**inputs, "restart": "always", "healthcheck": {**inputs["healthcheck"], "retries": 7}}
    diff = run(
        provider.diff(
            px.DiffRequest(
                _urn(CONTAINER_T, "r"), container_id, wrap_map(state), wrap_map(news), []
            )
        )
    )
    assert diff.replaces == [] and set(diff.diffs) == {"restart", "healthcheck"}
    updated = run(
        provider.update(
            px.UpdateRequest(
                _urn(CONTAINER_T, "r"), container_id, wrap_map(state), wrap_map(news), 0, [], False
            )
        )
    )
    live.reload()
    assert live.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert live.attrs["Config"]["Healthcheck"]["Retries"] == 2
    assert plain_map(updated.properties)["healthcheck"]["retries"] == 7

    # Delete: stopped with the grace period, removed; then the network and volume.
    for type_, resource_id, props in (
        (CONTAINER_T, container_id, plain_map(updated.properties)),
        (NETWORK_T, network_id, {}),
        (VOLUME_T, volume_id, {}),
        (IMAGE_T, image["id"], image),
    ):
        run(provider.delete(px.DeleteRequest(_urn(type_, "r"), resource_id, wrap_map(props), 0)))
    assert not client.containers.list(all=True, filters={"name": names["container"]})
    assert not client.networks.list(names=[names["network"]])
    assert names["volume"] not in [v.name for v in client.volumes.list()]
    client.images.get(base_image(client))  # keep_locally
    gone = run(
        provider.read(px.ReadRequest(_urn(CONTAINER_T, "r"), container_id, wrap_map(state), {}))
    )
    assert gone.resource_id is None


@pytest.mark.docker
def test_an_existing_network_name_is_refused_on_this_engine(client, names):
    """The Go client sets CheckDuplicate below API 1.44 (docker 20.10 speaks 1.41),
    so the provider does not adopt a network of the same name."""
    client.networks.create(names["network"])
    provider = DockerProvider()
    if engine._api_at_least(provider.api(), "1.44"):
        pytest.skip("this engine's API ignores CheckDuplicate")
    inputs = checked(NETWORK_T, {"name": names["network"]})
    with pytest.raises(Exception, match="already exists"):
        asyncio.run(
            provider.create(px.CreateRequest(_urn(NETWORK_T, "n"), wrap_map(inputs), 0, False))
        )


# -- the real Pulumi engine ----------------------------------------------------------


def _program(names: dict[str, str], image_name: str, port: int) -> Callable[[], None]:
    """A small program of the project's shapes: network, volume, local image by
    ID, and a container with a secret env, alias, port, upload, health check and
    grace period, all through the default docker provider."""

    def program() -> None:
        import pulumi_docker as pd

        greeting = pulumi.Config().require_secret("greeting")
        network = pd.Network("net", name=names["network"])
        volume = pd.Volume("data", name=names["volume"])
        image = pd.RemoteImage("base", name=image_name, keep_locally=True)
        web = pd.Container(
            "web",
            name=names["container"],
            image=image.image_id,
            command=["sleep", "infinity"],
            envs=[greeting.apply(lambda g: f"GREETING={g}")],
            networks_advanced=[
                pd.ContainerNetworksAdvancedArgs(name=network.name, aliases=["web"])
            ],
            volumes=[pd.ContainerVolumeArgs(volume_name=volume.name, container_path="/data")],
            ports=[pd.ContainerPortArgs(internal=8000, external=port, ip="127.0.0.1")],
            healthcheck=pd.ContainerHealthcheckArgs(
                tests=["CMD", "true"], interval="1m30s", timeout="5s", retries=2
            ),
            uploads=[pd.ContainerUploadArgs(file="/etc/greeting/hello.txt", content="hi")],
            destroy_grace_seconds=2,
            stop_signal="SIGTERM",
            opts=pulumi.ResourceOptions(additional_secret_outputs=["envs"]),
        )
        pulumi.export("container_id", web.id)

    return program


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    """The real engine offline, with this plugin ambient on PATH."""
    (tmp_path / "state").mkdir()
    for name, value in {
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "provider test",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PATH": f"{PLUGIN_BIN}:{os.environ.get('PATH', '')}",
        "VLLM_NGINX_PROVIDER_PYTHON": sys.executable,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PULUMI_IGNORE_AMBIENT_PLUGINS", raising=False)


@pytest.mark.docker
def test_the_real_engine_runs_a_program_through_the_plugin(client, names, offline, tmp_path):
    """No Python language host can be built here (the Go module proxy does not
    serve it), so the program runs inline through the Automation API; the engine
    still loads and drives the docker plugin as it would for `pulumi up`."""
    cli = auto.PulumiCommand(root=str(toolchain_bin().parent))
    program = _program(names, base_image(client), _free_port())
    stack = auto.create_stack(
        "test",
        project_name="provider-e2e",
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=cli),
    )
    stack.set_config("greeting", auto.ConfigValue("hello", secret=True))
    try:
        up = stack.up()
        assert up.summary.resource_changes == {"create": 5}  # the stack and 4 resources
        first = up.outputs["container_id"].value
        live = client.containers.get(names["container"])
        assert live.id == first and "GREETING=hello" in live.attrs["Config"]["Env"]

        # A second up changes nothing; a refresh finds no drift, and after it
        # there is still nothing to do.
        stack.preview(expect_no_changes=True)
        stack.refresh(expect_no_changes=True)
        stack.preview(expect_no_changes=True)

        # The env input was secret, so its output is (the engine's annotateSecrets):
        # encrypted in the state file, the greeting nowhere in clear.
        (state_file,) = (tmp_path / "state").glob(".pulumi/stacks/provider-e2e/test.json")
        state = json.loads(state_file.read_text())
        web = next(
            r for r in state["checkpoint"]["latest"]["resources"] if r["urn"].endswith("::web")
        )
        assert "ciphertext" in json.dumps(web["outputs"]["envs"])
        assert "GREETING=hello" not in state_file.read_text()

        # A changed env replaces the container, deleting the old one first.
        stack.set_config("greeting", auto.ConfigValue("bonjour", secret=True))
        preview = stack.preview()
        assert preview.change_summary.get(auto.OpType.REPLACE) == 1, preview.change_summary
        events: list[tuple[str, str]] = []

        def record(event: auto.EngineEvent) -> None:
            if event.res_outputs_event is not None:
                meta = event.res_outputs_event.metadata
                events.append((meta.op.value, meta.urn.rsplit("::", 1)[-1]))

        stack.up(on_event=record)
        web_steps = [op for op, name in events if name == "web"]
        # The engine reports the delete first, then the replace, then the create.
        assert web_steps == ["delete-replaced", "replace", "create-replacement"], events
        second = stack.outputs()["container_id"].value
        assert second != first
        live = client.containers.get(names["container"])
        assert live.id == second and "GREETING=bonjour" in live.attrs["Config"]["Env"]
        stack.preview(expect_no_changes=True)

        # A stopped container: Read sets must_run false and, the container having
        # no published ports once it exited, ports empty (CF:796-824), so after a
        # refresh the next up replaces it rather than starting it.
        live.stop(timeout=0)
        live.reload()
        assert not live.attrs["NetworkSettings"]["Ports"]
        refreshed = stack.refresh()
        assert refreshed.summary.resource_changes == {"same": 4, "update": 1}
        preview = stack.preview()
        assert preview.change_summary.get(auto.OpType.REPLACE) == 1, preview.change_summary
        stack.up()
        assert client.containers.get(names["container"]).status == "running"
        stack.preview(expect_no_changes=True)
    finally:
        stack.destroy()
    assert not client.containers.list(all=True, filters={"name": names["container"]})
    assert not client.networks.list(names=[names["network"]])
    assert names["volume"] not in [v.name for v in client.volumes.list()]
    client.images.get(base_image(client))  # keep_locally
    stack.workspace.remove_stack("test")


def _traced(trace: Path) -> list[dict[str, Any]]:
    """The plugin's calls ($VLLM_NGINX_PROVIDER_TRACE), URNs cut to the resource name."""
    calls = []
    for line in trace.read_text().splitlines():
        call = json.loads(line)
        call["name"] = str(call.get("urn", "")).rsplit("::", 1)[-1]
        calls.append(call)
    return calls


@pytest.mark.docker
def test_the_real_engine_applies_the_programs_resource_options(
    client, names, offline, tmp_path, monkeypatch
):
    """What the program relies on, through the engine: an explicit provider per
    host (a changed `host` only re-configures it), `ignore_changes=["uploads"]`,
    an in-place restart policy, `replace_on_changes=["healthcheck"]` with
    `delete_before_replace`, and a rebuilt `docker.Image` replacing its container."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("VLLM_NGINX_PROVIDER_TRACE", str(trace))
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base_image(client)}\nCOPY a.txt /a.txt\n")
    (context / "a.txt").write_text("1")
    image_name = f"{names['container']}-img:1"
    knobs: dict[str, Any] = {
        "host": "unix:///var/run/docker.sock",
        "restart": "no",
        "upload": "v1",
        "retries": 2,
    }

    def program() -> None:
        import pulumi_docker as pd

        host = pd.Provider("host-a", host=knobs["host"])
        network = pd.Network(
            "net", name=names["network"], opts=pulumi.ResourceOptions(provider=host)
        )
        image = pd.Image(
            "img",
            image_name=image_name,
            skip_push=True,
            build=pd.DockerBuildArgs(context=str(context), dockerfile=str(context / "Dockerfile")),
            opts=pulumi.ResourceOptions(provider=host),
        )
        pd.Container(
            "web",
            name=names["container"],
            image=image.repo_digest,
            command=["sleep", "infinity"],
            networks_advanced=[pd.ContainerNetworksAdvancedArgs(name=network.name)],
            restart=knobs["restart"],
            destroy_grace_seconds=1,
            healthcheck=pd.ContainerHealthcheckArgs(
                tests=["CMD", "true"], interval="10s", retries=knobs["retries"]
            ),
            uploads=[pd.ContainerUploadArgs(file="/etc/x.conf", content=knobs["upload"])],
            opts=pulumi.ResourceOptions(
                provider=host,
                delete_before_replace=True,
                replace_on_changes=["healthcheck"],
                ignore_changes=["uploads"],
            ),
        )

    cli = auto.PulumiCommand(root=str(toolchain_bin().parent))
    stack = auto.create_stack(
        "options",
        project_name="provider-e2e",
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=cli),
    )

    def run(**changes: Any) -> list[dict[str, Any]]:
        knobs.update(changes)
        trace.write_text("")
        stack.up()
        stack.preview(expect_no_changes=True)
        return [c for c in _traced(trace) if c["method"] in ("Update", "Create", "Delete")]

    try:
        stack.up()
        first = client.containers.get(names["container"]).id

        # Uploads are ignored; the restart policy is updated in place.
        calls = run(restart="always", upload="v2")
        assert [(c["method"], c["name"]) for c in calls] == [("Update", "web")]
        live = client.containers.get(names["container"])
        assert live.id == first
        assert live.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"

        # A health-check change is no replacement for the provider (neither
        # ForceNew nor updated) but is one for the engine, deleting first.
        calls = run(retries=5)
        assert [(c["method"], c["name"]) for c in calls] == [("Delete", "web"), ("Create", "web")]
        live = client.containers.get(names["container"])
        assert live.attrs["Config"]["Healthcheck"]["Retries"] == 5
        archive, _ = live.get_archive("/etc/x.conf")
        assert b"v2" in b"".join(archive)  # the replacement got the current uploads

        # A changed build context rebuilds the image (an update, never a
        # replacement) and replaces the container that runs it.
        (context / "a.txt").write_text("2")
        calls = run()
        assert [(c["method"], c["name"]) for c in calls] == [
            ("Update", "img"),
            ("Delete", "web"),
            ("Create", "web"),
        ]

        # A changed host re-configures the provider and replaces nothing.
        second = client.containers.get(names["container"]).id
        calls = run(host="unix:///run/docker.sock")
        assert calls == []
        assert client.containers.get(names["container"]).id == second
        diff_config = next(c for c in _traced(trace) if c["method"] == "DiffConfig")
        assert diff_config["changes"] == 2 and diff_config["replaces"] == []
    finally:
        stack.destroy()
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image_name)  # docker.Image's delete leaves it (PD:490-496)
    stack.workspace.remove_stack("options")


@pytest.mark.docker
def test_a_refused_start_is_kept_with_its_init_error(client, names, offline, tmp_path):
    """The container stays, `created`, and in the engine's state with the daemon's
    error as an init error (CF:456-460, 584-588; BR:1361-1376, 2073-2081). The
    next `up` only updates it, which never starts it (CF:997-1012): the real
    provider's behaviour users met. With `#initerror` in `replace_on_changes`
    (what the program declares) the engine replaces it instead, and it runs."""
    cli = auto.PulumiCommand(root=str(toolchain_bin().parent))
    port = _free_port()
    image = base_image(client)

    def program() -> None:
        import pulumi_docker as pd

        retry = pulumi.Config().get_bool("retry") or False
        pd.Container(
            "web",
            name=names["container"],
            image=image,
            command=["sleep", "infinity"],
            ports=[pd.ContainerPortArgs(internal=8000, external=port, ip="127.0.0.1")],
            # The provider's Diff finds no change, so only the program's flag makes
            # the engine's replacement delete first (BR:1275-1276); the name is taken.
            opts=pulumi.ResourceOptions(
                replace_on_changes=["#initerror"] if retry else None,
                delete_before_replace=True,
            ),
        )

    stack = auto.create_stack(
        "test",
        project_name="provider-retry",
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=cli),
    )
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(auto.CommandError) as failed:
            stack.up()
        said = str(failed.value)
        assert "Unable to start container: Error response from daemon:" in said, said
        assert "address already in use" in said
        assert "Traceback" not in said and "Unexpected <class" not in said, said
        live = client.containers.get(names["container"])
        assert live.status == "created"
        (state_file,) = (tmp_path / "state").glob(".pulumi/stacks/provider-retry/test.json")
        web = next(
            r
            for r in json.loads(state_file.read_text())["checkpoint"]["latest"]["resources"]
            if r["urn"].endswith("::web")
        )
        assert web["id"] == live.id
        assert "Unable to start container" in web["initErrors"][0]

        holder.close()
        # Without `#initerror`: an update that leaves it `created`.
        up = stack.up()
        assert up.summary.resource_changes == {"same": 1, "update": 1}, up.summary
        assert client.containers.get(names["container"]).status == "created"
        # With it, from the start: replaced, and running.
        stack.destroy()
        stack.set_config("retry", auto.ConfigValue("true"))
        events: list[str] = []

        def record(event: auto.EngineEvent) -> None:
            if event.res_outputs_event is not None:
                meta = event.res_outputs_event.metadata
                if meta.urn.endswith("::web"):
                    events.append(meta.op.value)

        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(auto.CommandError):
            stack.up()
        holder.close()
        stack.up(on_event=record)
        assert events == ["delete-replaced", "replace", "create-replacement"], events
        assert client.containers.get(names["container"]).status == "running"
        stack.preview(expect_no_changes=True)
    finally:
        holder.close()
        stack.destroy()
        stack.workspace.remove_stack("test")
