"""Model pools as the load balancer sees them, and the names derived from them.

A pool's name only names nginx objects, so it is checked as a DNS label;
served and adapter names are what clients send, so they must be unique
across pools, or one name would have two homes (docs/model-pools.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.config.sections import RoutingPolicy, Upstream
from components.config.settings import Pool


@dataclass(frozen=True)
class ModelPool:
    """One model pool as the load balancer sees it."""

    name: str
    """Pool name, a DNS label, unique; upstream and location names derive from it."""
    served_name: str
    """The name clients send as `model` (the pool's servedModelName, else its model id)."""
    model: str
    """The Hub id or absolute path it serves (`root` in /v1/models)."""
    upstreams: tuple[Upstream, ...]
    """Its replicas, as the single-model upstreams."""
    policy: RoutingPolicy
    """Its routing policy inside the pool."""
    adapters: tuple[str, ...] = ()
    """LoRA adapter names this pool serves; a request naming one goes to this pool."""


def model_pool(pool: Pool, upstreams: tuple[Upstream, ...]) -> ModelPool:
    """A pool of the settings as the balancer routes to it, over `upstreams`."""
    return ModelPool(
        name=pool.name,
        served_name=pool.served_name,
        model=pool.model,
        upstreams=upstreams,
        policy=pool.policy,
        adapters=tuple(a.name for a in pool.adapters),
    )


# Names the rendered config and router.js share. Derived from the pool name,
# a DNS label, so they can neither collide with each other (`_` is not in a
# label) nor with the single-model names.
def upstream_name(pool: ModelPool) -> str:
    return f"pool_{pool.name}"


def fallback_upstream_name(pool: ModelPool) -> str:
    """prefix_affinity's least_conn upstream of the pool, as the single upstream has."""
    return f"pool_{pool.name}_fallback"


def location_name(pool: ModelPool) -> str:
    return f"@pool_{pool.name}"


def fallback_location_name(pool: ModelPool) -> str:
    return f"@pool_{pool.name}_fallback"


def is_prefix_pool(pool: ModelPool) -> bool:
    return pool.policy == RoutingPolicy.PREFIX_AFFINITY


MISSING_MODEL_MESSAGE = (
    "The request names no model. The load balancer sends each request to the "
    'replicas serving its `model` (the JSON body\'s "model", or the "model" '
    "field of a multipart form); GET /v1/models lists the served models."
)


def routing_table(pools: Sequence[ModelPool]) -> dict[str, object]:
    """What router.js needs, as plain data: name -> pool, the pools' locations,
    the text of the 404s and the cards of GET /v1/models.

    Cards as vLLM v0.33.0 lists them (docs/vllm.md): the served name with
    `root` = the model, `parent` null; then each adapter with `parent` = the
    served name. An adapter's `root` (its path on the replica) is not known to
    the balancer, so it is null. `created` is added per request by router.js.
    """
    names: dict[str, str] = {}
    cards: list[dict[str, str | None]] = []
    table_pools: dict[str, dict[str, object]] = {}
    for pool in pools:
        names[pool.served_name] = pool.name
        cards.append({"id": pool.served_name, "root": pool.model, "parent": None})
        for adapter in pool.adapters:
            names[adapter] = pool.name
            cards.append({"id": adapter, "root": None, "parent": pool.served_name})
        table_pools[pool.name] = {
            "name": pool.name,
            "location": location_name(pool),
            "fallback": fallback_location_name(pool),
            "prefix": is_prefix_pool(pool),
        }
    return {
        "names": names,
        "pools": table_pools,
        # vLLM lists its served names, not its adapters, as the valid aliases.
        "aliases": ", ".join(pool.served_name for pool in pools),
        "missing": MISSING_MODEL_MESSAGE,
        "cards": cards,
    }
