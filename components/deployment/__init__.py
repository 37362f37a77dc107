"""The thin Pulumi shell: the program and its components.

Runs in the `pulumi up` process only. Maps the plan onto pulumi-docker and
pulumi-command resources and decides nothing of its own.
"""
