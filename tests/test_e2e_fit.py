"""The fit check through the real Pulumi CLI, on an engine with faked GPUs.

The engine is a test dockerd (tests/support/netns_hosts.py) started with our
fake `nvidia-container-runtime-hook` on its PATH, so its built-in `nvidia`
device driver is registered and a device request runs the hook, which puts an
`nvidia-smi` listing two 24564 MiB GPUs into the container
(tests/support/fake_gpus.py): the fit step's GPU query goes through the same
device-request path as on a GPU machine. The model facts come from the
stand-in hub (standin/hubshim.py) with real models' config.json and weight
sizes, through the real download job script (`--facts`).

What it proves: a model that does not fit (Llama-3.1-70B-Instruct on one
24 GB GPU per replica) stops `pulumi up` at the fit step, before the download
and any replica (no such step in the engine's event log, no container), with
the figures and what would fit in `up`'s output; with two model pools, one
too big, `pulumi up --continue-on-error` fails that pool's check and creates
none of its steps after it, while the other pool's check, download and replica
go ahead (nginx, which waits for every pool, is not created); once both fit
(Qwen2.5-0.5B-Instruct) the deployment comes up on the same stack; an engine
without the NVIDIA driver (the machine's own) makes the check say it skipped
and go on (tests/test_fit_step.py, with a mock engine, covers the CPU figures'
wiring).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from components.plan.specs import SPEC_ENV, FitReplica, FitSpec, encode
from tests.support.docker_engine import base_image, docker_client, standin_image
from tests.support.fake_gpus import INVENTORY_ENV, install_hook, inventory
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.pulumi_engine import Stack, names
from tests.test_e2e_multihost import NO_ENGINE

pytestmark = pytest.mark.docker

TOO_BIG = "standin-org/Llama-3.1-70B-Instruct"
FITS = "standin-org/Qwen2.5-0.5B-Instruct"
GPU = "NVIDIA GeForce RTX 4090"
ROOT = Path(__file__).resolve().parent.parent
PROBE = "e2e-fit-probe"


def run_step(
    standin: str, model: str, backend: str, *replicas: FitReplica
) -> subprocess.CompletedProcess[str]:
    """`python -m components.steps.fit` as the local command runs it, on this machine's engine."""
    spec = FitSpec(
        model=model,
        name=PROBE,
        env={"STANDIN_HUB_MODELS": f"{TOO_BIG},{FITS}"},
        backend=backend,
        tensor_parallel_size=1,
        replicas=replicas,
        extra_args=(),
        warn_above_percent=90,
        cpu_kvcache_gb=4,
        image=standin,
    )
    return subprocess.run(
        [sys.executable, "-m", "components.steps.fit"],
        cwd=ROOT,
        env={**os.environ, SPEC_ENV: encode(spec)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_engine_without_the_nvidia_runtime_skips_the_check() -> None:
    machine = docker_client()
    done = run_step(standin_image(machine), TOO_BIG, "gpu", FitReplica("r0", ("0",)))
    assert done.returncode == 0, done.stderr
    assert (
        "[fit] fit check skipped: the engine has no NVIDIA runtime (docker: could not select "
        'device driver "nvidia"); install the NVIDIA Container Toolkit for GPU replicas; going on'
    ) in done.stdout
    assert not [c for c in machine.containers.list(all=True) if str(c.name).startswith(PROBE)]


def test_cpu_replicas_against_the_hosts_memory() -> None:
    machine = docker_client()
    standin = standin_image(machine)
    host = int(machine.info()["MemTotal"])
    fits = run_step(standin, FITS, "cpu", FitReplica("c0", ()))
    assert fits.returncode == 0, fits.stderr
    # 988065536 B (the index's total_size) = 0.9 GiB, + 4 GiB of KV cache space.
    assert (
        "replicas c0 (CPU): 1 replica(s) x (weights 0.9 GiB + cpu.kvcacheSpaceGb 4 GiB) = "
        f"4.9 GiB, the engine's host has {host / 1024**3:.1f} GiB: fits"
    ) in fits.stdout
    too_big = run_step(standin, TOO_BIG, "cpu", FitReplica("c0", ()), FitReplica("c1", ()))
    assert too_big.returncode == 1
    # 2 x (141107412992 B + 4 GiB) = 290804760576 B = 270.8 GiB; one 131072-token
    # sequence: 80 x 8 x 128 x 2 x 2 B x 131072 = 40 GiB > 4 GiB.
    assert (
        "replicas c0, c1 (CPU): 2 replica(s) x (weights 131.4 GiB + cpu.kvcacheSpaceGb 4 GiB) "
        f"= 270.8 GiB, the engine's host has {host / 1024**3:.1f} GiB. What would fit:"
    ) in too_big.stderr
    assert (
        "replica c0 (CPU): the KV cache for one 131072-token sequence is 40.0 GiB, "
        "cpu.kvcacheSpaceGb is 4 GiB. What would fit: cpu.kvcacheSpaceGb 40"
    ) in too_big.stderr
    assert not [c for c in machine.containers.list(all=True) if str(c.name).startswith(PROBE)]


PORT = 18900


def stack_config(host: NetnsHost, model: str, standin: str, base: str) -> dict[str, Any]:
    return {
        "backend": "gpu",
        "model": model,
        "servedModelName": "fit-model",
        "image": {"prebuilt": standin},
        "namePrefix": "e2e-fit",
        "networkName": "e2e-fit-net",
        "hfCache": {"volume": "e2e-fit-cache", "keepOnDestroy": False},
        "compileCache": {"enabled": False},
        "basePort": PORT + 1,
        "readyTimeoutSeconds": 60,
        "verifyTimeoutSeconds": 60,
        "shutdownTimeoutSeconds": 0,
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3},
        "fitCheck": {"enabled": True, "warnAbovePercent": 90},
        "extraEnv": {
            "STANDIN_HUB_MODELS": f"{TOO_BIG},{FITS}",
            "STANDIN_DOWNLOAD_SECONDS": "0",
            "STANDIN_LOAD_SECONDS": "1",
        },
        "hosts": [
            {
                "name": host.name,
                "dockerHost": host.docker_host,
                "address": host.address,
                "gpus": [[0], [1]],
            }
        ],
        "loadBalancer": {
            "host": host.name,
            "name": "e2e-fit-lb",
            "port": PORT,
            "bindAddress": host.address,
            "image": base,
            "dynamicResolve": False,
        },
    }


@pytest.mark.netns
def test_too_big_stops_before_any_replica_and_a_fit_deploys(tmp_path: Path) -> None:
    machine = docker_client()
    standin, base = standin_image(machine), base_image(machine)
    hook = install_hook(tmp_path / "driver")
    engine_env = {
        "PATH": f"{hook}:{os.environ['PATH']}",
        INVENTORY_ENV: inventory((0, GPU, 24564), (1, GPU, 24564)),
    }
    with netns_hosts(1, engine_env=engine_env) as (host,):
        load_images(host, standin, base)
        client = host.client()
        replicas = {f"e2e-fit-{host.name}-0", f"e2e-fit-{host.name}-1"}
        stack = Stack(
            tmp_path / "project",
            "fit",
            stack_config(host, TOO_BIG, standin, base),
            env={"DOCKER_HOST": NO_ENGINE},
        )
        try:
            began = time.monotonic()
            failed = stack.up_failing()
            too_big_seconds = time.monotonic() - began
            steps = failed.result.steps
            fit = f"vllm-{host.name}-fit"
            assert failed.result.index(fit, "failed") >= 0
            declared = set(names(steps))
            assert not declared & {f"vllm-{r}" for r in replicas}, declared
            assert f"vllm-{host.name}-download" not in declared
            existing = {c.name for c in client.containers.list(all=True)}
            assert not existing & replicas, existing
            # 141107412992 B = 131.4 GiB; 80 layers x 8 KV heads x 128 x 2 x 2 B x 131072
            # tokens = 40 GiB; 24564 MiB x 0.92 = 22.1 GiB; tp 8: 16.4 + 5 = 21.4 GiB.
            message = (
                f"replica e2e-fit-{host.name}-0 (GPU 0, {GPU} 24564 MiB): needs 171.4 GiB "
                "(weights 131.4 GiB + KV cache for one 131072-token sequence 40.0 GiB), has "
                "22.1 GiB (24.0 GiB x gpu-memory-utilization 0.92). What would fit: "
                "tensorParallelSize 8 (8 such GPUs per replica)."
            )
            assert message in failed.output, failed.output
            assert "error: the model does not fit:" in failed.output
            assert "these replicas were not created and nothing was downloaded" in failed.output
            assert "Change the stack (tensorParallelSize and hosts[0].gpus," in failed.output
            assert "Traceback" not in failed.output
            print(f"\n--- too big: `pulumi up` failed after {too_big_seconds:.1f} s; its output:")
            print("\n".join(line for line in failed.output.splitlines() if "vllm-vnh1-fit" in line))

            # Two pools, the too-big one's check fails: with --continue-on-error
            # Pulumi goes on with what does not depend on it, the other pool.
            stack.write_config(pools_config(host, big=TOO_BIG))
            began = time.monotonic()
            failed = stack.up_failing("--continue-on-error")
            pools_seconds = time.monotonic() - began
            big, small = (f"vllm-{host.name}-{pool}" for pool in ("big", "small"))
            assert failed.result.index(f"{big}-fit", "failed") >= 0
            # Its advice names the pool's own keys, as the stack file has them.
            assert "What would fit: models[0].tensorParallelSize 8 (8 such" in failed.output
            assert (
                "Change the stack (models[0].tensorParallelSize and models[0].hosts[0].gpus, "
                "models[0].extraArgs --max-model-len,"
            ) in failed.output, failed.output
            assert failed.result.index(f"{small}-fit", "outputs") < failed.result.index(
                f"{small}-download", "pre"
            )
            declared = set(names(failed.result.steps))
            assert not {f"{big}-download", f"vllm-e2e-fit-big-{host.name}-0"} & declared
            running = {c.name for c in client.containers.list()}
            assert f"e2e-fit-small-{host.name}-0" in running, running
            # nginx waits for every pool's readiness: it is not created.
            assert not {"e2e-fit-lb", f"e2e-fit-big-{host.name}-0"} & running, running
            print(f"--- one pool too big: `pulumi up` failed after {pools_seconds:.1f} s")

            stack.write_config(pools_config(host, big=FITS))
            began = time.monotonic()
            passed = stack.up()
            fit_seconds = time.monotonic() - began
            assert passed.index(f"{big}-fit") < passed.index(f"{big}-download")
            running = {c.name for c in client.containers.list()}
            assert {f"e2e-fit-{p}-{host.name}-0" for p in ("big", "small")} <= running, running
            assert "e2e-fit-lb" in running
            print(f"--- both fit: `pulumi up` took {fit_seconds:.1f} s")
        finally:
            stack.destroy()


def pools_config(host: NetnsHost, big: str) -> dict[str, Any]:
    """Pool 'big' on GPU 0 with `big` as its model, pool 'small' (a model that
    fits) on GPU 1."""
    return {
        "model": None,
        "servedModelName": None,
        "hosts": [{"name": host.name, "dockerHost": host.docker_host, "address": host.address}],
        "models": [
            {
                "name": pool,
                "model": model,
                "servedModelName": pool,
                "hosts": [{"host": host.name, "gpus": [[gpu]]}],
            }
            for pool, model, gpu in (("big", big, 0), ("small", FITS, 1))
        ],
    }
