"""The fit check's plan: which replicas of an engine it checks, against what.

Kept apart from `components.plan.build` so that a stack of several models can
call it once per model and engine; it decides nothing but the step's inputs
(the step itself, `components.steps.fit`, computes the figures on the engine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from components.config.sections import Backend
from components.config.settings import Settings
from components.plan.model import HF_TOKEN_ENV, FitPlan, ReplicaPlan


def fit_plan(
    settings: Settings,
    replicas: Sequence[ReplicaPlan],
    env: Mapping[str, str],
    python: str,
    *,
    model: str | None = None,
    tensor_parallel_size: int | None = None,
    extra_args: Sequence[str] | None = None,
    name: str | None = None,
) -> FitPlan | None:
    """The check of `replicas` (one engine's, one model's), or None when off or none.

    `env` is what the download job sees (proxies, HF_ENDPOINT): the facts come
    from the same hub. The model, its tensor-parallel size and its vLLM
    arguments default to the stack's.
    """
    if not settings.fit_check.enabled or not replicas:
        return None
    chosen = model if model is not None else settings.model
    return FitPlan(
        name=name or f"{settings.name_prefix}-fit",
        model=chosen,
        backend=str(settings.backend),
        tensor_parallel_size=(
            tensor_parallel_size
            if tensor_parallel_size is not None
            else settings.tensor_parallel_size
        ),
        replicas=tuple(
            (r.name, r.gpu_ids if settings.backend is Backend.GPU else ()) for r in replicas
        ),
        extra_args=tuple(extra_args if extra_args is not None else settings.extra_args),
        env=dict(env),
        warn_above_percent=settings.fit_check.warn_above_percent,
        cpu_kvcache_gb=settings.cpu.kvcache_space_gb,
        secret_env=(HF_TOKEN_ENV,) if settings.hf_token is not None else (),
        python=python,
        local_model=chosen.startswith("/"),
    )
