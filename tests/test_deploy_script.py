"""scripts/deploy.sh, the README's deploy command: its branches, and once end to end.

Most tests put a fake `pulumi` on PATH that records what the script asks of
it (`whoami` succeeds only when the test gives it a backend): the script's own
steps, quickly (the install hint without a CLI, the check before any Pulumi
call, keeping the user's backend, local login only when there is none, stack
selection, the Hugging Face token question, `up` with the user's arguments).
The last test runs it end to end with the real Pulumi CLI, without a terminal.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.support.docker_engine import (
    BASE_IMAGE_TAG,
    STANDIN_TAG,
    base_image,
    docker_client,
    remove_named,
    standin_image,
)
from tests.support.pulumi_engine import project_copy, stack_config_of

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "deploy.sh"

FAKE_PULUMI = """#!/bin/sh
echo "$@" >> {record}
if [ "$1" = whoami ]; then
    [ -n "$FAKE_BACKEND" ] || {{ echo "error: not logged in" >&2; exit 255; }}
    [ "$2" = --verbose ] && echo "Backend URL: $FAKE_BACKEND"
    echo someone
fi
exit 0
"""


def _path_without_pulumi() -> str:
    return ":".join(
        d for d in os.environ["PATH"].split(":") if d and not (Path(d) / "pulumi").exists()
    )


def _run(
    tmp_path: Path,
    *args: str,
    backend: str | None = None,
    with_cli: bool = True,
    env_extra: dict[str, str] | None = None,
    tty: bool = False,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "calls"
    path = _path_without_pulumi()
    if with_cli:
        fake = bin_dir / "pulumi"
        fake.write_text(FAKE_PULUMI.format(record=record))
        fake.chmod(0o755)
        path = f"{bin_dir}:{path}"
    env = {**os.environ, "PATH": path}
    env.pop("PULUMI_BACKEND_URL", None)
    env.pop("FAKE_BACKEND", None)
    if backend is not None:
        env["FAKE_BACKEND"] = backend
    env.update(env_extra or {})
    if tty:
        controller, terminal = pty.openpty()
        try:
            result = subprocess.run(
                ["bash", str(SCRIPT), *args],
                env=env,
                stdin=terminal,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            os.close(terminal)
            os.close(controller)
    else:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
    calls = record.read_text().splitlines() if record.exists() else []
    return result, calls


@pytest.fixture
def stack_file() -> Iterator[tuple[str, Path]]:
    """A throw-away stack file in the project (deploy.sh reads Pulumi.<stack>.yaml there)."""
    name = f"deploy-test-{os.getpid()}"
    path = ROOT / f"Pulumi.{name}.yaml"
    shutil.copy(ROOT / "Pulumi.dev.yaml", path)
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)


def test_without_cli_prints_the_official_installer(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", with_cli=False)
    assert result.returncode == 1
    assert "curl -fsSL https://get.pulumi.com | sh" in result.stderr
    assert "https://www.pulumi.com/docs/install/" in result.stderr
    assert calls == []


def test_keeps_the_existing_backend(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", "--no-token", "--yes", backend="https://api.example")
    assert result.returncode == 0, result.stderr
    assert not any(c.startswith("login") for c in calls), calls
    assert calls[-2:] == ["stack select dev --create", "up --stack dev --yes"]
    assert "using your current Pulumi backend: https://api.example" in result.stderr


def test_no_backend_logs_in_locally_and_says_how_to_choose(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", "--no-token")
    assert result.returncode == 0, result.stderr
    assert calls == ["whoami", "login --local", "stack select dev --create", "up --stack dev"]
    assert "local backend" in result.stderr
    assert "pulumi login <url>" in result.stderr
    assert "PULUMI_BACKEND_URL" in result.stderr


def test_backend_url_that_does_not_answer_is_not_replaced(tmp_path: Path) -> None:
    result, calls = _run(
        tmp_path, "dev", "--no-token", env_extra={"PULUMI_BACKEND_URL": "s3://bucket"}
    )
    assert result.returncode == 1
    assert "pulumi login s3://bucket" in result.stderr
    assert calls == ["whoami"]


def test_bad_stack_file_stops_before_pulumi(tmp_path: Path, stack_file: tuple[str, Path]) -> None:
    name, path = stack_file
    path.write_text(path.read_text().replace("vllm-nginx:replicas: 2", "vllm-nginx:replicas: 0"))
    result, calls = _run(tmp_path, name, "--no-token", backend="file://~")
    assert result.returncode == 1
    assert "config key 'vllm-nginx:replicas'" in result.stderr
    assert calls == []


def test_missing_token_non_interactive_stops_with_the_command(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", backend="file://~")
    assert result.returncode == 1
    assert "pulumi config set --secret hfToken --stack dev" in result.stderr
    assert "--no-token" in result.stderr
    assert not any(c.startswith(("up", "config")) for c in calls), calls


def test_missing_token_on_a_terminal_is_asked_for(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", backend="file://~", tty=True)
    assert result.returncode == 0, result.stderr
    assert calls[-2:] == ["config set --secret hfToken --stack dev", "up --stack dev"]


def test_token_already_set_is_not_asked_for(tmp_path: Path, stack_file: tuple[str, Path]) -> None:
    name, path = stack_file
    with path.open("a") as handle:
        handle.write("  vllm-nginx:hfToken:\n    secure: v1:c2FsdA==:ZW5jcnlwdGVk\n")
    result, calls = _run(tmp_path, name, backend="file://~")
    assert result.returncode == 0, result.stderr
    assert calls[-1] == f"up --stack {name}"
    assert not any(c.startswith("config") for c in calls)


def test_unknown_stack_lists_the_stack_files(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "nope", backend="file://~")
    assert result.returncode == 1
    assert "no Pulumi.nope.yaml" in result.stderr
    assert "Pulumi.dev.yaml" in result.stderr
    assert calls == []


def test_setup_is_idempotent_and_says_what_next() -> None:
    # The venv exists already (tests run from it): setup keeps it and pip has nothing to do.
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "using the existing .venv" in result.stderr
    assert ".venv/bin/python -m components.cli.check --stack dev" in result.stderr
    assert "bash scripts/deploy.sh dev" in result.stderr


@pytest.mark.docker
def test_deploy_script_end_to_end_with_the_real_cli(tmp_path: Path) -> None:
    """The README's deploy command, no terminal, the real CLI: a working endpoint, then destroy.

    Everything above runs a recording fake; this runs `scripts/deploy.sh` in a
    copy of the project with the real Pulumi CLI (and our stand-in plugins,
    tests/support/pulumi_engine.py) against the real Docker engine.
    """
    client = docker_client()
    base_image(client)
    standin_image(client)
    prefix = "e2e-deploy"
    config = stack_config_of(
        ROOT / "Pulumi.ci.yaml",
        {
            "namePrefix": prefix,
            "networkName": f"{prefix}-net",
            "hfCache": {"volume": f"{prefix}-cache"},
            "replicas": 1,
            "basePort": 18281,
            "loadBalancer": {
                "name": f"{prefix}-lb",
                "port": 18280,
                "bindAddress": "127.0.0.1",
                "image": BASE_IMAGE_TAG,
                "dynamicResolve": False,
            },
            "image": {"prebuilt": STANDIN_TAG},
        },
    )
    env = project_copy(tmp_path)
    project = tmp_path / "project"
    document = {"config": {f"vllm-nginx:{key}": value for key, value in config.items()}}
    (project / "Pulumi.deploy.yaml").write_text(yaml.safe_dump(document))
    try:
        result = subprocess.run(
            ["bash", "scripts/deploy.sh", "deploy", "--no-token", "--yes"],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "checking Pulumi.deploy.yaml" in result.stderr
        assert "using your current Pulumi backend" in result.stderr
        models = openai.OpenAI(
            base_url="http://127.0.0.1:18280/v1", api_key="none", max_retries=0, timeout=30
        ).models.list()
        assert [m.id for m in models.data] == ["tiny-chat"]
    finally:
        subprocess.run(
            ["pulumi", "destroy", "--yes", "--skip-preview", "--stack", "deploy"],
            cwd=project,
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
        remove_named(
            client,
            containers=(f"{prefix}-lb", f"{prefix}0"),
            networks=[f"{prefix}-net"],
            volumes=[f"{prefix}-cache"],
        )
