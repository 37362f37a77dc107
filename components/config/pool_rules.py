"""The rules of model pools ('models'): which top-level keys they replace, names,
devices and ports across pools, each reported on the key as written
(`models[1].gpus[0]`, `models[0].adapters[1].name`)."""

from __future__ import annotations

from collections.abc import Iterator

from components.config.engine_rules import listed_rules
from components.config.host_rules import no_such_host
from components.config.pool_sections import PoolHostSettings, PoolSettings
from components.config.rule import Rule, replaced_keys, rule
from components.config.sections import Backend
from components.config.settings import Settings
from components.config.vllm_args import LORA_FLAGS, managed_flag_problem

POOL_KEYS = {
    "model": ("model", "model"),
    "served_model_name": ("servedModelName", "servedModelName"),
    "tensor_parallel_size": ("tensorParallelSize", "tensorParallelSize"),
}
"""Top-level keys a pool says for itself: the key, and the pool's key that says it."""
POOL_PLACEMENT_KEYS = {
    "replicas": ("replicas", "replicas"),
    "gpus": ("gpus", "gpus"),
    "cpu.cpu_sets": ("cpu.cpuSets", "cpuSets"),
}
"""Placement keys a pool says for itself; with 'hosts' the hosts rules report them."""


def _name_rules(models: tuple[PoolSettings, ...]) -> Iterator[Rule]:
    """Pool names name replicas and upstreams; served and adapter names route requests."""
    pools: dict[str, int] = {}
    served: dict[str, str] = {}
    for i, pool in enumerate(models):
        key = f"models[{i}]"
        if pool.name in pools:
            yield rule(f"{key}.name", f"{pool.name} is also the name of models[{pools[pool.name]}]")
        pools.setdefault(pool.name, i)
        named = f"{key}.servedModelName" if pool.served_model_name else f"{key}.model"
        owned = [(named, pool.model_name)]
        owned += [(f"{key}.adapters[{a}].name", ad.name) for a, ad in enumerate(pool.adapters)]
        for where, name in owned:
            if name in served:
                yield rule(
                    where,
                    f"{name} is also served as {served[name]}: a request names one model, "
                    "which must go to one pool",
                    "models",
                )
            served.setdefault(name, where)


def _arg_rules(s: Settings, models: tuple[PoolSettings, ...]) -> Iterator[Rule]:
    """The LoRA options belong to the pools' 'adapters', which the load balancer routes."""
    for key, args in [("extraArgs", s.extra_args)] + [
        (f"models[{i}].extraArgs", pool.extra_args) for i, pool in enumerate(models)
    ]:
        for arg in args:
            problem = managed_flag_problem(arg, LORA_FLAGS)
            if problem is not None:
                yield rule(key, f"{problem} (with 'models')", "models")
                break


def _device_keys(s: Settings, i: int, pool: PoolSettings) -> Iterator[Rule]:
    """Per pool: GPUs for the GPU backend, CPU sets for the CPU one, and their counts."""
    key = f"models[{i}]"
    cpu = s.backend is Backend.CPU
    entries: list[tuple[str, PoolSettings | PoolHostSettings, int | None]] = []
    if s.hosts is None:
        if pool.hosts is not None:
            yield rule(f"{key}.hosts", "is set but the stack has no 'hosts'", "hosts")
        entries.append((key, pool, pool.replicas))
    else:
        for field, value in (
            ("replicas", pool.replicas),
            ("gpus", pool.gpus),
            ("cpuSets", pool.cpu_sets),
        ):
            if value is not None:
                yield rule(
                    f"{key}.{field}",
                    f"must not be set with 'hosts': each of '{key}.hosts' says its own",
                    "hosts",
                )
        if pool.hosts is None:
            yield rule(
                f"{key}.hosts",
                "is required with 'hosts': say on which hosts the pool's replicas run "
                "(`- host: <hosts[i].name>`, with 'replicas', 'gpus' or 'cpuSets')",
                "hosts",
            )
        names = [h.name for h in s.hosts]
        seen: set[str] = set()
        for h, on_host in enumerate(pool.hosts or ()):
            where = f"{key}.hosts[{h}]"
            if on_host.host not in names:
                yield no_such_host(f"{where}.host", names)
            if on_host.host in seen:
                yield rule(f"{where}.host", f"{on_host.host} is listed twice in '{key}.hosts'")
            seen.add(on_host.host)
            entries.append((where, on_host, on_host.replicas))
    for where, entry, replicas in entries:
        yield from listed_rules(where, entry.gpus, entry.cpu_sets, replicas, cpu, "pools")
        for r, ids in enumerate(entry.gpus or ()):
            if len(ids) != pool.tensor_parallel_size:
                yield rule(
                    f"{where}.gpus[{r}]",
                    f"has {len(ids)} GPUs but '{key}.tensorParallelSize' is "
                    f"{pool.tensor_parallel_size}",
                )


def _shared_devices(s: Settings, models: tuple[PoolSettings, ...]) -> Iterator[Rule]:
    """A GPU or core belongs to one replica of one pool on its engine."""
    index = {pool.name: i for i, pool in enumerate(models)}
    gpus: dict[tuple[str | None, int], str] = {}
    cores: dict[tuple[str | None, int], str] = {}
    reported: set[str] = set()
    for at in s.placements():
        if at.pool is None or at.pool not in index:
            continue
        i = index[at.pool]
        pool = models[i]
        engine = at.host.name if at.host is not None else None
        on = f" on host {engine}" if engine is not None else ""
        for field, ids, taken, noun in (
            ("gpus", at.gpus, gpus, "GPU"),
            ("cpuSets", at.cores, cores, "CPU"),
        ):
            key = at.devices_key(field)
            for device in ids:
                owner = taken.get((engine, device))
                if owner is not None and key not in reported:
                    reported.add(key)
                    yield rule(
                        key,
                        f"gives replica {at.name} {noun} {device}{on}, which {owner} uses too; "
                        "replicas share no GPU or CPU core, in a pool or across pools",
                        "models",
                    )
                taken.setdefault((engine, device), f"replica {at.name}")
        if at.cores and len(at.cores) % pool.tensor_parallel_size:
            yield rule(
                at.devices_key("cpuSets"),
                f"gives replica {at.name} {len(at.cores)} CPUs, not a multiple of "
                f"'models[{i}].tensorParallelSize' {pool.tensor_parallel_size}",
                "models",
                "cpu",
            )


def _joined_name_rules(s: Settings, models: tuple[PoolSettings, ...]) -> Iterator[Rule]:
    """Pool and host names are joined with '-' into names, so two pools could make the
    same one. Replicas are '<prefix>-<pool>-<host>-<i>' (`a` on host `b-c`, `a-b` on
    host `c`): a name is a container. Each engine's steps for a pool are Pulumi
    resources '<component>-<host>-<pool>-fit', '-download', '-replicas-ready' (`y-z`
    on host `x`, `z` on host `x-y`): two resources of one name stop even a preview,
    with Pulumi's "Duplicate resource URN" and no key to change."""
    index = {pool.name: i for i, pool in enumerate(models)}
    owner: dict[str, str | None] = {}
    for at in s.placements():
        if at.name in owner and owner[at.name] != at.pool:
            yield rule(
                f"models[{index[str(at.pool)]}].name",
                f"makes the replica name {at.name}, which a replica of pool {owner[at.name]} "
                "has too; rename one of the pools",
                "models",
            )
            return
        owner.setdefault(at.name, at.pool)
    steps: dict[str, tuple[str, str]] = {}
    for at in s.placements():
        if at.host is None or at.pool is None:
            continue
        joined = f"{at.host.name}-{at.pool}"
        first = steps.setdefault(joined, (at.host.name, at.pool))
        if first != (at.host.name, at.pool):
            yield rule(
                f"models[{index[at.pool]}].name",
                f"on host {at.host.name} makes the step names '<name>-{joined}-fit' (and "
                f"-download, -replicas-ready), which pool {first[1]} on host {first[0]} "
                "makes too; rename one of the pools",
                "models",
                "hosts",
            )
            return


def pool_rules(s: Settings) -> Iterator[Rule]:
    models = s.models
    if models is None:
        if s.model is None:
            yield rule("model", "is required (or list model pools in 'models')", "models")
        return
    keys = {**POOL_KEYS, **(POOL_PLACEMENT_KEYS if s.hosts is None else {})}
    yield from replaced_keys(s.keys_set(), keys, "models", "each pool")
    yield from _name_rules(models)
    yield from _arg_rules(s, models)
    for i, pool in enumerate(models):
        yield from _device_keys(s, i, pool)
    yield from _shared_devices(s, models)
    yield from _joined_name_rules(s, models)
