"""prefix_affinity against the other policies, on traffic that shares prompt prefixes.

    python -m bench.prefix          (from the repository root; about 5 minutes)
    python -m bench.prefix --quick  (shorter runs, a smoke test)

A real nginx (our rendered config, njs module loaded) in front of 4 stand-in
replicas on loopback, fresh replicas (cold caches) for every run. The stand-in
models vLLM's prefix cache and a finite prefill (`standin/prefix_cache.py`);
the cost model is printed with the results. Three workloads, each an open-loop
trace fixed by a seed, so every policy gets the same requests at the same times:

- shared: chats over 16 system prompts of 2,000 tokens; each chat has up to 4
  turns whose history grows (the previous answers included). Reports the
  replicas' prefix-cache hit rate (their `vllm:prefix_cache_*` counters), the
  hit rate one ideal cache of the replicas' total size gets on the same trace,
  TTFT p50/p90, throughput and errors;
- skewed: one prefix carries half of the requests; reports in-flight requests
  per replica (time-averaged, from each response's `X-Replica` and timing)
  as max/mean, and errors;
- unique: no shared prefix; TTFT through prefix_affinity and least_conn
  against direct to the replicas.

Writes bench/results/prefix.json and prefix.png and prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from components.settings import RoutingPolicy
from standin.app import token_text
from standin.prefix_cache import PrefixCache, prompt_tokens
from tests.support.nginx import balancer, find_nginx, nginx_version
from tests.support.stub import stub_backends

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "standin/tiny-chat"
QUIET = ("--disable-uvicorn-access-log",)
REPLICAS = 4

# The stand-in's cost model (see standin/prefix_cache.py).
PREFILL_MS_PER_TOKEN = 0.2  # 5,000 uncached prompt tokens/s per replica, one prefill at a time
CACHE_BLOCKS = 1000  # 16,000 tokens of prefix cache per replica
BLOCK_SIZE = 16
TTFT_MS = 10.0  # fixed cost before the first token, after prefill
TOKEN_MS = 10.0  # per generated token (decode), concurrent requests do not slow it
# The unique workload measures the balancer's own cost: no prefill, bench/lb.py's 50 ms TTFT.
UNIQUE_TTFT_MS = 50.0

PREFIX_CHARS = 1024
PREFIX_MAX_CONNS = 4

POLICIES = [
    RoutingPolicy.ROUND_ROBIN,
    RoutingPolicy.LEAST_CONN,
    RoutingPolicy.POWER_OF_TWO,
    RoutingPolicy.SESSION_AFFINITY,
    RoutingPolicy.PREFIX_AFFINITY,
]


# --- traces -------------------------------------------------------------------


@dataclass
class Request:
    at: float
    session: str
    body: dict[str, Any]
    chat: bool = True


def _words(rng: random.Random, count: int, vocabulary: int = 50_000) -> str:
    return " ".join(f"w{rng.randrange(vocabulary)}" for _ in range(count))


def _answer(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def chat_trace(
    seed: int,
    rate: float,
    duration: float,
    prompts: int,
    prompt_words: int,
    hot_share: float = 0.0,
    max_turns: int = 4,
    max_tokens: int = 16,
) -> list[Request]:
    """Poisson arrivals; each one opens a chat or continues an open one (history grows).

    With `hot_share`, that fraction of new chats uses system prompt 0.
    """
    rng = random.Random(seed)
    systems = [f"system prompt {n}: " + _words(rng, prompt_words) for n in range(prompts)]
    answer = _answer(max_tokens)
    open_chats: list[tuple[str, list[dict[str, str]]]] = []
    trace: list[Request] = []
    t = 0.0
    count = 0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return trace
        if open_chats and rng.random() < 0.6:
            index = rng.randrange(len(open_chats))
            session, messages = open_chats[index]
            messages = [*messages, {"role": "user", "content": _words(rng, 30)}]
        else:
            session = f"s{count}"
            count += 1
            hot = rng.random() < hot_share
            system = systems[0] if hot else systems[rng.randrange(1 if hot_share else 0, prompts)]
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": _words(rng, 30)},
            ]
            index = len(open_chats)
            open_chats.append((session, messages))
        turns = sum(1 for m in messages if m["role"] == "user")
        if turns >= max_turns:
            open_chats.pop(index)
        else:
            open_chats[index] = (session, [*messages, {"role": "assistant", "content": answer}])
        body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True}
        trace.append(Request(at=t, session=session, body=body))


def unique_trace(seed: int, count: int, words: int) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(
            at=0.0,
            session=f"u{n}",
            body={
                "model": MODEL,
                "prompt": _words(rng, words),
                "max_tokens": 8,
                "stream": True,
            },
            chat=False,
        )
        for n in range(count)
    ]


def ideal_hit_rate(trace: Sequence[Request], blocks: int) -> float:
    """One LRU cache as large as all replicas' caches together, on the same trace."""
    cache = PrefixCache(blocks, BLOCK_SIZE)
    queried = cached = 0
    for request in trace:
        lookup = cache.admit(prompt_tokens(request.body, request.chat))
        queried += lookup.queried
        cached += lookup.cached
    return cached / queried if queried else 0.0


# --- driving ----------------------------------------------------------------------


@dataclass
class Sample:
    ok: bool
    start: float
    end: float = 0.0
    ttft: float = 0.0
    tokens: int = 0
    replica: str | None = None
    error: str = ""


async def send(client: httpx.AsyncClient, url: str, request: Request) -> Sample:
    path = "/v1/chat/completions" if request.chat else "/v1/completions"
    started = time.perf_counter()
    sample = Sample(ok=False, start=started)
    try:
        async with client.stream(
            "POST", url + path, json=request.body, headers={"X-Session-Id": request.session}
        ) as response:
            sample.replica = response.headers.get("x-replica")
            if response.status_code != 200:
                sample.error = f"HTTP {response.status_code}"
                await response.aread()
            else:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        if sample.tokens == 0:
                            sample.ttft = time.perf_counter() - started
                        sample.tokens += 1
                sample.ok = sample.tokens > 0
    except httpx.HTTPError as exc:
        sample.error = repr(exc)
    sample.end = time.perf_counter()
    return sample


async def replay(urls: Sequence[str], trace: Sequence[Request]) -> tuple[list[Sample], float]:
    """Send each request at its time (open loop); `urls` are used in turn (direct)."""
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()

        async def at(index: int, request: Request) -> Sample:
            delay = t0 + request.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            return await send(client, urls[index % len(urls)], request)

        samples = await asyncio.gather(*(at(i, r) for i, r in enumerate(trace)))
        return list(samples), t0


async def closed_loop(urls: Sequence[str], trace: Sequence[Request], clients: int) -> list[Sample]:
    """`clients` users, each sending its next request when the previous one ended."""
    async with httpx.AsyncClient(timeout=60) as client:
        queue = list(enumerate(trace))
        out: list[Sample] = []

        async def user(u: int) -> None:
            while queue:
                index, request = queue.pop(0)
                out.append(await send(client, urls[index % len(urls)], request))

        await asyncio.gather(*(user(u) for u in range(clients)))
        return out


def scrape(ports: Sequence[int]) -> tuple[float, float]:
    queries = hits = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(line.split()[-1])
            elif line.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(line.split()[-1])
    return queries, hits


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_flight(samples: Sequence[Sample], window: tuple[float, float]) -> dict[str, float]:
    """Time-averaged requests in flight per replica within `window`."""
    lo, hi = window
    busy: dict[str, float] = {}
    for s in samples:
        if s.replica is None:
            continue
        overlap = max(0.0, min(s.end, hi) - max(s.start, lo))
        busy[s.replica] = busy.get(s.replica, 0.0) + overlap
    return {replica: seconds / (hi - lo) for replica, seconds in sorted(busy.items())}


def stand_in_env(prefill_ms_per_token: float = PREFILL_MS_PER_TOKEN) -> dict[str, str]:
    return {
        "STANDIN_PREFILL_MS_PER_TOKEN": str(prefill_ms_per_token),
        "STANDIN_PREFIX_CACHE_BLOCKS": str(CACHE_BLOCKS),
        "STANDIN_BLOCK_SIZE": str(BLOCK_SIZE),
    }


@contextlib.contextmanager
def fleet_and_lb(binary: str, policy: RoutingPolicy | None, overhead_only: bool = False) -> Any:
    """Fresh replicas (cold caches) and, unless `policy` is None (direct), nginx.

    `overhead_only`: no prefill cost and the fixed TTFT of bench/lb.py, so the
    only difference from direct is the balancer's own work.
    """
    env = stand_in_env(0.0) if overhead_only else stand_in_env()
    with stub_backends(
        REPLICAS,
        ttft_ms=UNIQUE_TTFT_MS if overhead_only else TTFT_MS,
        token_ms=TOKEN_MS,
        extra_args=QUIET,
        env=env,
    ) as stubs:
        if policy is None:
            yield stubs, [stub.url for stub in stubs]
            return
        with balancer(
            binary,
            stubs.ports,
            policy=policy,
            prefix_chars=PREFIX_CHARS,
            prefix_max_conns=PREFIX_MAX_CONNS,
        ) as nginx:
            yield stubs, [nginx.url]


def run_shared(binary: str, policy: RoutingPolicy, trace: Sequence[Request]) -> dict[str, Any]:
    with fleet_and_lb(binary, policy) as (stubs, urls):
        samples, t0 = asyncio.run(replay(urls, trace))
        queries, hits = scrape(stubs.ports)
    ok = [s for s in samples if s.ok]
    span = max(s.end for s in samples) - t0
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 0.5),
        "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 0.9),
        "throughput_rps": len(ok) / span,
        "tokens_per_s": sum(s.tokens for s in ok) / span,
        "replicas_used": sorted({s.replica for s in ok if s.replica}),
    }


def run_skewed(binary: str, policy: RoutingPolicy, trace: Sequence[Request]) -> dict[str, Any]:
    with fleet_and_lb(binary, policy) as (stubs, urls):
        samples, t0 = asyncio.run(replay(urls, trace))
    duration = trace[-1].at
    # The middle of the run: load has built up and not yet drained.
    window = (t0 + 0.2 * duration, t0 + 0.9 * duration)
    loads = in_flight(samples, window)
    for stub in stubs:
        loads.setdefault(stub.replica_id, 0.0)
    mean = statistics.fmean(loads.values())
    ok = [s for s in samples if s.ok]
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "in_flight": loads,
        "max_over_mean": max(loads.values()) / mean if mean else float("nan"),
        "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 0.9),
    }


def run_unique(
    binary: str, policy: RoutingPolicy | None, trace: Sequence[Request]
) -> dict[str, Any]:
    with fleet_and_lb(binary, policy, overhead_only=True) as (_stubs, urls):
        asyncio.run(closed_loop(urls, trace[:20], REPLICAS))  # warm connections
        samples = asyncio.run(closed_loop(urls, trace[20:], REPLICAS))
    ok = [s for s in samples if s.ok]
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 0.5),
        "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 0.9),
    }


# --- report ---------------------------------------------------------------------


def machine(binary: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    njs = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-http-js"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "nginx": nginx_version(binary),
        "njs": njs or "unknown",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def tables(results: dict[str, Any]) -> str:
    shared = results["shared"]
    ideal = results["ideal_hit_rate"]
    lc = shared["least_conn"]
    lines = [
        f"| policy ({shared['_trace']}) | hit rate | / ideal | TTFT p50 (ms) | TTFT p90 (ms) "
        "| p90 / least_conn | requests/s | tokens/s | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in shared.items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {r['hit_rate']:.2f} | {r['hit_rate'] / ideal:.2f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p90_ms']:.0f} | "
            f"{r['ttft_p90_ms'] / lc['ttft_p90_ms']:.2f} | {r['throughput_rps']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['errors']} |"
        )
    lines.append(
        f"| ideal single cache ({REPLICAS} x {CACHE_BLOCKS} blocks) | {ideal:.2f} | 1.00 "
        "| | | | | | |"
    )
    skew = results["skewed"]
    lines += [
        "",
        f"| policy ({skew['_trace']}) | in flight per replica (time-averaged) | max / mean "
        "| TTFT p90 (ms) | errors |",
        "|---|---|---|---|---|",
    ]
    for name, r in skew.items():
        if name.startswith("_"):
            continue
        loads = " / ".join(f"{v:.1f}" for v in r["in_flight"].values())
        lines.append(
            f"| {name} | {loads} | {r['max_over_mean']:.2f} | {r['ttft_p90_ms']:.0f} "
            f"| {r['errors']} |"
        )
    unique = results["unique"]
    direct = unique["direct"]
    lines += [
        "",
        f"| path ({unique['_trace']}) | TTFT p50 (ms) | TTFT p90 (ms) | p50 / direct "
        "| p90 / direct | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in unique.items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {r['ttft_p50_ms']:.1f} | {r['ttft_p90_ms']:.1f} | "
            f"{r['ttft_p50_ms'] / direct['ttft_p50_ms']:.2f}x | "
            f"{r['ttft_p90_ms'] / direct['ttft_p90_ms']:.2f}x | {r['errors']} |"
        )
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    shared = results["shared"]
    new = shared["prefix_affinity"]
    ratio_ttft = new["ttft_p90_ms"] / shared["least_conn"]["ttft_p90_ms"]
    ratio_hit = new["hit_rate"] / results["ideal_hit_rate"]
    skew = results["skewed"]["prefix_affinity"]
    unique = results["unique"]
    ratio_direct = unique["prefix_affinity"]["ttft_p50_ms"] / unique["direct"]["ttft_p50_ms"]
    return [
        (
            "shared: TTFT p90 prefix_affinity / least_conn",
            ratio_ttft,
            "<= 0.33",
            ratio_ttft <= 1 / 3,
        ),
        ("shared: hit rate prefix_affinity / ideal", ratio_hit, ">= 0.8", ratio_hit >= 0.8),
        (
            "skewed: max/mean in flight (prefix_affinity)",
            skew["max_over_mean"],
            "<= 1.5, 0 errors",
            skew["max_over_mean"] <= 1.5 and skew["errors"] == 0,
        ),
        (
            "unique: TTFT p50 prefix_affinity / direct",
            ratio_direct,
            "<= 1.05",
            ratio_direct <= 1.05,
        ),
    ]


def chart(results: dict[str, Any], path: Path) -> None:
    shared = {k: v for k, v in results["shared"].items() if not k.startswith("_")}
    skew = {k: v for k, v in results["skewed"].items() if not k.startswith("_")}
    names = list(shared)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].bar(names, [shared[n]["ttft_p90_ms"] for n in names], color="tab:blue")
    axes[0].set_title("shared prefixes: TTFT p90 (ms)")
    axes[1].bar(names, [shared[n]["hit_rate"] for n in names], color="tab:green")
    axes[1].axhline(results["ideal_hit_rate"], color="black", linestyle="--", label="ideal cache")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    axes[1].set_title("shared prefixes: prefix-cache hit rate")
    axes[2].bar(list(skew), [skew[n]["max_over_mean"] for n in skew], color="tab:orange")
    axes[2].axhline(1.5, color="black", linestyle="--", label="goal")
    axes[2].legend()
    axes[2].set_title("skewed: max / mean in flight per replica")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(
        f"{REPLICAS} stand-in replicas behind nginx ({results['machine']['nginx']}, "
        f"njs {results['machine']['njs']}), {results['machine']['nproc']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    args = parser.parse_args(argv)
    binary = find_nginx()
    if binary is None:
        print(
            "nginx not found: apt-get install -y nginx-light libnginx-mod-http-js", file=sys.stderr
        )
        return 2
    scale = 0.25 if args.quick else 1.0
    started = time.monotonic()

    shared_rate, shared_seconds = 14.0, 30.0 * scale
    shared = chat_trace(
        seed=1, rate=shared_rate, duration=shared_seconds, prompts=16, prompt_words=2000
    )
    skew_rate, skew_seconds = 16.0, 16.0 * scale
    skewed = chat_trace(
        seed=2,
        rate=skew_rate,
        duration=skew_seconds,
        prompts=8,
        prompt_words=500,
        hot_share=0.5,
        max_turns=1,
        max_tokens=64,
    )
    unique = unique_trace(seed=3, count=int(220 * scale) + 20, words=200)

    results: dict[str, Any] = {
        "machine": machine(binary),
        "cost_model": {
            "tokens": "whitespace-separated words; one extra per chat message (its role)",
            "block_size": BLOCK_SIZE,
            "cache_blocks_per_replica": CACHE_BLOCKS,
            "prefill_ms_per_uncached_token": PREFILL_MS_PER_TOKEN,
            "prefill": "one request at a time per replica, first come first served",
            "ttft_ms_after_prefill": TTFT_MS,
            "decode_ms_per_token": TOKEN_MS,
        },
        "settings": {"prefix_chars": PREFIX_CHARS, "prefix_max_conns": PREFIX_MAX_CONNS},
        "ideal_hit_rate": ideal_hit_rate(shared, REPLICAS * CACHE_BLOCKS),
        "shared": {
            "_trace": f"{len(shared)} chat turns in {shared_seconds:.0f} s over 16 x 2,000-token "
            "system prompts",
        },
        "skewed": {
            "_trace": f"{len(skewed)} requests in {skew_seconds:.0f} s, half on one prefix, "
            "64 tokens each",
        },
        "unique": {
            "_trace": f"{len(unique) - 20} requests, 4 clients, no shared prefix, "
            f"no prefill cost, TTFT {UNIQUE_TTFT_MS:.0f} ms"
        },
    }
    for policy in POLICIES:
        results["shared"][policy.value] = run_shared(binary, policy, shared)
        print(f"shared {policy.value}: {results['shared'][policy.value]}", flush=True)
    for policy in POLICIES:
        results["skewed"][policy.value] = run_skewed(binary, policy, skewed)
        print(f"skewed {policy.value}: {results['skewed'][policy.value]}", flush=True)
    for name, unique_policy in (
        ("direct", None),
        ("least_conn", RoutingPolicy.LEAST_CONN),
        ("prefix_affinity", RoutingPolicy.PREFIX_AFFINITY),
    ):
        results["unique"][name] = run_unique(binary, unique_policy, unique)
        print(f"unique {name}: {results['unique'][name]}", flush=True)

    results["goals"] = [
        {"goal": g, "value": round(v, 3), "target": t, "met": met}
        for g, v, t, met in goals(results)
    ]
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.out / "prefix.png")
    print()
    print(tables(results))
    print()
    for goal in results["goals"]:
        print(
            f"- {goal['goal']}: {goal['value']} (goal {goal['target']}): "
            f"{'met' if goal['met'] else 'NOT met'}"
        )
    print(
        f"\n{results['seconds']} s; wrote {args.out / 'prefix.json'} and {args.out / 'prefix.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
