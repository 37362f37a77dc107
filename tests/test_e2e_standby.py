"""A standby balancer through the real Pulumi CLI: `pulumi up` on two engines, VRRP for real.

Two test hosts (`dockerd`s in network namespaces, `tests.support.netns_hosts`) on
one Ethernet segment (`tests.support.netns_lan`), a replica on each. `pulumi up`
of a two-host stack with `loadBalancer.standby` (the real CLI and engine, our
stand-ins for the docker and command plugins: tests/support/pulumi_engine.py),
with the CLI's own `DOCKER_HOST` pointing nowhere, so every step reaches the
engines the program names. Then: nginx and keepalived on each host as declared,
the `openai` client answered through the floating address, `preview
--expect-no-changes`; a rolling update of both replicas under streaming load
through the address, each drained and put back in both nginx (host two's
sampled as it runs); host one's engine stopped under load and new requests
answered through the address on host two; the engine back, then `destroy`
leaving no container, network or volume on either engine. Figures printed (`-s`).

Traffic goes only to 198.18.0.0/15 and 198.19.0.0/24 (RFC 2544) and the engines' sockets.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from components.steps.nginx_edit import DRAINED
from tests.support.docker_engine import (
    base_image,
    docker_client,
    keepalived_image,
    remove_named,
    standin_image,
)
from tests.support.netns_hosts import NetnsHost, load_images, netns_hosts
from tests.support.netns_lan import netns_lan
from tests.support.pulumi_engine import Stack
from tests.support.streaming_load import streaming_load
from tests.test_standby_failover import VIP, holder, measure, standby_state, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.netns]

LB_PORT = 18950
BASE_PORT = 18961
LB_NAME = "e2e-sb-lb"
NETWORK = "e2e-sb-net"
CACHE = "e2e-sb-hf-cache"
NO_ENGINE = "unix:///nonexistent/vllm-nginx-e2e-sb/docker.sock"
"""The CLI's own `DOCKER_HOST`: no engine answers there."""
OUTAGE_BOUND = 20
"""Seconds: an engine that stops hands the address over in about one (docs/multi-host.md);
this bounds it generously, the figure itself is printed."""


def standby_stack(
    one: NetnsHost, two: NetnsHost, base: str, standin: str, vrrp: str
) -> dict[str, Any]:
    """A two-host stack (one replica each) with nginx on both behind 198.19.0.100."""
    return {
        "backend": "cpu",
        "model": "standin-org/tiny-chat",
        "servedModelName": "tiny-chat",
        "image": {"prebuilt": standin},
        "namePrefix": "e2e-sb",
        "networkName": NETWORK,
        "hfCache": {"volume": CACHE, "keepOnDestroy": False},
        "compileCache": {"enabled": False},
        # The stand-in's tiny-chat has no real config.json (tests/test_e2e_fit.py).
        "fitCheck": {"enabled": False},
        "cpu": {"coresPerReplica": 0},
        "basePort": BASE_PORT,
        "readyTimeoutSeconds": 120,
        "verifyTimeoutSeconds": 60,
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3},
        # The update's canary (host one's replica against host two's) reaches both nginx
        # too; short and loose: tests/test_e2e_canary.py shows it judging.
        "rollout": {"canarySeconds": 2, "canaryMinRequests": 4, "canaryMaxTtftRatio": 3},
        "extraEnv": {
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "1",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": "25",
        },
        "hosts": [
            {"name": h.name, "dockerHost": h.docker_host, "address": h.address, "replicas": 1}
            for h in (one, two)
        ],
        "loadBalancer": {
            "name": LB_NAME,
            "port": LB_PORT,
            "image": base,
            "dynamicResolve": False,
            "failWindowSeconds": 5,
            "nextUpstreamTries": 2,
            "standby": {
                "hosts": [one.name, two.name],
                "virtualAddress": f"{VIP}/24",
                "interface": "lan0",
                "routerId": 78,
                "image": vrrp,
            },
        },
    }


def _config_of(host: NetnsHost) -> str:
    output = host.client().containers.get(LB_NAME).exec_run(["cat", "/etc/nginx/nginx.conf"])
    assert output.exit_code == 0 and isinstance(output.output, bytes)
    return output.output.decode()


def _drained(config: str) -> set[str]:
    """The replicas (`address:port`) whose `server` lines are out of rotation."""
    return {
        line.split(DRAINED, 1)[1].split()[1]
        for line in config.splitlines()
        if DRAINED in line and "server " in line
    }


def test_standby_balancer_by_the_real_cli(tmp_path: Path) -> None:
    machine = docker_client()
    base, standin, vrrp = base_image(machine), standin_image(machine), keepalived_image(machine)
    with netns_hosts(2) as (one, two), netns_lan((one, two)):
        for host in (one, two):
            load_images(host, base, standin, vrrp)
        config = standby_stack(one, two, base, standin, vrrp)
        stack = Stack(tmp_path, "standby", config, env={"DOCKER_HOST": NO_ENGINE})
        try:
            _run(stack, one, two, config)
        finally:
            remove_named(machine, networks=[NETWORK], volumes=[CACHE])


def _run(stack: Stack, one: NetnsHost, two: NetnsHost, config: dict[str, Any]) -> None:
    began = time.monotonic()
    first = stack.up()
    up_seconds = time.monotonic() - began
    # Host two's keepalived only after the check through the address had passed.
    assert first.index("vllm-verify", "outputs") < first.index(f"vllm-{two.name}-keepalived")
    assert first.index(f"vllm-{one.name}-keepalived", "outputs") < first.index("vllm-verify")
    url = f"http://{VIP}:{LB_PORT}"
    assert stack.outputs()["lb_url"] == url
    resources = stack.resources()
    verified = json.loads(resources["vllm-verify"]["outputs"]["stdout"])
    assert verified == {"url": url, "models": ["tiny-chat"]}, verified
    for host in (one, two):
        engine = host.client()
        nginx = engine.containers.get(LB_NAME)
        assert nginx.status == "running"
        keepalived = engine.containers.get(f"{LB_NAME}-vrrp")
        assert keepalived.attrs["HostConfig"]["NetworkMode"] == "host"
        added = set(keepalived.attrs["HostConfig"]["CapAdd"])
        assert added == {"CAP_NET_ADMIN", "CAP_NET_BROADCAST", "CAP_NET_RAW"}
        rendered = keepalived.exec_run(["cat", "/etc/keepalived/keepalived.conf"]).output
        assert isinstance(rendered, bytes)
        assert f"router_id vllm-nginx-{host.name}" in rendered.decode()
    # One nginx.conf on both (every replica by its host's address).
    assert _config_of(one) == _config_of(two)
    for host in (one, two):
        assert f"{host.address}:{BASE_PORT}" in _config_of(one)
    # The first listed host holds the address (host two's keepalived was made only once
    # the check through the address had passed); the openai client is answered through it.
    seen = lambda: standby_state((one, two), LB_NAME, f"{LB_NAME}-vrrp")  # noqa: E731
    wait_for(f"{VIP} on {one.name}", lambda: holder(one, two) == one.name, explain=seen)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=10)
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["tiny-chat"]
    stack.preview(expect_no_changes=True)

    # A rolling update under streaming load through the address: each replica out of
    # both nginx before it stops (host two's config sampled meanwhile), back in both.
    seen_drained: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            # A sample that fails (an exec during a reload): the next one counts.
            with contextlib.suppress(Exception):
                seen_drained.update(_drained(_config_of(two)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    stack.write_config({"extraEnv": {**config["extraEnv"], "STANDIN_REVISION": "2"}})
    with streaming_load(url, "none", workers=3, tokens=24) as streams:
        sampler.start()
        time.sleep(2)
        began = time.monotonic()
        update = stack.up()
        update_seconds = time.monotonic() - began
        time.sleep(2)
        stop.set()
        sampler.join(timeout=10)
    broken = [s for s in streams if not s.whole]
    replicas = [f"e2e-sb-{h.name}-0" for h in (one, two)]
    for name in replicas:
        assert f"{name}: out of rotation after " in update.output, update.output[-3000:]
        drained = [
            line for line in update.output.splitlines() if f"{name}: out of rotation" in line
        ]
        assert all("in 2 balancers" in line for line in drained), drained
        assert f"{name}: healthy, back in rotation after" in update.output
    upstreams = {f"{h.address}:{BASE_PORT}" for h in (one, two)}
    assert seen_drained == upstreams, seen_drained
    assert _drained(_config_of(one)) == _drained(_config_of(two)) == set()
    assert _config_of(one) == _config_of(two)
    print(
        f"\nfirst pulumi up: {up_seconds:.1f} s; rolling update through the address: "
        f"{update_seconds:.1f} s, {len(streams)} streams, {len(broken)} failed or cut; "
        f"host two's nginx seen with {sorted(seen_drained)} out of rotation"
    )
    assert len(streams) > 10 and not broken, [s.error for s in broken][:3]
    stack.preview(expect_no_changes=True)

    # The active balancer's engine stops under load: host two takes the address.
    result = measure(
        "failover by pulumi up's stack (host one's dockerd stopped)",
        url,
        one.stop_engine,
        lambda: holder(one, two) == two.name,
        explain=seen,
    )
    assert result["outage_seconds"] <= OUTAGE_BOUND, result
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "again"}], max_tokens=4
    )
    assert reply.choices[0].message.content

    # Host one's engine back (its containers by their restart policy), then destroy.
    one.start_engine()
    wait_for(
        "host one's nginx running again",
        lambda: one.client().containers.get(LB_NAME).status == "running",
    )
    stack.destroy()
    assert stack.resources() == {}
    for host in (one, two):
        engine = host.client()
        assert engine.containers.list(all=True) == []
        assert {n.name for n in engine.networks.list()} == {"bridge", "host", "none"}
        assert engine.volumes.list() == []
    # keepalived was stopped with a grace, not killed: it took the address with it.
    assert holder(one, two) is None, "the floating address outlived its keepalived"
