"""A stand-in for Pulumi's Python language host (`pulumi-language-python`) of v3.274.1.

Why: the tests build the real Pulumi CLI from Go modules, and the Go module proxy
refuses the module of the Python language host
(github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), so `pulumi
up` on a `runtime: python` project has no language plugin. The sdk/v3 module is served,
and it holds what the real host is built around: the exec script that runs the
program (`python/cmd/pulumi-language-python-exec`) and the toolchain package
(`python/toolchain`: virtualenv, pip). This package is the small Go program between
them, in Python, RPC by RPC.

How the CLI finds and runs it: `bin/pulumi-language-python` on PATH is an ambient
language plugin, preferred over anything next to the CLI (pulumi sdk/v3@v3.274.1
go/common/workspace/plugins.go:2207-2290). The engine starts it with its own gRPC
address as the last argument (`flags.py`), reads the port from the first line of its
stdout (`server.py`), and calls GetPluginInfo, GetRequiredPackages, Run (which starts
`<virtualenv>/bin/python <exec script> --monitor ... <entry point>`), About, Cancel
(`host.py`). The exec script is `-use-executor` if given, else found: next to the
launcher, $PULUMI_LANGUAGE_PYTHON_EXEC, or the sdk/v3@v3.274.1 module in $GOMODCACHE
or in the toolchain cache (`server.executor_candidates`).

Sources: the toolchain, the exec script and the engine's side are cited at v3.274.1
from the Go module cache. The host's own main.go is not in any served module; it is
cited at the newest revision readable here, pulumi/pulumi commit f7520826c1
(2026-08-21, sdk/.version 3.260.0) of sdk/python/cmd/pulumi-language-python/main.go,
as `main.go:N`. What changed in it between 3.260 and 3.274.1 is not known; the
toolchain it calls did change (InstallPackage, uv's listing), and that part follows
v3.274.1.

Not in the stand-in: the uv and poetry toolchains, debugging (`attach_debugger`),
Python plugins (RunPlugin), code generation, Pack, Link, and a terminal for
InstallDependencies; they answer UNIMPLEMENTED or an error saying so.

Modules: `flags` (command line), `toolchain` (options, virtualenv, pip, python),
`packages` (GetRequiredPackages' rules), `host` (the RPCs), `server` (start-up).
"""
