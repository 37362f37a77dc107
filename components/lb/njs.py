"""Files the load balancer needs besides nginx.conf: the njs script of `prefix_affinity`.

The script is kept as a real `.js` file (readable, testable with njs) and
loaded from the package, so the deployment uploads exactly what the tests ran.
"""

from __future__ import annotations

from components.containers import CONTAINERS_DIR

PREFIX_SCRIPT = "prefix.js"
# Names the script and the rendered config must agree on.
PREFIX_MODULE = "lb_prefix"
PREFIX_HANDLER = f"{PREFIX_MODULE}.route"
PREFIX_LOCATION = "@lb_prefix"
FALLBACK_LOCATION = "@lb_fallback"
PREFIX_KEY_VARIABLE = "$lb_prefix_key"
PREFIX_CHARS_VARIABLE = "$lb_prefix_chars"


def prefix_script() -> str:
    """The text of `prefix.js`, as it must reach the nginx container."""
    return (CONTAINERS_DIR / "nginx" / PREFIX_SCRIPT).read_text(encoding="utf-8")
