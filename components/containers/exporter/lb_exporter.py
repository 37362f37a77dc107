"""The load balancer's Prometheus metrics, made from nginx's per-request log lines.

nginx open source counts no statuses, retries or upstream timings, so nginx sends one
JSON line per request over syslog (UDP) here, and this keeps the counters and serves
`/metrics` (docs/monitoring.md). Uploaded as is and run with `python3`: standard
library only. `$upstream_addr` holds addresses, so replica names are resolved and
metrics labelled by name (`NAME=ADDRESS:PORT` for a replica on another host).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

# The log_format nginx sends (`escape=json`: values are JSON-safe). Only what the
# metrics need: never the request line, the client address or any header.
LOG_FIELDS = (
    ("status", "$status"),
    ("request_time", "$request_time"),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("upstream_header_time", "$upstream_header_time"),
    ("upstream_response_time", "$upstream_response_time"),
)
LOG_FORMAT = "{" + ",".join(f'"{key}":"{var}"' for key, var in LOG_FIELDS) + "}"
# With model routing nginx also sends the pool that took the request (set by
# its router; empty when it answered 404 itself), which every per-request
# series then carries as the label `pool`.
POOL_LOG_FIELDS = (*LOG_FIELDS, ("pool", "$lb_pool"))
# With named API keys nginx also sends the key's name (never the key), the
# model asked for (with model routing), the usage the replica reported and
# which limit refused a 429: the per-key series (docs/api-keys.md).
KEY_LOG_FIELDS = (
    ("key", "$lb_key_name"),
    ("model", "$lb_model"),
    ("prompt_tokens", "$lb_prompt_tokens"),
    ("completion_tokens", "$lb_completion_tokens"),
    ("limit_req", "$limit_req_status"),
)


def log_format(pools: bool, keys: bool) -> str:
    """The JSON line nginx sends for the metrics: the base fields, the pool with
    model routing, the key's fields with named keys."""
    fields = (*(POOL_LOG_FIELDS if pools else LOG_FIELDS), *(KEY_LOG_FIELDS if keys else ()))
    return "{" + ",".join(f'"{key}":"{var}"' for key, var in fields) + "}"


SYSLOG_TAG = "vllm_lb"
SYSLOG_PORT = 5514
METRICS_PORT = 9113

# Seconds. Time to first byte through the LB is time to first token for streams,
# so the low end follows vLLM's TTFT buckets; whole requests run for minutes.
HEADER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RESPONSE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    # An empty value is left out, as Prometheus reads it anyway: without model
    # routing the series are exactly those without the `pool` label.
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True) if v]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        key = tuple(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}_total{_labels(self.labelnames, key)} {_number(value)}")
        return lines


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.buckets = (*buckets, math.inf)
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Sequence[str] = ()) -> None:
        counts, total = self.series.setdefault(tuple(labels), ([0] * len(self.buckets), [0.0]))
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
        total[0] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, total) in sorted(self.series.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return lines


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _split(value: str) -> list[str]:
    """nginx lists one value per attempt (", ") and per internal redirect (" : ")."""
    if not value or value == "-":
        return []
    return [part.strip() for group in value.split(" : ") for part in group.split(",")]


class ReplicaNames:
    """Maps `address:port` from `$upstream_addr` back to the replica's name."""

    def __init__(
        self,
        replicas: Iterable[str],
        resolve: Callable[[str, int], list[str]] | None = None,
        refresh_seconds: float = 10.0,
    ) -> None:
        # `NAME=HOST:PORT` (a replica on another host, reached by address), or
        # `HOST:PORT` where the host is the replica's name on this network.
        self.replicas = [_replica(r) for r in replicas]
        self.resolve = resolve or _resolve
        self.refresh_seconds = refresh_seconds
        self.by_address: dict[str, str] = {}
        self.refreshed = -math.inf

    def refresh(self) -> None:
        found: dict[str, str] = {}
        for name, host, port in self.replicas:
            for address in self.resolve(host, port):
                found[f"{address}:{port}"] = name
        self.by_address = found
        self.refreshed = time.monotonic()

    def name(self, address: str) -> str:
        if address not in self.by_address and (
            time.monotonic() - self.refreshed >= self.refresh_seconds
        ):
            self.refresh()
        # An address that is no replica's stays visible as itself.
        return self.by_address.get(address, address)


def _replica(spec: str) -> tuple[str, str, int]:
    """(name, host, port) from `NAME=HOST:PORT` or `HOST:PORT`."""
    name, _, where = spec.rpartition("=")
    host, _, port = where.rpartition(":")
    return name or host, host, int(port)


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


class LbMetrics:
    """Every metric of the load balancer, fed one nginx log record at a time."""

    def __init__(self, names: ReplicaNames) -> None:
        self.names = names
        self.lock = threading.Lock()
        self.requests = Counter(
            "vllm_lb_requests",
            "Requests answered by the load balancer, by status (and model pool).",
            ["status", "pool"],
        )
        self.attempts = Counter(
            "vllm_lb_upstream_attempts",
            "Attempts sent to a replica (a retried request counts once per replica tried).",
            ["replica", "status", "pool"],
        )
        self.retries = Counter(
            "vllm_lb_retries", "Attempts beyond the first: requests resent to another replica."
        )
        self.lines = Counter("vllm_lb_log_lines", "Log lines received from nginx.")
        self.unparsed = Counter("vllm_lb_unparsed_lines", "Log lines that were not understood.")
        self.duration = Histogram(
            "vllm_lb_request_duration_seconds",
            "Whole request as nginx saw it ($request_time), by status (and model pool).",
            RESPONSE_BUCKETS,
            ["status", "pool"],
        )
        self.header = Histogram(
            "vllm_lb_upstream_header_seconds",
            "Time to the replica's first response byte ($upstream_header_time); for streams "
            "about the time to first token.",
            HEADER_BUCKETS,
            ["replica", "pool"],
        )
        self.response = Histogram(
            "vllm_lb_upstream_response_seconds",
            "Time to the replica's last response byte ($upstream_response_time).",
            RESPONSE_BUCKETS,
            ["replica", "pool"],
        )
        # Named API keys: labelled by the key's name and the model asked for.
        self.key_requests = Counter(
            "vllm_lb_key_requests",
            "Requests of a named API key, by model and status class (2xx, 4xx, 5xx).",
            ["key", "model", "code"],
        )
        self.prompt_tokens = Counter(
            "vllm_lb_key_prompt_tokens",
            "Prompt tokens of a named key's requests, as the replica's `usage` reported them.",
            ["key", "model"],
        )
        self.completion_tokens = Counter(
            "vllm_lb_key_completion_tokens",
            "Completion tokens of a named key's requests, as the replica's `usage` reported them.",
            ["key", "model"],
        )
        self.unmetered = Counter(
            "vllm_lb_key_unmetered_requests",
            "Successful requests of a named key whose response carried no `usage` (a stream "
            "without stream_options.include_usage): counted, their tokens not.",
            ["key", "model"],
        )
        self.rate_limited = Counter(
            "vllm_lb_key_rate_limited_requests",
            "Requests of a named key refused with 429, by the limit that refused them.",
            ["key", "limit"],
        )
        self.families = (
            self.requests,
            self.attempts,
            self.retries,
            self.duration,
            self.header,
            self.response,
            self.lines,
            self.unparsed,
            self.key_requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.unmetered,
            self.rate_limited,
        )

    def record_line(self, line: str) -> None:
        """One syslog message: `<pri>time tag: {json}`; anything else counts as unparsed."""
        start = line.find("{")
        try:
            record = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            record = None
        with self.lock:
            self.lines.inc()
            if not isinstance(record, dict) or not str(record.get("status", "")).isdigit():
                self.unparsed.inc()
                return
            self._record(record)

    def _record(self, record: dict[str, object]) -> None:
        status = str(record["status"])
        pool = str(record.get("pool", ""))
        self.requests.inc([status, pool])
        took = _seconds(str(record.get("request_time", "")))
        if took is not None:
            self.duration.observe(took, [status, pool])
        addresses = _split(str(record.get("upstream_addr", "")))
        statuses = _split(str(record.get("upstream_status", "")))
        headers = _split(str(record.get("upstream_header_time", "")))
        responses = _split(str(record.get("upstream_response_time", "")))
        if len(addresses) > 1:
            self.retries.inc(amount=len(addresses) - 1)
        if record.get("key"):
            self._record_key(record, status)
        for index, address in enumerate(addresses):
            replica = self.names.name(address)
            attempt_status = statuses[index] if index < len(statuses) else "-"
            self.attempts.inc([replica, attempt_status, pool])
            header = _seconds(headers[index]) if index < len(headers) else None
            if header is not None:
                self.header.observe(header, [replica, pool])
            response = _seconds(responses[index]) if index < len(responses) else None
            if response is not None:
                self.response.observe(response, [replica, pool])

    def _record_key(self, record: dict[str, object], status: str) -> None:
        key, model = str(record["key"]), str(record.get("model", ""))
        self.key_requests.inc([key, model, status[0] + "xx"])
        if status == "429":
            rpm = str(record.get("limit_req", "")) == "REJECTED"
            limit = "requests_per_minute" if rpm else "concurrent_requests"
            self.rate_limited.inc([key, limit])
        prompt = str(record.get("prompt_tokens", ""))
        completion = str(record.get("completion_tokens", ""))
        if prompt.isdigit() and completion.isdigit():
            self.prompt_tokens.inc([key, model], int(prompt))
            self.completion_tokens.inc([key, model], int(completion))
        elif status.startswith("2"):
            self.unmetered.inc([key, model])

    def render(self) -> str:
        with self.lock:
            lines = [line for family in self.families for line in family.render()]
        return "\n".join(lines) + "\n"


class _SyslogHandler(socketserver.BaseRequestHandler):
    server: _SyslogServer

    def handle(self) -> None:
        data = self.request[0]
        self.server.metrics.record_line(data.decode("utf-8", "replace"))


class _SyslogServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: LbMetrics) -> None:
        self.metrics = metrics
        super().__init__(address, _SyslogHandler)


def _metrics_handler(metrics: LbMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per scrape would drown the container log

    return Handler


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--syslog", default=f"0.0.0.0:{SYSLOG_PORT}", type=_address)
    parser.add_argument("--http", default=f"0.0.0.0:{METRICS_PORT}", type=_address)
    parser.add_argument(
        "--replica",
        action="append",
        default=[],
        help="[NAME=]HOST:PORT of a replica, as nginx has it (NAME: its label, default HOST)",
    )
    args = parser.parse_args(argv)
    metrics = LbMetrics(ReplicaNames(args.replica))
    syslog = _SyslogServer(args.syslog, metrics)
    http = ThreadingHTTPServer(args.http, _metrics_handler(metrics))

    def stop(signum: int, frame: FrameType | None) -> None:
        # As PID 1 SIGTERM is ignored unless handled: `docker stop` would wait
        # out its whole grace period for nothing.
        threading.Thread(target=syslog.shutdown, daemon=True).start()
        threading.Thread(target=http.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=syslog.serve_forever, daemon=True).start()
    print(
        f"lb_exporter: syslog on udp {args.syslog[0]}:{args.syslog[1]}, metrics on "
        f"http://{args.http[0]}:{args.http[1]}/metrics, replicas {' '.join(args.replica)}",
        file=sys.stderr,
        flush=True,
    )
    http.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
