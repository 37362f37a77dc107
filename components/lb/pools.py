"""Model pools as the load balancer sees them, and the names derived from them.

Several models behind one endpoint: each pool is a set of replicas serving
one model (and its LoRA adapters), with its own routing policy. The balancer
reads the request's `model` and sends it to the pool that serves that name;
the pool's name only names nginx objects (upstreams, named locations), so it
is checked as a DNS label, while served and adapter names are what clients
send and must be unique across pools, or one name would have two homes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.config.sections import RoutingPolicy, Upstream
from components.config.values import dns_label, model_id, served_name
from components.lb.directives import checked


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


def check_pools(pools: Sequence[ModelPool]) -> tuple[ModelPool, ...]:
    """Check every value once more, and that each pool name and client-facing name
    has one owner; the config rules check the same, this is defence in depth."""
    owners: dict[str, str] = {}
    names: set[str] = set()
    for index, pool in enumerate(pools):
        where = f"pools[{index}]"
        name = checked(f"{where}.name", pool.name, dns_label)
        if name in names:
            raise ValueError(f"{where}.name: pool {name!r} is named twice")
        names.add(name)
        checked(f"{where}.model", pool.model, model_id)
        RoutingPolicy(pool.policy)
        if not pool.upstreams:
            raise ValueError(f"{where} (pool {name!r}): at least one replica is needed")
        for field, value in [
            (f"{where}.served_name", pool.served_name),
            *((f"{where}.adapters[{i}]", a) for i, a in enumerate(pool.adapters)),
        ]:
            checked(field, value, served_name)
            if value in owners:
                raise ValueError(
                    f"{field} (pool {name!r}): the model name {value!r} is already served "
                    f"by pool {owners[value]!r}; each name must route to one pool"
                )
            owners[value] = name
    return tuple(pools)
