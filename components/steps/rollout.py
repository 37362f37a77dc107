"""Take one replica out of the load balancer before it stops, and back in once it serves.

The drain edits the replica's `server` lines out of nginx.conf, reloads, and waits
until the old workers let go; then the replica's own requests end inside vLLM
(`--shutdown-timeout`) or, without it, this waits for `vllm:num_requests_running`
to reach 0. `resume` puts the new replica back once healthy (at once on a first
deploy). With a standby, both in every balancer. One `local.Command` per replica,
triggered by its container id (docs/rolling-updates.md).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

import docker
from docker.errors import APIError
from docker.models.containers import Container

from components.plan.specs import RolloutSpec
from components.steps.engine import engine_client, other_engine_client
from components.steps.nginx_edit import edit_upstream, exec_text, get_running, running_balancers
from components.steps.readiness import NotReady, wait_healthy
from components.steps.runner import StepError, finish, run_step

RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)
METRICS_PROBE = (
    "python3",
    "-c",
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=4).read().decode())",
)
ACTIONS = ("drain", "resume")


def requests_running(replica: Container, port: int) -> float | None:
    """What the replica's own metrics say is running; None if it cannot tell."""
    argv = [*METRICS_PROBE[:2], METRICS_PROBE[2].replace("{port}", str(port))]
    try:
        code, output = exec_text(replica, argv)
    except APIError:
        return None
    if code != 0:
        return None
    values = [float(v) for v in RUNNING.findall(output)]
    return sum(values) if values else None


Balancer = tuple[docker.DockerClient, str]
"""An nginx by its engine's client and its container's name."""


def _in(balancers: Sequence[Container]) -> str:
    """Where the edit was made, when more than one nginx runs (a standby)."""
    return f" in {len(balancers)} balancers" if len(balancers) > 1 else ""


def drain(
    client: docker.DockerClient,
    lb_name: str,
    replica_name: str,
    port: int,
    grace: float,
    *,
    upstream: str | None = None,
    replica_client: docker.DockerClient | None = None,
    vllm_drains: bool = False,
    poll: float = 0.5,
    progress: float = 10.0,
    others: Sequence[Balancer] = (),
) -> str:
    """Out of `lb_name` on `client`'s engine and of each of `others` (a standby)."""
    lbs = running_balancers([(client, lb_name), *others])
    if not lbs:
        # No balancer (first deploy, destroy) routes to it.
        return f"{replica_name}: nothing to drain"
    target = upstream or f"{replica_name}:{port}"
    if vllm_drains:
        # Its engine may be another; it need not be asked: vLLM finishes its
        # requests itself once Pulumi stops it.
        start = time.monotonic()
        for lb in lbs:
            edit_upstream(lb, target, down=True)
        return (
            f"{replica_name}: out of rotation after {time.monotonic() - start:.1f} s{_in(lbs)}; "
            "vLLM finishes its requests in flight when it is stopped (--shutdown-timeout)"
        )
    replica = get_running(replica_client or client, replica_name)
    if replica is None:
        return f"{replica_name}: nothing to drain"
    for lb in lbs:
        edit_upstream(lb, target, down=True)
    start = time.monotonic()
    last_report = start
    while True:
        running = requests_running(replica, port)
        if running is None or running <= 0:
            waited = time.monotonic() - start
            return f"{replica_name}: out of rotation{_in(lbs)}, drained after {waited:.1f} s"
        now = time.monotonic()
        if now - start >= grace:
            return (
                f"{replica_name}: out of rotation; {running:.0f} request(s) still running "
                f"after stopGraceSeconds ({grace:.0f} s), stopping anyway"
            )
        if now - last_report >= progress:
            print(f"{replica_name}: waiting for {running:.0f} request(s) to finish", flush=True)
            last_report = now
        time.sleep(poll)


def resume(
    client: docker.DockerClient,
    lb_name: str,
    replica_name: str,
    port: int,
    timeout: float,
    *,
    upstream: str | None = None,
    replica_client: docker.DockerClient | None = None,
    probe: str | None = None,
    progress: float = 15.0,
    others: Sequence[Balancer] = (),
) -> str:
    """Back into `lb_name` on `client`'s engine and each of `others` once it serves."""
    lbs = running_balancers([(client, lb_name), *others])
    engine = replica_client or client
    if not lbs:
        return f"{replica_name}: no load balancer yet (first deploy); the readiness check waits"
    # Ready as the readiness check sees it: its /health answering at `probe`,
    # not Docker's next probe, which would hold every wave up to its interval.
    try:
        took = wait_healthy(
            engine,
            [replica_name],
            timeout,
            poll=0.1,
            probes={replica_name: probe} if probe else None,
            progress=lambda line: print(f"[rollout] {line}", flush=True),
            interval=progress,
        )[replica_name]
    except NotReady as err:
        raise StepError(str(err)) from None
    for lb in lbs:
        edit_upstream(lb, upstream or f"{replica_name}:{port}", down=False)
    return f"{replica_name}: healthy, back in rotation after {took:.1f} s{_in(lbs)}"


def act(action: str, spec: RolloutSpec) -> str:
    """Drain or resume the spec's replica; the message to print."""
    client = engine_client()
    # A drain that vLLM finishes asks nothing of the replica's engine.
    needs_other = spec.replica_engine and not (action == "drain" and spec.vllm_drains)
    other = docker.DockerClient(base_url=spec.replica_engine, timeout=30) if needs_other else None
    upstream = spec.upstream
    others = [(other_engine_client(b), b.name) for b in spec.other_balancers]
    if action == "drain":
        return drain(
            client,
            spec.lb,
            spec.replica,
            spec.port,
            spec.drain_seconds,
            upstream=upstream,
            replica_client=other,
            vllm_drains=spec.vllm_drains,
            others=others,
        )
    return resume(
        client,
        spec.lb,
        spec.replica,
        spec.port,
        spec.resume_seconds,
        upstream=upstream,
        replica_client=other,
        probe=spec.probe or None,
        others=others,
    )


def legacy_spec(argv: Sequence[str]) -> tuple[str, RolloutSpec]:
    """The command line of a rotation declared before specs: a replace after the
    upgrade runs the drain kept in state (docs/architecture.md). For one release."""
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=ACTIONS)
    for flag in ("--lb", "--replica", "--timeout"):
        parser.add_argument(flag, required=True)
    for flag in ("--upstream", "--replica-engine", "--probe"):
        parser.add_argument(flag, default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vllm-drains", action="store_true")
    args = parser.parse_args(argv)
    seconds = int(float(args.timeout))
    return args.action, RolloutSpec(
        lb=args.lb,
        replica=args.replica,
        port=args.port,
        upstream=args.upstream or f"{args.replica}:{args.port}",
        drain_seconds=seconds,
        resume_seconds=seconds,
        probe=args.probe or "",
        vllm_drains=args.vllm_drains,
        replica_engine=args.replica_engine,
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) > 1:
        action, spec = legacy_spec(words)
        return finish(lambda: act(action, spec))
    if len(words) != 1 or words[0] not in ACTIONS:
        print("usage: python -m components.steps.rollout drain|resume", file=sys.stderr)
        return 2
    return run_step(RolloutSpec, lambda spec: act(words[0], spec))


if __name__ == "__main__":
    sys.exit(main())
