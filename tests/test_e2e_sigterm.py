"""A stand-in container stopped by Docker behaves as vLLM v0.33.0 does on SIGTERM.

`docker stop` (and pulumi-docker's delete, with `destroy_grace_seconds`) sends
SIGTERM to PID 1. vLLM then stops its engine with `--shutdown-timeout` T while
its HTTP server keeps serving: with T = 0, its default, what runs is aborted;
with T > 0 it runs on to its end (at most T), and the process exits as soon as
nothing is left, without waiting for the grace period (standin/shutdown.py has
the source references). This runs the image's own uvicorn (Debian's 0.17), not
the host's.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.support.docker_engine import (
    LOOPBACK,
    Scratch,
    docker_client,
    published_port,
    standin_image,
    wait_for_http,
)

pytestmark = pytest.mark.docker

MODEL = "standin-org/tiny-chat"


def _stop_while_streaming(arguments: list[str], tokens: int) -> tuple[list[str], str | None, float]:
    """Start a replica, stream `tokens` tokens at 100 ms each, `docker stop -t 20` it
    one second in: the texts it got, the finish reason, and how long the stop took."""
    client = docker_client()
    image = standin_image(client)
    with Scratch(client, prefix="e2e-term") as scratch:
        container = scratch.run(
            image,
            "replica",
            command=[MODEL, "--api-key", "k", *arguments],
            environment={"STANDIN_TOKEN_MS": "100", "STANDIN_TTFT_MS": "0"},
            ports={"8000/tcp": (LOOPBACK, None)},
            detach=True,
        )
        port = published_port(container)
        wait_for_http(f"http://{LOOPBACK}:{port}/health", container=container, timeout=60)
        api = openai.OpenAI(base_url=f"http://{LOOPBACK}:{port}/v1", api_key="k", max_retries=0)
        texts: list[str] = []
        finish: list[str] = []
        errors: list[str] = []

        def consume() -> None:
            try:
                for chunk in api.completions.create(
                    model=MODEL, prompt="x", max_tokens=tokens, stream=True
                ):
                    if chunk.choices[0].text:
                        texts.append(chunk.choices[0].text)
                    if chunk.choices[0].finish_reason:
                        finish.append(chunk.choices[0].finish_reason)
            except openai.APIError as err:
                errors.append(str(err))

        reader = threading.Thread(target=consume)
        reader.start()
        time.sleep(1.0)
        started = time.monotonic()
        container.stop(timeout=20)
        stopped_after = time.monotonic() - started
        reader.join(10)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
        assert not errors, errors
        logs = container.logs().decode()
        assert "SIGTERM: [shutdown] API server: stopping engine client" in logs
        return texts, finish[-1] if finish else None, stopped_after


def test_docker_stop_aborts_a_stream_by_default_and_exits_at_once() -> None:
    texts, finish, stopped_after = _stop_while_streaming([], tokens=50)
    assert stopped_after < 5, "it should exit on SIGTERM, not be killed after the grace"
    assert 0 < len(texts) < 50
    assert finish == "abort"


def test_docker_stop_with_a_shutdown_timeout_finishes_the_stream_then_exits() -> None:
    """What the deployment runs (`--shutdown-timeout`, within stopGraceSeconds):
    the stream ends whole, and the container exits when it has, before the grace."""
    texts, finish, stopped_after = _stop_while_streaming(["--shutdown-timeout", "15"], tokens=40)
    assert len(texts) == 40
    assert finish == "length"
    assert 2.0 < stopped_after < 8, stopped_after
