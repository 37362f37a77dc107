"""Fixtures shared by the tests that run on the real Docker engine."""

from __future__ import annotations

import docker
import pytest

from tests.support.docker_engine import base_image, docker_client, standin_image


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    """The machine's engine, with the offline base and the stand-in image made once."""
    engine = docker_client()
    base_image(engine)
    standin_image(engine)
    return engine
