"""What the real provider asks of the Docker engine, through docker-py's APIClient.

Each function follows one provider function of terraform-provider-docker
v4.5.0 (`internal/provider/`, tag `5074970c`); citations use the abbreviations
of docs/provider-inputs.md: `CF` = resource_docker_container_funcs.go,
`CS` = resource_docker_container_structures.go, `NF` =
resource_docker_network_funcs.go, `V` = resource_docker_volume.go, `IF` =
resource_docker_image_funcs.go, `P` = provider.go, `CFG` = config.go. The Go
client it uses (github.com/docker/docker/client, "MB client/") adds a few rules
of its own, cited where they apply. Values are plain Python with Pulumi's
property names (see `schema`).

Where this stand-in differs from the provider it says so; the module-level
summary is in `tests/support/docker_provider/__init__.py`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import docker
import docker.errors
from docker.tls import TLSConfig
from docker.types import IPAMConfig

from tests.support.docker_provider.godur import format_duration, parse_duration

MIB = 1024 * 1024
DEFAULT_HOST = "unix:///var/run/docker.sock"
HTTP_TIMEOUT = 3600
"""docker-py's per-request timeout; the provider bounds calls by the operation's
context instead (20 min by default, C:12-14), which the engine enforces here."""


class ProviderError(RuntimeError):
    """An error the provider reports as a failed operation."""


class InitFailed(ProviderError):
    """A create that failed after ContainerCreate: the container exists and is kept.

    The provider sets the ID right after ContainerCreate (CF:456-460) and returns
    the start's error after it (CF:584-588); Terraform keeps such a resource, and
    the bridge answers with the partial state and the error as an init error
    (BR:1361-1376, 1412-1414, 2073-2081), which the engine keeps in its state."""

    def __init__(self, container_id: str, message: str) -> None:
        super().__init__(message)
        self.container_id = container_id


def daemon_error(exc: docker.errors.APIError) -> str:
    """How the Go client words an error answer: `Error response from daemon: <message>`
    (moby client/request.go, `checkResponseErr`)."""
    return f"Error response from daemon: {exc.explanation or exc}"


def _ignorable(error: Exception, *fragments: str) -> bool:
    """containsIgnorableErrorMessage (internal/provider/helpers.go)."""
    return any(fragment in str(error) for fragment in fragments)


def _api_at_least(api: docker.APIClient, version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    return parts(str(api.api_version)) >= parts(version)


# -- the provider's client -----------------------------------------------------


@dataclass
class EngineConfig:
    """The provider configuration (P:44-101): `host` defaults to DOCKER_HOST, then
    the unix socket (P:45-58); the TLS inputs default to DOCKER_CA_MATERIAL,
    DOCKER_CERT_MATERIAL, DOCKER_KEY_MATERIAL, DOCKER_CERT_PATH (P:78-101)."""

    host: str = ""
    context: str = ""
    ssh_opts: list[str] = field(default_factory=list)
    ca_material: str = ""
    cert_material: str = ""
    key_material: str = ""
    cert_path: str = ""
    disable_docker_daemon_check: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, Any], env: Mapping[str, str]) -> EngineConfig:
        def text(key: str, variable: str) -> str:
            value = args.get(key)
            if isinstance(value, str) and value:
                return value
            return env.get(variable, "")

        ssh = args.get("sshOpts")
        if isinstance(ssh, str):
            # Provider inputs that are not strings arrive JSON-encoded
            # (pulumi_docker/provider.py:255-261); config values are strings.
            ssh = json.loads(ssh) if ssh else []
        if ssh is None and env.get("DOCKER_SSH_OPTS"):
            ssh = env["DOCKER_SSH_OPTS"].split()  # P:65-77
        check = args.get("disableDockerDaemonCheck")
        return cls(
            host=text("host", "DOCKER_HOST") or DEFAULT_HOST,
            context=text("context", "DOCKER_CONTEXT"),
            ssh_opts=[str(s) for s in ssh or []],
            ca_material=text("caMaterial", "DOCKER_CA_MATERIAL"),
            cert_material=text("certMaterial", "DOCKER_CERT_MATERIAL"),
            key_material=text("keyMaterial", "DOCKER_KEY_MATERIAL"),
            cert_path=text("certPath", "DOCKER_CERT_PATH"),
            disable_docker_daemon_check=check in (True, "true"),
        )


def make_client(config: EngineConfig) -> docker.APIClient:
    """ProviderConfig.MakeClient (CFG:120-201): PEM materials (cert and key both,
    and not with cert_path; no CA means no verification, CFG:66-89), else
    cert_path's ca.pem/cert.pem/key.pem, else ssh://, else the plain host; then
    a ping unless disabled. API version negotiated, as WithAPIVersionNegotiation."""
    if config.context:
        raise ProviderError("provider input 'context' is not mapped by the test provider")
    tls: TLSConfig | bool = False
    if config.cert_material or config.key_material:
        if not (config.cert_material and config.key_material):
            raise ProviderError("cert_material, and key_material must be specified")
        if config.cert_path:
            raise ProviderError("cert_path must not be specified")
        folder = tempfile.mkdtemp(prefix="pulumi-docker-tls-")
        paths = {}
        for name, text in (
            ("cert.pem", config.cert_material),
            ("key.pem", config.key_material),
            ("ca.pem", config.ca_material),
        ):
            if not text:
                continue
            path = os.path.join(folder, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(text)
            paths[name] = path
        tls = TLSConfig(
            client_cert=(paths["cert.pem"], paths["key.pem"]),
            ca_cert=paths.get("ca.pem"),
            verify=bool(config.ca_material),
        )
    elif config.cert_path:
        tls = TLSConfig(
            client_cert=(
                os.path.join(config.cert_path, "cert.pem"),
                os.path.join(config.cert_path, "key.pem"),
            ),
            ca_cert=os.path.join(config.cert_path, "ca.pem"),
            verify=True,
        )
    elif config.host.startswith("ssh://") and config.ssh_opts:
        raise ProviderError("provider input 'sshOpts' is not mapped by the test provider")
    api = docker.APIClient(
        base_url=config.host, version="auto", tls=tls, timeout=HTTP_TIMEOUT, max_pool_size=32
    )
    if not config.disable_docker_daemon_check:
        try:
            api.ping()
        except Exception as exc:
            raise ProviderError(
                f"Error pinging Docker server, please make sure that {config.host} is "
                f"reachable and has a  '_ping' endpoint. Error: {exc}"
            ) from exc
    return api


# -- docker_container ------------------------------------------------------------


def _normalize_caps(caps: list[str]) -> list[str]:
    """MB client/container_create.go normalizeCapabilities: upper-case, `CAP_`
    prefix (except ALL), duplicates dropped, sorted. The Go client does this to
    every ContainerCreate; docker-py does not, so it is done here."""
    out: set[str] = set()
    for cap in caps:
        cap = cap.upper()
        if cap != "ALL" and not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        out.add(cap)
    return sorted(out)


def _ports(
    ports: list[Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    """portSetToDockerPorts (CS:228-258)."""
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        key = f"{int(port['internal'])}/{port.get('protocol') or 'tcp'}"
        exposed[key] = {}
        external = port.get("external")
        binding = {
            "HostIp": str(port.get("ip") or ""),
            "HostPort": str(int(external)) if external else "",
        }
        bindings.setdefault(key, []).append(binding)
    return exposed, bindings


def _volumes(volumes: list[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str], list[str]]:
    """volumeSetToDockerVolumes (CS:289-329)."""
    mounts: dict[str, Any] = {}
    binds: list[str] = []
    from_containers: list[str] = []
    for volume in volumes:
        from_container = volume.get("fromContainer") or ""
        path = volume.get("containerPath") or ""
        source = volume.get("hostPath") or volume.get("volumeName") or ""
        if not from_container and not path:
            raise ProviderError("volume entry without container path or source container")
        if from_container and path:
            raise ProviderError("both a container and a path specified in a volume entry")
        if from_container:
            from_containers.append(from_container)
        elif source:
            mode = "ro" if volume.get("readOnly") else "rw"
            if volume.get("selinuxRelabel"):
                mode += "," + str(volume["selinuxRelabel"])
            mounts[path] = {}
            binds.append(f"{source}:{path}:{mode}")
        else:
            mounts[path] = {}
    return mounts, binds, from_containers


def _parse_system_paths(opts: list[str]) -> tuple[list[str], list[str] | None]:
    """parseSystemPaths (CF:691-703): `systempaths=unconfined` is handled client-side."""
    kept = [o for o in opts if o != "systempaths=unconfined"]
    return kept, ([] if len(kept) != len(opts) else None)


def container_body(inputs: Mapping[str, Any], api_version_ok_144: bool) -> dict[str, Any]:
    """The ContainerCreate request the provider sends (CF:43-455), Config and
    HostConfig as the Go client marshals them."""
    image = str(inputs["image"])
    config: dict[str, Any] = {
        "Image": image,
        "Hostname": inputs.get("hostname") or "",
        "Domainname": inputs.get("domainname") or "",
        "Tty": bool(inputs.get("tty")),
        "OpenStdin": bool(inputs.get("stdinOpen")),
        "StopSignal": inputs.get("stopSignal") or "",
    }
    if inputs.get("stopTimeout") is not None:
        config["StopTimeout"] = int(inputs["stopTimeout"])
    if inputs.get("envs"):
        config["Env"] = list(dict.fromkeys(inputs["envs"]))
    if inputs.get("command"):
        config["Cmd"] = list(inputs["command"])
        if any(part == "" for part in config["Cmd"]):
            raise ProviderError("values for command may not be empty")  # CF:84-88
    if inputs.get("entrypoints"):
        config["Entrypoint"] = list(inputs["entrypoints"])
    if inputs.get("user"):
        config["User"] = inputs["user"]
    exposed, bindings = _ports(list(inputs.get("ports") or []))
    if exposed:
        config["ExposedPorts"] = exposed
    if inputs.get("workingDir"):
        config["WorkingDir"] = inputs["workingDir"]
    mounts, binds, from_containers = _volumes(list(inputs.get("volumes") or []))
    if mounts:
        config["Volumes"] = mounts
    if inputs.get("labels"):
        config["Labels"] = {str(x["label"]): str(x["value"]) for x in inputs["labels"]}
    health = inputs.get("healthcheck")
    if health:
        # CF:139-162: parse errors are ignored there (`_`), validation caught them.
        config["Healthcheck"] = {
            "Test": list(health.get("tests") or []),
            "Interval": parse_duration(str(health.get("interval") or "0s")),
            "Timeout": parse_duration(str(health.get("timeout") or "0s")),
            "StartPeriod": parse_duration(str(health.get("startPeriod") or "0s")),
            "StartInterval": parse_duration(str(health.get("startInterval") or "0s")),
            "Retries": int(health.get("retries") or 0),
        }
        if config["Healthcheck"]["StartInterval"] and not api_version_ok_144:
            # MB client/container_create.go: NewVersionError(1.44, "specify
            # health-check start interval") when StartInterval != 0.
            raise ProviderError(
                '"specify health-check start interval" requires API version 1.44, '
                "but the Docker daemon API version is older"
            )
    host: dict[str, Any] = {
        "Privileged": bool(inputs.get("privileged")),
        "PublishAllPorts": bool(inputs.get("publishAllPorts")),
        "RestartPolicy": {
            "Name": inputs.get("restart") or "",
            "MaximumRetryCount": int(inputs.get("maxRetryCount") or 0),
        },
        "Runtime": "",
        "Mounts": [],
        "AutoRemove": bool(inputs.get("rm")),
        "ReadonlyRootfs": bool(inputs.get("readOnly")),
        "LogConfig": {"Type": inputs.get("logDriver") or ""},
        # Always explicit (CF:444-445): false when unset, not the daemon's default.
        "Init": bool(inputs.get("init")),
    }
    if bindings:
        host["PortBindings"] = bindings
    if binds:
        host["Binds"] = binds
    if from_containers:
        host["VolumesFrom"] = from_containers
    caps = inputs.get("capabilities")
    if caps:
        host["CapAdd"] = _normalize_caps(list(caps.get("adds") or []))
        host["CapDrop"] = _normalize_caps(list(caps.get("drops") or []))
    requests = inputs.get("deviceRequests")
    if requests:
        host["DeviceRequests"] = [
            {
                "Driver": r.get("driver") or "",
                "Count": int(r.get("count") or 0),
                "DeviceIDs": list(r.get("deviceIds") or []) or None,
                "Capabilities": [list(r["capabilities"])] if r.get("capabilities") else None,
                "Options": dict(r.get("options") or {}) or None,
            }
            for r in requests
        ]
    if inputs.get("securityOpts"):
        opts, system_paths = _parse_system_paths(list(inputs["securityOpts"]))
        host["SecurityOpt"] = opts
        if system_paths is not None:
            host["MaskedPaths"] = system_paths
            host["ReadonlyPaths"] = system_paths
    if inputs.get("memory"):
        host["Memory"] = int(inputs["memory"]) * MIB
    if inputs.get("memoryReservation"):
        host["MemoryReservation"] = int(inputs["memoryReservation"]) * MIB
    if inputs.get("memorySwap"):
        swap = int(inputs["memorySwap"])
        host["MemorySwap"] = swap * MIB if swap > 0 else swap
    if inputs.get("shmSize"):
        host["ShmSize"] = int(inputs["shmSize"]) * MIB
    if inputs.get("cpuShares"):
        host["CpuShares"] = int(inputs["cpuShares"])
    if inputs.get("cpuSet"):
        host["CpusetCpus"] = inputs["cpuSet"]
    if inputs.get("logOpts"):
        host["LogConfig"]["Config"] = {k: str(v) for k, v in inputs["logOpts"].items()}
    if inputs.get("networkMode"):
        host["NetworkMode"] = inputs["networkMode"]
    if inputs.get("ipcMode"):
        host["IpcMode"] = inputs["ipcMode"]
    config["HostConfig"] = host
    config["NetworkingConfig"] = {}
    return config


def _upload_tar(upload: Mapping[str, Any]) -> bytes:
    """One upload as the provider sends it (CF:519-583): one tar entry named by
    the `file` as given, mode `permissions`, else 0744 when executable, else 0644,
    copied to `/` (so the engine creates missing parent directories)."""
    given = [k for k in ("content", "contentBase64", "source") if upload.get(k)]
    if not given:
        raise ProviderError(
            "error with upload content: one of 'content', 'content_base64', or 'source' must be set"
        )
    if len(given) > 1:
        raise ProviderError(
            "error with upload content: only one of 'content', 'content_base64', or "
            "'source' can be set"
        )
    if upload.get("content"):
        data = str(upload["content"]).encode()
    elif upload.get("contentBase64"):
        data = base64.b64decode(str(upload["contentBase64"]))
    else:
        with open(str(upload["source"]), "rb") as handle:
            data = handle.read()
    if upload.get("permissions"):
        mode = int(str(upload["permissions"]), 8)
    else:
        mode = 0o744 if upload.get("executable") else 0o644
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(str(upload["file"]))
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def create_container(api: docker.APIClient, inputs: Mapping[str, Any], timeout: float) -> str:
    """resourceDockerContainerCreate (CF:43-674), up to the final Read.

    The provider first finds the image locally or pulls it (CF:49-53); then
    ContainerCreate; then, with `networks_advanced`, disconnects the default
    bridge and connects each network with its aliases (CF:463-503); uploads
    (CF:505-583); start (CF:584-588); `wait` polls the health status every
    second up to `wait_timeout` (CF:590-629).

    When a step after ContainerCreate fails, the container stays and the
    failure is an `InitFailed` (the engine keeps it in its state with the error).
    """
    find_image(api, str(inputs["image"]), "")
    body = container_body(inputs, _api_at_least(api, "1.44"))
    raw: Any = api  # docker-py leaves create_container_from_config untyped
    try:
        created = raw.create_container_from_config(body, name=str(inputs["name"]))
    except docker.errors.APIError as exc:  # CF:456-458
        raise ProviderError(f"Unable to create container: {daemon_error(exc)}") from exc
    container_id = str(created["Id"])
    try:
        networks = list(inputs.get("networksAdvanced") or [])
        if networks:
            try:
                api.disconnect_container_from_network(container_id, "bridge")
            except docker.errors.APIError as exc:
                if not _ignorable(exc, "is not connected to the network bridge"):
                    raise ProviderError(f"Unable to disconnect the default network: {exc}") from exc
            for net in networks:
                if net.get("gwPriority"):
                    raise ProviderError("networksAdvanced.gwPriority is not mapped here")
                pairs = [str(o).split("=", 1) for o in net.get("driverOpts") or []]
                opts = {p[0]: p[1] for p in pairs if len(p) == 2}
                api.connect_container_to_network(
                    container_id,
                    str(net["name"]),
                    ipv4_address=net.get("ipv4Address") or None,
                    ipv6_address=net.get("ipv6Address") or None,
                    aliases=list(net.get("aliases") or []) or None,
                    link_local_ips=list(net.get("linkLocalIps") or []) or None,
                    driver_opt=opts or None,
                    mac_address=net.get("macAddress") or None,
                )
        for upload in inputs.get("uploads") or []:
            api.put_archive(container_id, "/", _upload_tar(upload))
        if inputs.get("start", True):
            try:
                api.start(container_id)
            except docker.errors.APIError as exc:
                raise ProviderError(f"Unable to start container: {daemon_error(exc)}") from exc
            if inputs.get("wait"):
                wait_timeout = float(inputs.get("waitTimeout") or 60)
                _wait_healthy(api, container_id, min(wait_timeout, timeout))
    except Exception as exc:
        raise InitFailed(container_id, str(exc)) from exc
    return container_id


def _wait_healthy(api: docker.APIClient, container_id: str, seconds: float) -> None:
    """CF:590-629: poll every second until healthy; no health check is an error;
    `unhealthy` is not a failure, only the timeout is."""
    deadline = time.monotonic() + seconds
    while True:
        state = api.inspect_container(container_id).get("State") or {}
        health = state.get("Health")
        if not health:
            raise ProviderError(
                "you have supplied a 'wait' argument, but the container does not have a "
                "healthcheck defined. Please remove the 'wait' argument or add a "
                "'healthcheck' attribute"
            )
        if health.get("Status") == "healthy":
            return
        if time.monotonic() >= deadline:
            raise ProviderError("container failed to be in healthy state")
        time.sleep(1)


def _flatten_ports(ports: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """flattenContainerPorts (CS:35-59): one row per binding, sorted by port."""
    out: list[dict[str, Any]] = []
    for key in sorted(ports or {}, key=lambda k: int(k.split("/")[0])):
        internal, protocol = key.split("/")
        for binding in (ports or {}).get(key) or []:
            out.append(
                {
                    "internal": int(internal),
                    "external": int(binding.get("HostPort") or 0),
                    "ip": binding.get("HostIp") or "",
                    "protocol": protocol,
                }
            )
    return out


def _flatten_networks(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """flattenContainerNetworks (CS:61-82); Go ranges over a map, here sorted by name."""
    out = []
    for name, data in sorted((settings.get("Networks") or {}).items()):
        out.append(
            {
                "networkName": name,
                "ipAddress": data.get("IPAddress") or "",
                "ipPrefixLength": int(data.get("IPPrefixLen") or 0),
                "gateway": data.get("Gateway") or "",
                "globalIpv6Address": data.get("GlobalIPv6Address") or "",
                "globalIpv6PrefixLength": int(data.get("GlobalIPv6PrefixLen") or 0),
                "ipv6Gateway": data.get("IPv6Gateway") or "",
                "macAddress": data.get("MacAddress") or "",
            }
        )
    return out


def _mib(value: int | None) -> int:
    value = int(value or 0)
    return value // MIB if value > 0 else value


def read_container(
    api: docker.APIClient, container_id: str, state: Mapping[str, Any]
) -> dict[str, Any] | None:
    """resourceDockerContainerRead (CF:750-981): None when the container is gone
    (looked up in the list of all containers, CF:765-773). `state` is the
    state before the read (at create: the planned state), which decides the
    conditional reads: ports only when configured and (running or must_run);
    a stopped container with must_run sets must_run false (CF:796-824);
    capabilities only when non-empty (CF:870-878); log_opts only when configured
    (CF:983-989); device_requests only when configured (CF:919-930); `image` as
    `container.Image` when the state holds a `sha256:` ID, else `Config.Image`
    (CF:838-845). Env, labels, uploads, networks_advanced, volumes,
    destroy_grace_seconds are never read (CF:893-898, 959)."""
    if container_id not in {c["Id"] for c in api.containers(all=True)}:
        return None
    info = api.inspect_container(container_id)
    config = info.get("Config") or {}
    host = info.get("HostConfig") or {}
    running = bool((info.get("State") or {}).get("Running"))
    settings = info.get("NetworkSettings") or {}
    out = dict(state)
    out["id"] = info["Id"]
    out["bridge"] = settings.get("Bridge") or ""
    if (running or state.get("mustRun")) and state.get("ports"):
        out["ports"] = _flatten_ports(settings.get("Ports"))
    out["networkDatas"] = _flatten_networks(settings)
    if not running:
        out["exitCode"] = int((info.get("State") or {}).get("ExitCode") or 0)
        if state.get("mustRun"):
            out["mustRun"] = False
    out["name"] = str(info.get("Name") or "").lstrip("/")
    out["rm"] = bool(host.get("AutoRemove"))
    out["readOnly"] = bool(host.get("ReadonlyRootfs"))
    image = str(state.get("image") or "")
    out["image"] = info.get("Image") if image.startswith("sha256:") else config.get("Image")
    out["hostname"] = config.get("Hostname") or ""
    out["domainname"] = config.get("Domainname") or ""
    out["command"] = list(config.get("Cmd") or [])
    out["entrypoints"] = list(config.get("Entrypoint") or [])
    out["user"] = config.get("User") or ""
    out["dns"] = list(host.get("Dns") or [])
    out["dnsOpts"] = list(host.get("DnsOptions") or [])
    out["securityOpts"] = list(host.get("SecurityOpt") or [])
    out["dnsSearches"] = list(host.get("DnsSearch") or [])
    out["publishAllPorts"] = bool(host.get("PublishAllPorts"))
    policy = host.get("RestartPolicy") or {}
    out["restart"] = policy.get("Name") or ""
    out["maxRetryCount"] = int(policy.get("MaximumRetryCount") or 0)
    out["init"] = bool(host.get("Init"))
    out["workingDir"] = config.get("WorkingDir") or ""
    if host.get("CapAdd") or host.get("CapDrop"):
        out["capabilities"] = {
            "adds": list(host.get("CapAdd") or []),
            "drops": list(host.get("CapDrop") or []),
        }
    out["runtime"] = host.get("Runtime") or ""
    out["platform"] = info.get("Platform") or ""
    out["mounts"] = [
        {"target": m.get("Target"), "source": m.get("Source"), "type": m.get("Type")}
        for m in host.get("Mounts") or []
    ]
    out["tmpfs"] = dict(host.get("Tmpfs") or {})
    out["hosts"] = [
        {"host": h.split(":", 1)[0], "ip": h.split(":", 1)[1]}
        for h in host.get("ExtraHosts") or []
        if ":" in h
    ]
    out["privileged"] = bool(host.get("Privileged"))
    for key, field_ in (
        ("deviceReadBps", "BlkioDeviceReadBps"),
        ("deviceReadIops", "BlkioDeviceReadIOps"),
        ("deviceWriteBps", "BlkioDeviceWriteBps"),
        ("deviceWriteIops", "BlkioDeviceWriteIOps"),
    ):
        out[key] = [{"path": d.get("Path"), "rate": d.get("Rate")} for d in host.get(field_) or []]
    if state.get("deviceRequests"):
        out["deviceRequests"] = [
            {
                "driver": r.get("Driver") or "",
                "count": int(r.get("Count") or 0),
                **({"deviceIds": list(r["DeviceIDs"])} if r.get("DeviceIDs") else {}),
                **(
                    {"capabilities": list(r["Capabilities"][0])}
                    if r.get("Capabilities") and r["Capabilities"][0]
                    else {}
                ),
                **({"options": dict(r["Options"])} if r.get("Options") else {}),
            }
            for r in host.get("DeviceRequests") or []
        ]
    out["memory"] = _mib(host.get("Memory"))
    out["memoryReservation"] = _mib(host.get("MemoryReservation"))
    out["memorySwap"] = _mib(host.get("MemorySwap"))
    out["shmSize"] = int(host.get("ShmSize") or 0) // MIB
    out["cpuShares"] = int(host.get("CpuShares") or 0)
    out["cpuSet"] = host.get("CpusetCpus") or ""
    log_config = host.get("LogConfig") or {}
    out["logDriver"] = log_config.get("Type") or ""
    out["logOpts"] = dict(log_config.get("Config") or {}) if state.get("logOpts") else None
    out["storageOpts"] = dict(host.get("StorageOpt") or {})
    out["networkMode"] = host.get("NetworkMode") or ""
    out["usernsMode"] = host.get("UsernsMode") or ""
    health = config.get("Healthcheck")
    if health is not None:
        out["healthcheck"] = {
            "tests": list(health.get("Test") or []),
            "interval": format_duration(int(health.get("Interval") or 0)),
            "timeout": format_duration(int(health.get("Timeout") or 0)),
            "startPeriod": format_duration(int(health.get("StartPeriod") or 0)),
            "startInterval": format_duration(int(health.get("StartInterval") or 0)),
            "retries": int(health.get("Retries") or 0),
        }
    out["sysctls"] = dict(host.get("Sysctls") or {})
    out["ipcMode"] = host.get("IpcMode") or ""
    out["groupAdds"] = list(host.get("GroupAdd") or [])
    out["tty"] = bool(config.get("Tty"))
    out["stdinOpen"] = bool(config.get("OpenStdin"))
    out["stopSignal"] = config.get("StopSignal") or ""
    stop_timeout = config.get("StopTimeout")
    out["stopTimeout"] = int(stop_timeout) if stop_timeout is not None else None
    return out


UPDATED = frozenset(
    {"restart", "maxRetryCount", "cpuShares", "memory", "memoryReservation", "cpuSet", "memorySwap"}
)


def update_container(
    api: docker.APIClient,
    container_id: str,
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    changed: set[str],
) -> None:
    """resourceDockerContainerUpdate (CF:991-1076): start the container when
    must_run goes false -> true (CF:997-1012); when any of restart,
    max_retry_count, cpu_shares, memory, memory_reservation, cpu_set,
    memory_swap changed, one ContainerUpdate with all of them (CF:1016-1070).
    Nothing else is applied (healthcheck, wait, destroy_grace_seconds, init, ...)."""
    started = not olds.get("mustRun") and news.get("mustRun")
    if "mustRun" in changed and started and news.get("start", True):
        try:
            api.start(container_id)
        except docker.errors.APIError as exc:  # CF:1004-1009
            raise ProviderError(f"Unable to start container: {daemon_error(exc)}") from exc
    if changed & UPDATED:
        swap = int(news.get("memorySwap") or 0)
        api.update_container(
            container_id,
            cpu_shares=int(news.get("cpuShares") or 0) or None,
            mem_limit=int(news.get("memory") or 0) * MIB or None,
            mem_reservation=int(news.get("memoryReservation") or 0) * MIB or None,
            cpuset_cpus=news.get("cpuSet") or None,
            memswap_limit=(swap * MIB if swap > 0 else swap) or None,
            restart_policy=cast(
                Any,
                {
                    "Name": news.get("restart") or "",
                    "MaximumRetryCount": int(news.get("maxRetryCount") or 0),
                },
            ),
        )


def delete_container(api: docker.APIClient, container_id: str, state: Mapping[str, Any]) -> None:
    """resourceDockerContainerDelete (CF:1079-1131): unless `attach`, ContainerStop
    with timeout `destroy_grace_seconds` when > 0, else 0 (the stop signal, then
    SIGKILL at once, MB daemon/stop.go); ContainerRemove(force, volumes =
    remove_volumes); wait until not running (removed when `rm`). "No such
    container" is not an error."""
    if not state.get("attach"):
        grace = int(state.get("destroyGraceSeconds") or 0)
        try:
            api.stop(container_id, timeout=max(grace, 0))
        except docker.errors.APIError as exc:
            if not _ignorable(exc, "No such container"):
                raise ProviderError(f"Error stopping container {container_id}: {exc}") from exc
    try:
        api.remove_container(container_id, v=bool(state.get("removeVolumes", True)), force=True)
    except docker.errors.APIError as exc:
        if not _ignorable(exc, "No such container", "is already in progress"):
            raise ProviderError(f"Error deleting container {container_id}: {exc}") from exc
    try:
        api.wait(container_id, condition="removed" if state.get("rm") else "not-running")
    except docker.errors.APIError as exc:
        if not _ignorable(exc, "No such container", "is already in progress"):
            message = f"Error waiting for container removal '{container_id}': {exc}"
            raise ProviderError(message) from exc


# -- docker_network --------------------------------------------------------------


def create_network(api: docker.APIClient, inputs: Mapping[str, Any]) -> str:
    """resourceDockerNetworkCreate (NF:26-82). `ipam_driver` always has a value
    (default "default"), so an IPAM block is always sent (NF:56-73). On an API
    older than 1.44 the Go client sets CheckDuplicate (MB client/network_create.go),
    so an existing network of that name is an error, not adopted."""
    ipam = IPAMConfig(
        driver=str(inputs.get("ipamDriver") or "default"), options=inputs.get("ipamOptions") or None
    )
    created = api.create_network(
        str(inputs["name"]),
        driver=inputs.get("driver") or None,
        options=inputs.get("options") or None,
        ipam=ipam,
        check_duplicate=True if not _api_at_least(api, "1.44") else None,
        internal=bool(inputs.get("internal")),
        labels={str(x["label"]): str(x["value"]) for x in inputs.get("labels") or []} or None,
        enable_ipv6=bool(inputs.get("ipv6")),
        attachable=bool(inputs.get("attachable")),
        ingress=bool(inputs.get("ingress")),
    )
    return str(created["Id"])


def read_network(
    api: docker.APIClient, network_id: str, state: Mapping[str, Any]
) -> dict[str, Any] | None:
    """resourceDockerNetworkReadRefreshFunc (NF:160-203): a network that cannot
    be inspected is gone."""
    try:
        info = api.inspect_network(network_id)
    except docker.errors.NotFound:
        return None
    ipam = info.get("IPAM") or {}
    out = dict(state)
    out.update(
        {
            "id": info["Id"],
            "name": info.get("Name") or "",
            "labels": _labels(info.get("Labels")),
            "driver": info.get("Driver") or "",
            "internal": bool(info.get("Internal")),
            "attachable": bool(info.get("Attachable")),
            "ingress": bool(info.get("Ingress")),
            "ipv6": bool(info.get("EnableIPv6")),
            "ipamDriver": ipam.get("Driver") or "",
            "ipamOptions": dict(ipam.get("Options") or {}),
            "scope": info.get("Scope") or "",
            "options": dict(info.get("Options") or {}),
            "ipamConfigs": [
                {
                    "subnet": c.get("Subnet") or "",
                    "ipRange": c.get("IPRange") or "",
                    "gateway": c.get("Gateway") or "",
                    "auxAddress": dict(c.get("AuxiliaryAddresses") or {}),
                }
                for c in ipam.get("Config") or []
            ],
        }
    )
    return out


def _labels(labels: Mapping[str, str] | None) -> list[dict[str, str]]:
    """mapToLabelSet (internal/provider/helpers.go:46)."""
    return [{"label": k, "value": v} for k, v in sorted((labels or {}).items())]


def _retry(what: Callable[[], bool], seconds: float, pause: float = 1.0) -> None:
    """retry.StateChangeConf: call until done or the timeout."""
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() >= deadline:
            raise ProviderError(f"timeout while waiting for state to become 'removed' ({seconds}s)")
        time.sleep(pause)


def delete_network(api: docker.APIClient, network_id: str) -> None:
    """resourceDockerNetworkDelete (NF:110-135, 205-225): remove, retried for 30 s
    while the network "has active endpoints"; already gone is done."""

    def attempt() -> bool:
        try:
            api.inspect_network(network_id)
        except docker.errors.NotFound:
            return True
        try:
            api.remove_network(network_id)
        except docker.errors.APIError as exc:
            if _ignorable(exc, "has active endpoints"):
                return False
            raise
        return True

    _retry(attempt, 30)


# -- docker_volume ---------------------------------------------------------------


def create_volume(api: docker.APIClient, inputs: Mapping[str, Any]) -> str:
    """resourceDockerVolumeCreate (V:166-286): VolumeCreate; the ID is the name.
    The engine answers an existing local volume of that name with that volume."""
    created = api.create_volume(
        name=inputs.get("name") or None,
        driver=inputs.get("driver") or None,
        driver_opts=inputs.get("driverOpts") or None,
        labels={str(x["label"]): str(x["value"]) for x in inputs.get("labels") or []} or None,
    )
    return str(created["Name"])


def read_volume(
    api: docker.APIClient, volume_id: str, state: Mapping[str, Any]
) -> dict[str, Any] | None:
    """resourceDockerVolumeRead (V:288-360)."""
    try:
        info = api.inspect_volume(volume_id)
    except docker.errors.NotFound:
        return None
    out = dict(state)
    out.update(
        {
            "id": info["Name"],
            "name": info["Name"],
            "labels": _labels(info.get("Labels")),
            "driver": info.get("Driver") or "",
            "driverOpts": dict(info.get("Options") or {}),
            "mountpoint": info.get("Mountpoint") or "",
        }
    )
    return out


def delete_volume(api: docker.APIClient, volume_id: str) -> None:
    """resourceDockerVolumeDelete (V:362-386, 429-445): forced VolumeRemove, retried
    for 30 s while "volume is in use"."""

    def attempt() -> bool:
        try:
            api.remove_volume(volume_id, force=True)
        except docker.errors.APIError as exc:
            if _ignorable(exc, "volume is in use"):
                return False
            raise
        return True

    _retry(attempt, 30)


# -- docker_image (RemoteImage) ----------------------------------------------------


def _local_image(api: docker.APIClient, name: str) -> dict[str, Any] | None:
    """searchLocalImages (IF:165-185): inspect by name, then the summary of that ID
    among the top-level images."""
    raw: Any = api  # inspect_image is untyped in types-docker
    try:
        inspected = raw.inspect_image(name)
    except docker.errors.NotFound:
        return None
    for summary in api.images(all=False):
        if summary.get("Id") == inspected.get("Id"):
            return dict(summary)
    return None


def find_image(api: docker.APIClient, name: str, platform: str) -> dict[str, Any]:
    """findImage (IF:343-378): the local image, else a pull (only when absent)."""
    if not name:
        raise ProviderError("empty image name is not allowed")
    found = _local_image(api, name)
    if found is not None:
        return found
    try:
        api.pull(name, platform=platform or None)
    except docker.errors.APIError as exc:
        raise ProviderError(f"unable to pull image {name}: {exc}") from exc
    found = _local_image(api, name)
    if found is None:
        raise ProviderError(f"unable to find or pull image {name}")
    return found


def _repo_digest(name: str, image: Mapping[str, Any]) -> str:
    """determineRepoDigest (data_source_docker_image.go:66-99)."""
    digests = list(image.get("RepoDigests") or [])
    if not digests:
        return ""
    if len(digests) == 1:
        return str(digests[0])
    without_tag = name.split(":", 1)[0]
    for digest in digests:
        if str(digest).startswith(without_tag + "@"):
            return str(digest)
    return str(digests[0])


def read_remote_image(api: docker.APIClient, state: Mapping[str, Any]) -> dict[str, Any] | None:
    """resourceDockerImageRead (IF:103-132): gone when the name is not local; the
    ID is image ID + name."""
    name = str(state.get("name") or "")
    found = _local_image(api, name)
    if found is None:
        return None
    out = dict(state)
    out["id"] = str(found["Id"]) + name
    out["imageId"] = str(found["Id"])
    out["repoDigest"] = _repo_digest(name, found)
    return out


def delete_remote_image(api: docker.APIClient, state: Mapping[str, Any]) -> None:
    """removeImage (IF:187-220): nothing with keep_locally, else ImageRemove by name
    (forced when force_remove) when it is still local."""
    if state.get("keepLocally"):
        return
    name = str(state.get("name") or "")
    if not name:
        raise ProviderError("empty image name is not allowed")
    if _local_image(api, name) is not None:
        api.remove_image(name, force=bool(state.get("forceRemove")))
