"""What a replica's `vllm serve` may be given by hand, and what it must not.

The deployment sets some of vLLM's options and variables itself; one given
again in 'extraArgs' or 'extraEnv' (the stack's or a pool's) would break it,
or be found only after 'readyTimeoutSeconds'. Kept apart from the settings
models so that a pool's keys and the top-level ones share one set of rules.
"""

from __future__ import annotations

from collections.abc import Mapping

# vLLM flags the deployment sets itself, or that break it: overriding them from
# extraArgs breaks it (a wrong --port is found only after readyTimeoutSeconds).
# Each is vLLM v0.33.0's `vllm serve` option (docs/vllm.md has the citations).
_TLS_AT_NGINX = (
    "the health check, nginx and the steps reach replicas over plain HTTP; set "
    "'loadBalancer.tls' for HTTPS"
)
_ONE_API_SERVER = (
    "the deployment runs one API server per replica: with several, vLLM stops on "
    "SIGTERM through another path than --shutdown-timeout's drain and keeps its "
    "metrics in multiprocess mode"
)
MANAGED_FLAGS = {
    "--model": "set 'model'",
    "--served-model-name": "set 'servedModelName'",
    "--host": "replicas listen on 0.0.0.0 inside their container",
    "--port": "replicas listen on 8000 inside their container; set 'basePort' for the host",
    "--tensor-parallel-size": "set 'tensorParallelSize'",
    "-tp": "set 'tensorParallelSize'",
    "--api-key": "set 'apiKey' with `pulumi config set --secret apiKey`",
    "--shutdown-timeout": "set 'shutdownTimeoutSeconds' (checked against 'stopGraceSeconds')",
    "--config": "a config file could set the model, host or port past these checks; "
    "list its options in extraArgs instead",
    "--uds": "replicas must listen on TCP port 8000 (a Unix socket replaces --host and --port)",
    "--grpc": "it serves gRPC on the port instead of the OpenAI HTTP API that nginx, the "
    "health check and the steps use",
    "--headless": "it starts no API server: the replica would never answer /health",
    "--api-server-count": _ONE_API_SERVER,
    "-asc": _ONE_API_SERVER,
    "--ssl-keyfile": _TLS_AT_NGINX,
    "--ssl-certfile": _TLS_AT_NGINX,
}
SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
MANAGED_ENV = {
    "HF_HUB_OFFLINE": "the deployment sets it on replicas that must not download",
    "VLLM_CPU_KVCACHE_SPACE": "set 'cpu.kvcacheSpaceGb'",
    "VLLM_CPU_OMP_THREADS_BIND": "set 'cpu.coresPerReplica' or 'cpu.cpuSets'",
    "VLLM_ENGINE_READY_TIMEOUT_S": "set 'readyTimeoutSeconds': replicas get it, so that "
    "vLLM does not give up loading before the readiness step does",
    "HTTP_PROXY": "set 'proxy.http'",
    "HTTPS_PROXY": "set 'proxy.https'",
    "NO_PROXY": "set 'proxy.no'",
}


LORA_FLAGS = {
    "--enable-lora": "the deployment sets it for a pool that lists 'adapters'",
    "--no-enable-lora": "a pool that lists 'adapters' serves them with LoRA on",
    "--lora-modules": "list the adapters in the pool's 'adapters' (name and model)",
}
"""vLLM v0.33.0's LoRA options the deployment writes for a pool with adapters
(vllm/engine/arg_utils.py:1609-1613, vllm/entrypoints/common/cli_args.py:81-85)."""


def managed_flags_of(word: str, managed: Mapping[str, str] = MANAGED_FLAGS) -> list[str]:
    """The managed flags vLLM's parser would read `word` as, if it is an option.

    `vllm serve` parses with argparse's `allow_abbrev`, so a unique prefix of a long
    option is that option (`--served x`, `-t 2`); no full option of vLLM's parser is a
    prefix of a managed flag, so every such word is one of them or its abbreviation
    (docs/vllm.md, "Command line").
    """
    if not word.startswith("-") or word in ("-", "--"):
        return []
    flag = word.split("=", 1)[0]
    if flag.startswith("--"):
        # vLLM's parser takes --tensor_parallel_size for --tensor-parallel-size.
        flag = "--" + flag[2:].replace("_", "-")
        return [m for m in managed if m.startswith("--") and m.startswith(flag)]
    if len(flag) < 2 or not flag[1].isalpha():
        return []  # a negative number such as `--max-model-len -1`
    return [m for m in managed if not m.startswith("--") and m.startswith(flag)]


def managed_flag_problem(arg: str, managed: Mapping[str, str] = MANAGED_FLAGS) -> str | None:
    """Why `arg` must not be in extraArgs (it is, or abbreviates, a managed flag), or None."""
    found = managed_flags_of(arg, managed)
    if not found:
        return None
    flag = arg.split("=", 1)[0]
    if len(found) == 1 and found[0] in (flag, "--" + flag[2:].replace("_", "-")):
        return f"must not set {flag}: {managed[found[0]]}"
    reasons = "; ".join(f"{m}: {managed[m]}" for m in found)
    return (
        f"must not set {flag}: vLLM reads it as an abbreviation of {' or '.join(found)} ({reasons})"
    )


def extra_args_rule(args: tuple[str, ...]) -> tuple[str, ...]:
    if args and not args[0].startswith("-"):
        # They follow `vllm serve MODEL ... --tensor-parallel-size N`: a bare
        # first value would be a second positional argument, which vllm refuses.
        raise ValueError(
            "must begin with an option such as --max-model-len: `vllm serve` takes the "
            "model as its only positional argument"
        )
    for arg in args:
        problem = managed_flag_problem(arg)
        if problem is not None:
            raise ValueError(problem)
    return args


def extra_env_rule(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if name.upper() in SECRET_ENV_NAMES:
            raise ValueError(
                f"must not set {name}: it would sit in plain text in the stack file and the "
                "container's inputs; set 'hfToken' / 'apiKey' with `pulumi config set --secret`"
            )
        if name.upper() in MANAGED_ENV:
            raise ValueError(f"must not set {name}: {MANAGED_ENV[name.upper()]}")
    return env
