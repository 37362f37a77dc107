"""The fit check step: does the model fit each replica's GPUs, before the long wait?

Run after the vLLM image is on the engine and before the download and every replica,
it asks that engine, in short containers of the vLLM image, for each replica's GPUs
(`nvidia-smi` under the replica's device request; `docker info` on CPU) and the
model's facts (the download job's `--facts`). `memory_fit` gives the verdict: a model
that does not fit stops `pulumi up` before the download; one that cannot run says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest

from components.containers.vllm.download_job import ERROR_PREFIX, FACTS_PREFIX
from components.plan.specs import FitSpec
from components.steps.download import (
    LABEL,
    DownloadFailed,
    job_container,
    mounts,
    remove_leftover,
    stop_on_signal,
)
from components.steps.engine import reachable_engine
from components.steps.memory_fit import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    FactsMissing,
    Gpu,
    ModelShape,
    Verdict,
    check_cpu_replicas,
    check_gpu_replica,
    flag_value,
    gib,
    model_shape,
    parse_inventory,
    text_config,
)
from components.steps.readiness import redact
from components.steps.runner import spec_of

GPU_QUERY = ("--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits")


def next_steps(key: str, gpus_key: str | None = None) -> str:
    """What to do, naming the keys as the stack file has them (`key`: 'models[1].';
    `gpus_key` where it is not `<key>gpus`, as with 'hosts': 'hosts[1].gpus')."""
    return (
        f"Change the stack ({key}tensorParallelSize and {gpus_key or key + 'gpus'}, {key}extraArgs "
        "--max-model-len, or a quantised model), check it (python -m components.cli.check), "
        "then run `pulumi up` again; these replicas were not created and nothing was "
        "downloaded for them. To deploy anyway, set fitCheck.enabled false."
    )


WAIT_SECONDS = 120
"""How long one short container may take (the hub's metadata, nvidia-smi)."""


class Skipped(RuntimeError):
    """The check cannot run here; the message says why, and `pulumi up` goes on."""


def _finish(container: Container, what: str) -> tuple[int, str]:
    """Start it and wait for its end: exit code and output; `Skipped` if it hangs."""
    container.start()
    try:
        code = int(container.wait(timeout=WAIT_SECONDS).get("StatusCode", 1))
    except OSError:  # requests' ReadTimeout, under docker-py, is an OSError
        raise Skipped(f"{what} did not end within {WAIT_SECONDS} s") from None
    return code, container.logs().decode("utf-8", "replace")


def _say(message: str) -> None:
    print(f"[fit] {message}", flush=True)


def _run(client: docker.DockerClient, name: str, **create: Any) -> tuple[int, str]:
    """A short container to its end: exit code and output; always removed."""
    with contextlib.suppress(DownloadFailed):
        remove_leftover(client, name)
    container = client.containers.create(name=name, labels={LABEL: "job"}, detach=True, **create)
    try:
        return _finish(container, "nvidia-smi")
    finally:
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True)


def gpu_inventory(
    client: docker.DockerClient, image: str, name: str, gpu_ids: Sequence[str]
) -> list[Gpu]:
    """The replica's GPUs as seen from a container that requested them as it does."""
    try:
        code, out = _run(
            client,
            name,
            image=image,
            entrypoint=["nvidia-smi"],
            command=list(GPU_QUERY),
            network_mode="none",
            device_requests=[
                # "utility" makes the toolkit put nvidia-smi in; "gpu" selects the driver.
                DeviceRequest(
                    driver="nvidia", device_ids=list(gpu_ids), capabilities=[["gpu", "utility"]]
                )
            ],
        )
    except ImageNotFound:
        raise Skipped(f"the image {image} is not on the engine") from None
    except APIError as err:
        text = str(err.explanation or err)
        if "could not select device driver" in text:
            raise Skipped(
                "the engine has no NVIDIA runtime (docker: could not select device driver "
                '"nvidia"); install the NVIDIA Container Toolkit for GPU replicas'
            ) from None
        raise Skipped(f"the GPU query could not run on the engine: {text}") from None
    gpus = parse_inventory(out)
    if code != 0 or not gpus:
        raise Skipped(f"nvidia-smi answered no GPU (exit {code}): {out.strip()[-300:]}")
    return gpus


def model_facts(
    client: docker.DockerClient,
    *,
    image: str,
    model: str,
    name: str,
    env: dict[str, str],
    volumes: dict[str, dict[str, str]],
    token: str | None,
) -> dict[str, Any]:
    """The model's config and weight bytes, by the download job's script in the vLLM image."""
    try:
        container = job_container(
            client,
            image=image,
            name=name,
            args=["--model", model, "--facts"],
            env=env,
            volumes=volumes,
            network="host",
            token=token,
        )
    except ImageNotFound:
        raise Skipped(f"the image {image} is not on the engine") from None
    except DownloadFailed as err:
        raise Skipped(str(err)) from None
    try:
        code, output = _finish(container, f"reading {model}'s metadata")
    finally:
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True)
    lines = output.splitlines()
    for line in lines:
        if line.startswith(FACTS_PREFIX):
            found: dict[str, Any] = json.loads(line[len(FACTS_PREFIX) :])
            return found
    said = [line[len(ERROR_PREFIX) :] for line in lines if line.startswith(ERROR_PREFIX)]
    cause = said[-1] if said else f"exit {code}: " + " | ".join(lines[-3:])
    raise Skipped(f"cannot read {model}'s metadata: {cause}")


def _describe(shape: ModelShape, facts: dict[str, Any]) -> str:
    length = f"max length {shape.max_len} ({shape.max_len_from})" if shape.max_len else "auto"
    return (
        f"{facts['model']}: weights {gib(shape.weight_bytes)} ({facts['weights_from']}), "
        f"{shape.layers} layers, {shape.kv_heads} KV heads of {shape.head_size}, "
        f"KV {shape.kv_dtype_bytes} byte(s) per value, {length}"
    )


def check(client: docker.DockerClient, args: FitSpec, token: str | None) -> list[Verdict]:
    """Every replica's verdict; `Skipped` when the check cannot run."""
    gpu_of: dict[str, list[Gpu]] = {}
    host_bytes = 0
    if args.backend == "gpu":
        groups = {r.gpus for r in args.replicas}
        for n, group in enumerate(sorted(groups)):
            found = gpu_inventory(client, args.image, f"{args.name}-gpus{n}", group)
            for replica in args.replicas:
                if replica.gpus == group:
                    # nvidia-smi numbers a container's GPUs from 0: name them as the replica does.
                    gpu_of[replica.name] = [
                        Gpu(index=i, uuid=g.uuid, name=g.name, memory_mib=g.memory_mib)
                        for i, g in zip(sorted(group, key=int), found, strict=False)
                    ] or found
    else:
        host_bytes = int(client.info().get("MemTotal") or 0)
        if host_bytes <= 0:
            raise Skipped("the engine did not say how much memory its host has")
    facts = model_facts(
        client,
        image=args.image,
        model=args.model,
        name=f"{args.name}-facts",
        env=dict(args.env),
        volumes=mounts(args.volumes, "ro"),
        token=token,
    )
    if not facts.get("config"):
        raise Skipped(f"{args.model} has no config.json to compute the figures from")
    try:
        shape = model_shape(
            facts["config"],
            int(facts["weight_bytes"]),
            args.extra_args,
        )
    except (FactsMissing, ValueError) as err:
        raise Skipped(f"{args.model}: {err}") from None
    _say(_describe(shape, facts))
    warn = args.warn_above_percent / 100
    if args.backend != "gpu":
        names = [r.name for r in args.replicas]
        return check_cpu_replicas(
            names, host_bytes, shape, args.cpu_kvcache_gb, warn, args.config_key
        )
    utilization = float(
        flag_value(args.extra_args, "--gpu-memory-utilization") or DEFAULT_GPU_MEMORY_UTILIZATION
    )
    heads = text_config(facts["config"]).get("num_attention_heads")
    return [
        check_gpu_replica(
            r.name,
            gpu_of[r.name],
            shape,
            args.tensor_parallel_size,
            utilization,
            warn,
            heads if isinstance(heads, int) else None,
            args.config_key,
        )
        for r in args.replicas
    ]


def main() -> int:
    args = spec_of(FitSpec)
    if args is None:
        return 2
    signal.signal(signal.SIGTERM, stop_on_signal)
    client = reachable_engine(timeout=300)
    if client is None:
        return 1
    token = os.environ.get("HF_TOKEN") or None
    try:
        verdicts = check(client, args, token)
    except Skipped as err:
        _say(f"fit check skipped: {redact(str(err), os.environ)}; going on")
        return 0
    except (DockerException, OSError, ValueError, KeyError) as err:
        # Whatever else keeps it from running: say so, and leave `pulumi up` to go on.
        cause = redact(f"{type(err).__name__}: {err}", os.environ)
        _say(f"fit check skipped: it could not run ({cause}); going on")
        return 0
    for verdict in verdicts:
        if verdict.status == "fits":
            _say(verdict.text)
        elif verdict.status == "close":
            _say(f"warning: {verdict.text}")
    stops = [v for v in verdicts if v.stops]
    if not stops:
        return 0
    print("error: the model does not fit:", file=sys.stderr)
    for verdict in stops:
        print(f"  {verdict.text}", file=sys.stderr)
    print(next_steps(args.config_key, args.gpus_key), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
