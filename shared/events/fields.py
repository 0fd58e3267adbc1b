"""String fields every API and event model shares, each refusing bad input with a message
that names what is wrong and what to write instead.

* :data:`PlainString` — one line of text: no NUL or other control characters (PostgreSQL
  refuses NUL in text), surrounding white space stripped.
* :data:`Text` — free text (reasons, descriptions): newlines and tabs allowed, no NUL or
  other control characters.
* :data:`Name` — a non-empty :data:`PlainString` of at most 253 characters.
* :data:`Hostname` — a resource's name: an IP literal or an ASCII host name (letters,
  digits, ``-``, ``_``, dots), no white space, lower-cased so names compare without case.
  Never resolved.
* :data:`Address` — where a host is reached: an IP literal in canonical form (IPv4 short
  forms such as ``10.231.11`` become ``10.231.0.11``; IPv6 compressed) or an ASCII host
  name, lower-cased.  Never resolved.
* :data:`Fingerprint` — an SSH host key fingerprint, ``SHA256:`` and 43 base64 characters,
  as ``ssh-keygen -l`` prints it (a bare base64 digest gets the prefix).

The functions behind them (:func:`canonical_address`, …) are usable on their own, e.g. by
the pages' forms and by a service normalising stored rows.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

#: the characters that are never part of a field's text (newline and tab only in Text)
_LINE_BREAKS = frozenset("\n\t\r")

#: one label of an ASCII host name (underscores are tolerated: lab names use them)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _control_characters(value: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    return [c for c in value
            if c not in allowed and unicodedata.category(c) in ("Cc", "Cs")]


def _refuse_control(value: str, allowed: frozenset[str] = frozenset()) -> None:
    bad = _control_characters(value, allowed)
    if not bad:
        return
    shown = ", ".join(sorted({f"U+{ord(c):04X}" for c in bad}))
    if "\x00" in bad:
        raise ValueError(f"must not contain a NUL character ({shown}); send plain text")
    raise ValueError(f"must not contain control characters ({shown}); send plain text")


def plain_string(value: str) -> str:
    """``value`` stripped, refused when it holds a NUL or another control character."""
    _refuse_control(value)
    return value.strip()


def text(value: str) -> str:
    """Free text: newlines and tabs allowed, NUL and other control characters refused."""
    _refuse_control(value, _LINE_BREAKS)
    return value


def name(value: str) -> str:
    value = plain_string(value)
    if not value:
        raise ValueError("must not be empty")
    return value


def _ip_literal(value: str) -> str | None:
    """The canonical form of an IP literal, None when ``value`` is not one."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if ":" in inner:
        try:
            return ipaddress.IPv6Address(inner).compressed
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid IPv6 address ({exc})") from None
    parts = inner.split(".")
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return _ipv4_short_form(inner, parts)


def _ipv4_short_form(value: str, parts: list[str]) -> str:
    """``a``, ``a.b``, ``a.b.c`` or ``a.b.c.d`` (decimal, the last part filling the rest
    of the 32 bits, as the BSD resolver reads them) in dotted-quad form."""
    if len(parts) > 4:
        raise ValueError(f"{value!r} is not an IPv4 address: more than four parts")
    if any(len(p) > 1 and p.startswith("0") for p in parts):
        raise ValueError(f"{value!r}: a part with a leading zero is read as octal by some "
                         "tools; write the address without leading zeros")
    numbers = [int(p) for p in parts]
    head, last = numbers[:-1], numbers[-1]
    if any(n > 255 for n in head) or last >= 1 << (8 * (5 - len(parts))):
        raise ValueError(f"{value!r} is not an IPv4 address: a part is out of range")
    packed = 0
    for n in head:
        packed = packed << 8 | n
    packed = packed << (8 * (5 - len(parts))) | last
    return str(ipaddress.IPv4Address(packed))


def _host_name(value: str, what: str) -> str:
    if not value.isascii():
        raise ValueError(f"{what} {value!r} must be an IP address or an ASCII host name "
                         "(write an internationalised name in its xn-- form)")
    host = value.lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{what} {value!r} is not a valid host name: use letters, digits, "
                         "'-' and '_' in dot-separated labels of 1-63 characters")
    if labels[-1].isdigit():
        raise ValueError(f"{what} {value!r} is neither an IPv4 address nor a host name")
    return host


def _no_white_space(value: str, what: str) -> str:
    _refuse_control(value)
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in value):
        raise ValueError(f"{what} must not contain white space")
    return value


def canonical_address(value: str) -> str:
    """An IP literal in canonical form, or a lower-cased ASCII host name (not resolved)."""
    value = _no_white_space(value, "address")
    return _ip_literal(value) or _host_name(value, "address")


def canonical_hostname(value: str) -> str:
    """A resource's name: lower-cased, no white space, an IP literal or an ASCII name."""
    value = _no_white_space(value, "hostname")
    return _ip_literal(value) or _host_name(value, "hostname")


#: the fingerprint's digest: SHA-256 is 32 bytes, 43 base64 characters without padding
_DIGEST_BYTES = 32


def canonical_fingerprint(value: str) -> str:
    """``SHA256:<base64>`` as ``ssh-keygen -l`` prints it (the prefix added when absent)."""
    value = plain_string(value)
    prefix, colon, digest = value.partition(":")
    if not colon:
        prefix, digest = "SHA256", value
    if prefix.upper() != "SHA256":
        raise ValueError(f"fingerprint {value!r} is not a SHA256 fingerprint; give it as "
                         "`ssh-keygen -lf` prints it: SHA256:<43 base64 characters>")
    try:
        raw = base64.b64decode(digest + "=" * (-len(digest) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_BYTES:
        raise ValueError(f"fingerprint {value!r} is malformed: expected SHA256: and 43 "
                         "base64 characters, as `ssh-keyscan HOST | ssh-keygen -lf -` "
                         "prints it")
    return "SHA256:" + digest.rstrip("=")


PlainString = Annotated[str, AfterValidator(plain_string)]
Text = Annotated[str, AfterValidator(text)]
Name = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(name)]
Hostname = Annotated[str, Field(min_length=1, max_length=253,
                                description="an IP address or an ASCII host name; "
                                            "compared without case"),
                     AfterValidator(canonical_hostname)]
Address = Annotated[str, Field(min_length=1, max_length=253,
                               description="IP address or DNS name to reach it"),
                    AfterValidator(canonical_address)]
Fingerprint = Annotated[str, Field(description="SHA256:<base64>, as ssh-keygen -l prints it",
                                   max_length=100),
                        AfterValidator(canonical_fingerprint)]
