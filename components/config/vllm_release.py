"""The vLLM release the deployment runs unless `image.prebuilt` says otherwise.

This is the one place the release is pinned: the GPU and CPU images below are
the defaults of `image.prebuilt` for backend `gpu` and `cpu`, both of the same
release. What changed between releases and what the program relies on, with
citations of vLLM's source: docs/vllm.md.
"""

from __future__ import annotations

VLLM_RELEASE = "v0.33.0"

DEFAULT_GPU_IMAGE = f"vllm/vllm-openai:{VLLM_RELEASE}"
"""vLLM's CUDA image on Docker Hub (docs/getting_started/installation/gpu.cuda.inc.md:279-285
at v0.33.0): `v<version>` is a multi-arch tag of x86_64 and aarch64."""

DEFAULT_CPU_IMAGE = f"vllm/vllm-openai-cpu:{VLLM_RELEASE}-x86_64"
"""vLLM's CPU image on Docker Hub, in the tag form its CPU docs give
(docs/getting_started/installation/cpu.x86.inc.md:171 at v0.33.0; arm64 hosts:
`vllm/vllm-openai-cpu:v0.33.0-arm64`, cpu.arm.inc.md:137). The release script
also pushes a multi-arch `vllm/vllm-openai-cpu:v0.33.0`
(.buildkite/scripts/publish-release-images.sh:199-203), which the docs never
name: the per-arch tag is the documented one, and it names one build, the same
on every host (an arm64 host gets an image it cannot run, not quietly another
build; it sets the `-arm64` tag). Until v0.17.1 the CPU image was
`public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:<version>`."""
