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
that pulumi-docker translates those same inputs into the same engine calls.
The mapping follows the provider's source as recorded in docs/provider-inputs.md:
Go durations, force-new versus in-place inputs (`IN_PLACE`; the provider's
Update applies only the restart policy and ignores a changed health check),
`replace_on_changes`, the delete's grace period, and `read_back` (the
provider's Read of the inputs we declare, so `drift()` shows what the next
`up` would change).

Each resource goes to its provider's engine: an explicit `docker.Provider`
(one per host of a multi-host stack) becomes a client for its `host` input,
and resources of the default provider use the engine the applier is given.
Commands reach their engine through the `DOCKER_HOST` of their environment,
as they would under Pulumi.

Provider behaviour it does not model: a provider's TLS inputs (`certPath`,
`*Material`: the test engines are reached over unix sockets); custom
timeouts (nothing is pulled here); `must_run` on refresh (a stopped container would be recreated);
exited containers reading back no ports; `wait`/`wait_timeout`; GPUs (device
requests are refused: this engine has none); BuildKit and the build-context
hash of `docker.Image` (built with the classic builder); `keep_locally` and
image deletion; the engine's own ordering of replacements (this applies the
graph in dependency order and replaces in place, one resource at a time).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
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

from tests.support.pulumi_capture import Declared

_PLACEHOLDER = re.compile(r"@@([^@]+)\.([A-Za-z]+)@@")
INPUTS_LABEL = "vllm-nginx.test/inputs-sha256"
"""Like Pulumi's state: the inputs a container was created from."""


CONTAINER_TYPE = "docker:index/container:Container"

IN_PLACE = frozenset(
    {
        "restart",
        "healthcheck",
        "mustRun",
        "wait",
        "waitTimeout",
        "destroyGraceSeconds",
        "containerReadRefreshTimeoutMilliseconds",
        "cpuShares",
        "memory",
        "memorySwap",
    }
)
"""Container inputs the provider does not mark force-new: a change is an update,
which applies the restart policy and the limits and ignores the rest."""


def _forces_replacement(changed: set[str], resource: Declared) -> bool:
    return any(key not in IN_PLACE or key in resource.replace_on_changes for key in changed)


def _remove(container: Container, grace_seconds: int | None) -> None:
    """The provider's delete: stop within the grace period when one is set, then
    force-remove (without one, the container is killed at once)."""
    if grace_seconds:
        container.stop(timeout=int(grace_seconds))
    container.remove(force=True)


def _upload(container: Container, path: str, content: str, executable: bool) -> None:
    """The provider's upload: one tar entry named by the whole path, copied to `/`,
    so the engine creates missing parent directories (root-owned); mode 0644, or
    0744 when executable."""
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = len(data)
        info.mode = 0o744 if executable else 0o644
        archive.addfile(info, io.BytesIO(data))
    if not container.put_archive("/", buffer.getvalue()):
        raise ApplyError(f"upload of {path} into {container.name} failed")


def _as_read(key: str, value: Any) -> Any:
    """A declared value in the order `read_back` reports it (schema sets sorted)."""
    if key == "securityOpts":
        return sorted(value)
    if key == "capabilities":
        return {"adds": sorted(value.get("adds") or [])}
    return value


def read_back(container: Container) -> dict[str, Any]:
    """The container inputs we declare, as the provider's Read sets them from
    `docker inspect` (camelCase, as Pulumi shows them)."""
    container.reload()
    config = container.attrs["Config"]
    host = container.attrs["HostConfig"]
    read: dict[str, Any] = {
        "command": config.get("Cmd") or [],
        "entrypoints": config.get("Entrypoint") or [],
        "ipcMode": host.get("IpcMode") or "",
        "restart": (host.get("RestartPolicy") or {}).get("Name") or "no",
        "stopSignal": config.get("StopSignal") or "",
        "cpuSet": host.get("CpusetCpus") or "",
        # Sets in the provider's schema: order does not matter.
        "securityOpts": sorted(host.get("SecurityOpt") or []),
        "capabilities": {"adds": sorted(host.get("CapAdd") or [])},
    }
    health = config.get("Healthcheck")
    if health:
        read["healthcheck"] = {
            "tests": health.get("Test") or [],
            "interval": go_duration_string(int(health.get("Interval") or 0)),
            "timeout": go_duration_string(int(health.get("Timeout") or 0)),
            "startPeriod": go_duration_string(int(health.get("StartPeriod") or 0)),
            "startInterval": go_duration_string(int(health.get("StartInterval") or 0)),
            "retries": int(health.get("Retries") or 0),
        }
    return read


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
    deleted: list[str] = field(default_factory=list)


_GO_UNITS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _nanoseconds(duration: str) -> int:
    """A Go duration (`1h0m0s`, `30m0s`, `1m30s`, `500ms`) as the provider parses it."""
    parts = re.findall(r"(\d+)(ms|us|ns|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ApplyError(f"unsupported duration {duration!r}")
    return sum(int(n) * _GO_UNITS[u] for n, u in parts)


def go_duration_string(nanoseconds: int) -> str:
    """Go's `time.Duration.String()` for whole milliseconds: how the provider reads back."""
    if nanoseconds == 0:
        return "0s"
    if nanoseconds < 10**9:
        return f"{nanoseconds // 10**6}ms"
    seconds, rest = divmod(nanoseconds, 10**9)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    frac = f".{rest // 10**6:03d}".rstrip("0") if rest else ""
    text = f"{seconds}{frac}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


PROVIDER_TYPE = "pulumi:providers:docker"


def _provider_client(provider: Declared) -> docker.DockerClient:
    """A client for what the provider's inputs name: `host` (its TLS inputs are
    not mapped: the test engines are reached over unix sockets)."""
    inputs = provider.inputs
    unmapped = [
        key
        for key in ("certPath", "caMaterial", "certMaterial", "keyMaterial", "context")
        if inputs.get(key)
    ]
    if unmapped:
        raise ApplyError(f"provider {provider.name}: {', '.join(unmapped)} not mapped here")
    if not inputs.get("host"):
        raise ApplyError(f"provider {provider.name}: no host")
    return docker.DockerClient(base_url=str(inputs["host"]), timeout=120)


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
        # Explicit docker providers (one per host): a client each, by URN.
        self.clients: dict[str, docker.DockerClient] = {}
        self.command_env = dict(command_env or {})
        self._lock = threading.Lock()
        # Pulumi keeps a command's inputs in its state and runs `create` again
        # only when they change; containers keep theirs in a label instead.
        self._command_state: dict[str, tuple[str, dict[str, str]]] = {}
        # The inputs each command last ran with: its `delete` runs with them.
        self.command_inputs: dict[str, dict[str, Any]] = {}
        # The inputs each container was last applied with, as Pulumi's state
        # keeps them (an in-place update records new inputs the engine may ignore).
        self.container_state: dict[str, dict[str, Any]] = {}
        # The provider each container was made with (None: the default one): a
        # container no longer declared is deleted through it, as Pulumi deletes
        # a removed resource with the provider its state names.
        self.container_provider: dict[str, Declared | None] = {}
        self.updated_in_place: list[str] = []
        self.deleted_commands: list[str] = []
        # What each command's `delete` printed (a drain says how it ended).
        self.delete_outputs: dict[str, str] = {}

    def carry_state_from(self, previous: Applier) -> None:
        """Start from what an earlier apply left, as Pulumi starts from its state."""
        self.container_state = dict(previous.container_state)
        self.container_provider = dict(previous.container_provider)
        self._command_state = dict(previous._command_state)
        self.command_inputs = dict(previous.command_inputs)

    # -- providers ---------------------------------------------------------------

    def client_for(self, resource: Declared) -> docker.DockerClient:
        """The engine of the resource's provider: its explicit `docker.Provider`'s
        `host`, or, for the default provider, the engine this applier was given.

        A provider reference is `<provider urn>::<provider id>`; the URN itself
        contains `::`, so the id is what follows the last one.
        """
        provider = self._provider_of(resource)
        return self.client if provider is None else self._engine(provider)

    def _provider_of(self, resource: Declared) -> Declared | None:
        urn = resource.provider.rsplit("::", 1)[0] if resource.provider else ""
        provider = self.by_urn.get(urn)
        return provider if provider is not None and provider.type == PROVIDER_TYPE else None

    def _engine(self, provider: Declared) -> docker.DockerClient:
        with self._lock:
            if provider.urn not in self.clients:
                self.clients[provider.urn] = _provider_client(provider)
            return self.clients[provider.urn]

    # -- graph -----------------------------------------------------------------

    def _deps(self, resource: Declared) -> set[str]:
        deps = {urn for urn in resource.dependencies if urn in self.by_urn}
        provider = self._provider_of(resource)
        if provider is not None:
            deps.add(provider.urn)
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
        self._delete_undeclared(applied)
        return applied

    def _delete_undeclared(self, applied: Applied) -> None:
        """What the previous apply made and this program no longer declares goes last,
        as Pulumi deletes removed resources after every create and update: commands
        first (their `delete` runs), then containers (with their grace period)."""
        declared = {r.name for r in self.resources}
        for name in [n for n in self.command_inputs if n not in declared]:
            self._delete_command(name)
            applied.deleted.append(name)
        for name in [n for n in self.container_state if n not in declared]:
            state = self.container_state.pop(name)
            provider = self.container_provider.pop(name, None)
            client = self.client if provider is None else self._engine(provider)
            with suppress(NotFound):
                _remove(client.containers.get(state["name"]), state.get("destroyGraceSeconds"))
            applied.deleted.append(name)

    def _apply_one(self, resource: Declared, applied: Applied) -> None:
        inputs = self._resolve(resource.inputs, applied)
        started = time.monotonic()
        handler: dict[str, Callable[[Declared, dict[str, Any], Applied], dict[str, str]]] = {
            "docker:index/network:Network": self._network,
            "docker:index/volume:Volume": self._volume,
            "docker:index/remoteImage:RemoteImage": self._remote_image,
            "docker:index/image:Image": self._image,
            CONTAINER_TYPE: self._container,
            "command:local:Command": self._command,
            PROVIDER_TYPE: self._provider,
        }
        if resource.type not in handler:
            raise ApplyError(f"no mapping for {resource.type}")
        outputs = handler[resource.type](resource, inputs, applied)
        with self._lock:
            applied.outputs[resource.name] = outputs
            applied.timings[resource.name] = Timing(started, time.monotonic())

    def _provider(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        # Pulumi's engine configures a provider before any of its resources;
        # here that is reaching its engine once.
        self._engine(resource).ping()
        applied.unchanged.append(resource.name)
        return {"id": resource.name}

    def _network(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        name = inputs["name"]
        client = self.client_for(resource)
        existing = client.networks.list(names=[name])
        if existing:
            applied.unchanged.append(resource.name)
            return {"id": existing[0].id or "", "name": name}
        network = client.networks.create(name, driver="bridge")
        applied.created.append(resource.name)
        return {"id": network.id or "", "name": name}

    def _volume(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        name = inputs["name"]
        client = self.client_for(resource)
        try:
            volume = client.volumes.get(name)
            applied.unchanged.append(resource.name)
        except NotFound:
            volume = client.volumes.create(name)
            applied.created.append(resource.name)
        return {"id": volume.id or name, "name": name}

    def _remote_image(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        # No registry is reachable here: the image must already be local (as
        # pulumi-docker finds it with keep_locally and skips the pull).
        try:
            image = self.client_for(resource).images.get(inputs["name"])
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
        image, _logs = self.client_for(resource).images.build(
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
        previous_inputs = self.container_state.get(resource.name)
        if previous_inputs is not None:
            # ignoreChanges: the engine keeps the old value of those inputs.
            for key in resource.ignore_changes:
                if key in previous_inputs:
                    inputs[key] = previous_inputs[key]
                else:
                    inputs.pop(key, None)
        digest = _inputs_hash(inputs)
        client = self.client_for(resource)
        try:
            existing = client.containers.get(name)
        except NotFound:
            existing = None
        if existing is not None:
            previous = self.container_state.get(resource.name)
            if previous == inputs or (
                previous is None and existing.labels.get(INPUTS_LABEL) == digest
            ):
                applied.unchanged.append(resource.name)
                return {"id": existing.id or "", "name": name}
            changed = {
                k for k in {*inputs, *(previous or {})} if (previous or {}).get(k) != inputs.get(k)
            }
            if previous is not None and not _forces_replacement(changed, resource):
                self._update_in_place(existing, inputs, changed)
                self.container_state[resource.name] = inputs
                self.updated_in_place.append(resource.name)
                applied.unchanged.append(resource.name)
                return {"id": existing.id or "", "name": name}
            # Replace, deleting first (delete_before_replace), with the grace
            # period the provider gives a container it removes.
            if not resource.delete_before_replace:
                raise ApplyError(f"{name}: would need create-before-delete with a fixed name")
            self._condemn_dependents(resource)
            _remove(existing, (previous or inputs).get("destroyGraceSeconds"))
        container = self._create_container(inputs, digest, client)
        self.container_state[resource.name] = inputs
        self.container_provider[resource.name] = self._provider_of(resource)
        applied.created.append(resource.name)
        return {"id": container.id or "", "name": name}

    def _update_in_place(
        self, container: Container, inputs: dict[str, Any], changed: set[str]
    ) -> None:
        """What the provider's Update does: the restart policy (and limits we do not
        declare) through `docker update`; every other in-place field, the health
        check among them, only changes the state, not the engine."""
        if "restart" in changed:
            container.update(restart_policy={"Name": inputs.get("restart") or "no"})  # type: ignore[arg-type]

    def _create_container(
        self, inputs: dict[str, Any], digest: str, client: docker.DockerClient
    ) -> Container:
        name = inputs["name"]
        if inputs.get("gpus") or inputs.get("deviceRequests"):
            requested = inputs.get("deviceRequests") or inputs["gpus"]
            raise ApplyError(f"{name}: GPUs requested ({requested}) but this engine has none")
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
            if _nanoseconds(health.get("startInterval", "0s")):
                raise ApplyError(f"{name}: startInterval needs Docker >= 25; not mapped here")
            healthcheck = {
                "test": health["tests"],
                "interval": _nanoseconds(health.get("interval", "0s")),
                "timeout": _nanoseconds(health.get("timeout", "0s")),
                "retries": int(health.get("retries", 0)),
                "start_period": _nanoseconds(health.get("startPeriod", "0s")),
            }
        networking_config = None
        if first_network is not None:
            networking_config = {
                first_network["name"]: client.api.create_endpoint_config(
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
        optional = {
            "entrypoints": "entrypoint",
            "ipcMode": "ipc_mode",
            "cpuSet": "cpuset_cpus",
            "securityOpts": "security_opt",
            "stopSignal": "stop_signal",
        }
        for key, kwarg in optional.items():
            if inputs.get(key):
                kwargs[kwarg] = inputs[key]
        if inputs.get("capabilities"):
            kwargs["cap_add"] = inputs["capabilities"].get("adds") or None
            kwargs["cap_drop"] = inputs["capabilities"].get("drops") or None
        if inputs.get("shmSize"):
            kwargs["shm_size"] = f"{int(inputs['shmSize'])}m"
        if inputs.get("restart") and inputs["restart"] != "no":
            kwargs["restart_policy"] = {"Name": inputs["restart"]}
        if first_network is not None:
            kwargs["network"] = first_network["name"]
            kwargs["networking_config"] = networking_config
        container: Container = client.containers.create(**kwargs)
        for upload in inputs.get("uploads") or []:
            _upload(container, upload["file"], upload["content"], bool(upload.get("executable")))
        container.start()
        return container

    def _run_shell(self, script: str, inputs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.command_env, **(inputs.get("environment") or {})}
        return subprocess.run(
            script,
            shell=True,
            cwd=inputs.get("dir"),
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def _delete_command(self, name: str) -> None:
        """pulumi-command's delete: run the `delete` script with the inputs it was
        created with, then forget the command (it is created again if still declared)."""
        with self._lock:
            inputs = self.command_inputs.pop(name, None)
            self._command_state.pop(name, None)
        if inputs is None or not inputs.get("delete"):
            return
        result = self._run_shell(inputs["delete"], inputs)
        if result.returncode != 0:
            raise ApplyError(
                f"delete of {name} failed (exit {result.returncode}): {inputs['delete']}\n"
                f"{result.stderr.strip()}"
            )
        with self._lock:
            self.deleted_commands.append(name)
            self.delete_outputs[name] = result.stdout

    def _condemn_dependents(self, resource: Declared) -> None:
        """Before a delete-before-replace, the engine deletes the dependents that
        the replacement would replace (pulumi/pulumi step_generator.go,
        calculateDependentReplacements): here, the commands whose inputs use this
        resource's outputs (a trigger on its id), deleted in reverse order."""
        marker = f"@@{resource.name}."
        dependents = [
            d
            for d in self.resources
            if d.type == "command:local:Command"
            and marker in json.dumps(d.inputs)
            and d.name in self.command_inputs
        ]
        for dependent in reversed(dependents):
            self._delete_command(dependent.name)

    def _command(
        self, resource: Declared, inputs: dict[str, Any], applied: Applied
    ) -> dict[str, str]:
        digest = _inputs_hash(inputs)
        previous = self._command_state.get(resource.name)
        if previous is not None and previous[0] == digest:
            applied.unchanged.append(resource.name)
            return previous[1]
        old = self.command_inputs.get(resource.name)
        replaced = old is not None and old.get("triggers") != inputs.get("triggers")
        if replaced and resource.delete_before_replace:
            self._delete_command(resource.name)
        result = self._run_shell(inputs["create"], inputs)
        if result.returncode != 0:
            raise ApplyError(
                f"command failed (exit {result.returncode}): {inputs['create']}\n"
                f"{result.stderr.strip()}"
            )
        if replaced and not resource.delete_before_replace and old is not None:
            # Create-before-delete: the old command's delete runs after the new create.
            with self._lock:
                self.command_inputs[resource.name] = old
            self._delete_command(resource.name)
        applied.created.append(resource.name)
        outputs = {"id": resource.name, "stdout": result.stdout.strip(), "stderr": result.stderr}
        with self._lock:
            self._command_state[resource.name] = (digest, outputs)
            self.command_inputs[resource.name] = inputs
        return outputs

    # -- read back ---------------------------------------------------------------

    def drift(self) -> dict[str, dict[str, tuple[Any, Any]]]:
        """Per container, the inputs whose read-back differs from what was declared:
        what the next `pulumi up` would show as a change."""
        found: dict[str, dict[str, tuple[Any, Any]]] = {}
        for resource in self.resources:
            if resource.type != CONTAINER_TYPE or resource.name not in self.container_state:
                continue
            declared = self.container_state[resource.name]
            container = self.client_for(resource).containers.get(declared["name"])
            read = read_back(container)
            diffs = {
                key: (declared.get(key), value)
                for key, value in read.items()
                if key in declared and _as_read(key, declared[key]) != value
            }
            if diffs:
                found[resource.name] = diffs
        return found

    # -- destroy ---------------------------------------------------------------

    def destroy(self) -> list[str]:
        """Delete in reverse graph order; keep what `retain_on_delete` keeps."""
        kept: list[str] = []
        for resource in reversed(self.order()):
            name = str(resource.inputs.get("name"))
            if resource.retain_on_delete:
                kept.append(resource.name)
                continue
            client = self.client_for(resource)
            if resource.type == "command:local:Command":
                self._delete_command(resource.name)
            elif resource.type == CONTAINER_TYPE:
                with suppress(NotFound):
                    state = self.container_state.get(resource.name, resource.inputs)
                    _remove(client.containers.get(name), state.get("destroyGraceSeconds"))
            elif resource.type == "docker:index/network:Network":
                for network in client.networks.list(names=[name]):
                    network.remove()
            elif resource.type == "docker:index/volume:Volume":
                with suppress(NotFound):
                    client.volumes.get(name).remove(force=True)
        return kept
