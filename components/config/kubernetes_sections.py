"""The keys of the Kubernetes engine (`engine: kubernetes`, the `kubernetes` section).

Only what a cluster needs and a Docker host has no word for: where the cluster
is, the namespace, the model cache's claim, where each pool's pods may run and
how clients reach the balancer. Everything else (pools, policies, adapters,
rollout) keeps its meaning; what cannot carry over is refused by
`kubernetes_rules`, not here.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from components.config.sections import ConfigModel
from components.config.values import DnsLabel, Int, Port, SafeToken, matching

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
QUANTITY = re.compile(r"^[1-9][0-9]{0,8}(Ki|Mi|Gi|Ti|Pi)$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

LabelKey = Annotated[
    str,
    AfterValidator(
        matching(LABEL_KEY, "must be a Kubernetes label key ([prefix/]name, name up to 63 chars)")
    ),
]
LabelValue = Annotated[
    str,
    AfterValidator(
        matching(LABEL_VALUE, "must be a Kubernetes label value (up to 63 alphanumerics, -_.)")
    ),
]
Subdomain = Annotated[
    str,
    AfterValidator(
        matching(SUBDOMAIN, "must be a DNS subdomain: lowercase letters, digits, '-' and '.'")
    ),
]
Quantity = Annotated[
    str,
    AfterValidator(matching(QUANTITY, "must be a size with a binary unit, e.g. `200Gi`")),
]

ServiceType = Literal["LoadBalancer", "NodePort", "ClusterIP"]
NodePort = Annotated[Int, Field(ge=30000, le=32767)]


class EngineKind(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"


class TolerationSettings(ConfigModel):
    """One toleration of a pool's pods (Kubernetes' own fields)."""

    key: LabelKey | None = Field(None, description="the taint's key (none: every taint)")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="`Equal` or `Exists`")
    value: LabelValue | None = Field(None, description="the taint's value, with `Equal`")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="the taint's effect (none: every effect)"
    )


class KubernetesPoolSettings(ConfigModel):
    """Where one pool's pods may run, over the section's defaults."""

    pool: DnsLabel = Field(description="a `models[i].name`")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="node labels this pool's pods need (e.g. a GPU type), over `nodeSelector`",
    )
    tolerations: tuple[TolerationSettings, ...] | None = Field(
        None, description="this pool's tolerations, instead of `tolerations`"
    )


class ClaimSettings(ConfigModel):
    """The model cache of each pool, a PersistentVolumeClaim."""

    storage_class: Subdomain | None = Field(
        None,
        description=(
            "StorageClass of each pool's model cache claim (none: the cluster's default class)"
        ),
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany",
        description=(
            "`ReadWriteMany`: every replica of a pool mounts one copy (NFS, CephFS, a cloud "
            "file store); `ReadWriteOnce`: a pool's replicas must share one node"
        ),
    )
    size: Quantity = Field("200Gi", description="each pool's claim (the model and its adapters)")


class BalancerServiceSettings(ConfigModel):
    """How clients reach nginx: its Service."""

    type: ServiceType = Field(
        "LoadBalancer",
        description=(
            "Service type of the balancer; the verify step reaches a `LoadBalancer` by its "
            "address, a `NodePort` by `publicHost`, and skips a `ClusterIP`"
        ),
    )
    port: Port = Field(8000, description="the Service's port (`lb_url`)")
    node_port: NodePort | None = Field(
        None, description="with `NodePort`: the node port (none: the cluster picks one)"
    )


class MonitoringServicesSettings(ConfigModel):
    """With `monitoring.enabled`: how Prometheus and Grafana are reached, where they keep data."""

    service_type: ServiceType = Field(
        "ClusterIP",
        description=(
            "Service type of Prometheus and Grafana (`ClusterIP`: inside the cluster only, as "
            "Docker's default binds them to 127.0.0.1; `kubectl port-forward` reaches them)"
        ),
    )
    prometheus_node_port: NodePort | None = Field(
        None, description="with `NodePort`: Prometheus' node port (none: the cluster picks one)"
    )
    grafana_node_port: NodePort | None = Field(
        None, description="with `NodePort`: Grafana's node port (none: the cluster picks one)"
    )
    storage_class: Subdomain | None = Field(
        None,
        description=(
            "StorageClass of the claims named `monitoring.prometheus.volume` and "
            "`monitoring.grafana.volume` (none: `cache.storageClass`)"
        ),
    )
    size: Quantity = Field("10Gi", description="each of the two claims (`ReadWriteOnce`)")


class KubernetesSettings(ConfigModel):
    """The cluster the stack deploys onto, with `engine: kubernetes`."""

    kubeconfig: SafeToken | None = Field(
        None,
        description=(
            "path of the kubeconfig file (`~` allowed); none: `KUBECONFIG` or `~/.kube/config`"
        ),
    )
    context: SafeToken | None = Field(
        None, description="kubeconfig context (none: its current one)"
    )
    namespace: DnsLabel = Field("vllm-nginx", description="namespace of every resource")
    create_namespace: bool = Field(
        True, description="create the namespace (false: it exists, and `destroy` keeps it)"
    )
    cache: ClaimSettings = ClaimSettings()
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="node labels every pool's pods need"
    )
    tolerations: tuple[TolerationSettings, ...] = Field(
        (), description="tolerations of every pool's pods (e.g. of a GPU node pool's taint)"
    )
    pools: tuple[KubernetesPoolSettings, ...] = Field(
        (), description="per pool (by `models[i].name`): node selector and tolerations of its own"
    )
    service: BalancerServiceSettings = BalancerServiceSettings()
    monitoring: MonitoringServicesSettings = MonitoringServicesSettings()
    balancer_replicas: Annotated[Int, Field(ge=2, le=64)] = Field(
        2, description="nginx pods behind the balancer's Service (at least 2: no single one)"
    )
    pre_stop_seconds: Annotated[Int, Field(ge=1, le=600)] | None = Field(
        None,
        description=(
            "a stopping replica turns unready and waits this long (`preStop`) for its Service "
            "to drop it before vLLM is told to stop; at least `healthCheck.intervalSeconds` + "
            "`healthCheck.timeoutSeconds` + 2 (the default); nginx pods wait it too"
        ),
    )
