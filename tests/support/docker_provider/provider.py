"""The gRPC provider: `pulumi.provider.experimental` around `diffing`, `engine`
and `native_image`.

Protocol facts this relies on (pulumi/pulumi at `1b594989`,
pkg/resource/plugin/provider_plugin.go, "PP"; the bridge is
pulumi-terraform-bridge v3.136.0 pkg/tfbridge/provider.go, "BR"; pulumi-docker
`237b7899` provider/hybrid.go, "PH"):

- Configure answers `acceptSecrets: false`, `supportsPreview: true`, as the
  real plugin does (BR:900-959 leaves AcceptSecrets unset; PH:72-95 sets
  SupportsPreview). So the engine strips secrets from what it sends and marks
  an output secret when the input of the same name was (PP:918-932,
  `annotateSecrets`, after Create/Read/Update). Configure's own arguments do
  arrive with their secrets (PP:1097-1103).
- CheckConfig returns the inputs (BR:530-607); DiffConfig reports changed
  keys as updates, never replacements: pulumi-docker marks no config key
  `ForcesProviderReplace` (BR:796-895, pulumi-docker resources.go:86-101), so a
  changed `host` re-configures the provider and replaces none of its resources.
- A missing resource is reported by Read with an empty ID, which drops it from
  the state on refresh.
- Read returns the stored inputs with the read state's values
  (`diffing.refreshed_inputs`, as BR's `ExtractInputsFromOutputs`): returned
  inputs replace the state's (pkg/resource/deploy/step.go, RefreshStep.Apply),
  and `ignoreChanges` copies from them.

`pulumi.provider.experimental` (SDK 3.272.0) covers all of it except two
things, handled here: its DiffConfig marshals `changes` and the detailed diff
wrongly (server.py, `DiffConfig` passes the bool as the enum and reads
`v.inputDiff`), so `_Servicer.DiffConfig` overrides it; and `PropertyValue`
cannot marshal `Computed`, so unknowns go out as Pulumi's unknown sentinel
string, which is what the wire carries anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import docker
import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from pulumi.provider.experimental import provider as px
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.server import ProviderServicer
from pulumi.runtime import proto
from pulumi.runtime.proto import provider_pb2_grpc, status_pb2

from tests.support.docker_provider import diffing, engine, native_image
from tests.support.docker_provider.schema import SCHEMAS
from tests.support.plugin_server import serve_plugin

VERSION = "5.2.0"
CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = native_image.TYPE
DEFAULT_TIMEOUT = 20 * 60.0
"""C:12-14, I:10-12: the Terraform default when the engine sends no timeout."""

OUTPUT_ONLY = {
    CONTAINER: ("id", "bridge", "networkDatas", "exitCode", "containerLogs"),
    NETWORK: ("id", "scope"),
    VOLUME: ("id", "mountpoint"),
    REMOTE_IMAGE: ("id", "imageId", "repoDigest"),
}
"""Computed-only attributes: unknown in a preview of a create."""

T = TypeVar("T")

TIMEOUT_KEY = "e2bfb730-ecaa-11e6-8f88-34363bc7c4c0"
"""terraform-plugin-sdk helper/schema/resource_timeout.go:14, `TimeoutKey`."""
SCHEMA_VERSION = {CONTAINER: "2", REMOTE_IMAGE: "0"}
"""C:26 `SchemaVersion: 2`; the image sets none (I:16-28)."""


def meta(type_: str, operation: str, timeout: float) -> dict[str, Any]:
    """The `__meta` output of a Container or RemoteImage (BR schema.go:1102-1111,
    `MakeTerraformResult`): the instance's private data as Go's json.Marshal
    writes it (keys sorted): the resource's timeouts in nanoseconds, 20 min
    each (C:12-14, 30-34; I:10-12, 24-28), the one of this operation replaced
    by the engine's (BR:1340-1352 for a create, 1700-1718 for an update), and
    the schema version. Network and Volume have neither, and a payload of only
    `{"schema_version":"0"}` is left out (BR schema.go:1107-1109)."""
    if type_ not in SCHEMA_VERSION:
        return {}
    default = int(DEFAULT_TIMEOUT * 1e9)
    timeouts = {"create": default, "delete": default, "update": default}
    timeouts[operation] = int((timeout or DEFAULT_TIMEOUT) * 1e9)
    payload = {TIMEOUT_KEY: timeouts, "schema_version": SCHEMA_VERSION[type_]}
    return {"__meta": json.dumps(payload, sort_keys=True, separators=(",", ":"))}


class InitError(Exception):
    """A create that left a resource behind: the bridge's `initializationError`
    (BR:2073-2081), its ID, its partial state and why."""

    def __init__(self, resource_id: str, state: Mapping[str, Any], reason: str) -> None:
        super().__init__(reason)
        self.resource_id = resource_id
        self.state = dict(state)
        self.reason = reason


# -- values ----------------------------------------------------------------------


def plain(value: PropertyValue) -> Any:
    """A PropertyValue as plain Python (secrets unwrapped, whole floats as ints)."""
    inner = value.value
    if isinstance(inner, Computed):
        return diffing.UNKNOWN
    if isinstance(inner, float) and inner.is_integer():
        return int(inner)
    if isinstance(inner, Mapping):
        return {k: plain(v) for k, v in inner.items()}
    if isinstance(inner, tuple | list):
        return [plain(v) for v in inner]
    return inner


def plain_map(values: Mapping[str, PropertyValue]) -> dict[str, Any]:
    return {k: plain(v) for k, v in values.items()}


def wrap(value: Any, secret: bool = False) -> PropertyValue:
    if isinstance(value, PropertyValue):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return PropertyValue(value, is_secret=secret)
    if isinstance(value, int | float):
        return PropertyValue(float(value), is_secret=secret)
    if isinstance(value, Mapping):
        return PropertyValue({str(k): wrap(v) for k, v in value.items()}, is_secret=secret)
    if isinstance(value, list | tuple):
        return PropertyValue([wrap(v) for v in value], is_secret=secret)
    raise TypeError(f"cannot send {type(value).__name__}")


def wrap_map(values: Mapping[str, Any]) -> dict[str, PropertyValue]:
    return {k: wrap(v) for k, v in values.items()}


def _diff_response(result: diffing.Diff) -> px.DiffResponse:
    return px.DiffResponse(
        changes=result.changes,
        replaces=result.replaces,
        stables=result.stables,
        delete_before_replace=result.delete_before_replace,
        diffs=result.diffs,
        # The bridge diffs the state, not the old inputs (BR:1118-1306).
        detailed_diff={
            key: px.PropertyDiff(px.PropertyDiffKind[kind.name], input_diff=False)
            for key, kind in result.detailed.items()
        },
    )


def _preview_state(type_: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A planned create: the inputs; computed attributes not given are unknown."""
    state: dict[str, Any] = diffing.without_defaults(dict(inputs))
    for key, prop in SCHEMAS[type_].items():
        if prop.computed and diffing.is_zero(state.get(key)):
            state[key] = diffing.UNKNOWN
    for key in OUTPUT_ONLY[type_]:
        state[key] = diffing.UNKNOWN
    return state


# -- the provider -------------------------------------------------------------------


def _type(request: Any) -> str:
    """The resource's type token. A URN's type part is qualified by its parents'
    types (`vllm-nginx:index:VllmCluster$docker:index/volume:Volume`, pulumi
    sdk/go/common/resource/urn.go, QualifiedType), and the SDK's requests
    return that whole part as `type`; the provider is asked for the last one."""
    type_: str = request.type
    return type_.rsplit("$", 1)[-1]


class DockerProvider(px.Provider):
    """pulumi-resource-docker 5.2.0 for the resources this project declares."""

    def __init__(self) -> None:
        self._config = engine.EngineConfig.from_args({}, os.environ)
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def api(self) -> docker.APIClient:
        """The provider's client, made on first use and kept (CFG:120-201 caches it)."""
        with self._lock:
            if self._api is None:
                self._api = engine.make_client(self._config)
            return self._api

    # -- provider configuration --

    async def get_schema(self, request: px.GetSchemaRequest) -> px.GetSchemaResponse:
        return px.GetSchemaResponse(json.dumps({"name": "docker", "version": VERSION}))

    async def check_config(self, request: px.CheckRequest) -> px.CheckResponse:
        return px.CheckResponse(inputs=request.new_inputs)

    async def diff_config(self, request: px.DiffRequest) -> px.DiffResponse:
        olds, news = plain_map(request.old_state), plain_map(request.new_inputs)
        ignored = set(request.ignore_changes)
        detailed: dict[str, diffing.Kind] = {}
        for key in sorted(set(olds) | set(news)):
            if key in ignored or olds.get(key) == news.get(key):
                continue
            if key not in olds:
                detailed[key] = diffing.Kind.ADD
            elif key not in news:
                detailed[key] = diffing.Kind.DELETE
            else:
                detailed[key] = diffing.Kind.UPDATE
        return _diff_response(
            diffing.Diff(changes=bool(detailed), diffs=sorted(detailed), detailed=detailed)
        )

    async def configure(self, request: px.ConfigureRequest) -> px.ConfigureResponse:
        self._config = engine.EngineConfig.from_args(plain_map(request.args), os.environ)
        with self._lock:
            self._api = None
        return px.ConfigureResponse(
            accept_secrets=False,
            supports_preview=True,
            accept_resources=False,
            accept_outputs=False,
        )

    # -- resources --

    async def check(self, request: px.CheckRequest) -> px.CheckResponse:
        news = plain_map(request.new_inputs)
        if _type(request) == IMAGE:
            inputs, failures = await self._run(native_image.check, news)
        else:
            inputs, failures = diffing.check(_type(request), news)
        return px.CheckResponse(
            inputs=wrap_map(inputs),
            failures=[px.CheckFailure(f.property, f.reason) for f in failures] or None,
        )

    async def diff(self, request: px.DiffRequest) -> px.DiffResponse:
        olds, news = plain_map(request.old_state), plain_map(request.new_inputs)
        if _type(request) == IMAGE:
            return _diff_response(native_image.diff(olds, news))
        return _diff_response(diffing.diff(_type(request), olds, news, request.ignore_changes))

    async def create(self, request: px.CreateRequest) -> px.CreateResponse:
        type_, inputs = _type(request), plain_map(request.properties)
        if type_ != IMAGE:
            # The provider works on Terraform's config, which has no `__defaults`.
            inputs = diffing.without_defaults(inputs)
        timeout = request.timeout or DEFAULT_TIMEOUT
        if type_ == IMAGE:
            if request.preview and not inputs.get("buildOnPreview"):
                return px.CreateResponse(resource_id=None, properties=wrap_map(inputs))
            resource_id, outputs = await self._run(native_image.build, self.api(), inputs)
            return px.CreateResponse(resource_id, self._image_state(inputs, outputs))
        if request.preview:
            return px.CreateResponse(None, wrap_map(_preview_state(type_, inputs)))
        try:
            state = await asyncio.wait_for(self._run(self._create, type_, inputs, timeout), timeout)
        except engine.InitFailed as err:
            # What Terraform keeps of a create that failed after it set the ID: the
            # planned attributes and the ID, nothing read back (the Read at CF:673
            # never ran). The reason as BR:1375 words it.
            partial = {**inputs, "id": err.container_id, **meta(type_, "create", timeout)}
            raise InitError(err.container_id, partial, f"creating {request.urn}: {err}") from err
        state.update(meta(type_, "create", timeout))
        return px.CreateResponse(str(state["id"]), wrap_map(state))

    def _create(self, type_: str, inputs: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Create, then the provider's Read (every Create ends with it: CF:673,
        NF:81, V:285, IF:55)."""
        api = self.api()
        state: dict[str, Any] | None
        if type_ == CONTAINER:
            container_id = engine.create_container(api, inputs, timeout)
            state = engine.read_container(api, container_id, inputs)
        elif type_ == NETWORK:
            state = engine.read_network(api, engine.create_network(api, inputs), inputs)
        elif type_ == VOLUME:
            state = engine.read_volume(api, engine.create_volume(api, inputs), inputs)
        elif type_ == REMOTE_IMAGE:
            engine.find_image(api, str(inputs["name"]), str(inputs.get("platform") or ""))
            state = engine.read_remote_image(api, inputs)
        else:
            raise engine.ProviderError(f"unknown resource type {type_}")
        if state is None:
            raise engine.ProviderError(f"{type_} {inputs.get('name')} is gone after its create")
        return state

    @staticmethod
    def _image_state(
        inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> dict[str, PropertyValue]:
        """checkpointObject (PD:525-529): the outputs, and the inputs as a secret `__inputs`."""
        state = wrap_map(outputs)
        state["__inputs"] = wrap(dict(inputs), secret=True)
        return state

    async def read(self, request: px.ReadRequest) -> px.ReadResponse:
        type_, state = _type(request), plain_map(request.properties)
        if type_ == IMAGE:
            return px.ReadResponse(request.resource_id, request.properties, request.inputs)
        read = await self._run(self._read, type_, request.resource_id, state)
        if read is None:
            return px.ReadResponse(resource_id=None)
        resource_id = str(read.get("id") or request.resource_id)
        inputs = diffing.refreshed_inputs(type_, plain_map(request.inputs), read)
        return px.ReadResponse(resource_id, wrap_map(read), wrap_map(inputs))

    def _read(self, type_: str, resource_id: str, state: dict[str, Any]) -> dict[str, Any] | None:
        api = self.api()
        if type_ == CONTAINER:
            return engine.read_container(api, resource_id, state)
        if type_ == NETWORK:
            return engine.read_network(api, resource_id, state)
        if type_ == VOLUME:
            return engine.read_volume(api, resource_id, state)
        if type_ == REMOTE_IMAGE:
            return engine.read_remote_image(api, state)
        raise engine.ProviderError(f"unknown resource type {type_}")

    async def update(self, request: px.UpdateRequest) -> px.UpdateResponse:
        type_ = _type(request)
        olds, news = plain_map(request.olds), plain_map(request.news)
        if type_ == IMAGE:
            if request.preview and not news.get("buildOnPreview"):
                return px.UpdateResponse(wrap_map(news))
            _, outputs = await self._run(native_image.build, self.api(), news)
            return px.UpdateResponse(self._image_state(news, outputs))
        planned = diffing.planned_state(type_, olds, news)
        if request.preview:
            return px.UpdateResponse(wrap_map(planned))
        changed = set(diffing.diff(type_, olds, news).diffs)
        timeout = request.timeout or DEFAULT_TIMEOUT
        state = await asyncio.wait_for(
            self._run(self._update, type_, request.resource_id, olds, planned, changed), timeout
        )
        state.update(meta(type_, "update", timeout))
        return px.UpdateResponse(wrap_map(state))

    def _update(
        self,
        type_: str,
        resource_id: str,
        olds: dict[str, Any],
        planned: dict[str, Any],
        changed: set[str],
    ) -> dict[str, Any]:
        """Container: CF:991-1076, no Read afterwards, so the state is the plan.
        RemoteImage: find (pull if absent) and Read (IF:134-148)."""
        api = self.api()
        if type_ == CONTAINER:
            engine.update_container(api, resource_id, olds, planned, changed)
            return planned
        if type_ == REMOTE_IMAGE:
            engine.find_image(api, str(planned["name"]), str(planned.get("platform") or ""))
            return engine.read_remote_image(api, planned) or planned
        return planned

    async def delete(self, request: px.DeleteRequest) -> None:
        type_, state = _type(request), plain_map(request.properties)
        if type_ == IMAGE:
            return  # PD:490-496
        timeout = request.timeout or DEFAULT_TIMEOUT
        await asyncio.wait_for(self._run(self._delete, type_, request.resource_id, state), timeout)

    def _delete(self, type_: str, resource_id: str, state: dict[str, Any]) -> None:
        api = self.api()
        if type_ == CONTAINER:
            engine.delete_container(api, resource_id, state)
        elif type_ == NETWORK:
            engine.delete_network(api, resource_id)
        elif type_ == VOLUME:
            engine.delete_volume(api, resource_id)
        elif type_ == REMOTE_IMAGE:
            engine.delete_remote_image(api, state)
        else:
            raise engine.ProviderError(f"unknown resource type {type_}")


class _Servicer(ProviderServicer):
    """The SDK's servicer with a DiffConfig that marshals like its Diff does, and a
    Create that fails as the bridge does: a provider error is its message alone
    (the SDK's servicer would add a Python traceback), a create that left the
    container behind an `ErrorResourceInitFailed` detail (BR:2073-2081)."""

    async def Create(self, request: Any, context: Any) -> Any:
        try:
            resp = await self._provider.create(
                px.CreateRequest(
                    request.urn,
                    PropertyValue.unmarshal_map(request.properties),
                    request.timeout,
                    request.preview,
                )
            )
        except InitError as err:
            detail = proto.ErrorResourceInitFailed(
                id=err.resource_id,
                properties=PropertyValue.marshal_map(wrap_map(err.state)),
                reasons=[err.reason],
            )
            status = status_pb2.Status(code=grpc.StatusCode.UNKNOWN.value[0], message=err.reason)
            status.details.add().Pack(detail)
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                err.reason,
                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
            )
            raise  # abort raises; this is never reached
        except engine.ProviderError as err:
            await context.abort(grpc.StatusCode.UNKNOWN, str(err))
            raise
        return proto.CreateResponse(
            id=resp.resource_id or "", properties=PropertyValue.marshal_map(resp.properties)
        )

    async def DiffConfig(self, request: Any, context: Any) -> Any:
        resp = await self._provider.diff_config(
            px.DiffRequest(
                request.urn,
                request.id,
                PropertyValue.unmarshal_map(request.olds),
                PropertyValue.unmarshal_map(request.news),
                list(request.ignoreChanges),
            )
        )
        changes = proto.DiffResponse.DIFF_SOME if resp.changes else proto.DiffResponse.DIFF_NONE
        return proto.DiffResponse(
            replaces=resp.replaces,
            stables=resp.stables,
            deleteBeforeReplace=resp.delete_before_replace,
            changes=changes,
            diffs=resp.diffs,
            detailedDiff={
                k: proto.PropertyDiff(kind=cast(Any, v.kind.value), inputDiff=v.input_diff)
                for k, v in resp.detailed_diff.items()
            },
            hasDetailedDiff=True,
        )


class _Trace(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """With $VLLM_NGINX_PROVIDER_TRACE set, one JSON line per call to that file:
    the method, the resource, whether it is a preview, and what a Diff answered.
    Tests read it to see what the engine asked, and in which order."""

    def __init__(self, path: str) -> None:
        self._path = path

    def _write(self, record: Mapping[str, Any]) -> None:
        with open(self._path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = str(details.method).rsplit("/", 1)[-1]

        async def traced(request: Any, context: Any) -> Any:
            record: dict[str, Any] = {"method": method, "pid": os.getpid()}
            for field in ("urn", "id", "preview"):
                if hasattr(request, field):
                    record[field] = getattr(request, field)
            response = await inner(request, context)
            if method in ("Diff", "DiffConfig"):
                record["changes"] = int(response.changes)
                record["replaces"] = list(response.replaces)
                record["diffs"] = list(response.diffs)
                record["deleteBeforeReplace"] = bool(response.deleteBeforeReplace)
            self._write(record)
            return response

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def serve(argv: list[str]) -> None:
    """Listen on a loopback port and print it, as every plugin does; the engine
    passes its own address as the first argument."""
    parser = argparse.ArgumentParser(description="pulumi-resource-docker (test stand-in)")
    parser.add_argument("engine", nargs="?", default="")
    known, _ = parser.parse_known_args(argv)

    trace = os.environ.get("VLLM_NGINX_PROVIDER_TRACE")
    servicer = _Servicer(argv, VERSION, DockerProvider(), str(known.engine))
    serve_plugin(
        lambda server: provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server),
        [_Trace(trace)] if trace else None,
    )
