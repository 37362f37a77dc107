"""The stand-in's model of vLLM's prefix cache, its prefill queue and its metrics."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from standin.metrics import Counter, Histogram, VllmMetrics
from standin.prefix_cache import (
    PrefillQueue,
    PrefixCache,
    PrefixCacheConfig,
    block_keys,
    prompt_tokens,
)
from tests.support.stub import stub_backends

MODEL = "standin/tiny-chat"


def words(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


# --- the model, in-process ----------------------------------------------------


def test_a_block_matches_only_when_everything_before_it_matches():
    a = block_keys(words(48), 16)
    b = block_keys(["x", *words(48)[1:]], 16)
    assert len(a) == 3
    assert all(x != y for x, y in zip(a, b, strict=True))
    assert block_keys(words(47), 16) == a[:2]  # only full blocks


def test_hits_are_the_cached_leading_blocks_and_never_the_last_token():
    cache = PrefixCache(blocks=100, block_size=16)
    first = cache.admit(words(40))
    assert (first.queried, first.cached) == (40, 0)
    again = cache.admit(words(40) + words(10, "q"))
    assert (again.queried, again.cached) == (50, 32)
    # A prompt that is exactly cached blocks still computes its last token.
    exact = cache.admit(words(32))
    assert exact.cached == 16
    other = cache.admit(words(40, "z"))
    assert other.cached == 0


def test_the_lru_evicts_the_least_recently_used_blocks():
    cache = PrefixCache(blocks=4, block_size=16)
    cache.admit(words(33, "a"))  # 2 blocks
    cache.admit(words(33, "b"))  # 2 blocks: full
    cache.admit(words(33, "a"))  # refreshes a
    cache.admit(words(33, "c"))  # evicts b
    assert len(cache) == 4
    assert cache.admit(words(33, "a")).cached == 32
    assert cache.admit(words(33, "b")).cached == 0


def test_chat_tokens_mark_roles_so_the_same_text_in_another_role_differs():
    system = prompt_tokens({"messages": [{"role": "system", "content": "be brief"}]}, chat=True)
    user = prompt_tokens({"messages": [{"role": "user", "content": "be brief"}]}, chat=True)
    assert system == ["<|system|>", "be", "brief"]
    assert system != user
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]}
    assert prompt_tokens(parts, chat=True) == ["<|user|>", "a", "b"]
    assert prompt_tokens({"prompt": "one two"}, chat=False) == ["one", "two"]


def test_prefill_is_one_request_at_a_time():
    queue = PrefillQueue(ms_per_token=1.0)
    assert queue.schedule(10.0, 500) == (10.0, 10.5)
    assert queue.schedule(10.1, 200) == (10.5, 10.7)
    assert queue.schedule(11.0, 0) == (11.0, 11.0)
    free = PrefillQueue(ms_per_token=0.0)
    assert free.schedule(5.0, 10**6) == (5.0, 5.0)


def test_config_from_the_environment():
    assert PrefixCacheConfig.from_env({}) == PrefixCacheConfig(4096, 16, 0.0)
    config = PrefixCacheConfig.from_env(
        {"STANDIN_PREFIX_CACHE_BLOCKS": "800", "STANDIN_PREFILL_MS_PER_TOKEN": "0.1"}
    )
    assert (config.blocks, config.prefill_ms_per_token) == (800, 0.1)
    for bad in ({"STANDIN_BLOCK_SIZE": "0"}, {"STANDIN_PREFIX_CACHE_BLOCKS": "-1"}):
        with pytest.raises(SystemExit):
            PrefixCacheConfig.from_env(bad)


def test_metrics_render_as_vllm_names_them():
    metrics = VllmMetrics("tiny")
    metrics.prefix_cache_queries.inc(50)
    metrics.prefix_cache_hits.inc(32)
    metrics.request_success.inc(labels={"finished_reason": "length"})
    text = metrics.render()
    assert "# TYPE vllm:prefix_cache_queries counter" in text
    assert 'vllm:prefix_cache_queries_total{model_name="tiny",engine="0"} 50.0' in text
    assert 'vllm:prefix_cache_hits_total{model_name="tiny",engine="0"} 32.0' in text
    assert (
        'vllm:request_success_total{model_name="tiny",engine="0",finished_reason="length"} 1.0'
        in text
    )
    assert 'vllm:num_requests_waiting{model_name="tiny",engine="0"} 0.0' in text
    with pytest.raises(ValueError):
        Counter("x", "y").inc(-1)


def test_a_histogram_has_cumulative_buckets_count_and_sum():
    histogram = Histogram("vllm:time_to_first_token_seconds", "TTFT", (0.1, 1.0), {"m": "a"})
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    lines = histogram.lines()
    assert 'vllm:time_to_first_token_seconds_bucket{m="a",le="0.1"} 1.0' in lines
    assert 'vllm:time_to_first_token_seconds_bucket{m="a",le="1.0"} 2.0' in lines
    assert 'vllm:time_to_first_token_seconds_bucket{m="a",le="+Inf"} 3.0' in lines
    assert 'vllm:time_to_first_token_seconds_count{m="a"} 3.0' in lines


# --- a real stand-in process ----------------------------------------------------


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, (name, text)
    return float(match.group(1))


def test_a_cached_prefix_is_reported_and_prefills_faster():
    env = {"STANDIN_PREFILL_MS_PER_TOKEN": "0.5", "STANDIN_PREFIX_CACHE_BLOCKS": "1000"}
    with stub_backends(1, ttft_ms=5, token_ms=5, env=env) as stubs:
        url = stubs[0].url
        system = " ".join(words(800, "sys"))

        def ask(question: str) -> tuple[httpx.Response, float]:
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 1,
            }
            started = time.monotonic()
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            return response, time.monotonic() - started

        cold, cold_time = ask("first question")
        warm, warm_time = ask("second question")
        text = httpx.get(f"{url}/metrics").text
    assert cold.headers["x-prefix-cache-hit-tokens"] == "0"
    assert int(warm.headers["x-prefix-cache-hit-tokens"]) == 800  # 50 full blocks of the prefix
    assert warm.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 800
    # ~804 uncached tokens x 0.5 ms = 0.4 s, against ~3 tokens.
    assert cold_time > 0.35 and warm_time < 0.2, (cold_time, warm_time)
    queried = int(cold.headers["x-prefix-cache-query-tokens"]) + int(
        warm.headers["x-prefix-cache-query-tokens"]
    )
    assert metric(text, "vllm:prefix_cache_queries_total") == queried
    assert metric(text, "vllm:prefix_cache_hits_total") == 800


def test_uncached_prefills_queue_behind_each_other():
    env = {"STANDIN_PREFILL_MS_PER_TOKEN": "1"}
    with stub_backends(1, ttft_ms=0, token_ms=1, env=env) as stubs:
        url = stubs[0].url

        def ask(tag: str) -> float:
            body = {"model": MODEL, "prompt": " ".join(words(300, tag)), "max_tokens": 1}
            started = time.monotonic()
            assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
            return time.monotonic() - started

        def waiting() -> float:
            time.sleep(0.15)
            return metric(httpx.get(f"{url}/metrics").text, "vllm:num_requests_waiting")

        with ThreadPoolExecutor(4) as pool:
            times = [pool.submit(ask, tag) for tag in "abc"]
            seen_waiting = pool.submit(waiting)
            durations = sorted(f.result() for f in times)
    # 0.3 s each, one after another: the last finishes after ~0.9 s, about two
    # prefills after the first (compared with each other, not with a bound of
    # their own: a busy machine makes every request slower, not the queue shorter).
    assert durations[-1] > 0.8 and durations[-1] - durations[0] > 0.45, durations
    assert seen_waiting.result() >= 1
