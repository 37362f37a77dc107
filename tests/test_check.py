"""`python -m components.cli.check`: a stack file checked as `pulumi up` would, no CLI.

Good stack files (every shipped one) give the plan and exit 0; bad ones,
written to a temporary project directory, give every problem on one line each,
naming the key as written and the rule, and exit 1, never a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.cli import check, render_config
from components.config.stack_file import SECRET_PLACEHOLDER, read_stack_file
from tests.support.nginx import make_test_pki

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
SECURE = "secure: v1:c2FsdA==:ZW5jcnlwdGVk"


def project(tmp_path: Path, **stacks: str) -> Path:
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    for name, text in stacks.items():
        (tmp_path / f"Pulumi.{name}.yaml").write_text(text)
    return tmp_path


def run(
    capsys: pytest.CaptureFixture[str], directory: Path, stack: str, *extra: str
) -> tuple[int, str, str]:
    code = check.main(["--stack", stack, "--project-dir", str(directory), *extra])
    out, err = capsys.readouterr()
    return code, out, err


GOOD = """config:
  vllm-nginx:model: meta-llama/Llama-2-7b-chat-hf
"""


def test_shipped_stacks_are_found() -> None:
    assert {"dev", "cpu", "ci"} <= set(SHIPPED)


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_shipped_stack_file_passes(capsys: pytest.CaptureFixture[str], stack: str) -> None:
    code, out, err = run(capsys, ROOT, stack)
    assert code == 0, err
    assert out.startswith(f"Pulumi.{stack}.yaml: valid")
    assert "load balancer  http://" in out
    assert err == ""


def test_an_image_older_than_the_oldest_supported_release_warns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cpu_ecr = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0"
    directory = project(
        tmp_path,
        old=GOOD + "  vllm-nginx:image:\n    prebuilt: vllm/vllm-openai:v0.17.1\n",
        ecr=GOOD + f"  vllm-nginx:backend: cpu\n  vllm-nginx:image:\n    prebuilt: {cpu_ecr}\n",
        custom=GOOD + "  vllm-nginx:image:\n    prebuilt: registry:5000/vllm/vllm-openai:v0.1.0\n",
    )
    code, out, err = run(capsys, directory, "old")
    assert code == 0 and err == ""
    (warning,) = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert "vllm/vllm-openai:v0.17.1, vLLM v0.17.1, older than v0.18.0" in warning
    assert "remove 'image.prebuilt' for the pinned v0.33.0" in warning
    code, out, _ = run(capsys, directory, "ecr")
    assert code == 0 and "vLLM v0.11.0, older than v0.18.0" in out
    code, out, _ = run(capsys, directory, "custom")
    assert code == 0 and "warning:" not in out


def test_release_tags_are_read_only_from_vllms_repositories() -> None:
    from components.config.vllm_release import release_of

    assert release_of("vllm/vllm-openai:v0.11.0") == (0, 11, 0)
    assert release_of("docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64") == (0, 33, 0)
    assert release_of("vllm/vllm-openai:v0.10.1.1") == (0, 10, 1)
    assert release_of("vllm/vllm-openai:v0.11.0@sha256:" + "a" * 64) == (0, 11, 0)
    for other in (
        "vllm/vllm-openai:latest",
        "vllm/vllm-openai:nightly-4ba787ec9",
        "vllm/vllm-openai@sha256:" + "a" * 64,
        "vllm/vllm-openai",
        "ghcr.io/me/vllm-openai:v0.11.0",
        "localhost:5000/vllm/vllm-openai",
        "vllm-local:latest",
    ):
        assert release_of(other) is None, other


def test_dev_plan_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ROOT, "dev")
    assert code == 0
    assert "  model          meta-llama/Llama-2-7b-chat-hf, GPU backend" in out
    assert "    vllm0  GPU 0       http://127.0.0.1:8081" in out
    assert "    vllm1  GPU 1       http://127.0.0.1:8082" in out
    assert "  image          vllm/vllm-openai:v0.33.0 (pulled)" in out
    assert "  fit check      runs before the download and the replicas" in out
    assert "/.cache/huggingface, shared by all replicas, kept on `pulumi destroy`" in out
    assert (
        "  load balancer  http://localhost:8000 (nginx-lb, least_conn, published on 0.0.0.0:8000)"
        in out
    )
    assert "apiKey         not set: anyone who can reach port 8000" in out
    assert "hfToken        not set: a gated model needs one" in out
    assert "  monitoring     off ('monitoring.enabled' is false)" in out


def test_module_entry_point_exit_codes(tmp_path: Path) -> None:
    directory = project(tmp_path, bad=GOOD + "  vllm-nginx:replicas: 0\n")
    for args, code in (
        (["--stack", "dev"], 0),
        (["--stack", "bad", "--project-dir", str(directory)], 1),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "components.cli.check", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr


# Stack files that differ from GOOD in one way: (id, the file's text, exit code,
# lines the output must hold, text it must not hold). On failure nothing is printed
# to stdout; problems go to stderr, one per line.
CASES = [
    (
        "secure secrets pass with a note",
        GOOD + f"  vllm-nginx:hfToken:\n    {SECURE}\n  vllm-nginx:apiKey:\n    {SECURE}\n",
        0,
        [
            "  apiKey         set: clients must send it",
            "  hfToken        set",
            "note: secret values were not checked (vllm-nginx:apiKey, vllm-nginx:hfToken)",
        ],
        [],
    ),
    (
        "a plain secret is refused without echo",
        GOOD + "  vllm-nginx:hfToken: hf_PLAINVALUE\n",
        1,
        [
            "  config key 'vllm-nginx:hfToken': must be set with "
            "`pulumi config set --secret hfToken ...` (it is stored in plain text)"
        ],
        ["PLAINVALUE"],
    ),
    (
        # Pulumi's stack-file loader prefixes a key without ':' with the project name.
        "a key without namespace is read as Pulumi does",
        "config:\n  model: org/model\n  replicas: 3\n",
        0,
        ["vllm2", "note: keys without a namespace (model, replicas)"],
        [],
    ),
    (
        "a key without namespace is named as written",
        "config:\n  model: org/model\n  loadBalancer:\n    port: 0\n",
        1,
        ["  config key 'loadBalancer.port': Input should be greater than or equal to 1"],
        [],
    ),
    (
        "a key Pulumi cannot parse",
        GOOD + "  vllm-nginx:lb:port: 9000\n",
        1,
        [
            "  config key 'vllm-nginx:lb:port': Pulumi cannot parse this as a configuration "
            "key: keys are `<namespace>:<name>`, here `vllm-nginx:<name>`"
        ],
        [],
    ),
    ("the old config-module form", "config:\n  vllm-nginx:config:model: org/model\n", 0, [], []),
    (
        "a dotted key gets the nesting hint",
        GOOD + "  vllm-nginx:loadBalancer.port: 9000\n",
        1,
        [
            "config key 'vllm-nginx:loadBalancer.port': unknown key; nested keys",
            "under `vllm-nginx:loadBalancer:`",
            "`pulumi config set --path 'loadBalancer.port' <value>`",
        ],
        [],
    ),
    (
        # PyYAML keeps the last value; Pulumi's yaml.v3 refuses the file.
        "a duplicate key is refused as Pulumi does",
        GOOD + "  vllm-nginx:replicas: 2\n  vllm-nginx:replicas: 3\n",
        1,
        ['Pulumi.s.yaml:4:3: invalid YAML: mapping key "vllm-nginx:replicas" already'],
        [],
    ),
    (
        "the same key with and without namespace",
        GOOD + "  model: other/model\n",
        1,
        ["config key 'model': is set twice (as 'vllm-nginx:model' and as 'model')"],
        [],
    ),
    (
        "config outside the config section",
        GOOD + "vllm-nginx:replicas: 4\n",
        1,
        ["key 'vllm-nginx:replicas' is at the top level of Pulumi.s.yaml"],
        [],
    ),
    (
        "an encrypted value of another key cannot be checked",
        GOOD + f"  vllm-nginx:replicas:\n    {SECURE}\n",
        1,
        ["config key 'vllm-nginx:replicas': is encrypted (secure:), so it cannot be"],
        [],
    ),
    (
        "another namespace is noted",
        GOOD + "  vllm_nginx:replicas: 4\n  docker:host: ssh://gpu\n  vllm-nginx:publicHost: gpu\n",
        0,
        ["note: 'vllm_nginx:replicas' is in namespace 'vllm_nginx'"],
        ["docker:host"],
    ),
]


@pytest.mark.parametrize(
    ("text", "code", "holds", "lacks"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_one_difference_from_a_good_stack(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    code: int,
    holds: list[str],
    lacks: list[str],
) -> None:
    found, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert found == code, err
    shown = out if code == 0 else err
    if code:
        assert out == ""
    for line in holds:
        assert line in shown
    for text_ in lacks:
        assert text_ not in shown


def test_every_problem_reported_once_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD + (
        "  vllm-nginx:apiKey: plain\n  vllm-nginx:replicas: 0\n  vllm-nginx:basePort: x\n"
        "  vllm-nginx:modle: y\n"
    )
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == "Pulumi.s.yaml: 4 problems; `pulumi up` would stop before creating anything:"
    keys = ["apiKey", "replicas", "basePort", "modle"]
    for key in keys:
        assert sum(f"'vllm-nginx:{key}'" in line for line in lines) == 1, (key, lines)


def test_yaml_syntax_error_gives_file_line_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD + "  vllm-nginx:loadBalancer:\n    port: 9000\n   policy: least_conn\n"
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    assert out == ""
    assert err.startswith("Pulumi.s.yaml:5:4: invalid YAML: ")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_yaml_12_scalars_as_pulumi_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # YAML 1.1 (PyYAML's default) would make `no` the boolean false.
    text = GOOD + "  vllm-nginx:restartPolicy: no\n"
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 0, err
    stack = read_stack_file(tmp_path / "Pulumi.s.yaml")
    assert stack.config["vllm-nginx:restartPolicy"] == "no"


def test_top_level_values_become_strings_as_in_pulumi(tmp_path: Path) -> None:
    text = GOOD + (
        "  vllm-nginx:replicas: 3\n  vllm-nginx:shmSizeMb: 1.0\n  vllm-nginx:servedModelName:\n"
        "  vllm-nginx:loadBalancer: {port: 9000, bufferRequests: false}\n"
        f"  vllm-nginx:extraEnv: {{A: {{{SECURE}}}}}\n"
    )
    stack = read_stack_file(project(tmp_path, s=text) / "Pulumi.s.yaml")
    assert stack.config["vllm-nginx:replicas"] == "3"
    assert stack.config["vllm-nginx:shmSizeMb"] == "1"
    assert stack.config["vllm-nginx:servedModelName"] == ""
    assert stack.config["vllm-nginx:loadBalancer"] == '{"port":9000,"bufferRequests":false}'
    assert stack.config["vllm-nginx:extraEnv"] == f'{{"A":"{SECRET_PLACEHOLDER}"}}'
    assert stack.secret == {"vllm-nginx:extraEnv"}


def test_missing_stack_file_lists_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = project(tmp_path, one=GOOD, two=GOOD)
    code, out, err = run(capsys, directory, "three")
    assert code == 1
    assert out == ""
    assert err == (
        f"Pulumi.three.yaml: no such stack file in {directory}; "
        "the stack files there are: Pulumi.one.yaml, Pulumi.two.yaml\n"
    )


def test_plan_failure_is_reported_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Passes the name rule alone, but the replica names then exceed 63 characters.
    text = GOOD + f"  vllm-nginx:namePrefix: {'a' * 63}\n"
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    assert out == ""
    assert err.startswith("Pulumi.s.yaml: 1 problem")


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ("", "missing"),
        (f"  vllm-nginx:hfToken:\n    {SECURE}\n", "set"),
    ],
)
def test_hf_token_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, status: str
) -> None:
    code, out, _ = run(capsys, project(tmp_path, s=GOOD + extra), "s", "--hf-token-status")
    assert code == 0
    assert out == f"{status}\n"


def test_hf_token_not_needed_for_a_local_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "config:\n  vllm-nginx:model: /models/llama\n"
    code, out, _ = run(capsys, project(tmp_path, s=text), "s", "--hf-token-status")
    assert (code, out) == (0, "not-needed\n")


def test_render_config_applies_the_same_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = project(
        tmp_path,
        plain=GOOD + "  vllm-nginx:hfToken: hf_abc\n",
        bare="config:\n  model: org/model\n  loadBalancer:\n    policy: round_robin\n",
    )
    monkeypatch.setattr(render_config, "PROJECT_DIR", directory)
    assert render_config.main(["--stack", "plain"]) == 2
    assert "config key 'vllm-nginx:hfToken': must be set with" in capsys.readouterr().err
    assert render_config.main(["--stack", "bare"]) == 0
    assert "least_conn" not in capsys.readouterr().out


def test_deployment_rules_of_pulumi_up_run_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`docker:host` in the stack file and the build checkout on disk, as `pulumi up` checks."""
    directory = project(
        tmp_path,
        remote="""\
config:
  docker:host: ssh://ops@gpu-box
  vllm-nginx:model: org/m
  vllm-nginx:image:
    build: {context: ../no-such-checkout}
""",
    )
    code, out, err = run(capsys, directory, "remote")
    assert code == 1
    assert "config key 'vllm-nginx:publicHost': must name the Docker host" in err
    assert "config key 'vllm-nginx:image.build.context': is not a directory" in err
    assert out == ""


MONITORED = GOOD + f"  vllm-nginx:grafanaPassword:\n    {SECURE}\n  vllm-nginx:monitoring:\n"


def test_monitoring_is_in_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MONITORED + "    enabled: true\n"
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 0, err
    lines = out.splitlines()
    start = lines.index(
        "  monitoring     Prometheus, Grafana and the load balancer's exporter; "
        "their data volumes are kept on `pulumi destroy`"
    )
    assert lines[start + 1 : start + 4] == [
        "    Prometheus   http://127.0.0.1:9090 (vllm-prometheus, published on 127.0.0.1:9090, "
        "volume vllm-prometheus-data)",
        "    Grafana      http://127.0.0.1:3000 (vllm-grafana, user admin, published on "
        "127.0.0.1:3000, volume vllm-grafana-data)",
        "    exporter     vllm-lb-exporter, not published (nginx sends it a line per request, "
        "Prometheus scrapes it on network vllm-nginx)",
    ]
    assert "no login" not in out


def test_monitoring_published_beyond_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        MONITORED
        + "    enabled: true\n    bindAddress: 0.0.0.0\n    keepDataOnDestroy: false\n"
        + "    prometheus: {name: prom, port: 9191}\n    grafana: {name: graf, port: 3300}\n"
        + "    lbExporter: {name: exp}\n  vllm-nginx:publicHost: gpu.lan\n"
        + "  vllm-nginx:networkName: llm\n"
    )
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 0, err
    assert "their data volumes are removed on `pulumi destroy`" in out
    assert "    Prometheus   http://gpu.lan:9191 (prom, published on 0.0.0.0:9191," in out
    assert (
        "    Grafana      http://gpu.lan:3300 (graf, user admin, published on 0.0.0.0:3300" in out
    )
    assert "    exporter     exp, not published (" in out
    assert "Prometheus scrapes it on network llm)" in out
    assert (
        "    Prometheus has no login: anyone who can reach port 9191 on this host can query it"
        in out
    )


def _indented(text: str, spaces: int) -> str:
    return "".join(f"{' ' * spaces}{line}\n" for line in text.splitlines())


@pytest.mark.parametrize("written", ["vllm-nginx:tlsKey", "tlsKey"])
def test_encrypted_tls_key_is_left_to_pulumi_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str
) -> None:
    """The check cannot decrypt the key, so it cannot compare it with the certificate."""
    pki = make_test_pki(tmp_path / "pki")
    certificate = Path(pki.server.certificate).read_text()
    text = (
        GOOD
        + "  vllm-nginx:loadBalancer:\n    tls: true\n  vllm-nginx:tlsCertificate: |\n"
        + _indented(certificate, 4)
        + f"  {written}:\n    {SECURE}\n"
    )
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 0, err
    assert err == ""
    assert "  load balancer  https://localhost:8000" in out
    about_match = [line for line in out.splitlines() if "'tlsCertificate'" in line]
    assert about_match == [
        f"note: '{written}' is encrypted (secure:), so whether it is the private key of "
        "'tlsCertificate' cannot be verified offline; `pulumi up` decrypts it and checks"
    ]


def test_encrypted_tls_key_without_a_certificate_is_still_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD + f"  vllm-nginx:loadBalancer:\n    tls: true\n  vllm-nginx:tlsKey:\n    {SECURE}\n"
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    assert err.splitlines()[1:3] == [
        "  config key 'vllm-nginx:tlsCertificate': is required with 'loadBalancer.tls' true",
        "note: secret values were not checked (vllm-nginx:tlsKey): they are encrypted in the "
        "stack file, so a placeholder that passes the value rules stood in for them",
    ]


def test_key_hint_in_a_host_entry_names_it_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "config:\n  model: org/model\n  hosts:\n"
        "    - {name: a, dockerHost: 'ssh://a', address: 10.0.0.1, replicas: 1}\n"
        "    - {name: b, docker_host: 'ssh://b', address: 10.0.0.2, replicas: 1}\n"
    )
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    assert (
        "  config key 'hosts[1].docker_host': unknown key; keys are camelCase: "
        "did you mean 'hosts[1].dockerHost'?"
    ) in err.splitlines()


def test_misspelt_keys_get_the_closest_key_named_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "config:\n  model: org/model\n  replcas: 1\n"
        "  vllm-nginx:loadBalancer:\n    bindadress: 0.0.0.0\n    prot: 9000\n"
        "  hosts:\n"
        "    - {name: a, dockerhost: 'ssh://a', address: 10.0.0.1, replicas: 1}\n"
    )
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    lines = err.splitlines()
    for line in (
        "  config key 'replcas': unknown key (a typo?): did you mean 'replicas'?",
        "  config key 'vllm-nginx:loadBalancer.bindadress': unknown key (a typo?): "
        "did you mean 'loadBalancer.bindAddress'?",
        "  config key 'vllm-nginx:loadBalancer.prot': unknown key (a typo?): "
        "did you mean 'loadBalancer.port'?",
        "  config key 'hosts[0].dockerhost': unknown key; keys are camelCase: "
        "did you mean 'hosts[0].dockerHost'?",
    ):
        assert line in lines, lines
    for written in ("'replcas'", ".bindadress'", ".prot'", ".dockerhost'"):
        assert sum(written in line for line in lines) == 1, (written, lines)


def _tls_stack(certificate: str, key: str, *, tls: bool = True) -> str:
    return (
        GOOD
        + f"  vllm-nginx:loadBalancer:\n    tls: {'true' if tls else 'false'}\n"
        + f"  vllm-nginx:tlsCertificate:\n{certificate}"
        + (f"  vllm-nginx:tlsKey:\n{key}" if key else "")
    )


ENCRYPTED = f"    {SECURE}\n"
PAIR_NOTE = (
    "note: 'vllm-nginx:tlsKey' is encrypted (secure:), as is 'tlsCertificate', so whether it "
    "is the private key of 'tlsCertificate' cannot be verified offline; `pulumi up` decrypts "
    "them and checks"
)


def test_encrypted_certificate_and_key_are_left_to_pulumi_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both halves are stand-ins: the check says the pair is unverified, never that it matches."""
    code, out, err = run(capsys, project(tmp_path, s=_tls_stack(ENCRYPTED, ENCRYPTED)), "s")
    assert code == 0, err
    assert err == ""
    assert "  load balancer  https://localhost:8000" in out
    assert [line for line in out.splitlines() if "'tlsCertificate'" in line] == [PAIR_NOTE]
    assert "cannot be checked without the Pulumi CLI" not in out


def test_encrypted_certificate_written_without_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "config:\n  model: org/model\n  loadBalancer:\n    tls: true\n"
        f"  tlsCertificate:\n{ENCRYPTED}  tlsKey:\n{ENCRYPTED}"
    )
    code, out, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 0, err
    assert PAIR_NOTE.replace("'vllm-nginx:tlsKey'", "'tlsKey'") in out.splitlines()


def test_encrypted_certificate_with_a_plain_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain key is the problem; its match with the stand-in certificate is no verdict."""
    key = Path(make_test_pki(tmp_path / "pki").server.key).read_text()
    text = _tls_stack(ENCRYPTED, "    |\n" + _indented(key, 6))
    code, _, err = run(capsys, project(tmp_path, s=text), "s")
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert problems == [
        "  config key 'vllm-nginx:tlsKey': must be set with `pulumi config set --secret tlsKey "
        "...` (it is stored in plain text)"
    ]
    assert (
        "note: 'vllm-nginx:tlsKey' is compared with the encrypted (secure:) 'tlsCertificate', "
        "so whether it is the private key of 'tlsCertificate' cannot be verified offline; "
        "`pulumi up` decrypts it and checks"
    ) in err.splitlines()
    assert "PRIVATE KEY" not in err


@pytest.mark.parametrize(
    ("tls", "key", "problem"),
    [
        (False, ENCRYPTED, "'vllm-nginx:tlsCertificate': is set but 'loadBalancer.tls' is false"),
        (True, "", "'vllm-nginx:tlsKey': is required with 'loadBalancer.tls' true"),
    ],
)
def test_encrypted_certificate_still_meets_the_rules_between_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls: bool, key: str, problem: str
) -> None:
    code, _, err = run(capsys, project(tmp_path, s=_tls_stack(ENCRYPTED, key, tls=tls)), "s")
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"  config key {problem}"), problems
