"""How many streams one balancer holds, and what slow uploads cost it.

    python -m bench.capacity            (from the repository root; about 5 minutes)
    python -m bench.capacity --quick    (1,000 streams, 100 uploads; a smoke run)

Builds the Go program in bench/capacity (`go build`, standard library only),
which plays a streaming replica (`capacity stub`) and the clients
(`capacity load`, `capacity stall`), since Python stand-ins top out near 1,000
concurrent streams here. Everything runs on loopback:

- streams: 10,000 concurrent streaming chat completions (started evenly over
  20 s, each 30 chunks 1 s apart, so all are open at once), straight to
  the stub and through one nginx with the rendered config (2 workers,
  `workerConnections` 16384), alternated direct / through / direct / through
  so both see the same machine. Errors, TTFT percentiles, and nginx's memory
  (RSS of master and workers) idle and at the moment every stream is open.
- stalled uploads: 1,000 connections each announcing a 100 MB body, sending
  2 MiB of it and stalling, against the model-routing config (the one that had
  `client_body_buffer_size` = maxBodySizeMb), as rendered now and as it was
  (the `/v1/` buffer at 100m, no temp-file hand-off): nginx's memory before
  and while they stall.

Writes bench/results/capacity.json and capacity.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from components.config.sections import LoadBalancerSettings, RoutingPolicy, Upstream
from components.lb.nginx_conf import render_nginx_config
from components.lb.pools import ModelPool
from tests.support.nginx import (
    LOOPBACK,
    find_nginx,
    free_port,
    loopback_runtime,
    make_sandbox,
    nginx_version,
    running_nginx,
    write_extra_files,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GO_MODULE = HERE / "capacity"
WORKER_CONNECTIONS = 16384


def go_binary() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def go_version() -> str:
    done = subprocess.run([go_binary(), "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def build(workdir: Path) -> Path:
    """`go build` of bench/capacity; GOTOOLCHAIN=local so no toolchain is fetched."""
    go = go_binary()
    binary = workdir / "capacity"
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_MODULE, env=env, check=True)
    return binary


@contextlib.contextmanager
def stub(binary: Path, tokens: int, interval_ms: int) -> Iterator[int]:
    proc = subprocess.Popen(
        [
            str(binary),
            "stub",
            "-listen",
            f"{LOOPBACK}:0",
            "-tokens",
            str(tokens),
            "-interval",
            f"{interval_ms}ms",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "LISTENING":
            raise RuntimeError(f"the stub did not start: {line}")
        yield int(line[1].rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nginx_rss_kib(master_pid: int) -> dict[str, int]:
    """VmRSS of the master and each of its children (workers, cache manager), KiB."""
    out = {"master": _rss(master_pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == master_pid:
                out[f"child {entry.name}"] = _rss(int(entry.name))
    return out


def nginx_cpu_seconds(master_pid: int) -> float:
    """User + system CPU time of the master and its children so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == master_pid or int(fields[1]) == master_pid:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_client(
    argv: list[str], marker: str, on_marker: Any, timeout: float
) -> tuple[dict[str, Any], Any]:
    """Run a Go client; call `on_marker()` when it prints `marker`; its JSON line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    sampled = None
    result: dict[str, Any] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.strip() == marker:
            sampled = on_marker()
        elif line.startswith("{"):
            result = json.loads(line)
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait(timeout=30)
    return result, sampled


def streams_phase(
    binary: Path, url: str, streams: int, ramp: float, master: int | None
) -> dict[str, Any]:
    idle = nginx_rss_kib(master) if master else None
    cpu_before = nginx_cpu_seconds(master) if master else 0.0
    result, at_peak = run_client(
        [str(binary), "load", "-url", url, "-streams", str(streams), "-ramp", f"{ramp}s"],
        "ALL_OPEN",
        (lambda: nginx_rss_kib(master)) if master else (lambda: None),
        timeout=600,
    )
    result["nginx_rss_idle_kib"] = idle
    result["nginx_rss_all_open_kib"] = at_peak
    result["nginx_cpu_s"] = nginx_cpu_seconds(master) - cpu_before if master else None
    result["load_average"] = os.getloadavg()
    return result


def stall_phase(binary: Path, port: int, count: int, master: int, hold: float) -> dict[str, Any]:
    idle = nginx_rss_kib(master)
    result, stalled = run_client(
        [
            str(binary),
            "stall",
            "-addr",
            f"{LOOPBACK}:{port}",
            "-count",
            str(count),
            "-hold",
            f"{hold}s",
        ],
        "ALL_SENT",
        lambda: settled_rss(master),
        timeout=300,
    )
    result["nginx_rss_idle_kib"] = idle
    result["nginx_rss_stalled_kib"] = stalled
    return result


def settled_rss(master: int) -> dict[str, int]:
    """nginx's memory two seconds after the last upload sent its part."""
    time.sleep(2)
    return nginx_rss_kib(master)


def as_before(config: str) -> str:
    """The model-routing config as it was: /v1/'s buffer = maxBodySizeMb, no file hand-off."""
    config = re.sub(r"\n\s*if \(\$lb_body_to_file\) \{\s*return 418;\s*\}", "", config)
    head, sep, tail = config.partition("location /v1/ {")
    tail = tail.replace("client_body_buffer_size 1m;", "client_body_buffer_size 100m;", 1)
    return head + sep + tail


@contextlib.contextmanager
def nginx(
    config_of: Any,
    lb: LoadBalancerSettings,
    upstreams: Sequence[Upstream],
    pools: Sequence[ModelPool] = (),
) -> Iterator[Any]:
    binary = find_nginx()
    if binary is None:
        raise SystemExit("nginx not found (apt-get install -y nginx-light libnginx-mod-http-js)")
    sandbox = make_sandbox("nginx-capacity-")
    port = free_port()
    try:
        runtime = loopback_runtime(sandbox, port, worker_processes=2)
        config = config_of(render_nginx_config(lb, upstreams, runtime, pools))
        write_extra_files(lb, runtime, pools)
        with running_nginx(binary, config, sandbox, port) as running:
            yield running
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def per_stream_kib(phase: dict[str, Any]) -> float:
    idle = sum(phase["nginx_rss_idle_kib"].values())
    peak = sum((phase["nginx_rss_all_open_kib"] or {}).values())
    return float(peak - idle) / max(1, int(phase["peak_open"]))


def plot(results: dict[str, Any], path: Path) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
    runs = results["streams"]["runs"]
    labels = [f"{r['mode']} {i // 2 + 1}" for i, r in enumerate(runs)]
    ax1.bar(labels, [r["ttft_ms"].get("p50", 0) for r in runs], color=["#888", "#2a6"] * 2)
    ax1.set_title(f"TTFT p50, {results['streams']['count']:,} concurrent streams (ms)")
    ax2.bar(
        labels[1::2],
        [per_stream_kib(r) for r in runs[1::2]],
        color="#2a6",
    )
    ax2.set_title("nginx memory per open stream (KiB)")
    stalls = results["stalled_uploads"]
    ax3.bar(
        ["before (100m buffer)", "now (1m + temp file)"],
        [stalls["before"]["delta_mib"], stalls["now"]["delta_mib"]],
        color=["#c44", "#2a6"],
    )
    ax3.set_title(f"nginx memory, {stalls['count']:,} stalled uploads (MiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cpu_of(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['nginx_cpu_s']:.1f} s" for r in runs)


def loads_of(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['load_average'][0]:.1f}" for r in runs)


def p50s(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['ttft_ms']['p50']:.1f}" for r in runs)


def table(results: dict[str, Any]) -> str:
    s = results["streams"]
    st = results["stalled_uploads"]
    rows = [
        "| figure | value |",
        "|---|---|",
        f"| concurrent streams | {s['count']:,} (peak open through nginx: "
        f"{', '.join(str(r['peak_open']) for r in s['runs'][1::2])}) |",
        f"| errors (direct / through) | {s['errors_direct']} / {s['errors_through']} |",
        f"| TTFT p50 direct, ms | {p50s(s['runs'][0::2])} |",
        f"| TTFT p50 through, ms | {p50s(s['runs'][1::2])} |",
        f"| TTFT p50 through / direct | **{s['ttft_p50_ratio']:.3f}** |",
        f"| TTFT p99 through / direct | {s['ttft_p99_ratio']:.3f} |",
        f"| nginx memory per open stream | {s['kib_per_stream']:.1f} KiB |",
        f"| nginx CPU per run through it (user + system) | {cpu_of(s['runs'][1::2])} |",
        f"| load average (1 min) after each run | {loads_of(s['runs'])} |",
        f"| {st['count']:,} stalled uploads (2 MiB of 100 MB sent), before | "
        f"+{st['before']['delta_mib']:.0f} MiB |",
        f"| the same, now | +{st['now']['delta_mib']:.0f} MiB |",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 streams, 100 uploads")
    parser.add_argument(
        "--interval-ms", type=int, default=1000, help="time between two chunks of a stream"
    )
    parser.add_argument("--tokens", type=int, default=30, help="chunks per stream")
    parser.add_argument("--ramp", type=float, default=20.0, help="seconds over which streams start")
    parser.add_argument("--out", default="capacity", help="file stem in bench/results")
    args = parser.parse_args(argv)
    streams, ramp, uploads = (1000, 2.0, 100) if args.quick else (10000, args.ramp, 1000)
    if args.tokens * args.interval_ms / 1000 <= ramp + 2:
        parser.error("--tokens x --interval-ms must outlast --ramp, or not all streams are open")
    workdir = make_sandbox("capacity-go-")
    try:
        binary = build(workdir)
        load_before = os.getloadavg()
        with stub(binary, tokens=args.tokens, interval_ms=args.interval_ms) as port:
            upstream = Upstream(host=LOOPBACK, port=port)
            pool = ModelPool("cap", "capacity", "capacity", (upstream,), RoutingPolicy.LEAST_CONN)
            single = LoadBalancerSettings(
                dynamic_resolve=False, worker_connections=WORKER_CONNECTIONS
            )
            runs = []
            for mode in ("direct", "through", "direct", "through"):
                # A fresh nginx for each run through it: its memory idle is then
                # that of a started balancer, not what the last run left allocated.
                with nginx(lambda c: c, single, [upstream]) as lb:
                    url = f"http://{LOOPBACK}:{port}" if mode == "direct" else lb.url
                    master = lb.process.pid if mode == "through" else None
                    run = streams_phase(binary, url, streams, ramp, master)
                run["mode"] = mode
                runs.append(run)
                shown = {k: run[k] for k in ("completed", "errors", "peak_open", "ttft_ms")}
                print(f"{mode}: {json.dumps(shown)}", flush=True)
                time.sleep(3)
            stalls: dict[str, Any] = {"count": uploads}
            routed = single
            for name, config_of in (("before", as_before), ("now", lambda c: c)):
                with nginx(config_of, routed, [upstream], [pool]) as lb:
                    phase = stall_phase(binary, lb.port, uploads, lb.process.pid, hold=10)
                    delta = sum(phase["nginx_rss_stalled_kib"].values()) - sum(
                        phase["nginx_rss_idle_kib"].values()
                    )
                    phase["delta_mib"] = delta / 1024
                    stalls[name] = phase
                    print(f"stalled uploads, {name}: +{delta / 1024:.0f} MiB", flush=True)
        direct, through = runs[0::2], runs[1::2]

        def median_of(rs: list[dict[str, Any]], key: str) -> float:
            values = [float(r["ttft_ms"][key]) for r in rs]
            return sum(values) / len(values)

        results: dict[str, Any] = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "memory_gib": round(
                    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
                ),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "nginx": nginx_version(find_nginx() or "nginx"),
                "go": go_version(),
            },
            "setup": {
                "worker_processes": 2,
                "worker_connections": WORKER_CONNECTIONS,
                "stream": f"first chunk after 50 ms, {args.tokens} chunks "
                f"{args.interval_ms} ms apart",
                "ramp_s": ramp,
            },
            "streams": {
                "count": streams,
                "runs": runs,
                "errors_direct": sum(r["errors"] for r in direct),
                "errors_through": sum(r["errors"] for r in through),
                "ttft_p50_ratio": median_of(through, "p50") / median_of(direct, "p50"),
                "ttft_p99_ratio": median_of(through, "p99") / median_of(direct, "p99"),
                "kib_per_stream": sum(per_stream_kib(r) for r in through) / len(through),
            },
            "stalled_uploads": stalls,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = f"{args.out}_quick" if args.quick else args.out
        (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, RESULTS / f"{stem}.png")
        print(table(results))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
