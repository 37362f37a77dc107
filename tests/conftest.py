"""Fixtures shared by the tests that run on the real Docker engine."""

from __future__ import annotations

import docker
import pytest

from tests.support.docker_engine import base_image, docker_client, standin_image


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the machine's Docker engine on one pytest-xdist worker, in file order.

    They share container names, ports and the engine itself, so they cannot
    run side by side. The tests on test engines in network namespaces (marked
    `netns`) share the namespaces' names instead, so they are a group of their
    own, which the other worker runs beside them with the rest (plain Python,
    nginx on free loopback ports); `scripts/test.sh` passes `-n 2 --dist loadgroup`.
    """
    for item in items:
        if item.get_closest_marker("docker") is not None:
            group = "netns-hosts" if item.get_closest_marker("netns") else "docker-engine"
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    """The machine's engine, with the offline base and the stand-in image made once."""
    engine = docker_client()
    base_image(engine)
    standin_image(engine)
    return engine
