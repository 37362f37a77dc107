"""Cold start: how long until all N replicas serve, ours against the guide's way.

    python -m bench.cold_start [--download 6] [--load 3] [--replicas 2 3]

Needs a Docker engine and the offline images (`bash scripts/test.sh` makes
them; or `bash scripts/docker-engine.sh start && bash scripts/base-image.sh`).
The vLLM stand-in simulates a download of D seconds into the shared cache and
a load of L seconds. Three ways, each from an empty cache volume:

- ours: the program's declared resources applied in graph order (replica 0,
  the cache gate, replicas 1..N together with the hub offline);
- guide: by hand as the guide says, one replica at a time, each started
  once the previous one is ready;
- no gate: every replica at once on the empty cache, which is fast but
  downloads several times into one cache (what the gate exists to prevent).

Prints a table and writes bench/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import docker

from components.gate import wait_healthy
from tests.support.docker_apply import Applied, Applier
from tests.support.docker_engine import base_image, remove_named, standin_image
from tests.support.pulumi_capture import Declared, run_program
from tests.test_e2e import ci_config

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "bench-cold"
CACHE = f"{PREFIX}-cache"


def _config(replicas: int, download: float, load: float) -> dict[str, str]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=replicas,
        hfCache={"volume": CACHE, "keepOnDestroy": False},
        basePort=18501,
        extraEnv={"STANDIN_DOWNLOAD_SECONDS": str(download), "STANDIN_LOAD_SECONDS": str(load)},
        loadBalancer={
            "name": f"{PREFIX}-lb",
            "port": 18500,
            "bindAddress": "127.0.0.1",
            "image": "vllm-nginx/base:bookworm",
            "dynamicResolve": False,
        },
    )


def _clean(client: docker.DockerClient, replicas: int) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}{i}" for i in range(replicas)] + [f"{PREFIX}-lb"],
        networks=[f"{PREFIX}-net"],
        volumes=[CACHE],
    )


def _downloads(client: docker.DockerClient) -> int:
    out = client.containers.get(f"{PREFIX}0").exec_run(
        ["cat", "/root/.cache/huggingface/standin-downloads.log"]
    )
    if out.exit_code != 0 or not isinstance(out.output, bytes):
        return 0
    return len(out.output.decode().strip().splitlines())


def ours(client: docker.DockerClient, replicas: int, download: float, load: float) -> float:
    run = run_program(_config(replicas, download, load), ["vllm-nginx:apiKey"])
    applied = Applier(client, run.declared).apply()
    first = applied.timings[f"vllm-{PREFIX}0"].started
    last_gate = "vllm-replicas-ready" if replicas > 1 else f"vllm-{PREFIX}0-ready"
    return applied.timings[last_gate].finished - first


def _replicas(declared: list[Declared]) -> list[Declared]:
    containers = [
        d
        for d in declared
        if d.type == "docker:index/container:Container" and d.inputs["name"] != f"{PREFIX}-lb"
    ]
    return sorted(containers, key=lambda d: str(d.inputs["name"]))


def by_hand(
    client: docker.DockerClient, replicas: int, download: float, load: float, *, serial: bool
) -> float:
    """The same containers, started as a person following the guide would."""
    run = run_program(_config(replicas, download, load), ["vllm-nginx:apiKey"])
    applier = Applier(client, run.declared)
    applied = Applied()
    setup = [
        d
        for d in run.declared
        if d.type in ("docker:index/network:Network", "docker:index/volume:Volume")
        or d.type == "docker:index/remoteImage:RemoteImage"
    ]
    for resource in setup:
        applier._apply_one(resource, applied)
    start = time.monotonic()
    names = []
    for replica in _replicas(run.declared):
        if not serial:
            # Without the gate nobody waits, and nobody sets the hub offline.
            replica.inputs["envs"] = [e for e in replica.inputs["envs"] if e != "HF_HUB_OFFLINE=1"]
        applier._apply_one(replica, applied)
        names.append(str(replica.inputs["name"]))
        if serial:
            wait_healthy(client, names[-1:], timeout=300, poll=0.2)
    wait_healthy(client, names, timeout=300, poll=0.2)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--download", type=float, default=6.0, help="simulated download, s")
    parser.add_argument("--load", type=float, default=3.0, help="simulated load, s")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    base_image(client)
    standin_image(client)
    rows: list[dict[str, Any]] = []
    for n in args.replicas:
        for way in ("ours", "guide", "no gate"):
            _clean(client, n)
            try:
                if way == "ours":
                    seconds = ours(client, n, args.download, args.load)
                else:
                    seconds = by_hand(client, n, args.download, args.load, serial=way == "guide")
                downloads = _downloads(client)
            finally:
                _clean(client, n)
            rows.append(
                {
                    "replicas": n,
                    "way": way,
                    "seconds": round(seconds, 2),
                    "downloads": downloads,
                    "in_D_L": round((seconds - args.download) / args.load, 2),
                }
            )
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cold_start.json").write_text(
        json.dumps(
            {
                "download_seconds": args.download,
                "load_seconds": args.load,
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nD = {args.download} s, L = {args.load} s")
    print("| replicas | way | all ready (s) | = D + k*L, k | downloads |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['replicas']} | {row['way']} | {row['seconds']} | {row['in_D_L']} "
            f"| {row['downloads']} |"
        )


if __name__ == "__main__":
    main()
