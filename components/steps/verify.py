"""The guide's verify step, automated: the LB answers `/v1/models` with our model.

Run after nginx starts, with the official `openai` client (the API key from the
environment), so a deployment that cannot serve fails the update, not the first user.
It first waits for the balancer's `/health` (200 once every pool has a replica that
serves; the 503 body names those that do not). With pools (`--probe`) nginx answers
`/v1/models` itself, so each name is asked for one token (or embedding) through it.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import openai

from components.plan.specs import VerifySpec
from components.steps.runner import spec_of

T = TypeVar("T")


class NotHealthyError(RuntimeError):
    """/health never answered 200 in time; the message is its last answer."""


def wait_healthy(
    url: str,
    timeout: float,
    certificate: str | None = None,
    progress_every: float = 15,
) -> None:
    """GET `<url>/health` until it answers 200, with a progress line now and then."""
    started = time.monotonic()
    shown = started
    last = "no answer"
    with _trusting(certificate) or httpx.Client() as http:
        while True:
            try:
                response = http.get(f"{url.rstrip('/')}/health", timeout=10)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text.strip()[:500]}"
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            now = time.monotonic()
            if now - started > timeout:
                raise NotHealthyError(last)
            if now - shown >= progress_every:
                shown = now
                print(
                    f"verify: waiting for {url}/health ({now - started:.0f}s): {last}",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(1)


def _trusting(certificate: str | None) -> openai.DefaultHttpxClient | None:
    """System CAs plus the load balancer's own certificate, which may be self-signed."""
    if not certificate:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=certificate)
    # Trust the server's certificate itself, whether or not it is a CA's.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return openai.DefaultHttpxClient(verify=context)


def _client(
    url: str, api_key: str | None, timeout: float, certificate: str | None
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url.rstrip('/')}/v1",
        api_key=api_key or "unused",
        max_retries=0,
        timeout=timeout,
        http_client=_trusting(certificate),
    )


def _until_answered(ask: Callable[[], T], timeout: float) -> T:
    """`ask()`, retried while nginx or its upstream is not up yet, until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except (openai.APIConnectionError, openai.InternalServerError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def served_models(
    url: str, api_key: str | None, timeout: float, certificate: str | None = None
) -> list[str]:
    """The model ids the LB lists, retried until it answers or time runs out."""
    client = _client(url, api_key, 10, certificate)
    return _until_answered(lambda: [model.id for model in client.models.list()], timeout)


def probe(
    url: str,
    model: str,
    *,
    embedding: bool,
    api_key: str | None,
    timeout: float,
    certificate: str | None = None,
) -> str:
    """One minimal request naming `model` through the load balancer; what answered.

    Retried like `/v1/models` while the pool's upstream is still coming up (a
    502/503 from nginx); a 4xx is the pool's own answer, and final."""
    client = _client(url, api_key, 30, certificate)

    def ask() -> str:
        if embedding:
            return client.embeddings.create(model=model, input="ping").model
        return client.completions.create(model=model, prompt="ping", max_tokens=1).model

    return _until_answered(ask, timeout)


def main() -> int:
    args = spec_of(VerifySpec)
    if args is None:
        return 2
    api_key = os.environ.get("VLLM_API_KEY")
    certificate = os.environ.get("VLLM_NGINX_LB_CERTIFICATE")
    try:
        wait_healthy(args.url, args.timeout_seconds, certificate)
    except NotHealthyError as err:
        print(
            f"error: {args.url}/health did not answer 200 within {args.timeout_seconds:.0f}s; "
            f"its last answer: {err}. The pools it names have no replica that can serve: "
            "read those replicas' logs (docker logs <replica>).",
            file=sys.stderr,
        )
        return 1
    try:
        models = served_models(args.url, api_key, args.timeout_seconds, certificate)
    except openai.APIError as err:
        print(f"error: {args.url}/v1/models failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    missing = [m for m in args.models if m not in models]
    if missing:
        wanted = missing[0] if len(args.models) == 1 else missing
        print(f"error: {args.url}/v1/models lists {models}, not {wanted!r}", file=sys.stderr)
        return 1
    if not args.probe:
        print(json.dumps({"url": args.url, "models": models}))
        return 0
    answered: dict[str, str] = {}
    for model in args.models:
        kind = "embedding" if model in args.embeddings else "completion"
        try:
            answered[model] = probe(
                args.url,
                model,
                embedding=model in args.embeddings,
                api_key=api_key,
                timeout=args.timeout_seconds,
                certificate=certificate,
            )
        except openai.APIError as err:
            print(
                f"error: a {kind} request for {model!r} through {args.url} failed: "
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )
            return 1
    print(json.dumps({"url": args.url, "models": models, "answered": answered}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
