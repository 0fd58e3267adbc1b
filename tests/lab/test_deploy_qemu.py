"""Environments deployed for real: the scheduler and deployer against the emulated lab's
QEMU hosts (libvirtd in their own namespaces, reached over qemu+ssh with pinned keys).

Kernels and initramfs images come from ``labfleet lab images`` (tinyconfig kernels built
from Debian's linux-source, cached); the test puts them in the artifact object store as a
build's artifacts and answers the builder's and inventory's questions about them
(:class:`tests.integration.test_env_placement.FleetDouble`).  The lab is this module's own
(``LABFLEET_ENV_LAB_DIR``, default ``/var/lib/labfleet-lab-envs``), brought down at the
end if this module brought it up.
"""
from __future__ import annotations

import asyncio
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from labfleet.deployer.main import create as create_deployer
from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.events.build import ArtifactInfo
from labfleet.shared.events.env import (
    ArtifactSelector,
    ConsoleChunk,
    DeployReply,
    EnvReply,
    EnvStatus,
    GetEnv,
    RedeployEnv,
    ReleaseEnv,
    RollbackEnv,
    console_subject,
)
from labfleet.shared.events.resource import Arch
from labfleet.shared.ssh import Credentials, SshPool
from tests.integration.test_env_placement import Build, FleetDouble, qemu_view
from tests.lab.conftest import _missing

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

ENV_LAB_DIR = os.environ.get("LABFLEET_ENV_LAB_DIR", "/var/lib/labfleet-lab-envs")
IMAGE_DIR = "/home/lab/images"
MACHINE = {Arch.X86_64: "x86_64", Arch.ARM64: "aarch64", Arch.RISCV64: "riscv64"}


@pytest.fixture(scope="module")
def envlab() -> Any:
    reason = _missing()
    if reason:
        print(f"\n[labfleet tests] deployment lab tests skipped: {reason}")
        pytest.skip(reason)
    from labfleet.lab import lab as labmod
    from labfleet.lab.images import build_all
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState

    paths = LabPaths.from_env(ENV_LAB_DIR)
    was_up = LabState.load(paths.state_file) is not None
    images = build_all(paths, lambda m: print(f"[lab] {m}"), ["x86_64", "arm64", "riscv64"])
    labmod.up(labmod.LabSpec(build_servers=0, qemu_hosts=2, boards=0), paths,
              say=lambda m: print(f"[lab] {m}"))
    status = labmod.status(paths)
    status["images"] = {k: v.to_json() for k, v in images.items()}
    yield status
    if not was_up:
        labmod.down(paths, say=lambda m: print(f"[lab] {m}"))


def lab_host(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in lab["hosts"] if h["name"] == name)


def lab_creds(lab: dict[str, Any]) -> Credentials:
    h = lab["hosts"][0]
    return Credentials(username=h["user"], private_key=Path(h["key_path"]).read_text())


def lab_domain_labels(lab: dict[str, Any], name: str, vm: str) -> tuple[str, str, str]:
    """A domain's title, description and labfleet metadata element, read through libvirt."""
    import libvirt  # type: ignore[import-untyped]

    from labfleet.deployer.domain.vm import METADATA_NS

    conn = libvirt.open(lab_host(lab, name)["libvirt_uri_lab"])
    try:
        dom = conn.lookupByName(vm)
        return (dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None),
                dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None),
                dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
    finally:
        conn.close()


def lab_domains(lab: dict[str, Any], name: str) -> dict[str, bool]:
    """{domain name: active} on a host, through the lab's own pinned-key ssh wrapper."""
    import libvirt  # type: ignore[import-untyped]

    conn = libvirt.open(lab_host(lab, name)["libvirt_uri_lab"])
    try:
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains(0)}
    finally:
        conn.close()


async def upload_build(nc: Any, fleet: FleetDouble, arch: Arch, kernel: str, initrd: str) -> Build:
    import hashlib

    store = await nc.jetstream().create_object_store("artifacts")
    build_id = uuid.uuid4()
    arts = []
    for name, path in (("kernel", kernel), ("initrd.cpio.gz", initrd)):
        data = Path(path).read_bytes()
        await store.put(f"{build_id}/{name}", data)
        arts.append(ArtifactInfo(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 object_name=f"{build_id}/{name}", bucket="artifacts"))
    build = Build(build_id, hashlib.sha1(build_id.bytes).hexdigest(), arch, arts)
    fleet.builds[build_id] = build
    return build


class Deployments:
    def __init__(self, lab: dict[str, Any], fleet: FleetDouble, sdb: Any) -> None:
        self.lab = lab
        self.fleet = fleet
        self.sdb = sdb
        self.hosts: dict[str, Any] = {}
        self.builds: dict[str, Build] = {}

    async def env(self, env_id: uuid.UUID) -> Any:
        reply = await self.fleet.request(GetEnv(env_id=env_id), EnvReply)
        assert reply.ok, reply.error
        return reply.env

    async def settled(self, env_id: uuid.UUID, timeout: float = 150.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    view = await self.env(env_id)
                except AssertionError:
                    view = None  # env.requested not seen by the deployer yet
                if view is not None and view.status in (EnvStatus.RUNNING, EnvStatus.FAILED):
                    return view
                await asyncio.sleep(0.2)

    async def console(self, env_id: uuid.UUID) -> str:
        js = self.fleet.nc.jetstream()
        sub = await js.subscribe(console_subject(env_id), ordered_consumer=True)
        chunks = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1.0)
                chunks.append(ConsoleChunk.model_validate_json(msg.data))
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        return "".join(c.text for c in chunks)

    async def release(self, env_id: uuid.UUID) -> None:
        reply = await self.fleet.request(ReleaseEnv(env_id=env_id, requested_by="test"),
                                         DeployReply, timeout=60)
        assert reply.ok, reply.error
        await self.fleet.wait_event(env_id, "env.released")


@pytest.fixture
async def deployments(envlab, settings_factory, nats_url) -> AsyncIterator[Deployments]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    settings = settings_factory(ack_wait_s=30.0)
    scheduler = create_scheduler(settings)
    await scheduler.start()
    await scheduler.db.execute("DELETE FROM qemu_hosts")
    await scheduler.db.execute("UPDATE env_requests SET status = 'released' "
                               "WHERE status IN ('queued', 'allocated')")
    deployer = create_deployer(settings)
    await deployer.start()
    key = Path(envlab["hosts"][0]["key_path"]).read_text()
    fleet = await FleetDouble(nc, private_key=key).start()
    d = Deployments(envlab, fleet, scheduler.db)
    for name in ("qemu1", "qemu2"):
        h = lab_host(envlab, name)
        d.hosts[name] = await fleet.register(qemu_view(
            name, address=h["address"], port=h["ssh_port"], user=h["user"],
            host_key=h["host_key"], vcpus=2, memory_mb=1024, image_dir=IMAGE_DIR), scheduler.db)
    for arch in (Arch.X86_64, Arch.ARM64, Arch.RISCV64):
        img = envlab["images"][arch.value]
        d.builds[arch.value] = await upload_build(nc, fleet, arch, img["kernel"], img["initrd"])
    img = envlab["images"]["x86_64"]
    d.builds["broken"] = await upload_build(nc, fleet, Arch.X86_64, img["kernel"],
                                            img["broken_initrd"])
    try:
        yield d
    finally:
        await fleet.stop()
        await asyncio.sleep(0.3)
        await deployer.stop()
        await scheduler.stop()
        await nc.close()


async def test_each_architecture_deploys_boots_and_releases_leaving_nothing(
        deployments: Deployments) -> None:
    d = deployments
    pool = SshPool(connect_timeout=5)
    try:  # an empty cache on both hosts: the first deployments send everything
        for name in ("qemu1", "qemu2"):
            h = lab_host(d.lab, name)
            await pool.run(h["address"], h["ssh_port"], lab_creds(d.lab), h["host_key"],
                           ["rm", "-rf", IMAGE_DIR])
    finally:
        await pool.close()
    replies = {}
    for arch in (Arch.X86_64, Arch.ARM64, Arch.RISCV64):
        reply = await d.fleet.create(d.builds[arch.value], memory_mb=256, boot_timeout_s=90)
        assert reply.ok and reply.status == EnvStatus.ALLOCATED, reply.error
        replies[arch] = reply
    views = {arch: await d.settled(r.env_id) for arch, r in replies.items()}
    for arch, view in views.items():
        env_id = replies[arch].env_id
        assert view.status == EnvStatus.RUNNING, (arch, view.error,
                                                  view.deployments[-1].model_dump())
        build = d.builds[arch.value]
        assert (view.build_id, view.commit) == (build.build_id, build.commit)
        assert view.host_name in ("qemu1", "qemu2") and view.deployed_at is not None
        assert view.vm_name == f"labfleet-{env_id}"
        h = lab_host(d.lab, view.host_name)
        assert view.console == (f"virsh -c qemu+ssh://lab@{h['address']}/system console "
                                f"{view.vm_name}")
        console = await d.console(env_id)
        assert re.search(rf"LABFLEET-BOOT-OK \S+ {MACHINE[arch]}", console), console[-800:]
        verified = await d.fleet.wait_event(env_id, "deploy.boot_verified")
        transferred = await d.fleet.wait_event(env_id, "deploy.transferred")
        print(f"\n[deploy] {arch}: on {view.host_name}, sent {transferred[0]['bytes_sent']} B, "
              f"timings {verified[0]['timings']}")
        assert lab_domains(d.lab, view.host_name).get(view.vm_name) is True
        # whose VM it is and what it runs, for virsh and the host's page
        title, description, meta = lab_domain_labels(d.lab, view.host_name, view.vm_name)
        assert title.startswith(f"{view.requested_by}: build {str(build.build_id)[:8]}"), title
        assert str(env_id) in description and build.commit in description, description
        fields = {c.tag.rsplit("}", 1)[-1]: c.text for c in ET.fromstring(meta)}
        assert fields["commit"] == build.commit and fields["build"] == str(build.build_id), meta
        assert fields["owner"] == view.requested_by and fields["env"] == str(env_id), meta

    for arch, r in replies.items():
        await d.release(r.env_id)
    for name in ("qemu1", "qemu2"):
        left = [n for n in lab_domains(d.lab, name) if n.startswith("labfleet-")]
        assert not left, f"{name} still has {left}"
    for r in replies.values():
        view = await d.env(r.env_id)
        assert view.status == EnvStatus.RELEASED and view.console is None
    # the reservations are gone from the scheduler
    assert not await d.sdb.fetchval("SELECT count(*) FROM env_requests WHERE env_id = ANY($1) "
                                    "AND status <> 'released'", [r.env_id for r in replies.values()])


async def test_panic_is_classified_with_its_log_then_rollback_and_cached_redeploy(
        deployments: Deployments) -> None:
    d = deployments
    good, broken = d.builds["x86_64"], d.builds["broken"]
    reply = await d.fleet.create(good, boot_timeout_s=60)
    assert reply.ok, reply.error
    env_id = reply.env_id
    view = await d.settled(env_id)
    assert view.status == EnvStatus.RUNNING, view.error

    # the same artifacts again on the same host: nothing is sent
    again = await d.fleet.request(RedeployEnv(env_id=env_id), DeployReply)
    assert again.ok and again.deployment == 2, again.error
    transferred = await d.fleet.wait_event(env_id, "deploy.transferred", n=2, timeout=90)
    assert transferred[1]["bytes_sent"] == 0 and transferred[1]["sent"] == []
    assert sorted(transferred[1]["cached"]) == ["initrd.cpio.gz", "kernel"]
    view = await d.settled(env_id)
    assert view.status == EnvStatus.RUNNING and view.deployments[-1].number == 2

    # a build whose init panics: classified as a panic, with the log kept
    busy = await d.fleet.request(RedeployEnv(
        env_id=env_id, artifacts=ArtifactSelector(build_id=broken.build_id)), DeployReply)
    assert busy.ok and busy.deployment == 3, busy.error
    failed = await d.fleet.wait_event(env_id, "deploy.boot_failed", timeout=120)
    assert failed[0]["kind"] == "panic" and failed[0]["deployment"] == 3
    assert "Kernel panic - not syncing" in failed[0]["log_excerpt"]
    assert "LABFLEET-BOOT-BROKEN" in failed[0]["log_excerpt"]
    view = await d.settled(env_id)
    assert view.status == EnvStatus.FAILED and view.error.code == "boot_panic"
    assert view.deployments[-1].failure == "panic" and view.build_id == broken.build_id
    # the failed VM does not run on (a panicking guest would reset forever)
    assert view.vm_name not in {n for n, active in lab_domains(d.lab, view.host_name).items()
                                if active}

    # roll back to the previous deployment's build: it boots again
    back = await d.fleet.request(RollbackEnv(env_id=env_id, requested_by="test"), DeployReply)
    assert back.ok and back.build_id == good.build_id and back.deployment == 4, back.error
    await d.fleet.wait_event(env_id, "deploy.boot_verified", n=3, timeout=120)
    view = await d.settled(env_id)
    assert view.status == EnvStatus.RUNNING and view.build_id == good.build_id
    await d.release(env_id)
    assert view.vm_name not in lab_domains(d.lab, view.host_name)


async def test_a_host_over_the_limit_gets_no_new_vm(deployments: Deployments) -> None:
    d = deployments
    q1 = d.hosts["qemu1"]
    await d.fleet.sample(q1.resource_id, 96.0, d.sdb)
    reply = await d.fleet.create(d.builds["riscv64"], boot_timeout_s=90)
    assert reply.ok and reply.host_name == "qemu2", reply
    view = await d.settled(reply.env_id)
    assert view.status == EnvStatus.RUNNING and view.host_name == "qemu2"
    await d.release(reply.env_id)
