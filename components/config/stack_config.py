"""Stack config in, `Settings` or one `ConfigError` listing every problem out.

Two doors lead here and both go through `load_config`:

- `pulumi up` (`program.load_settings`, through `settings_from_config`): the
  runtime hands over the config map as flat strings (objects and lists as
  JSON) plus the set of secret keys;
- `python -m components.cli.check` and `components.cli.render_config`: the stack file
  is read the way the Pulumi CLI reads it (`read_stack_file`), with no CLI, so
  encrypted values are stand-ins; a rule that compares one of them with
  another key is returned as unverified rather than run on the stand-in.

pydantic's own error text echoes the offending value, which could be a token,
so this module writes its own messages: one line per problem naming the key
as the user writes it and the rule, never the value.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from components.config.rule import Rule
from components.config.rules import cross_key_rules, disk_rules, remote_engine_rules
from components.config.settings import SKIP_CROSS_KEY, Settings

NAMESPACE = "vllm-nginx"
SECRET_KEYS = ("hfToken", "apiKey", "tlsKey", "grafanaPassword")
# Namespaces whose keys a stack of this project may legitimately hold besides its own.
OTHER_NAMESPACES = frozenset({"docker", "command", "pulumi"})
# What the check uses for an encrypted value it cannot decrypt: passes the value
# rules (safe alphabet), so only the secret's *value* goes unchecked.
SECRET_PLACEHOLDER = "encrypted-value-not-checked"
# Top-level keys of a stack file (workspace.ProjectStack in Pulumi's source).
STACK_FILE_KEYS = frozenset(
    {"config", "environment", "secretsprovider", "encryptedkey", "encryptionsalt"}
)


@dataclass(frozen=True)
class Problem:
    """One broken rule; `key` is the config key as written ('' for the file itself)."""

    key: str
    rule: str

    def __str__(self) -> str:
        return f"config key '{self.key}': {self.rule}" if self.key else self.rule


class ConfigError(ValueError):
    """Bad stack config; raised before any resource is declared. Lists every problem."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("invalid stack config:\n  " + "\n  ".join(map(str, self.problems)))


def _written_path(loc: Iterable[int | str]) -> str:
    """A pydantic error location as the user writes the key: `hosts[1].tls.keyMaterial`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-after", "function-", "tagged-union")):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _key_path(namespace: str, loc: Iterable[int | str]) -> str:
    path = _written_path(loc)
    return f"{namespace}:{path}" if path else namespace


def _nesting_hint(namespace: str, where: str, name: str) -> str:
    """`loadBalancer.port` written as one key: Pulumi stores it under that literal name.

    `where` is the object holding it ('' for the top level, 'hosts[0]' for a
    list entry): the YAML advice and the `--path` differ between the two.
    """
    head, _, rest = name.partition(".")
    below = f"`{rest.split('.')[0]}: ...` indented below it"
    if where:
        yaml_form = f"as YAML: `{head}:` in '{where}', with {below}"
    else:
        yaml_form = f"as YAML under `{namespace}:{head}:` ({below})"
    dotted = f"{where}.{name}" if where else name
    return (
        f"unknown key; nested keys are written {yaml_form}, or set with "
        f"`pulumi config set --path '{dotted}' <value>` (--path makes the dot mean nesting)"
    )


RETIRED_KEYS = {
    "shmSizeMb": "was removed: replicas share the host's IPC namespace (`--ipc host`, as in "
    "the guide), where a container's own /dev/shm size does nothing; size /dev/shm on the host",
    "loadBalancer.baseImage": "is now 'loadBalancer.image': nginx runs as published, "
    "nothing is built",
    "cpu.ompThreadsBind": "was removed: the bind follows each replica's cores, set "
    "'cpu.coresPerReplica' or 'cpu.cpuSets'",
}
"""Keys earlier versions took, with what to write instead."""


def _known_keys(annotation: Any, prefix: str = "") -> Iterator[str]:
    """Every key path a stack file may hold, a list's entries as `[]`: 'hosts[].dockerHost'.

    Descends through whatever wraps a model (`| None`, `Annotated`, `tuple[...]`),
    so the hints reach the keys of a list entry as they reach an object's.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            key = f"{prefix}.{info.alias or name}" if prefix else info.alias or name
            yield key
            yield from _known_keys(info.annotation, key)
        return
    entries = get_origin(annotation) in (tuple, list)
    for arg in get_args(annotation):
        yield from _known_keys(arg, f"{prefix}[]" if entries else prefix)


KNOWN_KEYS = frozenset(_known_keys(Settings))


def _keys_by_level(known: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Keyed by object (`KNOWN_KEYS` form, '' for the top level): a misspelt key is
    compared only with the names valid where it was written."""
    levels: dict[str, set[str]] = {}
    for key in known:
        parent, _, name = key.rpartition(".")
        levels.setdefault(parent, set()).add(name)
    return {parent: tuple(sorted(names)) for parent, names in levels.items()}


KEYS_BY_LEVEL = _keys_by_level(KNOWN_KEYS)
SUGGESTION_CUTOFF = 0.7
"""`difflib` similarity a misspelt key needs to get a suggestion. At the default 0.6,
`maxModelLen` (a vLLM argument) would be offered 'model' and a top-level `tls` 'tlsKey';
at 0.7 the slips seen in practice (`replcas`, `prot`, `bindadress`) still are."""


def _key_form(path: str) -> str:
    """`hosts[1].dockerHost` -> `hosts[].dockerHost`, the form of `KNOWN_KEYS`."""
    return re.sub(r"\[\d+\]", "[]", path)


def _loose(name: str) -> str:
    """A key with case, `_` and `-` dropped: `docker_host`, `DockerHost` and
    `dockerhost` all mean `dockerHost`, so they get the camelCase hint rather
    than a guess."""
    return name.lower().replace("_", "").replace("-", "")


def _closest_key(where: str, name: str) -> str | None:
    """The valid key in the object at `where` that `name` most likely meant, if any.

    Only that object's keys are candidates: a key valid elsewhere would be a
    different mistake (a misplaced key), and a suggestion must be a key the user
    can write right there.
    """
    candidates = {_loose(key): key for key in KEYS_BY_LEVEL.get(_key_form(where), ())}
    loose = _loose(name)
    if loose in candidates:
        return candidates[loose]
    close = difflib.get_close_matches(loose, candidates, n=1, cutoff=SUGGESTION_CUTOFF)
    return candidates[close[0]] if close else None


def _rule(error: Mapping[str, Any], namespace: str) -> str:
    if error["type"] == "extra_forbidden":
        name = str(error["loc"][-1]) if error["loc"] else ""
        where = _written_path(error["loc"][:-1])
        if "." in name:
            return _nesting_hint(namespace, where, name)
        written = f"{where}.{name}" if where else name
        if _key_form(written) in RETIRED_KEYS:
            return f"unknown key: it {RETIRED_KEYS[_key_form(written)]}"
        closest = _closest_key(where, name)
        if closest is None:
            return "unknown key (a typo?); see the config reference in README.md"
        meant = f"{where}.{closest}" if where else closest
        if _loose(closest) == _loose(name):
            return f"unknown key; keys are camelCase: did you mean '{meant}'?"
        return f"unknown key (a typo?): did you mean '{meant}'?"
    if error["type"] == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_problems(err: ValidationError, namespace: str = NAMESPACE) -> list[Problem]:
    return [
        Problem(_key_path(namespace, e["loc"]), _rule(e, namespace))
        for e in err.errors(include_input=False, include_url=False)
    ]


def format_validation_error(err: ValidationError, namespace: str = NAMESPACE) -> str:
    return str(ConfigError(validation_problems(err, namespace)))


def _decode(value: Any) -> Any:
    """Pulumi passes objects and lists as JSON text; scalars stay strings."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"is not valid JSON/YAML structure ({err.msg})") from None
    return value


def _validate_by_alias(data: Mapping[str, Any]) -> Settings:
    # By alias only: a snake_case spelling in a stack file is an unknown key.
    return Settings.model_validate(
        data, by_alias=True, by_name=False, context={SKIP_CROSS_KEY: True}
    )


@dataclass(frozen=True)
class LoadedConfig:
    """The loader's verdict: settings when every rule holds, else every problem."""

    settings: Settings | None
    problems: tuple[Problem, ...]
    unverified: tuple[Problem, ...] = ()
    """Rules that compare a sealed secret's value: not run on its stand-in (the
    rule text says what could not be verified); never a reason to fail."""


def _unverified(rule: Rule, namespace: str, sealed: Set[str]) -> Problem:
    """The note for a rule not run on stand-ins, saying which of its keys are encrypted."""
    others = " and ".join(f"'{key}'" for key in sorted((rule.involves & sealed) - {rule.key}))
    if rule.key not in sealed:
        why = f"is compared with the encrypted (secure:) {others}"
    elif others:
        why = f"is encrypted (secure:), as is {others}"
    else:
        why = "is encrypted (secure:)"
    them = "them" if rule.key in sealed and others else "it"
    return Problem(
        f"{namespace}:{rule.key}",
        f"{why}, so {rule.secret_check} cannot be verified offline; "
        f"`pulumi up` decrypts {them} and checks",
    )


def _cross_key_problems(
    data: Mapping[str, Any], invalid: Set[str], namespace: str, sealed: Set[str]
) -> tuple[list[Problem], list[Problem]]:
    """The rules between keys, checked on every key that is valid by itself.

    Invalid keys fall back to their defaults for this pass, and a rule that
    involves one of them is not reported (it would speak of the default).
    A rule comparing values of which one is sealed is returned apart, as
    unverified: the stand-ins for the load balancer's PEM key and certificate
    are throwaway ones, never the user's and never each other's, so the rule
    always breaks on them and its verdict says nothing about the real values.
    """
    rest = {k: v for k, v in data.items() if k not in invalid}
    rest.setdefault("model", "model-not-checked-here")
    try:
        settings = _validate_by_alias(rest)
    except ValidationError:
        return [], []
    problems: list[Problem] = []
    unverified: list[Problem] = []
    for rule in cross_key_rules(settings):
        if rule.involves & invalid:
            continue
        if rule.secret_check and rule.involves & sealed:
            unverified.append(_unverified(rule, namespace, sealed))
        else:
            problems.append(Problem(f"{namespace}:{rule.key}", rule.rule))
    return problems, unverified


def _validate(
    raw: Mapping[str, Any], namespace: str, sealed: Set[str] = frozenset()
) -> LoadedConfig:
    problems: list[Problem] = []
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = _decode(value)
        except ValueError as err:
            problems.append(Problem(f"{namespace}:{key}", str(err)))
    invalid = set(raw) - set(decoded)
    settings: Settings | None = None
    try:
        settings = _validate_by_alias(decoded)
    except ValidationError as err:
        invalid |= {str(e["loc"][0]) for e in err.errors() if e["loc"]}
        problems += validation_problems(err, namespace)
    cross_key, unverified = _cross_key_problems(decoded, invalid, namespace, sealed)
    problems += cross_key
    return LoadedConfig(settings if not problems else None, tuple(problems), tuple(unverified))


def deployment_problems(
    settings: Settings,
    *,
    docker_host: str | None,
    project_dir: Path,
    namespace: str = NAMESPACE,
) -> list[Problem]:
    """What only holds for one deployment: the engine it targets, the files it builds."""
    rules = [*remote_engine_rules(settings, docker_host), *disk_rules(settings, project_dir)]
    return [Problem(f"{namespace}:{rule.key}", rule.rule) for rule in rules]


def _plain_secrets(raw: Mapping[str, Any], secret: Set[str], namespace: str) -> list[Problem]:
    """A token typed in plain text would sit unencrypted in the stack file."""
    return [
        Problem(
            f"{namespace}:{key}",
            f"must be set with `pulumi config set --secret {key} ...` (it is stored in plain text)",
        )
        for key in SECRET_KEYS
        if key in raw and key not in secret
    ]


def _plain_host_keys(raw: Mapping[str, Any], secret: Set[str], namespace: str) -> list[Problem]:
    """A host's TLS key in plain text: Pulumi marks 'hosts' secret when any leaf is."""
    if "hosts" not in raw or "hosts" in secret:
        return []
    try:
        hosts = _decode(raw["hosts"])
    except ValueError:
        return []
    if not isinstance(hosts, list):
        return []
    return [
        Problem(
            f"{namespace}:hosts[{i}].tls.keyMaterial",
            "must be set with `pulumi config set --secret --path "
            f"'hosts[{i}].tls.keyMaterial' ...` (it is stored in plain text)",
        )
        for i, host in enumerate(hosts)
        if isinstance(host, dict)
        and isinstance(host.get("tls"), dict)
        and host["tls"].get("keyMaterial") is not None
    ]


def load_config(
    raw: Mapping[str, Any],
    secret: Set[str],
    namespace: str = NAMESPACE,
    *,
    sealed: Set[str] = frozenset(),
) -> LoadedConfig:
    """The one loader: {key without namespace: value as Pulumi passes it} + secret keys.

    Finds every problem at once: secrets given in plain text, values that are
    not valid JSON structures, and every settings rule. `sealed` names the keys
    whose values are stand-ins for encrypted ones (a check without the CLI);
    `pulumi up` has the values and seals nothing, so it runs every rule.
    """
    problems = _plain_secrets(raw, secret, namespace) + _plain_host_keys(raw, secret, namespace)
    loaded = _validate(raw, namespace, sealed)
    problems += loaded.problems
    return LoadedConfig(
        loaded.settings if not problems else None, tuple(problems), loaded.unverified
    )


def settings_from_config(
    raw: Mapping[str, Any], secret: Set[str], namespace: str = NAMESPACE
) -> Settings:
    """`load_config` with real values; raises `ConfigError` naming every problem."""
    loaded = load_config(raw, secret, namespace)
    if loaded.problems or loaded.settings is None:
        raise ConfigError(loaded.problems)
    return loaded.settings


def parse_settings(raw: Mapping[str, Any], namespace: str = NAMESPACE) -> Settings:
    """Validate config given as {key without namespace: value}, secrecy not checked."""
    loaded = _validate(raw, namespace)
    if loaded.problems or loaded.settings is None:
        raise ConfigError(loaded.problems)
    return loaded.settings


def split_namespace(config: Mapping[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    prefix = f"{namespace}:"
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def require_secret(raw: Mapping[str, Any], secret: Set[str], namespace: str = NAMESPACE) -> None:
    problems = _plain_secrets(raw, secret, namespace)
    if problems:
        raise ConfigError(problems)


# --- Reading a stack file as the Pulumi CLI does -------------------------------------------


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
    unverified = tuple(_as_written(p, stack.written) for p in loaded.unverified)
    return CheckedStack(stack, None if problems else loaded.settings, tuple(problems), unverified)


def settings_from_stack_file(path: Path, namespace: str = NAMESPACE) -> Settings:
    """Validate a stack file exactly as `pulumi up` would, secrets as placeholders."""
    checked = check_stack_file(path, namespace)
    if checked.settings is None:
        raise ConfigError(checked.problems)
    return checked.settings
