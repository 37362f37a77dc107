"""`pulumi up` entry point: validated config -> VllmCluster -> stack outputs."""

import pulumi

from components.program import deploy
from components.stack_config import ConfigError

try:
    outputs = deploy()
except ConfigError as err:
    # RunError prints the message alone, without a Python traceback.
    raise pulumi.RunError(str(err)) from None

for key, value in outputs.items():
    pulumi.export(key, value)
