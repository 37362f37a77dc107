"""The fit check's figures on real models' config.json, computed here by hand.

The config values and weight sizes are those the models publish on the
Hugging Face hub, as found through copies in public code and pages (the
code search of this project's tools), and cross-checked here: the parameter
count the dimensions give, at 2 bytes (bfloat16), equals the index's
`metadata.total_size` to the byte (`test_the_weight_sizes_are_the_dimensions`).

- meta-llama/Llama-3.1-8B-Instruct and Llama-3.1-70B-Instruct: 32/80 layers,
  32/64 attention heads, 8 KV heads, hidden size 4096/8192, MLP 14336/28672,
  vocabulary 128256, 131072 positions (vulkomilev/oumi,
  configs/recipes/llama3_1/README.md, "Model Info" tables); rope_scaling of
  type `llama3`, factor 8.0, torch_dtype bfloat16 (the 3.1 configs, as in
  lucasnewman/mlx-audio, mlx_audio/tts/models/chatterbox/models/t3/llama_configs.py);
  `model.safetensors.index.json` total_size 16060522496 (8B, quoted in several
  Hugging Face course pages) and 141107412992 (70B, quoted from its index);
- Qwen/Qwen2.5-7B-Instruct: 28 layers, 28 heads, 4 KV heads, hidden 3584,
  MLP 18944, vocabulary 152064, untied, QKV bias, max_position_embeddings
  32768 with `use_sliding_window: false` (its config.json as copied in a FLOPs
  test under "# Qwen/Qwen2.5-7B-Instruct"; the model card: "the current
  config.json is set for context length up to 32,768 tokens"), index
  total_size 15231233024
  (https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/raw/main/model.safetensors.index.json,
  as quoted in a research note).

GPUs: an RTX 4090 reports 24564 MiB, an L4 23034 MiB, a T4 15360 MiB
(`nvidia-smi --query-gpu=memory.total`).
"""

from __future__ import annotations

from typing import Any

import pytest

from components.steps.memory_fit import (
    GIB,
    MIB,
    FactsMissing,
    Gpu,
    check_cpu_replicas,
    check_gpu_replica,
    derived_max_len,
    flag_value,
    model_shape,
    parse_inventory,
)
from standin import hubshim

LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
LLAMA_31_8B_BYTES = 16060522496
LLAMA_31_70B = {
    **LLAMA_31_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}
LLAMA_31_70B_BYTES = 141107412992
QWEN_25_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 152064,
}
QWEN_25_7B_BYTES = 15231233024

RTX_4090 = Gpu("0", "GPU-aaaa", "NVIDIA GeForce RTX 4090", 24564)
T4 = Gpu("0", "GPU-bbbb", "Tesla T4", 15360)


def parameters(config: dict[str, Any], bias: bool, tied: bool) -> int:
    """A Llama/Qwen2 decoder's parameter count from its dimensions."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    head = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head
    attention = 2 * hidden * hidden + 2 * hidden * kv + ((hidden + 2 * kv) if bias else 0)
    layer = attention + 3 * hidden * config["intermediate_size"] + 2 * hidden
    embeddings = vocab * hidden * (1 if tied else 2)
    return int(embeddings + config["num_hidden_layers"] * layer + hidden)


def test_the_weight_sizes_are_the_dimensions() -> None:
    # 8,030,261,248 / 70,553,706,496 / 7,615,616,512 parameters, 2 bytes each.
    assert 2 * parameters(LLAMA_31_8B, bias=False, tied=False) == LLAMA_31_8B_BYTES
    assert 2 * parameters(LLAMA_31_70B, bias=False, tied=False) == LLAMA_31_70B_BYTES
    assert 2 * parameters(QWEN_25_7B, bias=True, tied=False) == QWEN_25_7B_BYTES
    # The stand-in hub's models (tests/test_e2e_fit.py): Llama-3.1-70B as above, and
    # Qwen2.5-0.5B-Instruct (tied embeddings): 494,032,768 parameters.
    llama, llama_bytes, _ = hubshim.REAL_SHAPES["llama-3.1-70b-instruct"]
    assert {k: llama[k] for k in LLAMA_31_70B if k in llama} == {
        k: v for k, v in LLAMA_31_70B.items() if k in llama
    }
    assert llama_bytes == LLAMA_31_70B_BYTES
    qwen, qwen_bytes, _ = hubshim.REAL_SHAPES["qwen2.5-0.5b-instruct"]
    assert 2 * parameters(dict(qwen), bias=True, tied=True) == qwen_bytes == 988065536


def test_llama_31_8b_figures() -> None:
    shape = model_shape(LLAMA_31_8B, LLAMA_31_8B_BYTES, ())
    # llama3 RoPE leaves max_position_embeddings as it is (already scaled).
    assert shape.max_len == 131072
    assert shape.max_len_from == "max_position_embeddings in config.json"
    # head 4096/32 = 128; K and V, 32 layers, 8 KV heads, bf16 (2 bytes):
    # 2 * 32 * 8 * 128 * 2 = 131072 bytes per token.
    assert shape.kv_bytes_per_token(1) == 131072
    # 131072 tokens * 131072 bytes = 2**34 bytes = 16 GiB.
    assert shape.kv_bytes(1, 131072) == 16 * GIB
    # Two ranks: 4 KV heads each, half of it.
    assert shape.kv_bytes(2, 131072) == 8 * GIB
    # 32 ranks would hold one (replicated) head each, not a quarter of one.
    assert shape.kv_bytes_per_token(32) == 2 * 32 * 1 * 128 * 2


def test_llama_31_8b_does_not_fit_one_24_gb_gpu_at_full_length() -> None:
    shape = model_shape(LLAMA_31_8B, LLAMA_31_8B_BYTES, ())
    verdict = check_gpu_replica("vllm0", [RTX_4090], shape, 1, 0.92, 0.9, 32)
    assert verdict.stops
    # weights 16060522496 B = 14.96 GiB; + 16 GiB = 30.96 GiB;
    # 24564 MiB = 23.99 GiB, x 0.92 = 22.07 GiB.
    assert verdict.text.startswith(
        "replica vllm0 (GPU 0, NVIDIA GeForce RTX 4090 24564 MiB): needs 31.0 GiB (weights "
        "15.0 GiB + KV cache for one 131072-token sequence 16.0 GiB), has 22.1 GiB "
        "(24.0 GiB x gpu-memory-utilization 0.92). What would fit: "
    )
    # tp 2: 7.48 + 8 = 15.5 GiB fits; longest: (23696643194 - 16060522496) B left
    # / (16 tokens * 131072 B) = 3641 blocks = 58256 tokens; 8-bit: 7.48 + 16 > 22.07,
    # 4-bit: 3.74 + 16 = 19.7 GiB fits.
    assert verdict.text.endswith(
        "What would fit: tensorParallelSize 2 (2 such GPUs per replica); a shorter max "
        "length: extraArgs --max-model-len 58256 at most; a quantised model (4-bit, about "
        "a quarter the weight bytes)."
    )


def test_a_pools_ways_out_name_its_own_keys() -> None:
    """In a stack with 'models', the keys to change are the pool's, as written."""
    shape = model_shape(LLAMA_31_8B, LLAMA_31_8B_BYTES, ())
    verdict = check_gpu_replica("vllm-chat-0", [RTX_4090], shape, 1, 0.92, 0.9, 32, "models[1].")
    assert verdict.text.endswith(
        "What would fit: models[1].tensorParallelSize 2 (2 such GPUs per replica); a shorter "
        "max length: models[1].extraArgs --max-model-len 58256 at most; a quantised model "
        "(4-bit, about a quarter the weight bytes)."
    )
    (cpu,) = check_cpu_replicas(["vllm-chat-0"], 64 * GIB, shape, 1, 0.9, "models[0].")
    assert cpu.stops and "cpu.kvcacheSpaceGb 16, or models[0].extraArgs --max-model-len" in cpu.text


def test_llama_31_8b_fits_with_a_shorter_length() -> None:
    shape = model_shape(LLAMA_31_8B, LLAMA_31_8B_BYTES, ("--max-model-len", "8192"))
    verdict = check_gpu_replica("vllm0", [RTX_4090], shape, 1, 0.92, 0.9)
    # 14.96 GiB + 8192 * 131072 B = 1 GiB -> 15.96 of 22.07 GiB: 72 %.
    assert verdict.status == "fits"
    assert "needs 16.0 GiB" in verdict.text and "fits (72%)" in verdict.text


def test_llama_31_70b_on_one_24_gb_gpu_names_tensor_parallel_8() -> None:
    shape = model_shape(LLAMA_31_70B, LLAMA_31_70B_BYTES, ())
    # 2 * 80 layers * 8 heads * 128 * 2 B = 327680 B per token; x 131072 = 40 GiB.
    assert shape.kv_bytes(1, 131072) == 40 * GIB
    verdict = check_gpu_replica("vllm0", [RTX_4090], shape, 1, 0.92, 0.9, 64)
    assert verdict.stops
    # 141107412992 B = 131.4 GiB; + 40 = 171.4 GiB. tp 2: 65.7 + 20; tp 4: 32.9 + 10;
    # tp 8: 16.4 + 5 = 21.4 <= 22.07 GiB.
    assert "needs 171.4 GiB (weights 131.4 GiB + KV cache for one 131072-token" in verdict.text
    assert "What would fit: tensorParallelSize 8 (8 such GPUs per replica)." in verdict.text
    assert "--max-model-len" not in verdict.text  # the weights alone are too big


def test_qwen_25_7b_figures_and_fit() -> None:
    shape = model_shape(QWEN_25_7B, QWEN_25_7B_BYTES, ())
    assert shape.max_len == 32768
    # head 3584/28 = 128; 2 * 28 layers * 4 heads * 128 * 2 B = 57344 B per token.
    assert shape.kv_bytes_per_token(1) == 57344
    # x 32768 tokens = 1879048192 B = 1.75 GiB; weights 14.19 GiB; 15.94 GiB.
    assert shape.kv_bytes(1, 32768) == 1879048192
    fits = check_gpu_replica("vllm0", [RTX_4090], shape, 1, 0.92, 0.9, 28)
    assert fits.status == "fits" and "needs 15.9 GiB" in fits.text
    # A 16 GB T4: 15360 MiB x 0.92 = 13.8 GiB < 15.94. Two T4s: 7.09 + 0.875 GiB.
    too_big = check_gpu_replica("vllm0", [T4], shape, 1, 0.92, 0.9, 28)
    assert too_big.stops
    assert "has 13.8 GiB (15.0 GiB x gpu-memory-utilization 0.92)" in too_big.text
    assert "tensorParallelSize 2" in too_big.text
    # 8-bit: 7.09 + 1.75 = 8.8 GiB fits: the first quantisation that does is named.
    assert "a quantised model (8-bit, about half the weight bytes)" in too_big.text


def test_close_to_the_limit_warns() -> None:
    shape = model_shape(QWEN_25_7B, QWEN_25_7B_BYTES, ())
    # 15.94 GiB of an L4's 23034 MiB x 0.92 = 20.69 GiB is 77 %: warns above 75.
    l4 = Gpu("1", "GPU-cccc", "NVIDIA L4", 23034)
    verdict = check_gpu_replica("vllm1", [l4], shape, 1, 0.92, 0.75)
    assert verdict.status == "close"
    assert "77% of it, above fitCheck.warnAbovePercent 75%" in verdict.text


def test_arguments_change_the_figures() -> None:
    args = ("--kv-cache-dtype", "fp8", "--max-model-len=32K", "--dtype", "float16")
    shape = model_shape(LLAMA_31_8B, LLAMA_31_8B_BYTES, args)
    assert shape.max_len == 32 * 1024  # K: binary, as vLLM's human_readable_int
    assert shape.kv_bytes_per_token(1) == 2 * 32 * 8 * 128 * 1
    assert model_shape(LLAMA_31_8B, 1, ("--max-model-len", "25.6k")).max_len == 25600
    assert model_shape(LLAMA_31_8B, 1, ("--max-model-len", "-1")).max_len is None
    assert flag_value(("--gpu-memory-utilization", "0.5"), "--gpu-memory-utilization") == "0.5"
    # A float32 checkpoint is cast to 16 bits by --dtype auto: half its file bytes in memory.
    fp32 = model_shape({**QWEN_25_7B, "torch_dtype": "float32"}, 2 * QWEN_25_7B_BYTES, ())
    assert fp32.weight_bytes == QWEN_25_7B_BYTES


def test_multimodal_text_config_and_defaults() -> None:
    config = {
        "model_type": "llava",
        "text_config": {"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32},
    }
    shape = model_shape(config, 10 * GIB, ())
    # No KV head count: as many as attention heads; no dtype: float32, cast to 16 bits;
    # no length key: vLLM's 2048.
    assert shape.kv_heads == 32 and shape.head_size == 128 and shape.kv_dtype_bytes == 2
    assert shape.max_len == 2048
    # A linear RoPE factor multiplies the length; the smallest length key wins.
    linear = {"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert derived_max_len(linear) == (8192, "max_position_embeddings in config.json")
    assert derived_max_len({"max_position_embeddings": 4096, "n_positions": 2048}) == (
        2048,
        "n_positions in config.json",
    )
    with pytest.raises(FactsMissing):
        model_shape({"architectures": ["StandinForCausalLM"]}, 1, ())


def test_sliding_window_and_latent_layers_count_as_vllm_keeps_them() -> None:
    # Gemma 3 style: every 6th layer global, the others a 1024-token window.
    gemma = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131072,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16",
    }
    shape = model_shape(gemma, GIB, ())
    assert (shape.layers, shape.sliding_layers, shape.window) == (2, 10, 1024)
    per_layer_token = 2 * 4 * 256 * 2
    assert shape.kv_bytes(1, 131072) == (131072 * 2 + 1024 * 10) * per_layer_token
    # The same by `layer_types`, with a linear-attention layer that keeps no KV cache.
    typed = {
        **gemma,
        "layer_types": ["sliding_attention"] * 10 + ["full_attention", "linear_attention"],
    }
    assert model_shape(typed, GIB, ()).kv_bytes(1, 4096) == (4096 + 1024 * 10) * per_layer_token
    # DeepSeek's MLA: one latent of kv_lora_rank + qk_rope_head_dim per token and layer,
    # the same on every rank.
    mla = {
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "max_position_embeddings": 163840,
        "torch_dtype": "bfloat16",
    }
    latent = model_shape(mla, GIB, ())
    assert latent.kv_bytes_per_token(8) == latent.kv_bytes_per_token(1) == 61 * 576 * 2


def test_cpu_replicas_against_host_memory() -> None:
    shape = model_shape(QWEN_25_7B, QWEN_25_7B_BYTES, ())
    # 2 x (14.19 + 4) GiB = 36.4 GiB > 24 GiB; one replica (18.2 GiB) would fit.
    too_big = check_cpu_replicas(["vllm0", "vllm1"], 24 * GIB, shape, 4, 0.9)
    assert [v.status for v in too_big] == ["too_big"]
    assert "= 36.4 GiB, the engine's host has 24.0 GiB" in too_big[0].text
    assert "What would fit: 1 replica(s) on this host" in too_big[0].text
    # One 32768-token sequence is 1.75 GiB: more than a 1 GiB KV space.
    short = check_cpu_replicas(["vllm0"], 64 * GIB, shape, 1, 0.9)
    assert short[0].stops and "cpu.kvcacheSpaceGb 2" in short[0].text
    # 1 GiB / (16 * 57344 B) = 1170 blocks = 18720 tokens.
    assert "--max-model-len 18720 at most" in short[0].text
    assert check_cpu_replicas(["vllm0"], 64 * GIB, shape, 4, 0.9)[0].status == "fits"


def test_inventory_parsing() -> None:
    text = "0, GPU-1f2e, NVIDIA GeForce RTX 4090, 24564\n1, GPU-77aa, NVIDIA L4, 23034\n\n"
    gpus = parse_inventory(text)
    assert [(g.index, g.memory_mib) for g in gpus] == [("0", 24564), ("1", 23034)]
    assert gpus[0].total_bytes == 24564 * MIB
    assert parse_inventory("No devices were found\n") == []
