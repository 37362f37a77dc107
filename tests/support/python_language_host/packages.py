"""GetRequiredPackages: the Pulumi packages installed in the program's environment.

As the real host (main.go:326-368, 549-848): every package `pip list` shows, except
pulumi-policy and pulumi-esc-sdk, that ships a `pulumi-plugin.json` in its import
package or whose name starts with `pulumi-`, becomes a resource plugin dependency named
and versioned by that file, or else by its package name without `pulumi-` and its
version turned from PEP 440 into semver. `"resource": false` in the file, or a version
that cannot be turned, leaves the package out. The engine then looks for each plugin
(ambient on PATH first) and records the versions for the default providers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from tests.support.python_language_host.toolchain import Pip, ToolchainError, run

#: Packages known to come without a plugin (main.go:546-552).
WITHOUT_PLUGINS = frozenset({"pulumi-policy", "pulumi-esc-sdk"})

# Run by the program's python with the package names as arguments: for each, where its
# import package's pulumi-plugin.json is ("" if none). The import package is the
# distribution's own name with dashes as underscores, as the real host looks it up
# (main.go:554-569).
_FIND_PLUGIN_JSON = """\
import importlib.metadata, importlib.util, json, os, sys
where = {}
for name in sys.argv[1:]:
    where[name] = ""
    try:
        module = importlib.metadata.distribution(name).metadata["Name"].replace("-", "_")
        spec = importlib.util.find_spec(module)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(str(folder), "pulumi-plugin.json")
            if os.path.isfile(candidate):
                where[name] = candidate
                break
    except Exception:
        pass
print(json.dumps(where))
"""


@dataclass(frozen=True)
class Parameterization:
    name: str
    version: str
    value: bytes


@dataclass(frozen=True)
class PluginJSON:
    """`plugin.PulumiPluginJSON` (sdk/v3@v3.274.1 go/common/resource/plugin/plugin.go:60-88)."""

    resource: bool = False
    name: str = ""
    version: str = ""
    server: str = ""
    parameterization: Parameterization | None = None
    extension: Parameterization | None = None

    @staticmethod
    def parse(text: str) -> PluginJSON:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def param(key: str) -> Parameterization | None:
            raw = data.get(key)
            if not isinstance(raw, dict):
                return None
            value = raw.get("value") or ""  # Go []byte: base64 in JSON
            return Parameterization(
                str(raw.get("name", "")), str(raw.get("version", "")), base64.b64decode(value)
            )

        return PluginJSON(
            resource=bool(data.get("resource", False)),
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            server=str(data.get("server", "")),
            parameterization=param("parameterization"),
            extension=param("extensionParameterization"),
        )


@dataclass(frozen=True)
class PackageDependency:
    """`pulumirpc.PackageDependency` as the real host fills it (main.go:716-723)."""

    name: str
    version: str
    server: str = ""
    kind: str = "resource"
    parameterization: Parameterization | None = None
    extension: Parameterization | None = field(default=None)


def plugin_json_paths(toolchain: Pip, names: list[str]) -> dict[str, str]:
    """`readAllPulumiPluginJSONPaths` (main.go:571-600): a failing run means no files."""
    if not names:
        return {}
    argv, env = toolchain.command("-c", _FIND_PLUGIN_JSON, *names)
    done = run(argv, env=env)
    if not done.ok:
        return {}
    try:
        paths = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ToolchainError(f"failed to parse pulumi-plugin.json paths: {exc}") from None
    return {str(k): str(v) for k, v in paths.items()}


def pulumi_packages(toolchain: Pip) -> list[tuple[str, str, PluginJSON | None]]:
    """`listPulumiPackageInfos` (main.go:606-656): (name, version, pulumi-plugin.json)."""
    installed = toolchain.list_packages(transitive=True)
    paths = plugin_json_paths(toolchain, [name for name, _ in installed])
    result: list[tuple[str, str, PluginJSON | None]] = []
    for name, version in installed:
        if name in WITHOUT_PLUGINS:
            continue
        plugin: PluginJSON | None = None
        path = paths.get(name, "")
        if path:
            try:
                with open(path, encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                text = None  # unreadable: as if there were none (main.go:626-629)
            if text is not None:
                try:
                    plugin = PluginJSON.parse(text)
                except (ValueError, TypeError) as exc:
                    raise ToolchainError(
                        f"failed to parse pulumi-plugin.json for {name}: {exc}"
                    ) from None
        if plugin is None and not name.startswith("pulumi-"):
            continue
        result.append((name, version, plugin))
    return result


def package_dependency(
    package: str, package_version: str, plugin: PluginJSON | None
) -> PackageDependency | None:
    """`packageDependencyFromPluginJSON` (main.go:658-749)."""
    name = version = server = ""
    parameterization = extension = None
    if plugin is not None:
        if not plugin.resource:
            return None
        name, version, server = plugin.name, plugin.version, plugin.server
        parameterization, extension = plugin.parameterization, plugin.extension
    if not name:
        name = package.removeprefix("pulumi-")
    if not version:
        try:
            version = plugin_version(package_version)
        except ValueError:
            return None
    if not version.startswith("v"):
        version = "v" + version
    return PackageDependency(name, version, server, "resource", parameterization, extension)


def _digits(text: str) -> tuple[str, str]:
    end = 0
    while end < len(text) and text[end].isascii() and text[end].isdigit():
        end += 1
    return text[:end], text[end:]


def plugin_version(package_version: str) -> str:
    """`determinePluginVersion` (main.go:751-848): a PEP 440 version as a plugin's semver.

    `1.0` -> `1.0.0`; `1.2.3a4` -> `1.2.3-alpha.4` (`b` beta, `rc` rc); `.postN` ->
    `+postN`; `.devN` -> `+devN`, or `devN` after a post part. Epochs and anything else
    left over are refused (ValueError).
    """
    if not package_version:
        raise ValueError("cannot parse empty string")
    if not package_version.isascii():
        raise ValueError("not ascii")
    number, after = _digits(package_version)
    if number and after.startswith("!"):
        raise ValueError("epochs are not supported")
    segments: list[str] = []
    rest = package_version
    ended_on_dot = False
    while True:
        number, rest = _digits(rest)
        if not number:
            break
        segments.append(number)
        ended_on_dot = rest.startswith(".")
        if not ended_on_dot:
            break
        rest = rest[1:]
    if ended_on_dot:
        rest = "." + rest
    segments += ["0"] * (3 - len(segments))
    core = ".".join(segments)
    if not rest:
        return core
    pre = ""
    for tag, label in (("a", "alpha"), ("b", "beta"), ("rc", "rc")):
        if rest.startswith(tag):
            number, rest = _digits(rest[len(tag) :])
            pre = f"-{label}.{number}"
            break
    post = ""
    if rest.startswith(".post"):
        number, rest = _digits(rest[5:])
        post = "+post" + number
    dev = ""
    if rest.startswith(".dev"):
        number, rest = _digits(rest[4:])
        dev = ("" if post else "+") + "dev" + number
    if rest:
        raise ValueError(f"'{rest}' still unparsed")
    return core + pre + post + dev
