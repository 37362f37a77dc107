"""The gRPC provider: `command:local:Command` as pulumi-command 1.2.1 serves it.

What the framework (pulumi-go-provider v1.3.0, "GP") and pulumi-command ("PC")
answer, per call:

- GetPluginInfo: the version, 1.2.1 (GP provider.go:1666-1670; the real binary
  gets it from the linker, PC cmd/pulumi-resource-command/main.go:30-36).
- CheckConfig: the inputs plus `__pulumi-go-provider-version` (GP
  provider.go:735-736, the framework's `.version`, 1.2.0 at tag v1.3.0);
  the provider has no configuration of its own (PC provider.go:31-95 sets no
  `Config`). DiffConfig: not implemented (GP provider.go:436-440), which the
  engine takes as "unknown, replace nothing" (pulumi pkg v3.274.1
  resource/plugin/provider_plugin.go:861-876).
- Configure: accepts secrets, resources and outputs, supports preview (GP
  provider.go:777-800), so secrets reach the provider and its answer decides
  which outputs are secret: the engine does not re-mark them
  (provider_plugin.go:1525, only `if !acceptSecrets`).
- Check, Diff: `inputs` (GP's defaults).
- Create (PC local/commandController.go:34-57; GP infer/resource.go:1255-1314):
  an ID of the resource's name and 8 random hex digits (`resource.NewUniqueHex`);
  in a preview nothing runs; without `create` nothing runs; the state is the
  inputs and `stdout`/`stderr`.
- Update (PC commandController.go:67-90; GP infer/resource.go:1410-1482): the
  ignored keys copied from the state, then `update` if set, else `create`,
  else nothing; the previous `stdout`/`stderr` are in its environment.
- Delete (PC commandController.go:93-99): `delete` if set, with the state's
  inputs and the last `stdout`/`stderr`.
- Read (refresh): the state and inputs unchanged (GP infer/resource.go:1353-1364).
- Cancel: kills every running command (GP middleware/cancel/cancel.go:56-71
  cancels the contexts of `exec.CommandContext`).
- A request's timeout (a `customTimeouts` of the resource) bounds its command:
  GP's cancel middleware gives Create/Update/Delete a context with that
  deadline (cancel.go:44-54, 82-91), which kills the process.

Secrets and unknowns in the answers (GP infer/resource.go:536-642, the default
wiring of :743-807): an output named like an input keeps the input's value and
markings; `stdout`/`stderr` share no input's name, so they are never secret,
whatever the inputs hold; in a preview they are unknown for a create, and for
an update whenever an input is unknown or differs from the state's.

Not modelled (a check failure or an error, never a silent difference):
`assetPaths`/`archivePaths` (and so `assets`/`archive`), the `local:run`
invoke, `remote:*` resources, the partial state of a failed create (pulumi-command
returns none: GP infer/resource.go:1291-1293), GetSchema (a stub with the name
and version).

`pulumi.provider.experimental` is used for its `PropertyValue` only: its
servicer passes no old inputs to Diff, appends a Python traceback to every
error (the engine would show it in place of the command's message), cannot
marshal unknowns, and offers no way to log to the engine. The servicer here is
the SDK's generated `ResourceProviderServicer`; logging goes through the
engine's `Log` RPC at the address the engine passes as the first argument.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from google.protobuf import empty_pb2  # type: ignore[import-untyped]
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime.proto import (
    engine_pb2,
    engine_pb2_grpc,
    plugin_pb2,
    provider_pb2,
    provider_pb2_grpc,
)

from tests.support.command_provider import inputs
from tests.support.command_provider.runner import (
    BaseInputs,
    CommandError,
    LogFn,
    Outputs,
    Processes,
    run,
)
from tests.support.command_provider.values import (
    PropertyMap,
    deep_equals,
    from_wire,
    is_computed,
    plain,
    to_wire,
)
from tests.support.plugin_server import serve_plugin

VERSION = "1.2.1"
TYPE = "command:local:Command"
FRAMEWORK_VERSION_KEY = "__pulumi-go-provider-version"
FRAMEWORK_VERSION = "1.2.0"
"""GP provider.go:736 with GP's `.version` at tag v1.3.0."""

T = TypeVar("T")


class ProviderError(Exception):
    """An error the real provider returns as a gRPC error (status Unknown)."""


def _name(urn: str) -> str:
    return urn.split("::")[-1]


def _computed_like(value: PropertyValue) -> PropertyValue:
    """putil.MakeComputed: unknown, keeping secretness (GP internal/putil/putil.go:40-56)."""
    return value if is_computed(value) else PropertyValue(Computed(), is_secret=value.is_secret)


def mark(
    outputs: Mapping[str, PropertyValue],
    news: Mapping[str, PropertyValue],
    olds: Mapping[str, PropertyValue] | None,
    *,
    is_create: bool,
    is_preview: bool,
) -> PropertyMap:
    """GP's `MarkMap` with the default wiring (infer/resource.go:536-642, 743-807):
    every output depends on every input for unknowns; an output named like an
    input takes that input's secretness."""
    marked: PropertyMap = {}
    for key, value in outputs.items():
        if is_preview:
            value = _mark_computed(key, value, news, olds or {}, is_create=is_create)
        marked[key] = _mark_secret(key, value, news)
    return marked


def _mark_computed(
    key: str,
    value: PropertyValue,
    news: Mapping[str, PropertyValue],
    olds: Mapping[str, PropertyValue],
    *,
    is_create: bool,
) -> PropertyValue:
    if is_computed(value):
        return value
    if key in news and deep_equals(news[key], value):
        return value  # :554-558, mirrors an input
    if is_create:
        return _computed_like(value)  # :561-563
    for dep in inputs.FIELDS:  # :566-587
        new = news.get(dep, PropertyValue(None))
        if is_computed(new) or (dep in olds and not deep_equals(new, olds[dep])):
            return _computed_like(value)
    return value


def _mark_secret(
    key: str, value: PropertyValue, news: Mapping[str, PropertyValue]
) -> PropertyValue:
    if value.is_secret:
        return value
    if key in news and deep_equals(news[key], value):
        return value  # :611-616
    if key in inputs.FIELDS and key in news and news[key].contains_secret():
        return value.with_secret(True)  # :620-627, the same-named input only
    return value


@dataclass
class Created:
    resource_id: str
    properties: PropertyMap


class CommandProvider:
    """pulumi-resource-command 1.2.1 for `command:local:Command`."""

    def __init__(self, log: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self._log = log
        self._sends_old_inputs = False
        self.processes = Processes()

    def _logger(self, urn: str) -> LogFn | None:
        if self._log is None:
            return None
        send = self._log

        async def log(line: str) -> None:
            await send(urn, line)

        return log

    # -- provider configuration --

    def check_config(self, news: Mapping[str, PropertyValue]) -> PropertyMap:
        return {**news, FRAMEWORK_VERSION_KEY: PropertyValue(FRAMEWORK_VERSION)}

    def configure(self, sends_old_inputs: bool, sends_old_inputs_to_delete: bool) -> None:
        """GP provider.go:780: old inputs are used only if the engine sends them everywhere."""
        self._sends_old_inputs = sends_old_inputs and sends_old_inputs_to_delete

    # -- the resource --

    @staticmethod
    def _require_type(urn: str) -> None:
        type_ = urn.split("::")[-2].split("$")[-1] if "::" in urn else ""
        if type_ != TYPE:
            raise ProviderError(f"unknown resource type {type_!r}: the stand-in serves {TYPE}")

    def check(
        self, urn: str, news: Mapping[str, PropertyValue]
    ) -> tuple[PropertyMap, list[inputs.CheckFailure]]:
        self._require_type(urn)
        return inputs.check(news)

    def diff(
        self,
        urn: str,
        state: Mapping[str, PropertyValue],
        news: Mapping[str, PropertyValue],
        old_inputs: Mapping[str, PropertyValue] | None,
        ignore_changes: list[str],
    ) -> inputs.Diff:
        self._require_type(urn)
        return inputs.diff(
            old_inputs if self._sends_old_inputs else None, state, news, ignore_changes
        )

    async def create(
        self, urn: str, props: Mapping[str, PropertyValue], preview: bool, timeout: float = 0
    ) -> Created:
        self._require_type(urn)
        resource_id = _name(urn) + secrets.token_hex(4)  # NewUniqueHex(name, 8, 0)
        state: PropertyMap = {
            **props,
            "stdout": PropertyValue(""),
            "stderr": PropertyValue(""),
        }
        if preview or "create" not in props:
            return Created(
                resource_id, mark(state, props, None, is_create=True, is_preview=preview)
            )
        out = await self._run(urn, plain(props["create"]), props, Outputs(), timeout)
        state["stdout"], state["stderr"] = PropertyValue(out.stdout), PropertyValue(out.stderr)
        return Created(resource_id, mark(state, props, None, is_create=True, is_preview=False))

    async def update(
        self,
        urn: str,
        olds: Mapping[str, PropertyValue],
        news: Mapping[str, PropertyValue],
        ignore_changes: list[str],
        preview: bool,
        timeout: float = 0,
    ) -> PropertyMap:
        self._require_type(urn)
        news = dict(news)
        for key in ignore_changes:  # GP infer/resource.go:1419-1424
            if key in olds:
                news[key] = olds[key]
        previous = _previous_outputs(olds)
        state: PropertyMap = {
            **news,
            "stdout": PropertyValue(previous.stdout),
            "stderr": PropertyValue(previous.stderr),
        }
        command = news.get("update", news.get("create"))
        if not preview and command is not None:
            out = await self._run(urn, plain(command), news, previous, timeout)
            state["stdout"], state["stderr"] = PropertyValue(out.stdout), PropertyValue(out.stderr)
        return mark(state, news, olds, is_create=False, is_preview=preview)

    async def delete(
        self, urn: str, state: Mapping[str, PropertyValue], timeout: float = 0
    ) -> None:
        self._require_type(urn)
        if "delete" not in state:
            return
        await self._run(urn, plain(state["delete"]), state, _previous_outputs(state), timeout)

    def read(
        self, urn: str, resource_id: str, state: PropertyMap, inputs_: PropertyMap
    ) -> tuple[str, PropertyMap, PropertyMap]:
        self._require_type(urn)
        return resource_id, state, inputs_

    async def _run(
        self,
        urn: str,
        command: object,
        props: Mapping[str, PropertyValue],
        previous: Outputs,
        timeout: float,
    ) -> Outputs:
        base = BaseInputs.of(props)
        return await run(str(command), base, previous, self._logger(urn), self.processes, timeout)


def _previous_outputs(state: Mapping[str, PropertyValue]) -> Outputs:
    def text(key: str) -> str:
        value = state.get(key)
        return str(plain(value)) if value is not None and value.value is not None else ""

    return Outputs(stdout=text("stdout"), stderr=text("stderr"))


# -- gRPC ----------------------------------------------------------------------------------


_KIND = {
    inputs.Kind.ADD: provider_pb2.PropertyDiff.ADD,
    inputs.Kind.ADD_REPLACE: provider_pb2.PropertyDiff.ADD_REPLACE,
    inputs.Kind.DELETE: provider_pb2.PropertyDiff.DELETE,
    inputs.Kind.DELETE_REPLACE: provider_pb2.PropertyDiff.DELETE_REPLACE,
    inputs.Kind.UPDATE: provider_pb2.PropertyDiff.UPDATE,
    inputs.Kind.UPDATE_REPLACE: provider_pb2.PropertyDiff.UPDATE_REPLACE,
}


async def _answer(context: Any, call: Callable[[], Awaitable[T]]) -> T:
    """Run a call; a provider error becomes the gRPC error Go's handler would return."""
    try:
        return await call()
    except (CommandError, ProviderError) as exc:
        await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
        raise  # unreachable: abort raises
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug of the stand-in: say where
        detail = "".join(traceback.format_exception(exc))
        await context.abort(grpc.StatusCode.INTERNAL, f"command stand-in: {detail}")
        raise


class Servicer(provider_pb2_grpc.ResourceProviderServicer):
    def __init__(self, provider: CommandProvider) -> None:
        self.provider = provider

    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return plugin_pb2.PluginInfo(version=VERSION)

    async def GetSchema(self, request: Any, context: Any) -> Any:
        return provider_pb2.GetSchemaResponse(
            schema=json.dumps({"name": "command", "version": VERSION})
        )

    async def Cancel(self, request: Any, context: Any) -> Any:
        self.provider.processes.kill_all()
        return empty_pb2.Empty()

    async def CheckConfig(self, request: Any, context: Any) -> Any:
        news = self.provider.check_config(from_wire(request.news))
        return provider_pb2.CheckResponse(inputs=to_wire(news))

    async def Configure(self, request: Any, context: Any) -> Any:
        self.provider.configure(request.sends_old_inputs, request.sends_old_inputs_to_delete)
        return provider_pb2.ConfigureResponse(
            acceptSecrets=True, supportsPreview=True, acceptResources=True, acceptOutputs=True
        )

    async def Check(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            news, failures = self.provider.check(request.urn, from_wire(request.news))
            return provider_pb2.CheckResponse(
                inputs=to_wire(news),
                failures=[
                    provider_pb2.CheckFailure(property=f.property, reason=f.reason)
                    for f in failures
                ],
            )

        return await _answer(context, call)

    async def Diff(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            result = self.provider.diff(
                request.urn,
                from_wire(request.olds),
                from_wire(request.news),
                from_wire(request.old_inputs),
                list(request.ignoreChanges),
            )
            return provider_pb2.DiffResponse(
                changes=provider_pb2.DiffResponse.DIFF_SOME
                if result.changes
                else provider_pb2.DiffResponse.DIFF_NONE,
                replaces=result.replaces,
                diffs=result.diffs,
                detailedDiff={
                    path: provider_pb2.PropertyDiff(kind=_KIND[kind], inputDiff=False)
                    for path, kind in result.detailed.items()
                },
                hasDetailedDiff=True,
                deleteBeforeReplace=False,
            )

        return await _answer(context, call)

    async def Create(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            made = await self.provider.create(
                request.urn, from_wire(request.properties), request.preview, request.timeout
            )
            return provider_pb2.CreateResponse(
                id=made.resource_id, properties=to_wire(made.properties)
            )

        return await _answer(context, call)

    async def Update(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            state = await self.provider.update(
                request.urn,
                from_wire(request.olds),
                from_wire(request.news),
                list(request.ignoreChanges),
                request.preview,
                request.timeout,
            )
            return provider_pb2.UpdateResponse(properties=to_wire(state))

        return await _answer(context, call)

    async def Delete(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            await self.provider.delete(request.urn, from_wire(request.properties), request.timeout)
            return empty_pb2.Empty()

        return await _answer(context, call)

    async def Read(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            resource_id, state, inputs_ = self.provider.read(
                request.urn, request.id, from_wire(request.properties), from_wire(request.inputs)
            )
            return provider_pb2.ReadResponse(
                id=resource_id, properties=to_wire(state), inputs=to_wire(inputs_)
            )

        return await _answer(context, call)


class EngineLog:
    """Ephemeral info messages on a resource, as GP's `InfoStatus` sends them
    (GP logging.go:106-115 -> HostClient.LogStatus, `Ephemeral: true`)."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._stub: Any = None

    async def __call__(self, urn: str, message: str) -> None:
        if not self._address:
            return
        if self._stub is None:
            channel = grpc.aio.insecure_channel(self._address, options=_GRPC_CHANNEL_OPTIONS)
            self._stub = engine_pb2_grpc.EngineStub(channel)
        request = engine_pb2.LogRequest(
            severity=engine_pb2.INFO, message=message, urn=urn, ephemeral=True
        )
        try:
            await self._stub.Log(request)
        except grpc.RpcError as exc:  # GP falls back to its own log (logging.go:106-115)
            print(f"{urn}: {message} (engine log failed: {exc})", file=sys.stderr)


def serve(argv: list[str]) -> None:
    """Listen on a loopback port and print it, as every plugin does; the engine
    passes its own address as the first argument."""
    parser = argparse.ArgumentParser(description="pulumi-resource-command (test stand-in)")
    parser.add_argument("engine", nargs="?", default="")
    known, _ = parser.parse_known_args(argv)

    servicer = Servicer(CommandProvider(log=EngineLog(str(known.engine))))
    serve_plugin(
        lambda server: provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
    )
