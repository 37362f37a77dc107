"""Stack config in, validated `Settings` out: the only door into the program.

Runs in the `pulumi up` process and in the command-line tools. Pure: no Pulumi,
no engine, so every rule is tested on plain data and reported before anything
is declared.
"""
