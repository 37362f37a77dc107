"""Prometheus text exposition of the stand-in's metrics, named as vLLM names them.

vLLM (v1 engine, `vllm/v1/metrics/loggers.py`) labels every engine metric
with `model_name` and `engine`; counters are exposed with the `_total` suffix
by prometheus_client. This module has no dependency (the stand-in image has
only Debian's python3, starlette and uvicorn), so it writes the text format
itself. To add one of vLLM's metrics, declare it in `VllmMetrics` with vLLM's
name, type, help and buckets, and update it where the stand-in does the work::

    self.time_to_first_token = Histogram(
        "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
        buckets=(0.001, 0.005, ...), base=base)
    ...
    metrics.time_to_first_token.observe(seconds)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else f"{float(value):.1f}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, base: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.help = help_text
        self.base = dict(base or {})

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def _key(self, extra: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return tuple({**self.base, **(extra or {})}.items())

    def lines(self) -> list[str]:
        raise NotImplementedError


class Gauge(_Metric):
    kind = "gauge"
    sample_suffix = ""

    def __init__(self, name: str, help_text: str, base: Mapping[str, str] | None = None) -> None:
        super().__init__(name, help_text, base)
        self.values: dict[tuple[tuple[str, str], ...], float] = {self._key(None): 0.0}

    def set(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.values[self._key(labels)] = value

    def inc(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        self.inc(-amount, labels)

    def get(self, labels: Mapping[str, str] | None = None) -> float:
        return self.values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        return self._header() + [
            f"{self.name}{self.sample_suffix}{_labels(dict(k))} {_number(v)}"
            for k, v in self.values.items()
        ]


class Counter(Gauge):
    """Monotonic; exposed as `<name>_total`, as prometheus_client does."""

    kind = "counter"
    sample_suffix = "_total"

    def __init__(
        self,
        name: str,
        help_text: str,
        base: Mapping[str, str] | None = None,
        label_sets: Iterable[Mapping[str, str]] = (),
    ) -> None:
        super().__init__(name, help_text, base)
        sets = list(label_sets)
        if sets:
            self.values = {self._key(labels): 0.0 for labels in sets}

    def inc(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        super().inc(amount, labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        base: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, help_text, base)
        self.buckets = (*sorted(buckets), math.inf)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
                break

    def lines(self) -> list[str]:
        out = self._header()
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            labels = _labels({**self.base, "le": _number(bound)})
            out.append(f"{self.name}_bucket{labels} {_number(running)}")
        out.append(f"{self.name}_count{_labels(self.base)} {_number(running)}")
        out.append(f"{self.name}_sum{_labels(self.base)} {_number(self.sum)}")
        return out


FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
"""vLLM v0.33.0's `finished_reason` values, each exposed from the start
(`vllm/v1/engine/__init__.py:37`, `vllm/v1/metrics/loggers.py:807-819`); v0.11.0
had the first three."""


class VllmMetrics:
    """The metrics the stand-in simulates, with vLLM v1's names, types and labels."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        base = {"model_name": model_name, "engine": engine}
        self.num_requests_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", base
        )
        self.num_requests_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", base
        )
        self.prefix_cache_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            base,
        )
        self.prefix_cache_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            base,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", base
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", base
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            base,
            label_sets=[{"finished_reason": reason} for reason in FINISH_REASONS],
        )
        self.started = time.time()

    def all(self) -> list[_Metric]:
        return [value for value in vars(self).values() if isinstance(value, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.lines())
        lines += [
            "# HELP process_start_time_seconds Start time of the process since unix epoch.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {_number(self.started)}",
        ]
        return "\n".join(lines) + "\n"
