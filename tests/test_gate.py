"""The gate's pure parts; its waiting is tested on a real engine in test_e2e_gate.py."""

from __future__ import annotations

from components.gate import SECRET_ENV, main, redact
from components.plan import API_KEY_ENV, HF_TOKEN_ENV


def test_secret_names_match_what_replicas_get() -> None:
    assert set(SECRET_ENV) == {HF_TOKEN_ENV, API_KEY_ENV}


def test_log_tail_never_repeats_a_token() -> None:
    log = "401 Client Error for token hf_abc123\nargs: api_key=sk-9 model=x\n"
    redacted = redact(log, {"HF_TOKEN": "hf_abc123", "VLLM_API_KEY": "sk-9", "PATH": "/bin"})
    assert "hf_abc123" not in redacted
    assert "sk-9" not in redacted
    assert "[HF_TOKEN redacted]" in redacted
    assert "[VLLM_API_KEY redacted]" in redacted
    assert redact(log, {}) == log
    assert redact(log, {"HF_TOKEN": ""}) == log


def test_an_ssh_engine_is_reached_over_ssh(monkeypatch, capsys) -> None:
    """`docker:host=ssh://...` reaches the gate as DOCKER_HOST; docker-py needs paramiko
    for it (without it: "Install paramiko package to enable ssh:// support"). Port 1 on
    loopback refuses, so the gate fails on the connection, not on a missing package."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://nobody@127.0.0.1:1")
    assert main(["--timeout", "1", "vllm0"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Docker engine at ssh://nobody@127.0.0.1:1" in err
    assert "paramiko" not in err.lower()
