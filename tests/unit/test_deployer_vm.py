"""The libvirt domain of an environment says whose it is and what it runs."""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from labfleet.deployer.domain.vm import METADATA_NS, VmPlan, domain_xml, kernel_cmdline
from labfleet.shared.events.resource import Arch


def plan(**kw: object) -> VmPlan:
    base: dict[str, object] = dict(
        env_id=uuid.UUID("11111111-2222-3333-4444-555555555555"), arch=Arch.ARM64, vcpus=2,
        memory_mb=512, kvm=False, kernel="/img/cache/abc", initrd=None, disk=None,
        cmdline=kernel_cmdline(Arch.ARM64, "", False))
    base.update(kw)
    return VmPlan(**base)  # type: ignore[arg-type]


def test_title_description_and_metadata_name_owner_build_and_commit() -> None:
    build = uuid.UUID("abcdef01-0000-0000-0000-000000000000")
    root = ET.fromstring(domain_xml(plan(owner="alice <b>", build_id=build,
                                         commit="0123456789abcdef0123", deployment=3)))
    assert root.findtext("title") == "alice <b>: build abcdef01 @ 0123456789ab (arm64)"
    description = root.findtext("description") or ""
    assert "owner alice <b>" in description and str(build) in description
    assert "deployment 3" in description and "0123456789abcdef0123" in description
    meta = root.find(f"metadata/{{{METADATA_NS}}}env")
    assert meta is not None
    values = {child.tag.split("}", 1)[1]: child.text or "" for child in meta}
    assert values == {"env": "11111111-2222-3333-4444-555555555555", "deployment": "3",
                      "owner": "alice <b>", "build": str(build),
                      "commit": "0123456789abcdef0123"}
    # the domain still boots the kernel it is given, on the arch's machine and console
    assert root.findtext("os/kernel") == "/img/cache/abc"
    assert root.find("os/type").get("machine") == "virt"  # type: ignore[union-attr]
    assert "console=ttyAMA0" in (root.findtext("os/cmdline") or "")


def test_a_domain_without_owner_or_build_says_so() -> None:
    root = ET.fromstring(domain_xml(plan()))
    assert root.findtext("title") == "unknown owner: no build (arm64)"
    assert "build none" in (root.findtext("description") or "")
