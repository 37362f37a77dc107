"""A standby balancer behind a floating address, failing over for real.

Two test hosts (`dockerd`s in network namespaces) on one Ethernet segment
(`tests.support.netns_lan`). From the plan of a two-host stack with
`loadBalancer.standby`: on each host a stand-in replica, nginx with the one
rendered nginx.conf, and keepalived (Debian's, `scripts/base-image.sh
--keepalived`) with its rendered keepalived.conf: real VRRP between them.
Clients stream through the floating address with the official `openai`
client (no retries) while a prober sends short requests.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import openai
import pytest

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.plan.model import Plan
from tests.support.docker_engine import base_image, docker_client, keepalived_image, standin_image
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.netns_lan import addresses_in, netns_lan
from tests.support.streaming_load import streaming_load

pytestmark = pytest.mark.docker

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
    return {k: json.dumps(v) if isinstance(v, dict) else v for k, v in config.items()}


def _put(container: docker.models.containers.Container, path: str, text: str) -> None:
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


def wait_for(what: str, check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.2)


@dataclass
class Probe:
    started: float
    ok: bool


@contextmanager
def prober(url: str) -> Iterator[list[Probe]]:
    """Short requests back to back, one at a time, 1 s timeout: when the address serves."""
    probes: list[Probe] = []
    stop = threading.Event()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1.0)

    def run() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.completions.create(model="tiny-chat", prompt="hi", max_tokens=1)
                ok = True
            except Exception:
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


def figures(label: str, at: float, streams, probes: list[Probe]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    in_flight = [s for s in streams if s.started < at < s.finished]
    cut = [s for s in in_flight if not s.whole]
    after = [s for s in streams if s.started >= at]
    failed_after = [s for s in after if not s.whole]
    back = next((p.started for p in probes if p.started >= at and p.ok), None)
    failed_probes = [p for p in probes if p.started >= at and not p.ok]
    result = {
        "seconds_until_new_requests_succeed": round(back - at, 2) if back else float("nan"),
        "streams_in_flight": len(in_flight),
        "streams_cut": len(cut),
        "streams_started_after": len(after),
        "streams_failed_after": len(failed_after),
        "probes_failed": len(failed_probes),
        "probes_after": len([p for p in probes if p.started >= at]),
    }
    print(f"\n{label}: {json.dumps(result)}")
    for s in cut[:3] + failed_after[:3]:
        print(f"  {s.tokens}/{s.expected} tokens, finish {s.finish_reason!r}, error {s.error}")
    return result


def test_standby_takes_over_when_the_active_engine_stops_and_gives_back_only_when_asked() -> None:
    machine = docker_client()
    base, standin, vrrp = base_image(machine), standin_image(machine), keepalived_image(machine)
    with netns_hosts(2) as (one, two), netns_lan((one, two)):
        for host in (one, two):
            load_images(host, base, standin, vrrp)
        plan = build_plan(parse_settings(standby_config(one, two, base, standin)), project_dir=ROOT)
        assert plan.standby is not None
        url = plan.load_balancer.url
        assert url == f"http://{VIP}:{LB_PORT}"
        for index, host in enumerate((one, two)):
            _deploy(plan, host, index)
        # The first listed host wins the first election (priority 150 against 100).
        wait_for(f"{VIP} on {one.name}", lambda: holder(one, two) == one.name)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=10)
        wait_for(
            "a request through the floating address",
            lambda: _ok(client),
        )

        with (
            streaming_load(url, "none", workers=6, tokens=TOKENS) as streams,
            prober(url) as probes,
        ):
            time.sleep(4)
            stopped_at = time.monotonic()
            one.stop_engine()
            wait_for(f"{VIP} on {two.name}", lambda: holder(one, two) == two.name)
            time.sleep(8)
        failover = figures("failover (host one's dockerd stopped)", stopped_at, streams, probes)
        assert (
            failover["seconds_until_new_requests_succeed"]
            == failover["seconds_until_new_requests_succeed"]
        ), "no request succeeded through the floating address after the failover"
        assert failover["streams_started_after"] > 0
        # Whatever was in flight on host one may be cut; what came after must not fail
        # once the address moved (new streams during the move are counted, not judged).
        late = [s for s in streams if s.started >= stopped_at + 3]
        assert late and all(s.whole for s in late), [s.error for s in late if not s.whole][:3]

        # Host one comes back: its containers restart, its keepalived sees host two as
        # master and, with nopreempt, stays BACKUP although its priority is higher.
        one.start_engine()
        with streaming_load(url, "none", workers=4, tokens=TOKENS) as streams2:
            wait_for(
                "host one's keepalived up again",
                lambda: any(
                    c.name == plan.standby.balancers[0].keepalived_name  # type: ignore[union-attr]
                    and c.status == "running"
                    for c in one.client().containers.list()
                ),
            )
            # 3 advertisement intervals + skew is when a BACKUP would claim it: wait 10.
            for _ in range(50):
                assert holder(one, two) == two.name, "the address flapped back to host one"
                time.sleep(0.2)
        assert all(s.whole for s in streams2), [s.error for s in streams2 if not s.whole][:3]
        print(f"\nno flap: {len(streams2)} streams while host one came back, 0 failed")

        # The operator asks for it back: restart host two's keepalived, which on
        # stopping sends priority 0 and lets host one (BACKUP, priority 150) take over.
        with (
            streaming_load(url, "none", workers=6, tokens=TOKENS) as streams3,
            prober(url) as probes3,
        ):
            time.sleep(3)
            asked_at = time.monotonic()
            two.client().containers.get(plan.standby.balancers[1].keepalived_name).restart()
            wait_for(f"{VIP} back on {one.name}", lambda: holder(one, two) == one.name)
            time.sleep(6)
        handback = figures(
            "hand back (host two's keepalived restarted)", asked_at, streams3, probes3
        )
        assert (
            handback["seconds_until_new_requests_succeed"]
            == handback["seconds_until_new_requests_succeed"]
        )
        assert holder(one, two) == one.name

        # The machine itself goes away (no goodbye): host one's links go down, so its
        # advertisements stop; host two claims the address after 3 intervals and skew.
        with (
            streaming_load(url, "none", workers=6, tokens=TOKENS) as streams4,
            prober(url) as probes4,
        ):
            time.sleep(3)
            lost_at = time.monotonic()
            for link in (f"{one.name}-n", "lan0"):
                _in(one, "ip", "link", "set", link, "down")
            wait_for(f"{VIP} on {two.name}", lambda: f" {VIP}/" in addresses_in(two))
            time.sleep(8)
        figures("machine lost (host one's links down)", lost_at, streams4, probes4)
        assert any(p.ok for p in probes4 if p.started > lost_at)


def _in(host: NetnsHost, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", host.name, *argv], check=True, timeout=10)


def _ok(client: openai.OpenAI) -> bool:
    try:
        client.completions.create(model="tiny-chat", prompt="hi", max_tokens=1)
        return True
    except Exception:
        return False
