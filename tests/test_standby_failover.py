"""A standby balancer behind a floating address, failing over for real.

Two test hosts (`dockerd`s in network namespaces) on one Ethernet segment
(`tests.support.netns_lan`). From the plan of a two-host stack with
`loadBalancer.standby`: on each host a stand-in replica, nginx with the one
rendered nginx.conf, and keepalived (Debian's, `scripts/base-image.sh
--keepalived`) with its rendered keepalived.conf: real VRRP between them.
Clients stream through the floating address with the official `openai`
client (no retries) while a prober asks nginx there what keepalived's check asks.

Host one's engine is stopped under that load. Printed (run with `-s`): the
time until a new request succeeds through the address, requests failed,
streams cut. Then the engine comes back and the address stays on host two
(no flap) until the operator restarts host two's keepalived, which hands it
back. The figures go to docs/multi-host.md.

Traffic goes only to the hosts' 198.18.0.0/15 addresses and the engines' sockets.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from docker.models.containers import Container

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.plan.model import Plan
from components.plan.standby import ALIVE_PATH
from tests.support.docker_engine import base_image, docker_client, keepalived_image, standin_image
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.netns_lan import addresses_in, netns_lan
from tests.support.streaming_load import Stream, streaming_load

pytestmark = [pytest.mark.docker, pytest.mark.netns]

ROOT = Path(__file__).resolve().parents[1]
VIP = "198.19.0.100"
LB_PORT = 18900
REPLICA_PORT = 18911
TOKENS = 40
"""Tokens per stream: 30 ms to the first, 25 ms each after, about 1 s a stream."""


def standby_config(one: NetnsHost, two: NetnsHost, base: str, standin: str) -> dict[str, str]:
    config = {
        "backend": "cpu",
        "model": "standin-org/tiny-chat",
        "servedModelName": "tiny-chat",
        "image": {"prebuilt": standin},
        "namePrefix": "sb",
        "cpu": {"coresPerReplica": 0},
        "basePort": REPLICA_PORT,
        "hosts": [
            {"name": h.name, "dockerHost": h.docker_host, "address": h.address, "replicas": 1}
            for h in (one, two)
        ],
        "loadBalancer": {
            "port": LB_PORT,
            "image": base,
            "dynamicResolve": False,
            "failWindowSeconds": 5,
            "nextUpstreamTries": 2,
            "standby": {
                "hosts": [one.name, two.name],
                "virtualAddress": f"{VIP}/24",
                "interface": "lan0",
                "routerId": 77,
            },
        },
    }
    return {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in config.items()}


def _put(container: Container, path: str, text: str) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        raw = text.encode()
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(raw), 0o644
        tar.addfile(info, io.BytesIO(raw))
    assert container.put_archive("/", data.getvalue())


def _deploy(plan: Plan, host: NetnsHost, index: int) -> None:
    """What the deployment declares on one balancer host, by hand: replica, nginx, keepalived."""
    client = host.client()
    replica = plan.replicas[index]
    assert replica.host == host.name
    env = {k: v for k, v in replica.env.items() if k != "HF_HUB_OFFLINE"}
    env.update(STANDIN_DOWNLOAD_SECONDS="0", STANDIN_TTFT_MS="30", STANDIN_TOKEN_MS="25")
    client.containers.run(
        plan.vllm_image.name,
        list(replica.command),
        entrypoint=list(replica.entrypoint),
        name=replica.name,
        environment=env,
        ports={"8000/tcp": (replica.bind_address, replica.host_port)},
        restart_policy={"Name": "always"},
        detach=True,
    )
    lb = plan.load_balancer
    nginx = client.containers.create(
        lb.image.name,
        list(lb.command),
        name=lb.name,
        ports={f"{lb.container_port}/tcp": (lb.bind_address, lb.host_port)},
        restart_policy={"Name": "always"},
        stop_signal=lb.stop_signal,
    )
    _put(nginx, lb.config_path, lb.config)
    for path, text in lb.files.items():
        _put(nginx, path, text)
    nginx.start()
    standby = plan.standby
    assert standby is not None
    balancer = standby.balancers[index]
    vrrp = client.containers.create(
        standby.image.name,
        list(standby.command),
        name=balancer.keepalived_name,
        network_mode="host",
        cap_add=list(standby.capabilities),
        restart_policy={"Name": "always"},
    )
    _put(vrrp, standby.config_path, balancer.keepalived_config)
    vrrp.start()


def holder(one: NetnsHost, two: NetnsHost) -> str | None:
    held = [h.name for h in (one, two) if f" {VIP}/" in addresses_in(h)]
    assert len(held) <= 1, f"both hosts hold {VIP}: {held}"
    return held[0] if held else None


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float = 60,
    explain: Callable[[], str] | None = None,
) -> None:
    """Until `check` holds; failing, with what `explain` then finds (for a CI log)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            seen = f"\n{explain()}" if explain is not None else ""
            pytest.fail(f"waited {timeout} s for {what}{seen}")
        time.sleep(0.2)


def standby_state(hosts: Sequence[NetnsHost], nginx: str, keepalived: str) -> str:
    """What each balancer host shows: its addresses, when its nginx and keepalived started,
    keepalived's last lines (its elections, FAULTs and check results, with times)."""
    parts = []
    for host in hosts:
        addresses = subprocess.run(
            ["ip", "netns", "exec", host.name, "ip", "addr"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        parts.append(f"--- {host.name}: ip addr\n{addresses.stdout}{addresses.stderr}")
        for name in (nginx, keepalived):
            try:
                container = host.client().containers.get(name)
                state = container.attrs["State"]
                parts.append(
                    f"--- {host.name}: {name} {container.status}, started {state['StartedAt']}"
                    f", restarts {container.attrs['RestartCount']}"
                )
                if name == keepalived:
                    log = container.logs(tail=60, timestamps=True)
                    parts.append(log.decode(errors="replace"))
            except Exception as error:  # an engine stopped on purpose, a container gone
                parts.append(f"--- {host.name}: {name}: {type(error).__name__}: {error}")
    return "\n".join(parts)


@dataclass
class Probe:
    started: float
    ok: bool


@contextmanager
def prober(url: str) -> Iterator[list[Probe]]:
    """What keepalived's check asks, at the address, one at a time, 1 s timeout: any answer
    from nginx (it answers that path itself) means a balancer holds the address. The
    streams say what clients got end to end."""
    probes: list[Probe] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=1.0) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.get(f"{url}{ALIVE_PATH}")
                    ok = True
                except httpx.HTTPError:
                    ok = False
                probes.append(Probe(started, ok))
                time.sleep(0.05)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield probes
    finally:
        stop.set()
        thread.join(timeout=10)


def figures(label: str, at: float, streams: list[Stream], probes: list[Probe]) -> dict[str, float]:
    """What a step cost, from the moment `at` it was taken (printed; the docs quote it).

    The outage lasts until the first probe answered after the last one that was
    not; then when the first new stream that came back whole began. New streams
    are told apart by what ended them: refused or timed out before a token, cut
    part way, or answered `finish_reason: abort` by a replica that was stopping
    (not the balancer's doing).
    """
    in_flight = [s for s in streams if s.started < at < s.finished]
    after = [s for s in streams if s.started >= at]
    later = [p for p in probes if p.started >= at]
    failed = [i for i, p in enumerate(later) if not p.ok]
    back = next((p.started for p in later[failed[-1] + 1 :] if p.ok), None) if failed else at
    result = {
        "outage_seconds": round(back - at, 2) if back is not None else float("nan"),
        "first_whole_new_stream_after_seconds": round(
            min((s.started for s in after if s.whole), default=float("nan")) - at, 2
        ),
        "probes": len(later),
        "probes_failed": len(failed),
        "streams_in_flight": len(in_flight),
        "streams_in_flight_cut": len([s for s in in_flight if not s.whole]),
        "new_streams": len(after),
        "new_streams_no_token": len([s for s in after if s.error and not s.tokens]),
        "new_streams_cut": len([s for s in after if s.error and s.tokens]),
        "new_streams_aborted_by_replica": len(
            [s for s in after if not s.error and s.finish_reason == "abort"]
        ),
    }
    print(f"\n{label}: {json.dumps(result)}")
    for s in [s for s in in_flight if not s.whole][:2] + [s for s in after if not s.whole][:3]:
        print(f"  {s.tokens}/{s.expected} tokens, finish {s.finish_reason!r}, error {s.error}")
    return result


def measure(
    label: str,
    url: str,
    action: Callable[[], object],
    until: Callable[[], bool],
    stream_timeout: float = 60,
    explain: Callable[[], str] | None = None,
) -> dict[str, float]:
    """Under streaming load and the prober: `action`, then wait until `until` holds.

    A machine that vanishes sends no reset: its streams hang until the client's
    timeout (`stream_timeout`), and only then do those clients start new ones.
    """
    with (
        streaming_load(url, "none", workers=6, tokens=TOKENS, timeout=stream_timeout) as streams,
        prober(url) as probes,
    ):
        time.sleep(3)
        at = time.monotonic()
        action()
        wait_for(label, until, explain=explain)
        time.sleep(6 + (stream_timeout if stream_timeout < 60 else 0))
    result = figures(label, at, streams, probes)
    assert result["outage_seconds"] == result["outage_seconds"], "nothing served after it"
    late = [s for s in streams if s.started >= at + 4]
    assert late and all(s.whole for s in late), [s.error for s in late if not s.whole][:3]
    return result


def stays_on(name: str, one: NetnsHost, two: NetnsHost, seconds: float = 10) -> None:
    """3 advertisement intervals and skew is when a BACKUP claims the address: 10 s is more."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert holder(one, two) == name, f"the address left {name}"
        time.sleep(0.2)


def test_standby_takes_over_and_gives_back_only_when_asked() -> None:
    machine = docker_client()
    base, standin, vrrp = base_image(machine), standin_image(machine), keepalived_image(machine)
    with netns_hosts(2) as (one, two), netns_lan((one, two)):
        for host in (one, two):
            load_images(host, base, standin, vrrp)
        plan = build_plan(parse_settings(standby_config(one, two, base, standin)), project_dir=ROOT)
        standby = plan.standby
        assert standby is not None
        url = plan.load_balancer.url
        assert url == f"http://{VIP}:{LB_PORT}"
        lb, vrrp_name = plan.load_balancer.name, standby.balancers[0].keepalived_name
        seen = lambda: standby_state((one, two), lb, vrrp_name)  # noqa: E731
        on_one = lambda: holder(one, two) == one.name  # noqa: E731
        on_two = lambda: holder(one, two) == two.name  # noqa: E731
        # As `pulumi up` orders it: host two's keepalived once host one holds the address
        # (both BACKUP with nopreempt: whichever claims it first keeps it).
        _deploy(plan, one, 0)
        wait_for(f"{VIP} on {one.name}", on_one, explain=seen)
        _deploy(plan, two, 1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=10)
        wait_for("a request through the floating address", lambda: _ok(client), explain=seen)

        # Every replica down: /health answers 503 on both balancers, nginx still answers,
        # so the address stays where it is (moving it would not help).
        for index, host in enumerate((one, two)):
            host.client().containers.get(plan.replicas[index].name).stop(timeout=0)
        wait_for("/health 503", lambda: httpx.get(f"{url}/health", timeout=2).status_code == 503)
        stays_on(one.name, one, two)
        print("\npool down: /health 503 through the address, the address stayed on host one")
        for index, host in enumerate((one, two)):
            host.client().containers.get(plan.replicas[index].name).start()
        wait_for("replicas back", lambda: _ok(client))

        # nginx alone fails on host one: its keepalived's check fails, it gives the address up.
        nginx_one = one.client().containers.get(lb)
        measure("nginx stopped on host one", url, nginx_one.stop, on_two, explain=seen)
        nginx_one.start()
        stays_on(two.name, one, two)
        print("no flap: nginx on host one back, the address stayed on host two")
        # The operator asks for it back: restart the holder's keepalived, which sends
        # priority 0 as it stops, and host one (BACKUP, priority 150) takes over.
        keepalived_two = two.client().containers.get(vrrp_name)
        measure(
            "hand back (host two's keepalived restarted)",
            url,
            keepalived_two.restart,
            on_one,
            explain=seen,
        )

        # What issue 27 asks: host one's engine stops (its nginx, replica and keepalived).
        measure("failover (host one's dockerd stopped)", url, one.stop_engine, on_two, explain=seen)
        one.start_engine()
        wait_for(
            "host one's keepalived running again",
            lambda: one.client().containers.get(vrrp_name).status == "running",
        )
        stays_on(two.name, one, two)
        print("no flap: host one's engine back, the address stayed on host two")
        keepalived_two = two.client().containers.get(vrrp_name)
        measure("hand back again", url, keepalived_two.restart, on_one, explain=seen)

        # The machine itself goes away (no goodbye): host one's links go down, so its
        # advertisements stop; host two claims the address after 3 intervals and skew.
        def lose_host_one() -> None:
            for link in (f"{one.name}-n", "lan0"):
                _in(one, "ip", "link", "set", link, "down")

        measure(
            "machine lost (host one's links down)",
            url,
            lose_host_one,
            lambda: f" {VIP}/" in addresses_in(two),
            stream_timeout=8,
        )


def _in(host: NetnsHost, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", host.name, *argv], check=True, timeout=10)


def _ok(client: openai.OpenAI) -> bool:
    try:
        client.completions.create(model="tiny-chat", prompt="hi", max_tokens=1)
        return True
    except Exception:
        return False
