"""The pulumi-language-python stand-in (tests/support/python_language_host) under the real CLI.

The Go module proxy does not serve Pulumi's Python language host, so the real CLI
(v3.274.1, built by scripts/pulumi-toolchain.sh into /var/cache/vllm-nginx/
pulumi-toolchain) cannot run a `runtime: python` project by itself. The stand-in is
put on PATH as `pulumi-language-python` (the engine prefers an ambient plugin) and
runs the real exec script of the same release from the toolchain's module cache.

Layers: the rules taken from the Go host (flags, PEP 440 to semver, which packages
count, the exec script's command line and environment) on plain data; the stand-in
as a gRPC server, as the engine talks to it; then the real CLI driving it on a
project in a temporary directory (`up`, outputs, secrets, `preview
--expect-no-changes`, `refresh`, `destroy`, errors as users see them, `pulumi
install`) and on this repository's own program (`preview`, when the docker and
command provider stand-ins are there). Without the CLI those tests skip, except under
CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
from google.protobuf import empty_pb2, struct_pb2  # type: ignore[import-untyped]
from pulumi.runtime.proto import language_pb2, language_pb2_grpc

from tests.support.docker_engine import REPO_ROOT, in_ci, unavailable
from tests.support.python_language_host import flags, packages, toolchain
from tests.support.python_language_host.host import (
    VERSION,
    go_json,
    program_environment,
    run_arguments,
)

HOST_BIN = REPO_ROOT / "tests" / "support" / "python_language_host" / "bin"
VENV = REPO_ROOT / ".venv"
CACHE = Path(os.environ.get("PULUMI_TOOLCHAIN_CACHE") or "/var/cache/vllm-nginx/pulumi-toolchain")
CLI_BIN = CACHE / f"pulumi-{VERSION}" / "bin"
EXEC_SCRIPT = (
    CACHE
    / "go/mod/github.com/pulumi/pulumi"
    / f"sdk/v3@{VERSION}/python/cmd/pulumi-language-python-exec"
)


# --- the Go host's rules, on plain data ---------------------------------------------------


def test_flags_parse_as_gos_flag_package():
    parsed = flags.parse(["--logtostderr", "-v=9", "--tracing", "http://t", "127.0.0.1:5"])
    assert parsed.logtostderr and parsed.verbose == 9 and parsed.tracing == "http://t"
    assert parsed.engine_address == "127.0.0.1:5"
    assert flags.parse(["-use-executor=/x", "-logtostderr=false"]).use_executor == "/x"
    assert not flags.parse(["-logtostderr=false"]).logtostderr
    assert flags.parse(["-version"]).version
    # Parsing stops at the first non-flag argument, and after `--`.
    assert flags.parse(["addr", "-v=3"]).positional == ("addr", "-v=3")
    assert flags.parse(["--", "-v=3"]).engine_address == "-v=3"
    assert flags.parse([]).engine_address == ""
    for bad in (["-nope"], ["--tracing"], ["-v=x"], ["-version=maybe"], ["---v"]):
        with pytest.raises(flags.FlagError):
            flags.parse(bad)


@pytest.mark.parametrize(
    ("pep440", "semver"),
    [
        ("5.2.0", "5.2.0"),
        ("1.0", "1.0.0"),
        ("3", "3.0.0"),
        ("1.2.3a4", "1.2.3-alpha.4"),
        ("1.2.3b4", "1.2.3-beta.4"),
        ("1.2.3rc4", "1.2.3-rc.4"),
        ("1.2.3.post4", "1.2.3+post4"),
        ("1.2.3.dev5", "1.2.3+dev5"),
        ("1.2.3.post4.dev5", "1.2.3+post4dev5"),
        ("1.2.3rc1.post2", "1.2.3-rc.1+post2"),
    ],
)
def test_plugin_version_from_package_version(pep440, semver):
    assert packages.plugin_version(pep440) == semver


@pytest.mark.parametrize("bad", ["", "1!2.0", "1.2.3x", "1.2.3+local", "ünï"])
def test_plugin_version_refused(bad):
    with pytest.raises(ValueError):
        packages.plugin_version(bad)


def test_which_packages_need_which_plugin():
    named = packages.PluginJSON.parse('{"resource": true, "name": "docker", "version": "5.2.0"}')
    assert packages.package_dependency("pulumi-docker", "5.2.0", named) == (
        packages.PackageDependency("docker", "v5.2.0")
    )
    # No pulumi-plugin.json: named after the package, versioned from it.
    assert packages.package_dependency("pulumi-random", "4.16.1a17", None) == (
        packages.PackageDependency("random", "v4.16.1-alpha.17")
    )
    # `"resource": false`, or a version that cannot be turned into semver: no plugin.
    no_plugin = packages.PluginJSON.parse('{"resource": false}')
    assert packages.package_dependency("pulumi-policy-x", "1.0", no_plugin) is None
    assert packages.package_dependency("pulumi-odd", "1.0+local", None) is None
    server = packages.PluginJSON.parse(
        '{"resource": true, "version": "v3.0.0", "server": "https://s", "parameterization": '
        '{"name": "p", "version": "1.0.0", "value": "aGk="}}'
    )
    dependency = packages.package_dependency("pulumi-thing", "2.0.0", server)
    assert dependency is not None
    assert (dependency.name, dependency.version, dependency.server) == (
        "thing",
        "v3.0.0",
        "https://s",
    )
    assert dependency.parameterization == packages.Parameterization("p", "1.0.0", b"hi")


def test_runtime_options(tmp_path):
    parse = toolchain.parse_options
    options = parse("/proj", "/proj", {"toolchain": "pip", "virtualenv": ".venv"}, False)
    assert toolchain.resolve(options).virtualenv_path == "/proj/.venv"
    options = parse("/proj", "/proj", {"virtualenv": "/abs/venv"}, False)
    assert toolchain.resolve(options).virtualenv_path == "/abs/venv"
    assert toolchain.resolve(parse("/p", "/p", {}, False)).virtualenv_path == ""
    assert parse("/p", "/p", {}, True).virtualenv == "venv"  # plugins never use the ambient python
    assert (
        parse("/p", "/p", {"typechecker": "mypy"}, False).typechecker is toolchain.TypeChecker.MYPY
    )
    for bad, message in (
        ({"virtualenv": 3}, "virtualenv option must be a string"),
        ({"toolchain": "conda"}, "unsupported toolchain option: conda"),
        ({"typechecker": "pytype"}, "unsupported typechecker option: pytype"),
    ):
        with pytest.raises(toolchain.ToolchainError, match=message):
            parse("/p", "/p", bad, False)
    # Auto picks uv when a uv.lock is above the program: not in the stand-in.
    (tmp_path / "uv.lock").write_text("")
    (tmp_path / "prog").mkdir()
    with pytest.raises(toolchain.ToolchainError, match="uv toolchain is not supported"):
        toolchain.resolve(parse(str(tmp_path), str(tmp_path / "prog"), {}, False))


def test_virtualenv_activation():
    env = toolchain.activate_virtualenv(
        {"PATH": "/usr/bin", "PYTHONHOME": "/x", "VIRTUAL_ENV": "/old", "KEEP": "1"}, "/v"
    )
    assert env == {"PATH": "/v/bin:/usr/bin", "KEEP": "1", "VIRTUAL_ENV": "/v"}
    assert toolchain.activate_virtualenv({}, "/v") == {"PATH": "/v/bin", "VIRTUAL_ENV": "/v"}


def test_versions_as_the_toolchain_reads_them():
    assert toolchain.parse_python_version("Python 3.11.7\n") == "3.11.7"
    assert toolchain.parse_python_version("Python 3.13.0rc1") == "3.13.0-rc.1"
    assert toolchain.parse_pip_version("pip 24.0 from /x/pip (python 3.11)") == "24.0.0"
    assert toolchain.normalize_package_name("Pulumi_Docker") == "pulumi-docker"
    assert toolchain.exit_error(3) == "exit status 3"
    assert toolchain.exit_error(-signal.SIGKILL) == "signal: killed"


def test_exec_script_command_line_and_environment():
    request = language_pb2.RunRequest(
        monitor_address="127.0.0.1:1",
        project="proj",
        stack="dev",
        pwd="/work/proj",
        dryRun=True,
        parallel=8,
        organization="org",
        program="ignored",
        args=["extra"],
        config={"proj:b": "<&>", "proj:a": '{"k":1}'},
        configSecretKeys=["proj:a"],
        info=language_pb2.ProgramInfo(root_directory="/work", entry_point="."),
    )
    assert run_arguments(request, "127.0.0.1:2", "") == [
        *("--monitor", "127.0.0.1:1", "--engine", "127.0.0.1:2", "--project", "proj"),
        *("--root_directory", "/work", "--stack", "dev", "--pwd", "/work/proj"),
        *("--dry_run", "true", "--parallel", "8", "--organization", "org"),
        ".",
        "extra",
    ]
    env = program_environment(request, {"HOME": "/root"})
    assert env["HOME"] == "/root"
    # Go's json.Marshal: keys sorted, compact, HTML characters escaped.
    assert env["PULUMI_CONFIG"] == '{"proj:a":"{\\"k\\":1}","proj:b":"\\u003c\\u0026\\u003e"}'
    assert json.loads(env["PULUMI_CONFIG"]) == dict(request.config)
    assert env["PULUMI_CONFIG_SECRET_KEYS"] == '["proj:a"]'
    bare = program_environment(language_pb2.RunRequest(), {})
    assert "PULUMI_CONFIG" not in bare and bare["PULUMI_CONFIG_SECRET_KEYS"] == "[]"
    assert go_json(["\u2028"]) == '["\\u2028"]'


# --- the stand-in as a gRPC server -----------------------------------------------------


StartHost = Callable[..., language_pb2_grpc.LanguageRuntimeStub]


@pytest.fixture
def start_host(tmp_path) -> Iterator[StartHost]:
    """Start the launcher as the engine does (`[flags] [ENGINE_ADDRESS]`); get a client."""
    started: list[subprocess.Popen[str]] = []
    channels: list[grpc.Channel] = []

    def start(
        *args: str, env: dict[str, str] | None = None
    ) -> language_pb2_grpc.LanguageRuntimeStub:
        log = tmp_path / f"host-{len(started)}.stderr"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [str(HOST_BIN / "pulumi-language-python"), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, **(env or {})},
            )
        started.append(process)
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), log.read_text()
        channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        return language_pb2_grpc.LanguageRuntimeStub(channels[-1])

    yield start
    for channel in channels:
        channel.close()
    for process in started:
        process.send_signal(signal.SIGINT)  # stops serving, as the real one (main.go:176-183)
        assert process.wait(timeout=30) == 0


@pytest.fixture
def language_host(start_host: StartHost) -> language_pb2_grpc.LanguageRuntimeStub:
    """A host started with no engine address, as for `pulumi about` before the engine."""
    return start_host("-use-executor", "/nonexistent/exec")


def _info(root: Path, **options: object) -> language_pb2.ProgramInfo:
    struct = struct_pb2.Struct()
    struct.update(options)
    return language_pb2.ProgramInfo(
        root_directory=str(root), program_directory=str(root), entry_point=".", options=struct
    )


def test_launcher_version_and_missing_executor(tmp_path):
    launcher = str(HOST_BIN / "pulumi-language-python")
    done = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"{VERSION}\n")
    env = {**os.environ, "PULUMI_TOOLCHAIN_CACHE": str(tmp_path), "GOMODCACHE": str(tmp_path)}
    env.pop("PULUMI_LANGUAGE_PYTHON_EXEC", None)
    done = subprocess.run([launcher], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and done.stdout == ""  # no port: the engine sees it fail
    assert "missing executor pulumi-language-python-exec" in done.stderr


def test_rpcs_as_the_engine_calls_them(language_host, tmp_path):
    host = language_host
    assert host.GetPluginInfo(empty_pb2.Empty()).version == VERSION
    info = _info(tmp_path, toolchain="pip", virtualenv=str(VENV))

    required = host.GetRequiredPackages(language_pb2.GetRequiredPackagesRequest(info=info))
    found = {(p.name, p.kind, p.version) for p in required.packages}
    # The program's three providers (requirements.txt): Docker, command and Kubernetes
    # (the Kubernetes engine and the test cluster's program).
    assert found == {
        ("docker", "resource", "v5.2.0"),
        ("command", "resource", "v1.2.1"),
        ("kubernetes", "resource", "v4.25.0"),
    }

    with pytest.raises(grpc.RpcError) as refused:
        host.GetRequiredPlugins(language_pb2.GetRequiredPluginsRequest(info=info))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

    about = host.About(language_pb2.AboutRequest(info=info))
    assert about.executable == str(VENV / "bin" / "python")
    assert about.version == ".".join(map(str, sys.version_info[:3]))
    assert about.metadata["toolchain"] == "Pip" and about.metadata["typechecker"] == "None"

    top = host.GetProgramDependencies(
        language_pb2.GetProgramDependenciesRequest(info=info, transitiveDependencies=False)
    )
    listed = {(d.name, d.version) for d in top.dependencies}
    assert ("pulumi-docker", "5.2.0") in listed and ("pulumi", "3.272.0") not in listed

    def prompts(**options: object) -> list[str]:
        request = language_pb2.RuntimeOptionsRequest(info=_info(tmp_path, **options))
        return [p.key for p in host.RuntimeOptionsPrompts(request).prompts]

    assert prompts() == ["toolchain"]
    assert prompts(toolchain="pip") == ["virtualenv"]
    assert prompts(toolchain="pip", virtualenv="venv") == []

    # Run needs the engine's address (given at start-up or by Handshake).
    with pytest.raises(grpc.RpcError) as no_engine:
        host.Run(language_pb2.RunRequest(info=info))
    assert no_engine.value.code() == grpc.StatusCode.UNKNOWN
    assert "must call Handshake before Run" in no_engine.value.details()

    with pytest.raises(grpc.RpcError) as bad_option:
        host.GetRequiredPackages(
            language_pb2.GetRequiredPackagesRequest(info=_info(tmp_path, toolchain="conda"))
        )
    assert bad_option.value.details() == "unsupported toolchain option: conda"


RECORDING_EXECUTOR = textwrap.dedent(
    """\
    import json, os, signal, sys, time

    with open(os.environ["RECORD_TO"], "a") as out:
        keys = ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS", "VIRTUAL_ENV", "PATH")
        env = {key: os.environ.get(key) for key in keys}
        print(json.dumps({"argv": sys.argv, "env": env, "python": sys.executable}), file=out)
    how = sys.argv[-1]
    if how == "sleep":
        time.sleep(60)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(how))
    """
)


def test_run_starts_the_exec_script_on_the_virtualenvs_python(start_host, tmp_path):
    """Run with a recording stand-in for the exec script (`-use-executor`): its command
    line and environment, what each exit becomes, and Cancel."""
    executor = tmp_path / "exec.py"
    executor.write_text(RECORDING_EXECUTOR)
    record = tmp_path / "record.jsonl"
    host = start_host("-use-executor", str(executor), "127.0.0.1:9", env={"RECORD_TO": str(record)})
    info = _info(tmp_path, toolchain="pip", virtualenv=str(VENV))

    def run(
        how: str, config: dict[str, str] | None = None, secret_keys: tuple[str, ...] = ()
    ) -> language_pb2.RunResponse:
        request = language_pb2.RunRequest(
            info=info,
            project="p",
            stack="s",
            pwd=str(tmp_path),
            args=[how],
            config=config,
            configSecretKeys=secret_keys,
        )
        response: language_pb2.RunResponse = host.Run(request, timeout=60)
        return response

    assert run("0", config={"p:a": "1", "p:b": "x"}, secret_keys=("p:b",)) == (
        language_pb2.RunResponse()
    )
    seen = json.loads(record.read_text().splitlines()[-1])
    assert seen["argv"] == [
        str(executor),
        *("--engine", "127.0.0.1:9", "--project", "p", "--root_directory", str(tmp_path)),
        *("--stack", "s", "--pwd", str(tmp_path), "--dry_run", "false", "--parallel", "0"),
        ".",
        "0",
    ]
    assert seen["python"] == str(VENV / "bin" / "python")
    assert seen["env"]["PULUMI_CONFIG"] == '{"p:a":"1","p:b":"x"}'
    assert seen["env"]["PULUMI_CONFIG_SECRET_KEYS"] == '["p:b"]'
    assert seen["env"]["VIRTUAL_ENV"] == str(VENV)
    assert seen["env"]["PATH"].startswith(f"{VENV / 'bin'}{os.pathsep}")

    assert run("1").error == "program exited with non-zero exit code: 1"
    assert run("32") == language_pb2.RunResponse(error="", bail=True)
    assert run("sigkill").error == "program exited with non-zero exit code: -1"

    # Cancel interrupts a running program with SIGINT, which Python dies of (Go reports
    # -1 for a signal), and the host stays cancelled.
    running = host.Run.future(
        language_pb2.RunRequest(info=info, pwd=str(tmp_path), args=["sleep"]), timeout=60
    )
    for _ in range(200):
        if record.read_text().count("\n") == 5:
            break
        time.sleep(0.05)
    host.Cancel(empty_pb2.Empty())
    assert running.result().error == "program exited with non-zero exit code: -1"
    assert run("0").error == (
        "problem executing program (could not run language executor): context canceled"
    )


# --- the real CLI --------------------------------------------------------------------------

Pulumi = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pulumi(tmp_path) -> Pulumi:
    """`pulumi` of the toolchain, offline, with the stand-in first on PATH."""
    if not (CLI_BIN / "pulumi").is_file() or not EXEC_SCRIPT.is_file():
        script = REPO_ROOT / "scripts" / "pulumi-toolchain.sh"
        if in_ci() and script.is_file():
            subprocess.run(["bash", str(script)], check=True, timeout=3600)
        if not (CLI_BIN / "pulumi").is_file() or not EXEC_SCRIPT.is_file():
            unavailable(
                f"no Pulumi CLI {VERSION} at {CLI_BIN} (with its exec script at {EXEC_SCRIPT}); "
                "build it with scripts/pulumi-toolchain.sh"
            )
    (tmp_path / "state").mkdir()
    env = {
        **os.environ,
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "test",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }

    def run(
        *args: str, cwd: Path, check: bool = True, plugins: tuple[Path, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        path = [CLI_BIN, HOST_BIN, *plugins]
        env["PATH"] = os.pathsep.join([*map(str, path), os.environ.get("PATH", "")])
        done = subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"pulumi {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
        return done

    return run


PROGRAM = textwrap.dedent(
    """\
    import json
    import os
    import sys

    import pulumi

    config = pulumi.Config()
    mode = config.get("mode") or "ok"
    if mode == "run-error":
        raise pulumi.RunError("the stack refuses: mode is run-error")
    if mode == "exception":
        raise ValueError("a bug in the program")


    class Box(pulumi.ComponentResource):
        def __init__(self, name: str) -> None:
            super().__init__("test:index:Box", name)
            self.register_outputs({})


    Box("box")
    pulumi.export("plain", config.require("plain"))
    pulumi.export("obj", config.require_object("obj"))
    pulumi.export("token", config.require_secret("token"))
    pulumi.export("secretKeys", json.loads(os.environ["PULUMI_CONFIG_SECRET_KEYS"]))
    pulumi.export("virtualEnv", os.environ.get("VIRTUAL_ENV"))
    pulumi.export("python", sys.executable)
    pulumi.export("cwd", os.getcwd())
    """
)


def _project(directory: Path, virtualenv: str, program: str = PROGRAM) -> Path:
    directory.mkdir()
    (directory / "Pulumi.yaml").write_text(
        "name: langhost-test\n"
        "runtime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {virtualenv}\n"
    )
    (directory / "__main__.py").write_text(program)
    return directory


def test_up_preview_refresh_destroy(pulumi, tmp_path):
    project = _project(tmp_path / "project", str(VENV))
    pulumi("stack", "init", "dev", cwd=project)
    pulumi("config", "set", "plain", "hello", cwd=project)
    pulumi("config", "set", "--path", "obj.name", "box", cwd=project)
    pulumi("config", "set", "--path", "obj.count", "2", cwd=project)
    pulumi("config", "set", "--secret", "token", "s3cr3t-value", cwd=project)

    up = pulumi("up", "--yes", cwd=project)
    assert "test:index:Box" in up.stdout and "s3cr3t-value" not in up.stdout

    shown = json.loads(pulumi("stack", "output", "--json", "--show-secrets", cwd=project).stdout)
    assert shown == {
        "plain": "hello",
        "obj": {"name": "box", "count": 2},
        "token": "s3cr3t-value",
        "secretKeys": ["langhost-test:token"],
        "virtualEnv": str(VENV),
        "python": str(VENV / "bin" / "python"),
        "cwd": str(project),
    }
    hidden = json.loads(pulumi("stack", "output", "--json", cwd=project).stdout)
    assert hidden["token"] == "[secret]" and hidden["plain"] == "hello"

    pulumi("preview", "--expect-no-changes", cwd=project)
    pulumi("refresh", "--yes", cwd=project)
    pulumi("destroy", "--yes", cwd=project)
    state = json.loads(pulumi("stack", "export", cwd=project).stdout)
    assert not state["deployment"].get("resources")


def test_run_error_is_the_message_alone(pulumi, tmp_path):
    project = _project(tmp_path / "project", str(VENV))
    pulumi("stack", "init", "dev", cwd=project)
    pulumi("config", "set", "mode", "run-error", cwd=project)
    up = pulumi("up", "--yes", cwd=project, check=False)
    assert up.returncode != 0
    assert "error: the stack refuses: mode is run-error" in up.stdout
    # The exec script logs the message and exits 1; the host reports the exit code.
    assert "program exited with non-zero exit code: 1" in up.stdout
    assert "Traceback" not in up.stdout + up.stderr


def test_exception_shows_the_programs_traceback(pulumi, tmp_path):
    project = _project(tmp_path / "project", str(VENV))
    pulumi("stack", "init", "dev", cwd=project)
    pulumi("config", "set", "mode", "exception", cwd=project)
    up = pulumi("up", "--yes", cwd=project, check=False)
    assert up.returncode != 0
    assert "Program failed with an unhandled exception:" in up.stdout
    assert "Traceback (most recent call last):" in up.stdout
    assert f'File "{project / "__main__.py"}", line 12' in up.stdout
    assert "ValueError: a bug in the program" in up.stdout
    # Exit code 32: the user already saw the error, so the host bails without another.
    assert "non-zero exit code" not in up.stdout


def test_virtualenv_that_is_not_one(pulumi, tmp_path):
    """A `virtualenv` directory that is neither empty (which would be made into one) nor
    a virtualenv: GetRequiredPackages' `pip list` cannot start, before the program runs."""
    project = _project(tmp_path / "project", "not-a-venv")
    (project / "not-a-venv").mkdir()
    (project / "not-a-venv" / "stray").write_text("")
    pulumi("stack", "init", "dev", cwd=project)
    preview = pulumi("preview", cwd=project, check=False)
    assert preview.returncode != 0
    python = project / "not-a-venv" / "bin" / "python"
    assert (
        f"failed to discover package requirements: calling `{python} -m pip list --format json`"
        f": fork/exec {python}: no such file or directory"
    ) in preview.stdout + preview.stderr


def test_pulumi_install_makes_the_virtualenv(pulumi, tmp_path):
    """`pulumi install` with `toolchain: pip`: venv, pip/setuptools/wheel upgraded from
    PyPI (needs the network to it, ~15 s), requirements.txt. The program then runs on
    that venv's python, which has no Pulumi SDK: the exec script says so."""
    project = _project(tmp_path / "project", "venv")
    (project / "requirements.txt").write_text("")
    install = pulumi("install", cwd=project)
    for line in (
        "Installing dependencies...",
        "Creating virtual environment...",
        "Finished creating virtual environment",
        "Updating pip, setuptools, and wheel in virtual environment...",
        "Installing dependencies in virtual environment...",
        "Finished installing dependencies",
    ):
        assert line in install.stdout + install.stderr
    assert toolchain.is_virtualenv(str(project / "venv"))
    pulumi("stack", "init", "dev", cwd=project)
    preview = pulumi("preview", cwd=project, check=False)
    assert preview.returncode != 0
    assert "It looks like the Pulumi SDK has not been installed" in preview.stdout


def _provider_dirs() -> list[Path]:
    """Where pulumi-resource-docker and -command stand-ins are: in this repository's
    tests/support, or in the directories VLLM_NGINX_PROVIDER_BIN_DIRS lists."""
    listed = os.environ.get("VLLM_NGINX_PROVIDER_BIN_DIRS", "")
    candidates = [Path(p) for p in listed.split(os.pathsep) if p]
    candidates += [
        REPO_ROOT / "tests" / "support" / "docker_provider" / "bin",
        REPO_ROOT / "tests" / "support" / "command_provider" / "bin",
    ]
    dirs: list[Path] = []
    for name in ("pulumi-resource-docker", "pulumi-resource-command"):
        found = next((d for d in candidates if (d / name).is_file()), None)
        if found is None:
            pytest.skip(f"no {name} stand-in (tests/support/*/bin or VLLM_NGINX_PROVIDER_BIN_DIRS)")
        dirs.append(found)
    return dirs


def test_this_repository_previews(pulumi, tmp_path):
    """This project as users run it, from a copy: its Pulumi.yaml (virtualenv `.venv`
    next to it), __main__.py, components, and the CI stack file."""
    provider_dirs = _provider_dirs()
    project = tmp_path / "vllm-nginx"
    project.mkdir()
    for name in ("Pulumi.yaml", "__main__.py", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, project / name)
    for name in ("components", "docker", "standin", ".venv"):
        (project / name).symlink_to(REPO_ROOT / name)
    shutil.copy(REPO_ROOT / "Pulumi.ci.yaml", project / "Pulumi.ci.yaml")
    pulumi("stack", "init", "ci", cwd=project)
    preview = pulumi("preview", cwd=project, plugins=tuple(provider_dirs))
    assert "vllm-nginx:index:VllmCluster" in preview.stdout
