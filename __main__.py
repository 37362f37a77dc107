"""`pulumi up` entry point: validated config -> VllmCluster -> stack outputs."""

import atexit
import os
import signal
import sys
from types import FrameType

import pulumi
from pulumi.runtime.settings import _get_rpc_manager

from components.config.problems import ConfigError
from components.deployment.program import deploy

STOPPED = (
    "pulumi up stopped before the program finished: a resource failed (its error is above) "
    "or it was interrupted. Fix that cause and run `pulumi up` again; it continues from "
    "what is already deployed."
)


def _stop_quietly(signum: int, frame: FrameType | None) -> None:
    """The engine ends a failed deployment by cancelling the program, which the
    language host does with SIGINT; Python's default turns that into a
    KeyboardInterrupt traceback under the error that matters (docs/failed-up.md).
    The engine already has the cause; say what to do next and end at once."""
    print(STOPPED, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _said_next() -> None:
    """When the program ended before the engine's SIGINT: the SDK raised "Resource
    monitor has terminated" (pulumi 3.272.0 runtime/settings.py:342-345), which the
    language host logs as one line; say what to do next after it."""
    try:
        failure = _get_rpc_manager().unhandled_exception
    except AttributeError:
        return
    if isinstance(failure, pulumi.RunError) and "monitor has terminated" in str(failure):
        print(STOPPED, file=sys.stderr, flush=True)


signal.signal(signal.SIGINT, _stop_quietly)
atexit.register(_said_next)

try:
    outputs = deploy()
except ConfigError as err:
    # RunError prints the message alone, without a Python traceback.
    raise pulumi.RunError(str(err)) from None

for key, value in outputs.items():
    pulumi.export(key, value)
