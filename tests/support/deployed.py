"""A test stack brought up through the real CLI and torn down, for every e2e file.

Each e2e module names its stack, its config and what it leaves on the engine
(`clean`); this does the rest the same way everywhere: clean first (a crashed
earlier run), `pulumi up`, hand the deployment to the tests, then `pulumi
destroy` and clean again even when the destroy fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker

from tests.support.pulumi_engine import Result, Stack


@dataclass
class Deployed:
    """A stack as its first `pulumi up` left it."""

    client: docker.DockerClient
    stack: Stack
    first: Result


D = TypeVar("D", bound=Deployed)


@contextlib.contextmanager
def deployed_stack(
    client: docker.DockerClient,
    directory: Path,
    name: str,
    config: Mapping[str, Any],
    *,
    clean: Callable[[docker.DockerClient], None],
    secrets: Mapping[str, str] | None = None,
    kind: type[D],
    before_up: Callable[[Stack], object] | None = None,
) -> Iterator[D]:
    """`pulumi up` of a new stack in `directory`; destroyed and cleaned on the way out.
    `before_up` sets what `config` and `secrets` cannot (a secret with `--path`)."""
    clean(client)
    stack: Stack | None = None
    try:
        stack = Stack(directory, name, dict(config), secrets=dict(secrets or {}))
        if before_up is not None:
            before_up(stack)
        yield kind(client, stack, stack.up())
    finally:
        try:
            if stack is not None:
                stack.destroy()
        finally:
            clean(client)
