"""The fit step's ways of not running, with a scripted engine (no Docker).

A check that cannot run must say so and let `pulumi up` go on (exit 0): a
container that hangs (the hub or nvidia-smi not answering) or an engine that
answers with an error. The real engine runs are in tests/test_e2e_fit.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from docker.errors import APIError
from requests.exceptions import ReadTimeout

from components.plan.specs import SPEC_ENV, FitReplica, FitSpec, encode
from components.steps import fit


class HangingContainer:
    removed = False

    def start(self) -> None:
        pass

    def wait(self, timeout: int) -> dict[str, int]:
        raise ReadTimeout(f"read timed out ({timeout} s)")

    def remove(self, force: bool) -> None:
        HangingContainer.removed = True


class Containers:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def get(self, name: str) -> Any:
        from docker.errors import NotFound

        raise NotFound(name)

    def create(self, *args: Any, **kwargs: Any) -> HangingContainer:
        if self.refuse:
            raise APIError("409 Conflict: the name is in use")
        return HangingContainer()


class Engine:
    def __init__(self, refuse: bool = False) -> None:
        self.containers = Containers(refuse)


SPEC = FitSpec(
    model="org/m",
    name="n",
    env={},
    backend="gpu",
    tensor_parallel_size=1,
    replicas=(FitReplica("r0", ("0",)),),
    extra_args=(),
    warn_above_percent=90,
    cpu_kvcache_gb=4,
    image="img",
)


@pytest.fixture(autouse=True)
def spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPEC_ENV, encode(SPEC))


def test_a_hanging_container_skips_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fit, "reachable_engine", lambda timeout: Engine())
    monkeypatch.setattr(fit, "WAIT_SECONDS", 1)
    assert fit.main() == 0
    out = capsys.readouterr().out
    assert "[fit] fit check skipped: nvidia-smi did not end within 1 s; going on" in out
    assert HangingContainer.removed


def test_an_engine_error_skips_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fit, "reachable_engine", lambda timeout: Engine(refuse=True))
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_VALUE")
    assert fit.main() == 0
    out = capsys.readouterr().out
    assert "fit check skipped: the GPU query could not run on the engine: 409 Conflict" in out
    assert "hf_SECRET_VALUE" not in out


def test_no_engine_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit, "reachable_engine", lambda timeout: None)
    assert fit.main() == 1
