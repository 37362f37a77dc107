"""What a user runs by hand: `python -m components.cli.check` and `.render_config`.

Runs in the user's shell, before `pulumi up`, without the Pulumi CLI.
"""
