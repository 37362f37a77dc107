"""Test hosts: Docker engines in network namespaces of their own, on this machine.

A multi-host deployment needs several Docker engines that reach each other
over a network, as GPU machines on a LAN do. Each test host here is a network
namespace linked to the machine by a veth pair, with its own `dockerd` (its own
data root, exec root, socket and pid file), so its containers and published
ports live at that namespace's address and nowhere else.

Addresses come from 198.18.0.0/15, the range set aside for testing network
devices (RFC 2544): the machine side of host i is 198.18.i.1, the namespace
side 198.18.i.2. Test traffic goes only to those addresses and to loopback.

`dockerd` is started with `nsenter --net` rather than `ip netns exec`: the
latter mounts a fresh /sys for the namespace, which hides the cgroup
filesystems dockerd needs ("Devices cgroup isn't mounted").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker

from tests.support.nginx import in_ci

PREFIX = "vnh"
STATE = Path("/tmp/vllm-nginx-test-hosts")


class HostsUnavailable(RuntimeError):
    """This machine cannot make test hosts (no root, no `ip`, no `nsenter`, no dockerd)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def require_hosts_support() -> None:
    """Fail in CI, skip elsewhere, when test hosts cannot be made here."""
    missing = [tool for tool in ("ip", "nsenter", "dockerd") if shutil.which(tool) is None]
    problem = None
    if os.geteuid() != 0:
        problem = "test hosts need root (network namespaces, a dockerd each)"
    elif missing:
        problem = f"test hosts need {', '.join(missing)}"
    if problem is None:
        return
    import pytest

    if in_ci():
        pytest.fail(problem)
    pytest.skip(problem)


@dataclass
class NetnsHost:
    """One engine in its own namespace; `address` is where its ports are published."""

    index: int
    name: str
    address: str
    gateway: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=120)

    def start_engine(self, timeout: float = 60, env: Mapping[str, str] | None = None) -> None:
        """Its dockerd; `env` adds to its environment (a PATH with a device driver's hook)."""
        log = (self.directory / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{self.name}",
                "dockerd",
                "--data-root",
                str(self.directory / "data"),
                "--exec-root",
                str(self.directory / "exec"),
                "--pidfile",
                str(self.directory / "dockerd.pid"),
                "-H",
                self.docker_host,
                # Its own bridge subnet, so containers of two hosts never share addresses.
                "--bip",
                f"172.31.{200 + self.index}.1/24",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "dockerd.log").read_text()[-2000:]
                raise RuntimeError(f"dockerd of {self.name} did not start:\n{tail}")
            time.sleep(0.5)

    def stop_engine(self, timeout: float = 30) -> None:
        """Stop this host's dockerd (its containers stop with it), as a machine going down."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _remove_state(directory: Path) -> None:
    """A host's files, once whatever dockerd left mounted there is unmounted.

    dockerd bind-mounts its network namespace at `exec/netns/default` and does
    not always take it down when it stops (seen after a host's engine was
    stopped under load); rmtree cannot remove a mount point, and the next run
    then found the directory there.
    """
    inside = f"{directory}/"
    mounts = [
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/mounts").read_text().splitlines()
    ]
    for point in sorted((m for m in mounts if m.startswith(inside)), key=len, reverse=True):
        _run("umount", "-l", point, check=False)
    shutil.rmtree(directory, ignore_errors=True)


def _remove_namespace(name: str) -> None:
    _run("ip", "netns", "del", name, check=False)
    _run("ip", "link", "del", f"{name}-m", check=False)


def _make_host(index: int) -> NetnsHost:
    name = f"{PREFIX}{index}"
    host = NetnsHost(
        index=index,
        name=name,
        address=f"198.18.{index}.2",
        gateway=f"198.18.{index}.1",
        directory=STATE / name,
    )
    _remove_namespace(name)
    _remove_state(host.directory)
    host.directory.mkdir(parents=True)
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", f"{name}-m", "type", "veth", "peer", "name", f"{name}-n")
    _run("ip", "link", "set", f"{name}-n", "netns", name)
    _run("ip", "addr", "add", f"{host.gateway}/24", "dev", f"{name}-m")
    _run("ip", "link", "set", f"{name}-m", "up")
    inside = ("ip", "netns", "exec", name)
    _run(*inside, "ip", "addr", "add", f"{host.address}/24", "dev", f"{name}-n")
    _run(*inside, "ip", "link", "set", f"{name}-n", "up")
    _run(*inside, "ip", "link", "set", "lo", "up")
    # Through the machine to the other test hosts (the machine forwards: dockerd
    # turns ip_forward on); nothing else is reachable from there.
    _run(*inside, "ip", "route", "add", "198.18.0.0/15", "via", host.gateway)
    return host


def load_images(target: NetnsHost, *tags: str) -> None:
    """`docker save | docker load`: no registry is reachable, images travel as archives."""
    saver = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
    env = {**os.environ, "DOCKER_HOST": target.docker_host}
    loader = subprocess.run(
        ["docker", "load", "-q"], stdin=saver.stdout, env=env, capture_output=True, timeout=300
    )
    saver.wait(timeout=60)
    if loader.returncode != 0 or saver.returncode != 0:
        raise RuntimeError(f"loading {tags} into {target.name}: {loader.stderr.decode()[-500:]}")


_FORWARD_RULE = ("-i", f"{PREFIX}+", "-o", f"{PREFIX}+", "-j", "ACCEPT")


def _forward_chain() -> str:
    """The machine's engine sets FORWARD's policy to DROP; DOCKER-USER is where its
    documentation says our own forwarding rules go (FORWARD when there is none)."""
    return (
        "DOCKER-USER"
        if _run("iptables", "-S", "DOCKER-USER", check=False).returncode == 0
        else "FORWARD"
    )


def _allow_forwarding_between_hosts() -> str:
    chain = _forward_chain()
    if _run("iptables", "-C", chain, *_FORWARD_RULE, check=False).returncode != 0:
        _run("iptables", "-w", "-I", chain, *_FORWARD_RULE)
    return chain


@contextlib.contextmanager
def netns_hosts(
    count: int, engine_env: Mapping[str, str] | None = None
) -> Iterator[list[NetnsHost]]:
    """`count` test hosts, removed again (engines, data, namespaces) however the test ends;
    `engine_env` adds to every dockerd's environment."""
    require_hosts_support()
    hosts: list[NetnsHost] = []
    chain = _allow_forwarding_between_hosts()
    try:
        for index in range(1, count + 1):
            host = _make_host(index)
            hosts.append(host)
            host.start_engine(env=engine_env)
        yield hosts
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                for container in host.client().containers.list(all=True):
                    container.remove(force=True)
            host.stop_engine()
            _remove_namespace(host.name)
            _remove_state(host.directory)
        _run("iptables", "-w", "-D", chain, *_FORWARD_RULE, check=False)
