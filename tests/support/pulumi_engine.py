"""The real Pulumi engine for the end-to-end tests: the CLI, run on this project.

What is real: the Pulumi CLI and its engine (built from Go modules by
`scripts/pulumi-toolchain.sh`): step generation, replace and
delete-before-replace ordering, `replace_on_changes`, `ignore_changes`,
`retain_on_delete`, custom timeouts, secrets in state and the passphrase
provider, config loading from `Pulumi.<stack>.yaml`, `preview`, `refresh` and
`destroy`. The program is this repository's `__main__.py` with its own
`.venv`, as a user runs it.

What is ours: the three plugins the Go module proxy does not serve, each a
stand-in that follows the real one's source (cited in each):
`tests/support/docker_provider` (pulumi-docker 5.2.0) and `command_provider`
(pulumi-command 1.2.1), installed in the stack's `PULUMI_HOME` at those
versions, and `python_language_host` (pulumi-language-python, which runs the
Python SDK's own executor script), found on PATH.

A stack lives in a temporary copy of the project (symlinks to the program,
its own stack file) with a file backend and a `PULUMI_HOME` of its own, so a
test writes nothing into the repository and nothing outside its directory.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.docker_engine import REPO_ROOT, unavailable

NAMESPACE = "vllm-nginx"
PASSPHRASE = "e2e-passphrase"
LANGUAGE_HOST_DIR = REPO_ROOT / "tests" / "support" / "python_language_host" / "bin"
# What a user's project directory holds besides the stack files: the program,
# its virtualenv and what `pulumi up` reads or runs from it.
PROJECT_ENTRIES = (
    "__main__.py",
    "components",
    "scripts",
    "docker",
    "standin",
    "requirements.txt",
    "requirements-dev.txt",
    ".venv",
)


@functools.cache
def toolchain_bin() -> Path:
    """The directory of the built `pulumi`; fail in CI, skip locally when it is missing.

    Tests never start the build themselves (it takes minutes): `scripts/test.sh`
    runs the toolchain script before pytest, and a developer runs it once.
    """
    override = os.environ.get("PULUMI_TOOLCHAIN_BIN")
    if override:
        path = Path(override)
    else:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "pulumi-toolchain.sh"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            unavailable(
                "the Pulumi CLI is not built: run `bash scripts/pulumi-toolchain.sh` "
                f"({result.stderr.strip()})"
            )
        path = Path(result.stdout.strip().splitlines()[-1])
    if not (path / "pulumi").is_file():
        unavailable(f"no pulumi in {path}: run `bash scripts/pulumi-toolchain.sh`")
    return path


_SUPPORT = REPO_ROOT / "tests" / "support"
PLUGINS = {
    # kind-name-version as `pulumi plugin ls` names them: the versions the PyPI SDKs ask for.
    "resource-docker-v5.2.0": _SUPPORT / "docker_provider" / "bin" / "pulumi-resource-docker",
    "resource-command-v1.2.1": _SUPPORT / "command_provider" / "bin" / "pulumi-resource-command",
}


def install_plugins(home: Path) -> None:
    """Our stand-ins where `pulumi plugin install` puts a plugin, at the exact versions.

    Found there, the engine uses them as it would the real ones; found on PATH
    instead it would use them for any version and warn on every run.
    """
    for folder, launcher in PLUGINS.items():
        target = home / "plugins" / folder
        target.mkdir(parents=True, exist_ok=True)
        link = target / launcher.name
        if not link.exists():
            link.symlink_to(launcher)


def engine_env(home: Path, backend: Path) -> dict[str, str]:
    """Offline, non-interactive, with our plugins and the built CLI first on PATH."""
    path = os.pathsep.join([str(LANGUAGE_HOST_DIR), str(toolchain_bin())])
    return {
        **os.environ,
        "PATH": f"{path}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": backend.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_SKIP_CONFIRMATIONS": "true",
        "NO_COLOR": "1",
        # `--event-log` exists only with it (pkg/cmd/pulumi/operations/up.go:1023-1027
        # at v3.274.1); the Automation API sets it for the same reason.
        "PULUMI_DEBUG_COMMANDS": "true",
    }


def project_copy(directory: Path, program: Path | None = None) -> dict[str, str]:
    """This project under `directory/project` as a user has it, and the environment to run it.

    The program, `.venv` and scripts are symlinks to the repository; state
    (`directory/state`) and `PULUMI_HOME` (`directory/home`, with the stand-in
    plugins installed) are the copy's own. `program`: another project directory
    (its `Pulumi.yaml` and `__main__.py`) run on this repository's `.venv`.
    """
    project, home, backend = directory / "project", directory / "home", directory / "state"
    for path in (project, home, backend):
        path.mkdir(parents=True, exist_ok=True)
    source = program or REPO_ROOT
    links = {entry: source / entry for entry in PROJECT_ENTRIES}
    if program is not None:
        links = {"__main__.py": program / "__main__.py", ".venv": REPO_ROOT / ".venv"}
    for entry, target in links.items():
        link = project / entry
        if not link.exists():
            link.symlink_to(target)
    (project / "Pulumi.yaml").write_text((source / "Pulumi.yaml").read_text())
    install_plugins(home)
    return engine_env(home, backend)


class PulumiFailed(AssertionError):
    """A CLI command exited non-zero; the message carries its output."""

    def __init__(self, args: Sequence[str], code: int, output: str) -> None:
        super().__init__(f"pulumi {' '.join(args)} exited {code}:\n{output[-6000:]}")
        self.code = code
        self.output = output
        self.result = Result(output)
        """The failed operation's steps and messages, from its event log."""


@dataclass(frozen=True)
class Step:
    """One resource step the engine reported, in the order it reported them."""

    sequence: int
    kind: str
    """`pre` when the step starts, `outputs` when it is done, `failed`."""
    op: str
    """The engine's operation: create, update, replace, delete, same, read, refresh, ..."""
    urn: str
    timestamp: int

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    @property
    def type(self) -> str:
        return self.urn.rsplit("::", 2)[-2].rsplit("$", 1)[-1]


@dataclass
class Result:
    """What one `up`/`preview`/`refresh`/`destroy` printed and the steps it took."""

    output: str
    steps: list[Step] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    """(resource name, line) of every message the engine reported on a resource, in order."""

    def ops(self, name: str) -> list[str]:
        """The operations done to the resource called `name`, in order (no `same`)."""
        return [s.op for s in self.steps if s.name == name and s.kind == "pre" and s.op != "same"]

    def changed(self) -> dict[str, list[str]]:
        """Every resource with an operation other than `same`."""
        found: dict[str, list[str]] = {}
        for step in self.steps:
            if step.kind == "pre" and step.op not in {"same", "read"}:
                found.setdefault(step.name, []).append(step.op)
        return found

    def logged(self, name: str) -> list[str]:
        """What the resource called `name` logged, in order (a command's output lines)."""
        return [text for resource, text in self.messages if resource == name]

    def index(self, name: str, kind: str = "pre", op: str | None = None) -> int:
        """Position of the first such step, to compare orders; raises if absent."""
        for position, step in enumerate(self.steps):
            if step.name == name and step.kind == kind and (op is None or step.op == op):
                return position
        raise AssertionError(f"no {kind} step {op or ''} for {name}: {self.changed()}")


def _messages(event_log: Path) -> list[tuple[str, str]]:
    """The diagnostics reported on a resource: a command's output lines (pulumi-command
    logs them as ephemeral info), a provider's warnings."""
    found: list[tuple[str, str]] = []
    if not event_log.exists():
        return found
    for line in event_log.read_text().splitlines():
        body = json.loads(line).get("diagnosticEvent")
        if body and body.get("urn") and body.get("severity") != "debug":
            found.append((body["urn"].rsplit("::", 1)[-1], body.get("message", "").strip()))
    return found


def _steps(event_log: Path) -> list[Step]:
    steps: list[Step] = []
    if not event_log.exists():
        return steps
    for line in event_log.read_text().splitlines():
        event = json.loads(line)
        for key, kind in (
            ("resourcePreEvent", "pre"),
            ("resOutputsEvent", "outputs"),
            ("resOpFailedEvent", "failed"),
        ):
            body = event.get(key)
            if body is None:
                continue
            metadata = body.get("metadata", {})
            steps.append(
                Step(
                    event.get("sequence", 0),
                    kind,
                    metadata.get("op", ""),
                    metadata.get("urn", ""),
                    event.get("timestamp", 0),
                )
            )
    return steps


def _as_yaml_value(value: Any) -> Any:
    """Stack files hold objects and lists as YAML, scalars as written."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        return json.loads(value)
    return value


class Stack:
    """A stack of this project under the real CLI, in its own directory.

    `config` is written into `Pulumi.<name>.yaml` as a user writes it (objects
    as YAML); `secrets` go through `pulumi config set --secret`, so they are
    encrypted in the file with the passphrase provider, as in production.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        program: Path | None = None,
    ) -> None:
        self.name = name
        self.root = directory
        self.project = directory / "project"
        self.home = directory / "home"
        self.backend = directory / "state"
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**project_copy(directory, program), **(env or {})}
        self._count = 0
        # `--stack NAME` is added by `run`; a positional name as well is refused.
        self.run("stack", "init", "--non-interactive")
        self.write_config(config)
        for key, value in (secrets or {}).items():
            self.set_secret(key, value)

    @property
    def stack_file(self) -> Path:
        return self.project / f"Pulumi.{self.name}.yaml"

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Set plain keys (without the namespace) in the stack file, keeping the rest."""
        document = yaml.safe_load(self.stack_file.read_text()) if self.stack_file.exists() else {}
        document = document or {}
        values = document.setdefault("config", {})
        for key, value in config.items():
            full = key if ":" in key else f"{NAMESPACE}:{key}"
            if value is None:
                values.pop(full, None)
            else:
                values[full] = _as_yaml_value(value)
        self.stack_file.write_text(yaml.safe_dump(document, sort_keys=True))

    def set_secret(self, key: str, value: str) -> None:
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        # From stdin, never argv: a secret on a command line shows in `ps`.
        self.run("config", "set", "--secret", full, input=value)

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 900,
    ) -> str:
        """`pulumi ARGS --stack NAME` in the project directory; its whole output."""
        self._count += 1
        log = self.logs / f"{self._count:02d}-{args[0]}.log"
        command = ["pulumi", *args]
        if args[0] not in {"login", "whoami", "version", "plugin"}:
            command += ["--stack", self.name]
        started = time.monotonic()
        result = subprocess.run(
            command,
            cwd=self.project,
            env=self.env,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        log.write_text(
            f"$ {' '.join(command)}\n{result.stdout}\n"
            f"exit {result.returncode} after {time.monotonic() - started:.1f}s\n"
        )
        if check and result.returncode != 0:
            raise PulumiFailed(args, result.returncode, result.stdout)
        return result.stdout

    def _operation(self, verb: str, *args: str, check: bool = True) -> Result:
        events = self.logs / f"{self._count + 1:02d}-{verb}.events.jsonl"
        try:
            output = self.run(
                verb, "--non-interactive", "--event-log", str(events), *args, check=check
            )
        except PulumiFailed as failed:
            failed.result = Result(failed.output, _steps(events), _messages(events))
            raise
        return Result(output, _steps(events), _messages(events))

    def up(self, *args: str) -> Result:
        """`pulumi up --yes --skip-preview`: what `deploy.sh` runs after its preview."""
        return self._operation("up", "--yes", "--skip-preview", *args)

    def up_failing(self, *args: str) -> PulumiFailed:
        """An `up` that must fail: the failure, with the output the user saw."""
        try:
            self.up(*args)
        except PulumiFailed as failed:
            return failed
        raise AssertionError("pulumi up succeeded but was expected to fail")

    def preview(self, *args: str, expect_no_changes: bool = False) -> Result:
        extra = ("--expect-no-changes",) if expect_no_changes else ()
        return self._operation("preview", *extra, *args)

    def refresh(self, *args: str, expect_no_changes: bool = False) -> Result:
        extra = ("--expect-no-changes",) if expect_no_changes else ()
        return self._operation("refresh", "--yes", "--skip-preview", *extra, *args)

    def destroy(self, *args: str) -> Result:
        return self._operation("destroy", "--yes", "--skip-preview", *args)

    def outputs(self, show_secrets: bool = True) -> dict[str, Any]:
        extra = ("--show-secrets",) if show_secrets else ()
        parsed: dict[str, Any] = json.loads(self.run("stack", "output", "--json", *extra))
        return parsed

    def export(self) -> dict[str, Any]:
        """`pulumi stack export --show-secrets`: every resource with its inputs and outputs."""
        parsed: dict[str, Any] = json.loads(self.run("stack", "export", "--show-secrets"))
        return parsed

    def resources(self) -> dict[str, dict[str, Any]]:
        """The stack's resources by name (the stack and providers left out)."""
        found: dict[str, dict[str, Any]] = {}
        for resource in self.export().get("deployment", {}).get("resources", []) or []:
            if resource["type"].startswith("pulumi:"):
                continue
            found[resource["urn"].rsplit("::", 1)[-1]] = resource
        return found

    def state(self) -> str:
        """The stack's state file as the backend stores it (for secrets checks)."""
        found = list((self.backend / ".pulumi" / "stacks").rglob(f"{self.name}.json"))
        assert found, "no state file"
        return found[0].read_text()

    def logs_text(self, events: bool = False) -> str:
        """What the user saw of every `up`, `preview`, `refresh` and `destroy` so far;
        with `events`, their event logs too (what the engine wrote to disk)."""
        verbs = {"up", "preview", "refresh", "destroy"}
        paths = [p for p in sorted(self.logs.glob("*.log")) if p.stem.split("-", 1)[1] in verbs]
        if events:
            paths += sorted(self.logs.glob("*.events.jsonl"))
        return "\n".join(path.read_text() for path in paths)


def stack_config_of(stack_file: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stack file's config keys (without the namespace), with `overrides` on top."""
    document = yaml.safe_load(stack_file.read_text())
    config: dict[str, Any] = {}
    for key, value in document.get("config", {}).items():
        namespace, _, name = key.partition(":")
        config[name if namespace == NAMESPACE else key] = value
    config.update(overrides or {})
    return config


SECRET_SIGNATURE = "4dabf18193072939515e22adb298388d"
"""The key Pulumi marks a secret value with in state and exports (`sig.Secret`)."""


def is_secret(value: Any) -> bool:
    """A value the state or an export holds as a secret (encrypted or, shown, in plaintext)."""
    return isinstance(value, dict) and SECRET_SIGNATURE in value


def reveal(value: Any) -> Any:
    """A value from `export()`/`resources()` with every secret as its plain value
    (`--show-secrets` gives each as its signature and its JSON text), recursively."""
    if is_secret(value):
        assert "plaintext" in value, "an encrypted secret: export with --show-secrets"
        return reveal(json.loads(value["plaintext"]))
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


def names(steps: Iterable[Step]) -> list[str]:
    return [step.name for step in steps]
