"""NATS identities on disk, the server's ``authorization`` block, and how a client logs in.

Every service has an NKEY: the seed (its private half) in ``<dir>/<service>.nk``, mode
0600, the public key in the server's configuration, so the server holds no secret and
no password crosses the wire (the server signs a nonce challenge).  External tooling gets
one NKEY per tool in ``<dir>/external/<tool>.nk``.  The lab admin's own identity,
``operator``, is a user name and password (``<dir>/operator.password``, bcrypt-hashed in
the server's configuration) because operators and scripts pass it as ``nats://`` URL or
``--user/--password`` the way every NATS tool does.

Layout (``labfleet up``: ``<data_dir>/nats/identities``; compose: one secret each)::

    inventory.nk  monitor.nk  …  gateway.nk     one seed per service (0600)
    operator.password                            the admin's password (0600)
    external/<tool>.nk                           one seed per external tool (0600)
"""
from __future__ import annotations

import json
import os
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .permissions import (
    EXTERNAL,
    OPERATOR,
    SERVICES,
    Grant,
    external_grant,
    grants,
    inbox_prefix,
    operator_grant,
)

TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class IdentityError(ValueError):
    """A name or file that cannot be an identity; the message says what to do."""


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def new_seed() -> str:
    """A fresh user NKEY seed (``SU…``)."""
    import nkeys

    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    import nkeys

    try:
        return nkeys.from_seed(seed.strip().encode()).public_key.decode()
    except Exception as exc:  # nkeys raises its own error types, and binascii's
        raise IdentityError(f"not an NKEY user seed ({type(exc).__name__}): the file must "
                            "hold one line starting with SU") from None


def check_tool_name(name: str) -> str:
    if not TOOL_NAME.match(name):
        raise IdentityError(f"external identity name {name!r}: use 1-63 lower-case letters, "
                            "digits, '-' and '_', starting with a letter or digit (ci-bot)")
    return name


@dataclass
class IdentityStore:
    """The identities of one deployment, in one private folder."""

    dir: Path

    def seed_path(self, name: str) -> Path:
        return self.dir / f"{name}.nk"

    def external_path(self, tool: str) -> Path:
        return self.dir / "external" / f"{check_tool_name(tool)}.nk"

    @property
    def operator_password_path(self) -> Path:
        return self.dir / "operator.password"

    def ensure(self) -> None:
        """Create every missing service seed and the operator's password."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        for name in SERVICES:
            if not self.seed_path(name).exists():
                _write_private(self.seed_path(name), new_seed() + "\n")
        if not self.operator_password_path.exists():
            _write_private(self.operator_password_path, secrets.token_urlsafe(24) + "\n")

    def operator_password(self) -> str:
        return self.operator_password_path.read_text().strip()

    def add_external(self, tool: str) -> Path:
        path = self.external_path(tool)
        if path.exists():
            raise IdentityError(f"external identity {tool!r} exists already ({path}); remove "
                                "it first to issue a new key")
        _write_private(path, new_seed() + "\n")
        return path

    def remove_external(self, tool: str) -> None:
        path = self.external_path(tool)
        if not path.exists():
            raise IdentityError(f"no external identity named {tool!r}; `labfleet nats "
                                "identities` lists them")
        path.unlink()

    def externals(self) -> dict[str, str]:
        """Tool name → public key."""
        folder = self.dir / "external"
        if not folder.is_dir():
            return {}
        return {p.stem: public_key(p.read_text()) for p in sorted(folder.glob("*.nk"))}

    def service_public_keys(self) -> dict[str, str]:
        return {name: public_key(self.seed_path(name).read_text()) for name in SERVICES
                if self.seed_path(name).exists()}

    def authorization(self, *, artifact_bucket: str = "artifacts") -> str:
        """The server's ``authorization { … }`` block for every identity here."""
        import bcrypt

        users: list[dict[str, Any]] = []
        service_grants = grants(artifact_bucket=artifact_bucket)
        for name, key in self.service_public_keys().items():
            users.append({"nkey": key, "permissions": service_grants[name].to_config()})
        for _tool, key in self.externals().items():
            users.append({"nkey": key, "permissions": external_grant().to_config()})
        hashed = bcrypt.hashpw(self.operator_password().encode(), bcrypt.gensalt(10)).decode()
        users.append({"user": OPERATOR, "password": hashed,
                      "permissions": operator_grant().to_config()})
        return render_authorization(users)


def render_authorization(users: list[dict[str, Any]]) -> str:
    """NATS configuration syntax accepts JSON values; every string is quoted, so ``$JS…``
    subjects are never read as variables."""
    body = ",\n    ".join(json.dumps(u, separators=(", ", ": ")) for u in users)
    return f"authorization {{\n  users: [\n    {body}\n  ]\n}}\n"


# ---- clients ------------------------------------------------------------------------


def strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


def with_password(url: str, user: str, password: str) -> str:
    parts = urlsplit(strip_userinfo(url))
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def seed_file_for(settings: Any, identity: str) -> Path | None:
    """The seed a process logs in with: ``LABFLEET_NATS_SEED_FILE``, else the identity's
    file in ``LABFLEET_NATS_IDENTITY_DIR``; None when neither is given."""
    if settings.nats_seed_file:
        return Path(settings.nats_seed_file)
    if settings.nats_identity_dir:
        path = Path(settings.nats_identity_dir) / f"{identity}.nk"
        given_login = any(urlsplit(u.strip()).username for u in (settings.nats_url or "").split(","))
        if not path.exists() and given_login:
            return None  # not one of labfleet's services: it logs in as the URL says
        if not path.exists():
            raise IdentityError(f"no NATS identity for {identity!r}: {path} does not exist "
                                "(`labfleet up` creates the services' identities in its data "
                                "directory; set LABFLEET_NATS_SEED_FILE to give one)")
        return path
    return None


def tls_context(settings: Any) -> ssl.SSLContext | None:
    if not getattr(settings, "nats_tls_ca_file", None):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.nats_tls_ca_file))
    return ctx


def connect_options(settings: Any, identity: str) -> tuple[list[str], dict[str, Any]]:
    """Servers and nats-py options for ``identity`` (a service name, usually)."""
    servers = [u.strip() for u in settings.require_nats().split(",") if u.strip()]
    # the name shows in the server's log next to any permissions violation
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(identity),
                               "name": f"labfleet-{identity}"}
    seed = seed_file_for(settings, identity)
    if seed is not None:
        options["nkeys_seed"] = str(seed)
        servers = [strip_userinfo(u) for u in servers]
    tls = tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return servers, options


__all__ = ["EXTERNAL", "OPERATOR", "Grant", "IdentityError", "IdentityStore", "check_tool_name",
           "connect_options", "new_seed", "public_key", "render_authorization", "seed_file_for",
           "strip_userinfo", "tls_context", "with_password"]
