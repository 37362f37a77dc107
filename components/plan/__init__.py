"""What to run, as plain data, computed from `Settings` alone.

Runs in the `pulumi up` process and in the command-line tools. Pure: the plan
can be printed by `components.cli.check` and tested without Pulumi or Docker.
"""
