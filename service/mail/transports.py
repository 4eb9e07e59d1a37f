"""Transports that hand a message to the world: SMTP (one connection kept open, pipelined envelopes, paced to
SEND_RATE and renewed every SMTP_MESSAGES_PER_CONNECTION messages), or .eml files in the instance folder (the
embedded default)."""
from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import smtplib
import socket
import ssl
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app

from . import pacing

log = logging.getLogger(__name__)
_UNSAFE_IN_PATH = re.compile(r"[<>\s]")
ENVELOPE_ACCEPTS = ((250,), (250, 251), (354,))  # MAIL, RCPT, DATA
_LINK = re.compile(r"""https?://[^\s"'<>]+""")


THROTTLING = (421, 454)  # "closing the channel" and SES' "Throttling failure": the server's state, at any step


class DeliveryError(Exception):
    """The SMTP server refused a message: `code` says whether to retry (4xx) or give up (5xx); `throttled`, a
    4xx about the server or the sender rather than this recipient (421, a 4xx to MAIL FROM or to the end of
    data: a provider's rate or quota), says that the next messages would be refused too."""

    def __init__(self, code: int, message: str = "", throttled: bool = False):
        super().__init__(f"{code} {message}".strip())
        self.code = code
        self.throttled = throttled and not self.permanent or code in THROTTLING

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


def open_transport():
    config = current_app.config
    if config.get("SMTP_URL"):
        return SMTPTransport(config["SMTP_URL"], timeout=config.get("SMTP_TIMEOUT") or 10,
                             pacer=pacing.for_app(),
                             messages_per_connection=config.get("SMTP_MESSAGES_PER_CONNECTION") or 0)
    return FileTransport(Path(current_app.instance_path) / "outbox")


class FileTransport:
    """The embedded default: each message becomes an .eml file, its links (decoded) written to the log."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mails hold live sign-in and article links

    def send(self, from_addr: str, to_addrs: list[str], message: bytes) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = self.folder / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as stream:
            stream.write(message)
        log.warning("email to %s written to %s; links: %s", ", ".join(to_addrs), path, " ".join(links_in(message)))

    def deliver(self, from_addr: str, to_addr: str, message: bytes, commit) -> None:
        """Like SMTPTransport.deliver: `commit()` runs right before the message is handed over, which here is
        the rename of a file written whole (a full disk fails the write, before any hand-over), and what it
        returns, when not None, right after."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.folder / f".{name}.part"
        try:
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as stream:
                stream.write(message)
            handed_over = commit()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.rename(partial, self.folder / name)
        if handed_over is not None:
            handed_over()
        log.warning("email to %s written to %s; links: %s", to_addr, self.folder / name, " ".join(links_in(message)))

    def close(self) -> None:
        pass


def links_in(message: bytes) -> list[str]:
    """The links in a message's text parts as a reader would follow them: transfer encoding undone."""
    found: set[str] = set()
    for part in email.message_from_bytes(message, policy=email.policy.default).walk():
        if part.get_content_maintype() == "text":
            found.update(_LINK.findall(part.get_content()))
    return sorted(found)


class SMTPTransport:
    """One SMTP connection kept open across sends, reopened when the server drops it, and renewed (QUIT, then
    a new one) after `messages_per_connection` messages when that is set; each message waits for its slot of
    the shared send rate when `pacer` is given."""

    def __init__(self, url: str, timeout: float = 30, pacer: pacing.RedisPacer | pacing.LocalPacer | None = None,
                 messages_per_connection: int = 0):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("KEEPREADING_SMTP_URL must start with smtp:// or smtps://")
        self.host = parts.hostname or "localhost"
        self.ssl = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.ssl else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.timeout = timeout
        self.pacer = pacer
        self.messages_per_connection = messages_per_connection
        self.on_connection = 0  # messages the server took on this connection
        self.connection: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        if self.connection is None:
            connection: smtplib.SMTP
            if self.ssl:
                connection = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                              context=ssl.create_default_context())
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.starttls:
                    connection.starttls(context=ssl.create_default_context())
            # The final "." goes out as its own small write after the content: with Nagle on it would wait
            # for the server's delayed ACK (~40 ms a message on Linux).
            assert connection.sock is not None  # the constructor connected: it was given a host
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.username:
                connection.login(self.username, self.password or "")
            self.connection = connection
            self.on_connection = 0
        return self.connection

    def _taken(self) -> None:
        """One more message on this connection; past the limit, QUIT so that the next opens a new one."""
        self.on_connection += 1
        if self.messages_per_connection and self.on_connection >= self.messages_per_connection:
            self.close()

    def _pace(self) -> None:
        if self.pacer is not None:
            self.pacer.wait()

    def send(self, from_addr: str, to_addrs: list[str], message: bytes) -> None:
        """Send once; on a dropped connection reconnect and send once more. Refusals raise DeliveryError."""
        self._pace()
        for attempt in (1, 2):
            try:
                refused = self.connect().sendmail(from_addr, to_addrs, message)
            except smtplib.SMTPServerDisconnected:
                self.connection = None
                if attempt == 2:
                    raise
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                raise DeliveryError(code, _text(text)) from None
            except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
                self._reset()
                raise DeliveryError(exc.smtp_code, _text(exc.smtp_error), throttled=True) from None
            if refused:
                code, text = next(iter(refused.values()))
                raise DeliveryError(code, _text(text))
            self._taken()
            return

    def deliver(self, from_addr: str, to_addr: str, message: bytes, commit) -> None:
        """One message to one recipient; `commit()` runs after the content is sent and before the final
        "." that makes the server take it, so the caller can record the hand-over first (and raise to
        abandon it: the server then drops the unfinished message); what it returns, when not None, is
        called as soon as the "." is written. Refusals raise DeliveryError; a connection lost after the
        "." raises SMTPServerDisconnected, the message then probably taken."""
        self._pace()
        connection = self._ready_for_data(from_addr, to_addr)
        try:
            connection.send(_dot_stuffed(message))
            dot_written = commit()
        except BaseException:
            self._drop()
            raise
        connection.send(b".\r\n")
        if dot_written is not None:
            dot_written()
        code, reply = connection.getreply()
        if code != 250:
            if code == 421:
                self._drop()
            raise DeliveryError(code, _text(reply), throttled=True)
        self._taken()

    def _ready_for_data(self, from_addr: str, to_addr: str) -> smtplib.SMTP:
        """MAIL, RCPT and DATA answered 354; a connection the server had dropped is reopened once."""
        for attempt in (1, 2):
            connection = self.connect()
            try:
                self._envelope(connection, from_addr, to_addr)
                return connection
            except smtplib.SMTPServerDisconnected:
                self.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _envelope(self, connection: smtplib.SMTP, from_addr: str, to_addr: str) -> None:
        """MAIL, RCPT, DATA: in one write when the server offers PIPELINING (RFC 2920), else one by one."""
        connection.ehlo_or_helo_if_needed()
        commands = [f"MAIL FROM:{_path(from_addr)}", f"RCPT TO:{_path(to_addr)}", "DATA"]
        if connection.has_extn("pipelining"):
            connection.send("".join(f"{command}\r\n" for command in commands))
            replies = [connection.getreply() for _ in commands]
        else:
            replies = []
            for command, accepted in zip(commands, ENVELOPE_ACCEPTS, strict=True):
                replies.append(connection.docmd(command))
                if replies[-1][0] not in accepted:
                    break
        # replies stops at the first refusal when the commands went one by one
        refusal = next(((step, code, reply) for step, ((code, reply), accepted)
                        in enumerate(zip(replies, ENVELOPE_ACCEPTS, strict=False)) if code not in accepted), None)
        if refusal is not None:
            step, code, reply = refusal
            if code == 421 or replies[-1][0] == 354:  # the server is closing, or waits for content
                self._drop()
            else:
                self._reset()
            raise DeliveryError(code, _text(reply), throttled=step != 1)  # only RCPT's answer is about the reader

    def _drop(self) -> None:
        """Close without QUIT: an unfinished DATA is discarded by the server."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _reset(self) -> None:
        try:
            if self.connection is not None:
                self.connection.rset()
        except smtplib.SMTPException:
            self.close()

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.connection = None


def _dot_stuffed(message: bytes) -> bytes:
    """DATA content as RFC 5321 wants it: CRLF line ends, leading dots doubled, ending in CRLF."""
    line_ends = message.count(b"\r\n")
    if message.count(b"\n") != line_ends or message.count(b"\r") != line_ends:  # a bare CR or LF somewhere
        message = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", message)
    data = message.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _path(address: str) -> str:
    """`<address>` for MAIL and RCPT; anything unusual goes through smtplib's own quoting."""
    if address.isascii() and not _UNSAFE_IN_PATH.search(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
