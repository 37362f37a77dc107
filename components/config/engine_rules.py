"""The rules of one engine's replicas beside its load balancer: name length, the
port range, the balancer's port and name, and the devices each replica gets, the
same for the one engine and for each host, for one model and for pools; only the
words that say how the names, ports and devices were given differ."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.config.rule import Rule, rule

if TYPE_CHECKING:
    from components.config.sections import LoadBalancerSettings

TP = "tensorParallelSize"
Groups = Sequence[object] | None


@dataclass(frozen=True)
class Wording:
    """How the messages name what made the replicas' names and ports."""

    names: str
    """After 'makes replica names': '' or " ('<prefix>-<pool>-<i>')"."""
    name: str
    """How a replica name is made: "'namePrefix' + number"."""
    scope: str
    """The key beside the reported one that made them: 'replicas', 'models' or 'hosts'."""
    count: str = ""
    """After the count in the port message: 'replicas' or 'replicas of all pools'."""
    ports: str = ""
    """What the port range comes from: "'basePort' + 'replicas'"."""


def one_engine_rules(
    names: Sequence[str], ports: tuple[int, int] | None, lb: LoadBalancerSettings, words: Wording
) -> Iterator[Rule]:
    """`names` of the engine's replicas, on ports `first` to `last` (None: with 'hosts',
    where each host's ports are checked apart, and its names with all the others)."""
    longest = max(names, key=len, default="")
    if len(longest) > 63:
        yield rule(
            "namePrefix",
            f"makes replica names{words.names} of up to {len(longest)} characters; "
            "container names double as DNS names, at most 63",
            words.scope,
        )
    first, last = ports or (0, -1)  # None: an empty range
    if last > 65535:
        yield rule(
            "basePort", f"{first} + {len(names)} {words.count} passes port 65535", words.scope
        )
    if first <= lb.port <= last:
        yield rule(
            "loadBalancer.port",
            f"{lb.port} collides with the replica ports {first}-{last} ({words.ports})",
            "basePort",
            words.scope,
        )
    if lb.name in names:
        yield rule(
            "loadBalancer.name",
            f"{lb.name} collides with a replica name ({words.name})",
            "namePrefix",
            words.scope,
        )


def listed_rules(
    where: str,
    gpus: Groups,
    cpu_sets: Groups,
    replicas: int | None,
    cpu: bool,
    whose: str,
    *scope: str,
) -> Iterator[Rule]:
    """A host's or pool's (`whose` 'hosts', 'pools') own 'gpus' or 'cpuSets': the
    backend's kind, one per replica."""
    if gpus is not None and cpu:
        yield rule(f"{where}.gpus", "must not be set with 'backend' cpu", *scope, "backend")
    if cpu_sets is not None and not cpu:
        yield rule(
            f"{where}.cpuSets", f"is for 'backend' cpu; GPU {whose} list 'gpus'", *scope, "backend"
        )
    for field, groups in (("gpus", gpus), ("cpuSets", cpu_sets)):
        if groups is not None and replicas is not None and len(groups) != replicas:
            yield rule(
                f"{where}.{field}",
                f"lists {len(groups)} replicas but '{where}.replicas' is {replicas}",
                *scope,
            )


def device_rules(
    found: Iterable[tuple[str, int, tuple[int, ...]]], noun: str, tp: int, on: str, *scope: str
) -> Iterator[Rule]:
    """Each replica's GPUs (`noun` 'GPU') or cores ('CPU') on one engine, as `(key it
    is written on, replica, ids)`: a tensor-parallel share each, and none used twice."""
    seen: set[int] = set()
    for key, r, ids in found:
        if noun == "GPU" and len(ids) != tp:
            yield rule(key, f"has {len(ids)} GPUs but 'tensorParallelSize' is {tp}", *scope, TP)
        if noun == "CPU" and ids and len(ids) % tp:
            yield rule(
                key,
                f"gives replica {r}{on} {len(ids)} CPUs, not a multiple of "
                f"'tensorParallelSize' {tp}",
                *scope,
                TP,
            )
        for device in ids:
            if device in seen:
                yield rule(key, f"uses {noun} {device}, which another replica{on} uses too", *scope)
            seen.add(device)
