"""Cold start: how long until all N replicas serve, ours against the guide's way.

    python -m bench.cold_start [--download 6] [--load 3] [--replicas 2 4] [--repeat 3]

Needs a Docker engine and the offline images (`bash scripts/test.sh` makes
them; or `bash scripts/docker-engine.sh start && bash scripts/base-image.sh`).
The stand-in simulates a download of D seconds into the shared cache (the
download job, or a replica that finds the cache empty) and a load of L
seconds. Each way starts from an empty cache volume:

- ours: the program's declared resources applied in graph order (the
  download step, then every replica at once, offline), from the start of the
  download step until the readiness check has seen every replica healthy;
- guide: by hand as the guide says, one replica at a time, each started once
  the previous one is ready (the first downloads: D + N x L).

The goal is the issue's: all replicas ready within 1.15 x (D + L). Each way
runs `--repeat` times and the median is reported with the range: on a small
shared machine one cold start varies by a few tenths of a second, the size of
the margin the goal leaves. The stand-in's L counts from its process start, as
a real vLLM's load includes its own start-up, so what exceeds D + L is the
deployment's own cost (starting the job and the containers, noticing they
serve).

Then an update: the rolling-update test's deployment (tests/test_e2e_rollout.py:
D = 1 s, L = 2 s, whatever --download and --load say) serves a continuous
streaming load (2 streams per replica, 24 tokens each, through nginx) while
every replica is replaced (a changed environment), in waves with a drain at
nginx before each stop (components.steps.rollout); reports how long the update took
and how many streams failed or were cut, out of how many.

Prints tables and writes bench/results/cold_start.json and .png (`--out` names
another stem, for runs with other D and L).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import docker

from components.steps.readiness import wait_healthy
from tests.support.docker_apply import Applied, Applier
from tests.support.docker_engine import base_image, remove_named, standin_image
from tests.support.pulumi_capture import Declared, run_program
from tests.support.streaming_load import streaming_load
from tests.test_e2e import ci_config

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "bench-cold"
CACHE = f"{PREFIX}-cache"
BASE_PORT = 18501


def _config(replicas: int, download: float, load: float) -> dict[str, str]:
    return ci_config(
        namePrefix=PREFIX,
        networkName=f"{PREFIX}-net",
        replicas=replicas,
        hfCache={"volume": CACHE, "keepOnDestroy": False},
        compileCache={"enabled": False},
        basePort=BASE_PORT,
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
        containers=[f"{PREFIX}{i}" for i in range(replicas)]
        + [f"{PREFIX}-lb", f"{PREFIX}-download"],
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
    return (
        applied.timings["vllm-replicas-ready"].finished - applied.timings["vllm-download"].started
    )


def _replicas(declared: list[Declared]) -> list[Declared]:
    containers = [
        d
        for d in declared
        if d.type == "docker:index/container:Container" and d.inputs["name"] != f"{PREFIX}-lb"
    ]
    return sorted(containers, key=lambda d: str(d.inputs["name"]))


def by_hand(client: docker.DockerClient, replicas: int, download: float, load: float) -> float:
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
    for index, replica in enumerate(_replicas(run.declared)):
        if index == 0:
            # The guide's first replica downloads the model itself.
            replica.inputs["envs"] = [e for e in replica.inputs["envs"] if e != "HF_HUB_OFFLINE=1"]
        applier._apply_one(replica, applied)
        names.append(str(replica.inputs["name"]))
        # Asked at its published port as soon as it can answer, as ours is.
        url = f"http://127.0.0.1:{BASE_PORT + index}/health"
        wait_healthy(client, names[-1:], timeout=300, poll=0.1, probes={names[-1]: url})
    return time.monotonic() - start


def update(client: docker.DockerClient, replicas: int) -> dict[str, Any]:
    """A rolling update of every replica under streaming load (as tests/test_e2e_rollout.py)."""
    from tests.test_e2e import API_KEY, SECRET_KEYS
    from tests.test_e2e_rollout import LB_URL, TOKENS, _clean, stack

    _clean(client, replicas)
    first = Applier(client, run_program(stack(replicas, "1"), SECRET_KEYS).declared)
    second: Applier | None = None
    try:
        first.apply()
        # Declared once the replicas run, as `pulumi up` would then see them
        # (components.shell.serving): that is what declares the waves.
        second = Applier(client, run_program(stack(replicas, "2"), SECRET_KEYS).declared)
        second.carry_state_from(first)
        with streaming_load(LB_URL, API_KEY, workers=2 * replicas, tokens=TOKENS) as streams:
            time.sleep(2)
            started = time.monotonic()
            second.apply()
            took = time.monotonic() - started
            time.sleep(2)
    finally:
        if second is not None:
            first.carry_state_from(second)
        first.destroy()
        _clean(client, replicas)
    during = [s for s in streams if s.finished >= started and s.started <= started + took]
    return {
        "replicas": replicas,
        "way": "update (rolling)",
        "seconds": round(took, 2),
        "streams": len(streams),
        "streams_during_update": len(during),
        "failed_or_cut": sum(1 for s in streams if not s.whole),
    }


def print_updates(updates: list[dict[str, Any]]) -> None:
    print("\n| N | update of every replica (s) | streams (during the update) | failed or cut |")
    print("| --- | --- | --- | --- |")
    for row in updates:
        print(
            f"| {row['replicas']} | {row['seconds']} | {row['streams']} "
            f"({row['streams_during_update']}) | {row['failed_or_cut']} |"
        )


def chart(
    rows: list[dict[str, Any]], updates: list[dict[str, Any]], d: float, l_: float, out: Path
) -> None:
    """Cold start by N (ours, the guide by hand, the goal) and the update's duration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({row["replicas"] for row in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.35
    for offset, way in ((-width / 2, "ours"), (width / 2, "guide")):
        mine = [next(r for r in rows if r["replicas"] == n and r["way"] == way) for n in ns]
        values = [r["seconds"] for r in mine]
        spread = [
            [r["seconds"] - min(r["runs"]) for r in mine],
            [max(r["runs"]) - r["seconds"] for r in mine],
        ]
        left.bar(
            [i + offset for i in range(len(ns))], values, width, yerr=spread, capsize=4, label=way
        )
    left.axhline(1.15 * (d + l_), color="black", linestyle="--", label="goal 1.15 (D + L)")
    left.set_xticks(range(len(ns)), [f"N = {n}" for n in ns])
    left.set_ylabel("all replicas ready (s)")
    left.set_title(f"cold start, D = {d:g} s, L = {l_:g} s (median, min to max)")
    left.legend()
    right.bar(
        [f"N = {u['replicas']}" for u in updates],
        [u["seconds"] for u in updates],
        color="tab:green",
    )
    for index, u in enumerate(updates):
        right.annotate(
            f"{u['failed_or_cut']} of {u['streams']} streams\nfailed or cut",
            (index, u["seconds"]),
            ha="center",
            va="bottom",
        )
    right.set_ylim(0, 1.3 * max((u["seconds"] for u in updates), default=1))
    right.set_ylabel("rolling update of every replica (s)")
    right.set_title("update under streaming load")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--download", type=float, default=6.0, help="simulated download, s")
    parser.add_argument("--load", type=float, default=3.0, help="simulated load, s")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--repeat", type=int, default=3, help="cold starts per N and way; the median is reported"
    )
    parser.add_argument("--out", default="cold_start", help="file stem under bench/results")
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    base_image(client)
    standin_image(client)
    rows: list[dict[str, Any]] = []
    for n in args.replicas:
        d, l_ = args.download, args.load
        for way in ("ours", "guide"):
            runs: list[float] = []
            downloads: list[int] = []
            for _ in range(args.repeat):
                _clean(client, n)
                try:
                    way_of = ours if way == "ours" else by_hand
                    runs.append(round(way_of(client, n, d, l_), 2))
                    downloads.append(_downloads(client))
                finally:
                    _clean(client, n)
            seconds = statistics.median(runs)
            rows.append(
                {
                    "replicas": n,
                    "way": way,
                    "seconds": seconds,
                    "runs": runs,
                    "downloads": max(downloads),
                    "guide_formula": round(d + n * l_, 2),
                    "goal": round(1.15 * (d + l_), 2),
                    "over_D_plus_L": round(seconds / (d + l_), 2),
                }
            )
            print(rows[-1], flush=True)
    updates = [update(client, n) for n in args.replicas]
    for row in updates:
        print(row, flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / args.out
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "download_seconds": args.download,
                "load_seconds": args.load,
                "repeat": args.repeat,
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                "rows": rows,
                "updates": updates,
            },
            indent=2,
        )
        + "\n"
    )
    chart(rows, updates, args.download, args.load, out)
    print(f"\nD = {args.download} s, L = {args.load} s")
    print(f"median of {args.repeat} cold starts each (min to max)")
    print(
        "| N | way | all ready (s) | / (D + L) | guide D + N*L (s) | goal 1.15 (D + L) (s) "
        "| met | downloads |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        met = "yes" if row["seconds"] <= row["goal"] else "no"
        spread = f"{min(row['runs'])} to {max(row['runs'])}"
        print(
            f"| {row['replicas']} | {row['way']} | {row['seconds']} ({spread}) "
            f"| {row['over_D_plus_L']}x | {row['guide_formula']} | {row['goal']} "
            f"| {met if row['way'] == 'ours' else ''} | {row['downloads']} |"
        )
    print_updates(updates)


if __name__ == "__main__":
    main()
