"""Fixtures shared by the tests that run on the real Docker engine."""

from __future__ import annotations

import docker
import pytest

from tests.support.docker_engine import base_image, docker_client, standin_image


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the Docker engine on one pytest-xdist worker, in file order.

    They share container names, ports and the engine itself, so they cannot
    run side by side; the rest (plain Python, nginx on free loopback ports,
    the Pulumi CLI in temporary directories) runs on the other worker while
    they do (`scripts/test.sh` passes `-n 2 --dist loadgroup`).
    """
    for item in items:
        if item.get_closest_marker("docker") is not None:
            item.add_marker(pytest.mark.xdist_group("docker-engine"))


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    """The machine's engine, with the offline base and the stand-in image made once."""
    engine = docker_client()
    base_image(engine)
    standin_image(engine)
    return engine
