"""SSH failures, each with the data needed to explain it and a stable ``code``."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SshError(Exception):
    host: str
    port: int
    detail: str = ""
    code: str = field(default="ssh_error", init=False)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"SSH to {self.host}:{self.port} failed: {self.detail}"

    @property
    def hint(self) -> str:
        return "check the address, port and credentials"


@dataclass
class HostUnreachable(SshError):
    code: str = field(default="unreachable", init=False)

    @property
    def message(self) -> str:
        return f"{self.host}:{self.port} is unreachable ({self.detail})"

    @property
    def hint(self) -> str:
        return "check the address and that the host is up and on the network"


@dataclass
class ConnectionRefused(SshError):
    code: str = field(default="connection_refused", init=False)

    @property
    def message(self) -> str:
        return f"{self.host}:{self.port} refused the connection (no SSH server on that port?)"

    @property
    def hint(self) -> str:
        return "check the SSH port and that sshd is running on the host"


@dataclass
class NotAnSshServer(SshError):
    """Something accepted the TCP connection but did not speak SSH (closed it, or sent no
    SSH greeting)."""

    code: str = field(default="not_ssh", init=False)

    @property
    def message(self) -> str:
        return (f"no SSH server answered on {self.host}:{self.port}: the connection was "
                f"accepted but {self.detail}")

    @property
    def hint(self) -> str:
        return "check the SSH port: another service listens on it, not sshd"


@dataclass
class ConnectTimeout(SshError):
    code: str = field(default="timeout", init=False)

    @property
    def message(self) -> str:
        return f"connecting to {self.host}:{self.port} timed out after {self.detail}"

    @property
    def hint(self) -> str:
        return "check that the host is up and that no firewall drops SSH"


@dataclass
class AuthenticationFailed(SshError):
    username: str = ""
    code: str = field(default="authentication_failed", init=False)

    @property
    def message(self) -> str:
        return f"{self.host}:{self.port} rejected the credentials for user {self.username!r}"

    @property
    def hint(self) -> str:
        return "check the user name and the password or private key"


@dataclass
class HostKeyMismatch(SshError):
    expected: str = ""
    presented: str = ""
    code: str = field(default="host_key_changed", init=False)

    @property
    def message(self) -> str:
        if not (self.expected and self.presented):
            # said only with both fingerprints in hand; without them it is unverified
            return (f"the host key of {self.host}:{self.port} could not be verified"
                    + (f": {self.detail}" if self.detail else ""))
        return (f"the host key of {self.host}:{self.port} changed: pinned {self.expected}, "
                f"presented {self.presented}")

    @property
    def hint(self) -> str:
        return ("if the host was reinstalled, compare the presented fingerprint with the one "
                "the host itself shows (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub on its "
                "console) and accept it: the host's page in the web UI (Host key), "
                "`labfleet resource accept-host-key ID --fingerprint SHA256:...`, or "
                "POST /api/v1/resources/{id}/host-key/accept; otherwise treat this as a "
                "possible interception and investigate")


@dataclass
class RemoteCommandFailed(SshError):
    argv: list[str] = field(default_factory=list)
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    code: str = field(default="command_failed", init=False)

    @property
    def message(self) -> str:
        tail = self.stderr.strip().splitlines()[-3:] if self.stderr else []
        return (f"`{' '.join(self.argv)}` on {self.host} exited with {self.exit_status}"
                + (f": {' / '.join(tail)}" if tail else ""))
