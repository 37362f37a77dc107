"""Reading `Pulumi.<stack>.yaml` as the Pulumi CLI does, without the CLI.

Used by `components.cli.check` and `render_config`, so a stack file is
checked before any `pulumi up`: same keys, namespaces, YAML 1.2 scalars and
`secure:` values (stand-ins, since only the CLI can decrypt them).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config.loading import load_config, split_namespace
from components.config.problems import (
    NAMESPACE,
    OTHER_NAMESPACES,
    SECRET_KEYS,
    ConfigError,
    Problem,
    in_plain_text,
)
from components.config.settings import Settings

# What the check uses for an encrypted value it cannot decrypt: passes the value
# rules (safe alphabet), so only the secret's *value* goes unchecked.
SECRET_PLACEHOLDER = "encrypted-value-not-checked"
# Top-level keys of a stack file (workspace.ProjectStack in Pulumi's source).
STACK_FILE_KEYS = frozenset(
    {"config", "environment", "secretsprovider", "encryptedkey", "encryptionsalt"}
)


class _PulumiYamlLoader(yaml.SafeLoader):
    """YAML as Pulumi's Go parser (gopkg.in/yaml.v3) reads a stack file into config.

    PyYAML follows YAML 1.1, where `no`, `off`, `yes`, `on` are booleans, `1:30`
    is the number 90 and `2024-01-01` a date; yaml.v3 keeps all of those as
    strings (so `restartPolicy: no` is the string "no" for `pulumi up`). yaml.v3
    also refuses a key given twice in one mapping, where PyYAML keeps the last.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader reports it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f'mapping key "{key}" already defined at line {seen[key] + 1}',
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_YAML12 = {
    "tag:yaml.org,2002:bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "tag:yaml.org,2002:int": (
        r"[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+",
        "-+0123456789",
    ),
    "tag:yaml.org,2002:float": (
        r"[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
}
_PulumiYamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in _YAML12 and tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, (_pattern, _first) in _YAML12.items():
    _PulumiYamlLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_first))


@dataclass(frozen=True)
class StackFile:
    """A stack file's config as `pulumi up` would hand it to the program."""

    path: Path
    config: dict[str, str]
    """`namespace:key` -> value as the program receives it (strings; objects as JSON)."""
    secret: frozenset[str]
    """`namespace:key`s whose value is, or contains, a `secure:` (encrypted) value."""
    written: dict[str, str]
    """`namespace:key` -> the key as written in the file, where that differs."""
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = field(default=())
    secure_leaves: frozenset[str] = frozenset()
    """Key paths of encrypted values nested in an object ('hosts[0].tls.keyMaterial')."""


class StackFileError(ConfigError):
    """The file cannot be read as a stack file at all (missing, YAML syntax)."""


def _is_secure(value: Any) -> bool:
    # config.isSecureValue: a mapping of exactly one `secure` key with a string value.
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("secure"), str)


PEM_STAND_INS = {
    "tlsKey": "keyMaterial",
    "tlsCertificate": "unmatchedCertificate",
    "keyMaterial": "keyMaterial",
    "certMaterial": "certMaterial",
    "caMaterial": "caMaterial",
}
"""Keys whose encrypted value is a PEM text, and the part of `_placeholder_pem` that
stands in for it. The load balancer's certificate stands in as one of *another* key
than its key's stand-in: the rule that the two match then breaks whenever either is
a stand-in, and the loader reports it as unverified; two stand-ins that matched
would pass the pair without a word about it."""

PASSES_WHEN_ENCRYPTED = frozenset({*SECRET_KEYS, "tlsCertificate"})
"""Top-level keys whose stand-in passes their value rules, so a problem the check
finds on one of them (set without 'loadBalancer.tls', say) is the config's, not
the stand-in's, and is reported as it is."""


def _throwaway_pair() -> tuple[str, str]:
    """A key and its certificate, fresh on each call, so that stand-ins from two
    calls never belong together by accident."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SECRET_PLACEHOLDER)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM).decode()
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem_key, pem_cert


@functools.cache
def _placeholder_pem() -> dict[str, str]:
    """Throwaway keys and certificates: what stands in for an encrypted PEM value
    (a host's TLS material, the load balancer's key and certificate), so it passes
    the PEM rules and the rest of the config can still be checked."""
    key, certificate = _throwaway_pair()
    _, unmatched = _throwaway_pair()
    return {
        "keyMaterial": key,
        "certMaterial": certificate,
        "caMaterial": certificate,
        "unmatchedCertificate": unmatched,
    }


def _unsecure(value: Any, name: str = "") -> tuple[Any, bool]:
    """Replace every `secure:` leaf by the placeholder; say whether there was one."""
    if _is_secure(value):
        if name in PEM_STAND_INS:
            return _placeholder_pem()[PEM_STAND_INS[name]], True
        return SECRET_PLACEHOLDER, True
    if isinstance(value, dict):
        pairs = {
            str(k).lower() if isinstance(k, bool) else str(k): _unsecure(v, str(k))
            for k, v in value.items()
        }
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_unsecure(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _secure_paths(value: Any, path: str) -> Iterator[str]:
    """The key paths (`ns:key[0].a.b`) of the encrypted leaves inside a value."""
    if _is_secure(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secure_paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secure_paths(item, f"{path}[{index}]")


def _as_pulumi_string(value: Any) -> str:
    """config.object.MarshalString: what the program gets for a top-level value."""
    if value is None:
        return ""  # Pulumi warns "No value for configuration key" and passes ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return str(int(value))  # Go's JSON encoding of float64 1.0 is "1"
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _full_key(written: str, project: str) -> str | None:
    """The `namespace:name` Pulumi makes of a stack-file key, or None if it refuses it.

    Pulumi's stack-file loader (sdk/go/common/workspace/loaders.go,
    stackConfigNamespacedWithProject, since v3.44.0) first prefixes a key with no
    ':' with the project name, then parses every key with config.ParseKey
    (sdk/go/common/resource/config/key.go), which accepts `<namespace>:<name>`
    and the old `<namespace>:config:<name>`, and refuses anything else.
    """
    parts = written.split(":")
    if len(parts) == 1:
        return f"{project}:{written}"
    if len(parts) == 2:
        return written
    if len(parts) == 3 and parts[1] == "config" and parts[0] and parts[2]:
        return f"{parts[0]}:{parts[2]}"
    return None


def _project_name(directory: Path) -> str:
    try:
        project = yaml.load((directory / "Pulumi.yaml").read_text(), Loader=_PulumiYamlLoader)
    except (OSError, yaml.YAMLError):
        return NAMESPACE
    name = project.get("name") if isinstance(project, dict) else None
    return name if isinstance(name, str) and name else NAMESPACE


def _yaml_error(path: Path, err: yaml.YAMLError) -> StackFileError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path.name
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return StackFileError([Problem("", f"{where}: invalid YAML: {problem}")])


def stack_files(directory: Path) -> list[str]:
    """Names of the stacks that have a stack file in `directory`."""
    return sorted(
        p.name[len("Pulumi.") : -len(".yaml")]
        for p in directory.glob("Pulumi.*.yaml")
        if p.name != "Pulumi.yaml"
    )


def read_stack_file(path: Path) -> StackFile:
    """Read `Pulumi.<stack>.yaml` as the Pulumi CLI does, without the CLI.

    Raises `StackFileError` for a missing file or a YAML syntax error. Keys the
    CLI would refuse, or ignore although they were surely meant as config, are
    returned as problems; encrypted values are replaced by `SECRET_PLACEHOLDER`.
    """
    if not path.is_file():
        stacks = stack_files(path.parent)
        known = ", ".join(f"Pulumi.{s}.yaml" for s in stacks) if stacks else "none"
        raise StackFileError(
            [
                Problem(
                    "",
                    f"{path.name}: no such stack file in {path.parent}; "
                    f"the stack files there are: {known}",
                )
            ]
        )
    try:
        document = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_PulumiYamlLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StackFileError([Problem("", f"{path.name}: a stack file is a YAML mapping")])

    project = _project_name(path.parent)
    problems: list[Problem] = []
    notes: list[str] = []
    for key in document:
        if key not in STACK_FILE_KEYS:
            problems.append(
                Problem(
                    "",
                    f"key '{key}' is at the top level of {path.name}, where Pulumi ignores it; "
                    "config keys go under `config:`",
                )
            )
    if document.get("environment"):
        notes.append(
            "the stack imports ESC environments (environment:); values they provide are not "
            "checked here"
        )
    config_section = document.get("config") or {}
    if not isinstance(config_section, dict):
        problems.append(Problem("config", "must be a mapping of `<namespace>:<key>: value`"))
        config_section = {}

    config: dict[str, str] = {}
    secret: set[str] = set()
    leaves: set[str] = set()
    written: dict[str, str] = {}
    for key, value in config_section.items():
        text = str(key)
        full = _full_key(text, project)
        if full is None:
            problems.append(
                Problem(
                    text,
                    "Pulumi cannot parse this as a configuration key: keys are "
                    f"`<namespace>:<name>`, here `{NAMESPACE}:<name>`",
                )
            )
            continue
        if full in config:
            problems.append(
                Problem(text, f"is set twice (as '{written.get(full, full)}' and as '{text}')")
            )
            continue
        plain, is_secret = _unsecure(value, full.split(":", 1)[1])
        config[full] = _as_pulumi_string(plain)
        if is_secret:
            secret.add(full)
            if not _is_secure(value):
                leaves.update(_secure_paths(value, full))
        if text != full:
            written[full] = text
        namespace = full.split(":", 1)[0]
        if namespace not in {project, NAMESPACE, *OTHER_NAMESPACES}:
            notes.append(
                f"'{text}' is in namespace '{namespace}', which this program does not read "
                f"(its keys are `{NAMESPACE}:<name>`)"
            )
    bare = [text for text in written.values() if ":" not in text]
    if bare:
        notes.insert(
            0,
            f"keys without a namespace ({', '.join(bare)}): Pulumi reads them as "
            f"'{project}:<key>' (the project name in Pulumi.yaml), and so does this check",
        )
    return StackFile(
        path=path,
        config=config,
        secret=frozenset(secret),
        written=written,
        problems=tuple(problems),
        notes=tuple(notes),
        secure_leaves=frozenset(leaves),
    )


def _as_written(problem: Problem, written: Mapping[str, str]) -> Problem:
    for full, text in written.items():
        if problem.key == full or problem.key.startswith((f"{full}.", f"{full}[")):
            return Problem(text + problem.key[len(full) :], problem.rule)
    return problem


@dataclass(frozen=True)
class CheckedStack:
    """A stack file run through the loader: settings when valid, else every problem."""

    stack: StackFile
    settings: Settings | None
    problems: tuple[Problem, ...]
    unverified: tuple[Problem, ...] = ()
    """Rules left to `pulumi up` because they compare an encrypted value (keys as written)."""


def _plain_named_keys(raw: Mapping[str, Any], stack: StackFile, namespace: str) -> list[Problem]:
    """A named key in plain text beside encrypted ones: Pulumi marks all of 'apiKeys'
    secret when one leaf is, so only the file shows it (a wholly plain one is the
    loader's)."""
    if f"{namespace}:apiKeys" not in stack.secret:
        return []
    try:
        entries = json.loads(raw.get("apiKeys", "{}"))
    except (TypeError, ValueError):
        return []
    if not isinstance(entries, dict):
        return []
    problems = []
    for name, entry in entries.items():
        where = f"{namespace}:apiKeys.{name}"
        leaf = where if not isinstance(entry, dict) else f"{where}.key"
        if leaf not in stack.secure_leaves and (not isinstance(entry, dict) or "key" in entry):
            problems.append(in_plain_text(leaf, f"--path '{leaf.split(':', 1)[1]}' <key>"))
    return problems


def check_stack_file(path: Path, namespace: str = NAMESPACE) -> CheckedStack:
    """`read_stack_file`, then the same loader `pulumi up` runs; every problem at once.

    Problems name keys as the stack file writes them. A problem with an
    encrypted value other than a known secret is reported as uncheckable, and
    a rule comparing an encrypted secret with another key as unverified.
    Raises `StackFileError` only when the file cannot be read at all.
    """
    stack = read_stack_file(path)
    raw = split_namespace(stack.config, namespace)
    secret = {key for key in raw if f"{namespace}:{key}" in stack.secret}
    problems = list(stack.problems)
    partly_secret = {leaf.split(".", 1)[0].split("[", 1)[0] for leaf in stack.secure_leaves}
    loaded = load_config(raw, secret, namespace, sealed=secret)
    for problem in loaded.problems:
        if problem.key in stack.secure_leaves:
            # The placeholder stood in for an encrypted value nested in an
            # object (a host's TLS key): its value is `pulumi up`'s to check.
            continue
        top = problem.key.split(".", 1)[0].split("[", 1)[0]
        if (
            top in stack.secret
            and top not in partly_secret
            and top.split(":", 1)[-1] not in PASSES_WHEN_ENCRYPTED
        ):
            problem = Problem(
                problem.key,
                "is encrypted (secure:), so it cannot be checked without the Pulumi CLI; "
                "`pulumi up` checks it",
            )
        problems.append(_as_written(problem, stack.written))
    problems += _plain_named_keys(raw, stack, namespace)
    unverified = tuple(_as_written(p, stack.written) for p in loaded.unverified)
    return CheckedStack(stack, None if problems else loaded.settings, tuple(problems), unverified)


def settings_from_stack_file(path: Path, namespace: str = NAMESPACE) -> Settings:
    """Validate a stack file exactly as `pulumi up` would, secrets as placeholders."""
    checked = check_stack_file(path, namespace)
    if checked.settings is None:
        raise ConfigError(checked.problems)
    return checked.settings
