"""Apply what the program declared to a real Docker engine, as Pulumi would.

The Pulumi CLI and the pulumi-docker plugin cannot be installed here, so this
stands in for them, and only for them: it takes the resources exactly as the
program registered them (captured by `pulumi_capture`: type, inputs,
dependencies, options) and performs each with the Docker SDK, every resource
as soon as all of its dependencies are done, several at once where the graph
allows, the way Pulumi's engine schedules an update. `local.Command` resources
run their `create` command with their `environment`, as pulumi-command does.

What this proves: the declared graph and inputs make a working deployment on a
real engine (ordering, ports, network, volume, health checks, uploads, the
rendered nginx config, the gate and verify commands). What it cannot prove:
that pulumi-docker translates those same inputs into the same engine calls;
the mapping below follows pulumi-docker's documented meaning of each input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import NotFound
from docker.models.containers import Container

from tests.support.docker_engine import put_file
from tests.support.pulumi_capture import Declared

_PLACEHOLDER = re.compile(r"@@([^@]+)\.([A-Za-z]+)@@")
INPUTS_LABEL = "vllm-nginx.test/inputs-sha256"
"""Like Pulumi's state: the inputs a container was created from."""


class ApplyError(RuntimeError):
    """A resource failed; the message says which and why."""


@dataclass
class Timing:
    started: float
    finished: float


@dataclass
class Applied:
    """What one apply did: real outputs by resource name, and when each ran."""

    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _nanoseconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if not match:
        raise ApplyError(f"unsupported duration {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}[unit]


def _inputs_hash(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


class Applier:
    """Creates, re-applies and destroys one captured program on an engine."""

    def __init__(
        self,
        client: docker.DockerClient,
        declared: Iterable[Declared],
        *,
        command_env: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.resources = [d for d in declared if d.custom]
        self.by_urn = {d.urn: d for d in self.resources}
        self.command_env = dict(command_env or {})
        self._lock = threading.Lock()
        # Pulumi keeps a command's inputs in its state and runs `create` again
        # only when they change; containers keep theirs in a label instead.
        self._command_state: dict[str, tuple[str, dict[str, str]]] = {}

    # -- graph -----------------------------------------------------------------

    def _deps(self, resource: Declared) -> set[str]:
        deps = {urn for urn in resource.dependencies if urn in self.by_urn}
        text = json.dumps(resource.inputs)
        for name, _output in _PLACEHOLDER.findall(text):
            deps |= {d.urn for d in self.resources if d.name == name}
        return deps

    def order(self) -> list[Declared]:
        """A topological order (creation order; reverse it to delete)."""
        done: set[str] = set()
        ordered: list[Declared] = []
        pending = list(self.resources)
        while pending:
            ready = [r for r in pending if self._deps(r) <= done]
            if not ready:
                raise ApplyError("dependency cycle among " + ", ".join(r.name for r in pending))
            for resource in ready:
                ordered.append(resource)
                done.add(resource.urn)
                pending.remove(resource)
        return ordered

    # -- apply -----------------------------------------------------------------

    def _resolve(self, value: Any, applied: Applied) -> Any:
        if isinstance(value, str):

            def sub(match: re.Match[str]) -> str:
                name, output = match.group(1), match.group(2)
                return applied.outputs[name][output]

            return _PLACEHOLDER.sub(sub, value)
        if isinstance(value, list):
            return [self._resolve(v, applied) for v in value]
        if isinstance(value, dict):
            return {k: self._resolve(v, applied) for k, v in value.items()}
        return value

    def apply(self, *, parallel: int = 8) -> Applied:
        """Create (or keep, when inputs are unchanged) every resource in graph order."""
        applied = Applied()
        done: set[str] = set()
        running: dict[Future[None], Declared] = {}
        pending = list(self.resources)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            while pending or running:
                for resource in [r for r in pending if self._deps(r) <= done]:
                    pending.remove(resource)
                    running[pool.submit(self._apply_one, resource, applied)] = resource
                if not running:
                    raise ApplyError("dependency cycle among " + ", ".join(r.name for r in pending))
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    resource = running.pop(future)
                    error = future.exception()
                    if error is not None:
                        for other in running:
                            other.cancel()
                        raise ApplyError(f"{resource.type} {resource.name}: {error}") from error
                    done.add(resource.urn)
        return applied

    def _apply_one(self, resource: Declared, applied: Applied) -> None:
        inputs = self._resolve(resource.inputs, applied)
        started = time.monotonic()
        handler: dict[str, Callable[[Declared, dict[str, Any], Applied], dict[str, str]]] = {
            "docker:index/network:Network": self._network,
            "docker:index/volume:Volume": self._volume,
            "docker:index/remoteImage:RemoteImage": self._remote_image,
            "docker:index/image:Image": self._image,
            "docker:index/container:Container": self._container,
            "command:local:Command": self._command,
        }
        if resource.type not in handler:
            raise ApplyError(f"no mapping for {resource.type}")
        outputs = handler[resource.type](resource, inputs, applied)
        with self._lock:
            applied.outputs[resource.name] = outputs
            applied.timings[resource.name] = Timing(started, time.monotonic())

    def _network(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        name = inputs["name"]
        existing = self.client.networks.list(names=[name])
        if existing:
            applied.unchanged.append(resource.name)
            return {"id": existing[0].id or "", "name": name}
        network = self.client.networks.create(name, driver="bridge")
        applied.created.append(resource.name)
        return {"id": network.id or "", "name": name}

    def _volume(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        name = inputs["name"]
        try:
            volume = self.client.volumes.get(name)
            applied.unchanged.append(resource.name)
        except NotFound:
            volume = self.client.volumes.create(name)
            applied.created.append(resource.name)
        return {"id": volume.id or name, "name": name}

    def _remote_image(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        # No registry is reachable here: the image must already be local (as
        # pulumi-docker finds it with keep_locally and skips the pull).
        try:
            image = self.client.images.get(inputs["name"])
        except NotFound:
            raise ApplyError(
                f"image {inputs['name']} is not local and nothing can be pulled"
            ) from None
        applied.unchanged.append(resource.name)
        return {"id": image.id or "", "imageId": image.id or "", "repoDigest": image.id or ""}

    def _image(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        build = inputs["build"]
        context = build["context"]
        dockerfile = os.path.relpath(build.get("dockerfile", "Dockerfile"), context)
        image, _logs = self.client.images.build(
            path=context,
            dockerfile=dockerfile,
            buildargs=build.get("args") or {},
            target=build.get("target"),
            tag=inputs["imageName"],
            rm=True,
        )
        applied.created.append(resource.name)
        return {
            "id": image.id or "",
            "repoDigest": image.id or "",
            "imageName": inputs["imageName"],
        }

    def _container(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        name = inputs["name"]
        digest = _inputs_hash(inputs)
        try:
            existing = self.client.containers.get(name)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.labels.get(INPUTS_LABEL) == digest:
                applied.unchanged.append(resource.name)
                return {"id": existing.id or "", "name": name}
            # Inputs changed: replace, deleting first (delete_before_replace).
            if not resource.delete_before_replace:
                raise ApplyError(f"{name}: would need create-before-delete with a fixed name")
            existing.remove(force=True)
        if inputs.get("gpus"):
            raise ApplyError(f"{name}: GPUs requested ({inputs['gpus']}) but this engine has none")
        networks = inputs.get("networksAdvanced") or []
        first_network = networks[0] if networks else None
        volumes: dict[str, dict[str, str]] = {}
        for volume in inputs.get("volumes") or []:
            source = volume.get("volumeName") or volume["hostPath"]
            volumes[source] = {"bind": volume["containerPath"], "mode": "rw"}
        ports = {
            f"{int(p['internal'])}/tcp": (p.get("ip", "0.0.0.0"), int(p["external"]))
            for p in inputs.get("ports") or []
        }
        health = inputs.get("healthcheck")
        healthcheck = None
        if health:
            healthcheck = {
                "test": health["tests"],
                "interval": _nanoseconds(health.get("interval", "30s")),
                "timeout": _nanoseconds(health.get("timeout", "30s")),
                "retries": int(health.get("retries", 3)),
                "start_period": _nanoseconds(health.get("startPeriod", "0s")),
            }
        networking_config = None
        if first_network is not None:
            networking_config = {
                first_network["name"]: self.client.api.create_endpoint_config(
                    aliases=first_network.get("aliases") or None
                )
            }
        kwargs: dict[str, Any] = {
            "image": inputs["image"],
            "name": name,
            "command": inputs.get("command"),
            "environment": inputs.get("envs") or [],
            "ports": ports,
            "volumes": volumes,
            "healthcheck": healthcheck,
            "labels": {INPUTS_LABEL: digest},
            "detach": True,
        }
        if first_network is not None:
            kwargs["network"] = first_network["name"]
            kwargs["networking_config"] = networking_config
        if inputs.get("ipcMode"):
            kwargs["ipc_mode"] = inputs["ipcMode"]
        if inputs.get("shmSize"):
            kwargs["shm_size"] = f"{int(inputs['shmSize'])}m"
        if inputs.get("restart") and inputs["restart"] != "no":
            kwargs["restart_policy"] = {"Name": inputs["restart"]}
        container: Container = self.client.containers.create(**kwargs)
        for upload in inputs.get("uploads") or []:
            put_file(container, upload["file"], upload["content"])
        container.start()
        applied.created.append(resource.name)
        return {"id": container.id or "", "name": name}

    def _command(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        digest = _inputs_hash(inputs)
        previous = self._command_state.get(resource.name)
        if previous is not None and previous[0] == digest:
            applied.unchanged.append(resource.name)
            return previous[1]
        env = {**os.environ, **self.command_env, **(inputs.get("environment") or {})}
        result = subprocess.run(
            inputs["create"],
            shell=True,
            cwd=inputs.get("dir"),
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise ApplyError(
                f"command failed (exit {result.returncode}): {inputs['create']}\n"
                f"{result.stderr.strip()}"
            )
        applied.created.append(resource.name)
        outputs = {"id": resource.name, "stdout": result.stdout.strip(), "stderr": result.stderr}
        with self._lock:
            self._command_state[resource.name] = (digest, outputs)
        return outputs

    # -- destroy ---------------------------------------------------------------

    def destroy(self) -> list[str]:
        """Delete in reverse graph order; keep what `retain_on_delete` keeps."""
        kept: list[str] = []
        for resource in reversed(self.order()):
            name = str(resource.inputs.get("name"))
            if resource.retain_on_delete:
                kept.append(resource.name)
                continue
            if resource.type == "docker:index/container:Container":
                with suppress(NotFound):
                    self.client.containers.get(name).remove(force=True)
            elif resource.type == "docker:index/network:Network":
                for network in self.client.networks.list(names=[name]):
                    network.remove()
            elif resource.type == "docker:index/volume:Volume":
                with suppress(NotFound):
                    self.client.volumes.get(name).remove(force=True)
        return kept
