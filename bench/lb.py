"""What the load balancer costs and what it buys, against direct-to-replica.

    python -m bench.lb                  (from the repository root; about 4 minutes)
    python -m bench.lb --model-routing  (two model pools behind one balancer; about 1 minute)

One run starts stand-in replicas on loopback, a real nginx with our rendered
config, a real nginx with the guide's config (nginx defaults + `least_conn` +
`max_fails=3 fail_timeout=10000s`), and measures the same traffic through each
and directly to the replicas, so every figure is a ratio against direct taken
on the same machine minutes apart. Writes bench/results/lb.json and lb.png and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from components.config.sections import RoutingPolicy, Upstream
from components.lb.pools import ModelPool
from tests.support.nginx import (
    LOOPBACK,
    balancer,
    find_nginx,
    free_port,
    make_sandbox,
    nginx_version,
)
from tests.support.stub import Stub, StubFleet, stub_backends

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "standin/tiny-chat"
QUIET = ("--disable-uvicorn-access-log",)


# --- traffic ------------------------------------------------------------------


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0
    total: float = 0.0
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    replica: str | None = None
    long: bool = False


async def stream_one(
    client: httpx.AsyncClient,
    base: str,
    max_tokens: int,
    long: bool = False,
    model: str = MODEL,
    prompt: str = "hi",
) -> Sample:
    """One streamed completion, timed per chunk as a user's client would see it."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    chunks = 0
    try:
        async with client.stream("POST", base + "/v1/completions", json=body) as response:
            replica = response.headers.get("x-replica")
            if response.status_code != 200:
                await response.aread()
                return Sample(ok=False, replica=replica, long=long)
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
    except httpx.HTTPError:
        return Sample(ok=False, long=long)
    if first is None:
        return Sample(ok=False, replica=replica, long=long)
    return Sample(
        ok=True,
        ttft=first - started,
        total=last - started,
        gaps=gaps,
        chunks=chunks,
        replica=replica,
        long=long,
    )


def new_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


async def fixed_count(
    bases: Sequence[str],
    requests: int,
    concurrency: int,
    tokens: int,
    models: Sequence[str] = (MODEL,),
) -> list[Sample]:
    """`requests` streams, `concurrency` at a time; worker i uses bases[i % len] and
    models[i % len]. With several models every request has its own prompt, so a
    prefix_affinity pool spreads them as it would distinct users."""
    queue = list(range(requests))
    samples: list[Sample] = []
    async with new_client(concurrency) as client:

        async def worker(index: int) -> None:
            base = bases[index % len(bases)]
            model = models[index % len(models)]
            # One unrecorded request per connection first, so that no path is
            # charged for opening connections or a replica's first request.
            await stream_one(client, base, 2, model=model)
            while queue:
                number = queue.pop()
                prompt = "hi" if len(models) == 1 else f"user {number}: hi"
                samples.append(await stream_one(client, base, tokens, model=model, prompt=prompt))

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return samples


async def for_duration(
    bases: Sequence[str],
    concurrency: int,
    seconds: float,
    tokens: int,
    models: Sequence[str] = (MODEL,),
) -> tuple[int, float]:
    """Closed loop for `seconds`: (chunks received in completed streams, seconds)."""
    deadline = time.perf_counter() + seconds
    chunks = 0
    async with new_client(concurrency) as client:

        async def worker(index: int) -> None:
            nonlocal chunks
            base = bases[index % len(bases)]
            model = models[index % len(models)]
            sent = 0
            while time.perf_counter() < deadline:
                sent += 1
                prompt = "hi" if len(models) == 1 else f"user {index}-{sent}: hi"
                sample = await stream_one(client, base, tokens, model=model, prompt=prompt)
                if sample.ok and time.perf_counter() <= deadline + 0.5:
                    chunks += sample.chunks

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return chunks, time.perf_counter() - started


async def mixed(
    base: str, clients: int, seconds: float, short: int, long: int, long_share: float
) -> list[Sample]:
    """Closed loop of short and long requests, the same sequence for every policy."""
    deadline = time.perf_counter() + seconds
    samples: list[Sample] = []
    async with new_client(clients) as client:

        async def worker(index: int) -> None:
            rng = random.Random(index)
            while time.perf_counter() < deadline:
                is_long = rng.random() < long_share
                sample = await stream_one(client, base, long if is_long else short, is_long)
                samples.append(sample)

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return samples


# --- processes ----------------------------------------------------------------


def lb(binary: str, ports: Sequence[int], kind: str, **fields: Any) -> Any:
    """Our config (`kind` "ours") or the guide's, in a real nginx on loopback."""
    return balancer(binary, ports, guide=kind == "guide", sandbox_prefix="nginx-bench-", **fields)


@dataclass(eq=False)
class SlottedStub(Stub):
    """A stand-in that runs at most `slots` generations at once (bench.limited_standin)."""

    slots: int = 4

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("standin")] = "bench.limited_standin"
        return [*command, "--slots", str(self.slots)]


@contextlib.contextmanager
def slotted_backends(count: int, slots: int, token_ms: float) -> Iterator[list[SlottedStub]]:
    workdir = make_sandbox("bench-slotted-")
    stubs = [
        SlottedStub(
            port=free_port(),
            replica_id=f"slotted{i}",
            hf_home=workdir / "hf",
            log_path=workdir / f"slotted{i}.log",
            model=MODEL,
            args=("--ttft-ms", "20", "--token-ms", str(token_ms), *QUIET),
            slots=slots,
        )
        for i in range(count)
    ]
    try:
        for stub in stubs:
            stub.spawn()
        for stub in stubs:
            stub.wait_ready()
        yield stubs
    finally:
        for stub in stubs:
            stub.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- statistics -----------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(samples: Sequence[Sample]) -> dict[str, float]:
    ok = [s for s in samples if s.ok]
    gaps = [g for s in ok for g in s.gaps]
    return {
        "requests": len(samples),
        "failed": len(samples) - len(ok),
        "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 50),
        "ttft_p99_ms": 1000 * pct([s.ttft for s in ok], 99),
        "itl_p50_ms": 1000 * pct(gaps, 50),
        "itl_p99_ms": 1000 * pct(gaps, 99),
        "total_p50_ms": 1000 * pct([s.total for s in ok], 50),
        "total_p99_ms": 1000 * pct([s.total for s in ok], 99),
    }


# --- scenarios ------------------------------------------------------------------


def latency(binary: str, fleet: StubFleet, requests: int, tokens: int) -> dict[str, Any]:
    ports = fleet.ports[:2]
    direct = [f"{LOOPBACK}:{p}" for p in ports]
    out: dict[str, Any] = {}
    out["direct"] = latency_summary(
        asyncio.run(fixed_count([f"http://{d}" for d in direct], requests, 4, tokens))
    )
    for kind in ("ours", "guide"):
        with lb(binary, ports, kind) as nginx:
            out[kind] = latency_summary(asyncio.run(fixed_count([nginx.url], requests, 4, tokens)))
    return out


def throughput(
    binary: str, fleet: StubFleet, seconds: float, per_replica: int, tokens: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for replicas in (1, 2, 4):
        ports = fleet.ports[:replicas]
        concurrency = per_replica * replicas
        row: dict[str, float] = {}
        chunks, took = asyncio.run(
            for_duration([f"http://{LOOPBACK}:{p}" for p in ports], concurrency, seconds, tokens)
        )
        row["direct_tokens_per_s"] = chunks / took
        for kind in ("ours", "guide"):
            with lb(binary, ports, kind) as nginx:
                chunks, took = asyncio.run(for_duration([nginx.url], concurrency, seconds, tokens))
            row[f"{kind}_tokens_per_s"] = chunks / took
        out[str(replicas)] = row
    return out


def policies(binary: str, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with slotted_backends(2, slots=4, token_ms=10) as stubs:
        ports = [s.port for s in stubs]
        for policy in (
            RoutingPolicy.ROUND_ROBIN,
            RoutingPolicy.LEAST_CONN,
            RoutingPolicy.POWER_OF_TWO,
        ):
            with lb(binary, ports, "ours", policy=policy) as nginx:
                samples = asyncio.run(
                    mixed(nginx.url, clients=7, seconds=seconds, short=8, long=150, long_share=0.2)
                )
            ok = [s for s in samples if s.ok]
            short = [s.total for s in ok if not s.long]
            out[policy.value] = {
                "requests": len(samples),
                "failed": len(samples) - len(ok),
                "all_p50_ms": 1000 * pct([s.total for s in ok], 50),
                "all_p99_ms": 1000 * pct([s.total for s in ok], 99),
                "short_p50_ms": 1000 * pct(short, 50),
                "short_p99_ms": 1000 * pct(short, 99),
                "ttft_p99_ms": 1000 * pct([s.ttft for s in ok], 99),
            }
    return out


def _answered_by(url: str) -> str | None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    try:
        response = httpx.post(url + "/v1/completions", json=body, timeout=10.0)
    except httpx.HTTPError:
        return None
    return response.headers.get("x-replica") if response.status_code == 200 else None


def recovery(binary: str, bound: float) -> dict[str, Any]:
    """Kill a replica, let nginx mark it failed, restart it: when is it used again?"""
    out: dict[str, Any] = {}
    for kind in ("ours", "guide"):
        with (
            stub_backends(2, ttft_ms=5, token_ms=5, extra_args=QUIET) as fleet,
            lb(binary, fleet.ports, kind) as nginx,
        ):
            victim = fleet[1]
            victim.stop(signal.SIGKILL)
            # A fresh connection per request spreads them over nginx's workers;
            # without a shared zone (the guide) each worker must see max_fails
            # failures itself before it stops trying the replica.
            failed_while_down = sum(_answered_by(nginx.url) is None for _ in range(40))
            victim.start()
            ready = time.monotonic()
            returned: float | None = None
            while time.monotonic() - ready < bound:
                if _answered_by(nginx.url) == victim.replica_id:
                    returned = time.monotonic() - ready
                    break
                time.sleep(0.1)
            out[kind] = {
                "seconds_until_serving_again": returned,
                "probe_bound_seconds": bound,
                "failed_requests_while_down": failed_while_down,
            }
    return out


OTHER_MODEL = "standin/tiny-other"


@contextlib.contextmanager
def two_model_fleet() -> Iterator[tuple[StubFleet, StubFleet]]:
    with (
        stub_backends(2, ttft_ms=50, token_ms=20, extra_args=QUIET, replica_prefix="chat") as a,
        stub_backends(
            2, ttft_ms=50, token_ms=20, extra_args=QUIET, replica_prefix="other", model=OTHER_MODEL
        ) as b,
    ):
        yield a, b


def routed_lb(binary: str, chat: StubFleet, other: StubFleet, chat_policy: RoutingPolicy) -> Any:
    """Our config with model routing: `chat` (`chat_policy`) and `other` (least_conn)."""
    pools = [
        ModelPool(
            name="chat",
            served_name=MODEL,
            model=MODEL,
            upstreams=tuple(Upstream(host=LOOPBACK, port=p) for p in chat.ports),
            policy=chat_policy,
        ),
        ModelPool(
            name="other",
            served_name=OTHER_MODEL,
            model=OTHER_MODEL,
            upstreams=tuple(Upstream(host=LOOPBACK, port=p) for p in other.ports),
            policy=RoutingPolicy.LEAST_CONN,
        ),
    ]
    ports = [*chat.ports, *other.ports]
    return balancer(binary, ports, sandbox_prefix="nginx-bench-", pools=pools)


ROUTED_KINDS = {
    "routed": RoutingPolicy.LEAST_CONN,
    "routed_prefix": RoutingPolicy.PREFIX_AFFINITY,
}


def model_routing(
    binary: str, requests: int, rounds: int, seconds: float, per_replica: int
) -> dict[str, Any]:
    """Two pools of two replicas: direct (each worker to one replica, with its
    model) against a balancer routing by model, once with least_conn in both
    pools ("routed") and once with prefix_affinity in the chat pool
    ("routed_prefix"), alternated `rounds` times so a slow minute of the shared
    machine falls on all three."""
    models = [MODEL, OTHER_MODEL]
    samples: dict[str, list[Sample]] = {"direct": [], **{kind: [] for kind in ROUTED_KINDS}}
    out: dict[str, Any] = {"throughput": {}}
    with two_model_fleet() as (chat, other), contextlib.ExitStack() as stack:
        pairs = zip(chat.ports, other.ports, strict=True)
        direct = [f"http://{LOOPBACK}:{port}" for pair in pairs for port in pair]
        direct_models = [m for _ in chat.ports for m in models]
        urls = {
            kind: stack.enter_context(routed_lb(binary, chat, other, policy)).url
            for kind, policy in ROUTED_KINDS.items()
        }
        # The control: one model on the chat pool's two replicas, direct, through
        # today's single-model config and through model routing with one pool,
        # so routing's own cost shows apart from the machine's state.
        chat_direct = [f"http://{LOOPBACK}:{port}" for port in chat.ports]
        one_pool = ModelPool(
            name="chat",
            served_name=MODEL,
            model=MODEL,
            upstreams=tuple(Upstream(host=LOOPBACK, port=p) for p in chat.ports),
            policy=RoutingPolicy.LEAST_CONN,
        )
        control_urls = {
            "one_model_single": stack.enter_context(lb(binary, chat.ports, "ours")).url,
            "one_model_routed": stack.enter_context(
                balancer(binary, chat.ports, sandbox_prefix="nginx-bench-", pools=[one_pool])
            ).url,
        }
        control: dict[str, list[Sample]] = {"one_model_direct": [], **{k: [] for k in control_urls}}
        load_before = os.getloadavg()
        for _ in range(rounds):
            samples["direct"] += asyncio.run(
                fixed_count(direct, requests, 4, 64, models=direct_models)
            )
            for kind, url in urls.items():
                samples[kind] += asyncio.run(fixed_count([url], requests, 4, 64, models=models))
            control["one_model_direct"] += asyncio.run(fixed_count(chat_direct, requests, 4, 64))
            for kind, url in control_urls.items():
                control[kind] += asyncio.run(fixed_count([url], requests, 4, 64))
        out["load_average_1m"] = {"before": load_before[0], "after": os.getloadavg()[0]}
        out["latency"] = {kind: latency_summary(s) for kind, s in samples.items()}
        out["control_latency"] = {kind: latency_summary(s) for kind, s in control.items()}
        concurrency = per_replica * 4
        chunks, took = asyncio.run(
            for_duration(direct, concurrency, seconds, 32, models=direct_models)
        )
        out["throughput"]["direct_tokens_per_s"] = chunks / took
        for kind, url in urls.items():
            chunks, took = asyncio.run(for_duration([url], concurrency, seconds, 32, models=models))
            out["throughput"][f"{kind}_tokens_per_s"] = chunks / took
    # Which replica answered each routed stream (the stand-in's x-replica):
    # chat* only for the chat model, other* only for the other.
    out["answered_by"] = {
        kind: dict(sorted(Counter(str(s.replica) for s in samples[kind]).items()))
        for kind in ROUTED_KINDS
    }
    return out


def routing_table(results: dict[str, Any]) -> str:
    lat = results["latency"]
    d, r, p = lat["direct"], lat["routed"], lat["routed_prefix"]
    rows = [
        "| measure | direct | LB, routed by model (least_conn pools) | / direct "
        "| LB, routed by model (chat pool prefix_affinity) | / direct | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, goal in (
        ("ttft_p50_ms", "TTFT p50 (ms)", "≤ 1.05x"),
        ("ttft_p99_ms", "TTFT p99 (ms)", ""),
        ("itl_p50_ms", "inter-token p50 (ms)", ""),
        ("total_p50_ms", "whole response p50 (ms)", ""),
    ):
        rows.append(
            f"| {label} | {d[key]:.1f} | {r[key]:.1f} | {ratio(r[key], d[key]):.2f}x "
            f"| {p[key]:.1f} | {ratio(p[key], d[key]):.2f}x | {goal} |"
        )
    tp = results["throughput"]
    direct = tp["direct_tokens_per_s"]
    routed, prefix = tp["routed_tokens_per_s"], tp["routed_prefix_tokens_per_s"]
    rows.append(
        f"| throughput, 2 pools x 2 replicas (tokens/s) | {direct:.0f} | {routed:.0f} "
        f"| {ratio(routed, direct):.2f} | {prefix:.0f} | {ratio(prefix, direct):.2f} | ≥ 0.95 |"
    )
    rows.append(
        f"| failed requests | {d['failed']} of {d['requests']} | {r['failed']} of {r['requests']} "
        f"| | {p['failed']} of {p['requests']} | | 0 |"
    )
    c = results["control_latency"]
    cd, cs, cr = c["one_model_direct"], c["one_model_single"], c["one_model_routed"]
    rows += [
        "",
        "| one model, 2 replicas (control, same run) | direct | today's config (no routing) "
        "| / direct | model routing, one pool | / direct |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("ttft_p50_ms", "TTFT p50 (ms)"), ("ttft_p99_ms", "TTFT p99 (ms)")):
        rows.append(
            f"| {label} | {cd[key]:.1f} | {cs[key]:.1f} | {ratio(cs[key], cd[key]):.2f}x "
            f"| {cr[key]:.1f} | {ratio(cr[key], cd[key]):.2f}x |"
        )
    return "\n".join(rows)


def routing_plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    lat = results["latency"]
    keys = ["ttft_p50_ms", "ttft_p99_ms"]
    labels = {
        "direct": "direct",
        "routed": "LB by model, least_conn",
        "routed_prefix": "LB by model, prefix_affinity",
    }
    for offset, kind in enumerate(labels):
        axes[0].bar(
            [i + offset * 0.27 for i in range(len(keys))],
            [lat[kind][k] for k in keys],
            width=0.27,
            label=labels[kind],
        )
    axes[0].set_xticks([i + 0.27 for i in range(len(keys))], ["TTFT p50", "TTFT p99"])
    axes[0].set_ylabel("ms")
    axes[0].set_title("Time to first token, 2 models")
    axes[0].legend()
    tp = results["throughput"]
    axes[1].bar(list(labels.values()), [tp[f"{kind}_tokens_per_s"] for kind in labels])
    axes[1].set_ylabel("tokens/s")
    axes[1].set_title("Throughput, 2 pools x 2 replicas")
    axes[1].tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_model_routing(binary: str, quick: bool) -> int:
    scale = 0.25 if quick else 1.0
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(binary)}
    results["setup"] = {
        "stub": "standin, ttft 50 ms, 20 ms/token; pools: chat (2 replicas; least_conn, "
        "then prefix_affinity), other (2 replicas, least_conn)",
        "latency": f"{max(8, int(48 * scale))} streams of 64 tokens, 4 at a time, half per model, "
        "a distinct prompt each, 1 warm-up per connection; direct and the two routed balancers "
        "alternated 3 times",
        "throughput": f"closed loop, 8 streams of 32 tokens per replica, {6.0 * scale} s",
        "nginx_workers": 2,
    }
    results.update(
        model_routing(
            binary, requests=max(8, int(48 * scale)), rounds=3, seconds=6.0 * scale, per_replica=8
        )
    )
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "lb_routing-quick" if quick else "lb_routing"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    routing_plot(results, RESULTS / f"{stem}.png")
    print(routing_table(results))
    print(f"\n{results['machine']} — {results['elapsed_seconds']} s", file=sys.stderr)
    return 0


# --- report -------------------------------------------------------------------


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def table(results: dict[str, Any]) -> str:
    lat = results["latency"]
    d = lat["direct"]
    rows = ["| measure | direct | ours | ours / direct | guide | guide / direct | goal |"]
    rows.append("|---|---|---|---|---|---|---|")
    for key, label, goal in (
        ("ttft_p50_ms", "TTFT p50 (ms)", "≤ 1.05x"),
        ("ttft_p99_ms", "TTFT p99 (ms)", "≤ 1.05x"),
        ("itl_p50_ms", "inter-token p50 (ms)", ""),
        ("itl_p99_ms", "inter-token p99 (ms)", ""),
        ("total_p50_ms", "whole response p50 (ms)", ""),
        ("total_p99_ms", "whole response p99 (ms)", ""),
    ):
        o, g = lat["ours"][key], lat["guide"][key]
        rows.append(
            f"| {label} | {d[key]:.1f} | {o:.1f} | {ratio(o, d[key]):.2f}x "
            f"| {g:.1f} | {ratio(g, d[key]):.2f}x | {goal} |"
        )
    for replicas, row in results["throughput"].items():
        direct = row["direct_tokens_per_s"]
        rows.append(
            f"| throughput, {replicas} replica(s) (tokens/s) | {direct:.0f} "
            f"| {row['ours_tokens_per_s']:.0f} | {ratio(row['ours_tokens_per_s'], direct):.2f} "
            f"| {row['guide_tokens_per_s']:.0f} | {ratio(row['guide_tokens_per_s'], direct):.2f} "
            "| ≥ 0.95 |"
        )
    rec = results["recovery"]

    def seconds(entry: dict[str, Any]) -> str:
        value = entry["seconds_until_serving_again"]
        if value is None:
            return f"not within {entry['probe_bound_seconds']:.0f} s"
        return f"{value:.1f} s"

    rows.append(
        f"| restarted replica serves again after | - | {seconds(rec['ours'])} | "
        f"| {seconds(rec['guide'])} | | ≤ 15 s |"
    )
    out = "\n".join(rows)
    pol = results["policies"]
    prow = [
        "",
        "| policy (2 replicas x 4 slots, 7 clients, 20% long) | all p50 (ms) | all p99 (ms) "
        "| short p50 (ms) | short p99 (ms) | requests | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in pol.items():
        prow.append(
            f"| {name} | {p['all_p50_ms']:.0f} | {p['all_p99_ms']:.0f} | {p['short_p50_ms']:.0f} "
            f"| {p['short_p99_ms']:.0f} | {p['requests']} | {p['failed']} |"
        )
    return out + "\n" + "\n".join(prow)


def plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    lat = results["latency"]
    keys = ["ttft_p50_ms", "ttft_p99_ms", "total_p50_ms"]
    x = range(len(keys))
    for offset, kind in enumerate(("direct", "ours", "guide")):
        axes[0].bar(
            [i + offset * 0.27 for i in x], [lat[kind][k] for k in keys], width=0.27, label=kind
        )
    axes[0].set_xticks([i + 0.27 for i in x], ["TTFT p50", "TTFT p99", "response p50"])
    axes[0].set_ylabel("ms")
    axes[0].set_title("Latency, streamed completions")
    axes[0].legend()

    tp = results["throughput"]
    reps = list(tp)
    for kind in ("direct", "ours", "guide"):
        axes[1].plot(reps, [tp[r][f"{kind}_tokens_per_s"] for r in reps], marker="o", label=kind)
    axes[1].set_xlabel("replicas")
    axes[1].set_ylabel("tokens/s")
    axes[1].set_title("Aggregate throughput")
    axes[1].legend()

    pol = results["policies"]
    names = list(pol)
    axes[2].bar(names, [pol[n]["short_p99_ms"] for n in names])
    axes[2].set_ylabel("ms")
    axes[2].set_title("p99 of short requests among long ones")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine(binary: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "nginx": nginx_version(binary),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    parser.add_argument(
        "--model-routing",
        action="store_true",
        help="only the model routing run: two pools behind one balancer against direct "
        "(bench/results/lb_routing.json and .png)",
    )
    args = parser.parse_args(argv)
    binary = find_nginx()
    if binary is None:
        print("nginx not found: apt-get install -y nginx-light", file=sys.stderr)
        return 2
    if args.model_routing:
        return run_model_routing(binary, args.quick)
    scale = 0.25 if args.quick else 1.0
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(binary)}
    results["setup"] = {
        "stub": "standin, ttft 50 ms, 20 ms/token",
        "latency": "48 streams of 64 tokens, 4 at a time, 2 replicas, 1 warm-up per connection",
        "throughput": "closed loop, 8 streams of 32 tokens per replica, 6 s",
        "policies": "2 limited stand-ins x 4 slots, 10 ms/token, 7 clients, 20% 150-token",
        "nginx_workers": 2,
    }
    with stub_backends(4, ttft_ms=50, token_ms=20, extra_args=QUIET) as fleet:
        print("latency ...", file=sys.stderr, flush=True)
        results["latency"] = latency(binary, fleet, requests=max(8, int(48 * scale)), tokens=64)
        print("throughput ...", file=sys.stderr, flush=True)
        results["throughput"] = throughput(
            binary, fleet, seconds=6.0 * scale, per_replica=8, tokens=32
        )
    print("policies ...", file=sys.stderr, flush=True)
    results["policies"] = policies(binary, seconds=12.0 * scale)
    print("recovery ...", file=sys.stderr, flush=True)
    results["recovery"] = recovery(binary, bound=30.0 * (0.5 if args.quick else 1.0))
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)

    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"lb{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / f"lb{suffix}.png")
    print(table(results))
    print(f"\n{results['machine']} — {results['elapsed_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
