"""A model of vLLM's automatic prefix caching and of a replica's finite prefill.

What it reproduces, and how (a model of the effect on timing, not a GPU):

- **Tokens** are approximated as whitespace-separated words; a chat request is
  its messages in order, each as one role marker token (`<|system|>`, ...)
  followed by the words of its content (what leads vLLM's chat-template prompt).
- **Blocks** of `block_size` tokens (vLLM's default 16), each keyed by a hash
  of its tokens chained with the previous block's key, so a block only matches
  when everything before it matches too. Only full blocks are cached.
- **Lookup** counts the leading blocks already cached, at most all but the last
  prompt token (vLLM always computes at least one token). `queries` are the
  prompt's tokens, `hits` the cached ones: vLLM's `vllm:prefix_cache_queries`
  and `vllm:prefix_cache_hits`.
- **Eviction**: one LRU of `blocks` blocks per replica; a lookup refreshes the
  blocks it hits, and the request's blocks are inserted at admission.
- **Prefill** costs `prefill_ms_per_token` per *uncached* token and replicas
  prefill one request at a time, first come first served, so a replica has a
  finite prefill throughput and requests wait behind each other. Decode is the
  stand-in's usual `token_ms` per token, concurrent for all requests.

Configured from the environment, like the stand-in's other knobs:
`STANDIN_PREFIX_CACHE_BLOCKS` (default 4096), `STANDIN_BLOCK_SIZE` (16),
`STANDIN_PREFILL_MS_PER_TOKEN` (0: prefill is free and timing is the stand-in's
plain `ttft_ms`, as before).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"standin: environment {name}={raw!r} is not a number") from None
    if value < 0:
        raise SystemExit(f"standin: environment {name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class PrefixCacheConfig:
    blocks: int = 4096
    block_size: int = 16
    prefill_ms_per_token: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrefixCacheConfig:
        environ = os.environ if env is None else env
        blocks = _env_float(environ, "STANDIN_PREFIX_CACHE_BLOCKS", 4096)
        block_size = _env_float(environ, "STANDIN_BLOCK_SIZE", 16)
        if blocks != int(blocks) or block_size != int(block_size) or block_size < 1:
            raise SystemExit(
                "standin: STANDIN_PREFIX_CACHE_BLOCKS and STANDIN_BLOCK_SIZE must be whole "
                "numbers (block size at least 1)"
            )
        return cls(
            blocks=int(blocks),
            block_size=int(block_size),
            prefill_ms_per_token=_env_float(environ, "STANDIN_PREFILL_MS_PER_TOKEN", 0.0),
        )


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [word for item in value for word in _words(item)]
    if isinstance(value, dict):
        return _words(value.get("text", ""))
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    return []


def prompt_tokens(body: Mapping[str, Any], chat: bool) -> list[str]:
    """The request's prompt as approximate tokens (see the module docstring)."""
    if not chat:
        return _words(body.get("prompt", ""))
    tokens: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        tokens.append(f"<|{message.get('role', '')}|>")
        tokens.extend(_words(message.get("content", "")))
    return tokens


def block_keys(tokens: Sequence[str], block_size: int) -> list[int]:
    """One key per full block, each depending on every token before it."""
    keys: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        keys.append(parent)
    return keys


@dataclass(frozen=True)
class Lookup:
    queried: int  # prompt tokens looked up (vllm:prefix_cache_queries)
    cached: int  # of those, found in the cache (vllm:prefix_cache_hits)


class PrefixCache:
    """An LRU of block keys with vLLM's hit accounting."""

    def __init__(self, blocks: int, block_size: int) -> None:
        self.capacity = blocks
        self.block_size = block_size
        self._lru: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def admit(self, tokens: Sequence[str]) -> Lookup:
        """Look the prompt up, then cache its full blocks (most recent last)."""
        keys = block_keys(tokens, self.block_size)
        hit_blocks = 0
        for key in keys:
            if key not in self._lru:
                break
            hit_blocks += 1
        usable = max(len(tokens) - 1, 0) // self.block_size
        cached = min(hit_blocks, usable) * self.block_size
        if self.capacity > 0:
            for key in keys:
                self._lru[key] = None
                self._lru.move_to_end(key)
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)
        return Lookup(queried=len(tokens), cached=cached)


class PrefillQueue:
    """One prefill at a time, first come first served, on the event loop's clock."""

    def __init__(self, ms_per_token: float) -> None:
        self.ms_per_token = ms_per_token
        self.free_at = 0.0

    def schedule(self, now: float, uncached_tokens: int) -> tuple[float, float]:
        """(start, end) of this request's prefill."""
        start = max(now, self.free_at)
        end = start + uncached_tokens * self.ms_per_token / 1000.0
        if self.ms_per_token > 0:
            self.free_at = end
        return start, end
