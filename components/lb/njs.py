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


# Model routing (components/lb/pools.py): router.js imports prefix.js and the
# generated table models.js by relative path, so the three sit in one directory.
ROUTER_SCRIPT = "router.js"
ROUTING_TABLE_SCRIPT = "models.js"
ROUTER_MODULE = "lb_router"
ROUTER_HANDLER = f"{ROUTER_MODULE}.route"
MODELS_HANDLER = f"{ROUTER_MODULE}.models"
POOL_VARIABLE = "$lb_pool"


def router_script() -> str:
    """The text of `router.js`, as it must reach the nginx container."""
    return (CONTAINERS_DIR / "nginx" / ROUTER_SCRIPT).read_text(encoding="utf-8")


# The balancer's /health (components/lb/health.py): health.js imports models.js,
# which carries the health table in every config, with or without pools.
HEALTH_SCRIPT = "health.js"
HEALTH_MODULE = "lb_health"
HEALTH_HANDLER = f"{HEALTH_MODULE}.health"


def health_script() -> str:
    """The text of `health.js`, as it must reach the nginx container."""
    return (CONTAINERS_DIR / "nginx" / HEALTH_SCRIPT).read_text(encoding="utf-8")
