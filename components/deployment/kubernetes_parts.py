"""What the Kubernetes components declare alike: child options, probes, variables, files.

Files reach a pod as keys of a ConfigMap (plain) or a Secret (secret), each
mounted at its path by `subPath`; both are auto-named, so a changed file is a
new object and a new pod, never an edit under a running one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from components.plan.kubernetes import ProbePlan

core = k8s.core.v1
meta = k8s.meta.v1


@dataclass(frozen=True)
class Scope:
    """What every Kubernetes component of a stack shares: the cluster (its provider), the
    namespace, the labels, and the stack's secrets by name (Pulumi secrets)."""

    provider: k8s.Provider
    namespace: pulumi.Input[str]
    labels: Mapping[str, str]
    secrets: Mapping[str, pulumi.Output[str]]

    def metadata(self, name: str | None = None, **more: object) -> meta.ObjectMetaArgs:
        """An object's metadata in the namespace, with the labels (no name: auto-named)."""
        return meta.ObjectMetaArgs(
            name=name,
            namespace=self.namespace,
            labels=dict(self.labels),
            **more,  # type: ignore[arg-type]
        )


def child(
    parent: pulumi.Resource, provider: k8s.Provider, **more: object
) -> pulumi.ResourceOptions:
    """A component's child on the stack's cluster (`more`: further resource options)."""
    return pulumi.ResourceOptions(parent=parent, provider=provider, **more)  # type: ignore[arg-type]


def file_key(path: str) -> str:
    """A ConfigMap or Secret key for a file's path (keys allow `[-._a-zA-Z0-9]`)."""
    return re.sub(r"[^-._a-zA-Z0-9]", "_", path.strip("/"))


def probe(plan: ProbePlan) -> core.ProbeArgs:
    """An HTTP GET probe on the plan's path, a command, or a TCP one without a path."""
    how: dict[str, object]
    if plan.command is not None:
        how = {"exec_": core.ExecActionArgs(command=list(plan.command))}
    elif plan.path is None:
        how = {"tcp_socket": core.TCPSocketActionArgs(port=plan.port)}
    else:
        how = {"http_get": core.HTTPGetActionArgs(path=plan.path, port=plan.port)}
    return core.ProbeArgs(
        period_seconds=plan.period_seconds,
        timeout_seconds=plan.timeout_seconds,
        failure_threshold=plan.failure_threshold,
        **how,  # type: ignore[arg-type]
    )


def env_vars(
    env: Mapping[str, str], secret_env: Sequence[str], secret: pulumi.Input[str] | None
) -> list[core.EnvVarArgs]:
    """Plain variables as values; secret ones by reference to the stack's Secret."""
    found = [core.EnvVarArgs(name=key, value=value) for key, value in env.items()]
    for name in secret_env:
        found.append(
            core.EnvVarArgs(
                name=name,
                value_from=core.EnvVarSourceArgs(
                    secret_key_ref=core.SecretKeySelectorArgs(name=secret, key=name)
                ),
            )
        )
    return found


@dataclass
class MountedFiles:
    """A pod's files: `volumes` and `mounts` to put into its spec."""

    config: core.ConfigMap | None = None
    volumes: list[core.VolumeArgs] = field(default_factory=list)
    mounts: list[core.VolumeMountArgs] = field(default_factory=list)


def mounted_files(
    resource: str,
    files: Mapping[str, str],
    secret_files: Iterable[tuple[str, pulumi.Input[str]]],
    metadata: meta.ObjectMetaArgs,
    opts: pulumi.ResourceOptions,
    secret_mode: int = 0o400,
) -> MountedFiles:
    """`files` (path -> text) in a ConfigMap `<resource>-config`, `secret_files` (path ->
    secret value) in a Secret `<resource>-files`, read-only, `secret_mode` (0440 lets
    the pod's `fsGroup` read them: an image that runs as a user of its own)."""
    found = MountedFiles()
    secrets = dict(secret_files)
    for volume, kind, content in (("config", "config", files), ("secret-files", "files", secrets)):
        if not content:
            continue
        data = {file_key(path): text for path, text in content.items()}
        if kind == "config":
            found.config = core.ConfigMap(
                f"{resource}-{kind}", metadata=metadata, data=data, opts=opts
            )
            source: dict[str, object] = {
                "config_map": core.ConfigMapVolumeSourceArgs(name=found.config.metadata.name)
            }
        else:
            secret = core.Secret(
                f"{resource}-{kind}", metadata=metadata, string_data=data, opts=opts
            )
            source = {
                "secret": core.SecretVolumeSourceArgs(
                    secret_name=secret.metadata.name, default_mode=secret_mode
                )
            }
        found.volumes.append(core.VolumeArgs(name=volume, **source))  # type: ignore[arg-type]
        found.mounts.extend(
            core.VolumeMountArgs(
                name=volume, mount_path=path, sub_path=file_key(path), read_only=True
            )
            for path in content
        )
    return found


def host_aliases(
    names: Iterable[str], cluster_ips: Mapping[str, pulumi.Input[str]]
) -> list[core.HostAliasArgs]:
    """/etc/hosts lines: each Service name with its ClusterIP (no cluster DNS needed)."""
    return [core.HostAliasArgs(ip=cluster_ips[name], hostnames=[name]) for name in names]


def service_url(
    service: core.Service, known: str | None, scheme: str, host: str | None, port: int
) -> pulumi.Output[str]:
    """A Service's URL: `known` from the plan, else a NodePort's on `host`, else the
    load balancer's address."""
    if known is not None:
        return pulumi.Output.from_input(known)
    if host is not None:
        return service.spec.ports[0].node_port.apply(lambda p: f"{scheme}://{host}:{p}")
    ingress = service.status.load_balancer.ingress[0]
    return pulumi.Output.all(ingress.ip, ingress.hostname).apply(
        lambda found: f"{scheme}://{found[0] or found[1]}:{port}"
    )
