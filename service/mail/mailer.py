"""Email: render a .txt/.html pair from emails/, inline its CSS, build the 7bit message, hand it to a transport."""
from __future__ import annotations

import secrets
from binascii import b2a_qp
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid, parseaddr

import css_inline
from flask import current_app
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from . import headers, transports

# service/emails is the top-level emails/ folder: a symlink in the source tree, copied into the wheel.
templates = Environment(
    loader=PackageLoader("service", "emails"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


def render_pair(name: str, **context) -> tuple[str, str]:
    """The text and HTML bodies of emails/<name>.txt|.html, CSS inlined into the HTML."""
    text = templates.get_template(f"{name}.txt").render(**context)
    html = templates.get_template(f"{name}.html").render(**context)
    return text, _inliner.inline(html)


def one_line(value: str) -> str:
    """Text on one line: data never brings a CR or LF into a header or a greeting."""
    return headers.plain(str(value))


def sender() -> tuple[str, str]:
    """(display name, address) of MAIL_FROM, an IDN domain as punycode (headers stay 7bit)."""
    display, address = parseaddr(current_app.config["MAIL_FROM"])
    local, _, domain = (address or "newsletter@localhost").rpartition("@")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return one_line(display), f"{local}@{domain}"


@dataclass(frozen=True)
class Mail:
    """A message ready for the wire: its envelope and its bytes (7bit, CRLF line ends)."""

    sender: str
    recipient: str  # the one address it goes to: never read back from a header
    data: bytes


def build(to_email: str, to_name: str, subject: str, text: str, html: str, extra: list[str] | None = None) -> Mail:
    """A multipart/alternative mail to one reader; every header line comes from the one encoder in headers."""
    display, address = sender()
    boundary = f"==kr{secrets.token_hex(8)}=="
    head = [
        headers.mailbox("From", display, address),
        headers.mailbox("To", to_name, to_email),
        headers.unstructured("Subject", subject),
        f"Date: {format_datetime(datetime.now(timezone.utc))}",
        f"Message-ID: {make_msgid(domain=address.rpartition('@')[2] or 'localhost')}",
        *(extra or []),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    data = b"".join([("\r\n".join(head) + "\r\n\r\n").encode("ascii"),
                     alternative_part(boundary, "plain", quoted_printable(_lf(text))),
                     alternative_part(boundary, "html", quoted_printable(_lf(html))),
                     f"--{boundary}--\r\n".encode("ascii")])
    return Mail(address, to_email, data)


def quoted_printable(text: str) -> bytes:
    """UTF-8 text as quoted-printable (7bit, lines of at most 76 characters), CRLF line ends."""
    return b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def alternative_part(boundary: str, subtype: str, encoded: bytes) -> bytes:
    """One text/<subtype> part of a multipart/alternative body, its content already quoted-printable."""
    return b"".join([
        f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
        encoded, b"" if encoded.endswith(b"\r\n") else b"\r\n",
    ])


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def send_message(mail: Mail, transport=None) -> None:
    own = transport is None
    transport = transport or transports.open_transport()
    try:
        transport.send(mail.sender, [mail.recipient], mail.data)
    finally:
        if own:
            transport.close()
