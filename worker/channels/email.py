"""Channel ``email``: one message over SMTP per attempt, with the settings' TLS and login.

The message carries the job in its ``Message-ID`` (``<job_id@domain>``, the same on every attempt, so mail
systems can drop a duplicate) and in ``X-Conveyor-Job-Id``. SMTP 4xx replies and lost connections are
transient; 5xx replies are permanent. When the server takes some recipients and refuses others, the message
was sent: the refused ones are listed in the result, and nobody gets it twice.
"""

from __future__ import annotations

import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from conveyor.schemas import EmailNotification
from conveyor.settings import Settings
from worker.channels import DeliveryError, Sent

JOB_HEADER = "X-Conveyor-Job-Id"


def message_id(job_id: str, sender: str) -> str:
    """The ``Message-ID`` of the job's message: the same on every attempt."""
    domain = sender.rpartition("@")[2] or "conveyor.invalid"
    return f"<{job_id}@{domain}>"


def build_message(settings: Settings, job_id: str, created_at: datetime, request: EmailNotification) -> EmailMessage:
    """The message: text, plus an HTML alternative when given (``multipart/alternative``)."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(request.to)
    message["Subject"] = request.subject
    message["Date"] = format_datetime(created_at)
    message["Message-ID"] = message_id(job_id, settings.smtp_from)
    message[JOB_HEADER] = job_id
    message.set_content(request.text)
    if request.html is not None:
        message.add_alternative(request.html, subtype="html")
    return message


def _text(code: int, reply: bytes | str) -> str:
    body = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {body}".strip()


def _open(settings: Settings) -> smtplib.SMTP:
    context = ssl.create_default_context()
    if settings.smtp_ssl:
        return smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout, context=context)
    smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
    if settings.smtp_starttls:
        try:
            smtp.starttls(context=context)
        except BaseException:
            smtp.close()
            raise
    return smtp


def _transfer(settings: Settings, smtp: smtplib.SMTP, request: EmailNotification, data: bytes) -> Sent:
    if settings.smtp_user:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        smtp.login(settings.smtp_user, password)
    smtp.ehlo_or_helo_if_needed()
    code, reply = smtp.mail(settings.smtp_from)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, settings.smtp_from)
    refused: dict[str, tuple[int, bytes]] = {}
    for address in request.to:
        code, reply = smtp.rcpt(address)
        if code not in (250, 251):
            refused[address] = (code, reply)
    if len(refused) == len(request.to):
        raise smtplib.SMTPRecipientsRefused(refused)
    code, reply = smtp.data(data)
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    accepted = [address for address in request.to if address not in refused]
    detail = {
        "accepted": accepted,
        "refused": {address: _text(*answer) for address, answer in refused.items()},
        "reply": _text(code, reply),
    }
    return Sent(code, _text(code, reply), detail)


def send(settings: Settings, job_id: str, created_at: datetime, request: EmailNotification) -> Sent:
    """Send the message once. Returns the server's acceptance; raises :class:`DeliveryError` otherwise."""
    message = build_message(settings, job_id, created_at, request)
    data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    try:
        with _open(settings) as smtp:
            sent = _transfer(settings, smtp, request, data)
    except smtplib.SMTPRecipientsRefused as exc:
        answers: dict[str, tuple[int, bytes]] = exc.recipients
        codes = [code for code, _reply in answers.values()]
        replies = "; ".join(f"{address}: {_text(*answer)}" for address, answer in answers.items())
        transient = any(400 <= code < 500 for code in codes)
        raise DeliveryError(
            f"SMTP refused every recipient ({replies})", transient=transient, status_code=codes[0], reply=replies
        ) from exc
    except smtplib.SMTPResponseException as exc:
        reply = _text(exc.smtp_code, exc.smtp_error)
        transient = not 500 <= exc.smtp_code < 600
        raise DeliveryError(f"SMTP {reply}", transient=transient, status_code=exc.smtp_code, reply=reply) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"SMTP server lacks a needed feature: {exc}", transient=False) from exc
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(f"SMTP server certificate refused: {exc}", transient=False) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP unreachable: {type(exc).__name__}: {exc}", transient=True) from exc
    return sent
