"""The attributes of each resource, as the real provider declares them.

Every bridged resource (Container, Network, Volume, RemoteImage) is
terraform-provider-docker v4.5.0 seen through pulumi-terraform-bridge, so its
diff follows the Terraform schema: `ForceNew` attributes replace, `Computed`
ones keep their state value when the program leaves them out, `Default`s are
filled in by Check. The flags below are copied from that schema, attribute by
attribute; citations are `file:lines` under `internal/provider/` at tag v4.5.0
(`5074970c`), with the abbreviations of docs/provider-inputs.md:
`C` = resource_docker_container.go, `N` = resource_docker_network.go,
`V` = resource_docker_volume.go, `I` = resource_docker_image.go.

Names are the Pulumi wire names of the 5.2.0 Python SDK (`pulumi_docker`,
`_internal_init` and `_inputs.py`): `entrypoint` is `entrypoints`, `env` is
`envs`, `upload` is `uploads`, `capabilities.add` is `adds`, `healthcheck.test`
is `tests`, and so on. `healthcheck` (a list of at most one) and
`capabilities` (a set of at most one) reach Pulumi as single objects: the
bridge flattens `MaxItems: 1` blocks.

`accepted=False` marks attributes the provider's Read writes into the state
but that this stand-in does not accept as inputs: a program that sets one gets
a Check failure rather than a silently wrong container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["scalar", "list", "set", "object", "map"]


@dataclass(frozen=True)
class Prop:
    """One Terraform attribute (or nested field) under its Pulumi name."""

    force_new: bool = False
    computed: bool = False
    default: Any = None
    kind: Kind = "scalar"
    fields: Mapping[str, Prop] = field(default_factory=dict)
    """Sub-attributes of an object, or of the elements of a list/set of objects."""
    suppress_empty_new: bool = False
    """A DiffSuppressFunc that treats a new "" as no change (`user`, `working_dir`)."""
    accepted: bool = True
    cite: str = ""


_LABEL = {"label": Prop(), "value": Prop()}  # labelSchema, internal/provider/helpers.go:76

CONTAINER: dict[str, Prop] = {
    "name": Prop(force_new=True, cite="C:50-55"),
    "rm": Prop(default=False, cite="C:57-62"),
    "readOnly": Prop(default=False, force_new=True, cite="C:64-70"),
    "start": Prop(default=True, cite="C:72-77"),
    "wait": Prop(default=False, cite="C:79-84"),
    "waitTimeout": Prop(default=60, cite="C:86-91"),
    "attach": Prop(default=False, cite="C:93-98"),
    "logs": Prop(default=False, cite="C:100-105"),
    "mustRun": Prop(default=True, cite="C:122-127"),
    "image": Prop(force_new=True, cite="C:141-146"),
    "hostname": Prop(force_new=True, computed=True, cite="C:148-154"),
    "domainname": Prop(force_new=True, cite="C:156-161"),
    "command": Prop(force_new=True, computed=True, kind="list", cite="C:163-170"),
    "entrypoints": Prop(force_new=True, computed=True, kind="list", cite="C:172-179"),
    "user": Prop(force_new=True, suppress_empty_new=True, cite="C:181-194"),
    "dns": Prop(force_new=True, kind="set", accepted=False, cite="C:196-203"),
    "dnsOpts": Prop(force_new=True, kind="set", accepted=False, cite="C:205-212"),
    "dnsSearches": Prop(force_new=True, kind="set", accepted=False, cite="C:214-221"),
    "publishAllPorts": Prop(force_new=True, cite="C:223-228"),
    "restart": Prop(default="no", cite="C:230-236"),
    "maxRetryCount": Prop(cite="C:238-242"),
    "workingDir": Prop(force_new=True, suppress_empty_new=True, cite="C:243-255"),
    "removeVolumes": Prop(default=True, cite="C:256-261"),
    "capabilities": Prop(
        force_new=True,
        kind="object",
        fields={
            "adds": Prop(force_new=True, kind="set"),
            "drops": Prop(force_new=True, kind="set"),
        },
        cite="C:262-290",
    ),
    "securityOpts": Prop(force_new=True, computed=True, kind="set", cite="C:291-299"),
    "runtime": Prop(force_new=True, computed=True, accepted=False, cite="C:300-306"),
    "platform": Prop(force_new=True, computed=True, accepted=False, cite="C:307-313"),
    "stopSignal": Prop(force_new=True, computed=True, cite="C:314-320"),
    "stopTimeout": Prop(force_new=True, computed=True, cite="C:321-327"),
    "mounts": Prop(force_new=True, kind="set", accepted=False, cite="C:328-433"),
    "volumes": Prop(
        force_new=True,
        kind="set",
        fields={
            "fromContainer": Prop(force_new=True),
            "containerPath": Prop(force_new=True),
            "hostPath": Prop(force_new=True),
            "volumeName": Prop(force_new=True),
            "readOnly": Prop(force_new=True),
            "selinuxRelabel": Prop(force_new=True),
        },
        cite="C:434-481",
    ),
    "tmpfs": Prop(kind="map", accepted=False, cite="C:482-486"),
    "ports": Prop(
        force_new=True,
        kind="list",
        fields={
            "internal": Prop(force_new=True),
            "external": Prop(force_new=True, computed=True),
            # StateFunc maps "" to 0.0.0.0 (C:515-522): the default covers both.
            "ip": Prop(force_new=True, default="0.0.0.0"),
            "protocol": Prop(force_new=True, default="tcp"),
        },
        cite="C:487-535",
    ),
    "hosts": Prop(force_new=True, kind="set", accepted=False, cite="C:537-559"),
    "envs": Prop(force_new=True, computed=True, kind="set", cite="C:590-598"),
    "privileged": Prop(force_new=True, cite="C:656-661"),
    "deviceReadBps": Prop(kind="set", accepted=False, cite="C:693-712"),
    "deviceReadIops": Prop(kind="set", accepted=False, cite="C:713-732"),
    "deviceWriteBps": Prop(kind="set", accepted=False, cite="C:733-752"),
    "deviceWriteIops": Prop(kind="set", accepted=False, cite="C:753-772"),
    "deviceRequests": Prop(
        force_new=True,
        kind="set",
        fields={
            "driver": Prop(force_new=True, default="cdi"),
            "count": Prop(force_new=True, default=0),
            "deviceIds": Prop(force_new=True, kind="set"),
            "capabilities": Prop(force_new=True, kind="set"),
            "options": Prop(force_new=True, kind="map"),
        },
        cite="C:774-825",
    ),
    "destroyGraceSeconds": Prop(cite="C:827-831"),
    "labels": Prop(force_new=True, computed=True, kind="set", fields=_LABEL, cite="C:833-840"),
    "memory": Prop(cite="C:842-847"),
    "memoryReservation": Prop(default=0, cite="C:848-854"),
    "memorySwap": Prop(cite="C:856-861"),
    "shmSize": Prop(force_new=True, computed=True, cite="C:863-870"),
    "cpuShares": Prop(cite="C:872-877"),
    "cpuSet": Prop(cite="C:879-884"),
    "logDriver": Prop(force_new=True, computed=True, cite="C:886-892"),
    "logOpts": Prop(force_new=True, kind="map", cite="C:894-899"),
    "networkMode": Prop(force_new=True, default="bridge", cite="C:901-907"),
    "networksAdvanced": Prop(
        force_new=True,
        kind="set",
        fields={
            "name": Prop(force_new=True),
            "aliases": Prop(force_new=True, kind="set"),
            "ipv4Address": Prop(force_new=True),
            "ipv6Address": Prop(force_new=True),
            "linkLocalIps": Prop(force_new=True, kind="set"),
            "macAddress": Prop(force_new=True),
            "driverOpts": Prop(force_new=True, kind="set"),
            "gwPriority": Prop(force_new=True),
        },
        cite="C:909-972",
    ),
    "uploads": Prop(
        force_new=True,
        kind="set",
        fields={
            "content": Prop(force_new=True),
            "contentBase64": Prop(force_new=True),
            "file": Prop(force_new=True),
            "executable": Prop(force_new=True, default=False),
            "permissions": Prop(force_new=True),
            "source": Prop(force_new=True),
            "sourceHash": Prop(force_new=True),
        },
        cite="C:987-1043",
    ),
    # Neither ForceNew nor handled by Update (CF:1016-1019): a change only
    # rewrites the state. No DiffSuppressFunc, so `1800s` against a read-back
    # `30m0s` is a change on every `up`.
    "healthcheck": Prop(
        computed=True,
        kind="object",
        fields={
            "tests": Prop(kind="list"),
            "interval": Prop(default="0s"),
            "timeout": Prop(default="0s"),
            "startPeriod": Prop(default="0s"),
            "startInterval": Prop(default="0s"),
            "retries": Prop(default=0),
        },
        cite="C:1045-1096",
    ),
    "containerReadRefreshTimeoutMilliseconds": Prop(default=15000, cite="C:1098-1103"),
    "sysctls": Prop(force_new=True, kind="map", accepted=False, cite="C:1105-1110"),
    "ipcMode": Prop(force_new=True, computed=True, cite="C:1111-1117"),
    "groupAdds": Prop(force_new=True, kind="set", accepted=False, cite="C:1118-1125"),
    "init": Prop(computed=True, cite="C:1126-1131"),
    "tty": Prop(default=False, force_new=True, cite="C:1132-1138"),
    "stdinOpen": Prop(default=False, force_new=True, cite="C:1139-1145"),
    "storageOpts": Prop(force_new=True, kind="map", accepted=False, cite="C:1146-1151"),
    "usernsMode": Prop(force_new=True, accepted=False, cite="C:980-985"),
}
"""docker_container (C:48-1188). Outputs only (`bridge`, `networkDatas`,
`exitCode`, `containerLogs`) are not listed: they are never inputs and never diffed."""

CONTAINER_UPDATED = (
    "restart",
    "maxRetryCount",
    "cpuShares",
    "memory",
    "memoryReservation",
    "cpuSet",
    "memorySwap",
)
"""What Update sends to ContainerUpdate when any of them changed
(CF:1016-1019; the device_* throttles are not accepted here). `mustRun`
false -> true starts the container (CF:997-1012). Every other non-ForceNew
change (healthcheck, wait, destroyGraceSeconds, init, ...) only changes the state."""

NETWORK: dict[str, Prop] = {
    "name": Prop(force_new=True, cite="N:25-30"),
    "labels": Prop(force_new=True, kind="set", fields=_LABEL, cite="N:32-38"),
    "driver": Prop(force_new=True, computed=True, cite="N:40-46"),
    "options": Prop(force_new=True, computed=True, kind="map", cite="N:48-54"),
    "internal": Prop(force_new=True, computed=True, cite="N:56-62"),
    "attachable": Prop(force_new=True, cite="N:64-69"),
    "ingress": Prop(force_new=True, cite="N:71-76"),
    "ipv6": Prop(force_new=True, cite="N:78-83"),
    "ipamDriver": Prop(force_new=True, default="default", cite="N:85-91"),
    "ipamOptions": Prop(force_new=True, kind="map", cite="N:92-97"),
    "ipamConfigs": Prop(force_new=True, computed=True, kind="set", accepted=False, cite="N:99-137"),
}
"""docker_network: no Update at all (N:17-19), every input is ForceNew."""

VOLUME: dict[str, Prop] = {
    "name": Prop(force_new=True, computed=True, cite="V:41-47"),
    "labels": Prop(force_new=True, kind="set", fields=_LABEL, cite="V:48-54"),
    "driver": Prop(force_new=True, computed=True, cite="V:55-61"),
    "driverOpts": Prop(force_new=True, kind="map", cite="V:62-67"),
}
"""docker_volume (V:39-151; `cluster` is not accepted)."""

REMOTE_IMAGE: dict[str, Prop] = {
    "name": Prop(force_new=True, cite="I:36-41"),
    "keepLocally": Prop(cite="I:55-59"),
    "pullTriggers": Prop(force_new=True, kind="set", cite="I:61-68"),
    "forceRemove": Prop(cite="I:70-74"),
    "triggers": Prop(force_new=True, kind="map", cite="I:84-89"),
    "platform": Prop(force_new=True, default="", cite="I:90-96"),
}
"""docker_image, `RemoteImage` in Pulumi (`build` is not accepted: the program
builds with the native `docker.Image`)."""

SCHEMAS: dict[str, dict[str, Prop]] = {
    "docker:index/container:Container": CONTAINER,
    "docker:index/network:Network": NETWORK,
    "docker:index/volume:Volume": VOLUME,
    "docker:index/remoteImage:RemoteImage": REMOTE_IMAGE,
}

DELETE_BEFORE_REPLACE = frozenset({"docker:index/container:Container"})
"""pulumi-docker provider/resources.go:112-114 sets `DeleteBeforeReplace` on
docker_container only; the bridge answers deleteBeforeReplace whenever such a
resource is replaced (pulumi-terraform-bridge v3.136.0
pkg/tfbridge/provider.go:1275-1276)."""
