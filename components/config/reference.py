"""The config reference table in docs/configuration.md, generated from the settings models.

Generated rather than written by hand so that a key added to the settings models
cannot be missing from the documentation: `tests/test_readme.py` compares the
table between the markers of docs/configuration.md with this output.
`python -m components.config.reference` prints it; `--write` puts it in place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from components import PROJECT_DIR
from components.config.problems import NAMESPACE
from components.config.settings import Settings
from components.config.vllm_release import DEFAULT_CPU_IMAGE, DEFAULT_GPU_IMAGE

DOCUMENT = PROJECT_DIR / "docs" / "configuration.md"
"""The page that holds the table, between `START` and `END`."""
START = "<!-- config-reference:start -->\n"
END = "<!-- config-reference:end -->"

DESCRIPTIONS: dict[str, str] = {
    "model": "Hugging Face repo id (`org/name`) or an absolute path in the container; "
    "required unless `models` lists the models",
    "models": "model pools, one object per pool, instead of `model` (see "
    "[model-pools.md](model-pools.md)); without it, one model",
    "models[i].name": "the pool's name (DNS-safe): replicas `<namePrefix>-<name>-<i>`, its "
    "upstream, its download and readiness steps",
    "models[i].model": "Hugging Face repo id (`org/name`) or an absolute path in the container",
    "models[i].servedModelName": "name clients send as `model` to reach this pool (default: "
    "`model`); unique across pools and adapters",
    "models[i].replicas": "replicas of this pool (default: one per `gpus` / `cpuSets` entry, "
    "else 1)",
    "models[i].tensorParallelSize": "GPUs (or CPU ranks) per replica of this pool",
    "models[i].gpus": "GPU ids per replica, e.g. `[[0],[1]]`; default: the next ones after "
    "the pools before it; never shared across pools",
    "models[i].cpuSets": 'CPU backend: cores per replica, e.g. `["0-3"]`; default: the next '
    "`cpu.coresPerReplica` blocks; never shared across pools",
    "models[i].extraArgs": "more `vllm serve` arguments, after the stack's `extraArgs` "
    "(its LoRA options come from `adapters`)",
    "models[i].extraEnv": "more environment variables, over the stack's `extraEnv`",
    "models[i].policy": "routing inside the pool (a `loadBalancer.policy` value; default "
    "`loadBalancer.policy`)",
    "models[i].adapters": "LoRA adapters this pool serves (vLLM's `--enable-lora`, "
    "`--lora-modules`)",
    "models[i].adapters[i].name": "the name clients send as `model` for this adapter; unique "
    "across pools; no '=' or ','",
    "models[i].adapters[i].model": "Hub repo id (fetched by the download step) or an absolute "
    "path in the container; no ','",
    "models[i].hosts": "with `hosts`: where this pool's replicas run, one object per host",
    "models[i].hosts[i].host": "a `hosts[i].name`",
    "models[i].hosts[i].replicas": "this pool's replicas on that host (default: one per "
    "`gpus` / `cpuSets` entry, else 1)",
    "models[i].hosts[i].gpus": "GPU ids per replica on that host; default: the next free ones",
    "models[i].hosts[i].cpuSets": "CPU backend: cores per replica on that host",
    "servedModelName": "name clients use; identical on every replica (default: `model`)",
    "backend": "`gpu` or `cpu` (vLLM's CPU backend: no GPUs, `VLLM_CPU_*` env)",
    "replicas": "number of vLLM containers (1-64)",
    "tensorParallelSize": "GPUs per replica (`--tensor-parallel-size`)",
    "gpus": "GPU ids per replica, e.g. `[[0,1],[2,3]]`; default consecutive ids",
    "namePrefix": "replica containers are `<prefix>0`, `<prefix>1`, ... (DNS-safe)",
    "networkName": "docker network shared by the replicas and nginx",
    "image.prebuilt": f"published vLLM image to run (default `{DEFAULT_GPU_IMAGE}`, "
    f"with backend `cpu` `{DEFAULT_CPU_IMAGE}`)",
    "image.build.context": "vLLM source checkout to build instead (relative to this project)",
    "image.build.dockerfile": "Dockerfile inside the checkout",
    "image.build.target": "build target",
    "image.build.tag": "local tag of the built image",
    "image.build.args": "extra build args (proxy args are added from `proxy`)",
    "image.pullTimeoutMinutes": "how long pulling an image may take (vLLM's are ~10 GB)",
    "image.keepOnDestroy": "keep pulled images on the engine after `pulumi destroy`",
    "hfCache.volume": "named docker volume for the Hugging Face cache",
    "hfCache.hostPath": "host directory instead of a volume (`~` = deploying user's home)",
    "hfCache.keepOnDestroy": "keep the cache volume on `pulumi destroy`",
    "basePort": "replica i is published on `basePort + i`",
    "bindAddress": "host address replica ports are published on",
    "publicHost": "host name used in the output URLs for non-loopback binds",
    "extraArgs": "extra vLLM arguments, one token per item",
    "extraEnv": "extra environment for every replica",
    "proxy.http": "`http_proxy` for builds and replicas",
    "proxy.https": "`https_proxy` for builds and replicas",
    "proxy.no": "`no_proxy` for builds and replicas",
    "fitCheck.enabled": "before the download and any replica, check that the model fits each "
    "replica's GPUs (CPU: the host's memory), with model pools each pool's before its own; "
    "a model that does not stops `pulumi up` ([fit-check.md](fit-check.md))",
    "fitCheck.warnAbovePercent": "warn when the weights and one sequence's KV cache take more "
    "than this share of what vLLM may use (GPU memory x `--gpu-memory-utilization`)",
    "cpu.kvcacheSpaceGb": "`VLLM_CPU_KVCACHE_SPACE` (GiB), CPU backend",
    "cpu.coresPerReplica": "CPU backend: replica i runs on cores `i*k .. i*k+k-1` "
    "(docker cpuset and `VLLM_CPU_OMP_THREADS_BIND`); 0 = no pinning",
    "cpu.cpuSets": 'CPU backend: cores per replica instead, e.g. `["0-3", "4-7"]` '
    "(disjoint; split evenly over tensor-parallel ranks)",
    "readyTimeoutSeconds": "how long the download step, and then the replicas' load, may take",
    "progressIntervalSeconds": "how often the download and readiness steps report while "
    "`pulumi up` waits (at most 30)",
    "compileCache.enabled": "mount vLLM's compile cache (`/root/.cache/vllm`) from a shared "
    "volume, so later starts reuse compiled graphs",
    "compileCache.volume": "named docker volume for vLLM's compile cache "
    "(kept on destroy like `hfCache`)",
    "verifyTimeoutSeconds": "how long the verify step waits for the LB to list the model",
    "healthCheck.intervalSeconds": "docker health check interval (`GET /health`)",
    "healthCheck.timeoutSeconds": "docker health check timeout",
    "healthCheck.retries": "failed checks before a replica is unhealthy",
    "restartPolicy": "docker restart policy of replicas and nginx",
    "shutdownTimeoutSeconds": "vLLM's `--shutdown-timeout` on every replica: on SIGTERM it "
    "finishes the requests it runs for up to this long, then exits (0: aborts them at once)",
    "stopGraceSeconds": "on replace or destroy, how long a replica or nginx may take to stop "
    "before it is killed; at least `shutdownTimeoutSeconds` + 10",
    "rollout.canarySeconds": "an update watches its first wave (the canary) this long under "
    "live traffic against the replicas not yet replaced before it goes on; with `models`, "
    "each pool's first wave against that pool's (the same settings for every pool); "
    "0 = no canary (docs/rolling-updates.md)",
    "rollout.canaryMaxTtftRatio": "the update stops when the canary's TTFT p90 is more than "
    "this many times the old replicas'",
    "rollout.canaryMaxErrorRateIncrease": "the update stops when the canary's share of failed "
    "(5xx) requests exceeds the old replicas' by more than this (0.02 = 2 points)",
    "rollout.canaryMinRequests": "requests each side must serve in the window to be judged",
    "rollout.canaryWithoutTraffic": "too little traffic: `proceed` (say so, go on) or `wait` "
    "(watch on, up to `canaryMaxWaitSeconds`, then stop the update)",
    "rollout.canaryMaxWaitSeconds": "`canaryWithoutTraffic: wait`: how long to wait for traffic",
    "loadBalancer.port": "host port of the load balancer",
    "loadBalancer.bindAddress": "host address the load balancer is published on",
    "loadBalancer.policy": "`least_conn`, `round_robin`, `power_of_two`, `session_affinity`, "
    "`prefix_affinity` (needs nginx's njs module >= 0.7.9)",
    "loadBalancer.affinityHeader": "request header hashed by `session_affinity`",
    "loadBalancer.prefixChars": "`prefix_affinity`: leading characters of the prompt (chat: "
    "system prompt and earliest messages) that pick the replica",
    "loadBalancer.prefixMaxConns": "`prefix_affinity`: requests in flight a replica takes "
    "through its prefixes (nginx `max_conns`); beyond it the next replica on the ring, "
    "and when all are at it, the least busy",
    "loadBalancer.readTimeoutSeconds": "longest silence from a replica (long generations)",
    "loadBalancer.sendTimeoutSeconds": "longest stall sending to a replica or client",
    "loadBalancer.connectTimeoutSeconds": "connect timeout before trying another replica",
    "loadBalancer.maxFails": "failures within the window that take a replica out",
    "loadBalancer.failWindowSeconds": "failure window and time out of rotation (<= 15)",
    "loadBalancer.nextUpstreamTries": "replicas tried per request (0 = all; capped so a "
    "request that kills replicas is not replayed on every one)",
    "loadBalancer.bufferRequests": "read the request body before passing it on, so a "
    "request whose replica fails before answering can be resent (responses always stream)",
    "loadBalancer.retryNonIdempotent": "retry POSTs that got no response on another replica",
    "loadBalancer.keepaliveConnections": "idle keepalive connections to replicas per worker",
    "loadBalancer.maxBodySizeMb": "largest request body (long prompts, images)",
    "loadBalancer.workerConnections": "nginx `worker_connections`",
    "loadBalancer.exposePaths": "vLLM paths besides `/v1/` to expose, e.g. `[/metrics]`",
    "loadBalancer.dynamicResolve": "re-resolve replica names (`resolve`, nginx >= 1.27.3)",
    "loadBalancer.resolver": "DNS server for `dynamicResolve` (docker's embedded DNS)",
    "loadBalancer.image": "nginx image, run as published (the config is uploaded into it)",
    "loadBalancer.name": "nginx container name",
    "loadBalancer.tls": "serve HTTPS with `tlsCertificate` and `tlsKey` (container port 443)",
    "loadBalancer.host": "with `hosts`: the host (its `name`) nginx runs on; default the first",
    "hosts": "Docker engines to spread replicas over, one object per host (see "
    "[multi-host.md](multi-host.md)); without it, one engine (`docker:host`)",
    "hosts[i].name": "the host's name (DNS-safe): in replica names `<prefix>-<name>-<i>`, "
    "resource names and outputs",
    "hosts[i].dockerHost": "its engine: `unix:///var/run/docker.sock` (this machine), "
    "`ssh://user@host`, or `tcp://host:2376` with `tls`",
    "hosts[i].address": "IP or name the load balancer reaches this host's replicas on "
    "(and the host in their URLs)",
    "hosts[i].bindAddress": "address its replica ports are published on (default: `address`; "
    "required if `address` is a name); never `0.0.0.0` by default",
    "hosts[i].replicas": "replicas on this host (default: one per `gpus` / `cpuSets` entry)",
    "hosts[i].gpus": "GPU ids per replica on this host, e.g. `[[0],[1]]`; default consecutive",
    "hosts[i].cpuSets": 'CPU backend: cores per replica on this host, e.g. `["0-3"]`',
    "hosts[i].basePort": "its replica i is published on `basePort + i` (default: `basePort`)",
    "hosts[i].tls.caMaterial": "PEM CA of a `tcp://` engine (pulumi-docker `ca_material`)",
    "hosts[i].tls.certMaterial": "PEM client certificate (`cert_material`)",
    "hosts[i].tls.keyMaterial": "PEM client key (`key_material`), **secret** "
    "(`pulumi config set --secret --path 'hosts[0].tls.keyMaterial' < key.pem`)",
    "hosts[i].tls.certPath": "or a directory with `ca.pem`, `cert.pem`, `key.pem` where "
    "`pulumi up` runs (`cert_path`)",
    "monitoring.enabled": "deploy Prometheus, Grafana and the load balancer's metrics exporter "
    "(see [monitoring.md](monitoring.md))",
    "monitoring.bindAddress": "host address Prometheus' and Grafana's ports are published on",
    "monitoring.keepDataOnDestroy": "keep the Prometheus and Grafana volumes on `pulumi destroy`",
    "monitoring.prometheus.image": "Prometheus image, run as published (its config is uploaded)",
    "monitoring.prometheus.port": "host port of Prometheus (`prometheus_url`)",
    "monitoring.prometheus.name": "Prometheus container name",
    "monitoring.prometheus.volume": "named volume of Prometheus' time series",
    "monitoring.prometheus.scrapeIntervalSeconds": "how often every replica and the load "
    "balancer are scraped",
    "monitoring.prometheus.retentionDays": "how long Prometheus keeps samples",
    "monitoring.grafana.image": "Grafana image, run as published (data source, dashboard and "
    "admin password are uploaded)",
    "monitoring.grafana.port": "host port of Grafana (`grafana_url`)",
    "monitoring.grafana.name": "Grafana container name",
    "monitoring.grafana.volume": "named volume of Grafana's database",
    "monitoring.lbExporter.image": "Python image the load balancer's exporter script runs on",
    "monitoring.lbExporter.name": "exporter container name (nginx sends it one syslog line per "
    "request)",
    "hfToken": "Hugging Face token, **secret** (`pulumi config set --secret`); only the "
    "download step gets it, as a file",
    "apiKey": "API key required on `/v1` (checked by the load balancer and by vLLM), **secret**",
    "tlsCertificate": "PEM certificate (chain) of the load balancer, with `loadBalancer.tls`",
    "tlsKey": "PEM private key of `tlsCertificate`, **secret** "
    "(`pulumi config set --secret tlsKey < server.key`)",
    "grafanaPassword": "Grafana's admin password, **secret**, with `monitoring.enabled` "
    "(`pulumi config set --secret grafanaPassword`)",
}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "string"
    if origin is None:
        name = getattr(annotation, "__name__", str(annotation))
        return {"SecretStr": "secret string", "str": "string", "int": "integer"}.get(name, name)
    if str(origin).endswith("Annotated") or origin.__name__ == "Annotated":
        return _type_name(args[0])
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "map of string"
    if getattr(origin, "__name__", "") == "Literal":
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if len(args) == 1:
        return _type_name(args[0])
    return " or ".join(_type_name(a) for a in args)


def _format(value: Any) -> str:
    if value is None or value == {} or value == ():
        return "-"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{getattr(value, 'value', value)}`"


def _default(field: FieldInfo, parent: BaseModel | None, name: str) -> str:
    if parent is not None:
        return _format(getattr(parent, name))
    if field.default_factory is not None:
        return _format(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "**required**"
    return _format(field.default)


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a list-of-objects key (through `| None` and `Annotated`), else None."""
    origin = get_origin(annotation)
    if origin in (tuple, list):
        args = get_args(annotation)
        first = args[0] if args else None
        return first if isinstance(first, type) and issubclass(first, BaseModel) else None
    for arg in get_args(annotation):
        if arg is not type(None) and (found := _list_item_model(arg)) is not None:
            return found
    return None


def config_rows(
    model: type[BaseModel], prefix: str = "", parent: BaseModel | None = None
) -> list[tuple[str, str, str]]:
    """One row per leaf key; nested defaults come from the parent's default."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        sub = next((a for a in nested if issubclass(a, BaseModel)), None)
        item = _list_item_model(annotation)
        if item is not None:
            # A list of objects ('hosts'): one row per key of an item, `key[i].field`.
            rows.append((key, f"list of objects ({item.__name__.removesuffix('Settings')})", "-"))
            rows.extend(config_rows(item, key + "[i]."))
            continue
        if sub is not None:
            default = getattr(parent, name) if parent is not None else field.default
            rows.extend(
                config_rows(sub, key + ".", default if isinstance(default, BaseModel) else None)
            )
            continue
        rows.append((key, _type_name(annotation), _default(field, parent, name)))
    return rows


POOL_IMAGE = "models[i].image."
# A pool's `image` keys mean what the stack's do, for that pool's replicas.
DESCRIPTIONS.update(
    {
        POOL_IMAGE + key.removeprefix("image."): f"as `{key}`, for this pool (default: "
        "the stack's `image`)"
        for key in list(DESCRIPTIONS)
        if key.startswith("image.")
    }
)


def reference() -> str:
    lines = [
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, type_name, default in config_rows(Settings):
        lines.append(
            f"| `{NAMESPACE}:{key}` | {type_name} | {default} | {DESCRIPTIONS.get(key, '')} |"
        )
    return "\n".join(lines) + "\n"


def current_table(document: str) -> str:
    """The table as it stands between the markers of `document`."""
    start = document.index(START) + len(START)
    return document[start : document.index(END, start)]


def with_table(document: str, table: str) -> str:
    """`document` with `table` between its markers."""
    start = document.index(START) + len(START)
    return document[:start] + table + document[document.index(END, start) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.config.reference",
        description="Print the config reference table generated from the settings models.",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"replace the table in {DOCUMENT.relative_to(PROJECT_DIR)} instead of printing it",
    )
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(reference())
        return 0
    DOCUMENT.write_text(with_table(DOCUMENT.read_text(), reference()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
