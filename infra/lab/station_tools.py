"""Commands installed on the flash station: uhubctl, gpioset, gpioget (accepting the real
tools' arguments), ``labfleet-switch`` (pdudaemon's localcmdline target) and
``labfleet-flash BOARD IMAGE`` (write a card with verification).

They find boards through ``power-map.json`` beside them, written by the lab.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from labfleet.lab import power

HERE = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path(".")


def _map() -> dict:  # type: ignore[type-arg]
    return json.loads((HERE / "power-map.json").read_text())


def _ports(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += [str(n) for n in range(int(lo), int(hi) + 1)]
        elif part:
            out.append(str(int(part)))
    return out


def _switch(board_dir: str, on: bool) -> None:
    (power.power_on if on else power.power_off)(Path(board_dir))


def uhubctl(args: list[str]) -> int:
    location, ports, action, delay = None, None, None, 2.0
    it = iter(args)
    for arg in it:
        if arg in ("-l", "--location"):
            location = next(it, None)
        elif arg in ("-p", "--ports"):
            ports = next(it, None)
        elif arg in ("-a", "--action"):
            action = next(it, None)
        elif arg in ("-d", "--delay"):
            delay = float(next(it, "2"))
        elif arg in ("-r", "--repeat", "-w", "--wait", "-s", "--search", "-n", "--vendor",
                     "-L", "--level"):
            next(it, None)
    hubs = _map()["usb"]
    if location and location not in hubs:
        print(f"No compatible devices detected at location {location}!", file=sys.stderr)
        return 1
    for loc, wired in hubs.items():
        if location and loc != location:
            continue
        selected = _ports(ports) if ports else sorted(wired, key=int)
        unknown = [p for p in selected if p not in wired]
        if unknown:
            print(f"Hub {loc} has no port {','.join(unknown)}", file=sys.stderr)
            return 1

        def show(title: str) -> None:
            print(f"{title} for hub {loc} [1d6b:0002 labfleet lab USB hub, USB 2.00, "
                  f"{len(wired)} ports, ppps]")
            for p in selected:
                on = power.is_on(Path(wired[p]))
                print(f"  Port {p}: {'0503 power highspeed enable connect' if on else '0000 off'}")

        show("Current status")
        if action is None:
            continue
        act = {"0": "off", "1": "on", "2": "cycle", "3": "toggle"}.get(action, action)
        if act not in ("on", "off", "cycle", "toggle"):
            print(f"uhubctl: invalid action {action!r} (on, off, cycle, toggle)", file=sys.stderr)
            return 1
        for p in selected:
            bdir = wired[p]
            if act == "cycle":
                _switch(bdir, False)
                time.sleep(delay)
                _switch(bdir, True)
            else:
                want = (not power.is_on(Path(bdir))) if act == "toggle" else act == "on"
                _switch(bdir, want)
        print(f"Sent power {act} request")
        show("New status")
    return 0


def _gpio_args(args: list[str]) -> tuple[str | None, list[str], bool]:
    chip, rest, active_low = None, [], False
    it = iter(args)
    for arg in it:
        if arg in ("-c", "--chip"):
            chip = next(it, None)
        elif arg in ("-l", "--active-low"):
            active_low = True
        elif arg in ("-m", "--mode", "-s", "--sec", "-u", "--usec", "-t", "--toggle",
                     "-p", "--hold-period", "-C", "--consumer", "-b", "--bias", "-d", "--drive"):
            if not arg.startswith("--") or arg in ("--mode", "--sec", "--usec"):
                next(it, None)
        elif arg.startswith("-"):
            continue
        else:
            rest.append(arg)
    if chip is None and rest and "=" not in rest[0]:
        chip = rest.pop(0)
    return chip, rest, active_low


def gpioset(args: list[str]) -> int:
    chip, assignments, active_low = _gpio_args(args)
    chips = _map()["gpio"]
    chip = chip or next(iter(chips))
    if chip not in chips:
        print(f"gpioset: cannot find GPIO chip {chip!r}", file=sys.stderr)
        return 1
    if not assignments:
        print("gpioset: at least one GPIO line offset to value mapping must be specified",
              file=sys.stderr)
        return 1
    for assignment in assignments:
        line, _, value = assignment.partition("=")
        if line not in chips[chip] or value not in ("0", "1", "active", "inactive", "on", "off"):
            print(f"gpioset: invalid line or value: {assignment!r}", file=sys.stderr)
            return 1
        on = value in ("1", "active", "on")
        _switch(chips[chip][line], on != active_low)
    return 0


def gpioget(args: list[str]) -> int:
    chip, lines, active_low = _gpio_args(args)
    chips = _map()["gpio"]
    chip = chip or next(iter(chips))
    if chip not in chips or not lines or any(l not in chips[chip] for l in lines):
        print(f"gpioget: invalid chip or lines: {chip} {' '.join(lines)}", file=sys.stderr)
        return 1
    print(" ".join(str(int(power.is_on(Path(chips[chip][l])) != active_low)) for l in lines))
    return 0


def labfleet_switch(args: list[str]) -> int:
    """pdudaemon's localcmdline target: labfleet-switch pdu PDU PORT on|off."""
    if len(args) != 4 or args[0] != "pdu" or args[3] not in ("on", "off"):
        print("usage: labfleet-switch pdu PDU PORT on|off", file=sys.stderr)
        return 2
    wired = _map()["pdu"].get(args[1], {})
    if args[2] not in wired:
        print(f"PDU {args[1]} has no port {args[2]}", file=sys.stderr)
        return 1
    _switch(wired[args[2]], args[3] == "on")
    return 0


def labfleet_flash(args: list[str]) -> int:
    """labfleet-flash BOARD IMAGE: write the card (board must be off), verify by SHA-256."""
    if len(args) != 2:
        print("usage: labfleet-flash BOARD IMAGE", file=sys.stderr)
        return 2
    boards = _map()["boards"]
    if args[0] not in boards:
        print(f"no board {args[0]!r} on this station (boards: {', '.join(boards)})",
              file=sys.stderr)
        return 1
    bdir = Path(boards[args[0]])
    image = Path(args[1])
    if not image.is_file():
        print(f"image {image} not found", file=sys.stderr)
        return 1
    with power._lock(bdir):
        link = Path(json.loads((bdir / "board.json").read_text())["sd_link"])
        if power.is_on(bdir) or not link.is_symlink():
            print(f"{args[0]} is powered on: its SD card belongs to the board; switch it off "
                  "first", file=sys.stderr)
            return 1
        data = image.read_bytes()
        with open(link, "r+b") as card:
            card.write(data)
            card.truncate(max(len(data), os.fstat(card.fileno()).st_size))
            card.flush()
            os.fsync(card.fileno())
        with open(link, "rb") as card:
            written = card.read(len(data))
    digest = hashlib.sha256(data).hexdigest()
    if hashlib.sha256(written).hexdigest() != digest:
        print(f"verification failed writing {args[0]}", file=sys.stderr)
        return 1
    print(f"{args[0]}: wrote {len(data)} bytes, sha256 {digest}")
    return 0


def main(tool: str, args: list[str]) -> int:
    handler = {"uhubctl": uhubctl, "gpioset": gpioset, "gpioget": gpioget,
               "labfleet-switch": labfleet_switch, "labfleet-flash": labfleet_flash}[tool]
    try:
        return handler(args)
    except power.PowerError as exc:
        print(str(exc), file=sys.stderr)
        return 1
