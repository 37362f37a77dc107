"""A stand-in for the `pulumi-resource-docker` 5.2.0 plugin, in Python, for tests.

pulumi-docker's provider (Go, bridging terraform-provider-docker) cannot be
built here, so tests that run the real Pulumi engine get this plugin instead.
It answers the engine's gRPC calls for the resources this project declares
(`Container`, `Network`, `Volume`, `RemoteImage`, `Image` and the
`pulumi:providers:docker` provider itself) the way the real plugin does,
following its source: the Terraform schema's ForceNew/Computed/Default flags
(`schema`), the bridge's Check and Diff (`diffing`), the Terraform provider's
Create/Read/Update/Delete against the engine (`engine`) and pulumi-docker's
native `Image` (`native_image`). Every rule cites the line it comes from.

How the engine finds it: `bin/pulumi-resource-docker` on PATH (an "ambient"
plugin, used whatever version the program asks for, with a "using
pulumi-resource-docker from $PATH" warning per operation; see that script).
Offline, a symlink to it at `$PULUMI_HOME/plugins/resource-docker-v5.2.0/
pulumi-resource-docker` works as well (then set PULUMI_IGNORE_AMBIENT_PLUGINS).
It runs `python -m tests.support.docker_provider` with the repository on
PYTHONPATH, under `$VLLM_NGINX_PROVIDER_PYTHON` or else the repository's
`.venv`. With `$VLLM_NGINX_PROVIDER_TRACE` set to a file, every call the engine
makes is appended to it as a JSON line (`provider._Trace`).

Not modelled (a Check failure or an error, never a silent difference):
inputs outside `schema` (`accepted=False` ones included), `gpus`, `attach`,
`gwPriority`, the provider's `context` and `sshOpts`, image push and BuildKit.
A container whose start failed is kept, in Docker and in the engine's state
with its init error (`engine.InitFailed`), as the bridge reports it.
"""
