"""Fixtures shared by the tests that run on the real Docker engine."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.support.docker_engine import (
    base_image,
    docker_client,
    grafana_standin_image,
    monitoring_image,
    standin_image,
)
from tests.support.k8s_cluster import (
    Cluster,
    k8s_cluster,
    leftovers,
    require_cluster_support,
    toolchain,
)


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


@pytest.fixture(scope="session")
def k8s(client: docker.DockerClient) -> Iterator[Cluster]:
    """The test cluster, started once for both Kubernetes files with every image they run.

    They are the last files of the Docker group, so it stops right after them.
    """
    require_cluster_support()  # fails in CI, skips elsewhere
    toolchain()
    images = [
        standin_image(client),
        base_image(client),
        monitoring_image(client),
        grafana_standin_image(client),
    ]
    with k8s_cluster(images=images) as running:
        print(f"\ncluster up in {running.timings['total']:.1f}s: {running.timings}")
        yield running
    assert leftovers() == [], "the cluster left things behind"
