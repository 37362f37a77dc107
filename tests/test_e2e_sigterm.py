"""A stand-in container stopped by Docker behaves as vLLM does on SIGTERM.

`docker stop` (and pulumi-docker's delete, with `destroy_grace_seconds`) sends
SIGTERM to PID 1. vLLM then shuts its engine down before its HTTP server, so
a stream in flight is cut with an error event and the process exits without
waiting for the grace period (standin/shutdown.py has the source references).
This runs the image's own uvicorn (Debian's 0.17), not the host's.
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


def test_docker_stop_cuts_a_stream_and_exits_without_the_grace_period() -> None:
    client = docker_client()
    image = standin_image(client)
    with Scratch(client, prefix="e2e-term") as scratch:
        container = scratch.run(
            image,
            "replica",
            command=[MODEL, "--api-key", "k"],
            environment={"STANDIN_TOKEN_MS": "100", "STANDIN_TTFT_MS": "0"},
            ports={"8000/tcp": (LOOPBACK, None)},
            detach=True,
        )
        port = published_port(container)
        wait_for_http(f"http://{LOOPBACK}:{port}/health", container=container, timeout=60)
        api = openai.OpenAI(base_url=f"http://{LOOPBACK}:{port}/v1", api_key="k", max_retries=0)
        texts: list[str] = []
        errors: list[str] = []

        def consume() -> None:
            try:
                for chunk in api.completions.create(
                    model=MODEL, prompt="x", max_tokens=50, stream=True
                ):
                    texts.append(chunk.choices[0].text)
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
        assert stopped_after < 5, "it should exit on SIGTERM, not be killed after the grace"
        assert 0 < len(texts) < 50
        assert errors and "EngineCore" in errors[0]
        logs = container.logs().decode()
        assert "SIGTERM: engine shutting down" in logs
