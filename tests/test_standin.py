"""The stand-in must look like vLLM to the official `openai` client and to the deployment.

Everything here runs real `python -m standin` processes on loopback ports (through
tests/support/stub.py), because what matters (readiness, the shared download, the
timing of tokens) only shows up in a real process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from standin.config import parse_config
from standin.hfcache import DOWNLOAD_LOG, HubCache
from tests.support.stub import (
    REPO_ROOT,
    Stub,
    StubStartError,
    free_port,
    make_stubs,
    port_accepts,
    stub_backends,
)

MODEL = "acme/tiny-chat"
SERVED = "tiny"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def fleet():
    with stub_backends(
        2,
        model=MODEL,
        served_model_name=SERVED,
        ttft_ms=20,
        token_ms=5,
        tokens=6,
        api_key=KEY,
    ) as stubs:
        yield stubs


def client_for(stub: Stub, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key=key, max_retries=0, timeout=10)


def log_lines(hf_home: Path) -> list[str]:
    path = hf_home / DOWNLOAD_LOG
    return path.read_text().splitlines() if path.exists() else []


def run_standin(args: list[str], env: dict[str, str], timeout: float = 20):
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "standin", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the OpenAI surface, through the official client -------------------------------


def test_models_lists_the_served_name(fleet):
    models = client_for(fleet[0]).models.list()
    assert [m.id for m in models] == [SERVED]
    listed = httpx.get(f"{fleet[0].base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    (card,) = listed.json()["data"]
    assert set(card) == {
        "id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"
    }  # fmt: skip
    assert card["permission"][0]["object"] == "model_permission"


def test_completion_whole(fleet):
    raw = client_for(fleet[0]).completions.with_raw_response.create(
        model=SERVED, prompt="say something", max_tokens=4
    )
    completion = raw.parse()
    assert raw.headers["x-replica"] == "stub0"
    assert completion.system_fingerprint == "stub0"
    assert completion.model == SERVED
    assert completion.id.startswith("cmpl-")
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 4
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.total_tokens == 6


def test_completion_streamed_one_chunk_per_token(fleet):
    stream = client_for(fleet[1]).completions.create(
        model=SERVED, prompt="hello", max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert len(chunks) == 5
    assert {c.system_fingerprint for c in chunks} == {"stub1"}
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 4 + ["length"]
    assert len("".join(c.choices[0].text for c in chunks).split()) == 5


def test_chat_whole_uses_default_length(fleet):
    chat = client_for(fleet[0]).chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant"
    assert len((chat.choices[0].message.content or "").split()) == 6  # --tokens 6
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens == 6
    assert chat.system_fingerprint == "stub0"


def test_chat_streamed_with_usage(fleet):
    stream = client_for(fleet[1]).chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 3
    assert token_chunks[0].choices[0].delta.role == "assistant"
    assert token_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert {c.system_fingerprint for c in chunks} == {"stub1"}


def test_raw_sse_ends_with_done(fleet):
    with httpx.stream(
        "POST",
        f"{fleet[0].base_url}/completions",
        json={"model": SERVED, "prompt": "x", "max_tokens": 2, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-replica"] == "stub0"
        body = response.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert len(events) == 3
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_unknown_model_is_404(fleet):
    """The body vLLM v0.33.0 answers, the one nginx's model routing answers too."""
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(fleet[0]).completions.create(model="other", prompt="x")
    assert raised.value.body == {
        "message": f"The model `other` does not exist. Valid aliases: {SERVED}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_bad_max_tokens_is_400(fleet):
    with pytest.raises(openai.BadRequestError):
        client_for(fleet[0]).completions.create(model=SERVED, prompt="x", max_tokens=0)


# --- API key: the path prefixes vLLM v0.33.0 guards --------------------------------------


def test_api_key_guards_vllms_prefixes(fleet):
    with pytest.raises(openai.AuthenticationError):
        client_for(fleet[0], key="wrong").models.list()
    response = httpx.get(f"{fleet[0].base_url}/models")
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}
    assert response.headers["x-replica"] == "stub0"
    # Plain string prefixes, as vLLM's middleware compares them.
    for path in ("/v2/models", "/inference/v1/generate", "/cohere/v2/chat", "/v1x"):
        assert httpx.get(f"{fleet[0].url}{path}").status_code == 401, path
        # With the key the route is simply unknown to the stand-in.
        with_key = httpx.get(f"{fleet[0].url}{path}", headers={"Authorization": f"Bearer {KEY}"})
        assert with_key.status_code == 404, path
    assert httpx.options(f"{fleet[0].base_url}/models").status_code != 401
    # The scheme in any case, as vLLM reads it; the key exactly.
    lower = httpx.get(f"{fleet[0].base_url}/models", headers={"Authorization": f"bearer {KEY}"})
    assert lower.status_code == 200


def test_open_paths_need_no_key(fleet):
    url = fleet[0].url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/version").json()["version"].startswith("standin-")
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": "one two three"}).json()
    assert tokens["count"] == 3
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert (
        f'vllm:request_success_total{{model_name="{SERVED}",engine="0",finished_reason='
        in metrics.text
    )


# --- timing ----------------------------------------------------------------------------


def test_first_token_and_pace_follow_the_knobs(tmp_path):
    with stub_backends(1, workdir=tmp_path, ttft_ms=300, token_ms=50) as stubs:
        client = client_for(stubs[0], key="unused")
        client.models.list()  # warm up the connection path
        started = time.monotonic()
        arrivals = []
        for _ in client.completions.create(
            model=stubs[0].model, prompt="x", max_tokens=5, stream=True
        ):
            arrivals.append(time.monotonic() - started)
        started = time.monotonic()
        client.completions.create(model=stubs[0].model, prompt="x", max_tokens=5)
        whole = time.monotonic() - started
    assert len(arrivals) == 5
    # Lower bounds are exact (the stand-in sleeps on schedule); upper bounds leave room
    # for a busy 2-core CI machine.
    assert 0.29 <= arrivals[0] < 0.9, arrivals
    # tokens 2..5 arrive 50 ms apart: last one at ttft + 4 * 50 ms
    assert 0.49 <= arrivals[-1] < 1.2, arrivals
    assert all(t >= 0.29 + i * 0.05 for i, t in enumerate(arrivals)), arrivals
    assert 0.49 <= whole < 1.2, whole


def test_http_requests_counted_as_vllms_instrumentation_counts_them(tmp_path):
    """`http_requests_total{handler,method,status}` (standin/http_metrics.py): the
    route's path, the status by class, excluded paths not counted; with
    STANDIN_FAIL_EVERY every n-th generation is a 500."""
    fleet = make_stubs(1, tmp_path, tokens=2, token_ms=1)
    stub = fleet[0]
    stub.env = {"STANDIN_FAIL_EVERY": "2"}
    try:
        stub.start()
        client = client_for(stub, key="unused")
        failed = 0
        for _ in range(4):
            try:
                client.chat.completions.create(
                    model=stub.model, messages=[{"role": "user", "content": "hi"}], stream=True
                ).close()
            except openai.InternalServerError:
                failed += 1
        httpx.get(f"{stub.url}/health")
        httpx.get(f"{stub.url}/nowhere")
        text = httpx.get(f"{stub.url}/metrics").text
    finally:
        fleet.stop_all()
    assert failed == 2
    lines = sorted(line for line in text.splitlines() if line.startswith("http_requests_total"))
    assert lines == [
        'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 2.0',
        'http_requests_total{handler="/v1/chat/completions",method="POST",status="5xx"} 2.0',
        'http_requests_total{handler="none",method="GET",status="4xx"} 1.0',
    ]


# --- start-up like vLLM ----------------------------------------------------------------


def test_refuses_connections_until_loaded(tmp_path):
    fleet = make_stubs(1, tmp_path, load_seconds=1.5)
    stub = fleet[0]
    try:
        stub.spawn()
        deadline = time.monotonic() + 10
        while "loading model weights" not in stub.log_text():
            assert time.monotonic() < deadline, stub.log_tail()
            time.sleep(0.05)
        assert stub.running
        assert not port_accepts(stub.port)
        stub.wait_ready(10)
        assert port_accepts(stub.port)
        assert "Uvicorn running on http://127.0.0.1:" in stub.log_text()
    finally:
        fleet.stop_all()


def test_offline_without_cache_exits_non_zero(tmp_path):
    result = run_standin(
        ["--model", MODEL, "--port", str(free_port()), "--host", "127.0.0.1"],
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "HF_HUB_OFFLINE" in result.stderr
    assert "Uvicorn running" not in result.stderr
    assert log_lines(tmp_path / "hf") == []


def test_two_concurrent_starters_download_once(tmp_path):
    hf_home = tmp_path / "shared-hf"
    fleet = make_stubs(2, tmp_path, model=MODEL, hf_home=hf_home, download_seconds=1.0)
    try:
        for stub in fleet:
            stub.spawn()
        for stub in fleet:
            stub.wait_ready(20)
        lines = log_lines(hf_home)
        assert len(lines) == 1, lines
        assert lines[0].split()[0] in {"stub0", "stub1"}
        assert (HubCache.from_env({"HF_HOME": str(hf_home)}).snapshot_dir(MODEL)) is not None
        waited = [s for s in fleet if "waiting for its lock" in s.log_text()]
        assert len(waited) == 1
    finally:
        fleet.stop_all()

    # The cache now holds the model: an offline replica starts without downloading.
    offline = make_stubs(
        1,
        tmp_path,
        model=MODEL,
        hf_home=hf_home,
        replica_prefix="offline",
        env={"HF_HUB_OFFLINE": "1"},
    )
    try:
        offline[0].start()
        assert len(log_lines(hf_home)) == 1
    finally:
        offline.stop_all()


def test_sigterm_during_download_releases_the_lock(tmp_path):
    hf_home = tmp_path / "hf"
    first = make_stubs(1, tmp_path, model=MODEL, hf_home=hf_home, download_seconds=30)
    first[0].spawn()
    try:
        deadline = time.monotonic() + 10
        while "downloading" not in first[0].log_text():
            assert time.monotonic() < deadline, first[0].log_tail()
            time.sleep(0.05)
        started = time.monotonic()
        first[0].stop(signal.SIGTERM, timeout=5)
        assert time.monotonic() - started < 3
    finally:
        first.stop_all()
    assert log_lines(hf_home) == []
    second = make_stubs(1, tmp_path, model=MODEL, hf_home=hf_home, replica_prefix="again")
    try:
        second[0].start(10)
        assert len(log_lines(hf_home)) == 1
    finally:
        second.stop_all()


def test_environment_knobs_and_unknown_arguments(tmp_path):
    fleet = make_stubs(
        1,
        tmp_path,
        model=MODEL,
        extra_args=["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9"],
        env={"STANDIN_TOKENS": "2", "VLLM_API_KEY": "from-env", "STANDIN_TTFT_MS": "0"},
    )
    try:
        fleet[0].start()
        with pytest.raises(openai.AuthenticationError):
            client_for(fleet[0], key="nope").models.list()
        completion = client_for(fleet[0], key="from-env").completions.create(
            model=MODEL, prompt="x"
        )
        assert completion.usage is not None and completion.usage.completion_tokens == 2
        assert "--gpu-memory-utilization 0.9" in fleet[0].log_text()
        assert "tensor_parallel_size=2" in fleet[0].log_text()
    finally:
        fleet.stop_all()


def test_model_and_shutdown_timeout_as_vllm_0_33_parses_them():
    positional = parse_config(["org/m", "--served-model-name", "a", "--shutdown-timeout", "30"])
    assert (positional.model, positional.served_model_name) == ("org/m", "a")
    assert positional.shutdown_timeout == 30 and positional.warnings == ()
    # --model is deprecated, not refused: moved to the front, with vLLM's warning.
    moved = parse_config(["--port", "9", "--model", "org/m", "--served-model-name", "a"])
    assert (moved.model, moved.port) == ("org/m", 9)
    assert "The `--model` option will be removed" in moved.warnings[0]
    assert parse_config(["--model=org/m"]).model == "org/m"
    assert parse_config(["org/m"]).shutdown_timeout == 0
    for argv in (
        ["--port", "9", "--served-model-name", "a"],  # no model first
        ["org/m", "--shutdown-timeout", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_config(argv)


def test_config_precedence_flag_over_env_over_default():
    env = {"STANDIN_TOKENS": "7", "STANDIN_REPLICA_ID": "env-id", "STANDIN_TOKEN_MS": "3"}
    config = parse_config(["--model", "m", "--tokens", "9"], env)
    assert config.tokens == 9
    assert config.replica_id == "env-id"
    assert config.token_ms == 3
    assert config.ttft_ms == 50
    assert config.served_model_names == ("m",)
    assert config.port == 8000 and config.host == "0.0.0.0"
    assert config.api_key is None


# --- the stub helpers themselves ---------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stub_restarts_on_the_same_port(tmp_path, sig):
    with stub_backends(2, workdir=tmp_path, tokens=1) as stubs:
        port = stubs[1].port
        stubs[1].stop(sig)
        assert not stubs[1].running
        assert not port_accepts(port)
        assert httpx.get(f"{stubs[0].url}/health").status_code == 200
        stubs[1].start()
        assert stubs[1].port == port
        response = httpx.get(f"{stubs[1].url}/health")
        assert response.headers["x-replica"] == "stub1"


def test_stub_start_failure_reports_the_log(tmp_path):
    fleet = make_stubs(1, tmp_path, env={"HF_HUB_OFFLINE": "1"})
    with pytest.raises(StubStartError, match="HF_HUB_OFFLINE"):
        fleet[0].start()


class Reader:
    """One streamed completion in a thread: its texts, finish reason and error."""

    def __init__(self, stub: Stub, tokens: int) -> None:
        self.texts: list[str] = []
        self.finish: str | None = None
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stub, tokens))
        self.thread.start()

    def _read(self, stub: Stub, tokens: int) -> None:
        client = client_for(stub, key="unused")
        try:
            for chunk in client.completions.create(
                model=stub.model, prompt="x", max_tokens=tokens, stream=True
            ):
                if chunk.choices[0].text:
                    self.texts.append(chunk.choices[0].text)
                self.finish = chunk.choices[0].finish_reason or self.finish
        except openai.APIError as err:
            self.errors.append(str(err))

    def join(self) -> None:
        self.thread.join(20)


def _complete(stub: Stub, stream: bool) -> httpx.Response:
    return httpx.post(
        f"{stub.url}/v1/completions",
        json={"model": stub.model, "prompt": "y", "max_tokens": 2, "stream": stream},
        headers={"Authorization": "Bearer unused"},
    )


def _sigterm(stub: Stub) -> float:
    assert stub.process is not None
    stub.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def test_sigterm_with_default_shutdown_timeout_aborts_requests_in_flight(tmp_path):
    """vLLM's default, `--shutdown-timeout 0` (standin/shutdown.py): what runs ends
    as aborted, a request meanwhile is rejected with an abort, the port closes."""
    env = {"STANDIN_ENGINE_SHUTDOWN_SECONDS": "1.5"}
    with stub_backends(1, workdir=tmp_path, ttft_ms=0, token_ms=100, env=env) as stubs:
        reader = Reader(stubs[0], 30)
        time.sleep(0.5)
        _sigterm(stubs[0])
        reader.join()
        late = _complete(stubs[0], stream=False)
        assert late.status_code == 200
        choice = late.json()["choices"][0]
        assert (choice["finish_reason"], choice["text"]) == ("abort", "")
        assert stubs[0].process is not None and stubs[0].process.wait(10) == 0
        assert not port_accepts(stubs[0].port)
    assert 0 < len(reader.texts) < 30
    assert reader.finish == "abort" and not reader.errors
    assert "mode=abort timeout=0s" in stubs[0].log_text()


def test_sigterm_with_a_shutdown_timeout_drains_while_serving_http(tmp_path):
    """`--shutdown-timeout 20`: the stream in flight goes on to its end, HTTP keeps
    answering (/health 200, metrics), a new generation request gets 200 with
    finish_reason abort and no text, and the process exits 0 once drained."""
    with stub_backends(
        1, workdir=tmp_path, ttft_ms=0, token_ms=100, extra_args=["--shutdown-timeout", "20"]
    ) as stubs:
        stub = stubs[0]
        reader = Reader(stub, 30)
        time.sleep(0.5)
        signalled = _sigterm(stub)
        time.sleep(0.3)
        assert httpx.get(f"{stub.url}/health").status_code == 200
        metrics = httpx.get(f"{stub.url}/metrics").text.splitlines()
        (running,) = [m for m in metrics if m.startswith("vllm:num_requests_running{")]
        assert float(running.split()[-1]) == 1
        assert httpx.get(f"{stub.base_url}/models").is_success
        whole = _complete(stub, stream=False)
        assert whole.status_code == 200
        assert whole.json()["choices"][0]["finish_reason"] == "abort"
        assert whole.json()["choices"][0]["text"] == ""
        streamed = _complete(stub, stream=True)
        assert streamed.status_code == 200
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert '"finish_reason":"abort"' in events[0]
        reader.join()
        assert stub.process is not None and stub.process.wait(10) == 0
        took = time.monotonic() - signalled
    assert len(reader.texts) == 30 and reader.finish == "length" and not reader.errors
    assert 2.0 < took < 6.0, "it exits once drained, not at the timeout"
    assert "mode=drain timeout=20s" in stub.log_text()


def test_sigterm_drain_cuts_what_outlasts_the_shutdown_timeout(tmp_path):
    """At the timeout vLLM kills its engine: what still runs is cut (error event)."""
    with stub_backends(
        1, workdir=tmp_path, ttft_ms=0, token_ms=100, extra_args=["--shutdown-timeout", "1"]
    ) as stubs:
        reader = Reader(stubs[0], 60)
        time.sleep(0.3)
        signalled = _sigterm(stubs[0])
        reader.join()
        assert stubs[0].process is not None and stubs[0].process.wait(10) == 0
        took = time.monotonic() - signalled
    assert 5 < len(reader.texts) < 60
    assert reader.errors and "EngineCore" in reader.errors[0]
    assert 1.0 <= took < 4.0
