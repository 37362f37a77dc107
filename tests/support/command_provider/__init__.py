"""A stand-in for the `pulumi-resource-command` 1.2.1 plugin, in Python, for tests.

pulumi-command's provider module is not served by the Go module proxy here, so
its plugin cannot be built; tests that run the real Pulumi engine get this one
instead. It serves `command:local:Command`, the only pulumi-command resource
this project declares, following pulumi-command v1.2.1's source
(pulumi/pulumi-command `7f3eb6f3`, "PC") and the framework it is built on,
pulumi-go-provider v1.3.0 (`3bfb720d`, "GP", pinned by PC provider/go.mod:11):

- `inputs`: the resource's inputs, GP's default Check and Diff of them
  (`triggers` is the one replace-on-change input);
- `runner`: running a command as PC's `run` does (interpreter, directory,
  environment with the previous output, stdin, streamed log lines, error text);
- `provider`: the gRPC calls, the create/update/delete/read semantics, how
  secrets and unknowns flow into the outputs;
- `values`: property values, unknowns and the engine's diff of them.

Every behaviour cites the line it comes from.

How the engine finds it: `bin/pulumi-resource-command` on PATH (an "ambient"
plugin, used whatever version the program asks for; the engine warns "using
pulumi-resource-command from $PATH"). It runs `tests.support.command_provider`
under `$VLLM_NGINX_PROVIDER_PYTHON` or else the repository's `.venv`, with the
repository put on `sys.path` by the launcher, so the commands it runs see the
environment the engine gave the plugin, unchanged.

What it does not model is listed in `provider`'s docstring; none of it is
silently different: `assetPaths`/`archivePaths` fail Check, the rest is
unimplemented.
"""
