"""`pulumi up` entry point: validated config -> VllmCluster -> stack outputs."""

import pulumi

from components.config.problems import ConfigError
from components.deployment.program import deploy

try:
    outputs = deploy()
except ConfigError as err:
    # RunError prints the message alone, without a Python traceback.
    raise pulumi.RunError(str(err)) from None

for key, value in outputs.items():
    pulumi.export(key, value)
