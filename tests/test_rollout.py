"""The rotation step's drain against a scripted nginx container; on a real engine
under streaming load it is tested in tests/test_e2e_rollout.py.

The fake container runs the step's real `sed` edits on a temporary copy of the
config and plays nginx's workers: after a reload the old ones accept
connections for a few more looks, then are retitled "is shutting down".
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from components.plan.specs import SPEC_ENV, RolloutSpec, encode
from components.steps import nginx_edit, rollout

CONFIG = """upstream vllm {
    least_conn;
    server vllm0:8000 max_fails=3;
    server vllm1:8000 max_fails=3;
}
"""


class FakeNginx:
    name = "nginx-lb"
    status = "running"

    def __init__(self, config: Path, lingering_looks: int) -> None:
        self.config = config
        self.workers = {7: nginx_edit.WORKER, 8: nginx_edit.WORKER}
        self.lingering_looks = lingering_looks
        self.old: set[int] = set()
        self.calls: list[str] = []

    def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
        edit = argv[:2] == ["sh", "-c"] and "sed" in argv[2]
        self.calls.append("sed" if edit else "ps" if argv[0] == "sh" else argv[0])
        if argv[0] == "cat":
            return 0, self.config.read_bytes()
        if edit:
            # The step's own shell line, on a local copy of the config.
            assert argv[3] == nginx_edit.EDIT_LOCK
            lock = str(self.config.parent / "edit.lock")
            done = subprocess.run(
                [*argv[:3], lock, *argv[4:-1], str(self.config)], capture_output=True, check=False
            )
            return done.returncode, done.stderr
        if argv[:2] == ["nginx", "-t"]:
            return 0, b""
        if argv[:3] == ["nginx", "-s", "reload"]:
            self.old = set(self.workers)
            self.workers.update({20: nginx_edit.WORKER, 21: nginx_edit.WORKER})
            return 0, b""
        if argv[:2] == ["sh", "-c"]:
            if self.old and self.lingering_looks == 0:
                for pid in self.old:
                    self.workers[pid] = nginx_edit.WORKER + " is shutting down"
            self.lingering_looks -= 1 if self.old else 0
            lines = [f"{pid} {title} " for pid, title in sorted(self.workers.items())]
            return 0, "\n".join(["1 nginx: master process nginx -g daemon off; ", *lines]).encode()
        raise AssertionError(f"unexpected exec {argv}")


class FakeClient:
    def __init__(self, containers: dict[str, Any]) -> None:
        self.containers = self
        self.known = containers
        self.asked: list[str] = []

    def get(self, name: str) -> Any:
        self.asked.append(name)
        if name not in self.known:
            raise NotFound(name)
        return self.known[name]


@pytest.fixture
def nginx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNginx:
    config = tmp_path / "nginx.conf"
    config.write_text(CONFIG)
    monkeypatch.setattr(nginx_edit, "NGINX_CONFIG", str(config))
    return FakeNginx(config, lingering_looks=3)


def test_accepting_workers_are_the_untitled_shutting_down_ones(nginx: FakeNginx) -> None:
    nginx.workers[8] = nginx_edit.WORKER + " is shutting down"
    assert nginx_edit.accepting_workers(nginx) == {7}  # type: ignore[arg-type]


def test_drain_when_vllm_drains_waits_for_nginx_only(nginx: FakeNginx) -> None:
    """`--vllm-drains`: out of the config, reloaded, old workers no longer accepting;
    the replica itself is never asked (vLLM finishes its requests once stopped)."""
    client = FakeClient({"nginx-lb": nginx})
    message = rollout.drain(
        client,  # type: ignore[arg-type]
        "nginx-lb",
        "vllm0",
        8000,
        90,
        vllm_drains=True,
    )
    assert message.startswith("vllm0: out of rotation after ")
    assert "vLLM finishes its requests in flight when it is stopped" in message
    assert client.asked == ["nginx-lb"]
    assert f"    {nginx_edit.DRAINED}server vllm0:8000 max_fails=3;" in nginx.config.read_text()
    assert "    server vllm1:8000 max_fails=3;" in nginx.config.read_text()
    # It returned only once the old workers had stopped accepting connections.
    assert nginx_edit.accepting_workers(nginx) == {20, 21}  # type: ignore[arg-type]
    assert nginx.calls.count("ps") >= 4


def test_drain_without_vllms_drain_waits_for_its_running_requests(nginx: FakeNginx) -> None:
    """`shutdownTimeoutSeconds: 0`: vLLM aborts on SIGTERM, so the step waits until
    the replica reports nothing running (read with its own python3)."""

    class Replica:
        name = "vllm0"
        status = "running"

        def __init__(self) -> None:
            self.running = [2.0, 1.0, 0.0]

        def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
            value = self.running.pop(0)
            line = f'vllm:num_requests_running{{model_name="m",engine="0"}} {value}\n'
            return 0, line.encode()

    replica = Replica()
    client = FakeClient({"nginx-lb": nginx, "vllm0": replica})
    message = rollout.drain(
        client,  # type: ignore[arg-type]
        "nginx-lb",
        "vllm0",
        8000,
        90,
        poll=0.01,
    )
    assert "drained after" in message
    assert replica.running == []


def test_a_wave_drained_at_once_loses_no_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicas of a wave are drained at the same time; each `sed -i` holds a
    lock, so none writes back a config read before another's edit."""
    import threading

    names = [f"vllm{i}" for i in range(8)]
    config = tmp_path / "nginx.conf"
    config.write_text(
        "upstream vllm {\n" + "".join(f"    server {n}:8000 max_fails=3;\n" for n in names) + "}\n"
    )
    monkeypatch.setattr(nginx_edit, "NGINX_CONFIG", str(config))
    nginx = FakeNginx(config, lingering_looks=0)
    threads = [
        threading.Thread(target=nginx_edit.edit_upstream, args=(nginx, f"{n}:8000", True, 1.0))
        for n in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    text = config.read_text()
    assert all(f"{nginx_edit.DRAINED}server {n}:8000" in text for n in names), text


def test_the_spec_is_the_drain_and_the_resume_and_old_command_lines_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotation's drain runs with the inputs kept in state: after an upgrade
    the first replace runs the command line of the release before specs. Both
    forms reach `act` with the same spec; without a spec or an action, usage."""
    acted: list[tuple[str, RolloutSpec]] = []

    def act(action: str, spec: RolloutSpec) -> str:
        acted.append((action, spec))
        return f"{spec.replica}: done"

    monkeypatch.setattr(rollout, "act", act)
    spec = RolloutSpec(
        lb="nginx-lb",
        replica="vllm0",
        port=8000,
        upstream="10.0.0.2:8001",
        drain_seconds=30,
        resume_seconds=30,
        probe="",
        vllm_drains=True,
        replica_engine="ssh://ops@gpu-b",
    )
    old = "drain --lb nginx-lb --replica vllm0 --port 8000 --upstream 10.0.0.2:8001"
    old += " --timeout 30 --vllm-drains --replica-engine ssh://ops@gpu-b"
    assert rollout.main(old.split()) == 0
    monkeypatch.setenv(SPEC_ENV, encode(spec))
    assert rollout.main(["drain"]) == 0
    assert acted == [("drain", spec), ("drain", spec)]
    assert rollout.main(["resume"]) == 0 and acted[-1] == ("resume", spec)
    assert rollout.main(["restart"]) == 2
    monkeypatch.delenv(SPEC_ENV)
    assert rollout.main(["resume"]) == 2
    out, err = capsys.readouterr()
    assert out == "vllm0: done\n" * 3
    assert "usage: " in err and f"{SPEC_ENV} is not set" in err
