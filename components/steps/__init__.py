"""Steps: processes that `pulumi up` starts through pulumi-command.

Each module is run as `python -m components.steps.NAME` by a `local.Command`,
on the machine where `pulumi up` runs, with the environment of its Docker
provider. They import no Pulumi; their output is what the user sees during
`pulumi up`, and their exit code stops it.
"""
