"""Cold start: how long until all N replicas serve, ours against the guide's way.

    python -m bench.cold_start [--download 6] [--load 3] [--replicas 2 4] [--repeat 3]

Needs a Docker engine and the offline images (`bash scripts/test.sh` makes
them; or `bash scripts/docker-engine.sh start && bash scripts/base-image.sh`)
and the Pulumi CLI that `bash scripts/pulumi-toolchain.sh` builds. The
stand-in simulates a download of D seconds into the shared cache (the
download job, or a replica that finds the cache empty) and a load of L
seconds. Each way starts from an empty cache volume:

- ours: `pulumi up` of this project on a fresh stack, as a user runs it: the
  real Pulumi CLI and engine, with the stand-in docker and command plugins and
  Python language host of the tests (tests/support/pulumi_engine.py). Timed
  from the start of the `pulumi up` process until every replica answers
  `/health` at its published port (asked every 0.05 s from here; the
  readiness step asks the same way). Docker's events split that time: until
  the download job's container is created (the CLI, the language host and
  the program starting, the plugins, the first resources, the download step
  starting), the job, from its exit until the last replica container is
  created, and from there until all serve (L, and noticing it). The first
  part includes our Python stand-ins starting (the docker and command plugins
  and the language host), which the real Go binaries do faster; from the
  job's creation on is the deployment's own order, what this benchmark timed
  before the real CLI ran it (then from the start of the download step);
- guide: by hand as the guide says, one replica at a time (the same
  containers, `docker run` through the Docker SDK), each started once the
  previous one is ready (the first downloads: D + N x L). Not timed: making
  the network and the volume.

The goal is the issue's: all replicas ready within 1.15 x (D + L). Each way
runs `--repeat` times and the median is reported with the range: on a small
shared machine one cold start varies by a few tenths of a second. The
stand-in's L counts from its process start, as a real vLLM's load includes
its own start-up, so what exceeds D + L is the deployment's own cost (for
ours now including Pulumi's own start: the whole `pulumi up` is timed).

Then an update: the rolling-update test's deployment (tests/test_e2e_rollout.py:
D = 1 s, L = 2 s, whatever --download and --load say) serves a continuous
streaming load (2 streams per replica, 24 tokens each, through nginx) while
`pulumi up` replaces every replica (a changed environment), in waves with a
drain at nginx before each stop (components.steps.rollout); reports how long
that `pulumi up` took and how many streams failed or were cut, out of how many.

Prints tables and writes bench/results/cold_start.json and .png (`--out` names
another stem, for runs with other D and L; `--no-update` leaves the update out).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.plan.model import Plan, ReplicaPlan
from components.steps.readiness import serves, wait_healthy
from tests.support.docker_engine import REPO_ROOT, base_image, remove_named, standin_image
from tests.support.pulumi_engine import Stack
from tests.support.streaming_load import streaming_load
from tests.test_e2e import ci_config

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "bench-cold"
CACHE = f"{PREFIX}-cache"
BASE_PORT = 18501
JOB = f"{PREFIX}-download"
PHASES = ("before_download_job", "download_job", "job_to_replicas", "replicas_to_ready")


def _config(replicas: int, download: float, load: float) -> dict[str, Any]:
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


def _plan(replicas: int, download: float, load: float) -> Plan:
    """What `pulumi up` would deploy for this config (the guide's way runs its replicas)."""
    return build_plan(parse_settings(_config(replicas, download, load)), project_dir=REPO_ROOT)


def _clean(client: docker.DockerClient, replicas: int) -> None:
    remove_named(
        client,
        containers=[f"{PREFIX}{i}" for i in range(replicas)] + [f"{PREFIX}-lb", JOB],
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


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _all_serving(urls: list[str], stop: threading.Event, seen: list[float]) -> None:
    """Append the wall-clock time at which every URL has answered 200 once."""
    pending = list(urls)
    while pending and not stop.is_set():
        pending = [url for url in pending if not serves(url, timeout=0.5)]
        if pending:
            time.sleep(0.05)
    if not pending:
        seen.append(time.time())


class _ContainerEvents:
    """(container name, action) -> when Docker did it first, heard live from `up`'s start.

    Not asked afterwards with since/until: dockerd replays only its last 256 events
    (docs/benchmarks.md), and the replicas' health-check execs push the job's out.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self.first: dict[tuple[str, str], float] = {}
        self._stream = client.events(
            decode=True, filters={"type": "container", "event": ["create", "die"]}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                name = event.get("Actor", {}).get("Attributes", {}).get("name", "")
                key = (name, str(event.get("Action", event.get("status", ""))))
                self.first.setdefault(key, int(event["timeNano"]) / 1e9)
        except Exception:  # the stream closed under the reader: the run is over
            return

    def close(self) -> dict[tuple[str, str], float]:
        self._stream.close()
        self._thread.join(timeout=5)
        return dict(self.first)


def ours(
    client: docker.DockerClient, replicas: int, download: float, load: float
) -> dict[str, Any]:
    """`pulumi up` on a fresh stack; seconds from its start until every replica serves."""
    urls = [f"http://127.0.0.1:{BASE_PORT + i}/health" for i in range(replicas)]
    with _workdir() as directory:
        stack = Stack(directory, "cold", _config(replicas, download, load))
        try:
            seen: list[float] = []
            stop = threading.Event()
            watcher = threading.Thread(target=_all_serving, args=(urls, stop, seen))
            heard = _ContainerEvents(client)
            started = time.time()
            watcher.start()
            try:
                stack.up()
            finally:
                stop.set()
                watcher.join()
                events = heard.close()
            finished = time.time()
            assert seen, "`pulumi up` ended before every replica served"
            ready = seen[0]
            downloads = _downloads(client)
        finally:
            stack.destroy()
    job_created, job_died = events[(JOB, "create")], events[(JOB, "die")]
    replicas_created = max(events[(f"{PREFIX}{i}", "create")] for i in range(replicas))
    phases = {
        "before_download_job": job_created - started,
        "download_job": job_died - job_created,
        "job_to_replicas": replicas_created - job_died,
        "replicas_to_ready": ready - replicas_created,
    }
    return {
        "seconds": ready - started,
        "up_seconds": finished - started,
        "downloads": downloads,
        "phases": {key: round(value, 2) for key, value in phases.items()},
    }


def _run(client: docker.DockerClient, plan: Plan, replica: ReplicaPlan, online: bool) -> None:
    """One replica as `docker run -d` would start it: the plan's container, by hand."""
    env = dict(replica.env)
    if online:
        # The guide's first replica downloads the model itself.
        env.pop("HF_HUB_OFFLINE", None)
    hc = replica.health_check
    volume = plan.cache.volume
    assert volume is not None
    options: dict[str, Any] = {
        "command": list(replica.command),
        "entrypoint": list(replica.entrypoint),
        "environment": env,
        "name": replica.name,
        "ipc_mode": replica.ipc_mode,
        "network": plan.network,
        "ports": {f"{replica.container_port}/tcp": (replica.bind_address, replica.host_port)},
        "volumes": {volume: {"bind": plan.cache.mount_path, "mode": "rw"}},
        "healthcheck": {
            "test": list(hc.test),
            "interval": hc.interval_seconds * 1_000_000_000,
            "timeout": hc.timeout_seconds * 1_000_000_000,
            "retries": hc.retries,
            "start_period": hc.start_period_seconds * 1_000_000_000,
        },
        "restart_policy": {"Name": plan.restart_policy},
    }
    client.containers.run(plan.vllm_image.name, detach=True, **options)


def by_hand(
    client: docker.DockerClient, replicas: int, download: float, load: float
) -> dict[str, Any]:
    """The same replicas, started as a person following the guide would."""
    plan = _plan(replicas, download, load)
    client.networks.create(plan.network)
    client.volumes.create(plan.cache.volume)
    start = time.monotonic()
    for index, replica in enumerate(plan.replicas):
        _run(client, plan, replica, online=index == 0)
        # Asked at its published port as soon as it can answer, as ours is.
        wait_healthy(
            client,
            [replica.name],
            timeout=300,
            poll=0.1,
            probes={replica.name: f"{replica.url}/health"},
        )
    return {"seconds": time.monotonic() - start, "downloads": _downloads(client)}


def update(client: docker.DockerClient, replicas: int) -> dict[str, Any]:
    """A rolling update of every replica under streaming load (as tests/test_e2e_rollout.py)."""
    from tests.test_e2e import API_KEY
    from tests.test_e2e_rollout import LB_URL, TOKENS, _clean, _teardown, deploy, stack

    _clean(client, replicas)
    deployed: Stack | None = None
    with _workdir() as directory:
        try:
            deployed = deploy(directory, replicas)
            # The replicas run now, so the program declares the waves
            # (components.deployment.serving).
            deployed.write_config(stack(replicas, "2"))
            with streaming_load(LB_URL, API_KEY, workers=2 * replicas, tokens=TOKENS) as streams:
                time.sleep(2)
                started = time.monotonic()
                deployed.up()
                took = time.monotonic() - started
                time.sleep(2)
        finally:
            _teardown(client, deployed, replicas)
    during = [s for s in streams if s.finished >= started and s.started <= started + took]
    return {
        "replicas": replicas,
        "way": "update (rolling)",
        "seconds": round(took, 2),
        "streams": len(streams),
        "streams_during_update": len(during),
        "failed_or_cut": sum(1 for s in streams if not s.whole),
    }


def print_phases(rows: list[dict[str, Any]], d: float, l_: float) -> None:
    """Where ours spends the time, from Docker's events (medians); from the download
    job's creation on, the deployment's own order (the figure before the real CLI)."""
    print(
        "\n| N | until the download job (s) | the job (s) | job ended to last replica "
        "created (s) | to all serving (s) | from the job on (s) | / (D + L) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row["way"] == "ours":
            phases = row["phases"]
            after = round(sum(phases[p] for p in PHASES[1:]), 2)
            print(
                f"| {row['replicas']} | "
                + " | ".join(str(phases[p]) for p in PHASES)
                + f" | {after} | {round(after / (d + l_), 2)}x |"
            )


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
    fig, axes = plt.subplots(1, 2 if updates else 1, figsize=(10 if updates else 5.5, 4))
    left = axes[0] if updates else axes
    width = 0.35
    for offset, way in ((-width / 2, "ours"), (width / 2, "guide")):
        mine = [next(r for r in rows if r["replicas"] == n and r["way"] == way) for n in ns]
        values = [r["seconds"] for r in mine]
        spread = [
            [r["seconds"] - min(r["runs"]) for r in mine],
            [max(r["runs"]) - r["seconds"] for r in mine],
        ]
        xs = [i + offset for i in range(len(ns))]
        color = "tab:blue" if way == "ours" else "tab:orange"
        left.bar(xs, values, width, yerr=spread, capsize=4, label=way, color=color)
        if way == "ours":
            # The part before the download job: Pulumi's CLI, program and plugins starting.
            before = [r["phases"]["before_download_job"] for r in mine]
            left.bar(
                xs, before, width, fill=False, hatch="//", label="ours: until the download job"
            )
    left.axhline(1.15 * (d + l_), color="black", linestyle="--", label="goal 1.15 (D + L)")
    left.set_xticks(range(len(ns)), [f"N = {n}" for n in ns])
    left.set_ylabel("all replicas ready (s)")
    left.set_title(f"cold start, D = {d:g} s, L = {l_:g} s (median, min to max)")
    left.legend()
    if updates:
        _update_panel(axes[1], updates)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def _update_panel(right: Any, updates: list[dict[str, Any]]) -> None:
    """How long `pulumi up` took to replace every replica, and the streams it cost."""
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
    right.set_ylabel("`pulumi up` replacing every replica (s)")
    right.set_title("update under streaming load")


def _machine(client: docker.DockerClient) -> str:
    """CPUs, memory, OS and Docker engine of this run."""
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    release = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    engine = client.version().get("Version", "?")
    return (
        f"{os.cpu_count()} vCPU ({platform.machine()}), {memory:.0f} GiB, {release}, "
        f"Docker {engine}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--download", type=float, default=6.0, help="simulated download, s")
    parser.add_argument("--load", type=float, default=3.0, help="simulated load, s")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--repeat", type=int, default=3, help="cold starts per N and way; the median is reported"
    )
    parser.add_argument("--no-update", action="store_true", help="skip the rolling-update rows")
    parser.add_argument("--out", default="cold_start", help="file stem under bench/results")
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    base_image(client)
    standin_image(client)
    rows: list[dict[str, Any]] = []
    for n in args.replicas:
        d, l_ = args.download, args.load
        for way in ("ours", "guide"):
            results: list[dict[str, Any]] = []
            for _ in range(args.repeat):
                _clean(client, n)
                try:
                    way_of = ours if way == "ours" else by_hand
                    results.append(way_of(client, n, d, l_))
                finally:
                    _clean(client, n)
            runs = [round(r["seconds"], 2) for r in results]
            seconds = statistics.median(runs)
            row: dict[str, Any] = {
                "replicas": n,
                "way": way,
                "seconds": seconds,
                "runs": runs,
                "downloads": max(r["downloads"] for r in results),
                "guide_formula": round(d + n * l_, 2),
                "goal": round(1.15 * (d + l_), 2),
                "over_D_plus_L": round(seconds / (d + l_), 2),
            }
            if way == "ours":
                row["up_seconds"] = [round(r["up_seconds"], 2) for r in results]
                row["phases"] = {
                    phase: round(statistics.median(r["phases"][phase] for r in results), 2)
                    for phase in PHASES
                }
            rows.append(row)
            print(row, flush=True)
    updates = [] if args.no_update else [update(client, n) for n in args.replicas]
    for update_row in updates:
        print(update_row, flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / args.out
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "download_seconds": args.download,
                "load_seconds": args.load,
                "repeat": args.repeat,
                "machine": _machine(client),
                "ours_measured": "from the start of `pulumi up` (the real CLI) until every "
                "replica answers /health",
                "rows": rows,
                "updates": updates,
            },
            indent=2,
        )
        + "\n"
    )
    chart(rows, updates, args.download, args.load, out)
    print(f"\nD = {args.download} s, L = {args.load} s")
    print(
        f"median of {args.repeat} cold starts each (min to max); ours from the start of `pulumi up`"
    )
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
    print_phases(rows, args.download, args.load)
    if updates:
        print_updates(updates)


if __name__ == "__main__":
    main()
