"""Command line of the stand-in: vLLM's arguments plus the stand-in's own knobs.

The deployment starts replicas with vLLM's arguments and environment only, so
every stand-in knob can also come from an environment variable (flag wins over
environment, environment over the default). Arguments vLLM knows but the
stand-in does not simulate are accepted and reported, so that the deployment's
real command line never makes the stand-in fail.

The model as vLLM v0.33.0's `vllm serve` takes it
(`vllm/utils/argparse_utils.py:324-369`, sdist of 0.33.0): the first word
when it is no option; `--model M` (or `--model=M`) is still accepted, with a
deprecation warning, and moved to the front; without either, a command line
with `--served-model-name` is refused ("`model` should be provided as the
first positional argument"). v0.11.0 refused `--model` outright.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    """Everything the server needs, resolved once at start."""

    model: str
    served_model_names: tuple[str, ...]
    host: str = "0.0.0.0"
    port: int = 8000
    api_key: str | None = None
    tensor_parallel_size: int = 1
    ttft_ms: float = 50.0
    token_ms: float = 20.0
    tokens: int = 16
    fail_every: int = 0
    """Every n-th generation request is answered 500 (0: none)."""
    replica_id: str = "standin"
    download_seconds: float = 0.0
    load_seconds: float = 0.0
    access_log: bool = True
    shutdown_timeout: int = 0
    """vLLM's `--shutdown-timeout` (v0.18.0 on): seconds to finish requests after
    SIGTERM; 0, the default, aborts them (standin/shutdown.py)."""
    ignored_args: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    enable_lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()
    """(name, path or Hub id) of each static adapter, as `--lora-modules` gives them."""
    max_loras: int = 1
    max_lora_rank: int = 16
    runner: str = "auto"
    convert: str = "auto"

    @property
    def pooling(self) -> bool:
        """Served by vLLM's pooling runner (embeddings), not the generate one.

        `--runner auto` picks from the architecture, which the stand-in's
        models do not have: it stands for a generative model then."""
        return self.runner == "pooling" or self.convert == "embed"

    @property
    def served_model_name(self) -> str:
        """The name responses carry: vLLM reports the first served name."""
        return self.served_model_names[0]


_MODEL_OPTION = re.compile(r"^--model(=.+|$)")
_CONFIG_OPTION = re.compile(r"^--config(=.+|$)")
_SERVED_OPTION = re.compile(r"^--served[-_]model[-_]name(=.+|$)")
MODEL_OPTION_WARNING = (
    "With `vllm serve`, you should provide the model as a positional argument or in a "
    "config file instead of via the `--model` option. The `--model` option will be "
    "removed in a future version."
)
MODEL_FIRST_ERROR = (
    "`model` should be provided as the first positional argument when using `vllm serve`. "
    "i.e. `vllm serve <model> --<arg> <value>`."
)


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"standin: environment {name}={raw!r} is not a number") from None
    if value < 0:
        raise SystemExit(f"standin: environment {name}={raw!r} must not be negative")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _lora_module(text: str) -> tuple[str, str]:
    """`name=path`, or the JSON form, as vLLM v0.33.0's `LoRAParserAction` reads one
    (vllm/entrypoints/common/cli_args.py:38-69)."""
    if "=" in text and "," not in text:
        name, path = text.split("=", 1)
        return name, path
    try:
        item = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"Invalid JSON format for --lora-modules: {text}"
        ) from None
    if not isinstance(item, dict) or "name" not in item or "path" not in item:
        raise argparse.ArgumentTypeError(f"Invalid fields for --lora-modules: {text}")
    return str(item["name"]), str(item["path"])


def build_parser() -> argparse.ArgumentParser:
    """The parser, separate so that `--help` documents both kinds of argument."""
    parser = argparse.ArgumentParser(
        prog="python -m standin",
        description="Stand-in for vLLM's OpenAI-compatible server (no model, timed tokens).",
    )
    vllm = parser.add_argument_group("vLLM arguments")
    vllm.add_argument(
        "--model",
        default=None,
        help="model (deprecated by `vllm serve` v0.33.0, which takes it as the first argument)",
    )
    vllm.add_argument("--host", default="0.0.0.0")
    vllm.add_argument("--port", type=int, default=8000)
    vllm.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="name(s) the API answers to; the first is reported (default: --model)",
    )
    vllm.add_argument("--api-key", default=None, help="required on /v1/* (env VLLM_API_KEY)")
    vllm.add_argument("--tensor-parallel-size", "-tp", type=_positive_int, default=1)
    vllm.add_argument("--disable-uvicorn-access-log", action="store_true")
    vllm.add_argument(
        "--shutdown-timeout",
        type=_non_negative_int,
        default=0,
        help="on SIGTERM, seconds to finish requests in flight (0: abort them)",
    )

    # LoRA (vllm/engine/arg_utils.py:1603-1615; `max_lora_rank` one of
    # vllm/config/lora.py:27's values, `max_loras` at least 1, :34-36).
    vllm.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False)
    vllm.add_argument("--lora-modules", type=_lora_module, nargs="+", default=None)
    vllm.add_argument("--max-loras", type=_positive_int, default=1)
    vllm.add_argument(
        "--max-lora-rank", type=int, choices=(1, 8, 16, 32, 64, 128, 256, 320, 512), default=16
    )
    # vllm/config/model.py:86-88, vllm/config/scheduler.py:20.
    vllm.add_argument("--runner", choices=("auto", "generate", "pooling", "draft"), default="auto")
    vllm.add_argument("--convert", choices=("auto", "none", "embed", "classify"), default="auto")

    knobs = parser.add_argument_group("stand-in knobs (each also from the environment)")
    knobs.add_argument("--ttft-ms", type=_non_negative_float, help="[STANDIN_TTFT_MS, 50]")
    knobs.add_argument("--token-ms", type=_non_negative_float, help="[STANDIN_TOKEN_MS, 20]")
    knobs.add_argument("--tokens", type=_positive_int, help="[STANDIN_TOKENS, 16]")
    knobs.add_argument("--replica-id", help="[STANDIN_REPLICA_ID, host name]")
    knobs.add_argument(
        "--download-seconds", type=_non_negative_float, help="[STANDIN_DOWNLOAD_SECONDS, 0]"
    )
    knobs.add_argument("--load-seconds", type=_non_negative_float, help="[STANDIN_LOAD_SECONDS, 0]")
    knobs.add_argument(
        "--fail-every", type=_non_negative_int, help="[STANDIN_FAIL_EVERY, 0]: n-th request 500"
    )
    return parser


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    """Resolve flags, environment and defaults into one `Config`."""
    environ = os.environ if env is None else env
    parser = build_parser()
    words = list(argv)
    warnings: list[str] = []
    at = next((i for i, w in enumerate(words) if _MODEL_OPTION.match(w)), None)
    if at is not None:
        warnings.append(MODEL_OPTION_WARNING)
        if words[at] == "--model" and at + 1 < len(words):
            words = [words[at + 1], *words[:at], *words[at + 2 :]]
        elif words[at] != "--model":
            words = [words[at].removeprefix("--model="), *words[:at], *words[at + 1 :]]
    if (
        words
        and words[0].startswith("-")
        and not any(_CONFIG_OPTION.match(w) for w in words)
        and any(_SERVED_OPTION.match(w) for w in words)
    ):
        parser.error(MODEL_FIRST_ERROR)
    # `vllm serve MODEL [options]`: the model is the first word, if it is no option
    # (a later bare word may be the value of an option we do not know).
    model_tag = words.pop(0) if words and not words[0].startswith("-") else None
    args, unknown = parser.parse_known_args(words)
    model = model_tag or args.model
    if not model:
        parser.error("the model is required: `vllm serve MODEL` (or --model MODEL)")
    if args.lora_modules and not args.enable_lora:
        # vLLM loads static adapters only with LoRA on; without, loading the
        # first fails at start-up (vllm/v1/worker/lora_model_runner_mixin.py:91).
        parser.error("--lora-modules needs --enable-lora")

    tokens_env = _env_number(environ, "STANDIN_TOKENS", 16)
    if tokens_env < 1 or tokens_env != int(tokens_env):
        raise SystemExit("standin: STANDIN_TOKENS must be a whole number of at least 1")

    replica_id = args.replica_id or environ.get("STANDIN_REPLICA_ID") or socket.gethostname()
    api_key = args.api_key if args.api_key is not None else environ.get("VLLM_API_KEY") or None
    served = tuple(args.served_model_name) if args.served_model_name else (model,)

    def pick(flag: float | None, name: str, default: float) -> float:
        return flag if flag is not None else _env_number(environ, name, default)

    return Config(
        model=model,
        served_model_names=served,
        host=args.host,
        port=args.port,
        api_key=api_key,
        tensor_parallel_size=args.tensor_parallel_size,
        ttft_ms=pick(args.ttft_ms, "STANDIN_TTFT_MS", 50.0),
        token_ms=pick(args.token_ms, "STANDIN_TOKEN_MS", 20.0),
        tokens=args.tokens if args.tokens is not None else int(tokens_env),
        replica_id=replica_id,
        download_seconds=pick(args.download_seconds, "STANDIN_DOWNLOAD_SECONDS", 0.0),
        load_seconds=pick(args.load_seconds, "STANDIN_LOAD_SECONDS", 0.0),
        fail_every=int(pick(args.fail_every, "STANDIN_FAIL_EVERY", 0)),
        access_log=not args.disable_uvicorn_access_log,
        shutdown_timeout=args.shutdown_timeout,
        ignored_args=tuple(unknown),
        warnings=tuple(warnings),
        enable_lora=args.enable_lora,
        lora_modules=tuple(args.lora_modules or ()),
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        runner=args.runner,
        convert=args.convert,
    )
