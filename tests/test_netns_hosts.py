"""The test hosts themselves: two engines in namespaces, reachable from each other.

What the two-host tests stand on: each engine publishes on its own address
only, a container on one engine reaches a port published on the other, and
stopping one engine takes its containers off the network.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.docker_engine import base_image, docker_client
from tests.support.netns_hosts import load_images, netns_hosts

pytestmark = [pytest.mark.docker, pytest.mark.netns]


def test_two_hosts_reach_each_other_and_go_down_alone() -> None:
    base = base_image(docker_client())
    with netns_hosts(2) as (one, two):
        for host in (one, two):
            load_images(host, base)
        web = two.client().containers.run(
            base,
            ["nginx", "-g", "daemon off;"],
            name="vnh-web",
            ports={"80/tcp": (two.address, 18950)},
            detach=True,
        )
        url = f"http://{two.address}:18950/"
        for _ in range(50):
            try:
                assert httpx.get(url, timeout=2).status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("nginx on host two never answered")
        # Across engines: a container on host one fetches from host two's published port.
        fetch = one.client().containers.run(
            base, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url], detach=True
        )
        assert fetch.wait(timeout=30)["StatusCode"] == 0, fetch.logs().decode()
        assert fetch.logs().decode() == "200"
        # Host two's port is not published on host one's address or on loopback.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{one.address}:18950/", timeout=2)
        two.stop_engine()
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=2)
        assert web.id
