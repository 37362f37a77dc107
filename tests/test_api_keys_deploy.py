"""Named API keys as the program declares them, under Pulumi's mocks: no key in any
input or output that is not secret, the key file reaches nginx as a secret upload
and through the reload step, and a key added, rotated or removed changes only
that step (no replica, no nginx container); plus the loader's words for bad entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.config.loading import load_config
from components.config.problems import ConfigError
from components.config.stack_file import check_stack_file
from components.deployment.cluster import VllmCluster, VllmClusterArgs
from components.deployment.program import load_settings
from components.lb.keys import digest
from tests.support.pulumi_capture import Declared, Run, run_program
from tests.test_component import CONTAINER
from tests.test_component_pools import MODELS

NS = "vllm-nginx"
OPERATOR = "sk-OPERATOR-0001"
TEAM_A = "sk-TEAMA-SECRET-0002"
TEAM_B = "sk-TEAMB-SECRET-0003"
KEYS: dict[str, Any] = {
    "team-a": {"key": TEAM_A, "models": ["chat", "sql"], "requestsPerMinute": 600},
    "team-b": {"key": TEAM_B, "concurrentRequests": 4, "maxTokens": 512},
}


def deploy(api_keys: dict[str, Any], secret: bool = True) -> Run:
    config = {"models": MODELS, "apiKey": OPERATOR, "apiKeys": api_keys}

    def program() -> dict[str, Any]:
        cluster = VllmCluster("vllm", VllmClusterArgs(settings=load_settings()))
        return {"lb_url": cluster.lb_url, "served": cluster.served_model_name}

    return run_program(
        {
            f"{NS}:{k}": json.dumps(v) if isinstance(v, dict | list) else str(v)
            for k, v in config.items()
        },
        [f"{NS}:apiKey", f"{NS}:apiKeys"] if secret else [],
        program=program,
    )


@pytest.fixture(scope="module")
def keyed() -> Run:
    return deploy(KEYS)


def visible(declared: Declared) -> str:
    return json.dumps({k: v for k, v in declared.inputs.items() if k not in declared.secret_inputs})


def test_no_key_in_anything_that_is_not_secret(keyed: Run) -> None:
    for declared in keyed.declared:
        text = visible(declared)
        for key in (TEAM_A, TEAM_B, OPERATOR):
            assert key not in text, declared.name
        # Not even a digest: it is the key file's, a secret too.
        assert digest(TEAM_A) not in text, declared.name
    outputs = json.dumps(keyed.outputs)
    assert TEAM_A not in outputs and TEAM_B not in outputs


def test_the_key_file_reaches_nginx_as_a_secret(keyed: Run) -> None:
    lb = next(c for c in keyed.of_type(CONTAINER) if c.inputs["name"] == "nginx-lb")
    assert "uploads" in lb.secret_inputs
    files = {u["file"]: u["content"] for u in lb.inputs["uploads"]}
    key_file = files["/etc/nginx/api-key.conf"]
    assert TEAM_A not in key_file and TEAM_B not in key_file
    assert digest(TEAM_A) in key_file and digest(TEAM_B) in key_file
    assert "team-a" in files["/etc/nginx/lb/models.js"]
    assert "lb_keys.digest" in files["/etc/nginx/nginx.conf"]
    reload = keyed.named("vllm-lb-config")
    assert "environment" in reload.secret_inputs


def _by_name(run: Run) -> dict[str, Declared]:
    return {d.name: d for d in run.declared}


def test_adding_rotating_or_removing_a_key_changes_only_the_reload_step(keyed: Run) -> None:
    changed = {
        "team-a": {**KEYS["team-a"], "key": "sk-TEAMA-ROTATED-0004"},
        "team-c": "sk-TEAMC-NEW-0005",
    }
    after = _by_name(deploy(changed))
    before = _by_name(keyed)
    assert set(after) == set(before)
    differ = {name for name in before if before[name].inputs != after[name].inputs}
    # nginx's uploads are ignored on update (the reload step puts files in).
    lb = before["vllm-lb"]
    assert "uploads" in lb.ignore_changes
    assert differ == {"vllm-lb", "vllm-lb-config"}, differ
    lb_inputs = {k for k in lb.inputs if lb.inputs[k] != after["vllm-lb"].inputs[k]}
    assert lb_inputs == {"uploads"}


def test_plain_text_keys_declare_nothing() -> None:
    with pytest.raises(ConfigError) as error:
        deploy(KEYS, secret=False)
    assert "apiKeys" in str(error.value)
    assert TEAM_A not in str(error.value)


# --- the loader's words --------------------------------------------------------------


def problems(api_keys: dict[str, Any], **more: Any) -> list[str]:
    raw = {"models": json.dumps(MODELS), "apiKey": OPERATOR, "apiKeys": json.dumps(api_keys)}
    raw.update({k: json.dumps(v) for k, v in more.items()})
    loaded = load_config(raw, {"apiKey", "apiKeys"})
    return [str(p) for p in loaded.problems]


def test_each_bad_entry_is_named_as_written_and_no_key_is_printed() -> None:
    found = problems(
        {
            "team a": "sk-good-0001",
            "team-b": {"key": "sk bad key", "requestsPerMinute": 0},
            "team-c": {"key": "sk-c-0001", "maxTokns": 5},
            "team-d": {"models": ["chat"]},
        }
    )
    assert found == [
        "config key 'vllm-nginx:apiKeys.team a': is not a valid key name: 1-64 letters, "
        "digits, '_', '.' or '-', starting with a letter or digit (it labels the key's metrics)",
        "config key 'vllm-nginx:apiKeys.team-b.key': must be non-empty and contain no spaces, "
        "quotes, newlines, backslashes, ';', '{', '}', '$' or backticks",
        "config key 'vllm-nginx:apiKeys.team-b.requestsPerMinute': Input should be greater "
        "than or equal to 1",
        "config key 'vllm-nginx:apiKeys.team-c.maxTokns': unknown key (a typo?): did you "
        "mean 'apiKeys.team-c.maxTokens'?",
        "config key 'vllm-nginx:apiKeys.team-d.key': is required",
    ]
    assert not any("sk-good" in p or "sk bad" in p or "sk-c-" in p for p in found)


def test_entries_are_checked_against_the_stack() -> None:
    found = problems(
        {
            "team-a": {"key": "sk-a-0001", "models": ["chat", "nope"]},
            "TEAM-A": "sk-b-0001",
            "copy": OPERATOR,
            "apikey": "sk-c-0001",
        }
    )
    assert found == [
        "config key 'vllm-nginx:apiKeys.team-a.models[1]': 'nope' is not a name this stack "
        "serves; served names and adapters: chat, sql, embed",
        "config key 'vllm-nginx:apiKeys.TEAM-A': has the name of 'apiKeys.team-a' (names are "
        "compared ignoring case: they label metrics and the balancer's limits)",
        "config key 'vllm-nginx:apiKeys.copy.key': is the same key as 'apiKey': each key must "
        "be its own, so the balancer knows whose request it is",
        "config key 'vllm-nginx:apiKeys.apikey': has the name of 'apiKey' (names are compared "
        "ignoring case: they label metrics and the balancer's limits)",
    ]
    assert not any(OPERATOR in p for p in found)


def test_named_keys_need_the_operators_key_and_pools_for_models() -> None:
    raw = {"model": "org/m", "apiKeys": json.dumps({"team-a": {"key": "sk-a-1", "maxTokens": 9}})}
    found = [str(p) for p in load_config(raw, {"apiKeys"}).problems]
    assert found == [
        "config key 'vllm-nginx:apiKeys': needs 'apiKey' too: the operator's key, which the "
        "replicas, the verify step and Prometheus use (`pulumi config set --secret apiKey "
        "<key>`)",
        "config key 'vllm-nginx:apiKeys.team-a.maxTokens': needs model pools ('models'): the "
        "balancer reads a request's model and max_tokens only where it routes by model",
    ]


def test_the_check_finds_a_named_key_in_plain_text_beside_encrypted_ones(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.keys.yaml"
    stack.write_text(
        "config:\n"
        "  vllm-nginx:model: org/m\n"
        "  vllm-nginx:apiKey:\n    secure: AAABAxyz\n"
        "  vllm-nginx:apiKeys:\n"
        "    team-a:\n      key:\n        secure: AAABAabc\n      requestsPerMinute: 60\n"
        "    team-b:\n      secure: AAABAdef\n"
        "    team-c: sk-plain-1234\n"
    )
    checked = check_stack_file(stack)
    assert [str(p) for p in checked.problems] == [
        "config key 'vllm-nginx:apiKeys.team-c': must be set with `pulumi config set --secret "
        "--path 'apiKeys.team-c' <key>` (it is stored in plain text)"
    ]
    # Two encrypted stand-ins look alike: that rule is left to `pulumi up`.
    assert [p.key for p in checked.unverified] == [
        "vllm-nginx:apiKeys.team-a.key",
        "vllm-nginx:apiKeys.team-b.key",
    ]


def test_the_check_prints_each_key_by_name_and_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from components import PROJECT_DIR
    from components.cli.check import main

    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.keys.yaml").write_text(
        "config:\n"
        "  vllm-nginx:backend: cpu\n"
        "  vllm-nginx:models:\n    - name: chat\n      model: org/chat\n"
        "      servedModelName: chat\n"
        "  vllm-nginx:apiKey:\n    secure: AAABAxyz\n"
        "  vllm-nginx:apiKeys:\n"
        "    team-a:\n      key:\n        secure: AAABAabc\n      models: [chat]\n"
        "      requestsPerMinute: 60\n      maxTokens: 512\n"
        "    team-b:\n      secure: AAABAdef\n"
    )
    assert main(["--stack", "keys", "--project-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  apiKeys        team-a: models chat; 60/min; max_tokens <= 512\n" in out
    assert "                 team-b: every model\n" in out
    assert "AAABA" not in out


def test_the_plan_and_the_printed_config_hold_names_and_limits_only() -> None:
    """What `render_config` prints and Pulumi stores as plain data: no key, no digest."""
    from components import PROJECT_DIR
    from components.config.loading import parse_settings
    from components.plan.build import build_plan

    raw = {
        "models": json.dumps(MODELS),
        "apiKey": OPERATOR,
        "apiKeys": json.dumps(KEYS),
        "monitoring": json.dumps({"enabled": True}),
        "grafanaPassword": "grafana-pw-0001",
    }
    plan = build_plan(parse_settings(raw), project_dir=PROJECT_DIR)
    lb = plan.load_balancer
    plain = lb.config + "".join(lb.files.values())
    for key in (TEAM_A, TEAM_B, OPERATOR):
        assert key not in plain and digest(key) not in plain
    assert "limit_req_zone $lb_key_rpm_600 zone=lb_key_rpm_600:1m rate=600r/m;" in lb.config
    assert "limit_conn lb_key_conn_4 4;" in lb.config
    assert '"maxTokens": 512' in lb.files["/etc/nginx/lb/models.js"]
    assert [u.path for u in lb.secret_uploads] == ["/etc/nginx/api-key.conf"]
