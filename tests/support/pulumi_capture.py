"""Run the Pulumi program under mocks and record what it declares.

Pulumi's `Mocks.new_resource` sees a resource's inputs but not its options,
so the recorder wraps the mock monitor's `RegisterResource` as well: each
record carries the type, logical name, inputs (camelCase, as the provider
would get them), parent, explicit dependencies, provider and the options that
matter here. No Pulumi CLI or provider plugin is involved; this proves what
the program *asks* pulumi-docker and pulumi-command for, not what they do.

Outputs of one resource used as inputs of another (an image digest, a
container id) come back from the mocks as placeholders `@@<name>.<output>@@`,
so the end-to-end applier can substitute real values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await


def placeholder(name: str, output: str) -> str:
    return f"@@{name}.{output}@@"


@dataclass
class Declared:
    """One resource as the program declared it."""

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    parent: str
    dependencies: list[str]
    provider: str
    delete_before_replace: bool
    retain_on_delete: bool
    additional_secret_outputs: list[str]
    custom: bool
    secret_inputs: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    alias_parents: list[str] = field(default_factory=list)
    """The parents its aliases name: where it was registered before a move."""


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        name = args.name
        if args.typ == "docker:index/image:Image":
            state["repoDigest"] = placeholder(name, "repoDigest")
        if args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = placeholder(name, "imageId")
            state["repoDigest"] = placeholder(name, "repoDigest")
        if args.typ == "kubernetes:core/v1:Service":
            # The API server assigns a ClusterIP; nginx's /etc/hosts maps names to it.
            state["spec"] = {**state.get("spec", {}), "clusterIP": placeholder(name, "clusterIP")}
        if args.typ == "command:local:Command":
            state["stdout"] = placeholder(name, "stdout")
            state["stderr"] = ""
            # pulumi-command 1.2.1 (pulumi-go-provider's infer) makes an output
            # secret when the input of the same name is; stdout never is.
            # (0.8.x marked every output secret: pulumi/pulumi-command#256.)
            state = {
                k: pulumi.Output.secret(v) if _is_secret(args.inputs.get(k)) else v
                for k, v in state.items()
            }
        return placeholder(name, "id"), state

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, declared: list[Declared]) -> None:
        super().__init__(mocks)
        self.declared = declared

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type == "pulumi:pulumi:Stack":
            return response
        from pulumi.runtime import rpc

        # Deserialized properties keep Pulumi's secret wrapper: read it, then drop it.
        inputs = rpc.deserialize_properties(request.object)
        secret_inputs = [k for k, v in inputs.items() if _is_secret(v)]
        self.declared.append(
            Declared(
                type=request.type,
                name=request.name,
                urn=response.urn,
                inputs=_unwrap(inputs),
                parent=request.parent,
                dependencies=list(request.dependencies),
                provider=request.provider,
                delete_before_replace=bool(request.deleteBeforeReplace),
                retain_on_delete=bool(request.retainOnDelete),
                additional_secret_outputs=list(request.additionalSecretOutputs),
                custom=bool(request.custom),
                secret_inputs=secret_inputs,
                replace_on_changes=list(request.replaceOnChanges),
                ignore_changes=list(request.ignoreChanges),
                custom_timeouts={
                    key: value
                    for key in ("create", "update", "delete")
                    if (value := getattr(request.customTimeouts, key, ""))
                },
                alias_parents=[a.spec.parentUrn for a in request.aliases if a.HasField("spec")],
            )
        )
        return response


_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def _is_secret(value: Any) -> bool:
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") == _SECRET_SIG:
            return True
        return any(_is_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_secret(v) for v in value)
    return False


def _unwrap(value: Any) -> Any:
    """Secret wrappers become their values: the applier needs them in clear."""
    if isinstance(value, Mapping):
        if value.get("4dabf18193072939515e22adb298388d") == _SECRET_SIG:
            return _unwrap(value.get("value"))
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


@dataclass
class Run:
    declared: list[Declared]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, type_: str) -> list[Declared]:
        return [d for d in self.declared if d.type == type_]

    def named(self, name: str) -> Declared:
        (match,) = [d for d in self.declared if d.name == name]
        return match

    def by_urn(self, urn: str) -> Declared:
        (match,) = [d for d in self.declared if d.urn == urn]
        return match


@contextmanager
def _mocked(
    config: Mapping[str, str], secret_keys: list[str], declared: list[Declared]
) -> Iterator[_RecordingMonitor]:
    # Pulumi's mocks run on the thread's current event loop (`_sync_await` asks
    # `asyncio.get_event_loop()`), and an `asyncio.run` earlier in the session
    # (the stand-in plugins' tests, the Automation API) leaves none set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = _RecordingMonitor(_Mocks(), declared)
    pulumi.runtime.set_mocks(
        _Mocks(), project="vllm-nginx", stack="test", preview=False, monitor=monitor
    )
    set_all_config(dict(config), secret_keys)
    try:
        yield monitor
    finally:
        set_all_config({}, [])
        pulumi_settings.reset_options()


def run_program(
    config: Mapping[str, str],
    secret_keys: list[str] | None = None,
    program: Callable[[], Mapping[str, Any]] | None = None,
    declared: list[Declared] | None = None,
) -> Run:
    """Run `components.deployment.program.deploy` (or `program`) under mocks; resolve outputs.

    Pass `declared` to see what was registered even when the program raises.
    """
    from components.deployment.program import deploy

    record: list[Declared] = [] if declared is None else declared
    with _mocked(config, secret_keys or [], record) as monitor:
        resolved: dict[str, Any] = {}
        secret: set[str] = set()

        def body() -> None:
            outputs = (program or deploy)()
            for key, value in outputs.items():
                output = pulumi.Output.from_input(value)
                resolved[key] = _sync_await(output.future())
                if _sync_await(output.is_secret()):
                    secret.add(key)

        # run_pulumi_func waits for every outstanding registration, as
        # @pulumi.runtime.test does, so `declared` is complete afterwards.
        _sync_await(run_pulumi_func(body))
        return Run(declared=list(monitor.declared), outputs=resolved, secret_outputs=secret)
