"""The vLLM release the deployment runs unless `image.prebuilt` says otherwise.

This is the one place the release is pinned: the GPU and CPU images below are
the defaults of `image.prebuilt` for backend `gpu` and `cpu`, both of the same
release. What changed between releases and what the program relies on, with
citations of vLLM's source: docs/vllm.md.
"""

from __future__ import annotations

import re

VLLM_RELEASE = "v0.33.0"

DEFAULT_GPU_IMAGE = f"vllm/vllm-openai:{VLLM_RELEASE}"
"""vLLM's CUDA image on Docker Hub, a multi-arch tag (docs/vllm.md, "Images")."""

DEFAULT_CPU_IMAGE = f"vllm/vllm-openai-cpu:{VLLM_RELEASE}-x86_64"
"""vLLM's CPU image on Docker Hub, in the per-arch tag form its CPU docs give: it names
one build, the same on every host (docs/vllm.md, "Images"; arm64 hosts set `-arm64`)."""

OLDEST_SUPPORTED = (0, 18, 0)
"""The first release with `--shutdown-timeout`, which every replica is started with
(docs/vllm.md)."""

RELEASE_REPOSITORIES = (
    "vllm/vllm-openai",
    "vllm/vllm-openai-cpu",
    "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo",
)
"""Where vLLM publishes its release images, whose tags name the release."""
_HUB_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")
_RELEASE_TAG = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?![\d])")


def release_of(image: str) -> tuple[int, int, int] | None:
    """The vLLM release an image of vLLM's own repositories is tagged with, else None.

    `vllm/vllm-openai:v0.11.0`, `docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64`
    name one; `latest`, nightly tags, digests without a tag and any other
    repository (an image of your own) do not.
    """
    reference = image.split("@", 1)[0]
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return None  # no tag: `host:port/name` has a colon, but not a tag
    for prefix in _HUB_PREFIXES:
        name = name.removeprefix(prefix)
    match = _RELEASE_TAG.match(tag)
    if name not in RELEASE_REPOSITORIES or match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def old_release_warning(image: str | None, key: str = "image.prebuilt") -> str | None:
    """A sentence for the user when `image` is a vLLM release older than the oldest
    supported one (a warning: `pulumi up` goes on), else None."""
    release = release_of(image) if image else None
    if release is None or release >= OLDEST_SUPPORTED:
        return None
    oldest = "v" + ".".join(map(str, OLDEST_SUPPORTED))
    return (
        f"'{key}' is {image}, vLLM v{'.'.join(map(str, release))}, older than "
        f"{oldest}, the oldest release this deployment supports: it does not know "
        "--shutdown-timeout, which every replica is started with, so its replicas would "
        f"not start. Use {oldest} or newer (remove '{key}' for the pinned "
        f"{VLLM_RELEASE}); docs/vllm.md says what changed."
    )
