"""``health.cmd.host_details``: what a host runs now, read live for its detail page.

The VMs come from the host's persistent libvirt connection (every defined domain, with
its state, vCPUs, memory and the title/description its deployer gave it); the network
configuration from ``ip -j addr`` over the host's pooled SSH connection.  Each part that
cannot be read is named in ``problems`` and the other is still answered.
"""
from __future__ import annotations

import json

from labfleet.shared.events.health import GetHostDetails, HostDetailsReply, NetInterface
from labfleet.shared.events.resource import ResourceKind
from labfleet.shared.ssh import SshError
from labfleet.shared.ssh.libvirt import LibvirtFailure

from .adapters.credentials import CredentialsUnavailable
from .handlers import MonitorDeps


def parse_ip_addr(text: str) -> list[NetInterface]:
    """``ip -j addr`` → interfaces with their addresses in CIDR form."""
    out: list[NetInterface] = []
    for link in json.loads(text or "[]"):
        addresses = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                     if "local" in a and "prefixlen" in a]
        out.append(NetInterface(name=link.get("ifname", "?"), state=link.get("operstate", ""),
                                mac=link.get("address", ""), mtu=link.get("mtu"),
                                addresses=addresses))
    return out


async def host_details(cmd: GetHostDetails, deps: MonitorDeps) -> HostDetailsReply:
    assert deps.poller is not None and deps.host_poll is not None
    target = deps.poller.target(cmd.resource_id)
    if target is None:
        return HostDetailsReply(ok=False, error={
            "code": "not_found", "message": f"the monitor watches no host with id {cmd.resource_id}",
            "hint": "it may have been removed, or its registration has not reached the monitor "
                    "yet"})
    try:
        creds = await deps.poller.credentials.get(target.resource_id)
    except CredentialsUnavailable as exc:
        return HostDetailsReply(ok=False, error={"code": exc.code, "message": str(exc)})
    reply = HostDetailsReply(ok=True)
    try:
        result = await deps.host_poll.pool.run(target.address, target.port, creds,
                                               target.host_key, ["ip", "-j", "addr"],
                                               timeout=deps.host_poll.timeout)
        reply.interfaces = parse_ip_addr(str(result.stdout or ""))
    except SshError as exc:
        reply.problems.append(f"network configuration ({exc.code}): {exc.message}")
    except ValueError as exc:
        reply.problems.append(f"network configuration: `ip -j addr` printed no JSON ({exc})")
    if target.kind is ResourceKind.QEMU_HOST and deps.vms is not None:
        try:
            reply.vms = await deps.vms.domains(target, creds)
        except LibvirtFailure as exc:
            reply.problems.append(f"VMs from libvirt ({exc.code}): {exc.message}")
    return reply
