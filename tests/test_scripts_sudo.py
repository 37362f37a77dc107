"""scripts/base-image.sh and scripts/docker-engine.sh for a user who is not root.

As root they run as they are (the Docker tests use that path); as another user
they must run themselves again through sudo, and without sudo say what they
need. A recording fake `sudo` shows the re-run without touching the engine.
Needs root itself (to switch to the `nobody` user), so it is skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("su") is None, reason="needs root to run as nobody"
)


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """The scripts and a fake sudo where `nobody` can read them."""
    directory = Path(tempfile.mkdtemp(prefix="vllm-nginx-sudo-"))
    try:
        directory.chmod(0o755)
        for name in ("base-image.sh", "docker-engine.sh"):
            shutil.copy(ROOT / "scripts" / name, directory / name)
        fake = directory / "bin" / "sudo"
        fake.parent.mkdir()
        fake.write_text('#!/bin/sh\necho "sudo $*"\n')
        for path in (directory / "bin", fake, *directory.glob("*.sh")):
            path.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory)


def as_nobody(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["su", "nobody", "-s", "/bin/bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("script", "args"), [("base-image.sh", ""), ("docker-engine.sh", "start")])
def test_non_root_runs_again_through_sudo(world_readable: Path, script: str, args: str) -> None:
    path = world_readable / script
    result = as_nobody(f"PATH={world_readable}/bin:/usr/bin:/bin bash {path} {args}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sudo --preserve-env="), result.stdout
    assert result.stdout.rstrip().endswith(f"bash {path} {args}".rstrip())


@pytest.mark.parametrize(("script", "args"), [("base-image.sh", ""), ("docker-engine.sh", "start")])
def test_non_root_without_sudo_says_what_it_needs(
    world_readable: Path, script: str, args: str
) -> None:
    if shutil.which("sudo", path="/usr/bin:/bin"):
        pytest.skip("a real sudo is installed")
    result = as_nobody(f"PATH=/usr/bin:/bin bash {world_readable / script} {args}")
    assert result.returncode == 1
    assert "run as root, or install and set up sudo" in result.stderr
