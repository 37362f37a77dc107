"""The real Pulumi CLI from scripts/pulumi-toolchain.sh, driven offline by the Automation API.

The script builds the CLI from Go modules once (10 to 14 minutes on 2 cores, then
cached). In CI a missing toolchain is built here and a failed build fails the
test; locally the test is skipped until the script has been run once, so a plain
pytest run never starts that build by itself.

No Python language host can be built (the Go module proxy does not serve it), so
the program runs inline: the Automation API serves it from this process and the
engine connects to it. What this proves about the real engine: create, no change,
delete on a file backend with nothing fetched from the network; a secret config
value through the passphrase provider; a Python dynamic provider started by the
engine (the `pulumi-resource-pulumi-python` plugin the script puts beside the CLI).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pulumi
import pytest
from pulumi import automation as auto
from pulumi.dynamic import CreateResult, Resource, ResourceProvider
from semver import VersionInfo

from tests.support.docker_engine import in_ci

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pulumi-toolchain.sh"


@pytest.fixture(scope="session")
def pulumi_root() -> Path:
    """The toolchain's root (`<root>/bin/pulumi`), built first in CI if missing."""
    check = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        if not in_ci():
            pytest.skip(f"no Pulumi toolchain yet; run `bash {SCRIPT}` once (10 to 14 min)")
        check = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600)
        if check.returncode != 0:
            pytest.fail(f"{SCRIPT.name} failed:\n{check.stderr[-3000:]}", pytrace=False)
    return Path(check.stdout.splitlines()[-1]).parent


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    """What a test of the real engine sets: no update check, no plugin download, local state."""
    (tmp_path / "state").mkdir()
    for name, value in {
        "PULUMI_HOME": str(tmp_path / "home"),  # plugins, workspaces and the CLI's own logs
        "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "test passphrase",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PYTHON_CMD": sys.executable,  # what pulumi-resource-pulumi-python runs
    }.items():
        monkeypatch.setenv(name, value)


def _program() -> None:
    # Defined in here so that dill pickles the provider by value: the engine starts
    # the provider in a process that cannot import this test module.
    class Echo(ResourceProvider):
        def create(self, props):
            out = subprocess.run(["echo", props["text"]], capture_output=True, text=True)
            return CreateResult(id_="echo", outs={**props, "stdout": out.stdout.strip()})

    class EchoCommand(Resource):
        stdout: pulumi.Output[str]

        def __init__(self, name: str, text: str) -> None:
            super().__init__(Echo(), name, {"text": text, "stdout": None})

    secret = pulumi.Config().require_secret("token")
    stash = pulumi.Stash("stash", input="kept")  # a custom resource of the engine's own
    echo = EchoCommand("echo", "hi")
    pulumi.export("stashed", stash.output)
    pulumi.export("token", secret)
    pulumi.export("token_plain", pulumi.Output.unsecret(secret))
    pulumi.export("echoed", echo.stdout)


def test_cli_is_not_older_than_the_python_sdk(pulumi_root, offline) -> None:
    cli = auto.PulumiCommand(root=str(pulumi_root))  # the SDK's own version check runs here
    assert cli.version is not None
    assert cli.version >= VersionInfo.parse(version("pulumi"))


def test_up_preview_destroy_offline(pulumi_root, offline) -> None:
    cli = auto.PulumiCommand(root=str(pulumi_root))
    stack = auto.create_stack(
        "test",
        project_name="toolchain",
        program=_program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=cli),
    )
    stack.set_config("token", auto.ConfigValue("s3cr3t", secret=True))
    stack_file = Path(stack.workspace.work_dir) / "Pulumi.test.yaml"
    assert "secure: v1:" in stack_file.read_text()
    assert "s3cr3t" not in stack_file.read_text()
    token = stack.get_config("token")
    assert (token.value, token.secret) == ("s3cr3t", True)

    up = stack.up()
    assert up.summary.result == "succeeded"
    assert up.summary.resource_changes == {"create": 3}
    outputs = {name: (out.value, out.secret) for name, out in up.outputs.items()}
    assert outputs == {
        "stashed": ("kept", False),
        "token": ("s3cr3t", True),
        "token_plain": ("s3cr3t", False),
        "echoed": ("hi", False),
    }

    stack.preview(expect_no_changes=True)

    down = stack.destroy()
    assert down.summary.resource_changes == {"delete": 3}
    stack.workspace.remove_stack("test")
