"""`pulumi up` entry point: validated config -> VllmCluster -> stack outputs."""

import os
import signal
import sys
from types import FrameType

import pulumi

from components.config.problems import ConfigError
from components.shell.program import deploy

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


signal.signal(signal.SIGINT, _stop_quietly)

try:
    outputs = deploy()
except ConfigError as err:
    # RunError prints the message alone, without a Python traceback.
    raise pulumi.RunError(str(err)) from None

for key, value in outputs.items():
    pulumi.export(key, value)
