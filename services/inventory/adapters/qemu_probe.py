"""Ask a QEMU host what it is: over SSH (pinned host key), then over libvirt.

SSH first, because its errors are the precise ones (connection, authentication, host
key); then libvirt over ``qemu+libssh://`` with the same pinned key
(:mod:`labfleet.shared.ssh.libvirt` says why that transport).  libvirt's calls block, so
they run in a worker thread.  Guest emulators come from ``qemu-system-<arch> --version``
and libvirt's capabilities XML; libvirt's per-architecture *domain* capabilities are not
asked: on a host whose KVM hangs, libvirtd spends 60 s on each of them.
"""
from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from labfleet.shared.events.resource import Arch, KvmSupport
from labfleet.shared.ssh import Credentials, RemoteCommandFailed
from labfleet.shared.ssh.libvirt import LibvirtFailure, classify, open_remote

from ..domain.errors import InventoryRefusal
from .remote import SshProbe
from ..domain.qemu import EMULATOR_OF, LIBVIRT_ARCHES, kvm_probe_argv, parse_kvm_probe

log = logging.getLogger(__name__)

#: how long registration waits for libvirt's capabilities XML (see QemuHostProbe.libvirt)
CAPABILITIES_WAIT_S = 8.0
DEFAULT_IMAGE_DIR = "labfleet-images"
#: the KVM program stops itself after 3 s; this kills it should KVM_RUN not even return
KVM_KILL_AFTER_S = 10

#: is a libvirt daemon installed (PATH of a non-login shell may lack /usr/sbin), and what
#: does the host's own client say when it connects locally
LIBVIRT_DIAGNOSIS = """
for d in libvirtd virtqemud; do
  if command -v $d >/dev/null 2>&1 || [ -x /usr/sbin/$d ]; then echo installed; break; fi
  [ $d = virtqemud ] && echo missing
done
virsh -c qemu:///system version 2>&1 || true
"""
#: creates the image directory; the first line names the topmost directory it made
#: ("made:" alone when the directory existed), so a refused registration can take it away
IMAGE_DIR_SCRIPT = """
top=""; p="$1"
while [ ! -e "$p" ] && [ "$p" != / ] && [ "$p" != . ]; do top="$p"; p=$(dirname -- "$p"); done
mkdir -p -- "$1" && printf 'made:%s\\n' "$top" && cd -- "$1" && pwd && df -Pk .
"""
#: removes what IMAGE_DIR_SCRIPT made, as long as nothing was put into it (empty
#: directories only: a file in it is never deleted)
REMOVE_MADE_SCRIPT = """
case "$1" in /*) t="$1";; *) t="./$1";; esac
[ -d "$t" ] && find "$t" -depth -type d -empty -delete
true
"""


@dataclass
class QemuHostFacts:
    machine: str
    nproc: str
    meminfo: str
    image_dir: str
    df: str
    kvm: KvmSupport
    #: the topmost directory the probe created for the images ("" = it existed)
    made_dir: str = ""
    #: emulator program → its ``--version`` output (absent: did not answer)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class LibvirtFacts:
    version: int
    #: guest architectures libvirt offers, and whether it lists a ``kvm`` domain for them
    #: (None: libvirt did not list its capabilities in time)
    guests: dict[Arch, bool] | None = None


def parse_capabilities(xml: str) -> dict[Arch, bool]:
    out: dict[Arch, bool] = {}
    root = ET.fromstring(xml)
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None or guest.findtext("os_type") != "hvm":
            continue
        ours = LIBVIRT_ARCHES.get(arch.get("name", ""))
        if ours is not None:
            kvm = any(d.get("type") == "kvm" for d in arch.findall("domain"))
            out[ours] = out.get(ours, False) or kvm
    return out


def _open_and_check(address: str, port: int, creds: Credentials, host_key: str
                    ) -> tuple[Any, int]:
    """Open libvirt and make the QEMU driver answer (cheap calls that never probe)."""
    conn: Any = open_remote(address, port, creds, host_key)
    try:
        version = conn.getLibVersion()
        conn.listAllDomains(0)
    except Exception as exc:
        conn.close()
        raise classify(exc) from None
    return conn, version


def _capabilities_then_close(conn: Any) -> str:
    try:
        return str(conn.getCapabilities())
    finally:
        conn.close()


class QemuHostProbe(SshProbe):
    async def facts(self, address: str, port: int, creds: Credentials, host_key: str,
                    image_dir: str | None) -> QemuHostFacts:
        session = self.session(address, port, creds, host_key)
        output, version = session.output, session.version

        async def images() -> str:
            try:
                return await output(["sh", "-c", IMAGE_DIR_SCRIPT, "labfleet-image-dir",
                                     image_dir or DEFAULT_IMAGE_DIR])
            except RemoteCommandFailed as exc:
                raise InventoryRefusal(
                    "image_dir_unusable",
                    f"the image directory {image_dir or '~/' + DEFAULT_IMAGE_DIR!r} cannot be "
                    f"created or used on the host: {exc.stderr.strip()[-200:] or 'failed'}",
                    hint="give a directory the SSH user may write (it is created if missing)",
                    field="image_dir") from None

        async def kvm() -> KvmSupport:
            result = await session.run(
                ["timeout", "-s", "KILL", str(KVM_KILL_AFTER_S), *kvm_probe_argv()],
                check=False, timeout=KVM_KILL_AFTER_S + 5)
            return parse_kvm_probe(result.exit_status, str(result.stdout or ""),
                                   str(result.stderr or ""))

        try:
            machine = await output(["uname", "-m"])  # first: connects and authenticates
            results = await asyncio.gather(
                output(["nproc"]), output(["cat", "/proc/meminfo"]), images(), kvm(),
                asyncio.gather(*(version(p) for p in EMULATOR_OF.values())),
                return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            nproc, meminfo, image_df, kvm_support, versions = results
        finally:
            await session.close()
        made, _, rest = str(image_df).partition("\n")
        where, _, df = rest.partition("\n")
        return QemuHostFacts(machine=machine.strip(), nproc=str(nproc), meminfo=str(meminfo),
                             image_dir=where.strip(), df=df, kvm=kvm_support,  # type: ignore[arg-type]
                             versions={p: v for p, v in versions if v},  # type: ignore[union-attr]
                             made_dir=made.removeprefix("made:").strip())

    async def remove_made_dir(self, address: str, port: int, creds: Credentials,
                              host_key: str, made_dir: str) -> None:
        """Take away the (still empty) image directory a refused registration made."""
        session = self.session(address, port, creds, host_key)
        try:
            await session.run(["sh", "-c", REMOVE_MADE_SCRIPT, "labfleet-image-dir", made_dir],
                              check=True, timeout=30)
        finally:
            await session.close()

    async def libvirt(self, address: str, port: int, creds: Credentials, host_key: str
                      ) -> LibvirtFacts:
        """Raises :class:`LibvirtFailure`.

        The capabilities XML (which guest architectures libvirt offers, with or without a
        ``kvm`` domain) is waited for :data:`CAPABILITIES_WAIT_S` only: when libvirtd
        re-probes its emulators it answers after 60 s, and then the emulators found over
        SSH stand alone (``guests`` is None).
        """
        budget = self.connect_timeout + 20
        try:
            conn, version = await asyncio.wait_for(
                asyncio.to_thread(_open_and_check, address, port, creds, host_key), budget)
        except TimeoutError:
            raise LibvirtFailure("timeout", f"libvirt on {address}:{port} did not answer "
                                 f"within {budget:g} s") from None
        pending = asyncio.ensure_future(asyncio.to_thread(_capabilities_then_close, conn))
        try:
            xml = await asyncio.wait_for(asyncio.shield(pending), CAPABILITIES_WAIT_S)
        except TimeoutError:
            log.info("libvirt capabilities not answered in time; emulators from SSH only",
                     extra={"host": address, "wait_s": CAPABILITIES_WAIT_S})
            return LibvirtFacts(version=version, guests=None)
        except Exception as exc:  # noqa: BLE001 - a libvirt error on the capabilities call
            raise classify(exc) from None
        return LibvirtFacts(version=version, guests=parse_capabilities(xml))

    async def libvirt_diagnosis(self, address: str, port: int, creds: Credentials,
                                host_key: str) -> tuple[bool, str]:
        """(installed, what the host's own virsh says) when libvirt could not be opened."""
        session = self.session(address, port, creds, host_key)
        try:
            result = await session.run(["sh", "-c", LIBVIRT_DIAGNOSIS], check=False, timeout=30)
        finally:
            await session.close()
        verdict, _, said = str(result.stdout or "").strip().partition("\n")
        lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
        installed = verdict.strip() == "installed"
        return installed, " ".join(lines)[-400:]
