"""Email over SMTP (stdlib ``smtplib`` in a thread; STARTTLS and login when configured)."""
from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage

from ..config import SmtpConfig


class DeliveryFailed(Exception):
    """A send that may work later (the peer is down, refused, or timed out)."""


class SmtpSender:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, recipients: list[str], subject: str, body: str) -> None:
        if not self.config.configured:
            raise DeliveryFailed("email is not configured: set LABFLEET_SMTP_HOST (and "
                                 "LABFLEET_SMTP_PORT, LABFLEET_SMTP_FROM) for the alerter")
        if not recipients:
            raise DeliveryFailed("the email target lists no recipient address")
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
        await asyncio.to_thread(self._send_blocking, message)

    def _send_blocking(self, message: EmailMessage) -> None:
        c = self.config
        try:
            with smtplib.SMTP(c.host or "", c.port, timeout=c.timeout_s) as smtp:
                if c.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if c.user and c.password is not None:
                    smtp.login(c.user, c.password.get_secret_value())
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(f"the SMTP server {c.host}:{c.port} refused the login of "
                                 f"{c.user!r} ({exc.smtp_code}); check LABFLEET_SMTP_USER "
                                 "and LABFLEET_SMTP_PASSWORD") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"sending email through {c.host}:{c.port} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
