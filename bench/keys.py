"""Named API keys: is a quiet key served while another floods, and what do keys cost?

    python -m bench.keys          (from the repository root; about 5 minutes)
    python -m bench.keys --quick  (about 1.5 minutes)

Fairness: two stand-ins with 4 generation slots each (bench.limited_standin,
vLLM's `max_num_seqs` in miniature) behind a real nginx with named keys. A
quiet key streams a trickle; its TTFT p90 alone is the baseline. Then a flood
key's 16 clients run beside it, once limited (concurrentRequests 4,
requestsPerMinute 1200) and once not. Cost: 1,000 named keys (limits on every
one, the usage filter on) against the same balancer without keys, one model
pool of two stand-ins, the two alternated. Writes bench/results/keys.json and
keys.png and prints the tables of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.lb import MODEL, QUIET, Sample, machine, pct, slotted_backends
from components.config.sections import RoutingPolicy, Upstream
from components.lb.keys import KeyPolicy
from components.lb.pools import ModelPool
from tests.support.nginx import LOOPBACK, balancer, find_nginx
from tests.support.stub import stub_backends

RESULTS = Path(__file__).resolve().parent / "results"
OPERATOR = "sk-bench-operator-0000000000"
QUIET_KEY = "sk-bench-quiet-00000000000000"
FLOOD_KEY = "sk-bench-flood-00000000000000"
FLOOD_CLIENTS = 16
FLOOD = KeyPolicy("flood", concurrent_requests=4, requests_per_minute=1200)


async def stream_keyed(
    client: httpx.AsyncClient, base: str, key: str, tokens: int, prompt: str = "hi"
) -> tuple[int, Sample, float]:
    """One streamed completion with `key`: (status, timings, Retry-After seconds or 0)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    first: float | None = None
    last = started
    chunks = 0
    try:
        async with client.stream(
            "POST", base + "/v1/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                retry = float(response.headers.get("retry-after", "0") or 0)
                return response.status_code, Sample(ok=False), retry
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                chunks += 1
    except httpx.HTTPError:
        return 0, Sample(ok=False), 0.0
    if first is None:
        return 200, Sample(ok=False), 0.0
    return 200, Sample(ok=True, ttft=first - started, total=last - started, chunks=chunks), 0.0


def new_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections * 2, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


# --- fairness -------------------------------------------------------------------


async def trickle_and_flood(
    url: str, seconds: float, flood: bool, quiet_tokens: int, flood_tokens: int
) -> dict[str, Any]:
    """The quiet key: one stream at a time, 0.2 s apart. The flood key: 16 clients
    back to back, waiting out `Retry-After` when refused (as the openai client does)."""
    deadline = time.perf_counter() + seconds
    quiet: list[Sample] = []
    flood_status: dict[int, int] = {}
    in_flight = 0
    most_in_flight = 0
    flood_chunks = 0
    async with new_client(FLOOD_CLIENTS + 2) as client:
        # One unrecorded request per key, so no figure pays for a first connection.
        await stream_keyed(client, url, QUIET_KEY, 2)

        async def quiet_client() -> None:
            while time.perf_counter() < deadline:
                status, sample, _ = await stream_keyed(client, url, QUIET_KEY, quiet_tokens)
                quiet.append(sample if status == 200 else Sample(ok=False))
                await asyncio.sleep(0.2)

        async def flood_client(index: int) -> None:
            nonlocal in_flight, most_in_flight, flood_chunks
            sent = 0
            while time.perf_counter() < deadline:
                sent += 1
                in_flight += 1
                most_in_flight = max(most_in_flight, in_flight)
                status, sample, retry = await stream_keyed(
                    client, url, FLOOD_KEY, flood_tokens, prompt=f"flood {index}-{sent}"
                )
                in_flight -= 1
                flood_status[status] = flood_status.get(status, 0) + 1
                flood_chunks += sample.chunks
                if retry:
                    await asyncio.sleep(min(retry, max(0.0, deadline - time.perf_counter())))

        started = time.perf_counter()
        tasks = [quiet_client()]
        if flood:
            tasks += [flood_client(i) for i in range(FLOOD_CLIENTS)]
        await asyncio.gather(*tasks)
        took = time.perf_counter() - started
    ok = [s for s in quiet if s.ok]
    return {
        "quiet_requests": len(quiet),
        "quiet_failed": len(quiet) - len(ok),
        "quiet_ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 50),
        "quiet_ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 90),
        "flood_status": {str(k): v for k, v in sorted(flood_status.items())},
        "flood_tokens_per_s": flood_chunks / took,
        "flood_requests_per_minute_served": 60 * flood_status.get(200, 0) / took,
        "flood_most_requests_in_flight_sent": most_in_flight,
        "seconds": took,
    }


def fairness(binary: str, seconds: float) -> dict[str, Any]:
    keys = {"quiet": QUIET_KEY, "flood": FLOOD_KEY}
    limited = (KeyPolicy("quiet"), FLOOD)
    unlimited = (KeyPolicy("quiet"), KeyPolicy("flood"))
    out: dict[str, Any] = {}
    with slotted_backends(2, slots=4, token_ms=10) as stubs:
        ports = [s.port for s in stubs]
        for way, policies, flood in (
            ("alone", limited, False),
            ("flood_limited", limited, True),
            ("flood_unlimited", unlimited, True),
        ):
            print(f"fairness: {way} ...", file=sys.stderr, flush=True)
            with balancer(
                binary,
                ports,
                sandbox_prefix="nginx-bench-",
                api_key=OPERATOR,
                keys=policies,
                named_keys=keys,
            ) as nginx:
                out[way] = asyncio.run(
                    trickle_and_flood(nginx.url, seconds, flood, quiet_tokens=32, flood_tokens=64)
                )
    return out


# --- cost with 1,000 keys ---------------------------------------------------------


def many_keys(count: int) -> tuple[tuple[KeyPolicy, ...], dict[str, str]]:
    """`count` keys, every one with both limits (ten distinct rates and slots) set far
    above what the benchmark sends, so every request runs every check."""
    policies = tuple(
        KeyPolicy(
            f"team-{i:04d}",
            requests_per_minute=100_000 + 1000 * (i % 10),
            concurrent_requests=1000 + (i % 10),
        )
        for i in range(count)
    )
    keys = {p.name: f"sk-bench-{i:04d}-{'k' * 24}" for i, p in enumerate(policies)}
    return policies, keys


async def latency(url: str, keys: Sequence[str], requests: int, tokens: int) -> list[Sample]:
    """`requests` streams, 4 at a time; worker i sends with keys[i % len]."""
    queue = list(range(requests))
    samples: list[Sample] = []
    async with new_client(4) as client:

        async def worker(index: int) -> None:
            key = keys[index % len(keys)]
            await stream_keyed(client, url, key, 2)
            while queue:
                queue.pop()
                _, sample, _ = await stream_keyed(client, url, key, tokens)
                samples.append(sample)

        await asyncio.gather(*(worker(i) for i in range(4)))
    return samples


def cost(binary: str, count: int, requests: int, rounds: int) -> dict[str, Any]:
    policies, keys = many_keys(count)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((LOOPBACK, 0))  # the metrics lines go here, unread, in both ways
    syslog = f"{LOOPBACK}:{sink.getsockname()[1]}"
    samples: dict[str, list[Sample]] = {"without_keys": [], "with_keys": []}
    with stub_backends(2, ttft_ms=50, token_ms=20, extra_args=QUIET) as fleet:
        pool = ModelPool(
            name="chat",
            served_name=MODEL,
            model=MODEL,
            upstreams=tuple(Upstream(host=LOOPBACK, port=p) for p in fleet.ports),
            policy=RoutingPolicy.LEAST_CONN,
        )
        for round_ in range(rounds):
            for way in ("without_keys", "with_keys"):
                print(f"cost: round {round_ + 1}, {way} ...", file=sys.stderr, flush=True)
                options: dict[str, Any] = {}
                client_keys = ["unused"]
                if way == "with_keys":
                    options = {"api_key": OPERATOR, "keys": policies, "named_keys": keys}
                    client_keys = [keys[p.name] for p in policies[::250]]
                with balancer(
                    binary,
                    fleet.ports,
                    sandbox_prefix="nginx-bench-",
                    pools=[pool],
                    metrics_syslog=syslog,
                    **options,
                ) as nginx:
                    samples[way] += asyncio.run(latency(nginx.url, client_keys, requests, 16))
    sink.close()
    out: dict[str, Any] = {"keys": count, "rounds": rounds}
    for way, taken in samples.items():
        ok = [s for s in taken if s.ok]
        out[way] = {
            "requests": len(taken),
            "failed": len(taken) - len(ok),
            "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 50),
            "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 90),
        }
    return out


# --- report -----------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    f = results["fairness"]
    alone = f["alone"]["quiet_ttft_p90_ms"]
    lines = [
        "| way | quiet key TTFT p50 (ms) | quiet key TTFT p90 (ms) | p90 / alone | quiet "
        "failed | flood: served, 429 | flood tokens/s | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "alone": "quiet key alone",
        "flood_limited": "with the flood, limited (4 at once, 1200/min)",
        "flood_unlimited": "with the flood, no limits",
    }
    for way, name in names.items():
        row = f[way]
        statuses = row["flood_status"]
        flood = f"{statuses.get('200', 0)}, {statuses.get('429', 0)}" if way != "alone" else "-"
        goal = "≤ 1.2x" if way == "flood_limited" else ""
        lines.append(
            f"| {name} | {row['quiet_ttft_p50_ms']:.1f} | {row['quiet_ttft_p90_ms']:.1f} | "
            f"{row['quiet_ttft_p90_ms'] / alone:.2f}x | {row['quiet_failed']} of "
            f"{row['quiet_requests']} | {flood} | {row['flood_tokens_per_s']:.0f} | {goal} |"
        )
    c = results["cost"]
    lines += [
        "",
        f"| one pool, 2 replicas | without keys | {c['keys']:,} named keys | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for measure, key in (("TTFT p50 (ms)", "ttft_p50_ms"), ("TTFT p90 (ms)", "ttft_p90_ms")):
        base, keyed = c["without_keys"][key], c["with_keys"][key]
        goal = "≤ 1.02x" if key == "ttft_p50_ms" else ""
        lines.append(f"| {measure} | {base:.1f} | {keyed:.1f} | {keyed / base:.3f}x | {goal} |")
    failed = f"{c['without_keys']['failed']} of {c['without_keys']['requests']}"
    failed_keyed = f"{c['with_keys']['failed']} of {c['with_keys']['requests']}"
    lines.append(f"| failed requests | {failed} | {failed_keyed} | | 0 |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    f, c = results["fairness"], results["cost"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ways = ["alone", "flood_limited", "flood_unlimited"]
    labels = ["quiet alone", "+ flood, limited", "+ flood, no limits"]
    colors = ["#4c72b0", "#55a868", "#c44e52"]
    left.bar(labels, [f[w]["quiet_ttft_p90_ms"] for w in ways], color=colors)
    left.axhline(1.2 * f["alone"]["quiet_ttft_p90_ms"], color="black", linestyle="--", linewidth=1)
    left.set_ylabel("quiet key's TTFT p90 (ms)")
    left.set_title("A flood beside a quiet key (goal: ≤ 1.2x alone, dashed)")
    right.bar(
        ["without keys", f"{c['keys']:,} keys"],
        [c["without_keys"]["ttft_p50_ms"], c["with_keys"]["ttft_p50_ms"]],
        color=["#4c72b0", "#55a868"],
    )
    right.set_ylabel("TTFT p50 (ms)")
    right.set_title("The key check and accounting (goal: ≤ 1.02x)")
    taken = results["machine"]
    figure.suptitle(f"bench.keys — {taken['date']}, {taken['nproc']} CPUs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    args = parser.parse_args(argv)
    binary = find_nginx()
    if binary is None:
        print(
            "nginx not found: apt-get install -y nginx-light libnginx-mod-http-js",
            file=sys.stderr,
        )
        return 2
    scale = 0.25 if args.quick else 1.0
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(binary)}
    results["setup"] = {
        "fairness": "2 limited stand-ins x 4 slots (ttft 20 ms, 10 ms/token); quiet key: one "
        f"32-token stream at a time, 0.2 s apart; flood key: {FLOOD_CLIENTS} clients of 64-token "
        f"streams back to back, waiting out Retry-After; {40.0 * scale} s per way",
        "cost": "1 pool of 2 stand-ins (ttft 50 ms, 20 ms/token), 16-token streams, 4 at a "
        "time, metrics log on in both ways; the ways alternated",
        "nginx_workers": 2,
    }
    results["fairness"] = fairness(binary, seconds=40.0 * scale)
    results["cost"] = cost(binary, 1000, requests=max(16, int(96 * scale)), rounds=3)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "keys-quick" if args.quick else "keys"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print(table(results))
    print(f"\n{results['machine']} — {results['elapsed_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
