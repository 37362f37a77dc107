"""Names the rendered config, the nginx container and the tests agree on.

Upstream and variable names, the paths files are uploaded to in the nginx
container, and the JSON body of the balancer's own 401.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Directive = dict[str, Any]

UPSTREAM_NAME = "vllm_backends"
# prefix_affinity's second upstream: least_conn without a bound, for requests
# without a usable prompt and for overflow when every replica is at its bound.
FALLBACK_UPSTREAM_NAME = "vllm_backends_fallback"
HEALTH_PATH = "/health"
API_PREFIX = "/v1/"
AFFINITY_KEY_VARIABLE = "$lb_affinity_key"

# Everything an operator needs to see which replica answered and where the time
# went; the Authorization header (the API key) and request bodies never appear.
LOG_FORMAT = (
    '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
    "request_time=$request_time upstream=$upstream_addr "
    "upstream_status=$upstream_status upstream_connect_time=$upstream_connect_time "
    "upstream_header_time=$upstream_header_time "
    "upstream_response_time=$upstream_response_time"
)


# The variable the API key file defines; see `render_api_key_map`.
EXPECTED_AUTHORIZATION_VARIABLE = "$lb_expected_authorization"
# The Authorization header as vLLM reads it, and what the guard compares
# (the expected value itself for OPTIONS); see `locations.api_key_maps`.
AUTHORIZATION_VARIABLE = "$lb_authorization"
PRESENTED_AUTHORIZATION_VARIABLE = "$lb_presented_authorization"
# Modern protocols only: TLS 1.0 and 1.1 are deprecated (RFC 8996) and every
# OpenAI client library speaks 1.2 or 1.3.
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
UNAUTHORIZED_BODY = json.dumps(
    {
        "error": {
            "message": "Missing or invalid API key: send it as the header "
            "Authorization: Bearer <key>",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)


@dataclass(frozen=True)
class TlsFiles:
    """Where the deployment puts the certificate (chain) and its private key.

    Paths, not contents: the private key is a secret and must not end up in
    the config text, which is stored in Pulumi state as plain data.
    """

    certificate: str
    key: str


# Where the deployment is expected to upload the secret files in the container.
# nginx's master process (root) reads them once at start; workers never do.
CONTAINER_TLS_FILES = TlsFiles(
    certificate="/etc/nginx/tls/server.crt", key="/etc/nginx/tls/server.key"
)
CONTAINER_API_KEY_MAP = "/etc/nginx/api-key.conf"
# Where nginx.org's packages (the official image) and Debian's
# libnginx-mod-http-js both install njs's HTTP module.
NJS_MODULE_PATH = "/usr/lib/nginx/modules/ngx_http_js_module.so"
# Where the deployment is expected to upload the prefix_affinity script.
CONTAINER_PREFIX_SCRIPT = "/etc/nginx/lb/prefix.js"
# The body njs reads must be in memory (a body nginx spilled to a temp file is
# routed by the fallback); larger than any text prompt, allocated only as
# large as each body.
PREFIX_BODY_BUFFER = "1m"
BODY_BUFFER = "1m"
