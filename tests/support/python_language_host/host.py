"""The LanguageRuntime service of the stand-in, RPC by RPC as the real Python host answers.

`main.go:N` is sdk/python/cmd/pulumi-language-python/main.go of pulumi/pulumi at the
newest revision this machine could read (sdk/.version 3.260.0, commit f7520826c1; the
v3.274.1 file itself is in a Go module the proxy refuses, see `__init__.py`). The
toolchain it calls is the v3.274.1 one (`toolchain.py`).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from google.protobuf import empty_pb2, json_format  # type: ignore[import-untyped]
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, language_pb2, plugin_pb2
from pulumi.runtime.proto.language_pb2_grpc import LanguageRuntimeServicer

from tests.support.python_language_host import packages as pkgs
from tests.support.python_language_host.toolchain import (
    Kind,
    Options,
    Pip,
    ToolchainError,
    TypeChecker,
    is_buildable_package,
    parse_options,
    resolve,
    run,
    start_error,
)

#: The release this stands in for: what GetPluginInfo reports (main.go:1264-1268, the
#: linker-set `version.Version`) and whose exec script it runs.
VERSION = "v3.274.1"

#: The exec script's exit code for "the user already saw a good message" (main.go:94-97;
#: PYTHON_PROCESS_EXITED_AFTER_SHOWING_USER_ACTIONABLE_MESSAGE_CODE in the script).
USER_ACTIONABLE_EXIT = 32
#: How long a cancelled program has between SIGINT and SIGKILL (main.go:1056-1062).
CANCEL_GRACE_SECONDS = 5.0


def go_json(value: object) -> str:
    """Go's `json.Marshal` of a map or slice of strings: sorted keys, compact, and
    `<`, `>`, `&`, U+2028, U+2029 escaped as \\uXXXX."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def run_arguments(request: language_pb2.RunRequest, engine_address: str, tracing: str) -> list[str]:
    """`constructArguments` (main.go:1207-1231): the exec script's flags, each only when
    non-empty, then the entry point (not the deprecated `program`), then the args."""
    args: list[str] = []
    for flag, value in (
        ("monitor", request.monitor_address),
        ("engine", engine_address),
        ("project", request.project),
        ("root_directory", request.info.root_directory),
        ("stack", request.stack),
        ("pwd", request.pwd),
        ("dry_run", "true" if request.dryRun else "false"),
        ("parallel", str(request.parallel)),
        ("tracing", tracing),
        ("organization", request.organization),
    ):
        if value:
            args += [f"--{flag}", value]
    args.append(request.info.entry_point)
    args += list(request.args)
    return args


def program_environment(
    request: language_pb2.RunRequest, base: Mapping[str, str]
) -> dict[str, str]:
    """The variables Run adds (main.go:1066-1094, 1234-1262): PULUMI_CONFIG (JSON of the
    config map) only when there is config, PULUMI_CONFIG_SECRET_KEYS always (`[]` if none)."""
    env = dict(base)
    if request.config:
        env["PULUMI_CONFIG"] = go_json(dict(request.config))
    env["PULUMI_CONFIG_SECRET_KEYS"] = go_json(list(request.configSecretKeys))
    otel = os.environ.get("PULUMI_OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if otel:
        env["PULUMI_OTEL_EXPORTER_OTLP_ENDPOINT"] = otel
    return env


def _options(info: language_pb2.ProgramInfo, is_plugin: bool = False) -> Options:
    raw: dict[str, Any] = (
        json_format.MessageToDict(info.options) if info.HasField("options") else {}
    )
    return parse_options(info.root_directory, info.program_directory, raw, is_plugin)


def _fail(context: Any, error: Exception) -> NoReturn:
    # A Go handler's plain error reaches the engine as codes.Unknown with its text.
    context.abort(grpc.StatusCode.UNKNOWN, str(error))
    raise AssertionError("unreachable")  # context.abort raises


def _unimplemented(context: Any, method: str) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method} not implemented")
    raise AssertionError("unreachable")


class _EngineLog:
    """`createEngineWriters` (main.go:490-545): output as ephemeral engine log messages."""

    def __init__(self, engine_address: str) -> None:
        self.address = engine_address
        self.stream_id = random.randint(0, 2**31 - 1)
        self._channel: Any = None

    def _send(self, severity: engine_pb2.LogSeverity.ValueType, text: str) -> None:
        if not self.address:
            raise ToolchainError("language host could not make connection to engine: no address")
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        engine_pb2_grpc.EngineStub(self._channel).Log(
            engine_pb2.LogRequest(
                severity=severity,
                message=text,
                urn="",
                ephemeral=True,
                streamId=self.stream_id,
            )
        )

    def info(self, text: str) -> None:
        self._send(engine_pb2.INFO, text)

    def error(self, text: str) -> None:
        self._send(engine_pb2.ERROR, text)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


class LanguageHost(LanguageRuntimeServicer):
    def __init__(
        self,
        executor: str,
        engine_address: str,
        tracing: str,
        on_engine: Callable[[str], None],
        log: Callable[[int, str], None],
    ) -> None:
        self.executor = executor
        self.engine_address = engine_address
        self.tracing = tracing
        self._on_engine = on_engine
        self._log = log
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._interrupted: set[subprocess.Popen[bytes]] = set()

    # --- engine connection ------------------------------------------------------------

    def Handshake(
        self, request: language_pb2.LanguageHandshakeRequest, context: Any
    ) -> language_pb2.LanguageHandshakeResponse:
        """main.go:1887-1905: keep the engine's address and watch that it stays alive. The
        engine only calls it when it attaches to a running host (PULUMI_DEBUG_LANGUAGES);
        a host it starts gets the address on the command line."""
        self.engine_address = request.engine_address
        self._on_engine(request.engine_address)
        return language_pb2.LanguageHandshakeResponse()

    def GetPluginInfo(self, request: empty_pb2.Empty, context: Any) -> plugin_pb2.PluginInfo:
        return plugin_pb2.PluginInfo(version=VERSION)

    def Cancel(self, request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
        """main.go:2032-2035: every running program is interrupted, and later Runs fail."""
        self._cancelled.set()
        with self._lock:
            running = list(self._running)
        for process in running:
            self._interrupt(process)
        return empty_pb2.Empty()

    # --- plugins the program needs ----------------------------------------------------

    def GetRequiredPlugins(
        self, request: language_pb2.GetRequiredPluginsRequest, context: Any
    ) -> NoReturn:
        # main.go:371-375; the engine then uses GetRequiredPackages (langruntime_plugin.go).
        _unimplemented(context, "GetRequiredPlugins")

    def GetRequiredPackages(
        self, request: language_pb2.GetRequiredPackagesRequest, context: Any
    ) -> language_pb2.GetRequiredPackagesResponse:
        """main.go:326-368: make the virtualenv if missing (its output as engine log
        messages), warn about an old python, then the installed Pulumi packages."""
        log = _EngineLog(self.engine_address)
        try:
            options = _options(request.info)
            toolchain = resolve(options)
            toolchain.ensure_venv(request.info.program_directory, False, log.info, log.error)
            _validate_version(toolchain)
            found = []
            for name, version, plugin_json in pkgs.pulumi_packages(toolchain):
                dependency = pkgs.package_dependency(name, version, plugin_json)
                if dependency is not None:
                    found.append(_package_message(dependency))
                    self._log(5, f"GetRequiredPackages: {dependency}")
        except ToolchainError as exc:
            _fail(context, exc)
        finally:
            log.close()
        return language_pb2.GetRequiredPackagesResponse(packages=found)

    # --- running the program ----------------------------------------------------------

    def Run(self, request: language_pb2.RunRequest, context: Any) -> language_pb2.RunResponse:
        """main.go:997-1205."""
        if not self.engine_address:
            _fail(
                context,
                ToolchainError(
                    "when debugging or running explicitly, must call Handshake before Run"
                ),
            )
        try:
            options = _options(request.info)
        except ToolchainError as exc:
            _fail(context, exc)
        if request.attach_debugger:
            # The real host runs the program under debugpy (main.go:1011-1020, 850-962).
            return language_pb2.RunResponse(
                error="attaching a debugger is not supported by this pulumi-language-python "
                "stand-in (tests/support/python_language_host)"
            )
        args = [self.executor, *run_arguments(request, self.engine_address, self.tracing)]
        self._log(5, f"Language host launching process:  {self.executor} {' '.join(args)}")
        try:
            toolchain = resolve(options)
            toolchain.validate_venv()
            argv, env = toolchain.command(*args)
            env = program_environment(request, env)
            if options.typechecker is not TypeChecker.NONE:
                _typecheck(toolchain, options, request.info.program_directory)
        except ToolchainError as exc:
            _fail(context, exc)

        if self._cancelled.is_set():
            # A cancelled host's context stays cancelled: exec refuses to start.
            return language_pb2.RunResponse(
                error="problem executing program (could not run language executor): "
                "context canceled"
            )
        try:
            # stdout and stderr are the host's own, which the engine reads (main.go:1063-1064).
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return language_pb2.RunResponse(
                error="problem executing program (could not run language executor): "
                + start_error(argv[0], exc)
            )
        with self._lock:
            self._running.add(process)
        # The program is interrupted when the RPC ends early (main.go:1050-1062).
        if not context.add_callback(lambda: self._interrupt(process)):
            self._interrupt(process)
        try:
            returncode = process.wait()
        finally:
            with self._lock:
                self._running.discard(process)
                interrupted = process in self._interrupted
                self._interrupted.discard(process)
        sys.stdout.flush()
        sys.stderr.flush()
        if returncode == 0 and interrupted:
            # os/exec: a success after Cancel is the context's error, not an exit status.
            return language_pb2.RunResponse(
                error="problem executing program (could not run language executor): "
                "context canceled"
            )
        if returncode == 0:
            return language_pb2.RunResponse()
        if returncode == USER_ACTIONABLE_EXIT:
            return language_pb2.RunResponse(error="", bail=True)
        # Go reports -1 as the exit status of a process a signal ended.
        status = returncode if returncode > 0 else -1
        return language_pb2.RunResponse(error=f"program exited with non-zero exit code: {status}")

    def _interrupt(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        with self._lock:
            self._interrupted.add(process)
        try:
            process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            return

        def kill() -> None:
            if process.poll() is None:
                process.kill()

        timer = threading.Timer(CANCEL_GRACE_SECONDS, kill)
        timer.daemon = True
        timer.start()

    # --- dependencies -----------------------------------------------------------------

    def InstallDependencies(
        self, request: language_pb2.InstallDependenciesRequest, context: Any
    ) -> Iterator[language_pb2.InstallDependenciesResponse]:
        """main.go:1311-1377, streamed as stdout/stderr chunks (rpcutil writer.go:122-134;
        never through a terminal here: `is_terminal` is ignored)."""
        chunks: queue.Queue[language_pb2.InstallDependenciesResponse | BaseException | None]
        chunks = queue.Queue()

        def out(text: str) -> None:
            chunks.put(language_pb2.InstallDependenciesResponse(stdout=text.encode()))

        def err(text: str) -> None:
            chunks.put(language_pb2.InstallDependenciesResponse(stderr=text.encode()))

        def work() -> None:
            try:
                options = _options(request.info, request.is_plugin)
                out("Installing dependencies...\n\n")
                toolchain = resolve(options)
                directory = request.info.program_directory
                language_tools = request.use_language_version_tools
                if request.is_plugin and _buildable(directory):
                    try:
                        toolchain.ensure_venv(directory, language_tools, out, err)
                    except ToolchainError as exc:
                        raise ToolchainError(f"creating virtual environment: {exc}") from None
                    toolchain.install_package(directory, out, err)
                toolchain.install_dependencies(directory, language_tools, out, err)
                out("Finished installing dependencies\n\n")
                chunks.put(None)
            except BaseException as exc:  # handed to the RPC thread below
                chunks.put(exc)

        threading.Thread(target=work, daemon=True).start()
        while True:
            item = chunks.get()
            if item is None:
                return
            if isinstance(item, ToolchainError):
                _fail(context, item)
            if isinstance(item, BaseException):
                raise item
            yield item

    def GetProgramDependencies(
        self, request: language_pb2.GetProgramDependenciesRequest, context: Any
    ) -> language_pb2.GetProgramDependenciesResponse:
        """main.go:1487-1526: `pip list`, all or only the top-level packages."""
        try:
            toolchain = resolve(_options(request.info))
            try:
                listed = toolchain.list_packages(request.transitiveDependencies)
            except ToolchainError as exc:
                raise ToolchainError(f"failed to get python dependencies: {exc}") from None
        except ToolchainError as exc:
            _fail(context, exc)
        return language_pb2.GetProgramDependenciesResponse(
            dependencies=[language_pb2.DependencyInfo(name=n, version=v) for n, v in listed]
        )

    def About(self, request: language_pb2.AboutRequest, context: Any) -> language_pb2.AboutResponse:
        """main.go:1453-1485: the python the program runs on, pip's version."""
        try:
            if request.HasField("info"):
                options = _options(request.info)
            else:
                options = Options("", "", toolchain=Kind.PIP)
            about = resolve(options).about()
        except ToolchainError as exc:
            _fail(context, exc)
        return language_pb2.AboutResponse(
            executable=about.executable,
            version=about.python_version,
            metadata={
                "toolchain": options.toolchain.value,
                "toolchainVersion": about.pip_version,
                "typechecker": options.typechecker.value,
            },
        )

    # --- `pulumi new` -----------------------------------------------------------------

    def RuntimeOptionsPrompts(
        self, request: language_pb2.RuntimeOptionsRequest, context: Any
    ) -> language_pb2.RuntimeOptionsResponse:
        """main.go:1379-1428: ask for a toolchain, and for pip a virtualenv."""
        raw = (
            json_format.MessageToDict(request.info.options)
            if request.info.HasField("options")
            else {}
        )
        string = language_pb2.RuntimeOptionPrompt.STRING
        prompts = []
        if "toolchain" not in raw:
            pip = language_pb2.RuntimeOptionPrompt.RuntimeOptionValue(
                promptType=string, stringValue="pip", displayName="pip"
            )
            prompts.append(
                language_pb2.RuntimeOptionPrompt(
                    key="toolchain",
                    description="The toolchain to use for installing dependencies and running "
                    "the program",
                    promptType=string,
                    choices=[pip, *_executable_choices("poetry", "uv")],
                    default=pip,
                )
            )
        elif raw["toolchain"] == "pip" and "virtualenv" not in raw:
            venv = language_pb2.RuntimeOptionPrompt.RuntimeOptionValue(
                promptType=string, stringValue="venv"
            )
            prompts.append(
                language_pb2.RuntimeOptionPrompt(
                    key="virtualenv",
                    description="The virtualenv to use",
                    promptType=string,
                    choices=[venv],
                    default=venv,
                )
            )
        return language_pb2.RuntimeOptionsResponse(prompts=prompts)

    def Template(
        self, request: language_pb2.TemplateRequest, context: Any
    ) -> language_pb2.TemplateResponse:
        """main.go:1430-1451: pip's PrepareProject does nothing (pip.go:599-605)."""
        try:
            resolve(_options(request.info))
        except ToolchainError as exc:
            _fail(context, exc)
        return language_pb2.TemplateResponse()

    # --- not in the stand-in ----------------------------------------------------------
    # Python plugins (RunPlugin, main.go:1528-1728), code generation (GenerateProject,
    # GenerateProgram, GeneratePackage: pkg/v3 codegen/python), Pack (a wheel with
    # `build`, main.go:377-488) and Link (schema loader + requirements.txt,
    # main.go:1914-2030): the servicer's defaults answer UNIMPLEMENTED.


def _package_message(dependency: pkgs.PackageDependency) -> plugin_pb2.PackageDependency:
    def param(p: pkgs.Parameterization | None) -> plugin_pb2.PackageParameterization | None:
        if p is None:
            return None
        return plugin_pb2.PackageParameterization(name=p.name, version=p.version, value=p.value)

    return plugin_pb2.PackageDependency(
        name=dependency.name,
        kind=dependency.kind,
        version=dependency.version,
        server=dependency.server,
        parameterization=param(dependency.parameterization),
        extension=param(dependency.extension),
    )


def _executable_choices(*names: str) -> list[language_pb2.RuntimeOptionPrompt.RuntimeOptionValue]:
    """`plugin.MakeExecutablePromptChoices` (sdk/v3@v3.274.1 go/common/resource/plugin/
    langruntime.go:323-358): found ones first, the others marked `[not found]`."""
    found = [(name, shutil.which(name) is not None) for name in names]
    found.sort(key=lambda item: not item[1])  # stable: found first, order kept
    return [
        language_pb2.RuntimeOptionPrompt.RuntimeOptionValue(
            promptType=language_pb2.RuntimeOptionPrompt.STRING,
            stringValue=name,
            displayName=name if ok else f"{name} [not found]",
        )
        for name, ok in found
    ]


def _buildable(directory: str) -> bool:
    try:
        return is_buildable_package(directory)
    except ToolchainError as exc:
        raise ToolchainError(f"checking if plugin is a buildable package: {exc}") from None


def _validate_version(toolchain: Pip) -> None:
    """`validateVersion` (main.go:1270-1309): problems go to stderr, never fail the RPC.
    The minimum and the end-of-life version there are both 3.7.0."""
    try:
        argv, env = toolchain.command("--version")
        done = run(argv, env=env)
    except ToolchainError as exc:
        print(f"Failed to create python version command: {exc}", file=sys.stderr, flush=True)
        return
    if not done.ok:
        print(
            f"Failed to resolve python version command: {done.failure}",
            file=sys.stderr,
            flush=True,
        )
        return
    version = re.sub(r"-?rc\d+$", "", done.stdout.strip().removeprefix("Python "))
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        print(f"Failed to parse python version: '{version}'", file=sys.stderr, flush=True)
        return
    if tuple(int(p) for p in parts) < (3, 7, 0):
        print(
            f"Pulumi does not support Python {version}. Please upgrade to at least 3.7.0",
            file=sys.stderr,
            flush=True,
        )


def _typecheck(toolchain: Pip, options: Options, program_dir: str) -> None:
    """main.go:1096-1142: mypy or pyright over the program before it runs; mypy told to
    skip the virtualenv. Their output goes where the program's does."""
    name = "mypy" if options.typechecker is TypeChecker.MYPY else "pyright"
    args = ["-m", name]
    if name == "mypy":
        try:
            relative = os.path.relpath(toolchain.virtualenv_path, program_dir)
        except ValueError as exc:
            raise ToolchainError(str(exc)) from None
        args += ["--exclude", relative]
    args.append(program_dir)
    if name not in {n for n, _ in toolchain.list_packages(transitive=True)}:
        pip = f"{options.virtualenv}/bin/pip install -r requirements.txt"
        raise ToolchainError(
            f"The typechecker option is set to {name}, but {name} is not installed. "
            f"Please add an entry for {name} to requirements.txt and run `{pip}`"
        )
    argv, env = toolchain.command(*args)

    def to_fd(fd: int) -> Callable[[str], None]:
        def write(text: str) -> None:
            os.write(fd, text.encode())

        return write

    done = run(argv, env=env, cwd=program_dir, info=to_fd(1), error=to_fd(2))
    if not done.ok:
        output = done.stdout + done.stderr
        suffix = f"\n{output}" if output else ""
        raise ToolchainError(f"{name} failed: {done.failure}{suffix}")
