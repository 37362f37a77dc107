"""The readiness check: wait until replicas are healthy, or fail showing why.

nginx is created only once every replica's `/health` answers 200 at its published
address (Docker's health status where that is unreachable), asked at once. An exit
or a timeout names the replica with its log tail; a replica an earlier `up` left
stopped is started once more (docs/design.md, docs/failed-up.md).
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container

from components.plan.specs import ReadinessSpec
from components.steps.engine import reachable_engine
from components.steps.runner import spec_of

LOG_LINES = 40


class NotReady(RuntimeError):
    """A replica did not become healthy; the message is meant for the user."""


SECRET_ENV = ("HF_TOKEN", "VLLM_API_KEY")
"""Secrets the replicas get; the deployment hands them to the gate only to redact them."""


def redact(text: str, environ: Mapping[str, str]) -> str:
    """A replica may log its token (a failing download, an echoed argument); we never repeat it."""
    for name in SECRET_ENV:
        value = environ.get(name)
        if value:
            text = text.replace(value, f"[{name} redacted]")
    return text


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""The replicas' published ports are asked directly: an `http_proxy` of the
deploying machine must not stand between it and them (here and in the canary)."""


def serves(url: str, timeout: float = 1.0) -> bool | None:
    """Whether `url` (a replica's `/health`) answers 200 now; None if nothing
    answered within `timeout` (an address this machine cannot reach)."""
    try:
        with DIRECT.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except urllib.error.URLError as err:
        return None if isinstance(err.reason, TimeoutError) else False
    except TimeoutError:
        return None
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _log_tail(container: Container, lines: int) -> str:
    raw = container.logs(tail=lines)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return redact(text.rstrip(), os.environ) or "(no log output)"


def _state(container: Container) -> tuple[str, str, int]:
    """(container status, health status, restarts) as Docker reported them just now."""
    state = container.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status", "none")
    restarts = int(container.attrs.get("RestartCount", 0) or 0)
    return str(state.get("Status", "unknown")), str(health), restarts


NEXT = "fix that cause and run `pulumi up` again"


def _start_again(container: Container, status: str, restarts: int) -> str | None:
    """Start a replica found stopped; the daemon's refusal, or None once started.

    `restart` (not `start`) for one in a restart loop: a manual start resets
    its restart count, so a crash before this step is not counted again."""
    try:
        if status == "restarting":
            container.restart(timeout=0)
        else:
            container.start()
    except APIError as err:
        explanation = err.explanation or str(err)
        return f"Error response from daemon: {explanation}"
    container.reload()
    return None


def _describe(states: Mapping[str, str]) -> str:
    """`loading: a, b; healthy: c` in a stable order."""
    groups: dict[str, list[str]] = {}
    for name, state in states.items():
        groups.setdefault(state, []).append(name)
    order = ("loading", "healthy", "restarting")
    return "; ".join(
        f"{state}: {', '.join(groups[state])}"
        for state in sorted(groups, key=lambda s: order.index(s) if s in order else len(order))
    )


def wait_healthy(
    client: docker.DockerClient,
    names: Sequence[str],
    timeout: float,
    *,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    log_lines: int = LOG_LINES,
    progress: Callable[[str], None] | None = None,
    interval: float = 15.0,
    probes: Mapping[str, str] | None = None,
    inspect_every: float = 0.5,
) -> dict[str, float]:
    """Block until every named container is healthy; return seconds each took.

    `probes` maps a container to its `/health` URL as seen from here; a 200
    there counts as healthy without waiting for Docker's next probe.
    """
    probes = dict(probes or {})
    start = clock()
    pending = list(names)
    ready: dict[str, float] = {}
    states = dict.fromkeys(names, "loading")
    reported = start
    if progress is not None:
        progress(f"waiting for {len(names)} replica(s): {_describe(states)}")
    inspected: dict[str, float] = {}
    seen: set[str] = set()
    while pending:
        for name in list(pending):
            answer = serves(probes[name]) if name in probes else False
            if answer is None:
                # Unreachable from here: asking again would slow every round.
                del probes[name]
            # Its /health is asked every round; Docker only as often as needed to
            # see a crash or its own verdict in good time, and once more when
            # /health answers, to be sure it is this container that runs.
            if not answer and clock() - inspected.get(name, float("-inf")) < inspect_every:
                continue
            inspected[name] = clock()
            try:
                container = client.containers.get(name)
            except NotFound:
                raise NotReady(f"replica {name}: container does not exist") from None
            status, health, restarts = _state(container)
            if name not in seen:
                seen.add(name)
                if status in ("created", "exited", "restarting", "dead") or (
                    status != "running" and restarts
                ):
                    refused = _start_again(container, status, restarts)
                    if refused is not None:
                        raise NotReady(
                            f"replica {name} exists but is not running ({status}) and "
                            f"could not be started: {refused}; {NEXT}"
                        )
                    if progress is not None:
                        progress(f"{name} was {status} (left by an earlier `up`); started again")
                    status, health, restarts = _state(container)
            if (answer and status == "running") or health == "healthy":
                ready[name] = clock() - start
                pending.remove(name)
                states[name] = "healthy"
                if progress is not None:
                    progress(f"{name} healthy after {ready[name]:.1f} s; {_describe(states)}")
                continue
            states[name] = "restarting" if status == "restarting" or restarts else "loading"
            # A restart policy turns a crash into a loop; the first crash is the answer.
            # Docker also marks a container that died "unhealthy": say it exited.
            problem = None
            if status in ("exited", "dead", "restarting") or restarts:
                problem = f"{status} (exited {restarts + (status != 'running')} time(s))"
            elif health == "unhealthy":
                problem = "unhealthy"
            elif status == "created":
                problem = "created but never started"
            if problem is not None:
                raise NotReady(
                    f"replica {name} is {problem} before becoming ready; "
                    f"last {log_lines} log lines (the cause is there; {NEXT}):\n"
                    + _log_tail(container, log_lines)
                )
        if not pending:
            break
        if progress is not None and clock() - reported >= interval:
            reported = clock()
            progress(f"after {reported - start:.0f} s: {_describe(states)}")
        if clock() - start > timeout:
            name = pending[0]
            tail = _log_tail(client.containers.get(name), log_lines)
            raise NotReady(
                f"replica {name} not ready after {timeout:.0f} s "
                f"(readyTimeoutSeconds); last {log_lines} log lines:\n{tail}"
            )
        time.sleep(poll)
    return ready


def main() -> int:
    spec = spec_of(ReadinessSpec)
    if spec is None:
        return 2
    client = reachable_engine()
    if client is None:
        return 1
    try:
        ready = wait_healthy(
            client,
            spec.replicas,
            spec.timeout_seconds,
            poll=0.1,
            progress=lambda line: print(f"[ready] {line}", flush=True),
            interval=spec.progress_seconds,
            probes=spec.probes,
        )
    except NotReady as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, seconds in ready.items():
        print(f"{name} ready after {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
