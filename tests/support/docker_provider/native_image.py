"""`docker.Image`: pulumi-docker's own Go resource, not a bridged Terraform one.

Citations are pulumi/pulumi-docker `provider/` at `237b7899` (after v5.1.0;
the mirror has no v5.2.0 tag): `PD` = provider.go, `PDI` = image.go.

- Check (PD:128-268): `buildOnPreview` defaults to false; `build.context` to
  "."; `build.dockerfile` to `<context>/Dockerfile`; the Dockerfile must exist
  (relative to the provider's working directory); `build.contextDigest` is
  added, a hash of the Dockerfile and of every context file not excluded by
  `<Dockerfile>.dockerignore` or `<context>/.dockerignore` (relative path,
  Go file mode, content; a symlink by its resolved target, PD:553-654);
  `build.platform` defaults to `linux/<arch of the provider>` (PD:210-236).
- Diff (PD:271-327) compares the inputs saved in the state (`__inputs`) with
  the new ones: any added, removed or changed top-level input is an update
  (a change of `registry` counts only when its `server` changed); never a
  replacement.
- Create/Update (PD:351-488) build and, with `skipPush`, set `repoDigest` to
  the local image ID (PDI:287-295); in a preview without `buildOnPreview`
  they return the inputs, so `repoDigest` is unknown (PD:367-377, 444-454).
  The state is the outputs plus `__inputs`, a secret (PD:525-529).
- Read returns the state unchanged (PD:415-425); Delete does nothing: the
  image stays on the host (PD:490-496).

Differs: the build uses the engine's classic builder (docker-py has no
BuildKit session; the provider defaults to BuildKit, `builderVersion`
"BuilderBuildKit", PDI:698-716) and does not pass the default platform;
pushing (`skipPush` false), `registry`, `cacheFrom` and `addHosts` are not
accepted; the ignore-file matching is fnmatch-based, not moby's
patternmatcher, and the digest is not byte-identical to the provider's
(same ingredients, so it changes exactly when they change).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import platform
import stat
from collections.abc import Mapping
from typing import Any

import docker

from tests.support.docker_provider.diffing import UNKNOWN, Diff, Failure, Kind, contains_unknown
from tests.support.docker_provider.engine import ProviderError

TYPE = "docker:index/image:Image"
_ACCEPTED = {"build", "buildOnPreview", "imageName", "skipPush", "registry"}
_BUILD_ACCEPTED = {"context", "dockerfile", "args", "target", "platform", "builderVersion"}


def host_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return f"linux/{arch}"


def _go_mode(mode: int) -> str:
    """Go's fs.FileMode.String() for the type bits a build context holds."""
    kind = "d" if stat.S_ISDIR(mode) else "L" if stat.S_ISLNK(mode) else "-"
    bits = "".join(char if mode & (1 << (8 - i)) else "-" for i, char in enumerate("rwxrwxrwx"))
    return kind + bits


def _ignore_patterns(dockerfile: str, context: str) -> list[str]:
    """getIgnorePatterns (PD:651-686): `<Dockerfile>.dockerignore` first, else
    `<context>/.dockerignore`."""
    for candidate in (dockerfile + ".dockerignore", os.path.join(context, ".dockerignore")):
        if os.path.exists(candidate):
            with open(candidate) as handle:
                lines = [line.strip() for line in handle]
            return [line for line in lines if line and not line.startswith("#")]
    return []


def _excluded(relative: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = os.path.normpath(pattern[1:] if negate else pattern).lstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        glob = body.replace("**/", "*").replace("/**", "/*")
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            excluded = not negate
    return excluded


def context_digest(context: str, dockerfile: str) -> str:
    """hashContext (PD:606-654)."""
    patterns = _ignore_patterns(dockerfile, context)
    accumulator = bytearray()

    def add(path: str, relative: str, mode: int) -> None:
        digest = hashlib.sha256()
        if stat.S_ISLNK(mode):
            digest.update(os.path.realpath(path).encode())
        elif stat.S_ISREG(mode) or mode == 0:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        accumulator.extend(os.path.normpath(relative).encode())
        accumulator.extend((_go_mode(mode) if mode else "----------").encode())
        accumulator.extend(digest.digest())
        accumulator.append(0)

    # The Dockerfile always goes in as "Dockerfile" with mode 0 (PD:614-625).
    add(dockerfile, "Dockerfile", 0)
    for root, dirs, files in os.walk(context):
        dirs.sort()
        rel_root = os.path.relpath(root, context)
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            path = os.path.join(root, name)
            relative = name if rel_root == "." else f"{rel_root}/{name}"
            if _excluded(relative, patterns):
                continue
            add(path, relative, os.lstat(path).st_mode)
        dirs[:] = [
            d
            for d in dirs
            if not os.path.islink(os.path.join(root, d))
            and not _excluded(d if rel_root == "." else f"{rel_root}/{d}", patterns)
        ]
    return hashlib.sha256(bytes(accumulator)).hexdigest()


def check(news: Mapping[str, Any]) -> tuple[dict[str, Any], list[Failure]]:
    """Check (PD:128-268)."""
    inputs = {k: v for k, v in news.items() if v is not None}
    failures = [
        Failure(k, f"{TYPE} input {k!r} is not modelled by the test provider")
        for k in inputs
        if k not in _ACCEPTED
    ]
    if inputs.get("registry"):
        failures.append(Failure("registry", "registry is not modelled by the test provider"))
    if inputs.get("skipPush") is not True:
        failures.append(Failure("skipPush", "pushing is not modelled: set skip_push=True"))
    inputs.setdefault("buildOnPreview", False)
    build = dict(inputs.get("build") or {})
    failures += [
        Failure(f"build.{k}", "not modelled by the test provider")
        for k in build
        if k not in _BUILD_ACCEPTED
    ]
    if build.get("builderVersion") not in (None, "BuilderV1", "BuilderBuildKit"):
        raise ProviderError("invalid Docker Builder version")  # PDI:698-716
    context = build.get("context")
    if context is None:
        context = build["context"] = "."
    dockerfile = build.get("dockerfile")
    if dockerfile is None and context != UNKNOWN:
        dockerfile = build["dockerfile"] = os.path.join(context, "Dockerfile")
    if isinstance(dockerfile, str) and dockerfile != UNKNOWN and context != UNKNOWN:
        if not os.path.exists(dockerfile):
            if os.path.isabs(dockerfile):
                raise ProviderError(
                    f"expected a relative Dockerfile path; got {dockerfile!r} instead"
                )
            relative = os.path.join(str(context), dockerfile)
            if os.path.exists(relative):
                raise ProviderError(
                    f"could not open dockerfile at relative path {dockerfile!r}. "
                    f"Try setting `dockerfile` to {relative!r}"
                )
            raise ProviderError(f"could not open dockerfile at relative path {dockerfile!r}")
        build["contextDigest"] = context_digest(str(context), dockerfile)
    build.setdefault("platform", host_platform())
    inputs["build"] = build
    return inputs, failures


def diff(olds: Mapping[str, Any], news: Mapping[str, Any]) -> Diff:
    """Diff (PD:271-345)."""
    old_inputs = olds.get("__inputs") or {}
    detailed: dict[str, Kind] = {}
    for key in set(old_inputs) | set(news):
        old, new = old_inputs.get(key), news.get(key)
        if old is None and new is None:
            continue
        if old is None:
            detailed[key] = Kind.ADD
        elif new is None:
            detailed[key] = Kind.DELETE
        elif old != new or contains_unknown(new):
            both = isinstance(old, Mapping) and isinstance(new, Mapping)
            if key == "registry" and both and old.get("server") == new.get("server"):
                continue
            detailed[key] = Kind.UPDATE
    return Diff(changes=bool(detailed), diffs=sorted(detailed), detailed=detailed)


def build(api: docker.APIClient, inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """dockerBuild with skipPush (PDI:88-295): build, then `repoDigest` = image ID.
    Returns the resource ID (the image name) and the state."""
    spec = dict(inputs.get("build") or {})
    name = str(inputs["imageName"])
    context = str(spec.get("context") or ".")
    dockerfile = str(spec.get("dockerfile") or os.path.join(context, "Dockerfile"))
    relative = os.path.relpath(os.path.abspath(dockerfile), os.path.abspath(context))
    chosen_platform = spec.get("platform")
    errors: list[str] = []
    for chunk in api.build(
        path=context,
        dockerfile=relative if not relative.startswith("..") else os.path.abspath(dockerfile),
        tag=name,
        buildargs={str(k): str(v) for k, v in (spec.get("args") or {}).items()} or None,
        target=spec.get("target") or None,
        platform=chosen_platform if chosen_platform != host_platform() else None,
        decode=True,
        use_config_proxy=False,
    ):
        if isinstance(chunk, dict) and chunk.get("error"):
            errors.append(str(chunk["error"]))
    if errors:
        raise ProviderError("; ".join(errors))
    raw: Any = api  # inspect_image is untyped in types-docker
    image_id = str(raw.inspect_image(name)["Id"])
    outputs: dict[str, Any] = {
        "dockerfile": relative,
        "context": context,
        "baseImageName": name,
        "registryServer": "",
        "imageName": name,
        "platform": spec.get("platform"),
        "repoDigest": image_id,
    }
    return name, outputs
