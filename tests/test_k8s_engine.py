"""`engine: kubernetes` on a real cluster, through the real Pulumi CLI and pulumi-kubernetes.

The test cluster (tests/support/k8s_cluster.py: kube-apiserver, scheduler,
controllers, kubelet and kube-proxy v1.37.2, containerd, fake `nvidia.com/gpu`
devices, no cluster DNS) runs this repository's program, `engine: kubernetes`,
with the real pulumi-kubernetes provider 4.25.0: two pools of vLLM stand-ins
(a chat pool of two with a LoRA adapter, a gated model whose token reaches the
download Job as a file; an embedding pool of one), nginx (the offline base
image's 1.22, as the Docker end-to-end tests run it) as a Deployment of two
pods behind a NodePort Service. Monitoring is on from the first `up`: the exporter, Prometheus
(Debian's, `scripts/base-image.sh --monitoring`) and Grafana's stand-in, each a
pod behind a NodePort Service. The model caches and monitoring's data are
claims bound to hostPath volumes of a StorageClass without a provisioner, made here.
Late in the module the canary is turned on (`rollout.canarySeconds`), then a slower
first wave stops an update and an equal one lets it complete (docs/kubernetes.md).
In the Docker group: it exports the images from the machine's Docker engine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from components.plan.monitoring import REPLICA_LABEL
from tests.support.docker_engine import (
    BASE_IMAGE_TAG,
    GRAFANA_STANDIN_TAG,
    MONITORING_IMAGE_TAG,
)
from tests.support.k8s_cluster import (
    NODE_ADDRESS,
    STATE_DIR,
    Cluster,
    toolchain,
)
from tests.support.pulumi_engine import Stack
from tests.support.streaming_load import Stream, _stream_forever, streaming_load

pytestmark = pytest.mark.docker

NAMESPACE = "vllm-nginx-e2e"
STORAGE_CLASS = "vllm-nginx-test"
NODE_PORT = 30080
LB_URL = f"http://{NODE_ADDRESS}:{NODE_PORT}"
API_KEY = "k8s-e2e-api-key-0123456789"
HF_TOKEN = "hf_standin_valid_token"
GRAFANA_PASSWORD = "k8s-e2e-grafana-pw-0123"
PROMETHEUS_URL = f"http://{NODE_ADDRESS}:30090"
GRAFANA_URL = f"http://{NODE_ADDRESS}:30091"
REPLICAS = {"vllm-chat-0", "vllm-chat-1", "vllm-embed-0"}
ADAPTER = "tiny-sql"
CHAT_MODEL = "standin-org/gated-chat"
TOKENS = 16


def pools(
    revision: str, chat_replicas: int = 2, ttft_ms: int | None = None
) -> list[dict[str, Any]]:
    """`ttft_ms`: the chat pool's time to first token, when not the stack's (30 ms)."""
    env = {"STANDIN_REVISION": revision}
    if ttft_ms is not None:
        env["STANDIN_TTFT_MS"] = str(ttft_ms)
    return [
        {
            "name": "chat",
            "model": CHAT_MODEL,
            "servedModelName": "tiny-chat",
            "replicas": chat_replicas,
            "adapters": [{"name": ADAPTER, "model": "standin-org/tiny-lora"}],
            "extraEnv": env,
        },
        {
            "name": "embed",
            "model": "standin-org/tiny-embed",
            "servedModelName": "tiny-embed",
            "extraArgs": ["--runner", "pooling"],
            "policy": "round_robin",
        },
    ]


def stack_config(cluster: Cluster, revision: str = "1", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "engine": "kubernetes",
        "image": {"prebuilt": "vllm-nginx/standin:test"},
        "models": pools(revision),
        "hfCache": {"volume": "e2e-cache", "keepOnDestroy": True},
        "compileCache": {"enabled": False},
        "readyTimeoutSeconds": 180,
        "shutdownTimeoutSeconds": 10,
        "stopGraceSeconds": 20,
        "verifyTimeoutSeconds": 60,
        "rollout": {"canarySeconds": 0},
        "fitCheck": {"enabled": False},
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 2, "retries": 3},
        "extraEnv": {
            "STANDIN_HUB_MODELS": f"{CHAT_MODEL},standin-org/tiny-embed,standin-org/tiny-lora",
            "STANDIN_DOWNLOAD_SECONDS": "1",
            "STANDIN_LOAD_SECONDS": "1",
            "STANDIN_TTFT_MS": "30",
            "STANDIN_TOKEN_MS": "40",
        },
        "loadBalancer": {"name": "e2e-lb", "image": BASE_IMAGE_TAG, "failWindowSeconds": 5},
        "publicHost": NODE_ADDRESS,
        "monitoring": {
            "enabled": True,
            "prometheus": {"image": MONITORING_IMAGE_TAG, "scrapeIntervalSeconds": 2},
            "grafana": {"image": GRAFANA_STANDIN_TAG},
            "lbExporter": {"image": BASE_IMAGE_TAG},
        },
        "kubernetes": {
            "kubeconfig": str(cluster.kubeconfig),
            "namespace": NAMESPACE,
            "cache": {"storageClass": STORAGE_CLASS, "size": "1Gi"},
            "service": {"type": "NodePort", "nodePort": NODE_PORT},
            "monitoring": {
                "serviceType": "NodePort",
                "prometheusNodePort": 30090,
                "grafanaNodePort": 30091,
                "size": "1Gi",
            },
        },
    }
    config.update(overrides)
    return config


def storage(cluster: Cluster, count: int) -> None:
    """A StorageClass without a provisioner and `count` hostPath volumes of it."""
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i in range(count):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"e2e-pv-{i}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                    "storageClassName": STORAGE_CLASS,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {
                        "path": str(STATE_DIR / "pv" / str(i)),
                        "type": "DirectoryOrCreate",
                    },
                },
            }
        )
    path = STATE_DIR / "e2e-storage.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    cluster.kubectl("apply", "-f", str(path))


@pytest.fixture(scope="module")
def cluster(k8s: Cluster) -> Cluster:
    storage(k8s, 6)
    return k8s


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    created = Stack(
        tmp_path_factory.mktemp("k8s-engine"),
        "k8s",
        stack_config(cluster),
        secrets={"apiKey": API_KEY, "hfToken": HF_TOKEN, "grafanaPassword": GRAFANA_PASSWORD},
    )
    for folder in toolchain()["plugins"].iterdir():
        target = created.home / "plugins" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for binary in folder.iterdir():
            (target / binary.name).symlink_to(binary)
    yield created


@pytest.fixture(scope="module")
def first_up(stack: Stack) -> Any:
    started = time.monotonic()
    result = stack.up()
    print(f"\nfirst pulumi up: {time.monotonic() - started:.1f}s")
    return result


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
    return [p for p in found if p["metadata"].get("deletionTimestamp") is None]


def by_name(cluster: Cluster, selector: str) -> dict[str, str]:
    """Pod name -> uid."""
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cluster, selector)}


CHAT_PODS = "app.kubernetes.io/name=vllm-chat"
EMBED_PODS = "app.kubernetes.io/name=vllm-embed"
NGINX_PODS = "app.kubernetes.io/name=e2e-lb"


def explain(cluster: Cluster) -> str:
    """For a failed assertion: the balancer pods' nginx warnings and errors (which upstreams
    were refused or taken out, and when) and the replica Services' endpoints as they are now."""
    lines = []
    for pod in pods(cluster, NGINX_PODS):
        name = pod["metadata"]["name"]
        log = cluster.kubectl("logs", "-n", NAMESPACE, "--timestamps", name, check=False)
        lines += [
            f"{name}: {line}" for line in log.splitlines() if "[warn]" in line or "[error]" in line
        ]
    slices = cluster.get("endpointslices", "-n", NAMESPACE)["items"]
    for item in slices:
        ends = [(e.get("addresses"), e.get("conditions")) for e in item.get("endpoints") or []]
        lines.append(f"endpoints {item['metadata']['name']}: {ends}")
    return "\n".join(lines[-80:])


def client() -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{LB_URL}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def test_up_answers_through_the_balancers_service_routed_by_model(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    changed = first_up.changed()
    assert "vllm-chat-pool-download" in changed and "vllm-embed-pool-download" in changed
    # The download Job ran with the token as a file: the gated model came down.
    job = cluster.get("job", "-n", NAMESPACE, "vllm-chat-download")
    assert job["status"].get("succeeded") == 1, job["status"]
    assert set(by_name(cluster, CHAT_PODS)) == {"vllm-chat-0", "vllm-chat-1"}
    assert set(by_name(cluster, EMBED_PODS)) == {"vllm-embed-0"}
    assert len(pods(cluster, NGINX_PODS)) == 2
    devices = {
        cluster.kubectl(
            "exec", "-n", NAMESPACE, name, "--", "printenv", "NVIDIA_VISIBLE_DEVICES"
        ).strip()
        for name in ("vllm-chat-0", "vllm-chat-1", "vllm-embed-0")
    }
    assert len(devices) == 3, devices  # each replica its own (fake) GPU
    answered = stack.outputs()["verified_models"]
    for name in ("tiny-chat", ADAPTER, "tiny-embed"):
        assert f'"{name}": "{name}"' in answered, answered

    api = client()
    assert {"tiny-chat", ADAPTER, "tiny-embed"} <= {m.id for m in api.models.list()}
    seen = set()
    for _ in range(6):
        reply = api.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        seen.add(reply.system_fingerprint)
    assert seen == {"vllm-chat-0", "vllm-chat-1"}, seen
    lora = api.completions.create(model=ADAPTER, prompt="select", max_tokens=2)
    assert lora.model == ADAPTER and lora.system_fingerprint in {"vllm-chat-0", "vllm-chat-1"}
    vectors = api.embeddings.create(model="tiny-embed", input=["a", "b"])
    assert vectors.model == "tiny-embed" and len(vectors.data) == 2
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{LB_URL}/v1", api_key="wrong", max_retries=0).models.list()
    # Secrets stay out of the state's plain text and of the rendered config.
    state = stack.state()
    for secret in (API_KEY, HF_TOKEN, GRAFANA_PASSWORD):
        assert secret not in state


def prometheus(path: str, **params: str) -> Any:
    response = httpx.get(f"{PROMETHEUS_URL}{path}", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def series(query: str) -> dict[str, float]:
    """The query's result: each series' replica label (or '') -> its value; one series each."""
    result = prometheus("/api/v1/query", query=query)["result"]
    found = {r["metric"].get(REPLICA_LABEL, ""): float(r["value"][1]) for r in result}
    assert len(found) == len(result), result
    return found


def test_prometheus_finds_every_replica_and_the_balancers_exporter(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    outputs = stack.outputs()
    assert (outputs["prometheus_url"], outputs["grafana_url"]) == (PROMETHEUS_URL, GRAFANA_URL)
    api = client()

    def counted() -> float:
        return sum(series("sum(vllm_lb_requests_total)").values())

    # What the exporter counted so far, once Prometheus has scraped all of it.
    before, deadline = -1.0, time.monotonic() + 30
    while (now := counted()) != before:
        assert time.monotonic() < deadline, (before, now)
        before = now
        time.sleep(5)
    for _ in range(6):
        api.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    api.embeddings.create(model="tiny-embed", input=["a", "b"])
    sent = 7
    deadline = time.monotonic() + 60
    while True:
        targets = prometheus("/api/v1/targets")["activeTargets"]
        health = {t["labels"].get(REPLICA_LABEL, t["labels"]["job"]): t["health"] for t in targets}
        running = series("vllm:num_requests_running")
        served = series("sum by (replica) (vllm:request_success_total)")
        through = counted() - before
        attempts = series("sum by (replica) (vllm_lb_upstream_attempts_total)")
        if (
            set(health.values()) == {"up"}
            and set(running) == REPLICAS
            and all(served.get(n, 0) > 0 for n in ("vllm-chat-0", "vllm-chat-1"))
            and through == sent
            and set(attempts) >= REPLICAS
        ):
            break
        assert time.monotonic() < deadline, (health, running, served, through, attempts)
        time.sleep(1)
    print(
        f"\nPrometheus on the cluster: targets {sorted(health)}; requests per replica "
        f"{served}; the exporter counted {through:.0f} of the {sent} sent, attempts per "
        f"replica {attempts}"
    )
    # Every replica, and the exporter of the balancer's request lines.
    assert set(health) == {*REPLICAS, "vllm-lb"}
    # The exporter names each replica (its ClusterIP in the exporter's /etc/hosts).
    assert set(attempts) == REPLICAS, attempts
    assert httpx.get(f"{GRAFANA_URL}/api/health", timeout=10).status_code == 200
    assert httpx.get(f"{GRAFANA_URL}/api/search", auth=("admin", "wrong")).status_code == 401
    auth = ("admin", GRAFANA_PASSWORD)
    found = httpx.get(f"{GRAFANA_URL}/api/search", auth=auth, timeout=10).json()
    assert [d["uid"] for d in found] == ["vllm-nginx"]  # the dashboard file's
    sources = httpx.get(f"{GRAFANA_URL}/api/datasources", auth=auth, timeout=10).json()
    assert sources == [{"uid": "vllm-prometheus", "url": "http://vllm-prometheus:9090"}]


def test_preview_and_refresh_find_no_changes(stack: Stack, first_up: Any) -> None:
    stack.preview(expect_no_changes=True)
    stack.refresh(expect_no_changes=True)
    stack.preview(expect_no_changes=True)


def _embed_forever(stop: threading.Event, results: list[str | None]) -> None:
    api = client()
    while not stop.is_set():
        try:
            got = api.embeddings.create(model="tiny-embed", input="load")
            results.append(None if got.data else repr(got))
        except Exception as err:  # every failure counts
            results.append(f"{type(err).__name__}: {err}")
        time.sleep(0.05)


def test_update_of_one_pool_under_streaming_load_fails_nothing(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    chat_before = by_name(cluster, CHAT_PODS)
    embed_before = by_name(cluster, EMBED_PODS)
    nginx_before = by_name(cluster, NGINX_PODS)
    stack.write_config(stack_config(cluster, revision="2"))
    embeds: list[str | None] = []
    stop = threading.Event()
    embedder = threading.Thread(target=_embed_forever, args=(stop, embeds))
    embedder.start()
    try:
        with (
            streaming_load(LB_URL, API_KEY, workers=2, tokens=TOKENS) as chats,
            streaming_load(LB_URL, API_KEY, workers=1, tokens=TOKENS, model=ADAPTER) as loras,
        ):
            time.sleep(1.5)
            started = time.monotonic()
            update = stack.up()
            took = time.monotonic() - started
            time.sleep(1)
    finally:
        stop.set()
        embedder.join(timeout=60)
    streams: list[Stream] = [*chats, *loras]
    broken = [s for s in streams if not s.whole]
    failed = [e for e in embeds if e is not None]
    during = [s for s in streams if s.finished >= started and s.started <= started + took]
    print(
        f"\nupdate of the chat pool: `pulumi up` {took:.1f} s; {len(streams)} streams "
        f"({len(during)} overlapping), {len(broken)} failed or cut; {len(embeds)} embedding "
        f"requests, {len(failed)} failed"
    )
    assert during, "no stream overlapped the update"
    assert not broken, f"{broken[:5]}\n{explain(cluster)}"
    assert embeds and not failed, f"{failed[:5]}\n{explain(cluster)}"
    chat_after = by_name(cluster, CHAT_PODS)
    assert set(chat_after) == set(chat_before)
    assert all(chat_after[n] != chat_before[n] for n in chat_before), "chat pods not replaced"
    assert by_name(cluster, EMBED_PODS) == embed_before
    assert by_name(cluster, NGINX_PODS) == nginx_before
    changed = update.changed()
    assert "vllm-chat-pool-replicas" in changed, changed
    assert not [n for n in changed if "embed" in n], changed
    stack.preview(expect_no_changes=True)


def test_scaling_a_pool_up_and_down(cluster: Cluster, stack: Stack, first_up: Any) -> None:
    nginx_before = by_name(cluster, NGINX_PODS)
    three = pools("2", chat_replicas=3)
    stack.write_config(stack_config(cluster, revision="2", models=three))
    # A new upstream is a new nginx.conf and /etc/hosts: nginx's pods roll under load.
    chats: list[Stream] = []
    stop, lock = threading.Event(), threading.Lock()
    workers = [
        threading.Thread(target=_stream_forever, args=(LB_URL, API_KEY, TOKENS, stop, chats, lock))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        stack.up()
        took = time.monotonic() - started
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=90)
    broken = [s for s in chats if not s.whole]
    retried = [s for s in chats if s.retried]
    print(
        f"\nscale-up of the chat pool (nginx rolled): `pulumi up` {took:.1f} s; "
        f"{len(chats)} streams, {len(broken)} failed or cut, {len(retried)} retried once "
        "on a closed idle connection"
    )
    assert not broken, f"{broken[:5]}\n{explain(cluster)}"
    # A stopping nginx closes its idle client connections (as a reload does on Docker):
    # at most once per client and old pod, each sent again once as the client would.
    assert len(retried) <= len(workers) * len(nginx_before), retried
    assert not set(by_name(cluster, NGINX_PODS)) & set(nginx_before), "nginx pods not rolled"
    assert set(by_name(cluster, CHAT_PODS)) == {"vllm-chat-0", "vllm-chat-1", "vllm-chat-2"}
    seen = set()
    api = client()
    for _ in range(12):
        reply = api.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        seen.add(reply.system_fingerprint)
    assert "vllm-chat-2" in seen, seen
    stack.write_config(stack_config(cluster, revision="2"))
    stack.up()
    assert set(by_name(cluster, CHAT_PODS)) == {"vllm-chat-0", "vllm-chat-1"}
    services = {s["metadata"]["name"] for s in cluster.get("services", "-n", NAMESPACE)["items"]}
    assert "vllm-chat-2" not in services
    reply = api.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert reply.system_fingerprint in {"vllm-chat-0", "vllm-chat-1"}


def test_a_failing_download_stops_its_pool_before_any_replica(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    broken = {"name": "broken", "model": "standin-org/no-such-model", "servedModelName": "nope"}
    stack.write_config(stack_config(cluster, revision="2", models=[*pools("2"), broken]))
    failed = stack.up_failing()
    said = [line.strip() for line in failed.output.splitlines() if "error" in line.lower()]
    print("\nthe failing download, as `pulumi up` said it:\n" + "\n".join(said[:8]))
    assert "vllm-broken-pool-download" in failed.output
    # The job's last lines reach the provider's error: the model and the cause.
    assert "vllm-nginx-download: error:" in failed.output, failed.output[-3000:]
    assert "standin-org/no-such-model" in failed.output
    job = cluster.get("job", "-n", NAMESPACE, "vllm-broken-download")
    assert any(c["type"] == "Failed" for c in job["status"].get("conditions", [])), job["status"]
    statefulsets = {
        s["metadata"]["name"] for s in cluster.get("statefulsets", "-n", NAMESPACE)["items"]
    }
    assert "vllm-broken" not in statefulsets
    assert pods(cluster, "app.kubernetes.io/name=vllm-broken") == []
    # The other pools keep serving.
    reply = client().chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert reply.choices
    stack.write_config(stack_config(cluster, revision="2"))
    stack.up()
    assert cluster.kubectl("get", "job", "-n", NAMESPACE, "vllm-broken-download", check=False) == ""


CANARY = {"canarySeconds": 5, "canaryMinRequests": 8}
CANARY_STEP = "vllm-chat-pool-canary"
CANARY_PODS = "app.kubernetes.io/name=vllm-chat-canary"
CANARY_WORKERS = 6


def canary_update(
    cluster: Cluster, stack: Stack, models: list[dict[str, Any]], *, failing: bool
) -> tuple[str, list[Stream], Any, float]:
    """`pulumi up` to `models` with the canary on, under streams: its output, the streams,
    the result and how long it took."""
    stack.write_config(stack_config(cluster, revision="2", models=models, rollout=CANARY))
    with streaming_load(LB_URL, API_KEY, workers=CANARY_WORKERS, tokens=8) as streams:
        time.sleep(1)
        started = time.monotonic()
        if failing:
            failed = stack.up_failing()
            output, result = failed.output, failed.result
        else:
            result = stack.up()
            output = "\n".join(text for _name, text in result.messages)
        took = time.monotonic() - started
        time.sleep(1)
    return output, streams, result, took


def rotation(cluster: Cluster, pod: str) -> str:
    found = cluster.get("pod", "-n", NAMESPACE, pod)["metadata"]["labels"]
    return str(found.get("vllm-nginx/rotation"))


def endpoints(cluster: Cluster, service: str) -> list[Any]:
    found = cluster.get(
        "endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    return [e for item in found for e in item.get("endpoints") or []]


def test_the_canary_turned_on_gives_the_first_wave_a_statefulset_of_its_own(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    rest_before = by_name(cluster, CHAT_PODS)["vllm-chat-1"]
    embed_before = by_name(cluster, EMBED_PODS)
    output, streams, result, took = canary_update(cluster, stack, pools("2"), failing=False)
    broken = [s for s in streams if not s.whole]
    said = result.logged(CANARY_STEP)
    print(
        f"\nthe canary turned on: `pulumi up` {took:.1f} s; {len(streams)} streams, "
        f"{len(broken)} failed or cut; the step said {said}"
    )
    assert not broken, f"{broken[:5]}\n{explain(cluster)}"
    # Nothing new to judge: the canary runs what the others run.
    assert said == [
        "canary: vllm-chat-0 run what vllm-chat-1 run (nothing to compare): not watched"
    ], output[-3000:]
    assert set(by_name(cluster, CANARY_PODS)) == {"vllm-chat-canary-0"}
    # The rest keep their pod (numbered from 1 now), the other pool is untouched.
    assert by_name(cluster, CHAT_PODS) == {"vllm-chat-1": rest_before}
    assert by_name(cluster, EMBED_PODS) == embed_before
    assert [e["targetRef"]["name"] for e in endpoints(cluster, "vllm-chat-0")] == [
        "vllm-chat-canary-0"
    ]


def test_a_slower_canary_stops_the_update_after_the_first_wave(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    before = {**by_name(cluster, CANARY_PODS), **by_name(cluster, CHAT_PODS)}
    slow = pools("2", ttft_ms=400)
    output, streams, result, took = canary_update(cluster, stack, slow, failing=True)
    broken = [s for s in streams if not s.whole]
    lines = [line.strip() for line in output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("canary failed:"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("What to do:"))
    message = "\n".join(lines[start : end + 1])
    print(
        f"\na slower canary: `pulumi up` {took:.1f} s, failed with:\n{message}\n"
        f"{len(streams)} streams during it, {len(broken)} failed or cut"
    )
    assert message.startswith(
        "canary failed: vllm-chat-0 (the first wave, updated) is worse than vllm-chat-1"
    ), message
    assert "(rollout.canaryMaxTtftRatio 1.5) WORSE" in message, message
    assert message.endswith(
        "What to do: revert the change (or raise rollout.canaryMaxTtftRatio if this is "
        "expected), then `pulumi up` again."
    )
    # The first wave only: the canary's pod replaced, the other untouched and not updated.
    after = {**by_name(cluster, CANARY_PODS), **by_name(cluster, CHAT_PODS)}
    assert after["vllm-chat-canary-0"] != before["vllm-chat-canary-0"]
    assert after["vllm-chat-1"] == before["vllm-chat-1"]
    assert result.ops("vllm-chat-pool-replicas") == [], result.changed()
    # The canary out of rotation: its Service selects no pod; the other serves them all.
    assert rotation(cluster, "vllm-chat-canary-0") == "out"
    deadline = time.monotonic() + 30
    while endpoints(cluster, "vllm-chat-0"):
        assert time.monotonic() < deadline, endpoints(cluster, "vllm-chat-0")
        time.sleep(1)
    time.sleep(3)  # kube-proxy's sync
    api = client()
    answered = {
        api.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        ).system_fingerprint
        for _ in range(6)
    }
    assert answered == {"vllm-chat-1"}, answered
    assert streams, "no stream ran"
    assert not broken, f"{broken[:5]}\n{explain(cluster)}"


def test_an_equal_canary_lets_the_update_complete(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    before = {**by_name(cluster, CANARY_PODS), **by_name(cluster, CHAT_PODS)}
    output, streams, result, took = canary_update(cluster, stack, pools("3"), failing=False)
    broken = [s for s in streams if not s.whole]
    said = result.logged(CANARY_STEP)
    print(
        f"\nan equal canary: `pulumi up` {took:.1f} s; {len(streams)} streams, "
        f"{len(broken)} failed or cut; the step said:\n" + "\n".join(said)
    )
    assert any(
        line.startswith("canary: vllm-chat-0 no worse than vllm-chat-1, the update goes on")
        for line in said
    ), output[-3000:]
    after = {**by_name(cluster, CANARY_PODS), **by_name(cluster, CHAT_PODS)}
    assert set(after) == set(before) and all(after[n] != before[n] for n in before)
    # The second wave after the verdict (the replaced step's own end comes last).
    verdict = next(
        i
        for i, s in enumerate(result.steps)
        if s.name == CANARY_STEP and s.kind == "outputs" and s.op != "delete-replaced"
    )
    assert result.index("vllm-chat-pool-replicas", "pre", "update") > verdict
    assert rotation(cluster, "vllm-chat-canary-0") == "in"
    assert not broken, f"{broken[:5]}\n{explain(cluster)}"
    stack.preview(expect_no_changes=True)


def test_destroy_keeps_the_model_cache_only_when_asked(
    cluster: Cluster, stack: Stack, first_up: Any
) -> None:
    stack.destroy()
    claims = {c["metadata"]["name"] for c in cluster.get("pvc", "-n", NAMESPACE)["items"]}
    # Every pool's cache is kept (hfCache.keepOnDestroy), the removed broken pool's too,
    # and monitoring's data (monitoring.keepDataOnDestroy).
    assert claims == {
        "e2e-cache-chat", "e2e-cache-embed", "e2e-cache-broken",
        "vllm-prometheus-data", "vllm-grafana-data",
    }, claims  # fmt: skip
    assert pods(cluster, "app.kubernetes.io/part-of=vllm-nginx") == []
    assert cluster.get("services", "-n", NAMESPACE)["items"] == []
    # Up again on a kept claim (the chat pool, one replica: the rest adds only time),
    # then destroy without keeping: nothing is left, the other kept claims included.
    config = stack_config(
        cluster,
        revision="2",
        models=pools("2", chat_replicas=1)[:1],
        hfCache={"volume": "e2e-cache", "keepOnDestroy": False},
    )
    config["monitoring"]["keepDataOnDestroy"] = False
    stack.write_config(config)
    stack.up()
    stack.destroy()
    assert stack.resources() == {}
    assert cluster.kubectl("get", "namespace", NAMESPACE, check=False) == ""
