"""Watch the first wave of an update under live traffic; stop the update if it is worse.

`/health` says nothing of how a replica serves, so before the second wave drains,
this reads every replica's `/metrics` at the start and end of `rollout.canarySeconds`
and compares the canary with the old replicas (`canary_compare`). A worse canary is
taken out of nginx (every balancer, with a standby), the old replicas keep serving,
and `pulumi up` fails with the figures; a revert and `up` watch again
(docs/rolling-updates.md, "Canary").
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import docker

from components.plan.specs import CanarySpec, KubeCanarySpec
from components.plan.specs import WatchedReplica as Replica
from components.steps.canary_compare import (
    Scrape,
    Thresholds,
    Verdict,
    Window,
    compare,
    parse,
    progress_line,
    window,
)
from components.steps.engine import engine_client, other_engine_client
from components.steps.nginx_edit import edit_upstream, running_balancers
from components.steps.readiness import DIRECT
from components.steps.runner import Refused, run_step

PROCEED = "proceed"
WAIT = "wait"
WHAT_TO_DO = (
    "What to do: revert the change (or raise rollout.canaryMaxTtftRatio if this is expected), "
    "then `pulumi up` again."
)


CONTAINERS_ENV = "VLLM_NGINX_CANARY_CONTAINERS"
"""The first wave's container ids, comma-separated (set by the deployment)."""
PREVIOUS_OUTPUT_ENV = "PULUMI_COMMAND_STDOUT"
"""pulumi-command's previous stdout, given to a command run on an update
(`addPreviousOutputInEnv`, on by default)."""
DONE = "canary: done for containers "


class CanaryFailed(Refused):
    """The canary was judged (worse, or never enough traffic); the message is for the user."""


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    with DIRECT.open(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8", "replace"))


Scraper = Callable[[str], Scrape]


def _round(replicas: Sequence[Replica], fetch: Scraper) -> list[Scrape]:
    found = []
    for replica in replicas:
        try:
            found.append(fetch(replica.metrics_url))
        except (OSError, urllib.error.URLError, ValueError) as err:
            where = f"{replica.name}: its metrics at {replica.metrics_url}"
            raise CanaryFailed(f"{where}: {err}") from None
    return found


def _windows(
    canary: Sequence[Replica],
    baseline: Sequence[Replica],
    start: Sequence[Scrape],
    fetch: Scraper,
) -> tuple[Window, Window]:
    now = _round([*canary, *baseline], fetch)
    n = len(canary)
    return window(start[:n], now[:n]), window(start[n:], now[n:])


@dataclass(frozen=True)
class Watch:
    """How long to watch, and what makes a verdict (`rollout.canary*`)."""

    seconds: float
    limits: Thresholds
    without_traffic: str = PROCEED
    max_wait: float = 600.0
    progress: float = 5.0


def watch(
    canary: Sequence[Replica],
    baseline: Sequence[Replica],
    how: Watch,
    *,
    fetch: Scraper = scrape,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Verdict:
    """Watch both sides from now for `how.seconds` (longer, up to `how.max_wait`,
    when waiting for traffic); the verdict of the whole window."""
    start = _round([*canary, *baseline], fetch)
    began = clock()
    total = how.seconds
    # At least one line on the way, however short the window.
    every = min(how.progress, max(how.seconds / 2, 0.5))
    while True:
        elapsed = clock() - began
        if elapsed >= total:
            verdict = compare(*_windows(canary, baseline, start, fetch), how.limits)
            if verdict.enough_traffic or how.without_traffic != WAIT or total >= how.max_wait:
                return verdict
            # Not enough traffic yet: watch on, the window growing, until the bound.
            say(f"canary: {verdict.lines[0]}; watching on (up to {how.max_wait:.0f} s)")
            total = min(total + how.seconds, how.max_wait)
            continue
        sleep(min(every, total - elapsed))
        elapsed = clock() - began
        if elapsed < total:
            say(progress_line(elapsed, total, *_windows(canary, baseline, start, fetch)))


def run(
    client: docker.DockerClient,
    lb_name: str,
    canary: Sequence[Replica],
    baseline: Sequence[Replica],
    how: Watch,
    *,
    fetch: Scraper = scrape,
    containers: str = "",
    previous_output: str = "",
    others: Sequence[tuple[docker.DockerClient, str]] = (),
) -> str:
    """The step: what to print on success; `CanaryFailed` when the update must stop.

    `containers` are the first wave's ids, `previous_output` what it printed when it
    last passed. A replaced first-wave replica replaces the step (no previous output);
    a changed `rollout.canary*` alone finds the same containers done and does not
    watch again: nothing was updated. `others`: more balancers to edit (a standby).
    """
    done = f"{DONE}{containers}"
    names = ", ".join(r.name for r in canary)
    if containers and done in previous_output.splitlines():
        return (
            f"canary: {names} unchanged since the canary passed them: not watched again "
            f"(only the step's settings changed)\n{done}"
        )
    message = _judge([(client, lb_name), *others], canary, baseline, how, fetch)
    return f"{message}\n{done}" if containers else message


class Rotation(Protocol):
    """How the canary's replicas get traffic: nginx's upstreams on Docker, each replica's
    Service on Kubernetes (`kube_canary`)."""

    @property
    def where(self) -> str:
        """Said after 'taken out of rotation' (' in 2 balancers'), or ''."""
        ...

    def put_back(self, replica: Replica) -> bool:
        """In rotation again; True if it was out."""
        ...

    def take_out(self, replica: Replica) -> None: ...


@dataclass(frozen=True)
class Balancers:
    """nginx (and a standby's) running: a replica is in or out by its upstream's line."""

    running: Sequence[Any]

    @property
    def where(self) -> str:
        return f" in {len(self.running)} balancers" if len(self.running) > 1 else ""

    def put_back(self, replica: Replica) -> bool:
        return any([edit_upstream(lb, replica.upstream, down=False) for lb in self.running])

    def take_out(self, replica: Replica) -> None:
        for lb in self.running:
            edit_upstream(lb, replica.upstream, down=True)


def _judge(
    balancers: Sequence[tuple[docker.DockerClient, str]],
    canary: Sequence[Replica],
    baseline: Sequence[Replica],
    how: Watch,
    fetch: Scraper,
) -> str:
    names = ", ".join(r.name for r in canary)
    lbs = running_balancers(balancers)
    if not lbs:
        return f"canary: no load balancer yet (first deploy): {names} not watched"
    return judge(Balancers(lbs), canary, baseline, how, fetch)


def judge(
    rotation: Rotation,
    canary: Sequence[Replica],
    baseline: Sequence[Replica],
    how: Watch,
    fetch: Scraper,
) -> str:
    """Put the canary in rotation, watch it against the baseline, and take it out again
    (raising `CanaryFailed`) when it is worse: what both engines' steps do."""
    seconds, without_traffic, max_wait = how.seconds, how.without_traffic, how.max_wait
    names = ", ".join(r.name for r in canary)
    old = ", ".join(r.name for r in baseline)
    if not baseline:
        return f"canary: no replica left on the old version to compare {names} with: not watched"
    for replica in canary:
        # A canary that failed before was taken out; watching it needs its traffic.
        if rotation.put_back(replica):
            print(f"canary: {replica.name} back in rotation to be watched again", flush=True)
    print(
        f"canary: watching {names} (the first wave, updated) against {old} (not yet "
        f"replaced) for {seconds:.0f} s under live traffic",
        flush=True,
    )
    verdict = watch(canary, baseline, how, fetch=fetch)
    figures = "\n".join(f"  {line}" for line in verdict.lines)
    if not verdict.enough_traffic:
        if without_traffic == WAIT:
            raise CanaryFailed(
                f"canary: not enough traffic to judge {names} within {max_wait:.0f} s:\n"
                f"{figures}\n{names} {'stays' if len(canary) == 1 else 'stay'} in rotation; "
                f"{old} not replaced. What to do: "
                "`pulumi up` again under traffic, or set rollout.canaryWithoutTraffic: proceed."
            )
        return (
            f"canary: not enough traffic to judge {names}:\n{figures}\n"
            "proceeding without a verdict (rollout.canaryWithoutTraffic: proceed)"
        )
    if verdict.passed:
        return f"canary: {names} no worse than {old}, the update goes on:\n{figures}"
    for replica in canary:
        rotation.take_out(replica)
    raise CanaryFailed(
        f"canary failed: {names} (the first wave, updated) is worse than {old} (not yet "
        f"replaced) over {seconds:.0f} s of live traffic:\n{figures}\n"
        f"{names} taken out of rotation{rotation.where}; {old} "
        f"{'keeps' if len(baseline) == 1 else 'keep'} "
        f"serving, not replaced.\n{WHAT_TO_DO}"
    )


def how_of(spec: CanarySpec | KubeCanarySpec) -> Watch:
    """The spec's `rollout.canary*` settings as a `Watch`."""
    return Watch(
        seconds=spec.seconds,
        limits=Thresholds(
            max_ttft_ratio=spec.max_ttft_ratio,
            max_error_rate_increase=spec.max_error_rate_increase,
            min_requests=spec.min_requests,
        ),
        without_traffic=spec.without_traffic,
        max_wait=spec.max_wait_seconds,
        progress=spec.progress_seconds,
    )


def watched(spec: CanarySpec) -> str:
    """The step as `pulumi up` runs it: the spec's replicas, the ids it is given."""
    how = how_of(spec)
    return run(
        engine_client(),
        spec.lb,
        spec.canary,
        spec.baseline,
        how,
        containers=os.environ.get(CONTAINERS_ENV, ""),
        previous_output=os.environ.get(PREVIOUS_OUTPUT_ENV, ""),
        others=[(other_engine_client(b), b.name) for b in spec.other_balancers],
    )


def main() -> int:
    return run_step(CanarySpec, watched)


if __name__ == "__main__":
    sys.exit(main())
