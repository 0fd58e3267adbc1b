"""``labfleet nats compose-secrets``: the keys and certificates docker-compose.yml mounts.

The compose deployment locks its bus as the embedded server of ``labfleet up`` does —
one NKEY per service, the server's ``authorization`` block rendered by the same
:class:`~labfleet.shared.natsauth.identities.IdentityStore` from the same policy table —
and adds TLS: clients reach the cluster over TLS, and the nodes route to each other with
mutual TLS (each presents a certificate of the deployment's own CA, and refuses a peer
that does not).

Written into ``--out`` (the folder and every file private, 0600)::

    <service>.nk             the service's seed; its container mounts only this one
    operator.password        the admin's password (bcrypt-hashed in auth.conf)
    external/<tool>.nk       one seed per ``--external`` tool
    auth.conf                the NATS authorization block (public keys, password hash)
    ca.pem                   the CA every client and node trusts
    server.pem, server-key.pem                 the client-facing certificate of all nodes
    cluster-<node>.pem, cluster-<node>-key.pem  each node's certificate on the routes

The CA's private key is not kept: nothing more is signed with it.  To change anything
(a new node, a key thought leaked), run the command again with ``--force`` and restart
every container.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from labfleet.shared.natsauth.identities import IdentityError, IdentityStore, _write_private
from labfleet.shared.natsauth.permissions import SERVICES

#: the NATS nodes of docker-compose.yml, by their names on the compose network
NATS_NODES = ("nats-1", "nats-2", "nats-3")
#: names a certificate is also valid for: a node's own monitoring and checks, and tests
LOCAL_NAMES = ("localhost", "127.0.0.1")
#: the uid:gid of the ``labfleet`` user in the image (Dockerfile); pass it to --owner
CONTAINER_OWNER = "10001:10001"
CERT_DAYS = 825


class SecretsError(ValueError):
    """The secrets cannot be written as asked; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """The file names in a secrets folder (docker-compose.yml names the same)."""

    dir: Path

    def seed(self, service: str) -> Path:
        return self.dir / f"{service}.nk"

    @property
    def auth(self) -> Path:
        return self.dir / "auth.conf"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    def cluster_cert(self, node: str) -> Path:
        return self.dir / f"cluster-{node}.pem"

    def cluster_key(self, node: str) -> Path:
        return self.dir / f"cluster-{node}-key.pem"

    def files(self) -> list[Path]:
        """Every file the command writes (external seeds aside)."""
        store = IdentityStore(self.dir)
        return [*(self.seed(s) for s in SERVICES), store.operator_password_path, self.auth,
                self.ca, self.server_cert, self.server_key,
                *(p for n in NATS_NODES for p in (self.cluster_cert(n), self.cluster_key(n)))]


# ---- certificates -------------------------------------------------------------------


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject, issuer, public_key):  # type: ignore[no-untyped-def]
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS)))


def new_ca():  # type: ignore[no-untyped-def]
    """A CA certificate and its key (the key is used here and dropped)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    name = _name("labfleet NATS CA")
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, common_name: str, names: Iterable[str], *,  # type: ignore[no-untyped-def]
          client: bool = False):
    """A certificate for ``names`` (DNS names or IP addresses), signed by the CA: a
    server's, and also a TLS client's when ``client`` (a node dialling a route)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    key = _key()
    cert = (_builder(_name(common_name), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


# ---- the folder ---------------------------------------------------------------------


def parse_owner(owner: str) -> tuple[int, int]:
    uid, sep, gid = owner.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise SecretsError(f"--owner {owner!r}: give numeric UID:GID, e.g. {CONTAINER_OWNER} "
                           "(the labfleet user of the image)")
    return int(uid), int(gid)


def write_compose_secrets(out: Path, *, force: bool = False, owner: tuple[int, int] | None = None,
                          externals: Iterable[str] = ()) -> Layout:
    """Generate every secret of the compose deployment into ``out`` (see the module)."""
    layout = Layout(out)
    present = [p.name for p in layout.files() if p.exists()]
    if (out / "external").is_dir():
        present += [f"external/{p.name}" for p in (out / "external").glob("*.nk")]
    if present and not force:
        raise SecretsError(
            f"{out} already holds compose secrets ({', '.join(sorted(present)[:4])}"
            f"{', …' if len(present) > 4 else ''}); nothing was changed. Pass --force to "
            "replace all of them (then restart every container), or choose another --out")
    store = IdentityStore(out)
    for tool in externals:
        store.external_path(tool)  # checks the name before anything is written
    for path in layout.files():
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "external", ignore_errors=True)

    store.ensure()  # a seed per service and the operator's password, 0600 in a 0700 folder
    for tool in externals:
        store.add_external(tool)
    _write_private(layout.auth, store.authorization())

    ca_cert, ca_key = new_ca()
    _write_private(layout.ca, _pem_cert(ca_cert))
    cert, key = issue(ca_cert, ca_key, "labfleet NATS", [*NATS_NODES, *LOCAL_NAMES])
    _write_private(layout.server_cert, _pem_cert(cert))
    _write_private(layout.server_key, _pem_key(key))
    for node in NATS_NODES:
        cert, key = issue(ca_cert, ca_key, f"labfleet NATS route {node}", [node, *LOCAL_NAMES],
                          client=True)
        _write_private(layout.cluster_cert(node), _pem_cert(cert))
        _write_private(layout.cluster_key(node), _pem_key(key))

    if owner is not None:
        written = [out, *layout.files()]
        if (out / "external").is_dir():
            written += [out / "external", *(out / "external").glob("*.nk")]
        try:
            for path in written:
                os.chown(path, *owner)
        except PermissionError:
            raise SecretsError(
                f"the secrets are written, but cannot be given to uid:gid "
                f"{owner[0]}:{owner[1]} (changing a file's owner needs root): run `sudo chown "
                f"-R {owner[0]}:{owner[1]} {out}`, or this command again with sudo and --force"
            ) from None
    return layout


def compose_secrets(
    out: Annotated[Path, typer.Option("--out", help="the folder to write (docker-compose.yml "
                                      "reads ./secrets beside it)")],
    force: Annotated[bool, typer.Option("--force", help="replace secrets already in the "
                                        "folder (restart every container afterwards)")] = False,
    owner: Annotated[str | None, typer.Option(
        "--owner", help=f"UID:GID to own the files; the containers' user is {CONTAINER_OWNER} "
        "(needs root)")] = None,
    external: Annotated[list[str] | None, typer.Option(
        "--external", help="also issue an identity to this external tool (repeatable): may "
        "publish job.* and read the public event streams")] = None,
) -> None:
    """Generate the compose deployment's NATS identities, auth.conf and TLS certificates."""
    try:
        owned = parse_owner(owner) if owner is not None else None
        layout = write_compose_secrets(out, force=force, owner=owned, externals=external or ())
    except (SecretsError, IdentityError) as exc:
        typer.echo(f"labfleet nats compose-secrets: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a folder owned by the containers' user, a file in the way
        typer.echo(f"labfleet nats compose-secrets: cannot write {exc.filename or out}: "
                   f"{exc.strerror or exc} (a folder given to another --owner needs sudo)",
                   err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote the compose deployment's secrets to {layout.dir} (every file 0600): "
               f"{len(SERVICES)} service seeds, the operator's password, auth.conf, the CA "
               f"and the certificates of {', '.join(NATS_NODES)}")
    if owned is None and f"{os.getuid()}:{os.getgid()}" != CONTAINER_OWNER:
        typer.echo(f"the services' containers run as {CONTAINER_OWNER} and cannot read files "
                   f"owned by you: pass --owner {CONTAINER_OWNER} (as root), or `sudo chown -R "
                   f"{CONTAINER_OWNER} {layout.dir}`")
    for tool in external or ():
        typer.echo(f"external identity {tool!r}: {IdentityStore(layout.dir).external_path(tool)} "
                   "(give it to the tool; it is its password)")
