"""Does a replica fit its GPUs (or its host's memory)? Figures from `config.json`, no I/O.

vLLM finds out only after the pull, the download and the load; the weights' bytes
and one full-length sequence's KV cache against GPU memory times
`--gpu-memory-utilization` are known before. Computed as vLLM does (docs/vllm.md,
"What the fit check computes"); a lower bound (activations, CUDA graphs and the
context come on top), which is why a need close to the limit is a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
MIB = 1024**2
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
"""`CacheConfig.gpu_memory_utilization`'s default in the pinned release (docs/vllm.md)."""
BLOCK_SIZE = 16
"""`CacheConfig.DEFAULT_BLOCK_SIZE`: the KV cache is allocated in blocks of 16 tokens."""
DEFAULT_MAX_LEN = 2048
"""vLLM's length when `config.json` names none of its length keys."""

MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
"""The keys vLLM takes the smallest of (`derive_max_model_len_and_key`)."""
KV_HEAD_KEYS = ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num")
UNSCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
"""RoPE types whose `factor` vLLM does not multiply the length by (already scaled)."""

DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "int8": 1,
}


class FactsMissing(ValueError):
    """`config.json` lacks what the figures need: the check cannot run (it says so)."""


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given to `flag` in vLLM's arguments (`--flag V` or `--flag=V`)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part: multimodal configs nest it under `text_config`."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) and inner else config


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _config_dtype(config: Mapping[str, Any]) -> str | None:
    for part in (config, text_config(config)):
        for key in ("dtype", "torch_dtype"):
            value = part.get(key)
            if isinstance(value, str):
                return value.removeprefix("torch.")
    return None


def derived_max_len(config: Mapping[str, Any]) -> tuple[int, str]:
    """vLLM's default `max_model_len` and where it comes from (a generative model's:
    `tokenizer_config.json` counts only for pooling models, so not here)."""
    text = text_config(config)
    found = [(text[k], k) for k in MAX_LEN_KEYS if _positive_int(text.get(k)) is not None]
    length, key = min(found) if found else (DEFAULT_MAX_LEN, "vLLM's default")
    if _positive_int(text.get("model_max_length")) is not None:
        length, key = text["model_max_length"], "model_max_length"
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if isinstance(rope, Mapping) and "gemma3" not in str(config.get("model_type", "")):
        kind = rope.get("rope_type") or rope.get("type") or "default"
        factor = rope.get("factor")
        if kind not in UNSCALED_ROPE and isinstance(factor, int | float) and factor:
            length = int(length * factor)
        if kind == "longrope" and _positive_int(text.get("original_max_position_embeddings")):
            return text["original_max_position_embeddings"], "original_max_position_embeddings"
    where = "vLLM's default" if not found else f"{key} in config.json"
    return int(length), where


@dataclass(frozen=True)
class ModelShape:
    """What the figures need of a model, as vLLM will run it."""

    layers: int
    """Layers with full attention: their KV cache grows with the whole sequence."""
    kv_heads: int
    head_size: int
    kv_dtype_bytes: int
    max_len: int | None
    """None: `--max-model-len -1` (vLLM fits the length to the memory left)."""
    max_len_from: str
    weight_bytes: int
    """In GPU memory: the files' bytes, scaled when vLLM casts float32 weights down."""
    quantized: bool
    sliding_layers: int = 0
    """Layers with a sliding window: they hold at least `window` tokens, no more."""
    window: int = 0
    latent: bool = False
    """MLA (DeepSeek): one latent vector per token and layer, the same on every rank."""

    def _per_layer_token(self, tp: int) -> int:
        if self.latent:
            return self.head_size * self.kv_dtype_bytes
        heads = max(1, self.kv_heads // tp)
        return 2 * heads * self.head_size * self.kv_dtype_bytes

    def kv_bytes_per_token(self, tp: int) -> int:
        """One token's K and V in every attention layer on one rank (KV heads split
        over the ranks, at least one each), within the window of sliding ones."""
        return (self.layers + self.sliding_layers) * self._per_layer_token(tp)

    def kv_bytes(self, tp: int, tokens: int) -> int:
        """One sequence of `tokens`, in whole 16-token blocks, on one rank."""

        def blocks(n: int) -> int:
            return math.ceil(n / BLOCK_SIZE) * BLOCK_SIZE

        sliding = blocks(min(self.window, tokens)) * self.sliding_layers
        return (blocks(tokens) * self.layers + sliding) * self._per_layer_token(tp)


def _attention_layers(text: Mapping[str, Any], layers: int) -> tuple[int, int, int]:
    """(full, sliding, window): a lower bound of what vLLM keeps per layer kind.

    `layer_types` names each layer (Gemma 3, gpt-oss, hybrid models: Mamba or
    linear-attention layers keep no KV cache); else a `sliding_window` that
    is in use makes every layer (or all but each `sliding_window_pattern`-th)
    a sliding one."""
    window = _positive_int(text.get("sliding_window")) or 0
    kinds = text.get("layer_types")
    if isinstance(kinds, list) and kinds:
        full = sum(1 for k in kinds if k in ("full_attention", "attention", "global_attention"))
        sliding = sum(1 for k in kinds if "sliding" in str(k) or "local" in str(k))
        return full, (sliding if window else 0), window
    if not window or text.get("use_sliding_window") is False:
        return layers, 0, 0
    pattern = _positive_int(text.get("sliding_window_pattern"))
    full = layers // pattern if pattern else 0
    return full, layers - full, window


def model_shape(
    config: Mapping[str, Any],
    weight_file_bytes: int,
    extra_args: Sequence[str],
) -> ModelShape:
    """`config.json` and the weights' size, with the deployment's vLLM arguments applied."""
    text = text_config(config)
    layers = _positive_int(text.get("num_hidden_layers"))
    heads = _positive_int(text.get("num_attention_heads"))
    if layers is None or heads is None:
        raise FactsMissing("config.json has no num_hidden_layers or num_attention_heads")
    kv_heads = next(
        (v for k in KV_HEAD_KEYS if (v := _positive_int(text.get(k))) is not None), heads
    )
    latent = _positive_int(text.get("kv_lora_rank")) is not None
    head_size = _positive_int(text.get("head_dim")) or _positive_int(
        text.get("hidden_size_per_head")
    )
    if latent:  # MLA: vLLM's head size is the latent's plus the rope part, one "head"
        head_size = text["kv_lora_rank"] + (_positive_int(text.get("qk_rope_head_dim")) or 0)
    if head_size is None:
        hidden = _positive_int(text.get("hidden_size"))
        if hidden is None:
            raise FactsMissing("config.json has no head_dim or hidden_size")
        head_size = hidden // heads
    stored = _config_dtype(config) or "float32"
    # --dtype auto: float32 checkpoints are cast to 16 bits; others run as stored.
    wanted = (flag_value(extra_args, "--dtype") or "auto").lower()
    model_dtype = ("bfloat16" if stored == "float32" else stored) if wanted == "auto" else wanted
    model_bytes = DTYPE_BYTES.get(model_dtype, 2)
    kv_dtype = (flag_value(extra_args, "--kv-cache-dtype") or "auto").lower()
    kv_bytes = model_bytes if kv_dtype == "auto" else DTYPE_BYTES.get(kv_dtype, 1)
    quantized = bool(config.get("quantization_config") or text.get("quantization_config"))
    full, sliding, window = _attention_layers(text, layers)
    weights = weight_file_bytes
    if not quantized and DTYPE_BYTES.get(stored, model_bytes) != model_bytes:
        weights = weight_file_bytes * model_bytes // DTYPE_BYTES.get(stored, model_bytes)
    given = flag_value(extra_args, "--max-model-len") or flag_value(extra_args, "--max_model_len")
    max_len: int | None
    if given is not None:
        max_len = _parse_len(given)
        where = "--max-model-len"
    else:
        max_len, where = derived_max_len(config)
    return ModelShape(
        layers=full,
        sliding_layers=sliding,
        window=window,
        latent=latent,
        kv_heads=kv_heads,
        head_size=head_size,
        kv_dtype_bytes=kv_bytes,
        max_len=max_len,
        max_len_from=where,
        weight_bytes=weights,
        quantized=quantized,
    )


def _parse_len(text: str) -> int | None:
    """`--max-model-len` as vLLM parses it: `-1`/`auto`, `32768`, `25.6k` (x1000), `32K` (x1024)."""
    value = text.strip()
    if value == "-1" or value.lower() == "auto":
        return None
    decimal = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
    if value and value[-1] in decimal:
        return int(float(value[:-1]) * decimal[value[-1]])
    if value and value[-1].lower() in decimal:
        power: int = 1024 ** ("kmgt".index(value[-1].lower()) + 1)
        return int(value[:-1]) * power
    return int(value)


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class Gpu:
    """One GPU as `nvidia-smi --query-gpu=index,uuid,name,memory.total` reports it."""

    index: str
    uuid: str
    name: str
    memory_mib: int

    @property
    def total_bytes(self) -> int:
        return self.memory_mib * MIB


def parse_inventory(text: str) -> list[Gpu]:
    """`nvidia-smi`'s CSV (`--format=csv,noheader,nounits`) as GPUs."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[3].isdigit():
            continue
        gpus.append(Gpu(index=parts[0], uuid=parts[1], name=parts[2], memory_mib=int(parts[3])))
    return gpus


@dataclass(frozen=True)
class Verdict:
    """One replica's result: `fits`, `close` (warn) or `too_big` (stop), and why."""

    replica: str
    status: str
    text: str

    @property
    def stops(self) -> bool:
        return self.status == "too_big"


@dataclass(frozen=True)
class Need:
    weights: int
    kv: int

    @property
    def total(self) -> int:
        return self.weights + self.kv


def gpu_need(shape: ModelShape, tp: int, tokens: int | None) -> Need:
    """On each of a replica's `tp` GPUs: its share of the weights and of one sequence's KV."""
    kv = shape.kv_bytes(tp, tokens) if tokens else 0
    return Need(weights=math.ceil(shape.weight_bytes / tp), kv=kv)


def _kv_words(shape: ModelShape, need: Need) -> str:
    if shape.max_len is None:
        return "; --max-model-len -1: vLLM fits the length to what is left"
    return f" + KV cache for one {shape.max_len}-token sequence {gib(need.kv)}"


def longest_len(shape: ModelShape, tp: int, budget: int, weights: bool = True) -> int:
    """The longest `--max-model-len` (whole blocks) whose one sequence fits the budget,
    beside the weights' share when `weights`."""
    left = budget - (math.ceil(shape.weight_bytes / tp) if weights else 0)
    low, high = 0, (shape.max_len or 1 << 24) // BLOCK_SIZE
    while low < high:  # blocks: the most whose KV cache is within `left`
        mid = (low + high + 1) // 2
        if shape.kv_bytes(tp, mid * BLOCK_SIZE) <= left:
            low = mid
        else:
            high = mid - 1
    return low * BLOCK_SIZE


def what_would_fit_gpu(
    shape: ModelShape, tp: int, budget: int, attention_heads: int | None, key: str = ""
) -> list[str]:
    """Ways out, each checked against the same budget per GPU. `key` is the pool's
    config key with its dot ('models[1].'), so each way names the key to change."""
    ways: list[str] = []
    for more in (2, 4, 8, 16):
        if more <= tp or (attention_heads and attention_heads % more):
            continue
        if gpu_need(shape, more, shape.max_len).total <= budget:
            ways.append(f"{key}tensorParallelSize {more} ({more} such GPUs per replica)")
            break
    if shape.max_len is not None:
        longest = longest_len(shape, tp, budget)
        if 0 < longest < shape.max_len:
            ways.append(f"a shorter max length: {key}extraArgs --max-model-len {longest} at most")
    if not shape.quantized:
        for share, words in ((2, "8-bit, about half"), (4, "4-bit, about a quarter")):
            smaller = ModelShape(**{**shape.__dict__, "weight_bytes": shape.weight_bytes // share})
            if gpu_need(smaller, tp, shape.max_len).total <= budget:
                ways.append(f"a quantised model ({words} the weight bytes)")
                break
    return ways


def check_gpu_replica(
    replica: str,
    gpus: Sequence[Gpu],
    shape: ModelShape,
    tp: int,
    utilization: float,
    warn_share: float,
    attention_heads: int | None = None,
    key: str = "",
) -> Verdict:
    """The replica against the smallest of its GPUs (every rank holds the same share)."""
    gpu = min(gpus, key=lambda g: g.memory_mib)
    budget = int(gpu.total_bytes * utilization)
    need = gpu_need(shape, tp, shape.max_len)
    where = (
        f"replica {replica} (GPU {gpu.index}, {gpu.name} {gpu.memory_mib} MiB"
        + (f", one of {len(gpus)}" if len(gpus) > 1 else "")
        + ")"
    )
    per = " per GPU" if tp > 1 else ""
    figures = (
        f"needs {gib(need.total)}{per} (weights {gib(need.weights)}{_kv_words(shape, need)}), "
        f"has {gib(budget)} ({gib(gpu.total_bytes)} x gpu-memory-utilization {utilization:.2f})"
    )
    if need.total > budget:
        ways = what_would_fit_gpu(shape, tp, budget, attention_heads, key)
        fix = "; ".join(ways) if ways else "nothing on GPUs of this size; larger GPUs"
        return Verdict(replica, "too_big", f"{where}: {figures}. What would fit: {fix}.")
    used = need.total / budget
    if used > warn_share:
        return Verdict(
            replica,
            "close",
            f"{where}: {figures}: {used:.0%} of it, above fitCheck.warnAbovePercent "
            f"{warn_share:.0%}; activations and CUDA graphs need some of the rest",
        )
    return Verdict(replica, "fits", f"{where}: {figures}: fits ({used:.0%})")


def check_cpu_replicas(
    replicas: Sequence[str],
    host_bytes: int,
    shape: ModelShape,
    kv_space_gb: int,
    warn_share: float,
    key: str = "",
) -> list[Verdict]:
    """CPU replicas: each holds the weights and all of `cpu.kvcacheSpaceGb` in host memory."""
    space = kv_space_gb * GIB
    verdicts: list[Verdict] = []
    tokens = shape.max_len
    if tokens is not None:
        one = shape.kv_bytes(1, tokens)
        if one > space:
            longest = longest_len(shape, 1, space, weights=False)
            needed = math.ceil(one / GIB)
            verdicts.extend(
                Verdict(
                    r,
                    "too_big",
                    f"replica {r} (CPU): the KV cache for one {tokens}-token sequence is "
                    f"{gib(one)}, cpu.kvcacheSpaceGb is {kv_space_gb} GiB. What would fit: "
                    f"cpu.kvcacheSpaceGb {needed}, or {key}extraArgs --max-model-len {longest} "
                    "at most.",
                )
                for r in replicas
            )
    each = shape.weight_bytes + space
    total = each * len(replicas)
    figures = (
        f"{len(replicas)} replica(s) x (weights {gib(shape.weight_bytes)} + cpu.kvcacheSpaceGb "
        f"{kv_space_gb} GiB) = {gib(total)}, the engine's host has {gib(host_bytes)}"
    )
    names = ", ".join(replicas)
    if total > host_bytes:
        fewer = host_bytes // each
        fix = f"{fewer} replica(s) on this host" if fewer else "a host with more memory"
        if not shape.quantized:
            fix += "; a quantised model (about half or a quarter the weight bytes)"
        verdicts.append(
            Verdict(names, "too_big", f"replicas {names} (CPU): {figures}. What would fit: {fix}.")
        )
    elif total / host_bytes > warn_share:
        verdicts.append(
            Verdict(
                names,
                "close",
                f"replicas {names} (CPU): {figures}: {total / host_bytes:.0%} of it, above "
                f"fitCheck.warnAbovePercent {warn_share:.0%}",
            )
        )
    elif not verdicts:
        verdicts.append(Verdict(names, "fits", f"replicas {names} (CPU): {figures}: fits"))
    return verdicts
