"""What one config value may be, each rule in the words the user reads.

Every string that lands in the nginx config, a command line or an environment variable
is held to a safe alphabet, and names follow the grammar of what reads them (Docker's
image references, DNS labels, cpusets, `--lora-modules`), so a bad value fails before
anything is declared. No rule's message contains the value: it could be a token.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr

# No whitespace, quotes, backslashes, `;`, `{`, `}`, `$`, backticks or control
# characters: nothing that could end a directive, split an argument or expand.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:/@%+=,~|\-\[\]*]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NAME_PREFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")

# Docker's image reference grammar (distribution's reference package, as the
# daemon parses `docker run NAME`): [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_REF = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)

SAFE_TOKEN_RULE = (
    "must be non-empty and contain no spaces, quotes, newlines, backslashes, "
    "';', '{', '}', '$' or backticks"
)
RESERVED_NETWORKS = frozenset({"bridge", "host", "none", "default"})
"""Docker's predefined networks (and the `default` network mode): it refuses to create them."""

SYSTEM_DIRECTORIES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/run",
)


def matching(pattern: re.Pattern[str], rule: str) -> Callable[[str], str]:
    """A validator that accepts a whole-string match of `pattern`, else raises `rule`."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(rule)
        return value

    return check


# Anything that could inject into nginx config, argv or env is refused.
safe_token = matching(_SAFE_TOKEN, SAFE_TOKEN_RULE)
# Container, network and volume names double as DNS names on the network.
dns_label = matching(
    _DNS_LABEL,
    "must be a DNS-safe name: 1-63 lowercase letters, digits or '-', "
    "starting and ending with a letter or digit",
)
name_prefix = matching(
    _NAME_PREFIX,
    "must be the start of a DNS-safe name: lowercase letters, digits or '-', "
    "starting with a letter or digit (the replica number follows it)",
)
header_name = matching(_HEADER_NAME, "must be an HTTP header name: letters, digits and '-'")
env_name = matching(_ENV_NAME, "must be an environment variable name: letters, digits and '_'")
build_arg_name = matching(
    _ENV_NAME, "must be a build-arg name: letters, digits and '_', not starting with a digit"
)


def image_ref(value: str) -> str:
    """A reference Docker accepts: lowercase path, at most one tag, an optional digest."""
    rule = (
        "must be a docker image reference such as vllm/vllm-openai:v0.33.0 "
        "(lowercase name, one non-empty tag of letters, digits, '_', '.', '-', "
        "or @sha256:<digest>)"
    )
    match = _IMAGE_REF.fullmatch(value)
    if match is None:
        raise ValueError(rule)
    name = value.split("@", 1)[0]
    if match["tag"]:
        name = name[: -len(match["tag"]) - 1]
    if len(name) > 255:
        raise ValueError("must be a docker image reference with a name of at most 255 characters")
    return value


def network_name(value: str) -> str:
    dns_label(value)
    if value in RESERVED_NETWORKS:
        raise ValueError(
            "must not be one of Docker's own networks (bridge, host, none, default): "
            "the deployment creates and removes its network"
        )
    return value


def host_name(value: str) -> str:
    """A host for an upstream: an IP address or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be an IP address or a DNS host name")
    return value


def ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as err:
        raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from err
    return value


def ipv4_interface(value: str) -> str:
    """A floating address with its prefix, as keepalived's `virtual_ipaddress` and `ip addr`
    take it: a host of its network, so neither the network's own address nor its broadcast."""
    example = "such as 10.0.0.100/24"
    if "/" not in value:
        raise ValueError(f"must be an IPv4 address with its prefix length, {example}")
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as err:
        raise ValueError(f"must be an IPv4 address with its prefix length, {example}") from err
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"is the network's own or broadcast address, not a host's: {example}")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise ValueError(f"must be an address other machines reach, {example}")
    return value


_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def interface_name(value: str) -> str:
    """A Linux network interface name: at most 15 characters (IFNAMSIZ), no '/' or space."""
    if not _INTERFACE.fullmatch(value) or value in {".", ".."}:
        raise ValueError(
            "must be a network interface name such as eth0: up to 15 letters, digits, '_', '-', '.'"
        )
    return value


def url_path(value: str) -> str:
    if not _URL_PATH.fullmatch(value) or "//" in value or ".." in value:
        raise ValueError("must be a URL path such as /metrics: '/', letters, digits, '.', '_', '-'")
    return value


def host_path(value: str) -> str:
    """A directory to bind-mount as the model cache, not one the host itself needs."""
    safe_token(value)
    if not value.startswith(("/", "~")):
        raise ValueError("must be an absolute path or start with '~'")
    if ":" in value:
        raise ValueError("must not contain ':' (docker reads it as the mount separator)")
    parts = value.split("/")
    if ".." in parts or "." in parts:
        raise ValueError("must not contain '.' or '..' path components")
    normal = "/" + "/".join(p for p in parts[1:] if p) if value.startswith("/") else value
    if normal == "/" or any(
        normal == system or normal.startswith(system + "/") for system in SYSTEM_DIRECTORIES
    ):
        raise ValueError(
            "must not be '/' or a system directory (/etc, /usr, /var/lib/docker, ...): "
            "the replicas write the model cache into it"
        )
    return value


# The Hub's repo id grammar, as huggingface_hub's `validate_repo_id` checks it before
# any download (huggingface_hub 2.4.0, utils/_validators.py:28-40 and 132-149):
# at most one '/', each part 1-96 ASCII letters, digits, '_', '.', '-' that
# starts and ends with a letter, digit or '_', no '--' or '..', no '.git' ending.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_REPO_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")
MODEL_RULE = (
    "must be a Hugging Face repo id such as Qwen/Qwen2.5-0.5B-Instruct (at most one '/'; "
    "letters, digits, '_', '.', '-'; each part 1-96 characters starting and ending with a "
    "letter, digit or '_'; no '--' or '..'; not ending in '.git'), or an absolute path "
    "inside the container such as /models/my-model"
)


def _not_an_option(value: str, command: str, more: str = "") -> None:
    """A safe token that `command` does not read as one of its options."""
    safe_token(value)
    if value.startswith("-"):
        raise ValueError(f"must not start with '-': `{command}` would read it as an option{more}")


def model_id(value: str) -> str:
    """What `vllm serve` takes as its model: a Hub repo id, or a path in its container.

    The model is the first argument after `vllm serve`, so a value starting
    with '-' would be read as an option; and the download step hands a Hub id
    to `snapshot_download`, which refuses what the Hub's grammar refuses, only
    after the image pull. Both are caught here instead.
    """
    _not_an_option(value, "vllm serve", "; " + MODEL_RULE)
    if value.startswith("/"):
        return value
    if (
        not _HUB_REPO_ID.fullmatch(value)
        or "--" in value
        or ".." in value
        or value.endswith(".git")
    ):
        raise ValueError(MODEL_RULE)
    return value


def served_name(value: str) -> str:
    """A name clients send as `model`; `vllm serve --served-model-name` reads it."""
    _not_an_option(value, "vllm serve --served-model-name")
    return value


_LORA_ENTRY = (
    "`vllm serve --lora-modules` reads an entry with ',' as JSON, which 'name=path' "
    "is not, and refuses to start"
)


def lora_name(value: str) -> str:
    """An adapter's name, written as `name=path` into `--lora-modules` (docs/vllm.md)."""
    _not_an_option(value, "vllm serve --lora-modules")
    if "=" in value:
        raise ValueError(
            "must not contain '=': `vllm serve --lora-modules name=path` splits at the "
            "first '=', so the adapter would get another name and path"
        )
    if "," in value:
        raise ValueError("must not contain ',': " + _LORA_ENTRY)
    return value


def lora_path(value: str) -> str:
    """An adapter's Hub id or path, the `path` of `name=path` (an '=' in it is kept)."""
    model_id(value)
    if "," in value:
        raise ValueError("must not contain ',': " + _LORA_ENTRY)
    return value


def local_path(value: str) -> str:
    """A file or directory on the machine that runs `pulumi up` (read, never mounted)."""
    safe_token(value)
    if not value.startswith(("/", "~")):
        raise ValueError("must be an absolute path or start with '~'")
    return value


def cpu_set(value: str) -> str:
    """Docker's `--cpuset-cpus` syntax: ids and ranges, comma separated."""
    try:
        cores = parse_cpu_set(value)
    except ValueError as err:
        raise ValueError(
            "must be a list of CPU ids and ranges such as 0-3 or 0,2,4-7 (ascending ranges)"
        ) from err
    if len(set(cores)) != len(cores):
        raise ValueError("must name each CPU once")
    return value


def parse_cpu_set(value: str) -> tuple[int, ...]:
    """`0-2,5` -> (0, 1, 2, 5); raises ValueError on anything else."""
    cores: list[int] = []
    for part in value.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(part)
        first, last = int(low), int(high) if sep else int(low)
        if last < first or last > 4095:
            raise ValueError(part)
        cores.extend(range(first, last + 1))
    return tuple(cores)


def format_cpu_set(cores: Sequence[int]) -> str:
    """(0, 1, 2, 5) -> `0-2,5`: the compact form docker and vLLM both read."""
    parts: list[str] = []
    ordered = sorted(cores)
    start = prev = ordered[0]
    for core in [*ordered[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(parts)


def safe_secret(value: SecretStr) -> SecretStr:
    """Same alphabet as any other value; the error never shows the value."""
    safe_token(value.get_secret_value())
    return value


def _pem_certificate(value: SecretStr) -> SecretStr:
    from cryptography import x509

    text = value.get_secret_value()
    try:
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        certificates = []
    if "-----BEGIN CERTIFICATE-----" not in text or not certificates:
        raise ValueError(
            "must be a PEM certificate (-----BEGIN CERTIFICATE----- ...), the server's first "
            "and any intermediates after it"
        )
    return value


def _pem_private_key(value: SecretStr) -> SecretStr:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(value.get_secret_value().encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError(
            "must be an unencrypted PEM private key (-----BEGIN PRIVATE KEY----- ...): "
            "nginx starts without anyone to type a passphrase"
        ) from None
    return value


def key_matches_certificate(key: SecretStr, certificate: SecretStr) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificates(certificate.get_secret_value().encode())[0]
    private = serialization.load_pem_private_key(key.get_secret_value().encode(), password=None)
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        cert.public_key().public_bytes(encoding, fmt)
        == private.public_key().public_bytes(encoding, fmt)
    )


def _no_bool(value: Any) -> Any:
    """YAML `true` is not the number 1 (pydantic's lax mode would take it as one)."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    return value


SafeSecret = Annotated[SecretStr, AfterValidator(safe_secret)]
PemCertificate = Annotated[SecretStr, AfterValidator(_pem_certificate)]
PemPrivateKey = Annotated[SecretStr, AfterValidator(_pem_private_key)]
SafeToken = Annotated[str, AfterValidator(safe_token)]
ModelId = Annotated[str, AfterValidator(model_id)]
ServedName = Annotated[str, AfterValidator(served_name)]
LoraName = Annotated[str, AfterValidator(lora_name)]
LoraPath = Annotated[str, AfterValidator(lora_path)]
DnsLabel = Annotated[str, AfterValidator(dns_label)]
NamePrefix = Annotated[str, AfterValidator(name_prefix)]
NetworkName = Annotated[str, AfterValidator(network_name)]
HostName = Annotated[str, AfterValidator(host_name)]
HostPath = Annotated[str, AfterValidator(host_path)]
LocalPath = Annotated[str, AfterValidator(local_path)]
IpAddress = Annotated[str, AfterValidator(ip_address)]
Ipv4Interface = Annotated[str, AfterValidator(ipv4_interface)]
InterfaceName = Annotated[str, AfterValidator(interface_name)]
HeaderName = Annotated[str, AfterValidator(header_name)]
EnvName = Annotated[str, AfterValidator(env_name)]
BuildArgName = Annotated[str, AfterValidator(build_arg_name)]
UrlPath = Annotated[str, AfterValidator(url_path)]
ImageRef = Annotated[str, AfterValidator(image_ref)]
CpuSet = Annotated[str, AfterValidator(cpu_set)]
Int = Annotated[int, BeforeValidator(_no_bool)]
"""A whole number; numeric strings pass (Pulumi hands top-level scalars over as text)."""
Port = Annotated[Int, Field(ge=1, le=65535)]
GpuId = Annotated[int, Field(ge=0, le=1023, strict=True)]
DAY = 86400
