"""Running one command as pulumi-command 1.2.1's `run` does (PC local/commandOutputs.go:39-146).

- argv: the `interpreter` if given and not empty, else `/bin/sh -c`, then the
  command as one argument (:41-51). A program name without a slash is looked up
  on the provider's own PATH when the command is made (Go's `exec.Command`).
- directory: `dir` if given, else the provider's working directory (:73-80).
- environment: the provider's own environment, then `environment` (:81-86),
  then `PULUMI_COMMAND_STDOUT`/`PULUMI_COMMAND_STDERR` from the previous
  create/update when `addPreviousOutputInEnv` is unset or true and they are
  not empty (:88-95); a later entry wins (Go's `dedupEnv`). `PWD` is left as
  the provider's: Go updates it only when `Env` is nil, and here it is set.
- stdin: `stdin` when not empty (:97-99), else nothing (`/dev/null`).
- output: stdout and stderr are captured apart and together; each line of the
  streams that `logging` selects (both when unset, PC local/logging.go:27-32)
  goes to the engine as an ephemeral info message on the resource, the Info
  column of `pulumi up` (PC util/util.go:32-53 `LogOutput` with `InfoStatus`;
  GP logging.go:56 and :106-115 `LogStatus`; pulumi's HostClient.log sends
  `Ephemeral: true`, sdk v3.274.1 go/pulumi/provider/host.go:73-111). Lines are
  split like Go's `bufio.ScanLines` (a trailing `\\r` dropped).
- failure: a command that cannot start or exits non-zero fails with
  `<Go error>: running <Go-quoted command>:\\n<stdout and stderr as they came>`
  (:112-114), e.g. `exit status 3: running "exit 3":\\n`.
- success: `stdout`/`stderr` are the captured text with one trailing newline
  removed (:142-143).
- no timeout: the process lives as long as the request (`exec.CommandContext`
  with the request's context, :59); a cancelled request kills it (Go's default
  `Cancel` is `Process.Kill`).

Differences kept on purpose (none reaches what this project runs): pulumi-command
feeds both streams into one line scanner, so a line half on stdout and half on
stderr would be logged as one; a line longer than 64 KiB stops Go's scanner
(`bufio.Scanner`'s default limit), which this stand-in does not imitate;
output that is not UTF-8 is decoded with replacement characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pulumi.provider.experimental.property_value import PropertyValue

from tests.support.command_provider.values import plain

PULUMI_COMMAND_STDOUT = "PULUMI_COMMAND_STDOUT"
PULUMI_COMMAND_STDERR = "PULUMI_COMMAND_STDERR"
"""PC util/util.go:29-30."""

DEFAULT_INTERPRETER = ("/bin/sh", "-c")
"""PC local/commandOutputs.go:44-49 (not Windows)."""

LogFn = Callable[[str], Awaitable[None]]

_SIGNALS = {
    signal.SIGHUP: "hangup",
    signal.SIGINT: "interrupt",
    signal.SIGQUIT: "quit",
    signal.SIGILL: "illegal instruction",
    signal.SIGTRAP: "trace/breakpoint trap",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGKILL: "killed",
    signal.SIGUSR1: "user defined signal 1",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGUSR2: "user defined signal 2",
    signal.SIGPIPE: "broken pipe",
    signal.SIGALRM: "alarm clock",
    signal.SIGTERM: "terminated",
}
"""Go's names of Linux signals (syscall zerrors_linux_amd64.go), as `signal: <name>`."""


class CommandError(Exception):
    """A command that failed; its message is the error pulumi-command returns."""


@dataclass(frozen=True)
class BaseInputs:
    """`local.BaseInputs` as `run` uses them (PC local/base.go:24-33), values known."""

    stdin: str | None = None
    logging: str | None = None
    interpreter: tuple[str, ...] | None = None
    dir: str | None = None
    environment: Mapping[str, str] | None = None
    add_previous_output_in_env: bool | None = None

    @classmethod
    def of(cls, props: Mapping[str, PropertyValue]) -> BaseInputs:
        def get(key: str) -> object:
            return plain(props[key]) if key in props else None

        interpreter = get("interpreter")
        environment = get("environment")
        add_previous = get("addPreviousOutputInEnv")
        return cls(
            stdin=_str_or_none(get("stdin")),
            logging=_str_or_none(get("logging")),
            interpreter=tuple(str(a) for a in interpreter)
            if isinstance(interpreter, list)
            else None,
            dir=_str_or_none(get("dir")),
            environment={str(k): str(v) for k, v in environment.items()}
            if isinstance(environment, dict)
            else None,
            add_previous_output_in_env=add_previous if isinstance(add_previous, bool) else None,
        )

    def logs_stdout(self) -> bool:
        """`Logging.ShouldLogStdout` (PC local/logging.go:27-29)."""
        return self.logging is None or self.logging in ("stdout", "stdoutAndStderr")

    def logs_stderr(self) -> bool:
        """`Logging.ShouldLogStderr` (PC local/logging.go:30-32)."""
        return self.logging is None or self.logging in ("stderr", "stdoutAndStderr")


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()


def _signal_name(number: int) -> str:
    try:
        return _SIGNALS.get(signal.Signals(number), f"signal {number}")
    except ValueError:
        return f"signal {number}"


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Outputs:
    """`local.BaseOutputs`' stdout and stderr (PC local/base.go:131-136)."""

    stdout: str = ""
    stderr: str = ""


def go_quote(text: str) -> str:
    """Go's `%q` of a string (strconv.Quote)."""
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    escapes["\v"] = "\\v"
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _go_errno(errno: int | None) -> str:
    """Go's text of an errno: the C text, lower-case first letter."""
    if errno is None:
        return "unknown error"
    text = os.strerror(errno)
    return text[:1].lower() + text[1:]


def command_environment(
    base: BaseInputs, previous: Outputs, own: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The command's environment (PC local/commandOutputs.go:81-95)."""
    env = dict(os.environ if own is None else own)
    env.update(base.environment or {})
    if base.add_previous_output_in_env is None or base.add_previous_output_in_env:
        if previous.stdout:
            env[PULUMI_COMMAND_STDOUT] = previous.stdout
        if previous.stderr:
            env[PULUMI_COMMAND_STDERR] = previous.stderr
    return env


class _Lines:
    """`bufio.ScanLines` over a stream fed in chunks."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._pending.extend(chunk)
        lines: list[str] = []
        while (end := self._pending.find(b"\n")) != -1:
            lines.append(_line(bytes(self._pending[:end])))
            del self._pending[: end + 1]
        return lines

    def close(self) -> list[str]:
        rest, self._pending = bytes(self._pending), bytearray()
        return [_line(rest)] if rest else []


def _line(raw: bytes) -> str:
    return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


class Processes:
    """The provider's running commands, so a Cancel can kill them all."""

    def __init__(self) -> None:
        self._running: set[asyncio.subprocess.Process] = set()

    def add(self, process: asyncio.subprocess.Process) -> None:
        self._running.add(process)

    def discard(self, process: asyncio.subprocess.Process) -> None:
        self._running.discard(process)

    def kill_all(self) -> None:
        for process in list(self._running):
            _kill(process)


async def run(
    command: str,
    base: BaseInputs,
    previous: Outputs,
    log: LogFn | None = None,
    processes: Processes | None = None,
    timeout: float = 0,
) -> Outputs:
    """Run `command`; its outputs, or CommandError with pulumi-command's message.

    A `timeout` (seconds, 0 for none) is the request context's deadline: the
    process is killed then, and fails as `signal: killed` with its output so far."""
    args = [*(base.interpreter or DEFAULT_INTERPRETER), command]
    cwd = base.dir if base.dir is not None else os.getcwd()
    env = command_environment(base, previous)
    both = bytearray()

    def failed(reason: str) -> CommandError:
        text = both.decode("utf-8", errors="replace")
        return CommandError(f"{reason}: running {go_quote(command)}:\n{text}")

    program = args[0]
    if "/" not in program:
        found = shutil.which(program, path=os.environ.get("PATH", ""))
        if found is None:
            raise failed(f'exec: "{program}": executable file not found in $PATH')
        program = found
    stdin_data = base.stdin.encode() if base.stdin else None
    try:
        process = await asyncio.create_subprocess_exec(
            args[0],
            *args[1:],
            executable=program,
            cwd=cwd or None,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin_data else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        if cwd and exc.filename == cwd:
            raise failed(f"chdir {cwd}: {_go_errno(exc.errno)}") from None
        raise failed(f"fork/exec {program}: {_go_errno(exc.errno)}") from None

    if processes is not None:
        processes.add(process)
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def send_logs() -> None:
        while (line := await lines.get()) is not None:
            if log is not None:
                await log(line)

    async def read(stream: asyncio.StreamReader | None, into: bytearray, logged: bool) -> None:
        assert stream is not None
        splitter = _Lines()
        while chunk := await stream.read(65536):
            into.extend(chunk)
            both.extend(chunk)
            if logged:
                for line in splitter.feed(chunk):
                    lines.put_nowait(line)
        if logged:
            for line in splitter.close():
                lines.put_nowait(line)

    async def feed_stdin() -> None:
        if stdin_data is None or process.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin_data)
            await process.stdin.drain()
        process.stdin.close()

    stdout, stderr = bytearray(), bytearray()
    sender = asyncio.create_task(send_logs())
    deadline = (
        asyncio.get_running_loop().call_later(timeout, _kill, process) if timeout > 0 else None
    )
    try:
        await asyncio.gather(
            feed_stdin(),
            read(process.stdout, stdout, base.logs_stdout()),
            read(process.stderr, stderr, base.logs_stderr()),
        )
        code = await process.wait()
    except asyncio.CancelledError:
        _kill(process)
        await process.wait()
        sender.cancel()
        raise
    finally:
        if deadline is not None:
            deadline.cancel()
        if processes is not None:
            processes.discard(process)
    lines.put_nowait(None)
    await sender  # every line is sent before the result (PC :109-110)

    if code > 0:
        raise failed(f"exit status {code}")
    if code < 0:
        raise failed(f"signal: {_signal_name(-code)}")
    return Outputs(
        stdout=stdout.decode("utf-8", errors="replace").removesuffix("\n"),
        stderr=stderr.decode("utf-8", errors="replace").removesuffix("\n"),
    )
