"""The command line a language plugin is started with, parsed the way Go's `flag` package does.

The engine starts a language plugin as `<plugin> [--logtostderr] [-v=N] [--tracing URL]
ENGINE_ADDRESS`: the flags first (only when `--logflow` / tracing are on), the engine's
gRPC address as the one positional argument, last (pulumi pkg/v3@v3.274.1
resource/plugin/langruntime_plugin.go:208-211, `buildArgsForNewPlugin`;
resource/plugin/plugin.go:740-756, `buildPluginArguments`).

The real host parses them with Go's `flag` package: its own flags (`-tracing`,
`-version`, `-use-executor`; sdk/python/cmd/pulumi-language-python/main.go:116-125) and
the ones glog registers on the same flag set (github.com/golang/glog@v1.2.5
glog_flags.go:388-397, glog_file.go:44-46). Go's rules: one or two dashes, `-f=v` or
`-f v` (a bool flag only `-f` or `-f=v`), parsing stops at the first non-flag argument
or after `--`, an undefined flag is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BOOL_FLAGS = frozenset({"version", "logtostderr", "alsologtostderr"})
VALUE_FLAGS = frozenset(
    {
        "tracing",
        "use-executor",
        "v",
        "vmodule",
        "log_backtrace_at",
        "stderrthreshold",
        "log_dir",
        "log_link",
        "logbuflevel",
    }
)
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class FlagError(ValueError):
    """A command line Go's flag package would refuse (the real host then exits with 2)."""


@dataclass(frozen=True)
class Flags:
    tracing: str = ""
    use_executor: str = ""
    version: bool = False
    logtostderr: bool = False
    verbose: int = 0
    positional: tuple[str, ...] = ()

    @property
    def engine_address(self) -> str:
        """The first positional argument, if any (main.go:170-174)."""
        return self.positional[0] if self.positional else ""


def parse(args: Sequence[str]) -> Flags:
    values: dict[str, str] = {}
    bools: dict[str, bool] = {}
    rest = list(args)
    while rest:
        arg = rest[0]
        if len(arg) < 2 or not arg.startswith("-"):
            break
        rest.pop(0)
        if arg == "--":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, value = name.partition("=")
        if name in BOOL_FLAGS:
            if not has_value:
                bools[name] = True
            elif value in _TRUE or value in _FALSE:
                bools[name] = value in _TRUE
            else:
                raise FlagError(f"invalid boolean value {value!r} for -{name}")
        elif name in VALUE_FLAGS:
            if not has_value:
                if not rest:
                    raise FlagError(f"flag needs an argument: -{name}")
                value = rest.pop(0)
            values[name] = value
        else:
            raise FlagError(f"flag provided but not defined: -{name}")
    verbose = values.get("v", "0")
    try:
        level = int(verbose)
    except ValueError:
        raise FlagError(f"invalid value {verbose!r} for flag -v") from None
    return Flags(
        tracing=values.get("tracing", ""),
        use_executor=values.get("use-executor", ""),
        version=bools.get("version", False),
        logtostderr=bools.get("logtostderr", False),
        verbose=level,
        positional=tuple(rest),
    )
