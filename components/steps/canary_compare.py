"""Whether a canary is worse: two scrapes of each replica's /metrics in, a verdict out.

Pure (no engine, no HTTP), so every figure the canary step prints is checked on plain
text. TTFT p90 comes from the increase of `vllm:time_to_first_token_seconds`' buckets
(as `histogram_quantile`), the error rate from `http_requests_total` of `/v1/` routes
(5xx fail, 4xx are the client's); a counter that went down was reset by a restart, so
its later value is the increase (docs/rolling-updates.md, docs/vllm.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TTFT = "vllm:time_to_first_token_seconds"
REQUESTS = "http_requests_total"
QUANTILE = 0.9
FAILED_STATUS = "5xx"
INFERENCE_HANDLER = "/v1/"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Scrape:
    """One replica's figures at one moment: cumulative counts only."""

    ttft_buckets: Mapping[float, float]
    """Upper bound (`le`, `inf` for `+Inf`) -> observations at or below it."""
    requests: float
    failed: float


def _value(text: str) -> float:
    return float(text.replace("+Inf", "inf").replace("-Inf", "-inf"))


def parse(text: str) -> Scrape:
    """The figures the canary needs out of Prometheus' text format (others are ignored).

    Series that differ only in labels the comparison does not split on
    (`model_name`, `engine`, `method`) are added together.
    """
    buckets: dict[float, float] = {}
    requests = failed = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        if name not in (f"{TTFT}_bucket", REQUESTS):
            continue
        labels = dict(_LABEL.findall(raw_labels or ""))
        try:
            value = _value(raw_value)
        except ValueError:
            continue
        if name == REQUESTS:
            if not labels.get("handler", "").startswith(INFERENCE_HANDLER):
                continue
            requests += value
            if labels.get("status") == FAILED_STATUS:
                failed += value
        elif "le" in labels:
            bound = _value(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return Scrape(ttft_buckets=buckets, requests=requests, failed=failed)


def _increase(before: float, after: float) -> float:
    return after - before if after >= before else after


@dataclass(frozen=True)
class Window:
    """What one side (the canary's replicas, or the old ones) did between two scrapes."""

    ttft_buckets: Mapping[float, float]
    requests: float
    failed: float

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.requests if self.requests > 0 else None

    @property
    def ttft_p90(self) -> float | None:
        return histogram_quantile(QUANTILE, self.ttft_buckets)


def window(before: Iterable[Scrape], after: Iterable[Scrape]) -> Window:
    """The increase over the window, summed over the replicas of one side
    (pairs of scrapes of the same replica, in the same order)."""
    buckets: dict[float, float] = {}
    requests = failed = 0.0
    for old, new in zip(before, after, strict=True):
        for bound, count in new.ttft_buckets.items():
            grown = _increase(old.ttft_buckets.get(bound, 0.0), count)
            buckets[bound] = buckets.get(bound, 0.0) + grown
        requests += _increase(old.requests, new.requests)
        failed += _increase(old.failed, new.failed)
    return Window(ttft_buckets=buckets, requests=requests, failed=failed)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative bucket counts (None: no observation).

    The rank `q * total` is found in the first bucket whose cumulative count
    reaches it, and placed linearly between that bucket's lower and upper bound
    (the lowest bucket starts at 0 when its bound is positive). A rank in the
    `+Inf` bucket gives the highest finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if bound <= 0 and previous_count == 0:
                return bound
            inside = count - previous_count
            if inside <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / inside
        previous_bound, previous_count = bound, count
    return previous_bound


@dataclass(frozen=True)
class Thresholds:
    """`rollout.canary*`: how much worse the canary may be, and how much traffic judges it."""

    max_ttft_ratio: float
    max_error_rate_increase: float
    min_requests: int


@dataclass(frozen=True)
class Verdict:
    """The comparison, and the lines that say it."""

    enough_traffic: bool
    worse: tuple[str, ...]
    """The settings the canary broke (`canaryMaxTtftRatio`, `canaryMaxErrorRateIncrease`)."""
    lines: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.enough_traffic and not self.worse


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f} s"


def _rate(side: Window) -> str:
    rate = side.error_rate
    shown = "none" if rate is None else f"{100 * rate:.1f}%"
    return f"{shown} ({side.failed:.0f} of {side.requests:.0f})"


def compare(canary: Window, baseline: Window, limits: Thresholds) -> Verdict:
    """Canary against baseline over the same window, each figure beside its threshold."""
    counts = f"{canary.requests:.0f} request(s) on the canary, {baseline.requests:.0f} on the old"
    if min(canary.requests, baseline.requests) < limits.min_requests:
        return Verdict(
            enough_traffic=False,
            worse=(),
            lines=(f"{counts} replicas; rollout.canaryMinRequests is {limits.min_requests}",),
        )
    worse: list[str] = []
    ttft_c, ttft_b = canary.ttft_p90, baseline.ttft_p90
    if ttft_c is not None and ttft_b is not None and ttft_b > 0:
        ratio = ttft_c / ttft_b
        over = ratio > limits.max_ttft_ratio
        ratio_text = f"{ratio:.2f}x"
    else:
        # No first token in the window on one side (every request failed, say):
        # the error rate tells; a ratio cannot be formed.
        over, ratio_text = False, "no ratio"
    if over:
        worse.append("canaryMaxTtftRatio")
    rate_c, rate_b = canary.error_rate or 0.0, baseline.error_rate or 0.0
    increase = rate_c - rate_b
    if increase > limits.max_error_rate_increase:
        worse.append("canaryMaxErrorRateIncrease")
    lines = (
        f"TTFT p90: {_seconds(ttft_c)} on the canary, {_seconds(ttft_b)} on the old replicas: "
        f"{ratio_text} (rollout.canaryMaxTtftRatio {limits.max_ttft_ratio:g})"
        + (" WORSE" if over else ""),
        f"error rate: {_rate(canary)} on the canary, {_rate(baseline)} on the old replicas: "
        f"{100 * increase:+.1f} points "
        f"(rollout.canaryMaxErrorRateIncrease {limits.max_error_rate_increase:g}, "
        f"{100 * limits.max_error_rate_increase:+.1f} points)"
        + (" WORSE" if "canaryMaxErrorRateIncrease" in worse else ""),
    )
    return Verdict(enough_traffic=True, worse=tuple(worse), lines=lines)


def progress_line(elapsed: float, total: float, canary: Window, baseline: Window) -> str:
    """What the step prints every few seconds while it watches."""

    def side(name: str, w: Window) -> str:
        return f"{name} {w.requests:.0f} request(s), TTFT p90 {_seconds(w.ttft_p90)}"

    return (
        f"canary: {elapsed:.0f} s of {total:.0f}: {side('canary', canary)}; {side('old', baseline)}"
    )
