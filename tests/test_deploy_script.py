"""scripts/deploy.sh, the README's deploy command, with a recording stand-in for the CLI.

The Pulumi CLI cannot be installed on these machines, so a fake `pulumi` on
PATH records what the script asks of it. This proves the script's own steps
(install, validate, local login, stack selection, `up` with the user's
arguments) and that a bad stack file stops it before Pulumi is called; it does
not prove anything about Pulumi itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, stack: str, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "calls"
    fake = bin_dir / "pulumi"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("PULUMI_BACKEND_URL", None)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy.sh"), stack, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, record.read_text() if record.exists() else ""


def test_deploys_with_local_backend(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "dev", "--yes")
    assert result.returncode == 0, result.stderr
    assert calls.splitlines() == ["login --local", "stack select dev --create", "up --yes"]


def test_bad_stack_file_stops_before_pulumi(tmp_path: Path) -> None:
    stack = "broken-test"
    path = ROOT / f"Pulumi.{stack}.yaml"
    shutil.copy(ROOT / "Pulumi.dev.yaml", path)
    try:
        with path.open("a") as handle:
            handle.write("  vllm-nginx:replicas: 0\n")
        result, calls = _run(tmp_path, stack)
    finally:
        path.unlink()
    assert result.returncode != 0
    assert "config key 'vllm-nginx:replicas'" in result.stderr
    assert calls == ""


@pytest.mark.parametrize("stack", ["nope"])
def test_unknown_stack(tmp_path: Path, stack: str) -> None:
    result, calls = _run(tmp_path, stack)
    assert result.returncode == 1
    assert f"no Pulumi.{stack}.yaml" in result.stderr
    assert calls == ""
