"""The fit check's plan: which replicas of an engine it checks, against what.

Kept apart from `components.plan.build` because it is called once per model
pool and engine; it decides nothing but the step's inputs (the step itself,
`components.steps.fit`, computes the figures on the engine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from components.config.sections import Backend
from components.config.settings import Pool, Settings
from components.plan.model import HF_TOKEN_ENV, FitPlan, ReplicaPlan, step_argv
from components.plan.specs import FitReplica, FitSpec


def fit_plan(
    settings: Settings,
    pool: Pool,
    replicas: Sequence[ReplicaPlan],
    env: Mapping[str, str],
    python: str,
) -> FitPlan | None:
    """The check of `replicas` (one engine's, of `pool`), or None when off or none.

    With the pool's model, tensor-parallel size and vLLM arguments as its replicas get
    them; LoRA memory is not counted (docs/fit-check.md). `env` is the pool's download
    job's (same hub). Named like the download (`<prefix>-<pool>-fit`), so two pools'
    short containers on one engine never share a name.
    """
    if not settings.fit_check.enabled or not replicas:
        return None
    gpu = settings.backend is Backend.GPU
    at = next(p for p in pool.placements if p.engine == replicas[0].host)
    gpus_key = f"{at.key}.gpus".lstrip(".") if gpu else ""
    gpus_key = "" if gpus_key == f"{pool.key}.gpus".lstrip(".") else gpus_key
    return FitPlan(
        argv=step_argv(python, "fit"),
        step_name=f"{pool.prefix}fit",
        spec=FitSpec(
            name=f"{settings.name_prefix}-{pool.prefix}fit",
            model=pool.model,
            backend=str(settings.backend),
            tensor_parallel_size=pool.tensor_parallel_size,
            replicas=tuple(FitReplica(r.name, r.gpu_ids if gpu else ()) for r in replicas),
            extra_args=pool.extra_args,
            env=dict(env),
            warn_above_percent=settings.fit_check.warn_above_percent,
            cpu_kvcache_gb=settings.cpu.kvcache_space_gb,
            config_key=f"{pool.key}." if pool.key else "",
            gpus_key=gpus_key or None,
        ),
        secret_env=(HF_TOKEN_ENV,) if settings.hf_token is not None else (),
        # A path in the container: read through the model cache's mount, not the hub.
        mounts_cache=pool.model.startswith("/"),
        pool=pool.name,
    )
