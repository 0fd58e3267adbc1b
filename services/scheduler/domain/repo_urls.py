"""Which repository URLs a build may fetch.

``git clone`` on a build server takes more than network URLs: ``file://`` (or a bare
path) reads any repository on that server, other builds' mirrors included, and
``ext::`` runs a command.  So labfleet accepts only the schemes an admin allows,
``LABFLEET_BUILD_ALLOWED_URL_SCHEMES`` (default ``https,http,git,ssh``); the scp-like
form ``user@host:path`` counts as ``ssh``.  Checked by the scheduler on every submission
and by the gateway before it asks.
"""
from __future__ import annotations

import re

from labfleet.shared.events.envelope import ErrorInfo

DEFAULT_ALLOWED = "https,http,git,ssh"

#: ``scheme://…`` and git's ``transport::address`` forms
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)(://|::)")
#: git's scp-like syntax: ``[user@]host:path``, no slash before the first colon
_SCP_LIKE = re.compile(r"^(?:[^@/:\s]+@)?[^@/:\s]+:(?!//)")


def allowed_schemes(setting: str | list[str] | frozenset[str] | None) -> frozenset[str]:
    """The setting's comma-separated schemes, lower-cased (``None``: the default)."""
    if setting is None:
        setting = DEFAULT_ALLOWED
    items = setting.split(",") if isinstance(setting, str) else list(setting)
    return frozenset(s.strip().lower() for s in items if s.strip())


def scheme_of(url: str) -> str:
    """The scheme git would use for ``url``: ``https``, ``ext``, ``file`` (a bare path),
    ``ssh`` for ``user@host:path``."""
    found = _SCHEME.match(url)
    if found:
        return found.group(1).lower()
    if _SCP_LIKE.match(url):
        return "ssh"
    return "file"


def url_refusal(url: str, allowed: frozenset[str]) -> ErrorInfo | None:
    """Why ``url`` may not be fetched, or None when its scheme is allowed."""
    scheme = scheme_of(url.strip())
    if scheme in allowed:
        return None
    why = {"file": "a local path or file:// URL reads repositories on the build server "
                   "itself, other builds' mirrors included",
           "ext": "an ext:: URL runs a command on the build server"}.get(
        scheme, f"the {scheme} scheme is not among the allowed ones")
    return ErrorInfo(
        code="url_scheme_refused", field="repo_url",
        message=f"repo_url {url!r} is refused: {why}",
        hint=f"use one of {', '.join(sorted(allowed)) or 'no scheme (none allowed)'}; an "
             "admin may allow more with LABFLEET_BUILD_ALLOWED_URL_SCHEMES",
        details={"scheme": scheme, "allowed": sorted(allowed)})
