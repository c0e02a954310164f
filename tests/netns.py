"""Simulated hosts: network namespaces on one bridge, for multi-host cluster tests (root only).

Every namespace and link is created by the test itself, named with a random tag, and removed at
the end; the addresses live only on that private bridge.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


SUBNET = "10.213.{}.{}"


@dataclass(frozen=True)
class NsHost:
    name: str
    addr: str

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"hbp{secrets.token_hex(3)}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def hosts(count: int) -> Iterator[tuple[str, list[NsHost]]]:
    """``count`` namespaces bridged to the root namespace; yields (root address, hosts)."""
    tag = secrets.token_hex(2)
    net = int(tag, 16) % 200 + 20
    bridge = f"hbbr{tag}"
    made: list[str] = []
    links: list[str] = []
    root_addr = SUBNET.format(net, 1)
    try:
        _ip("link", "add", bridge, "type", "bridge")
        links.append(bridge)
        _ip("addr", "add", f"{root_addr}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        out: list[NsHost] = []
        for i in range(count):
            ns = f"hbns{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            outer, inner = f"hbv{tag}{i}", f"hbp{tag}{i}"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            links.append(outer)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("link", "set", inner, "netns", ns)
            addr = SUBNET.format(net, i + 2)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out.append(NsHost(ns, addr))
        yield root_addr, out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
