"""The stand-in image and a stock nginx image, run on the real engine with the offline base.

What the deployment relies on is checked where it can break: the stand-in image
behaves like vllm/vllm-openai (`vllm serve MODEL args`, the Uvicorn line,
refusal to start offline without a cache, one download into a shared cache
volume) and an nginx image as published serves whatever nginx.conf is uploaded
before start, with the command and stop signal the deployment declares.
Host traffic goes only to ports published on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from docker.utils.build import exclude_paths

from components.plan.model import NGINX_COMMAND, NGINX_STOP_SIGNAL
from tests.support.docker_engine import (
    LOOPBACK,
    REPO_ROOT,
    Scratch,
    base_image,
    container_logs,
    docker_client,
    published_port,
    put_file,
    standin_image,
    wait_for_exit,
    wait_for_http,
    wait_for_log,
)

MODEL = "meta-llama/Llama-2-7b-chat-hf"
HF_CACHE = "/root/.cache/huggingface"
UVICORN_LINE = "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)"
LOOPBACK_8000 = {"8000/tcp": (LOOPBACK, None)}


@pytest.fixture(scope="module")
def client():
    return docker_client()


@pytest.fixture(scope="module")
def standin(client):
    return standin_image(client)


@pytest.fixture(scope="module")
def nginx_base(client):
    return base_image(client)


@pytest.fixture
def scratch(client):
    with Scratch(client) as made:
        yield made


def test_build_context_holds_only_what_the_dockerfiles_copy():
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    sent = {
        Path(p)
        for p in exclude_paths(str(REPO_ROOT), patterns, "docker/standin/Dockerfile")
        if (REPO_ROOT / p).is_file()
    }
    assert sent, "nothing would be sent"
    tops = {p.parts[0] for p in sent}
    assert tops <= {"standin", "docker", ".dockerignore"}, tops
    assert Path("standin/__main__.py") in sent
    assert not any("__pycache__" in p.parts for p in sent)


@pytest.mark.docker
def test_standin_image_is_configured_like_vllm_openai(client, standin):
    config = client.images.get(standin).attrs["Config"]
    assert config["Entrypoint"] == ["vllm", "serve"]
    assert "8000/tcp" in config["ExposedPorts"]


@pytest.mark.docker
def test_standin_container_serves_on_a_user_network(client, standin, scratch):
    network = scratch.network()
    container = scratch.run(
        standin,
        "vllm0",
        command=[MODEL, "--api-key", "k", "--tensor-parallel-size", "1"],
        environment={"STANDIN_REPLICA_ID": "vllm0", "STANDIN_TOKENS": "3"},
        network=network.name,
        ports=LOOPBACK_8000,
        detach=True,
    )
    wait_for_log(container, UVICORN_LINE, timeout=60)
    port = published_port(container)
    health = wait_for_http(f"http://{LOOPBACK}:{port}/health", container=container)
    assert health.headers["x-replica"] == "vllm0"

    api = openai.OpenAI(base_url=f"http://{LOOPBACK}:{port}/v1", api_key="k", max_retries=0)
    assert [m.id for m in api.models.list()] == [MODEL]
    chunks = list(
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert len(chunks) == 3
    assert chunks[0].system_fingerprint == "vllm0"

    # Reachable by container name from another container on the same network.
    probe = scratch.run(
        standin,
        "probe",
        entrypoint=["curl", "-fsS", f"http://{container.name}:8000/health"],
        network=network.name,
        detach=True,
    )
    assert wait_for_exit(probe) == 0, container_logs(probe)

    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 8
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0


@pytest.mark.docker
def test_offline_with_an_empty_cache_volume_refuses_to_start(standin, scratch):
    volume = scratch.volume("empty-hf")
    container = scratch.run(
        standin,
        "offline",
        command=[MODEL],
        environment={"HF_HUB_OFFLINE": "1"},
        volumes={volume.name: {"bind": HF_CACHE, "mode": "rw"}},
        detach=True,
    )
    code = wait_for_exit(container, timeout=60)
    logs = container_logs(container)
    assert code != 0, logs
    assert "HF_HUB_OFFLINE" in logs
    assert "Uvicorn running" not in logs


@pytest.mark.docker
def test_two_containers_sharing_a_cache_volume_download_once(standin, scratch):
    network = scratch.network()
    volume = scratch.volume("shared-hf")
    replicas = [
        scratch.run(
            standin,
            f"vllm{i}",
            command=[MODEL],
            environment={"STANDIN_DOWNLOAD_SECONDS": "2", "STANDIN_REPLICA_ID": f"vllm{i}"},
            volumes={volume.name: {"bind": HF_CACHE, "mode": "rw"}},
            network=network.name,
            ports=LOOPBACK_8000,
            detach=True,
        )
        for i in range(2)
    ]
    for replica in replicas:
        wait_for_log(replica, UVICORN_LINE, timeout=60)
        wait_for_http(f"http://{LOOPBACK}:{published_port(replica)}/health", container=replica)
    code, output = replicas[0].exec_run(["cat", f"{HF_CACHE}/standin-downloads.log"])
    assert code == 0, output
    lines = output.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].split()[0] in {"vllm0", "vllm1"}

    # With the cache filled, an offline replica starts without downloading.
    offline = scratch.run(
        standin,
        "vllm2",
        command=[MODEL],
        environment={"HF_HUB_OFFLINE": "1"},
        volumes={volume.name: {"bind": HF_CACHE, "mode": "rw"}},
        detach=True,
    )
    wait_for_log(offline, UVICORN_LINE, timeout=60)
    _, output = offline.exec_run(["cat", f"{HF_CACHE}/standin-downloads.log"])
    assert len(output.decode().splitlines()) == 1


TRIVIAL_NGINX_CONF = """\
worker_processes 1;
error_log stderr;
pid /tmp/nginx.pid;
events { worker_connections 64; }
http {
    access_log /dev/stdout;
    server {
        listen 80;
        location = /lb-ok { return 200 "lb ok\\n"; }
        location / { proxy_pass http://{backend}:8000; }
    }
}
"""


@pytest.mark.docker
def test_stock_nginx_image_serves_only_the_uploaded_config(nginx_base, standin, scratch):
    """The deployment runs an nginx image as published: command, stop signal and the
    complete nginx.conf come from the container's declaration, nothing is built."""
    network = scratch.network()
    backend = scratch.run(
        standin,
        "vllm0",
        command=[MODEL],
        environment={"STANDIN_REPLICA_ID": "vllm0"},
        network=network.name,
        detach=True,
    )
    wait_for_log(backend, UVICORN_LINE, timeout=60)

    lb = scratch.create(
        nginx_base,
        "nginx-lb",
        command=list(NGINX_COMMAND),
        stop_signal=NGINX_STOP_SIGNAL,
        network=network.name,
        ports={"80/tcp": (LOOPBACK, None)},
        detach=True,
    )
    put_file(lb, "/etc/nginx/nginx.conf", TRIVIAL_NGINX_CONF.replace("{backend}", backend.name))
    lb.start()
    port = published_port(lb, "80/tcp")
    ok = wait_for_http(f"http://{LOOPBACK}:{port}/lb-ok", container=lb)
    assert ok.text == "lb ok\n"
    proxied = httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=5)
    assert proxied.status_code == 200
    assert proxied.headers["x-replica"] == "vllm0"

    # The image's stock server (Debian's sites-enabled/default, the official
    # image's conf.d/default.conf) is still on disk but never included.
    code, _ = lb.exec_run(["sh", "-c", "test -e /etc/nginx/sites-enabled/default"])
    assert code == 0
    stock = httpx.get(f"http://{LOOPBACK}:{port}/", timeout=5)
    assert "Welcome to nginx" not in stock.text

    lb.stop(timeout=10)
    lb.reload()
    assert lb.attrs["State"]["ExitCode"] == 0, container_logs(lb)
