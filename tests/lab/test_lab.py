"""The emulated lab, proved from outside the way labfleet uses it.

SSH with pinned host keys through labfleet's own SshPool, a cross compile on a build
server, a VM through libvirt over qemu+ssh, boards flashed on the flash station and
powered by pdudaemon's HTTP API, uhubctl and gpioset, their boot markers read through
ser2net (raw TCP and RFC 2217), each fault observed from outside, and a final ``down``
that leaves nothing behind.  Tests run in file order; the last one removes the lab.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import serial  # type: ignore[import-untyped]

from labfleet.shared.ssh import (
    ConnectionRefused,
    ConnectTimeout,
    Credentials,
    HostKeyMismatch,
    HostUnreachable,
    SshError,
    SshPool,
)

# The first test's set-up builds the kernels on a machine without the cache (~15 min on
# 2 cores); later runs find them cached and the whole module takes about 90 s.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(2400)]

MARKER = "LABFLEET-BOOT-OK"


def creds(lab: dict[str, Any], password: bool = False) -> Credentials:
    h = lab["hosts"][0]
    if password:
        return Credentials(username=h["user"], password=Path(h["password_file"]).read_text().strip())
    return Credentials(username=h["user"], private_key=Path(h["key_path"]).read_text())


def host(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in lab["hosts"] if h["name"] == name)


def board(lab: dict[str, Any], method: str) -> dict[str, Any]:
    return next(b for b in lab["boards"] if b["power"]["method"] == method)


async def run(pool: SshPool, lab: dict[str, Any], name: str, argv: list[str],
              **kw: Any) -> str:
    h = host(lab, name)
    result = await pool.run(h["address"], h["ssh_port"], creds(lab), h["host_key"], argv, **kw)
    return str(result.stdout)


@pytest.fixture
async def pool():  # type: ignore[no-untyped-def]
    p = SshPool(connect_timeout=5, command_timeout=120)
    yield p
    await p.close()


# ---- hosts ----------------------------------------------------------------------------


async def test_every_host_answers_ssh_with_its_pinned_host_key(lab, pool) -> None:  # type: ignore[no-untyped-def]
    roles = sorted(h["role"] for h in lab["hosts"])
    assert roles.count("build-server") == 2 and roles.count("qemu-host") == 2
    assert roles.count("flash-station") == 1
    addresses = set()
    for h in lab["hosts"]:
        out = await run(pool, lab, h["name"], ["sh", "-c", "hostname; id -un; df -Pk ~ | tail -1"])
        hostname, user, df = out.splitlines()
        assert (hostname, user) == (h["name"], "lab")
        # each host's work area is its own filesystem, sized as the lab says
        assert df.split()[-1] == "/home/lab"
        assert abs(int(df.split()[1]) / 1024 - h["disk_mb"]) < h["disk_mb"] * 0.05
        addresses.add(h["address"])
        assert h["fingerprint"].startswith("SHA256:")
    assert len(addresses) == len(lab["hosts"])
    # the password in the password file works too, and a wrong pinned key is refused
    b1, b2 = host(lab, "build1"), host(lab, "build2")
    result = await pool.run(b1["address"], 22, creds(lab, password=True), b1["host_key"], ["true"])
    assert result.exit_status == 0
    with pytest.raises(HostKeyMismatch):
        await SshPool(connect_timeout=5).connect(b1["address"], 22, creds(lab), b2["host_key"])


async def test_hosts_have_separate_disks_and_toolchains(lab, pool) -> None:  # type: ignore[no-untyped-def]
    marker = f"only-here-{uuid.uuid4().hex[:6]}"
    await run(pool, lab, "build1", ["touch", f"/home/lab/{marker}"])
    assert marker not in await run(pool, lab, "build2", ["ls", "/home/lab"])
    await run(pool, lab, "build1", ["rm", f"/home/lab/{marker}"])
    # build2 lacks the riscv64 toolchain (hidden in its own /usr/bin), build1 has it
    assert host(lab, "build2")["toolchains"] == ["gcc", "aarch64", "arm"]
    probe = ["sh", "-c", "command -v riscv64-linux-gnu-gcc || echo missing"]
    assert (await run(pool, lab, "build2", probe)).strip() == "missing"
    assert (await run(pool, lab, "build1", probe)).strip() == "/usr/bin/riscv64-linux-gnu-gcc"


async def test_build_server_cross_compiles_from_the_lab_git(lab, pool) -> None:  # type: ignore[no-untyped-def]
    url = lab["git"]["url"] + "hello.git"
    script = ("set -e; rm -rf hello; git clone -q \"$1\" hello; cd hello; "
              "make -s CROSS_COMPILE=aarch64-linux-gnu-; od -An -tx1 -j18 -N2 hello; "
              "cat hello.sha256")
    out = await run(pool, lab, "build1", ["sh", "-c", script, "build", url])
    machine, checksum = out.splitlines()[-2:]
    assert machine.split() == ["b7", "00"]  # ELF e_machine 183: AArch64
    assert checksum.endswith("  hello")


async def test_kernel_source_mirror_is_served_to_build_servers(lab, lab_paths, pool) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab.gitrepos import ensure_linux

    repo = await asyncio.to_thread(ensure_linux, lab_paths, print)  # minutes once, then cached
    head = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "refs/heads/main"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = await run(pool, lab, "build2", ["git", "ls-remote", lab["git"]["url"] + "linux.git"])
    assert f"{head}\trefs/heads/main" in out


# ---- QEMU hosts: libvirt over qemu+ssh -----------------------------------------------


def _boot_vm_over_libvirt(uri: str, kernel: str, initrd: str, name: str) -> str:
    import libvirt  # type: ignore[import-untyped]

    conn = libvirt.open(uri)
    try:
        xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>
<initrd>{initrd}</initrd><cmdline>console=ttyS0</cmdline></os><devices>
<serial type='pty'><target port='0'/></serial>
<console type='pty'><target type='serial' port='0'/></console></devices></domain>"""
        # created paused with the console attached first, or early output is lost
        dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        stream = conn.newStream(0)
        dom.openConsole(None, stream, 0)
        seen = b""
        dom.resume()
        deadline = time.monotonic() + 60
        while not re.search(MARKER.encode() + rb" .*\n", seen) and time.monotonic() < deadline:
            seen += stream.recv(4096)
        stream.abort()
        dom.destroy()
        return seen.decode(errors="replace")
    finally:
        conn.close()


async def test_vm_boots_through_libvirt_over_qemu_ssh(lab, pool) -> None:  # type: ignore[no-untyped-def]
    q = host(lab, "qemu2")
    images = json.loads(Path(lab["lab_dir"], "state.json").read_text())["images"]["x86_64"]
    conn = await pool.connection(q["address"], 22, creds(lab), q["host_key"])
    async with conn.start_sftp_client() as sftp:
        await sftp.put(images["kernel"], "/home/lab/vmlinuz")
        await sftp.put(images["initrd"], "/home/lab/initrd")
    console = await asyncio.to_thread(_boot_vm_over_libvirt, q["libvirt_uri_lab"],
                                      "/home/lab/vmlinuz", "/home/lab/initrd", "lab-test-vm")
    assert re.search(MARKER + r" \S+ x86_64", console), console[-500:]
    # the domain lived on qemu2's own libvirtd, not on qemu1's
    listing = await run(pool, lab, "qemu1", ["virsh", "-c", "qemu:///system", "list", "--all"])
    assert "lab-test-vm" not in listing


# ---- boards: flash, power by each method, console through ser2net ---------------------


async def _station(pool: SshPool, lab: dict[str, Any], argv: list[str], check: bool = True) -> Any:
    s = next(h for h in lab["hosts"] if h["role"] == "flash-station")
    return await pool.run(s["address"], 22, creds(lab), s["host_key"], argv, check=check)


async def _power(pool: SshPool, lab: dict[str, Any], b: dict[str, Any], on: bool) -> None:
    p = b["power"]
    if p["method"] == "pdu":  # pdudaemon's HTTP API, as labfleet's PDU driver calls it
        verb = "on" if on else "off"
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{p['url']}/power/control/{verb}",
                                 params={"hostname": p["pdu"], "port": p["port"]})
        assert r.status_code == 200, r.text
    elif p["method"] == "usb-hub":
        out = (await _station(pool, lab, ["uhubctl", "-l", p["location"], "-p", str(p["port"]),
                                          "-a", "on" if on else "off"])).stdout
        assert f"Port {p['port']}: {'0503 power' if on else '0000 off'}" in out.split("New status")[1]
    else:
        await _station(pool, lab, ["gpioset", p["chip"], f"{p['line']}={1 if on else 0}"])
        got = (await _station(pool, lab, ["gpioget", p["chip"], str(p["line"])])).stdout.strip()
        assert got == ("1" if on else "0")


def _read_console(url: str, until: str, timeout: float, send: bytes = b"") -> str:
    """Open the board's console through ser2net (retrying while the UART is not up yet)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        try:
            port = serial.serial_for_url(url, baudrate=115200, timeout=0.5)
        except (serial.SerialException, OSError):
            time.sleep(0.2)
            continue
        try:
            if send:
                port.write(send)
            while time.monotonic() < deadline:
                chunk = port.read(4096)
                seen += chunk
                if until.encode() in _without_prompts(seen):
                    return _without_prompts(seen).decode(errors="replace")
                if not chunk and not port.is_open:
                    break
        except (serial.SerialException, OSError):
            time.sleep(0.2)
        finally:
            port.close()
    return _without_prompts(seen).decode(errors="replace")


def _without_prompts(console: bytes) -> bytes:
    # The shell's prompt can land inside the echo of typed input; drop it before matching.
    return console.replace(b"/ # ", b"").replace(b"\x1b[6n", b"")


async def _flash(pool: SshPool, lab: dict[str, Any], b: dict[str, Any], card: Path) -> str:
    s = next(h for h in lab["hosts"] if h["role"] == "flash-station")
    conn = await pool.connection(s["address"], 22, creds(lab), s["host_key"])
    async with conn.start_sftp_client() as sftp:
        await sftp.put(str(card), f"/home/lab/{card.name}")
    result = await _station(pool, lab, ["labfleet-flash", b["name"], f"/home/lab/{card.name}"],
                            check=False)
    return str(result.stdout) + str(result.stderr)


@pytest.mark.parametrize("method", ["pdu", "usb-hub", "gpio-relay"])
async def test_board_flashed_and_booted_by_each_power_method(lab, pool, method, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab.boards import make_card

    b = board(lab, method)
    images = json.loads(Path(lab["lab_dir"], "state.json").read_text())["images"][b["arch"]]
    token = f"flash-{uuid.uuid4().hex[:8]}"
    card = make_card(Path(images["kernel"]), Path(images["initrd"]), tmp_path / f"{token}.img",
                     cmdline=f"labfleet.card={token}")
    await _power(pool, lab, b, on=False)
    flashed = await _flash(pool, lab, b, card)
    assert "wrote" in flashed, flashed
    # the card belongs to the board while it is on: no flashing then
    await _power(pool, lab, b, on=True)
    refused = await _flash(pool, lab, b, card)
    assert "powered on" in refused
    url = b["console"]["rfc2217_url"] if method == "usb-hub" else b["console"]["raw_url"]
    console = await asyncio.to_thread(_read_console, url, MARKER, 60)
    assert MARKER in console, console[-800:]
    # the kernel booted from the card just written: it carries the card's command line
    proof = await asyncio.to_thread(_read_console, b["console"]["raw_url"], token, 20,
                                    b"\ncat /proc/cmdline\n")
    assert f"labfleet.card={token}" in proof, proof[-500:]
    await _power(pool, lab, b, on=False)
    off = await asyncio.to_thread(_read_console, b["console"]["raw_url"], MARKER, 2)
    assert MARKER not in off


async def test_broken_image_panics_on_the_console(lab, pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab.boards import make_card

    b = board(lab, "gpio-relay")
    images = json.loads(Path(lab["lab_dir"], "state.json").read_text())["images"][b["arch"]]
    card = make_card(Path(images["kernel"]), Path(images["broken_initrd"]), tmp_path / "broken.img")
    await _power(pool, lab, b, on=False)
    assert "wrote" in await _flash(pool, lab, b, card)
    await _power(pool, lab, b, on=True)
    console = await asyncio.to_thread(_read_console, b["console"]["raw_url"], "Kernel panic", 60)
    assert "LABFLEET-BOOT-BROKEN" in console and "Kernel panic" in console, console[-800:]
    await _power(pool, lab, b, on=False)
    good = make_card(Path(images["kernel"]), Path(images["initrd"]), tmp_path / "good.img")
    assert "wrote" in await _flash(pool, lab, b, good)


# ---- faults, observed from outside ----------------------------------------------------


def fault(lab_paths, target: str, action: str) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab import faults, lab as labmod

    state = labmod.load(lab_paths)
    assert state is not None
    faults.inject(state, target, action, lab_paths)
    state.save(lab_paths.state_file)


async def test_host_faults_are_seen_from_outside(lab, lab_paths) -> None:  # type: ignore[no-untyped-def]
    h = host(lab, "build1")
    fresh = lambda: SshPool(connect_timeout=3, command_timeout=10)  # noqa: E731

    async def answer(argv: list[str] | None = None) -> str:
        p = fresh()
        try:
            r = await p.run(h["address"], 22, creds(lab), h["host_key"], argv or ["true"])
            return str(r.stdout)
        finally:
            await p.close()

    async def eventually(check, seconds: float = 10):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        while True:
            try:
                return await check()
            except SshError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    fault(lab_paths, "build1", "link-down")
    # a cut cable: no answer (timeout), or no ARP reply (unreachable) when the
    # neighbour entry had expired
    with pytest.raises((ConnectTimeout, HostUnreachable)):
        await answer()
    fault(lab_paths, "build1", "link-up")
    await eventually(answer)

    fault(lab_paths, "build1", "sshd-stop")
    with pytest.raises(ConnectionRefused):
        await answer()
    fault(lab_paths, "build1", "sshd-start")
    await answer()

    fault(lab_paths, "build1", "disk-fill")
    df = (await answer(["df", "-Pk", "/home/lab"])).splitlines()[-1].split()
    assert df[3] == "0" and df[4] == "100%"
    other = (await answer(["sh", "-c", "echo x > /home/lab/more || echo full"])).strip()
    assert other == "full"
    fault(lab_paths, "build1", "disk-free")
    assert (await answer(["df", "-Pk", "/home/lab"])).splitlines()[-1].split()[4] == "1%"

    fault(lab_paths, "build1", "cpu-burn")
    try:
        await asyncio.sleep(1.5)
        ps = await answer(["ps", "-eo", "pcpu=,args="])
        busy = [line for line in ps.splitlines() if "while :" in line]
        assert busy and max(float(line.split()[0]) for line in busy) > 5, ps
    finally:
        fault(lab_paths, "build1", "cpu-idle")
    assert "while :" not in await answer(["ps", "-eo", "args="])

    fault(lab_paths, "build1", "hang")
    try:
        with pytest.raises((ConnectTimeout, SshError)):
            await answer()
    finally:
        fault(lab_paths, "build1", "resume")
    await answer()


async def test_board_faults_are_seen_on_its_console(lab, lab_paths, pool) -> None:  # type: ignore[no-untyped-def]
    b = board(lab, "usb-hub")
    await _power(pool, lab, b, on=False)
    await _power(pool, lab, b, on=True)
    url = b["console"]["raw_url"]
    read_temp = b"\ncat /sys/class/thermal/thermal_zone0/temp\n"
    assert MARKER in await asyncio.to_thread(_read_console, url, MARKER, 60)
    fault(lab_paths, b["name"], "overheat")
    assert "95000" in await asyncio.to_thread(_read_console, url, "95000", 10, read_temp)
    fault(lab_paths, b["name"], "cool")
    assert "45000" in await asyncio.to_thread(_read_console, url, "45000", 10, read_temp)
    fault(lab_paths, b["name"], "hang")
    try:
        silent = await asyncio.to_thread(_read_console, url, "\nlab-echo\r\n", 3,
                                         b"\necho lab-echo\n")
        assert "\nlab-echo\r\n" not in silent  # no output line while its CPUs are stopped
    finally:
        fault(lab_paths, b["name"], "resume")
    awake = await asyncio.to_thread(_read_console, url, "\nawake-now\r\n", 10,
                                    b"\necho awake-now\n")
    assert "\nawake-now\r\n" in awake  # the command's output line, after the resume
    await _power(pool, lab, b, on=False)


def test_status_is_what_registration_forms_take(lab) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab.api import registration_payloads

    payloads = registration_payloads(lab)
    build = [body for path, body in payloads if path == "/api/v1/build-servers"]
    assert len(build) == 2
    try:
        from labfleet.gateway.models import BuildServerCreate
    except ImportError as exc:  # the gateway is another part of the project
        pytest.skip(f"labfleet.gateway.models is not importable: {exc}")
    for body in build:
        form = BuildServerCreate(**body)
        assert form.private_key is not None and "PRIVATE KEY" in form.private_key.get_secret_value()
        assert form.expected_host_key_fingerprint and form.expected_host_key_fingerprint.startswith("SHA256:")
    b2 = next(b for b in build if b["hostname"] == "build2")
    assert sorted(b2["architectures"]) == ["arm", "arm64", "x86_64"]
    boards = [body for path, body in payloads if path == "/api/v1/boards"]
    assert {b["power"]["method"] for b in boards} == {"pdu", "usb-hub", "gpio-relay"}
    assert all(b["console"]["port"] and b["flash_station"] == "station1" for b in boards)


def _leave_vm_running(lab: dict[str, Any], name: str) -> None:
    import libvirt  # type: ignore[import-untyped]

    q = host(lab, "qemu1")
    images = json.loads(Path(lab["lab_dir"], "state.json").read_text())["images"]["x86_64"]
    conn = libvirt.open(q["libvirt_uri_lab"])
    try:
        conn.createXML(f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{images['kernel']}</kernel>
<initrd>{images['initrd']}</initrd><cmdline>console=ttyS0</cmdline></os></domain>""", 0)
        assert name in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert f"guest={name}" in ps


# ---- down: nothing left --------------------------------------------------------------


def test_zz_down_leaves_nothing(lab, lab_paths) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab import lab as labmod
    from labfleet.lab.netns import netns_pids
    from labfleet.lab.procs import alive

    state = labmod.load(lab_paths)
    assert state is not None
    namespaces = [h.netns for h in state.hosts.values()]
    links = [h.veth for h in state.hosts.values()] + [state.bridge]
    pids = {p for h in state.hosts.values() for p in netns_pids(h.netns)}
    pids |= {h.holder_pid for h in state.hosts.values() if h.holder_pid}
    assert pids, "the lab had processes"
    # leave a board and a libvirt VM running, so down has machines to stop
    from labfleet.lab import station
    station.switch(state, next(iter(state.boards.values())), "on", lab_paths)
    _leave_vm_running(lab, "lab-left-running")

    assert labmod.down(lab_paths, say=print)

    assert not set(namespaces) & set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                    text=True).stdout.split())
    ip_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [link for link in links if f" {link}:" in ip_links or f" {link}@" in ip_links]
    assert not [p for p in pids if alive(p)]  # (a zombie waiting for init to reap it is gone)
    assert str(lab_paths.lab_dir) not in Path("/proc/mounts").read_text()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(lab_paths.lab_dir) not in loops
    qemus = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert str(lab_paths.lab_dir) not in qemus
    assert "lab-left-running" not in qemus
    assert not lab_paths.lab_dir.exists()
