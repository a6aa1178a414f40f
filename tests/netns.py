"""Hosts made of Linux network namespaces, for tests that need several machines on one.

A :class:`Network` is a bridge on this machine with a private subnet of its own
(``10.213.N.0/24``, N picked among the ones no interface uses yet); the bridge holds
``.1``, which is where the servers every host shares (Redis, the S3 store) listen. Each
:class:`Host` is a network namespace with ``lo`` up, one end of a veth pair as ``eth0``
with its own address (``.2``, ``.3``, ...) and a default route through the bridge; the
other end of the pair is a port of the bridge. A process runs "on" a host through
:attr:`Host.prefix`: ``ip netns exec`` into its namespace and ``unshare --uts`` into a
hostname of its own, since the worker names itself by ``socket.gethostname()`` in job
records and leases, as a real host would.

:meth:`Network.cut` sets the bridge-side end of a host's pair down: the host keeps running,
its packets go nowhere and its TCP connections stay open, retransmitting, as when a
machine drops off the network; :meth:`Network.restore` sets it up again, and those
connections resume.

Names carry a prefix (``ttsmh`` for namespaces, ``tmb``/``tmv`` for links, under the
15 characters Linux allows an interface name) and a random suffix per network, so two
runs at once never collide. Every network is torn down by :meth:`Network.close` (the test's
``finally``); leftovers of a run that was killed before its teardown (its namespace
names hold the pid of the process that made them, the bridge's alias too) are deleted by
:func:`sweep_leftovers` when their process no longer exists.

Everything here needs root and the ``ip`` tool (iproute2); :func:`require` says why
namespaces cannot be made here, by really making one, and is what a test skips on.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["Host", "NetnsUnavailable", "Network", "require", "sweep_leftovers"]

#: Prefix of every namespace made here: ``ttsmh-<pid>-<run>-<host>``.
NS_PREFIX = "ttsmh"
#: Prefix of the bridge (``tmb<run>``) and of the bridge-side veth ends (``tmv<run><n>``).
BRIDGE_PREFIX = "tmb"
VETH_PREFIX = "tmv"
#: The alias a bridge carries: who made it (a leftover's maker is gone when its pid is).
ALIAS_PREFIX = "tts-multihost pid="
#: The /16 the networks' subnets are taken from.
SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
#: Seconds any one ``ip`` command may take.
IP_TIMEOUT = 15


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made on this machine (the reason is the message)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; a failure raises with its stderr when ``check``."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def require() -> None:
    """Raise :class:`NetnsUnavailable` unless a namespace with a veth pair can really be made here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"network namespaces need root (running as uid {os.geteuid()})")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"`{tool}` is not on PATH (Debian packages iproute2, util-linux)")
    run = secrets.token_hex(2)
    name = f"{NS_PREFIX}-{os.getpid()}-{run}-probe"
    try:
        made = ip("netns", "add", name, check=False)
        if made.returncode != 0:
            raise NetnsUnavailable(f"`ip netns add` is refused here: {made.stderr.strip()}")
        pair = ip("link", "add", f"{VETH_PREFIX}{run}p", "type", "veth", "peer", "name", f"{VETH_PREFIX}{run}q",
                  "netns", name, check=False)
        if pair.returncode != 0:
            raise NetnsUnavailable(f"a veth pair cannot be made here: {pair.stderr.strip()}")
        uts = subprocess.run(["ip", "netns", "exec", name, "unshare", "--uts", "--", "true"], capture_output=True,
                             text=True, timeout=IP_TIMEOUT, check=False)
        if uts.returncode != 0:
            raise NetnsUnavailable(f"`unshare --uts` is refused inside a namespace: {uts.stderr.strip()}")
    finally:
        ip("link", "del", f"{VETH_PREFIX}{run}p", check=False)
        ip("netns", "del", name, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> int:
    """Delete the namespaces and bridges of earlier runs whose process is gone; returns how many.

    A run still going (another test session at the same time) keeps its own: its pid lives.
    """
    removed = 0
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        ours = len(parts) >= 3 and parts[0] == NS_PREFIX and parts[1].isdigit()
        if ours and not _pid_alive(int(parts[1])) and ip("netns", "del", name, check=False).returncode == 0:
            log.info("deleted leftover namespace %s", name)
            removed += 1
    listing = ip("-j", "-d", "link", "show", "type", "bridge", check=False).stdout or "[]"
    for link in json.loads(listing):
        alias = str(link.get("ifalias", ""))
        name = str(link.get("ifname", ""))
        pid = alias[len(ALIAS_PREFIX):]
        ours = name.startswith(BRIDGE_PREFIX) and alias.startswith(ALIAS_PREFIX) and pid.isdigit()
        if ours and not _pid_alive(int(pid)) and ip("link", "del", name, check=False).returncode == 0:
            log.info("deleted leftover bridge %s", name)
            removed += 1
    return removed


def _used_subnets() -> set[ipaddress.IPv4Network]:
    """The /24s of SUPERNET that an interface of this machine already has an address in."""
    used: set[ipaddress.IPv4Network] = set()
    for link in json.loads(ip("-j", "-4", "addr", "show", check=False).stdout or "[]"):
        for addr in link.get("addr_info", []):
            net = ipaddress.IPv4Interface(f"{addr['local']}/{addr.get('prefixlen', 32)}").network
            if net.overlaps(SUPERNET):  # a wider one takes every /24 it covers
                used.update(net.subnets(new_prefix=24) if net.prefixlen < 24 else
                            [ipaddress.IPv4Network(f"{addr['local']}/24", strict=False)])
    return used


@dataclass
class Host:
    """One namespace on a :class:`Network`: its name, hostname, address and bridge-side veth end."""

    name: str
    hostname: str
    namespace: str
    address: str
    veth: str

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program in this host's namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c",
                'echo "$0" > /proc/sys/kernel/hostname && exec "$@"', self.hostname]

    def unsent(self, address: str, port: int) -> int:
        """Bytes this host's TCP sockets to ``address:port`` hold that the peer has not acknowledged.

        Closed sockets count too (the kernel keeps sending what a process wrote before it
        closed). After :meth:`Network.restore`, 0 means everything written during the cut
        has reached the server, or been given up on.
        """
        listing = ip("netns", "exec", self.namespace, "ss", "-tnH", "dst", f"{address}:{port}").stdout
        return sum(int(line.split()[2]) for line in listing.splitlines() if len(line.split()) >= 3)


@dataclass
class Network:
    """A bridge with a private /24 and the hosts on it (see the module docstring)."""

    run: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: list[Host] = field(default_factory=list)
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = ""

    @property
    def address(self) -> str:
        """The bridge's address: where the shared servers listen, and the hosts' default route."""
        if self.subnet is None:
            raise RuntimeError("the network is not up: call up() first")
        return str(self.subnet.network_address + 1)

    def up(self) -> Network:
        """Make the bridge, with a /24 of SUPERNET that nothing here uses yet."""
        used = _used_subnets()
        free = [net for net in SUPERNET.subnets(new_prefix=24) if net not in used]
        if not free:
            raise RuntimeError(f"every /24 of {SUPERNET} is in use on this machine")
        self.subnet = free[secrets.randbelow(len(free))]
        self.bridge = f"{BRIDGE_PREFIX}{self.run}"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("link", "set", self.bridge, "alias", f"{ALIAS_PREFIX}{os.getpid()}")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` on the bridge, with the next address and a default route."""
        if self.subnet is None:
            raise RuntimeError("the network is not up: call up() first")
        index = len(self.hosts) + 1
        host = Host(name=name, hostname=f"{name}-{self.run}", namespace=f"{NS_PREFIX}-{os.getpid()}-{self.run}-{name}",
                    address=str(self.subnet.network_address + 1 + index), veth=f"{VETH_PREFIX}{self.run}{index}")
        self.hosts.append(host)  # before anything is made, so close() removes whatever part of it exists
        peer = f"{VETH_PREFIX}{self.run}{index}n"
        ip("netns", "add", host.namespace)
        ip("-n", host.namespace, "link", "set", "lo", "up")
        ip("link", "add", host.veth, "type", "veth", "peer", "name", peer, "netns", host.namespace)
        ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "route", "add", "default", "via", self.address)
        ip("link", "set", host.veth, "master", self.bridge)
        ip("link", "set", host.veth, "up")
        return host

    def unread(self, host: Host, port: int) -> int:
        """Bytes from ``host`` that arrived at this side's server on ``port`` and it has not read yet.

        After :meth:`cut`, 0 means the server has read (Redis: run) everything the host sent
        before the link went down; what it sent later is stuck on the host's side (:meth:`Host.unsent`).
        """
        out = subprocess.run(["ss", "-tnH", "src", f"{self.address}:{port}", "dst", host.address], capture_output=True,
                             text=True, timeout=IP_TIMEOUT, check=True).stdout
        return sum(int(line.split()[1]) for line in out.splitlines() if len(line.split()) >= 2)

    def cut(self, host: Host) -> None:
        """Take ``host`` off the network: the bridge-side end of its veth pair goes down."""
        ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        """Put ``host`` back on the network."""
        ip("link", "set", host.veth, "up")

    def close(self) -> None:
        """Delete every namespace (which deletes its veth pair) and the bridge; never raises."""
        for host in self.hosts:
            with contextlib.suppress(Exception):
                ip("link", "del", host.veth, check=False)
                ip("netns", "del", host.namespace, check=False)
        if self.bridge:
            with contextlib.suppress(Exception):
                ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
