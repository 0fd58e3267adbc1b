"""The lab's network: one bridge in the root namespace, one network namespace per host.

The bridge gets the subnet's first address, so services in the root namespace reach every
host directly; each host's namespace has a veth ``eth0`` plugged into the bridge and a
default route back through it.  Interface and namespace names carry the lab id, so two
labs (say, the tests' and a demo) never touch each other's.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

SUBNET_BASE = ipaddress.ip_network("10.231.0.0/16")


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _routed_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    nets = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst not in ("default",) and not dst.startswith(("127.", "broadcast")):
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    return nets


def pick_subnet(taken: set[str]) -> ipaddress.IPv4Network:
    """The first /24 of 10.231.0.0/16 that no route and no other lab uses."""
    routed = _routed_networks()
    for subnet in SUBNET_BASE.subnets(new_prefix=24):
        if str(subnet) in taken:
            continue
        if any(subnet.overlaps(n) for n in routed if n.prefixlen > 0):
            continue
        return subnet  # type: ignore[return-value]
    raise NetworkError("no free /24 left in 10.231.0.0/16 for the lab's bridge")


def link_exists(name: str, netns: str | None = None) -> bool:
    args = ["-n", netns] if netns else []
    return ip(*args, "link", "show", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def ensure_bridge(name: str, address: str, prefix: int) -> None:
    if not link_exists(name):
        ip("link", "add", name, "type", "bridge")
    cidr = f"{address}/{prefix}"
    if cidr not in ip("-o", "addr", "show", "dev", name).stdout:
        ip("addr", "add", cidr, "dev", name)
    ip("link", "set", name, "up")


def ensure_host_netns(netns: str, veth: str, bridge: str, address: str, prefix: int,
                      gateway: str) -> None:
    """Create the namespace and its veth, idempotently."""
    if not netns_exists(netns):
        ip("netns", "add", netns)
    if not link_exists(veth):
        if link_exists("eth0", netns):
            ip("-n", netns, "link", "del", "eth0")
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    if f"{address}/{prefix}" not in ip("-n", netns, "-o", "addr", "show", "dev", "eth0").stdout:
        ip("-n", netns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "link", "set", "eth0", "up")
    if "default" not in ip("-n", netns, "route", "show").stdout:
        ip("-n", netns, "route", "add", "default", "via", gateway)


def set_link(veth: str, up: bool) -> None:
    """Cut or restore a host's cable: its bridge-side veth goes down or up."""
    ip("link", "set", veth, "up" if up else "down")


def link_is_up(veth: str) -> bool:
    out = ip("-j", "link", "show", veth, check=False).stdout
    if not out:
        return False
    return "UP" in json.loads(out)[0].get("flags", [])


def delete_netns(netns: str) -> None:
    if netns_exists(netns):
        ip("netns", "del", netns, check=False)


def delete_link(name: str) -> None:
    if link_exists(name):
        ip("link", "del", name, check=False)


def netns_pids(netns: str) -> list[int]:
    if not netns_exists(netns):
        return []
    out = ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]
