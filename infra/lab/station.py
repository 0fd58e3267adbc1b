"""The flash station: boards' SD cards, consoles (ser2net) and power (PDU, USB hub, GPIO).

On the station host (reachable over SSH like any lab host):

- ``/srv/sd/<board>`` - the board's SD card, present only while the board is off
  (write it with ``dd if=IMAGE of=/srv/sd/<board> conv=fsync``, or ``labfleet-flash``);
- ``uhubctl -l 1-1 -p <port> -a on|off|cycle`` - USB hub port power, real uhubctl syntax;
- ``gpioset gpiochip0 <line>=1|0`` (libgpiod 1.x) or ``gpioset -c gpiochip0 <line>=1``
  (2.x) - a relay on a GPIO line; ``gpioget`` reads it back;
- pdudaemon's HTTP API on ``http://<station>:16421/power/control/on?hostname=pdu1&port=<n>``;
- ser2net: each board's UART as raw TCP on ``<station>:400<n>`` and RFC 2217 on
  ``<station>:410<n>``.

Every board is wired to PDU port n, hub 1-1 port n and GPIO line n (n = its number); the
status names one as the board's power method.  See ``boards.py`` for the card format.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

from labfleet.lab import boards, procs
from labfleet.lab.images import BootImages
from labfleet.lab.paths import LabPaths
from labfleet.lab.power import is_on, power_off, qemu_pid
from labfleet.lab.state import BoardState, HostState, LabState

log = logging.getLogger(__name__)

PDU_PORT = 16421
PDU_NAME = "pdu1"
HUB_LOCATION = "1-1"
GPIO_CHIP = "gpiochip0"
TOOLS = ("uhubctl", "gpioset", "gpioget", "labfleet-switch", "labfleet-flash")


def power_parameters(method: str, index: int) -> dict[str, Any]:
    if method == "pdu":
        return {"pdu": PDU_NAME, "port": index}
    if method == "usb-hub":
        return {"location": HUB_LOCATION, "port": index}
    return {"chip": GPIO_CHIP, "line": index}


def _station_dir(paths: LabPaths, station: HostState) -> Path:
    return paths.host_dir(station.name)


def sd_link(paths: LabPaths, station: HostState, board: str) -> Path:
    return _station_dir(paths, station) / "srv" / "sd" / board


def holder_mounts(lab: LabState, station: HostState, paths: LabPaths) -> list[str]:
    sdir = _station_dir(paths, station)
    for sub in ("bin", "srv/sd"):
        (sdir / sub).mkdir(parents=True, exist_ok=True)
    os.chown(sdir / "srv" / "sd", station.uid, station.uid)
    return ["bind", str(sdir / "bin"), "/usr/local/bin", "bind", str(sdir / "srv"), "/srv"]


def open_path_to_interpreter(interpreter: str = sys.executable) -> list[str]:
    """Let the station's unprivileged user reach this Python: the tools it runs over SSH
    start with it.  Python installed under root's home (pyenv in ``/root``, mode 0700)
    would refuse them with "Permission denied"; each directory on the way that others
    cannot enter gets search permission only (``o+x``: nothing can be listed).  Returns
    the directories changed."""
    changed = []
    for target in {Path(interpreter).absolute(), Path(interpreter).resolve()}:
        for d in reversed(target.parents):
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append(str(d))
    return changed


def _write_tools(station: HostState, paths: LabPaths) -> None:
    bindir = _station_dir(paths, station) / "bin"
    for d in open_path_to_interpreter():
        log.warning("the station's tools run %s: directory %s opened for search (o+x) so "
                    "its user can start them", sys.executable, d)
    for tool in TOOLS:
        script = bindir / tool
        module = "labfleet.lab.station_tools"
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import main\n"
                          f"sys.exit(main({tool!r}, sys.argv[1:]))\n")
        script.chmod(0o755)


def _write_power_map(lab: LabState, station: HostState, paths: LabPaths) -> None:
    mapping: dict[str, Any] = {"pdu": {PDU_NAME: {}}, "usb": {HUB_LOCATION: {}},
                               "gpio": {GPIO_CHIP: {}}, "boards": {}}
    for board in lab.boards.values():
        n = str(board.console_raw_port - 4000)
        bdir = str(paths.board_dir(board.name))
        mapping["pdu"][PDU_NAME][n] = bdir
        mapping["usb"][HUB_LOCATION][n] = bdir
        mapping["gpio"][GPIO_CHIP][n] = bdir
        mapping["boards"][board.name] = bdir
    (_station_dir(paths, station) / "bin" / "power-map.json").write_text(json.dumps(mapping))


def _prepare_board(lab: LabState, board: BoardState, station: HostState, paths: LabPaths,
                   images: dict[str, BootImages]) -> None:
    bdir = paths.board_dir(board.name)
    bdir.mkdir(parents=True, exist_ok=True)
    (bdir / "board.json").write_text(json.dumps({
        "name": board.name, "arch": board.arch, "uid": station.uid,
        "sd_link": str(sd_link(paths, station, board.name)),
        "temperature_mc": board.temperature_mc}))
    card = bdir / "sdcard.img"
    if not card.exists():
        image = images[board.arch]
        boards.make_card(image.kernel, image.initrd, card, size_mb=board.card_mb)
    (bdir / "power.lock").touch()
    (bdir / "boot").mkdir(exist_ok=True)
    boards.chown_tree(bdir, station.uid)
    if not is_on(bdir):
        power_off(bdir)  # makes sure the card is on the station side


def _ser2net_config(lab: LabState, station: HostState, paths: LabPaths) -> str:
    lines = ["%YAML 1.1", "---"]
    for board in lab.boards.values():
        console = paths.board_dir(board.name) / "console"
        for suffix, accepter in (
                ("raw", f"tcp,{station.address},{board.console_raw_port}"),
                ("rfc2217", f"telnet(rfc2217),tcp,{station.address},{board.console_rfc2217_port}")):
            lines += [f"connection: &{board.name}-{suffix}",
                      f"  accepter: {accepter}",
                      f"  connector: serialdev,{console},115200n81,local",
                      "  options:", "    kickolduser: true", ""]
    return "\n".join(lines) + "\n"


def _pdudaemon_config(station: HostState, paths: LabPaths) -> str:
    switch = _station_dir(paths, station) / "bin" / "labfleet-switch"
    return json.dumps({
        "daemon": {"hostname": station.address, "port": PDU_PORT, "logging_level": "INFO",
                   "listener": "http"},
        "pdus": {PDU_NAME: {"driver": "localcmdline", "cmd_on": f"{switch} pdu {PDU_NAME} %s on",
                            "cmd_off": f"{switch} pdu {PDU_NAME} %s off"}}}, indent=2)


def start(lab: LabState, station: HostState, paths: LabPaths,
          images: dict[str, BootImages]) -> None:
    sdir = _station_dir(paths, station)
    _write_tools(station, paths)
    for board in lab.boards.values():
        _prepare_board(lab, board, station, paths, images)
    _write_power_map(lab, station, paths)
    assert station.holder_pid
    # ser2net reads its configuration once; restart it so it serves the current boards.
    conf = sdir / "ser2net.yaml"
    new_conf = _ser2net_config(lab, station, paths)
    if not (procs.alive(station.pids.get("ser2net")) and conf.exists()
            and conf.read_text() == new_conf):
        procs.stop(station.pids.get("ser2net"))
        conf.write_text(new_conf)
        ser2net = shutil.which("ser2net") or "/usr/sbin/ser2net"
        station.pids["ser2net"] = procs.spawn(
            procs.in_host(station.holder_pid, [ser2net, "-n", "-c", str(conf),
                                               "-P", str(sdir / "run" / "ser2net.pid")]),
            sdir / "logs" / "ser2net.log")
    if not procs.alive(station.pids.get("pdudaemon")):
        pconf = sdir / "pdudaemon.conf"
        pconf.write_text(_pdudaemon_config(station, paths))
        pdudaemon = str(Path(sys.executable).parent / "pdudaemon")
        station.pids["pdudaemon"] = procs.spawn(
            procs.in_host(station.holder_pid, [pdudaemon, "--conf", str(pconf),
                                               "--loglevel", "INFO"]),
            sdir / "logs" / "pdudaemon.log")
    from labfleet.lab.host import listening
    for port, daemon in [(PDU_PORT, "pdudaemon"),
                         *[(b.console_raw_port, "ser2net") for b in lab.boards.values()]]:
        if not procs.wait_for(lambda: listening(station, port), 15):
            raise procs.DaemonError(f"station {station.name}: {daemon} is not listening on "
                                    f"port {port}", sdir / "logs" / f"{daemon}.log")


def remove_board(lab: LabState, board: BoardState, paths: LabPaths) -> None:
    bdir = paths.board_dir(board.name)
    if (bdir / "board.json").exists():
        pid = qemu_pid(bdir)
        if pid:
            procs.stop(pid)
    shutil.rmtree(bdir, ignore_errors=True)


def public_info(lab: LabState, station: HostState) -> dict[str, Any]:
    return {"pdu_url": f"http://{station.address}:{PDU_PORT}", "pdu_name": PDU_NAME,
            "usb_hub": HUB_LOCATION, "gpio_chip": GPIO_CHIP, "sd_dir": "/srv/sd"}


def board_info(lab: LabState, board: BoardState, paths: LabPaths) -> dict[str, Any]:
    station = lab.hosts[board.station]
    bdir = paths.board_dir(board.name)
    params = dict(board.power)
    if board.power_method == "pdu":
        params["url"] = f"http://{station.address}:{PDU_PORT}"
    else:
        params["host"] = station.address
    command = {
        "pdu": None,
        "usb-hub": f"uhubctl -l {params.get('location')} -p {params.get('port')} -a on|off",
        "gpio-relay": f"gpioset {params.get('chip')} {params.get('line')}=1|0",
    }[board.power_method]
    if command:
        params["command"] = command
    return {
        "name": board.name, "arch": board.arch, "flash_station": station.name,
        "station_address": station.address,
        "console": {"host": station.address, "raw_port": board.console_raw_port,
                    "rfc2217_port": board.console_rfc2217_port,
                    "raw_url": f"socket://{station.address}:{board.console_raw_port}",
                    "rfc2217_url": f"rfc2217://{station.address}:{board.console_rfc2217_port}"
                                   "?ign_set_control"},
        "power": {"method": board.power_method, **params},
        "sd_card": f"/srv/sd/{board.name}",
        "power_state": "on" if is_on(bdir) else "off",
        "running": bool(qemu_pid(bdir)),
        "temperature_mc": board.temperature_mc,
    }


def switch(lab: LabState, board: BoardState, action: str, paths: LabPaths) -> str:
    """Switch a board by its own power method, through the real tool or API."""
    if action not in ("on", "off", "cycle", "state"):
        raise ValueError(f"power action {action!r}: use on, off, cycle or state")
    station = lab.hosts[board.station]
    bdir = paths.board_dir(board.name)
    if action == "state":
        return "on" if is_on(bdir) else "off"
    p = board.power
    if board.power_method == "pdu":
        import httpx

        verb = "reboot" if action == "cycle" else action
        r = httpx.get(f"http://{station.address}:{PDU_PORT}/power/control/{verb}",
                      params={"hostname": p["pdu"], "port": p["port"]}, timeout=10)
        r.raise_for_status()
        want_on = action != "off"
        if not procs.wait_for(lambda: is_on(bdir) == want_on and
                              (not want_on or qemu_pid(bdir) is not None), 30, 0.1):
            raise RuntimeError(f"{board.name}: the PDU accepted {verb} but the board did not "
                               f"switch (see {paths.host_dir(station.name)}/logs/pdudaemon.log)")
        return f"{board.name}: {action} (pdu {p['pdu']} port {p['port']})"
    if board.power_method == "usb-hub":
        argv = ["uhubctl", "-l", p["location"], "-p", str(p["port"]), "-a", action]
    else:
        if action == "cycle":
            switch(lab, board, "off", paths)
            return switch(lab, board, "on", paths)
        argv = ["gpioset", p["chip"], f"{p['line']}={1 if action == 'on' else 0}"]
    from labfleet.lab.host import run_in

    result = run_in(station, ["runuser", "-u", station.user, "--", *argv], check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{board.name}: {' '.join(argv)} failed: {result.stderr.strip()}")
    return f"{board.name}: {action} ({' '.join(argv)})"
