"""The pip toolchain of the real host: runtime options, the virtualenv, pip, python.

Follows the Go package `github.com/pulumi/pulumi/sdk/v3/python/toolchain` at v3.274.1
(in the Go module cache the toolchain script fills: `sdk/v3@v3.274.1/python/toolchain/`),
cited below as `toolchain.go:N` and `pip.go:N`, and the option parsing of the host itself
(`main.go:N`, sdk/python/cmd/pulumi-language-python/main.go). Only the pip toolchain is
here: a project that asks for uv or poetry, or that the real host would detect as one
(a `uv.lock` / `poetry.lock` above the program), gets an error saying so.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

Writer = Callable[[str], None]
"""Where a step's output goes (the engine's log, an InstallDependencies stream)."""


class ToolchainError(Exception):
    """A failure the real host returns as an error; the message is the one users see."""


class Kind(enum.Enum):
    """toolchain.go:48-57; the names are `toolchain.Name` (toolchain.go:116-129)."""

    AUTO = "Auto"
    PIP = "Pip"
    POETRY = "Poetry"
    UV = "Uv"


class TypeChecker(enum.Enum):
    """toolchain.go:37-46; the names are `toolchain.TypeCheckerName` (toolchain.go:131-142)."""

    NONE = "None"
    MYPY = "Mypy"
    PYRIGHT = "Pyright"


@dataclass(frozen=True)
class Options:
    """`toolchain.PythonOptions` (toolchain.go:59-70)."""

    root: str
    program_dir: str
    virtualenv: str = ""
    typechecker: TypeChecker = TypeChecker.NONE
    toolchain: Kind = Kind.AUTO


def go_quote(text: str) -> str:
    """Go's `%q` for the paths and values that appear in messages."""
    return json.dumps(text, ensure_ascii=False)


def parse_options(
    root: str, program_dir: str, options: Mapping[str, object], is_plugin: bool
) -> Options:
    """`parseOptions` (main.go:233-291): Pulumi.yaml's `runtime.options`, checked."""
    virtualenv = ""
    if "virtualenv" in options:
        value = options["virtualenv"]
        if not isinstance(value, str):
            raise ToolchainError("virtualenv option must be a string")
        virtualenv = value
    typechecker = TypeChecker.NONE
    if "typechecker" in options:
        value = options["typechecker"]
        if not isinstance(value, str):
            raise ToolchainError("typechecker option must be a string")
        checkers = {"mypy": TypeChecker.MYPY, "pyright": TypeChecker.PYRIGHT}
        if value not in checkers:
            raise ToolchainError(f"unsupported typechecker option: {value}")
        typechecker = checkers[value]
    kind = Kind.AUTO
    if "toolchain" in options:
        value = options["toolchain"]
        if not isinstance(value, str):
            raise ToolchainError("toolchain option must be a string")
        kinds = {"pip": Kind.PIP, "poetry": Kind.POETRY, "uv": Kind.UV}
        if value not in kinds:
            raise ToolchainError(f"unsupported toolchain option: {value}")
        kind = kinds[value]
    # Plugins never run on the ambient Python: pip (or no choice) means ./venv (main.go:280-288).
    if is_plugin and kind in (Kind.PIP, Kind.AUTO) and not virtualenv:
        virtualenv = "venv"
    return Options(root, program_dir, virtualenv, typechecker, kind)


def _search_up(start: str, name: str) -> Path | None:
    """`searchup` (toolchain.go:275-287): the file in `start` or the nearest parent."""
    directory = Path(start)
    while True:
        if (directory / name).exists():
            return directory / name
        if directory.parent == directory:
            return None
        directory = directory.parent


def resolve(options: Options) -> Pip:
    """`ResolveToolchain` (toolchain.go:144-174), for the pip case only."""
    kind = options.toolchain
    if kind is Kind.AUTO:
        # Auto picks uv, then poetry, by their lock files above the program (toolchain.go:146-160).
        if _search_up(options.program_dir, "uv.lock") is not None:
            kind = Kind.UV
        elif _search_up(options.program_dir, "poetry.lock") is not None:
            kind = Kind.POETRY
        else:
            kind = Kind.PIP
    if kind is not Kind.PIP:
        raise ToolchainError(
            f"the {kind.value.lower()} toolchain is not supported by this pulumi-language-python "
            "stand-in (tests/support/python_language_host), only pip"
        )
    return Pip(options.root, options.virtualenv)


def activate_virtualenv(environ: Mapping[str, str], venv: str) -> dict[str, str]:
    """`ActivateVirtualEnv` (toolchain.go:176-211): venv/bin first on PATH, VIRTUAL_ENV set,
    PYTHONHOME removed (keys compared case-insensitively, as the Go code does)."""
    bin_dir = os.path.join(venv, "bin")
    result: dict[str, str] = {}
    has_path = False
    for key, value in environ.items():
        upper = key.upper()
        if upper == "PATH":
            has_path = True
            result[key] = bin_dir + os.pathsep + value
        elif upper in ("PYTHONHOME", "VIRTUAL_ENV"):
            continue
        else:
            result[key] = value
    if not has_path:
        result["PATH"] = bin_dir
    result["VIRTUAL_ENV"] = venv
    return result


def is_virtualenv(directory: str) -> bool:
    """`IsVirtualEnv` (pip.go:316-326): a `bin/python` that is not a directory."""
    python = Path(directory, "bin", "python")
    return python.exists() and not python.is_dir()


def python_command_path() -> str:
    """`CommandPath` (pip.go:328-369): PULUMI_PYTHON_CMD, else python3, else python, on PATH."""
    wanted = os.environ.get("PULUMI_PYTHON_CMD", "")
    candidates = [wanted] if wanted else ["python3", "python"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise ToolchainError(
        f"failed to locate any of {_go_list(candidates)} on your PATH. "
        "Have you installed Python 3.10 or greater?"
    )


def _go_list(items: Sequence[str]) -> str:
    return "[" + " ".join(go_quote(item) for item in items) + "]"


def virtualenv_error(option: str, full_path: str) -> ToolchainError:
    """`NewVirtualEnvError` (pip.go:442-463): what to run to make the virtualenv."""
    python = os.path.join(full_path, "bin", "python")
    state = "doesn't appear to be a virtual environment"
    if not os.path.exists(full_path):
        state = "doesn't exist"
    commands = (
        f"    1. python3 -m venv {full_path}\n"
        f"    2. {python} -m pip install --upgrade pip setuptools wheel\n"
        f"    3. {python} -m pip install -r requirements.txt\n"
    )
    return ToolchainError(
        f"The 'virtualenv' option in Pulumi.yaml is set to {go_quote(option)}, but "
        f"{go_quote(full_path)} {state}; run the following commands to create the virtual "
        f"environment and install dependencies into it:\n\n{commands}\n\n"
        "For more information see: "
        "https://www.pulumi.com/docs/intro/languages/python/#virtual-environments"
    )


def exit_error(returncode: int) -> str:
    """What Go's `*exec.ExitError` says: `exit status N`, or `signal: killed`."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.strsignal(-returncode) or str(-returncode)
    except ValueError:
        name = str(-returncode)
    return f"signal: {name.lower()}"


def _pump(stream: IO[bytes], sink: Writer | None, keep: list[bytes]) -> None:
    # Straight from the pipe: output is passed on as the command writes it.
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(fd, 65536):
        keep.append(chunk)
        if sink is not None:
            sink(decoder.decode(chunk))
    if sink is not None and (tail := decoder.decode(b"", final=True)):
        sink(tail)


@dataclass(frozen=True)
class Finished:
    returncode: int | None
    """None: the command never started."""
    stdout: str
    stderr: str
    start_error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def failure(self) -> str:
        """What Go's error for this run says ("" when it succeeded)."""
        if self.returncode is None:
            return self.start_error
        return "" if self.returncode == 0 else exit_error(self.returncode)


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    info: Writer | None = None,
    error: Writer | None = None,
) -> Finished:
    """Run a command to its end, its output passed on as it comes and kept."""
    try:
        process = subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        return Finished(None, "", "", start_error(argv[0], exc))
    assert process.stdout is not None and process.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, info, out), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, error, err), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    returncode = process.wait()
    for pump in pumps:
        pump.join()
    return Finished(
        returncode, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")
    )


def start_error(path: str, exc: OSError) -> str:
    """Go's error when a command cannot start: `fork/exec PATH: no such file or directory`."""
    reason = exc.strerror or str(exc)
    return f"fork/exec {path}: {reason[:1].lower()}{reason[1:]}"


def _semver_tolerant(text: str) -> str:
    """blang/semver `ParseTolerant` for plain numbers: `v` dropped, missing parts are 0."""
    parts = text.strip().removeprefix("v").split(".")
    while len(parts) < 3:
        parts.append("0")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(text)
    return ".".join(str(int(part)) for part in parts)


_PYTHON_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:(a|b|rc|dev)(\d+))?")
_PRERELEASE = {"a": "alpha", "b": "beta", "rc": "rc", "dev": "dev"}


def parse_python_version(text: str) -> str:
    """`ParsePythonVersion` (toolchain.go:303-343): `Python 3.13.0rc1` -> `3.13.0-rc.1`."""
    match = _PYTHON_VERSION.match(text.strip().removeprefix("Python "))
    if match is None:
        raise ValueError(f"invalid Python version format: {go_quote(text)}")
    major, minor, patch, pre, number = match.groups()
    version = f"{int(major)}.{int(minor)}.{int(patch or 0)}"
    if pre:
        version += f"-{_PRERELEASE[pre]}.{int(number)}"
    return version


def parse_pip_version(text: str) -> str:
    """`ParsePipVersion` (pip.go:630-646): `pip 24.0 from ...` -> `24.0.0`."""
    match = re.match(r"pip\s+(\d+(?:\.\d+)*)", text.strip())
    if match is None:
        raise ValueError(f"unexpected output from pip --version: {go_quote(text)}")
    return _semver_tolerant(match.group(1))


def normalize_package_name(name: str) -> str:
    """PEP 503, as `normalizePythonPackageName` (toolchain.go:364-372)."""
    return re.sub(r"[-_.]+", "-", name.lower())


@dataclass(frozen=True)
class About:
    executable: str
    python_version: str
    pip_version: str


_TRANSIENT_PIP_ERRORS = ("because the GET request got Content-Type",)


class Pip:
    """The `pip` toolchain (pip.go:45-60): the project's virtualenv, or the ambient python."""

    def __init__(self, root: str, virtualenv: str) -> None:
        self.root = root
        self.virtualenv_option = virtualenv
        # `resolveVirtualEnvironmentPath` (pip.go:607-615): relative to the project root
        # (filepath.Join, which also cleans the path), an absolute one as it is.
        self.virtualenv_path = virtualenv
        if virtualenv and not os.path.isabs(virtualenv):
            self.virtualenv_path = os.path.normpath(os.path.join(root, virtualenv))

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """`Command` (pip.go:202-217): argv and environment for running python."""
        if not self.virtualenv_path:
            return [python_command_path(), *args], dict(os.environ)
        python = os.path.join(self.virtualenv_path, "bin", "python")
        return [python, *args], activate_virtualenv(os.environ, self.virtualenv_path)

    def module_command(self, module: str, *args: str) -> tuple[list[str], dict[str, str]]:
        """`ModuleCommand` (pip.go:219-222)."""
        return self.command("-m", module, *args)

    def validate_venv(self) -> None:
        """`ValidateVenv` (pip.go:265-270)."""
        if self.virtualenv_option and not is_virtualenv(self.virtualenv_path):
            raise virtualenv_error(self.virtualenv_option, self.virtualenv_path)

    def ensure_venv(
        self, cwd: str, language_version_tools: bool, info: Writer, error: Writer
    ) -> None:
        """`EnsureVenv` (pip.go:272-310): make the virtualenv (and install) if it is missing."""
        if not self.virtualenv_option or is_virtualenv(self.virtualenv_path):
            return
        path = Path(self.virtualenv_path)
        if path.exists() and not path.is_dir():
            raise ToolchainError(
                f"the 'virtualenv' option in Pulumi.yaml is set to {go_quote(str(path))} "
                "but it is not a directory"
            )
        if not path.exists() or not any(path.iterdir()):
            self.install_dependencies(cwd, language_version_tools, info, error)

    def install_dependencies(
        self, cwd: str, language_version_tools: bool, info: Writer, error: Writer
    ) -> None:
        """`InstallDependencies` (pip.go:465-583): venv, pip/setuptools/wheel, requirements.txt."""
        venv = self.virtualenv_path
        if language_version_tools:
            _install_python(cwd, info, error)
        if venv:
            info("Creating virtual environment...\n")
            if not os.path.isabs(venv):
                raise ToolchainError(f"virtual environment path must be absolute: {venv}")
            made = run([python_command_path(), "-m", "venv", venv])
            if not made.ok:
                output = made.stdout + made.stderr
                if output:
                    error(output + "\n")
                raise ToolchainError(f"creating virtual environment at '{venv}': {made.failure}")
            info("Finished creating virtual environment\n")

        def pip_install(what: str, *args: str) -> None:
            if venv:
                argv = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", *args]
            else:
                argv = [python_command_path(), "-m", "pip", "install", *args]
            env = activate_virtualenv(os.environ, venv)
            for attempt in range(3):  # transient PyPI errors are retried (pip.go:505-554)
                done = run(argv, env=env, cwd=cwd, info=info, error=error)
                if done.ok:
                    return
                stderr = done.stderr.strip()
                message = f"{what} via '{' '.join(argv)}': {done.failure}"
                if stderr:
                    message += f": {stderr}"
                if attempt < 2 and any(p in done.stderr for p in _TRANSIENT_PIP_ERRORS):
                    error(f"Retrying ({attempt + 1}/3)...\n")
                    continue
                raise ToolchainError(message)

        info("Updating pip, setuptools, and wheel in virtual environment...\n")
        pip_install(
            "updating pip, setuptools, and wheel", "--upgrade", "pip", "setuptools", "wheel"
        )
        info("Finished updating\n")
        if not os.path.exists(os.path.join(cwd, "requirements.txt")):
            return
        info("Installing dependencies in virtual environment...\n")
        pip_install("installing dependencies", "-r", "requirements.txt")
        info("Finished installing dependencies\n")

    def install_package(self, directory: str, info: Writer, error: Writer) -> None:
        """`pip install <dir>` into the virtualenv, for a plugin that is a buildable package
        (main.go:1345-1368; `IsBuildablePackage`, pyproject.go:45-55)."""
        argv, env = self.module_command("pip", "install", directory)
        done = run(argv, env=env, info=info, error=error)
        if not done.ok:
            raise ToolchainError(f"installing package: {done.failure}")

    def list_packages(self, transitive: bool) -> list[tuple[str, str]]:
        """`ListPackages` (pip.go:170-200): `pip list --format json`, names PEP 503-normalized."""
        args = ["list", "--format", "json"]
        if not transitive:
            args.append("--not-required")
        argv, env = self.module_command("pip", *args)
        done = run(argv, env=env)
        if not done.ok:
            raise ToolchainError(f"calling `{' '.join(argv)}`: {done.failure}")
        try:
            raw = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise ToolchainError(f"parsing `python {' '.join(argv)}` output: {exc}") from None
        return [(normalize_package_name(p["name"]), str(p.get("version", ""))) for p in raw]

    def about(self) -> About:
        """`About` (pip.go:224-263): only the executable is required to be found."""
        python_version = pip_version = "0.0.0"
        argv, env = self.command("--version")
        done = run(argv, env=env)
        if done.ok:
            with contextlib.suppress(ValueError):
                python_version = parse_python_version(done.stdout)
        argv, env = self.command("-c", "import sys; print(sys.executable)")
        done = run(argv, env=env)
        if not done.ok:
            raise ToolchainError(f"failed to get python executable path: {done.failure}")
        executable = done.stdout.strip()
        argv, env = self.module_command("pip", "--version")
        done = run(argv, env=env)
        if done.ok:
            with contextlib.suppress(ValueError):
                pip_version = parse_pip_version(done.stdout)
        return About(executable, python_version, pip_version)


def _install_python(cwd: str, info: Writer, error: Writer) -> None:
    """`installPython` (toolchain.go:220-273): `pyenv install --skip-existing` when a
    `.python-version` is above `cwd` and pyenv is on PATH; otherwise nothing."""
    version_file = _search_up(cwd, ".python-version")
    pyenv = shutil.which("pyenv")
    if version_file is None or pyenv is None:
        return
    info(f"Installing python version from .python-version file at {version_file}\n")
    done = run([pyenv, "install", "--skip-existing"], cwd=cwd, info=info, error=error)
    if not done.ok:
        raise ToolchainError(f"error while running pyenv install: {done.failure}")


def is_buildable_package(directory: str) -> bool:
    """`IsBuildablePackage` (pyproject.go:45-55): a pyproject.toml with a project name and a
    build backend."""
    path = Path(directory, "pyproject.toml")
    if not path.exists():
        return False
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ToolchainError(f"parsing pyproject.toml: {exc}") from None
    project = data.get("project") or {}
    build = data.get("build-system") or {}
    return bool(project.get("name")) and bool(build.get("build-backend"))
