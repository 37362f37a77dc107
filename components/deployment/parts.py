"""Resources more than one component declares: an image, and a check run where
`pulumi up` runs. Each takes its options, parent included, from its caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.plan.model import CheckPlan, ImagePlan

RETRY_FAILED_START = "#initerror"
"""A container whose start failed is kept in state with its init error, and the
next `up` would only update it, which never starts it; with this path in
`replace_on_changes` the engine replaces it instead (docs/failed-up.md)."""


def image_ref(
    resource_name: str, image: ImagePlan, opts: pulumi.ResourceOptions
) -> pulumi.Output[str]:
    """A reference that changes with the image, so containers follow a rebuild."""
    if image.build is None:
        pull = f"{image.pull_timeout_minutes}m"
        remote = docker.RemoteImage(
            resource_name,
            name=image.name,
            keep_locally=image.keep_locally,
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    custom_timeouts=pulumi.CustomTimeouts(create=pull, update=pull)
                ),
            ),
        )
        return remote.image_id
    build = image.build
    built = docker.Image(
        resource_name,
        image_name=image.name,
        build=docker.DockerBuildArgs(
            context=build.context,
            dockerfile=str(Path(build.context) / build.dockerfile),
            target=build.target,
            args=dict(build.args),
        ),
        skip_push=True,
        opts=opts,
    )
    return built.repo_digest


def check_command(
    resource_name: str,
    check: CheckPlan,
    environment: Mapping[str, pulumi.Input[str]],
    triggers: Sequence[pulumi.Output[str]],
    project_dir: Path,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """A check run where `pulumi up` runs, again whenever a trigger changes."""
    return command.local.Command(
        resource_name,
        create=check.command,
        dir=str(project_dir),
        environment={**check.environment, **environment},
        triggers=list(triggers),
        opts=opts,
    )
