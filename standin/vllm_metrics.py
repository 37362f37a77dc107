"""vLLM v0.33.0's V1-engine metrics, driven by what the stand-in really serves.

Names, types, labels and buckets follow vLLM's `vllm/v1/metrics/loggers.py`
(PrometheusStatLogger, sdist of 0.33.0): labels `model_name` and `engine`
("0", one engine per server; :499-505), counters exposed with `_total`,
`finished_reason` on `vllm:request_success` with all five values of
`vllm/v1/engine/__init__.py:37` (`stop`, `length`, `abort`, `error`,
`repetition`; v0.11.0 had the first three). Names, labels and buckets are
those of v0.11.0: `vllm:inter_token_latency_seconds` (:941) is the name
since v0.11 of what earlier releases called `time_per_output_token`
(vLLM PR #24110), which v0.33.0 no longer has.

What is measured, and how it maps onto a stand-in without a model:

- latencies are observed from the real schedule of each request: the time
  from arrival to the first token, the gaps between tokens, the whole request;
- KV-cache usage counts the 16-token blocks (vLLM's default block size) held
  by the requests in flight, out of a fixed pool;
- the prefix cache remembers the hashed full blocks of earlier prompts (a
  chain, so a block only hits after all blocks before it), like vLLM's
  automatic prefix caching; queries are prompt tokens, hits cached tokens;
- the stand-in never queues, so `vllm:num_requests_waiting` stays 0.

The server's /metrics text may already carry some of these families (the
stand-in's original counters, or prefix-cache metrics added elsewhere):
`render(skip=...)` leaves out every family whose `# TYPE` line is already
there (as `name` or `name_total`), so no series is ever exposed twice.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BLOCK_SIZE = 16
KV_BLOCKS = 1024
ENGINE = "0"

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

_TYPE_LINE = re.compile(r"^# TYPE (\S+) ", re.MULTILINE)


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = (*buckets, math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.total += value


def words_of(value: Any) -> list[str]:
    """Prompt words, the stand-in's tokens (as in `count_tokens`)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [word for item in value for word in words_of(item)]
    if isinstance(value, dict):
        return words_of(value.get("content", "")) + words_of(value.get("text", ""))
    return []


class PrefixCache:
    """Chained block hashes of earlier prompts, least recently used out first."""

    def __init__(self, capacity_blocks: int = KV_BLOCKS) -> None:
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_insert(self, tokens: Sequence[str]) -> int:
        """Cached tokens for this prompt; its full blocks are remembered afterwards.

        Like vLLM, at least the last prompt token is always computed, so a
        prompt never hits in full.
        """
        hashes: list[int] = []
        parent = 0
        for start in range(0, len(tokens) - len(tokens) % BLOCK_SIZE, BLOCK_SIZE):
            parent = hash((parent, tuple(tokens[start : start + BLOCK_SIZE])))
            hashes.append(parent)
        hit_blocks = 0
        for block in hashes[: max(len(tokens) - 1, 0) // BLOCK_SIZE]:
            if block not in self.blocks:
                break
            hit_blocks += 1
        for block in hashes:
            self.blocks[block] = None
            self.blocks.move_to_end(block)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return hit_blocks * BLOCK_SIZE


@dataclass
class RequestTrack:
    """One request's tokens and times (event-loop clock, seconds)."""

    metrics: VllmMetrics
    arrived: float
    prompt_tokens: int
    generated: int = 0
    last_token: float | None = None
    done: bool = False

    def token(self, at: float) -> None:
        m = self.metrics
        if self.last_token is None:
            m.ttft.observe(max(at - self.arrived, 0.0))
        else:
            m.itl.observe(max(at - self.last_token, 0.0))
        self.last_token = at
        self.generated += 1

    def tokens_at(self, times: Iterable[float]) -> None:
        for at in times:
            self.token(at)

    def finish(self, at: float, finished: bool, reason: str) -> None:
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.active.discard(self)
        m.generation_tokens += self.generated
        m.e2e.observe(max(at - self.arrived, 0.0))
        if finished:
            m.success[reason if reason in m.success else "stop"] += 1

    @property
    def blocks(self) -> int:
        return math.ceil((self.prompt_tokens + self.generated) / BLOCK_SIZE)

    def __hash__(self) -> int:
        return id(self)


@dataclass
class VllmMetrics:
    """The families the dashboard reads, for one served model name."""

    model_name: str
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    itl: _Histogram = field(default_factory=lambda: _Histogram(ITL_BUCKETS))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_LATENCY_BUCKETS))
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    prefix_cache: PrefixCache = field(default_factory=PrefixCache)
    active: set[RequestTrack] = field(default_factory=set)

    def start(self, arrived: float, prompt: Any) -> RequestTrack:
        tokens = words_of(prompt)
        self.prompt_tokens += len(tokens)
        self.prefix_queries += len(tokens)
        self.prefix_hits += self.prefix_cache.lookup_and_insert(tokens)
        track = RequestTrack(self, arrived, len(tokens))
        self.active.add(track)
        return track

    def render(self, skip: str = "") -> str:
        """The exposition text of every family not already declared in `skip`."""
        declared = _TYPE_LINE.findall(skip)
        # Older expositions name a counter's family with its `_total` sample name.
        present = {*declared, *(name.removesuffix("_total") for name in declared)}
        labels = f'model_name="{self.model_name}",engine="{ENGINE}"'
        kv = min(sum(t.blocks for t in self.active) / KV_BLOCKS, 1.0)
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            if name in present:
                return
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        def histogram(name: str, help_text: str, h: _Histogram) -> None:
            samples = [
                f'{name}_bucket{{{labels},le="{_number(b)}"}} {c}'
                for b, c in zip(h.bounds, h.counts, strict=True)
            ]
            samples.append(f"{name}_sum{{{labels}}} {_number(h.total)}")
            samples.append(f"{name}_count{{{labels}}} {h.counts[-1]}")
            family(name, "histogram", help_text, samples)

        def single(name: str, kind: str, help_text: str, value: float) -> None:
            suffix = "_total" if kind == "counter" else ""
            family(name, kind, help_text, [f"{name}{suffix}{{{labels}}} {_number(value)}"])

        single(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            len(self.active),
        )
        single(
            "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", 0
        )
        single(
            "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv
        )
        single(
            "vllm:prefix_cache_queries",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        )
        single(
            "vllm:prefix_cache_hits",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        )
        single(
            "vllm:prompt_tokens",
            "counter",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        )
        single(
            "vllm:generation_tokens",
            "counter",
            "Number of generation tokens processed.",
            self.generation_tokens,
        )
        family(
            "vllm:request_success",
            "counter",
            "Count of successfully processed requests.",
            [
                f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {count}'
                for reason, count in self.success.items()
            ],
        )
        histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            self.ttft,
        )
        histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            self.itl,
        )
        histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            self.e2e,
        )
        return "\n".join(out) + "\n" if out else ""
