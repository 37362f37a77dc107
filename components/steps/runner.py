"""What every step's `main()` shares: read its spec, run, print the message or the error.

A step's output is what the user sees during `pulumi up` and its exit code stops
it, so every step ends the same way: the message on stdout and 0, or one
`error: ...` line on stderr and 1 (a `Refused` verdict printed as it is).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from docker.errors import DockerException

from components.plan.specs import SPEC_ENV, Spec, read_spec


class StepError(RuntimeError):
    """The step could not do its work; the message is for the user."""


class Refused(RuntimeError):
    """The step did its work and says no (a worse canary); printed as it is."""


def spec_of(kind: type[Spec]) -> Spec | None:
    """The spec of this process, or None after saying it has none (exit 2)."""
    try:
        return read_spec(kind)
    except KeyError:
        problem = "is not set: this step runs under `pulumi up`"
    except ValueError as err:  # pydantic's ValidationError: another release's spec
        problem = f"is not a {kind.__name__} ({err}); run `pulumi up` with this program"
    print(f"error: {SPEC_ENV} {problem}", file=sys.stderr)
    return None


def run_step(kind: type[Spec], body: Callable[[Spec], str]) -> int:
    """`body(spec)` with the spec of this process; its message, or the error, printed."""
    spec = spec_of(kind)
    return 2 if spec is None else finish(lambda: body(spec))


def finish(body: Callable[[], str]) -> int:
    """Print what `body()` returns and exit 0, or its error and exit 1."""
    try:
        message = body()
    except Refused as verdict:
        print(verdict, file=sys.stderr, flush=True)
        return 1
    except (StepError, DockerException, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    print(message, flush=True)
    return 0
