"""Every error nginx itself answers, as the OpenAI API's JSON error object.

Clients of an OpenAI API parse `{"error": {...}}`, not nginx's HTML pages, so
`error_page` sends each status nginx makes to an internal location answering
that JSON object with the same status (`Retry-After` where retrying helps).
A replica's own errors pass through unchanged; `type` and `code` follow
vLLM's (docs/load-balancer.md#errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.config.sections import LoadBalancerSettings
from components.lb.directives import d
from components.lb.names import Directive


@dataclass(frozen=True)
class NginxError:
    caught: int
    """The status nginx produces (as `error_page` names it)."""
    status: int
    """The status the client gets."""
    type: str
    message: str
    retry: bool = False
    """Send `Retry-After`: the request did not reach a replica that answered it."""


def _errors(lb: LoadBalancerSettings) -> list[NginxError]:
    body_mb = str(lb.max_body_size_mb)
    read_s = str(lb.read_timeout_seconds)
    return [
        NginxError(
            400,
            400,
            "BadRequestError",
            "The load balancer could not read the request (malformed request line, "
            "header or body).",
        ),
        NginxError(
            404,
            404,
            "NotFoundError",
            "Unknown path. The load balancer serves the OpenAI API under /v1/ and its "
            "own health under /health.",
        ),
        NginxError(405, 405, "MethodNotAllowedError", "Method not allowed for this path."),
        NginxError(408, 408, "RequestTimeoutError", "The request was not received in time."),
        NginxError(
            413,
            413,
            "RequestTooLargeError",
            f"The request body is larger than the load balancer accepts ({body_mb} MB, "
            "loadBalancer.maxBodySizeMb).",
        ),
        NginxError(414, 414, "BadRequestError", "The request URI is too long."),
        NginxError(494, 400, "BadRequestError", "A request header or cookie is too large."),
        NginxError(
            497,
            400,
            "BadRequestError",
            "A plain HTTP request was sent to the HTTPS port: use https://.",
        ),
        NginxError(
            500, 500, "InternalServerError", "The load balancer failed internally.", retry=True
        ),
        NginxError(
            501, 501, "NotImplementedError", "The request's Transfer-Encoding is not supported."
        ),
        NginxError(
            502,
            502,
            "ServiceUnavailableError",
            "No replica could take the request: every replica that serves it is down, "
            "restarting or refused it. Retry later; GET /health names the pools that "
            "cannot serve.",
            retry=True,
        ),
        NginxError(
            503,
            503,
            "ServiceUnavailableError",
            "The load balancer cannot take the request now. Retry later.",
            retry=True,
        ),
        NginxError(
            504,
            504,
            "TimeoutError",
            "A replica did not answer in time (loadBalancer.connectTimeoutSeconds to connect, "
            f"loadBalancer.readTimeoutSeconds = {read_s} s between two reads).",
            retry=True,
        ),
        NginxError(505, 505, "BadRequestError", "HTTP version not supported."),
    ]


def error_body(status: int, type_: str, message: str, param: str | None = None) -> str:
    """vLLM's ErrorResponse: `{"error": {"message", "type", "param", "code"}}`."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": status}}
    )


# URIs, not named locations: nginx cannot redirect a request whose request
# line it could not parse (a 400, a 414) to a named location ("empty URI in
# redirect to named location") and answers its HTML 500 instead.
ERROR_PREFIX = "/_lb/error/"  # under health.INTERNAL_PREFIX


def _location(caught: int) -> str:
    return f"{ERROR_PREFIX}{caught}"


def retry_after_seconds(lb: LoadBalancerSettings) -> str:
    """A replica nginx took out is tried again after `failWindowSeconds`."""
    return str(lb.fail_window_seconds)


TOO_MANY_LOCATION = f"{ERROR_PREFIX}429"
"""Named API keys' limits (components/lb/keys.py answers it)."""


def error_pages(
    lb: LoadBalancerSettings, except_: tuple[int, ...] = (), limited: bool = False
) -> list[Directive]:
    """The `error_page` lines of a block: nginx's statuses to the JSON locations.

    A block with an `error_page` of its own inherits none from the server, so
    a location that sends some status elsewhere (prefix_affinity's 502 to its
    fallback) repeats the rest with `except_`. `limited`: named API keys' 429.
    """
    pages = [
        d("error_page", str(e.caught), "=" + str(e.status), _location(e.caught))
        for e in _errors(lb)
        if e.caught not in except_
    ]
    if limited:
        pages.append(d("error_page", "429", "=429", TOO_MANY_LOCATION))
    return pages


def error_locations(lb: LoadBalancerSettings) -> list[Directive]:
    """One internal location per status, answering the JSON object.

    `types {}` so the body is `application/json` whatever extension the
    request's path has (nginx's built-in types would call `/x.html` text/html).
    """
    retry_after = retry_after_seconds(lb)
    out = []
    for e in _errors(lb):
        block = [d("internal"), d("types", block=[]), d("default_type", "application/json")]
        if e.retry:
            block.append(d("add_header", "Retry-After", retry_after, "always"))
        block.append(d("return", str(e.status), error_body(e.status, e.type, e.message)))
        out.append(d("location", "=", _location(e.caught), block=block))
    return out
