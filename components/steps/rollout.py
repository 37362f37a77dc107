"""Take one replica out of the load balancer before it stops, and back in once it serves.

The drain edits the replica's `server` lines out of nginx.conf, reloads, and waits
until the old workers let go; then the replica's own requests end inside vLLM
(`--shutdown-timeout`) or, without it, this waits for `vllm:num_requests_running`
to reach 0. `resume` puts the new replica back once healthy (at once on a first
deploy). One `local.Command` per replica, triggered by its container id (docs/rolling-updates.md).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from collections.abc import Sequence

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container

from components.steps.engine import engine_client
from components.steps.readiness import NotReady, wait_healthy

NGINX_CONFIG = "/etc/nginx/nginx.conf"
DRAINED = "#drained# "
WORKER = "nginx: worker process"
"""An nginx worker's title; an old one is retitled "... is shutting down" when it
stops accepting connections after a reload (nginx's `ngx_worker_process_cycle`)."""
LIST_PROCESSES = (
    "sh",
    "-c",
    'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\\0" " " < "$p/cmdline" 2>/dev/null)"; done',
)
RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)
METRICS_PROBE = (
    "python3",
    "-c",
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=4).read().decode())",
)


class RolloutError(RuntimeError):
    """The load balancer could not be changed; the message is for the user."""


def _get(client: docker.DockerClient, name: str) -> Container | None:
    try:
        container = client.containers.get(name)
    except NotFound:
        return None
    return container if container.status == "running" else None


def _exec(container: Container, argv: list[str]) -> tuple[int, str]:
    """`docker exec`, its exit code and its output as text."""
    code, output = container.exec_run(argv)
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
    return int(code or 0), text


EDIT_LOCK = "/tmp/vllm-nginx-upstream.lock"


def _sed(script: str) -> list[str]:
    """`sed -i` on the config, one at a time: the replicas of a wave are drained
    at once, and two `sed -i` at the same moment would lose one's edit (each
    writes the file it read), leaving a stopping replica in rotation. `flock`
    (util-linux, in Debian-based images such as nginx's) serializes them."""
    return [
        "sh",
        "-c",
        'if command -v flock >/dev/null 2>&1; then exec flock "$0" sed "$@"; fi; exec sed "$@"',
        EDIT_LOCK,
        "-E",
        "-i",
        "-e",
        script,
        NGINX_CONFIG,
    ]


def accepting_workers(lb: Container) -> set[int]:
    """The pids of nginx's workers that still accept connections."""
    try:
        code, output = _exec(lb, list(LIST_PROCESSES))
    except APIError:
        return set()
    if code != 0:
        return set()
    found = set()
    for line in output.splitlines():
        pid, _, title = line.partition(" ")
        if title.strip() == WORKER and pid.isdigit():
            found.add(int(pid))
    return found


def _until_old_workers_stop_accepting(
    lb: Container, old: set[int], timeout: float, poll: float = 0.05
) -> float | None:
    """After a reload: seconds until none of `old` accepts connections (None: timed out).

    `nginx -s reload` only signals the master, which starts new workers and then
    tells the old ones to quit; until they have, an old worker may still hand a
    new request to the replica being drained.
    """
    start = time.monotonic()
    while old & accepting_workers(lb):
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(poll)
    return time.monotonic() - start


def _edit_upstream(lb: Container, upstream: str, down: bool, settle: float = 10.0) -> bool:
    """Take the replica's `server` lines out of the config (or put them back); reload.

    Out means commented out rather than marked `down`: without `resolve`
    (nginx < 1.27.3) nginx resolves every `server` name when it loads the
    config, and a replica of the same wave may be gone by then.
    """
    # A DNS label or an IP address and a port: only '.', '[' and ']' need escaping.
    escaped = upstream.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")
    server = f"server {escaped}[ ;].*"
    take_out = rf"s/^([[:space:]]*)({server})$/\1{DRAINED}\2/"
    put_back = rf"s/^([[:space:]]*){DRAINED}({server})$/\1\2/"
    script, undo = (take_out, put_back) if down else (put_back, take_out)
    _, before = _exec(lb, ["cat", NGINX_CONFIG])
    code, output = _exec(lb, _sed(script))
    if code != 0:
        raise RolloutError(f"editing {NGINX_CONFIG} in {lb.name}: {output.strip()}")
    if _exec(lb, ["cat", NGINX_CONFIG])[1] == before:
        return False
    code, output = _exec(lb, ["nginx", "-t", "-q"])
    if code != 0:
        # The replica was the last one (one replica: an update cannot keep serving).
        _exec(lb, _sed(undo))
        print(
            f"note: {upstream} stays in rotation: nginx refused the config without it "
            f"({output.strip()})",
            flush=True,
        )
        return False
    old = accepting_workers(lb)
    code, output = _exec(lb, ["nginx", "-s", "reload"])
    if code != 0:
        raise RolloutError(f"nginx in {lb.name} did not reload: {output.strip()}")
    if _until_old_workers_stop_accepting(lb, old, settle) is None:
        print(
            f"note: nginx's old workers in {lb.name} still accept connections "
            f"{settle:.0f} s after the reload",
            flush=True,
        )
    return True


# What the canary step (components.steps.canary) reuses: the same live edit takes
# a worse canary out of nginx, and puts a re-watched one back.
get_running = _get
edit_upstream = _edit_upstream


def requests_running(replica: Container, port: int) -> float | None:
    """What the replica's own metrics say is running; None if it cannot tell."""
    argv = [*METRICS_PROBE[:2], METRICS_PROBE[2].replace("{port}", str(port))]
    try:
        code, output = _exec(replica, argv)
    except APIError:
        return None
    if code != 0:
        return None
    values = [float(v) for v in RUNNING.findall(output)]
    return sum(values) if values else None


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
) -> str:
    lb = _get(client, lb_name)
    if lb is None:
        # No balancer (first deploy, destroy) routes to it.
        return f"{replica_name}: nothing to drain"
    if vllm_drains:
        # Its engine may be another; it need not be asked: vLLM finishes its
        # requests itself once Pulumi stops it.
        start = time.monotonic()
        _edit_upstream(lb, upstream or f"{replica_name}:{port}", down=True)
        return (
            f"{replica_name}: out of rotation after {time.monotonic() - start:.1f} s; vLLM "
            "finishes its requests in flight when it is stopped (--shutdown-timeout)"
        )
    replica = _get(replica_client or client, replica_name)
    if replica is None:
        return f"{replica_name}: nothing to drain"
    _edit_upstream(lb, upstream or f"{replica_name}:{port}", down=True)
    start = time.monotonic()
    last_report = start
    while True:
        running = requests_running(replica, port)
        if running is None or running <= 0:
            waited = time.monotonic() - start
            return f"{replica_name}: out of rotation, drained after {waited:.1f} s"
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
) -> str:
    lb = _get(client, lb_name)
    engine = replica_client or client
    if lb is None:
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
        raise RolloutError(str(err)) from None
    _edit_upstream(lb, upstream or f"{replica_name}:{port}", down=False)
    return f"{replica_name}: healthy, back in rotation after {took:.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=("drain", "resume"))
    parser.add_argument("--lb", required=True, help="load balancer container")
    parser.add_argument("--replica", required=True, help="replica container (upstream name)")
    parser.add_argument("--port", type=int, default=8000, help="replica port in nginx's config")
    parser.add_argument("--timeout", type=float, required=True, help="seconds")
    parser.add_argument(
        "--upstream", default=None, help="host:port of its `server` lines (default replica:port)"
    )
    parser.add_argument(
        "--replica-engine", default=None, help="the replica's engine, if not nginx's (DOCKER_HOST)"
    )
    parser.add_argument("--probe", default=None, help="resume: its /health as reached from here")
    parser.add_argument(
        "--vllm-drains",
        action="store_true",
        help="drain: vLLM finishes its requests on SIGTERM (--shutdown-timeout > 0); "
        "only take it out of nginx",
    )
    args = parser.parse_args(argv)
    try:
        client = engine_client()
        other = (
            docker.DockerClient(base_url=args.replica_engine, timeout=30)
            if args.replica_engine
            else None
        )
        step = (
            functools.partial(drain, vllm_drains=args.vllm_drains)
            if args.action == "drain"
            else functools.partial(resume, probe=args.probe)
        )
        message = step(
            client,
            args.lb,
            args.replica,
            args.port,
            args.timeout,
            upstream=args.upstream,
            replica_client=other,
        )
    except (RolloutError, docker.errors.DockerException, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
