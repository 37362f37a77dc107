"""Runs inside the vllm container; see `components.containers`."""
