"""A real single-node Kubernetes for the tests, started and stopped by them.

What is real: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kubelet and kube-proxy (built from Go modules by `scripts/k8s-toolchain.sh`),
containerd and runc (Debian's), pod networking with Debian's CNI plugins
(bridge, host-local, loopback, portmap) and Services through kube-proxy's
iptables rules. Pods run the images the tests already make, imported into
containerd (no registry). Only the GPUs are not real: our device plugin
(`tests/support/k8s/fake-gpu-plugin`) advertises fake `nvidia.com/gpu` devices
through the kubelet's device-plugin API, so the scheduler and kubelet count and
hand them out as on a cluster with NVIDIA's plugin. No cluster DNS
(docs/testing.md says why).

Isolation: every component runs in the network namespace `vllm-nginx-k8s`
(entered with `nsenter --net`, which keeps the machine's /sys and its cgroup
mounts, as `netns_hosts.py` explains), reached from the machine over a veth
pair at NODE_ADDRESS; containerd is our own instance (its own root, state,
socket and runc root), never Docker's. Pod cgroups live under
`/vllm-nginx-k8s` in each cgroup hierarchy. `stop()` removes everything:
pods, processes, mounts, network namespaces, cgroups and directories.
One fixed path is the kubelet's: device plugins register at
/var/lib/kubelet/device-plugins/kubelet.sock whatever its --root-dir
(pkg/kubelet/cm/devicemanager/manager.go:135 at v1.37.2); it is removed again
when this cluster created it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.docker_engine import REPO_ROOT, unavailable
from tests.support.processes import stop_group

NETNS = "vllm-nginx-k8s"
STATE_DIR = Path("/var/lib/vllm-nginx-k8s")
RUN_DIR = Path("/run/vllm-nginx-k8s")
CGROUP_ROOT = "vllm-nginx-k8s"
HOST_LINK, NODE_LINK = "vnk8s-m", "vnk8s-n"
# From 198.18.0.0/15 (RFC 2544, for tests), away from netns_hosts.py's 198.18.i.0/24.
HOST_ADDRESS, NODE_ADDRESS = "198.19.250.1", "198.19.250.2"
POD_CIDR = "10.250.0.0/24"
SERVICE_CIDR = "10.251.0.0/24"
KUBERNETES_SERVICE_IP = "10.251.0.1"
NODE_NAME = "vllm-nginx-k8s"
API_PORT = 6443
GPUS = 4
PAUSE_IMAGE = "vllm-nginx.invalid/pause:1"
"""The sandbox image, made here from our pause program; `.invalid` can never be pulled."""
KUBELET_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_PLUGIN_FILES = ("kubelet.sock", "kubelet_internal_checkpoint", "vllm-nginx-fake-gpu.sock")
"""What the kubelet (its socket, its device manager's checkpoint) and our plugin put there."""
TOOLCHAIN_SCRIPT = REPO_ROOT / "scripts" / "k8s-toolchain.sh"
REQUIRED_TOOLS = (
    "ip",
    "nsenter",
    "iptables",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
)
CNI_BIN = Path("/usr/lib/cni")
LOCK = Path("/tmp/vllm-nginx-k8s.lock")
CTR = ("ctr", "--address", str(RUN_DIR / "containerd.sock"), "-n", "k8s.io")


def toolchain() -> dict[str, Path]:
    """`kubernetes`, `plugins` and `helpers` dirs of the built toolchain; fail in CI,
    skip elsewhere, when it is not built (the tests never build it: it takes long)."""
    result = subprocess.run(
        ["bash", str(TOOLCHAIN_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        unavailable(
            "the Kubernetes toolchain is not built: run `bash scripts/k8s-toolchain.sh` "
            f"({result.stderr.strip()})"
        )
    return {
        name: Path(path)
        for name, _, path in (line.partition("=") for line in result.stdout.splitlines())
        if path
    }


def require_cluster_support() -> None:
    """Fail in CI, skip elsewhere, when this machine cannot run the cluster."""
    problem = None
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problem = "the test cluster needs root (network namespace, containerd, kubelet)"
    elif missing:
        problem = (
            f"the test cluster needs {', '.join(missing)} (Debian: containerd, runc, iproute2)"
        )
    elif not (CNI_BIN / "bridge").exists():
        problem = f"no CNI plugins in {CNI_BIN}: apt-get install containernetworking-plugins"
    if problem:
        unavailable(problem)


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")
    return result


def _inside(*argv: str) -> tuple[str, ...]:
    return ("nsenter", f"--net=/run/netns/{NETNS}", *argv)


# --- certificates -------------------------------------------------------------------


@dataclass
class _Pki:
    """A cluster CA and the certificates signed by it, as PEM files in `directory`."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vllm-nginx-k8s-ca")])
        self.cert = (
            self._builder(name, self.key.public_key(), name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self._write("ca", self.key, self.cert)

    @staticmethod
    def _builder(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def _write(self, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (self.directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (self.directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        common_name: str,
        organization: str | None = None,
        hosts: Sequence[str] = (),
        server: bool = False,
    ) -> None:
        """`name.crt`/`name.key`: a client certificate (user CN, group O) or, with
        `server`, a serving one for `hosts` (IP addresses or DNS names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else None
        builder = (
            self._builder(x509.Name(attributes), key.public_key(), self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([usage or x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        self._write(name, key, builder.sign(self.key, hashes.SHA256()))

    def kubeconfig(self, name: str, server: str) -> Path:
        """A kubeconfig for `name`'s client certificate (certificates inline)."""

        def inline(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": NETNS,
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": inline(self.directory / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {
                        "client-certificate-data": inline(self.directory / f"{name}.crt"),
                        "client-key-data": inline(self.directory / f"{name}.key"),
                    },
                }
            ],
            "contexts": [{"name": NETNS, "context": {"cluster": NETNS, "user": name}}],
            "current-context": NETNS,
        }
        path = self.directory.parent / f"{name}.kubeconfig"
        path.write_text(json.dumps(config, indent=1))
        return path


def service_account_keys(directory: Path) -> None:
    """`sa.key`/`sa.pub`: the key the API server signs service-account tokens with."""
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "sa.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# --- the sandbox image ----------------------------------------------------------------


def pause_image_archive(pause_binary: Path, name: str = PAUSE_IMAGE) -> bytes:
    """An OCI image archive holding only `/pause`, for `ctr images import`.

    Written by hand (a layer, a config, a manifest, an index) so no registry and
    no image build is needed; the layout is the OCI image spec's (image-layout.md).
    """

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        info = tarfile.TarInfo("pause")
        data = pause_binary.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        layer.addfile(info, io.BytesIO(data))
    layer_digest, layer_bytes = blob(layer_buffer.getvalue())
    config_digest, config_bytes = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }
        ).encode()
    )
    manifest_digest, manifest_bytes = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": len(layer_bytes),
                    }
                ],
            }
        ).encode()
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name},
            }
        ],
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:

        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index).encode())
        for digest, data in (
            (layer_digest, layer_bytes),
            (config_digest, config_bytes),
            (manifest_digest, manifest_bytes),
        ):
            add(f"blobs/sha256/{digest.split(':')[1]}", data)
    return archive.getvalue()


# --- configuration files --------------------------------------------------------------


def containerd_config() -> str:
    """Our containerd: own root, state, socket, runc root and CNI config; the pod
    network namespaces under its state dir, not /run/netns."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{STATE_DIR / "containerd"}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{RUN_DIR / "containerd.sock"}"

[ttrpc]
  address = "{RUN_DIR / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE_DIR / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE here (CapEff lacks bit 24), so runc cannot lower a sandbox's
  # oom_score_adj to the kubelet's -998 ("failed to update /proc/self/oom_score_adj:
  # Permission denied"): keep it at containerd's own, as kind does unprivileged.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{STATE_DIR / "cni" / "net.d"}"
  max_conf_num = 1

[{cri}.containerd]
  default_runtime_name = "runc"
  snapshotter = "overlayfs"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{RUN_DIR / "runc"}"
  SystemdCgroup = false
"""


def cni_config() -> str:
    """A bridge in the cluster's namespace, addresses from POD_CIDR (the bridge as the pods'
    default gateway, so ClusterIPs are reachable from pods), portmap for hostPort."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": NETNS,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "vnk8s0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        # The bridge is the pods' gateway: without a default route a
                        # pod reaches other pods but no Service's ClusterIP.
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(STATE_DIR / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=1,
    )


def kubelet_config(pki: Path) -> str:
    """KubeletConfiguration: cgroupfs under CGROUP_ROOT, cgroup v1 allowed (this
    machine has no cgroup v2 hierarchy with controllers), no swap check, no image GC
    and no eviction (a shared test machine's disk must not evict the test's pods)."""
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_ADDRESS,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{RUN_DIR / 'containerd.sock'}",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
            },
            "podCIDR": POD_CIDR,
            "resolvConf": "",
            "serializeImagePulls": False,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            "nodeStatusReportFrequency": "10s",
        },
        indent=1,
    )


def kube_proxy_config(kubeconfig: Path) -> str:
    """iptables mode in the cluster's namespace; no conntrack sysctls (global ones
    cannot be set from a network namespace)."""
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_ADDRESS,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [f"{NODE_ADDRESS}/32"],
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        },
        indent=1,
    )


# --- the cluster ----------------------------------------------------------------------


class ClusterFailed(RuntimeError):
    """The cluster did not come up; the message names the step and the logs' tails."""


@dataclass
class Cluster:
    """A running single-node cluster; `kubeconfig` is the admin's, for the machine."""

    bins: dict[str, Path]
    kubeconfig: Path = STATE_DIR / "admin.kubeconfig"
    node_address: str = NODE_ADDRESS
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)
    _created_kubelet_dir: bool = False

    @property
    def logs(self) -> Path:
        return STATE_DIR / "logs"

    # -- helpers
    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [str(self.bins["kubernetes"] / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def ctr(self, *args: str, stdin: bytes | None = None, timeout: float = 300) -> str:
        result = subprocess.run(
            [*CTR, *args],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _start(self, name: str, *argv: str | Path) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self._logs[name] = log
        self.processes[name] = subprocess.Popen(
            _inside(*(str(a) for a in argv)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait(self, what: str, check: Any, timeout: float, names: Sequence[str]) -> None:
        """Poll `check()` until true; fail with the named components' log tails."""
        started = time.monotonic()
        error: object = None
        while time.monotonic() - started < timeout:
            for name in names:
                process = self.processes.get(name)
                if process is not None and process.poll() is not None:
                    raise ClusterFailed(
                        f"{name} exited {process.returncode} while waiting for {what}:\n"
                        f"{self.tail(name)}"
                    )
            try:
                if check():
                    self.timings[what] = time.monotonic() - started
                    return
            except Exception as exc:  # retried until the deadline
                error = exc
            time.sleep(0.5)
        tails = "\n".join(f"--- {name}:\n{self.tail(name)}" for name in names)
        raise ClusterFailed(f"no {what} after {timeout:.0f}s (last error: {error})\n{tails}")

    def _api(self) -> httpx.Client:
        pki = STATE_DIR / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return httpx.Client(
            base_url=f"https://{NODE_ADDRESS}:{API_PORT}", verify=context, timeout=5
        )

    # -- bring-up
    def start(self, images: Sequence[str] = ()) -> None:
        """Everything from nothing, in order, each step waited for; `images` (Docker
        tags) are imported into containerd."""
        started = time.monotonic()
        kube = self.bins["kubernetes"]
        helpers = self.bins["helpers"]
        for directory in (STATE_DIR, RUN_DIR, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self._network()
        pki_dir = STATE_DIR / "pki"
        pki = _Pki(pki_dir)
        api_hosts = [NODE_ADDRESS, KUBERNETES_SERVICE_IP, "127.0.0.1", "localhost", "kubernetes"]
        api_hosts += [
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        pki.issue("apiserver", "kube-apiserver", hosts=api_hosts, server=True)
        pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        pki.issue("admin", "vllm-nginx-admin", "system:masters")
        pki.issue("controller-manager", "system:kube-controller-manager")
        pki.issue("scheduler", "system:kube-scheduler")
        pki.issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        pki.issue("kube-proxy", "system:kube-proxy")
        service_account_keys(pki_dir)
        server = f"https://{NODE_ADDRESS}:{API_PORT}"
        configs = {
            name: pki.kubeconfig(name, server)
            for name in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy")
        }
        self.timings["certificates"] = time.monotonic() - started

        etcd_dir = STATE_DIR / "etcd"
        self._start(
            "etcd",
            kube / "etcd",
            "--name",
            NODE_NAME,
            "--data-dir",
            etcd_dir,
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            f"{NODE_NAME}=http://127.0.0.1:2380",
            "--log-level",
            "warn",
        )
        self._start(
            "kube-apiserver",
            kube / "kube-apiserver",
            "--etcd-servers=http://127.0.0.1:2379",
            f"--bind-address={NODE_ADDRESS}",
            f"--advertise-address={NODE_ADDRESS}",
            f"--secure-port={API_PORT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # The node's name is not in any DNS here; its InternalIP is (logs, exec).
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            f"--cert-dir={pki_dir / 'apiserver-generated'}",
        )

        def api_ready() -> bool:
            with self._api() as client:
                return client.get("/readyz").status_code == 200

        self._wait("API server ready", api_ready, 120, ["etcd", "kube-apiserver"])
        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
        cm = configs["controller-manager"]
        self._start(
            "kube-controller-manager",
            kube / "kube-controller-manager",
            f"--kubeconfig={cm}",
            f"--authentication-kubeconfig={cm}",
            f"--authorization-kubeconfig={cm}",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            *common,
        )
        sched = configs["scheduler"]
        self._start(
            "kube-scheduler",
            kube / "kube-scheduler",
            f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}",
            f"--authorization-kubeconfig={sched}",
            *common,
        )

        (STATE_DIR / "containerd.toml").write_text(containerd_config())
        net_d = STATE_DIR / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-vllm-nginx-k8s.conflist").write_text(cni_config())
        self._start("containerd", "containerd", "--config", STATE_DIR / "containerd.toml")
        self._wait(
            "containerd socket",
            lambda: bool(self.ctr("version", timeout=10)),
            60,
            ["containerd"],
        )
        step = time.monotonic()
        self.ctr("images", "import", "-", stdin=pause_image_archive(helpers / "pause"))
        for tag in images:
            self._import_from_docker(tag)
        self.timings["images imported"] = time.monotonic() - step

        for controller in _cgroup_controllers():
            path = Path("/sys/fs/cgroup") / controller / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            if controller == "cpuset":  # an empty cpuset takes no tasks: inherit the root's
                for entry in ("cpuset.cpus", "cpuset.mems"):
                    (path / entry).write_text((path.parent / entry).read_text())
        self._created_kubelet_dir = not Path("/var/lib/kubelet").exists()
        KUBELET_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "kubelet.json").write_text(kubelet_config(pki_dir))
        self._start(
            "kubelet",
            kube / "kubelet",
            f"--config={STATE_DIR / 'kubelet.json'}",
            f"--kubeconfig={configs['kubelet']}",
            f"--root-dir={STATE_DIR / 'kubelet'}",
            f"--cert-dir={STATE_DIR / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_ADDRESS}",
        )
        self._start("fake-gpu-plugin", helpers / "fake-gpu-plugin", "--count", str(GPUS))
        self._start(
            "kube-proxy",
            kube / "kube-proxy",
            f"--config={self._write('kube-proxy.json', kube_proxy_config(configs['kube-proxy']))}",
        )
        every = list(self.processes)

        def node_ready() -> bool:
            node = self.get("node", NODE_NAME)
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
            )
            gpus = node["status"].get("allocatable", {}).get("nvidia.com/gpu")
            return ready and gpus == str(GPUS)

        self._wait(f"node Ready with {GPUS} nvidia.com/gpu", node_ready, 180, every)
        self._wait(
            "default service account",
            lambda: bool(self.kubectl("get", "serviceaccount", "default", check=False)),
            60,
            every,
        )
        self.timings["total"] = time.monotonic() - started

    def _import_from_docker(self, tag: str) -> None:
        """`docker save TAG | ctr images import -`: no registry, the archive travels."""
        saver = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        importer = subprocess.run(
            [*CTR, "images", "import", "-"],
            stdin=saver.stdout,
            capture_output=True,
            timeout=600,
            check=False,
        )
        saver.wait(timeout=60)
        if importer.returncode != 0 or saver.returncode != 0:
            raise ClusterFailed(f"importing {tag}: {importer.stderr.decode()[-1000:]}")

    def _write(self, name: str, text: str) -> Path:
        path = STATE_DIR / name
        path.write_text(text)
        return path

    def _network(self) -> None:
        _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK)
        _run("ip", "link", "set", NODE_LINK, "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_LINK)
        _run("ip", "link", "set", HOST_LINK, "up")
        _run(*_inside("ip", "addr", "add", f"{NODE_ADDRESS}/30", "dev", NODE_LINK))
        _run(*_inside("ip", "link", "set", NODE_LINK, "up"))
        _run(*_inside("ip", "link", "set", "lo", "up"))
        # The node's own way to the ClusterIPs (kube-proxy's OUTPUT rules rewrite them).
        _run(*_inside("ip", "route", "add", SERVICE_CIDR, "dev", NODE_LINK))
        for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
            _run(*_inside("sysctl", "-qw", f"{key}=1"), check=False)

    # -- tear-down
    def stop(self) -> None:
        """Pods first (through the kubelet, so containerd releases their network
        namespaces and addresses; controllers stopped so none are made again), then
        every process, then what they left."""
        for name in ("kube-controller-manager", "kube-scheduler"):
            if name in self.processes:
                stop_group(self.processes[name], 20)
        kubelet = self.processes.get("kubelet")
        if kubelet is not None and kubelet.poll() is None:
            with contextlib.suppress(Exception):
                self.kubectl(
                    "delete", "pods", "--all", "--all-namespaces", "--wait=true", timeout=120
                )
        for name in reversed(list(self.processes)):
            stop_group(self.processes[name], 20)
        for log in self._logs.values():
            log.close()
        cleanup(self._created_kubelet_dir)


def _cgroup_controllers() -> list[str]:
    """The cgroup v1 hierarchies mounted under /sys/fs/cgroup (by directory name)."""
    root = Path("/sys/fs/cgroup")
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.is_symlink() and entry.name not in {"unified"}
    )


def _our_processes() -> list[int]:
    """Processes left by a cluster: containers (in the cgroups under CGROUP_ROOT) and
    our containerd's shims (their command line names our socket)."""
    found: set[int] = set()
    for controller in _cgroup_controllers():
        top = Path("/sys/fs/cgroup") / controller / CGROUP_ROOT
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError):
                found.update(int(pid) for pid in procs.read_text().split())
    markers = (str(RUN_DIR).encode(), str(STATE_DIR).encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes()
            if any(marker in command for marker in markers):
                found.add(int(entry.name))
    found.discard(os.getpid())
    return sorted(found)


def cleanup(remove_kubelet_dir: bool = True) -> None:
    """Remove whatever a cluster (this one or a crashed one) left: processes by id,
    mounts under our directories, network namespaces, cgroups, directories."""
    for pid in _our_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _our_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith((str(STATE_DIR), str(RUN_DIR))):
            mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", target, check=False)
    _run("ip", "netns", "del", NETNS, check=False)
    _run("ip", "link", "del", HOST_LINK, check=False)
    for controller in _cgroup_controllers():
        top = Path("/sys/fs/cgroup") / controller / CGROUP_ROOT
        if top.is_dir():
            for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    for name in KUBELET_PLUGIN_FILES:
        (KUBELET_PLUGIN_DIR / name).unlink(missing_ok=True)
    if remove_kubelet_dir:
        with contextlib.suppress(OSError):
            KUBELET_PLUGIN_DIR.rmdir()
            KUBELET_PLUGIN_DIR.parent.rmdir()


def leftovers() -> list[str]:
    """What of a cluster is still on this machine (empty after `stop()`)."""
    found = [str(path) for path in (STATE_DIR, RUN_DIR) if path.exists()]
    if NETNS in _run("ip", "netns", "list").stdout.split():
        found.append(f"netns {NETNS}")
    if _run("ip", "link", "show", HOST_LINK, check=False).returncode == 0:
        found.append(f"link {HOST_LINK}")
    found += [f"process {pid}" for pid in _our_processes()]
    found += [
        str(KUBELET_PLUGIN_DIR / name)
        for name in KUBELET_PLUGIN_FILES
        if (KUBELET_PLUGIN_DIR / name).exists()
    ]
    for controller in _cgroup_controllers():
        if (Path("/sys/fs/cgroup") / controller / CGROUP_ROOT).exists():
            found.append(f"cgroup {controller}/{CGROUP_ROOT}")
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {m}" for m in (str(STATE_DIR), str(RUN_DIR)) if f" {m}" in mounts]
    return found


@contextlib.contextmanager
def k8s_cluster(images: Sequence[str] = ()) -> Iterator[Cluster]:
    """A running cluster with `images` imported; removed however the test ends."""
    require_cluster_support()
    bins = toolchain()
    # One cluster at a time on this machine: the names, addresses and dirs are fixed.
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cleanup()
        cluster = Cluster(bins)
        try:
            cluster.start(images)
            yield cluster
        finally:
            cluster.stop()
