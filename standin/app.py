"""The HTTP side: vLLM's OpenAI-compatible routes with timed, fake tokens.

Every response carries ``X-Replica`` (and completions ``system_fingerprint``) so a
test behind the load balancer can tell which replica answered. Tokens come after
``ttft_ms`` and then one per ``token_ms``, on a fixed schedule from the request's
arrival, so that measured latencies are those of the path in front of the stand-in
and not of the stand-in's own drift.

Before that schedule starts, the request is prefilled: `standin/prefix_cache.py`
models vLLM's prefix cache and a replica's one-at-a-time prefill, which cost
nothing unless ``STANDIN_PREFILL_MS_PER_TOKEN`` is set. Each generation
response says what the cache did in ``X-Prefix-Cache-Hit-Tokens`` and
``X-Prefix-Cache-Query-Tokens`` (and in ``usage.prompt_tokens_details``);
``/metrics`` has the totals under vLLM's names (`standin/metrics.py`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from standin import __version__
from standin.config import Config
from standin.http_metrics import HttpRequests
from standin.metrics import VllmMetrics
from standin.prefix_cache import (
    Lookup,
    PrefillQueue,
    PrefixCache,
    PrefixCacheConfig,
    prompt_tokens,
)
from standin.shutdown import Engine
from standin.vllm_metrics import RequestTrack
from standin.vllm_metrics import VllmMetrics as LatencyMetrics

_WORDS = ("Tokens", "from", "a", "stand-in", "for", "vLLM", "behind", "the", "load", "balancer.")
MAX_MODEL_LEN = 4096


def openai_error(
    status: int, message: str, kind: str, code: str | int | None = None, param: str | None = None
) -> JSONResponse:
    """An error body the `openai` client turns into its typed exceptions."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def unknown_model(model: object, aliases: tuple[str, ...] | None) -> JSONResponse:
    """vLLM v0.33.0's 404 for a model it does not serve, `code` being the status
    (`vllm/entrypoints/serve/exception_handling/error_response.py:98-105`): chat and
    completions name the served names and the parameter
    (`vllm/entrypoints/serve/engine/serving.py:75-83`); the pooling endpoints say
    less (`aliases` None; `serving.py:213`, docs/vllm.md)."""
    if aliases is None:
        return openai_error(404, f"The model `{model}` does not exist.", "NotFoundError", 404)
    message = f"The model `{model}` does not exist. Valid aliases: {', '.join(aliases)}."
    return openai_error(404, message, "NotFoundError", 404, "model")


GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
"""What vLLM v0.33.0's `--api-key` guards: paths beginning with one of these, as
plain string prefixes (`vllm/entrypoints/serve/middleware/authenticate.py:11`,
:47-62); v0.11.0 guarded `/v1` only."""


class ReplicaHeaderAndKey:
    """Pure ASGI wrapper: X-Replica on every response, API key as vLLM checks it.

    Pure ASGI rather than Starlette middleware because the middleware API changed
    between the Starlette versions the stand-in has to run on, and because the
    header must also be on 404s and 401s that no route produces.
    """

    def __init__(self, app: ASGIApp, replica_id: str, api_key: str | None) -> None:
        self.app = app
        self.replica_header = (b"x-replica", replica_id.encode("latin-1", "replace"))
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), self.replica_header]
            await send(message)

        if self.api_key is not None and self._needs_key(scope) and not self._has_key(scope):
            # vLLM's body, not an OpenAI-style error (authenticate.py:60).
            response = JSONResponse({"error": "Unauthorized"}, status_code=401)
            await response(scope, receive, send_with_header)
            return
        await self.app(scope, receive, send_with_header)

    @staticmethod
    def _needs_key(scope: Scope) -> bool:
        # Like vLLM: the guarded prefixes only; CORS preflights never are.
        path: str = scope.get("path", "")
        return scope.get("method") != "OPTIONS" and path.startswith(GUARDED_PREFIXES)

    def _has_key(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                # `Bearer` in any case, then the key (authenticate.py:31-44).
                scheme, _, key = bytes(value).decode("latin-1").partition(" ")
                expected = (self.api_key or "").encode("latin-1", "replace")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    key.encode("latin-1"), expected
                )
        return False


def count_tokens(value: Any) -> int:
    """Whitespace words: a rough, deterministic prompt length for `usage`."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_tokens(item) for item in value)
    if isinstance(value, dict):
        return count_tokens(value.get("content", "")) + count_tokens(value.get("text", ""))
    if isinstance(value, int):
        return 1
    return 0


def token_text(index: int) -> str:
    """The i-th generated token: words, so streamed text reads naturally."""
    return ("" if index == 0 else " ") + _WORDS[index % len(_WORDS)]


class BadRequest(Exception):
    """A request the OpenAI API would answer with 400."""


class StandinServer:
    """Routes bound to one replica's configuration and counters."""

    def __init__(
        self,
        config: Config,
        prefix: PrefixCacheConfig | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self.engine = engine if engine is not None else Engine()
        self.prefix = prefix if prefix is not None else PrefixCacheConfig.from_env()
        self.vllm_metrics = VllmMetrics(config.served_model_name)
        self.cache = PrefixCache(self.prefix.blocks, self.prefix.block_size)
        self.prefill = PrefillQueue(self.prefix.prefill_ms_per_token)
        # Latency histograms and KV-cache use, measured from what is really served.
        self.latency_metrics = LatencyMetrics(config.served_model_name)
        self.created = int(time.time())
        self.http_requests: HttpRequests | None = None
        self.generations = 0

    def build(self) -> ASGIApp:
        """The ASGI app uvicorn serves."""
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET", "POST"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]
        # vLLM v0.33.0 registers the generate routes only for a model that
        # generates, the pooling ones (/v1/embeddings) only for a pooling one
        # (vllm/entrypoints/launchers/api_server/routers.py:55-83).
        if self.config.pooling:
            routes.append(Route("/v1/embeddings", self.embeddings, methods=["POST"]))
        else:
            routes += [
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            ]
        # Behind the key check: a refused request is not counted.
        self.http_requests = HttpRequests(Starlette(routes=routes), [r.path for r in routes])
        return ReplicaHeaderAndKey(self.http_requests, self.config.replica_id, self.config.api_key)

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": f"standin-{__version__}"})

    async def models(self, request: Request) -> Response:
        # vLLM v0.33.0's cards (`vllm/entrypoints/serve/engine/protocol.py:90-113`,
        # `vllm/entrypoints/openai/models/serving.py:64-77`).
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}",
            "object": "model_permission",
            "created": self.created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": MAX_MODEL_LEN,
                "permission": [permission],
            }
            for name in self.config.served_model_names
        ]
        # Then a card per adapter: its name, its path as `root`, the first
        # served name as `parent` (vllm/entrypoints/openai/models/serving.py:149-163).
        data += [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.config.served_model_name,
                "max_model_len": None,
                "permission": [permission],
            }
            for name, path in self.config.lora_modules
        ]
        return JSONResponse({"object": "list", "data": data})

    def _answers_to(self, model: object) -> str | None:
        """The name a response carries for a request naming `model`, or None: the
        base model's first served name, or the adapter's own name (vLLM's
        `model_name(lora_request)`, vllm/entrypoints/openai/models/serving.py:144-147)."""
        if model is None or model in self.config.served_model_names:
            return self.config.served_model_name
        if model in {name for name, _ in self.config.lora_modules}:
            return str(model)
        return None

    async def embeddings(self, request: Request) -> Response:
        """vLLM's /v1/embeddings answer (vllm/entrypoints/pooling/embed/protocol.py:174-186):
        a deterministic unit vector per input, as floats or as base64 float32."""
        try:
            body = await self._json(request)
        except BadRequest as exc:
            return openai_error(400, str(exc), "BadRequestError")
        name = self._answers_to(body.get("model"))
        if name is None:
            model = body.get("model")
            return unknown_model(model, None)
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return openai_error(400, "input must be a string or a list", "BadRequestError")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return openai_error(400, f"unsupported encoding_format {encoding}", "BadRequestError")
        data = []
        for index, item in enumerate(inputs):
            vector = _embedding(json.dumps(item))
            data.append(
                {
                    "index": index,
                    "object": "embedding",
                    "embedding": (
                        vector
                        if encoding == "float"
                        else base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                    ),
                }
            )
        tokens = count_tokens(inputs)
        return JSONResponse(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": name,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    async def metrics(self, request: Request) -> Response:
        text = self.vllm_metrics.render()
        # Families the first set already exposes (prefix cache, running, ...) are skipped.
        text += self.latency_metrics.render(skip=text)
        if self.http_requests is not None:
            text += self.http_requests.render()
        return Response(text, media_type="text/plain; version=0.0.4")

    async def tokenize(self, request: Request) -> Response:
        try:
            request_body = await self._json(request)
        except BadRequest as exc:
            return openai_error(400, str(exc), "BadRequestError")
        source = request_body.get("prompt", request_body.get("messages", ""))
        words = " ".join(_flatten_text(source)).split()
        tokens = [zlib.crc32(word.encode()) % 32000 for word in words]
        return JSONResponse(
            {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens}
        )

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _token_budget(self, body: dict[str, Any], chat: bool) -> tuple[int, str]:
        limit = body.get("max_completion_tokens") if chat else None
        if limit is None:
            limit = body.get("max_tokens")
        if limit is None:
            # No limit given: the "model" stops by itself after the default length.
            return self.config.tokens, "stop"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest(f"max_tokens must be a positive integer, got {limit!r}")
        return limit, "length"

    async def _generate(self, request: Request, chat: bool) -> Response:
        arrived = asyncio.get_running_loop().time()
        try:
            body = await self._json(request)
            model = body.get("model")
            answer_as = self._answers_to(model)
            if answer_as is None:
                return unknown_model(model, self.config.served_model_names)
            if chat and not isinstance(body.get("messages"), list):
                raise BadRequest("messages must be a list")
            if not chat and "prompt" not in body:
                raise BadRequest("prompt is required")
            n_tokens, finish = self._token_budget(body, chat)
        except BadRequest as exc:
            return openai_error(400, str(exc), "BadRequestError")

        self.generations += 1
        every = self.config.fail_every
        if every and self.generations % every == 0:
            # A stand-in for a broken build or argument: vLLM's own answer to an
            # error inside the engine (`InternalServerError`, 500).
            return openai_error(500, "stand-in failure (STANDIN_FAIL_EVERY)", "InternalServerError")
        n_prompt = count_tokens(body.get("messages") if chat else body.get("prompt"))
        rejected = self.engine.stopping.is_set()
        if rejected:
            # vLLM >= 0.18 while it shuts down: the engine rejects the request with
            # an abort, answered 200 with no text (standin/shutdown.py).
            n_tokens, finish = 0, "abort"
        lookup = self.cache.admit([] if rejected else prompt_tokens(body, chat))
        self.vllm_metrics.prefix_cache_queries.inc(lookup.queried)
        self.vllm_metrics.prefix_cache_hits.inc(lookup.cached)
        prefill_start, prefill_end = self.prefill.schedule(arrived, lookup.queried - lookup.cached)
        job = _Job(
            server=self,
            chat=chat,
            arrived=arrived,
            n_tokens=n_tokens,
            finish=finish,
            prompt_tokens=n_prompt,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            lookup=lookup,
            prefill_start=prefill_start,
            first_token_at=prefill_end + self.config.ttft_ms / 1000.0,
            prompt=body.get("messages") if chat else body.get("prompt"),
            model=answer_as,
        )
        headers = {
            "X-Prefix-Cache-Hit-Tokens": str(lookup.cached),
            "X-Prefix-Cache-Query-Tokens": str(lookup.queried),
        }
        if body.get("stream"):
            return StreamingResponse(
                job.stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **headers},
            )
        return JSONResponse(await job.whole(), headers=headers)


EMBEDDING_SIZE = 8


def _embedding(text: str) -> list[float]:
    """A unit vector that depends on the text only, so equal inputs embed equally."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:EMBEDDING_SIZE]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _flatten_text(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _flatten_text(item)]
    if isinstance(value, dict):
        return _flatten_text(value.get("content", "")) + _flatten_text(value.get("text", ""))
    return []


@dataclass
class _Job:
    """One generation: its schedule, its response shapes, its bookkeeping."""

    server: StandinServer
    chat: bool
    arrived: float
    n_tokens: int
    finish: str
    prompt_tokens: int
    include_usage: bool
    lookup: Lookup
    prefill_start: float
    first_token_at: float
    prompt: Any = None
    model: str = ""
    """The name the response carries: the base model's, or the adapter's."""
    track: RequestTrack | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _due(self, index: int) -> float:
        return self.first_token_at + index * self.server.config.token_ms / 1000.0

    def _aborted(self) -> bool:
        """The engine aborted what it runs (`--shutdown-timeout 0` on SIGTERM)."""
        if self.server.engine.aborting.is_set():
            self.finish = "abort"
            return True
        return False

    async def _sleep_until(self, deadline: float) -> None:
        """Until `deadline`, or until the engine aborts the request."""
        await self.server.engine.sleep(deadline - asyncio.get_running_loop().time())

    def _usage(self, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.lookup.cached},
        }

    def _envelope(self, obj: str) -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {
            "id": prefix + self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model or self.server.config.served_model_name,
            "system_fingerprint": self.server.config.replica_id,
        }

    async def _count_start(self) -> None:
        """Wait for this request's turn to prefill (vLLM's waiting queue), then run."""
        metrics = self.server.vllm_metrics
        if self.prefill_start > asyncio.get_running_loop().time():
            metrics.num_requests_waiting.inc()
            try:
                await self._sleep_until(self.prefill_start)
            finally:
                metrics.num_requests_waiting.dec()
        metrics.num_requests_running.inc()
        metrics.prompt_tokens.inc(self.prompt_tokens)
        self.track = self.server.latency_metrics.start(self.arrived, self.prompt)

    def _count_end(self, generated: int, finished: bool) -> None:
        if self.track is not None:
            self.track.finish(asyncio.get_running_loop().time(), finished, self.finish)
        metrics = self.server.vllm_metrics
        metrics.num_requests_running.dec()
        metrics.generation_tokens.inc(generated)
        if finished:
            metrics.request_success.inc(labels={"finished_reason": self.finish})

    async def whole(self) -> dict[str, Any]:
        """Non-streaming: one body once the last token would have been generated
        (or, aborted, with the tokens generated until then)."""
        generated = self.n_tokens
        if self.n_tokens == 0:  # rejected: never ran
            self.server.vllm_metrics.request_success.inc(labels={"finished_reason": self.finish})
        else:
            await self._count_start()
            finished = False
            try:
                await self._sleep_until(self._due(self.n_tokens - 1))
                if self._aborted():
                    now = asyncio.get_running_loop().time()
                    generated = sum(1 for i in range(self.n_tokens) if self._due(i) <= now)
                if self.track is not None:
                    self.track.tokens_at(self._due(i) for i in range(generated))
                finished = True
            finally:
                self._count_end(generated if finished else 0, finished)
        text = "".join(token_text(i) for i in range(generated))
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": self.finish,
                "stop_reason": None,
            }
            body = self._envelope("chat.completion")
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish,
                "stop_reason": None,
            }
            body = self._envelope("text_completion")
        body["choices"] = [choice]
        body["usage"] = self._usage(generated)
        return body

    def _chunk(self, index: int) -> dict[str, Any]:
        last = index == self.n_tokens - 1
        text = token_text(index)
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if index == 0:
                delta = {"role": "assistant", "content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            body = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text}
            body = self._envelope("text_completion")
        choice["logprobs"] = None
        choice["finish_reason"] = self.finish if last else None
        body["choices"] = [choice]
        return body

    def _abort_chunk(self) -> dict[str, Any]:
        """The last chunk of an aborted request: no text, `finish_reason` abort."""
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {"content": ""}
        else:
            choice["text"] = ""
        choice["logprobs"] = None
        choice["finish_reason"] = "abort"
        body["choices"] = [choice]
        return body

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE: one chunk per token on schedule, an optional usage chunk, then [DONE]."""
        if self.n_tokens == 0:  # rejected: never ran
            self.server.vllm_metrics.request_success.inc(labels={"finished_reason": self.finish})
            yield _sse(self._abort_chunk())
            yield b"data: [DONE]\n\n"
            return
        await self._count_start()
        sent = 0
        try:
            for index in range(self.n_tokens):
                await self._sleep_until(self._due(index))
                if self._aborted():
                    yield _sse(self._abort_chunk())
                    break
                yield _sse(self._chunk(index))
                if self.track is not None:
                    self.track.token(asyncio.get_running_loop().time())
                sent += 1
            if self.include_usage:
                usage = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
                usage["choices"] = []
                usage["usage"] = self._usage(sent)
                yield _sse(usage)
            yield b"data: [DONE]\n\n"
        finally:
            self._count_end(sent, sent == self.n_tokens or self.finish == "abort")


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
