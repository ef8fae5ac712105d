"""Delivery by SMTP (smtplib): optional STARTTLS and AUTH. Settings come from the environment,
never from the plan or the run state, so the password is not written anywhere."""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

from upgrader.errors import InfraError, InputError
from upgrader.notify.delivery import DeliveryRefused

ENV_PREFIX = "UPGRADER_SMTP_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True, repr=False)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = None  # from UPGRADER_SMTP_PASSWORD or password_file; never stored in state
    timeout: float = 30
    password_file: Path | None = None
    local_hostname: str | None = None  # EHLO name; None: smtplib's default (the FQDN)
    allow_plaintext_auth: bool = False  # AUTH without STARTTLS: the password would cross the network in clear

    def __repr__(self) -> str:
        secret = "***" if self.password is not None else None
        return (
            f"SmtpSettings(host={self.host!r}, port={self.port}, starttls={self.starttls}, user={self.user!r}, "
            f"password={secret!r}, timeout={self.timeout}, password_file={self.password_file!r}, "
            f"local_hostname={self.local_hostname!r}, allow_plaintext_auth={self.allow_plaintext_auth})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SmtpSettings:
        """UPGRADER_SMTP_HOST, _PORT, _STARTTLS (1/true/yes), _USER, _PASSWORD, _PASSWORD_FILE,
        _TIMEOUT (seconds), _HELO, _ALLOW_PLAINTEXT_AUTH (1/true/yes). Bad values are InputError
        naming the variable."""

        def get(name: str) -> str | None:
            value = environ.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        kwargs: dict[str, object] = {}
        if (host := get("HOST")) is not None:
            kwargs["host"] = host
        if (port := get("PORT")) is not None:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise InputError(f"{ENV_PREFIX}PORT must be a port number 1..65535, got {port!r}")
            kwargs["port"] = int(port)
        kwargs["starttls"] = _flag(environ, "STARTTLS")
        kwargs["allow_plaintext_auth"] = _flag(environ, "ALLOW_PLAINTEXT_AUTH")
        if (timeout := get("TIMEOUT")) is not None:
            try:
                kwargs["timeout"] = float(timeout)
            except ValueError:
                raise InputError(f"{ENV_PREFIX}TIMEOUT must be seconds, got {timeout!r}") from None
        if (helo := get("HELO")) is not None:
            kwargs["local_hostname"] = helo
        user, password, password_file = get("USER"), get("PASSWORD"), get("PASSWORD_FILE")
        if password is not None and password_file is not None:
            raise InputError(f"both {ENV_PREFIX}PASSWORD and {ENV_PREFIX}PASSWORD_FILE are set", hint="set only one")
        settings = cls(user=user, password=password, password_file=Path(password_file) if password_file else None, **kwargs)  # type: ignore[arg-type]
        if settings.password_file is not None:  # read it now: a missing file is a setup error, not a failed send
            settings = replace(settings, password=settings.secret())
        if user is None and settings.password is not None:
            raise InputError(f"an SMTP password is set but {ENV_PREFIX}USER is not", hint=f"set {ENV_PREFIX}USER too")
        if user is not None and settings.password is None:
            raise InputError(
                f"{ENV_PREFIX}USER is set but no password",
                hint=f"set {ENV_PREFIX}PASSWORD or {ENV_PREFIX}PASSWORD_FILE",
            )
        return settings

    def secret(self) -> str | None:
        """The password: `password`, else the first line of `password_file`, else None."""
        if self.password is not None or self.password_file is None:
            return self.password
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the SMTP password file {self.password_file}: {exc}") from None
        return text.splitlines()[0] if text else ""


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = (environ.get(ENV_PREFIX + name) or "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise InputError(f"{ENV_PREFIX}{name} must be 1/true/yes or 0/false/no, got {value!r}")
    return value in _TRUE


class SmtpNotifier:
    """Notifier port over SMTP. One connection per message: notices are rare."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"SmtpNotifier({self.settings!r})"

    def send(self, message: EmailMessage) -> str:
        message_id = message.get("Message-ID")
        if not message_id:
            raise InputError("the message has no Message-ID", hint="build messages with upgrader.notify.render")
        s = self.settings
        where = f"SMTP server {s.host}:{s.port}"
        if s.user is not None and not s.starttls and not s.allow_plaintext_auth:
            raise DeliveryRefused(
                f"not logging in to {where} as {s.user!r} without TLS: the password would cross the network in clear",
                hint=f"set {ENV_PREFIX}STARTTLS=1 (the server must offer STARTTLS), or {ENV_PREFIX}ALLOW_PLAINTEXT_AUTH=1 "
                "if the path to the server is trusted (e.g. 127.0.0.1)",
            )
        try:
            with smtplib.SMTP(s.host, s.port, local_hostname=s.local_hostname, timeout=s.timeout) as smtp:
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.user is not None:
                    smtp.login(s.user, s.secret() or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryRefused(
                f"{where} refused the login of {s.user!r}: {exc.smtp_code} {_text(exc.smtp_error)}",
                hint=f"check {ENV_PREFIX}USER and the password",
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryRefused(
                f"{where} does not support what we asked for: {exc}",
                hint=f"unset {ENV_PREFIX}STARTTLS / {ENV_PREFIX}USER, or use a server that offers STARTTLS and AUTH",
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryRefused(f"{where}: TLS certificate not trusted: {exc.verify_message}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refusal(where, exc.recipients) from None
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, ...
            error = DeliveryRefused if 500 <= exc.smtp_code < 600 else InfraError
            raise error(f"{where} refused the message: {exc.smtp_code} {_text(exc.smtp_error)}") from None
        except (smtplib.SMTPException, OSError) as exc:  # connection refused, timeout, disconnect, TLS
            raise InfraError(
                f"cannot reach {where}: {exc or type(exc).__name__}",
                hint=f"check {ENV_PREFIX}HOST and {ENV_PREFIX}PORT and that the server accepts mail from this machine",
            ) from None
        if refused:
            raise _refusal(where, refused, delivered=True)
        return str(message_id)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _refusal(where: str, refused: Mapping[str, tuple[int, bytes]], *, delivered: bool = False) -> InfraError:
    detail = "; ".join(f"{rcpt}: {code} {_text(reply)}" for rcpt, (code, reply) in refused.items())
    prefix = "delivered to the other recipients, but " if delivered else ""
    if delivered or all(500 <= code < 600 for code, _ in refused.values()):
        return DeliveryRefused(f"{where}: {prefix}refused {detail}", hint="check the addresses in announce.to")
    return InfraError(f"{where}: recipients refused for now: {detail}")
