"""prefix_affinity against the other policies, on traffic that shares prompt prefixes.

    python -m bench.prefix          (from the repository root; about 9 minutes)
    python -m bench.prefix --quick  (shorter runs, a smoke test)

A real nginx (our rendered config, njs module loaded) in front of 4 stand-in
replicas on loopback, fresh replicas (empty caches) for every run. The
stand-in models vLLM's prefix cache and a finite prefill
(`standin/prefix_cache.py`); the cost model is printed with the results. Three
workloads, each an open-loop or closed-loop trace fixed by a seed, so every
policy gets the same requests at the same times:

- shared: chats over 16 system prompts of 2,000 tokens; each chat has up to 4
  turns whose history grows (the previous answers included). Run twice per
  policy. *Cold*: the trace from empty caches, as right after `pulumi up`.
  *Warm*: the same trace after a warm-up through the balancer under test:
  each system prompt sent once, one request at a time, standing for traffic a
  running deployment has already seen. Only the prompts, not the chats, are
  replayed, so nothing of the measured trace is cached beforehand, and the
  warm-up is the same requests in the same order for every policy; its
  requests are not counted. Why both: from empty caches each replica's first
  request for a prompt prefills 2,000 tokens (0.4 s) while the requests
  behind it wait, and in a 30 s trace those first visits set prefix_affinity's
  p90 (the cold rows split p90 into the first 5 s and the rest to show it);
  a balancer in service runs warm. Reports the replicas' prefix-cache hit rate
  (their `vllm:prefix_cache_*` counters, warm-up subtracted), the hit rate one
  ideal cache of the replicas' total size gets on the same trace (after the
  same warm-up for the warm rows), TTFT p50/p90, throughput and errors;
- skewed: one prefix carries half of the requests (from empty caches);
  reports in-flight requests per replica (time-averaged, from each response's
  `X-Replica` and timing) as max/mean, and errors;
- unique: no shared prefix, no prefill cost; the balancer's own cost on TTFT.
  Direct, least_conn and prefix_affinity (two nginx in front of the same
  replicas) are measured in the same time window, each client taking the
  three paths in a shuffled order, so load from outside the benchmark falls
  on all three alike instead of on whichever ran while it lasted. Ratios to
  direct come with a bootstrap 95 % interval.

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

from components.config.sections import RoutingPolicy
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


def warm_up_trace(trace: Sequence[Request]) -> list[Request]:
    """Each system prompt of `trace` once, in order of first use, with a user turn of its own.

    The user turn is not one of the trace's, so only the system prompt (what a
    running deployment has certainly seen before) is cached by it.
    """
    seen: dict[str, None] = {}
    for request in trace:
        messages = request.body.get("messages") or []
        if messages and messages[0].get("role") == "system":
            seen.setdefault(messages[0]["content"], None)
    return [
        Request(
            at=0.0,
            session=f"warm{n}",
            body={
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "warm-up"},
                ],
                "max_tokens": 1,
                "stream": True,
            },
        )
        for n, system in enumerate(seen)
    ]


def ideal_hit_rate(trace: Sequence[Request], blocks: int, warm_up: Sequence[Request] = ()) -> float:
    """One LRU cache as large as all replicas' caches together, on the same trace.

    `warm_up` is admitted first and not counted, as for the replicas.
    """
    cache = PrefixCache(blocks, BLOCK_SIZE)
    for request in warm_up:
        cache.admit(prompt_tokens(request.body, request.chat))
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
def fleet_and_lb(binary: str, policy: RoutingPolicy) -> Any:
    """Fresh replicas (empty caches) behind a fresh nginx: no run inherits another's state."""
    with (
        stub_backends(
            REPLICAS, ttft_ms=TTFT_MS, token_ms=TOKEN_MS, extra_args=QUIET, env=stand_in_env()
        ) as stubs,
        balancer(
            binary,
            stubs.ports,
            policy=policy,
            prefix_chars=PREFIX_CHARS,
            prefix_max_conns=PREFIX_MAX_CONNS,
        ) as nginx,
    ):
        yield stubs, [nginx.url]


# The cold rows' p90 is also given for requests sent in the first SPLIT_S seconds
# and after: from empty caches, the first visits of each prompt fall early.
SPLIT_S = 5.0


def run_shared(
    binary: str,
    policy: RoutingPolicy,
    trace: Sequence[Request],
    warm_up: Sequence[Request] = (),
) -> dict[str, Any]:
    """The trace from empty caches, or after `warm_up` (sent one at a time, not counted)."""
    with fleet_and_lb(binary, policy) as (stubs, urls):
        warm_errors = 0
        queries0 = hits0 = 0.0
        if warm_up:
            warm = asyncio.run(closed_loop(urls, warm_up, 1))
            warm_errors = sum(1 for s in warm if not s.ok)
            queries0, hits0 = scrape(stubs.ports)
        samples, t0 = asyncio.run(replay(urls, trace))
        queries, hits = scrape(stubs.ports)
    queries -= queries0
    hits -= hits0
    ok = [s for s in samples if s.ok]
    early = [s.ttft for s in ok if s.start - t0 < SPLIT_S]
    late = [s.ttft for s in ok if s.start - t0 >= SPLIT_S]
    span = max(s.end for s in samples) - t0
    return {
        "warm_up_requests": len(warm_up),
        "warm_up_errors": warm_errors,
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 0.5),
        "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 0.9),
        "ttft_p90_first_5s_ms": 1000 * pct(early, 0.9),
        "ttft_p90_after_5s_ms": 1000 * pct(late, 0.9),
        "requests_first_5s": len(early),
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


UNIQUE_PATHS = ("direct", "least_conn", "prefix_affinity")
UNIQUE_CLIENTS = 4
UNIQUE_WARM = 10  # per client and path, unrecorded: connections opened, code paths warm
BOOTSTRAP = 2000


async def interleaved(
    urls: dict[str, Sequence[str]], trace: Sequence[Request], clients: int, seed: int
) -> dict[str, list[Sample]]:
    """`clients` users in a closed loop, each cycling through the paths in shuffled rounds.

    Every round sends one request on each path, in an order drawn per round, so
    each path sees the same mix of neighbours and the same background load.
    """
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {name: [] for name in urls}
    per_client = len(trace) // clients
    async with httpx.AsyncClient(timeout=60) as client:

        async def user(u: int) -> None:
            mine = trace[u * per_client : (u + 1) * per_client]
            rounds = len(mine) // len(urls)
            for r in range(rounds):
                order = list(urls)
                rng.shuffle(order)
                for k, name in enumerate(order):
                    request = mine[r * len(urls) + k]
                    targets = urls[name]
                    sample = await send(client, targets[(u + r) % len(targets)], request)
                    if r >= UNIQUE_WARM:
                        out[name].append(sample)

        await asyncio.gather(*(user(u) for u in range(clients)))
    return out


def bootstrap_ratio(
    values: Sequence[float], base: Sequence[float], q: float, rng: random.Random
) -> tuple[float, float]:
    """95 % interval of pct(values, q) / pct(base, q), resampling both sides."""
    ratios = sorted(
        pct(rng.choices(values, k=len(values)), q) / pct(rng.choices(base, k=len(base)), q)
        for _ in range(BOOTSTRAP)
    )
    return ratios[int(0.025 * BOOTSTRAP)], ratios[int(0.975 * BOOTSTRAP) - 1]


def run_unique(binary: str, trace: Sequence[Request]) -> dict[str, Any]:
    """Direct and two balancers over the same replicas, interleaved (see the docstring)."""
    with contextlib.ExitStack() as stack:
        stubs = stack.enter_context(
            stub_backends(
                REPLICAS,
                ttft_ms=UNIQUE_TTFT_MS,
                token_ms=TOKEN_MS,
                extra_args=QUIET,
                env=stand_in_env(0.0),
            )
        )
        urls: dict[str, Sequence[str]] = {"direct": [stub.url for stub in stubs]}
        for policy in (RoutingPolicy.LEAST_CONN, RoutingPolicy.PREFIX_AFFINITY):
            nginx = stack.enter_context(
                balancer(
                    binary,
                    stubs.ports,
                    policy=policy,
                    prefix_chars=PREFIX_CHARS,
                    prefix_max_conns=PREFIX_MAX_CONNS,
                )
            )
            urls[policy.value] = [nginx.url]
        load_before = load_average()
        started = time.monotonic()
        samples = asyncio.run(interleaved(urls, trace, UNIQUE_CLIENTS, seed=4))
        seconds = time.monotonic() - started
        load_after = load_average()
    rng = random.Random(5)
    direct = [s.ttft for s in samples["direct"] if s.ok]
    out: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "load_average_before_after": [load_before, load_after],
    }
    for name in UNIQUE_PATHS:
        ok = [s.ttft for s in samples[name] if s.ok]
        row: dict[str, Any] = {
            "requests": len(samples[name]),
            "errors": len(samples[name]) - len(ok),
            "ttft_p50_ms": 1000 * pct(ok, 0.5),
            "ttft_p90_ms": 1000 * pct(ok, 0.9),
        }
        if name != "direct":
            row["p50_over_direct"] = pct(ok, 0.5) / pct(direct, 0.5)
            row["p50_over_direct_95ci"] = bootstrap_ratio(ok, direct, 0.5, rng)
            row["p90_over_direct"] = pct(ok, 0.9) / pct(direct, 0.9)
            row["p90_over_direct_95ci"] = bootstrap_ratio(ok, direct, 0.9, rng)
        out[name] = row
    return out


def load_average() -> float:
    """The 1-minute load average: this machine is shared, so each run records it."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


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
        "os": _os_name(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_start": load_average(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "unknown"


def _policies(rows: dict[str, Any]) -> dict[str, Any]:
    return {name: r for name, r in rows.items() if not name.startswith("_")}


def shared_table(results: dict[str, Any], start: str) -> list[str]:
    shared = results["shared"]
    rows = _policies(shared[start])
    ideal = results["ideal_hit_rate"][start]
    lc = rows["least_conn"]
    caches = f"after a warm-up of {shared['_warm_up']}" if start == "warm" else "from empty caches"
    lines = [
        f"| policy ({shared['_trace']}, {caches}) | hit rate | / ideal | TTFT p50 (ms) "
        "| TTFT p90 (ms) | p90 / least_conn | p90 first 5 s (ms) | p90 after 5 s (ms) "
        "| requests/s | tokens/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['hit_rate']:.2f} | {r['hit_rate'] / ideal:.2f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p90_ms']:.0f} | "
            f"{r['ttft_p90_ms'] / lc['ttft_p90_ms']:.2f} | {r['ttft_p90_first_5s_ms']:.0f} | "
            f"{r['ttft_p90_after_5s_ms']:.0f} | {r['throughput_rps']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['errors'] + r['warm_up_errors']} |"
        )
    lines.append(
        f"| ideal single cache ({REPLICAS} x {CACHE_BLOCKS} blocks) | {ideal:.2f} | 1.00 "
        "| | | | | | | | |"
    )
    return lines


def tables(results: dict[str, Any]) -> str:
    lines = [*shared_table(results, "warm"), "", *shared_table(results, "cold")]
    skew = results["skewed"]
    lines += [
        "",
        f"| policy ({skew['_trace']}) | in flight per replica (time-averaged) | max / mean "
        "| TTFT p90 (ms) | errors |",
        "|---|---|---|---|---|",
    ]
    for name, r in _policies(skew).items():
        loads = " / ".join(f"{v:.1f}" for v in r["in_flight"].values())
        lines.append(
            f"| {name} | {loads} | {r['max_over_mean']:.2f} | {r['ttft_p90_ms']:.0f} "
            f"| {r['errors']} |"
        )
    unique = results["unique"]
    lines += [
        "",
        f"| path ({unique['_trace']}) | requests | TTFT p50 (ms) | TTFT p90 (ms) "
        "| p50 / direct (95 % interval) | p90 / direct (95 % interval) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in UNIQUE_PATHS:
        r = unique[name]
        if name == "direct":
            ratios = "1 | 1"
        else:
            lo50, hi50 = r["p50_over_direct_95ci"]
            lo90, hi90 = r["p90_over_direct_95ci"]
            ratios = (
                f"{r['p50_over_direct']:.3f}x ({lo50:.3f}-{hi50:.3f}) | "
                f"{r['p90_over_direct']:.3f}x ({lo90:.3f}-{hi90:.3f})"
            )
        lines.append(
            f"| {name} | {r['requests']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p90_ms']:.1f} "
            f"| {ratios} | {r['errors']} |"
        )
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """The issue's goals; the shared ones on the warm runs, a balancer's normal state."""
    warm = results["shared"]["warm"]
    new = warm["prefix_affinity"]
    ratio_ttft = new["ttft_p90_ms"] / warm["least_conn"]["ttft_p90_ms"]
    ratio_hit = new["hit_rate"] / results["ideal_hit_rate"]["warm"]
    skew = results["skewed"]["prefix_affinity"]
    ratio_direct = results["unique"]["prefix_affinity"]["p50_over_direct"]
    return [
        (
            "shared (warm): TTFT p90 prefix_affinity / least_conn",
            ratio_ttft,
            "<= 0.33",
            ratio_ttft <= 1 / 3,
        ),
        (
            "shared (warm): hit rate prefix_affinity / ideal",
            ratio_hit,
            ">= 0.8",
            ratio_hit >= 0.8,
        ),
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


def cold_figures(results: dict[str, Any]) -> list[tuple[str, float]]:
    """The same shared ratios from empty caches: kept beside the goals, not judged."""
    cold = results["shared"]["cold"]
    new = cold["prefix_affinity"]
    lc = cold["least_conn"]
    return [
        (
            "shared (cold): TTFT p90 prefix_affinity / least_conn",
            new["ttft_p90_ms"] / lc["ttft_p90_ms"],
        ),
        (
            "shared (cold), sent after the first 5 s: TTFT p90 prefix_affinity / least_conn",
            new["ttft_p90_after_5s_ms"] / lc["ttft_p90_after_5s_ms"],
        ),
        (
            "shared (cold): hit rate prefix_affinity / ideal",
            new["hit_rate"] / results["ideal_hit_rate"]["cold"],
        ),
    ]


def chart(results: dict[str, Any], path: Path) -> None:
    warm = _policies(results["shared"]["warm"])
    cold = _policies(results["shared"]["cold"])
    skew = _policies(results["skewed"])
    names = list(warm)
    x = list(range(len(names)))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    # Cold (grey) beside warm, per policy, for TTFT p90 and for the hit rate.
    for ax, key, color, (cold_label, warm_label) in (
        (axes[0], "ttft_p90_ms", "tab:blue", ("cold (empty caches)", "warm (after warm-up)")),
        (axes[1], "hit_rate", "tab:green", ("cold", "warm")),
    ):
        for offset, runs, shade, label in (
            (-0.2, cold, "tab:gray", cold_label),
            (0.2, warm, color, warm_label),
        ):
            ax.bar(
                [i + offset for i in x],
                [runs[n][key] for n in names],
                0.4,
                color=shade,
                label=label,
            )
    axes[0].set_title("shared prefixes: TTFT p90 (ms)")
    axes[0].legend()
    axes[1].axhline(
        results["ideal_hit_rate"]["warm"], color="black", linestyle="--", label="ideal cache (warm)"
    )
    axes[1].set_ylim(0, 1)
    axes[1].legend(loc="lower left")
    axes[1].set_title("shared prefixes: prefix-cache hit rate")
    for ax in axes[:2]:
        ax.set_xticks(x, names)
    axes[2].bar(list(skew), [skew[n]["max_over_mean"] for n in skew], color="tab:orange")
    axes[2].axhline(1.5, color="black", linestyle="--", label="goal")
    axes[2].legend()
    axes[2].set_title("skewed: max / mean in flight per replica")
    unique = results["unique"]
    paths = [p for p in UNIQUE_PATHS if p != "direct"]
    for offset, q, color in ((-0.2, "p50", "tab:purple"), (0.2, "p90", "tab:pink")):
        values = [unique[p][f"{q}_over_direct"] for p in paths]
        lows = [
            v - unique[p][f"{q}_over_direct_95ci"][0] for p, v in zip(paths, values, strict=True)
        ]
        highs = [
            unique[p][f"{q}_over_direct_95ci"][1] - v for p, v in zip(paths, values, strict=True)
        ]
        axes[3].bar(
            [i + offset for i in range(len(paths))],
            values,
            0.4,
            yerr=[lows, highs],
            capsize=4,
            color=color,
            label=f"TTFT {q} / direct",
        )
    axes[3].axhline(1.05, color="black", linestyle="--", label="goal (p50)")
    axes[3].set_xticks(range(len(paths)), paths)
    top = max(unique[p][f"{q}_over_direct_95ci"][1] for p in paths for q in ("p50", "p90"))
    axes[3].set_ylim(0.9, max(1.2, top + 0.02))
    axes[3].legend()
    axes[3].set_title("no shared prefix: TTFT / direct (95 % interval)")
    for ax in axes[:3]:
        ax.tick_params(axis="x", rotation=30)
    m = results["machine"]
    fig.suptitle(
        f"{REPLICAS} stand-in replicas behind nginx ({m['nginx']}, njs {m['njs']}), "
        f"{m['nproc']} CPUs, load average {m['load_average_start']:.2f} at start"
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
    warm_up = warm_up_trace(shared)
    per_path = int(600 * scale)
    rounds = per_path // UNIQUE_CLIENTS + UNIQUE_WARM
    unique = unique_trace(seed=3, count=rounds * len(UNIQUE_PATHS) * UNIQUE_CLIENTS, words=200)
    unique_measured = (rounds - UNIQUE_WARM) * UNIQUE_CLIENTS

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
        "ideal_hit_rate": {
            "cold": ideal_hit_rate(shared, REPLICAS * CACHE_BLOCKS),
            "warm": ideal_hit_rate(shared, REPLICAS * CACHE_BLOCKS, warm_up),
        },
        "shared": {
            "_trace": f"{len(shared)} chat turns in {shared_seconds:.0f} s over 16 x 2,000-token "
            "system prompts",
            "_warm_up": f"{len(warm_up)} requests, each system prompt once",
            "_warm_up_meaning": (
                "before the measured trace, each system prompt of the trace is sent once "
                "through the balancer under test, one request at a time, with a user turn "
                "not in the trace: traffic a running deployment has already seen; the same "
                "requests in the same order for every policy, not counted in any figure"
            ),
            "cold": {},
            "warm": {},
        },
        "skewed": {
            "_trace": f"{len(skewed)} requests in {skew_seconds:.0f} s, half on one prefix, "
            "64 tokens each",
        },
        "unique": {
            "_trace": f"{unique_measured} requests per path, interleaved, {UNIQUE_CLIENTS} "
            f"clients, no shared prefix, no prefill cost, TTFT {UNIQUE_TTFT_MS:.0f} ms",
        },
    }
    for start in ("cold", "warm"):
        for policy in POLICIES:
            row = run_shared(binary, policy, shared, warm_up if start == "warm" else ())
            results["shared"][start][policy.value] = row
            print(f"shared {start} {policy.value}: {row}", flush=True)
    for policy in POLICIES:
        results["skewed"][policy.value] = run_skewed(binary, policy, skewed)
        print(f"skewed {policy.value}: {results['skewed'][policy.value]}", flush=True)
    results["unique"].update(run_unique(binary, unique))
    print(f"unique: {results['unique']}", flush=True)
    results["machine"]["load_average_end"] = load_average()

    results["goals"] = [
        {"goal": g, "value": round(v, 3), "target": t, "met": met}
        for g, v, t, met in goals(results)
    ]
    results["cold_figures"] = {name: round(v, 3) for name, v in cold_figures(results)}
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
    for name, value in results["cold_figures"].items():
        print(f"- {name}: {value} (no goal)")
    m = results["machine"]
    print(
        f"\nload average (1 min): {m['load_average_start']} at start, "
        f"{m['load_average_end']} at end"
    )
    print(
        f"\n{results['seconds']} s; wrote {args.out / 'prefix.json'} and {args.out / 'prefix.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
