"""Take a replica's `server` lines out of the running nginx, or put them back.

The one live edit of the balancer's config that a drain (rollout), a worse canary
(canary) and a resume make: `sed` in the container under a lock, `nginx -t`,
`nginx -s reload`, then wait until the old workers stop accepting connections.
With a standby the same edit is made in each balancer, each through its own engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container

from components.steps.runner import StepError

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
EDIT_LOCK = "/tmp/vllm-nginx-upstream.lock"


def get_running(client: docker.DockerClient, name: str) -> Container | None:
    try:
        container = client.containers.get(name)
    except NotFound:
        return None
    return container if container.status == "running" else None


def running_balancers(balancers: Sequence[tuple[docker.DockerClient, str]]) -> list[Container]:
    """Each balancer's nginx that runs, from (its engine's client, its name): none on a
    first deploy. An engine that does not answer stops the step, naming it: editing the
    others alone would leave a balancer that may hold the address out of step."""
    found = []
    for client, name in balancers:
        try:
            lb = get_running(client, name)
        except (DockerException, OSError) as err:  # requests' ConnectionError is an OSError
            where = getattr(getattr(client, "api", None), "base_url", "its engine")
            raise StepError(
                f"cannot reach the engine of the balancer {name} at {where} ({err}); "
                "start that engine again, then `pulumi up` again"
            ) from None
        if lb is not None:
            found.append(lb)
    return found


def exec_text(container: Container, argv: list[str]) -> tuple[int, str]:
    """`docker exec`, its exit code and its output as text."""
    code, output = container.exec_run(argv)
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
    return int(code or 0), text


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
        code, output = exec_text(lb, list(LIST_PROCESSES))
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


def edit_upstream(lb: Container, upstream: str, down: bool, settle: float = 10.0) -> bool:
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
    _, before = exec_text(lb, ["cat", NGINX_CONFIG])
    code, output = exec_text(lb, _sed(script))
    if code != 0:
        raise StepError(f"editing {NGINX_CONFIG} in {lb.name}: {output.strip()}")
    if exec_text(lb, ["cat", NGINX_CONFIG])[1] == before:
        return False
    code, output = exec_text(lb, ["nginx", "-t", "-q"])
    if code != 0:
        # The replica was the last one (one replica: an update cannot keep serving).
        exec_text(lb, _sed(undo))
        print(
            f"note: {upstream} stays in rotation: nginx refused the config without it "
            f"({output.strip()})",
            flush=True,
        )
        return False
    old = accepting_workers(lb)
    code, output = exec_text(lb, ["nginx", "-s", "reload"])
    if code != 0:
        raise StepError(f"nginx in {lb.name} did not reload: {output.strip()}")
    if _until_old_workers_stop_accepting(lb, old, settle) is None:
        print(
            f"note: nginx's old workers in {lb.name} still accept connections "
            f"{settle:.0f} s after the reload",
            flush=True,
        )
    return True
