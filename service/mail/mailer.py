"""Email: render a .txt/.html pair from emails/, inline its CSS, hand the bytes to a transport."""
from __future__ import annotations

import email.policy
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import css_inline
from flask import current_app
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from . import transports

# service/emails is the top-level emails/ folder: a symlink in the source tree, copied into the wheel.
templates = Environment(
    loader=PackageLoader("service", "emails"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
# Headers are folded only past RFC 5322's hard limit: a List-Unsubscribe URL must stay one plain token.
POLICY = email.policy.default.clone(max_line_length=998)


def render_pair(name: str, **context) -> tuple[str, str]:
    """The text and HTML bodies of emails/<name>.txt|.html, CSS inlined into the HTML."""
    text = templates.get_template(f"{name}.txt").render(**context)
    html = templates.get_template(f"{name}.html").render(**context)
    return text, _inliner.inline(html)


def one_line(value: str) -> str:
    """Header-safe text: data never brings a CR or LF into a header."""
    return " ".join(str(value).split())


def sender() -> tuple[str, str]:
    """(display name, address) of MAIL_FROM."""
    display, address = parseaddr(current_app.config["MAIL_FROM"])
    return one_line(display), address or "newsletter@localhost"


def build(to_email: str, to_name: str, subject: str, text: str, html: str, headers: dict | None = None) -> EmailMessage:
    """A multipart/alternative message with safe headers (names RFC 2047-encoded by the policy)."""
    display, address = sender()
    message = EmailMessage(policy=POLICY)
    message["From"] = Address(display, addr_spec=address) if display else address
    message["To"] = Address(one_line(to_name), addr_spec=to_email) if to_name.strip() else to_email
    message["Subject"] = one_line(subject)
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = make_msgid(domain=address.rpartition("@")[2] or "localhost")
    for key, value in (headers or {}).items():
        message[key] = one_line(value)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send_message(message: EmailMessage, transport=None) -> None:
    own = transport is None
    transport = transport or transports.open_transport()
    try:
        wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))  # SMTP wants CRLF line ends
        transport.send(sender()[1], [parseaddr(str(message["To"]))[1]], wire)
    finally:
        if own:
            transport.close()
