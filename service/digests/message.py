"""The digest email: rendered once per run and post set, then personalised per reader by substitution.

Templates are rendered with unique slot markers where per-reader text goes (greeting, signed links);
the rendered text and CSS-inlined HTML are split at those markers and quoted-printable encoded once,
but for the few lines that hold a marker. Each reader's message is then a join of the encoded parts
and of those lines filled and encoded, under headers built as bytes.

Subscribers may read every post, so a digest carries each post's full text (the publisher may choose
teasers), images and links kept, within DIGEST_HTML_LIMIT bytes of HTML: Gmail clips a message past about
102 KB, so past the limit the rest of a post is cut at a block and followed by "Continue reading".
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from html import escape

from flask import current_app
from sqlalchemy import select

from .. import tokens
from ..extensions import db
from ..mail import headers, links, mailer
from ..mail.mailer import quoted_printable
from ..models import Post
from ..publishing import content, publication


@dataclass(frozen=True)
class PostItem:
    id: int
    slug: str
    title: str
    published_at: datetime
    teaser_html: str
    body_html: str | None = None  # the full text; None: read once for the whole digest when it carries full text


@dataclass(frozen=True)
class Shown:
    """What a digest shows of one post: all of it, or a part followed by "Continue reading"."""

    html: str
    cut: bool


SIGNED_LINK_ROOM = 160  # bytes a signed link or the greeting may add to a slot marker, per reader (tokens are ~90)


@dataclass(frozen=True)
class Reader:
    subscriber_id: int
    email: str
    name: str
    token_key: str  # the row's own key: its links die with the row


class Body:
    """A rendered body, quoted-printable encoded once: only the lines that hold a slot are encoded per
    reader. b2a_qp works line by line, so runs of lines encoded apart join to the body encoded whole."""

    def __init__(self, rendered: str, slot: re.Pattern):
        lines = rendered.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        self.parts: list[bytes | list[str]] = []  # encoded runs of plain lines; a slotted line's pieces
        plain: list[str] = []
        for line in lines:
            pieces = slot.split(line)  # literal pieces at even indexes, slot names at odd ones
            if len(pieces) == 1:
                plain.append(line)
                continue
            if plain:
                self.parts.append(quoted_printable("".join(plain)))
                plain = []
            self.parts.append(pieces)
        if plain:
            self.parts.append(quoted_printable("".join(plain)))

    def encoded(self, values: dict[str, str]) -> bytes:
        """The body with these slot values, quoted-printable, CRLF line ends."""
        out = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                pieces = list(part)
                pieces[1::2] = [values[name] for name in pieces[1::2]]
                out.append(quoted_printable("".join(pieces)))
        return b"".join(out)


class DigestMail:
    """One run's digest of one post set (newest first), ready to personalise for any reader."""

    def __init__(self, digest_id: int, run_stamp: int, posts: list[PostItem], publication_name: str):
        config = current_app.config
        self.posts = posts
        self.base_url = config["BASE_URL"]
        self.id_prefix = f"kr.{digest_id}.{run_stamp}"
        nonce = secrets.token_hex(5)
        slot = re.compile(f"kr{nonce}([a-z0-9]+?)kr")  # lazy: two slots may touch
        text, html = self._fitted(publication_name, lambda name: f"kr{nonce}{name}kr", slot)
        self.text, self.html = Body(text, slot), Body(html, slot)
        self.from_name, self.from_address = mailer.sender()
        self.domain = self.from_address.rpartition("@")[2] or "localhost"
        self.boundary = f"==kr{nonce}=="
        self.head = self._shared_head(publication_name)
        self.unsubscribe_token, self.article_token = tokens.Minter("unsubscribe"), tokens.Minter("article")
        self.links = [(f"link{index}", f"{self.base_url}/p/{post.slug}?t=", post.id) for index, post in enumerate(posts)]
        self.clock = _DateHeader()

    def _fitted(self, publication_name: str, slot, slot_pattern: re.Pattern) -> tuple[str, str]:
        """The text and HTML bodies, each post's full text (or teaser) cut where the HTML would pass the limit.

        The bodies are rendered once whole; only a digest that is too long is measured again: first with no post
        text at all, which leaves the room the posts share; then, as inlined CSS adds a little to the posts' own
        HTML, with that room narrowed by any overshoot until it fits."""
        limit = current_app.config["DIGEST_HTML_LIMIT"]
        wanted = self._wanted()

        def render(shown: list[Shown]) -> tuple[str, str, int]:
            text, html = mailer.render_pair("digest", **self._context(publication_name, slot, shown))
            return text, html, len(html.encode("utf-8")) + len(slot_pattern.findall(html)) * SIGNED_LINK_ROOM

        text, html, size = render(wanted)
        if size <= limit:
            return text, html
        _, _, bare = render([Shown("", True) for _ in wanted])
        room = limit - bare
        for _ in range(8):
            text, html, size = render(_share(wanted, room))
            if size <= limit:
                break
            room -= size - limit + 512
        return text, html

    def _wanted(self) -> list[Shown]:
        """Each post as the publisher wants digests to carry it: its full text (read in one query), or its teaser."""
        if publication.settings().digest_content != "full":
            return [Shown(self._absolute(post.teaser_html), True) for post in self.posts]
        missing = [post.id for post in self.posts if post.body_html is None]
        bodies: dict[int, str] = {}
        if missing:
            bodies = {row.id: row.body_html for row in db.session.execute(
                select(Post.id, Post.body_html).where(Post.id.in_(missing)))}
        return [Shown(self._absolute(post.body_html if post.body_html is not None else bodies.get(post.id, post.teaser_html)),
                      post.id not in bodies and post.body_html is None) for post in self.posts]

    def _absolute(self, html: str) -> str:
        return content.absolute_links(html, self.base_url)

    def _context(self, publication_name: str, slot, shown: list[Shown]) -> dict:
        items = [{
            "title": post.title,
            "date": f"{post.published_at:%d %B %Y}".lstrip("0"),
            "html": part.html,
            "text": content.text_version(part.html),
            "cut": part.cut,
            "url": slot(f"link{index}"),
        } for index, (post, part) in enumerate(zip(self.posts, shown, strict=True))]
        return {
            "publication": publication_name,
            "subject": self.subject(publication_name),
            "greeting": slot("greeting"),
            "posts": items,
            "unsubscribe_url": slot("unsubscribe"),
            "account_url": self.base_url + "/account",
            "home_url": self.base_url + "/",
        }

    def subject(self, publication_name: str) -> str:
        lead, more = self.posts[0].title, len(self.posts) - 1
        if more == 0:
            return f"{publication_name}: {lead}"
        return f"{publication_name}: {lead} and {more} more new post{'s' if more > 1 else ''}"

    def _shared_head(self, publication_name: str) -> bytes:
        self.mailto = links.unsubscribe_mailto()
        lines = [
            headers.mailbox("From", self.from_name, self.from_address),
            headers.unstructured("Subject", self.subject(publication_name)),
            links.list_id(publication_name),
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Precedence: bulk",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"',
        ]
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def message(self, delivery_id: int, reader: Reader) -> bytes:
        """The complete RFC 5322 message for one reader, CRLF line ends."""
        reader_id, fingerprint = reader.subscriber_id, tokens.email_fingerprint(reader.email, reader.token_key)
        unsubscribe = f"{self.base_url}/unsubscribe/{self.unsubscribe_token(reader_id, fingerprint)}"
        values = {"unsubscribe": unsubscribe}
        for name, url, post_id in self.links:
            values[name] = url + self.article_token(reader_id, fingerprint, post_id)
        greeting = f"Hello {name}," if (name := mailer.one_line(reader.name)) else "Hello,"
        text = self.text.encoded({**values, "greeting": greeting})
        html = self.html.encoded({**values, "greeting": escape(greeting)})
        own = "\r\n".join([
            headers.mailbox("To", reader.name, reader.email),
            self.clock.header(),
            f"Message-ID: <{self.id_prefix}.{delivery_id}@{self.domain}>",
            headers.urls("List-Unsubscribe", [unsubscribe, *self.mailto]),
        ]).encode("ascii") + b"\r\n"
        return b"".join([own, self.head, b"\r\n", mailer.alternative_part(self.boundary, "plain", text),
                         mailer.alternative_part(self.boundary, "html", html), f"--{self.boundary}--\r\n".encode("ascii")])


def _share(wanted: list[Shown], room: int) -> list[Shown]:
    """The posts in `room` bytes of their own HTML, shared fairly: the shorter posts whole, each longer one cut at a
    block to an equal share of what is left (and then "Continue reading"), so one long post never crowds out the rest."""
    shown = list(wanted)
    by_size = sorted(range(len(wanted)), key=lambda index: len(wanted[index].html.encode("utf-8")))
    for place, index in enumerate(by_size):
        share = max(room, 0) // (len(by_size) - place)
        part = wanted[index]
        if len(part.html.encode("utf-8")) > share:
            part = Shown(content.cut_to_bytes(part.html, share), True)
        shown[index] = part
        room -= len(part.html.encode("utf-8"))
    return shown


class _DateHeader:
    """`Date: ...` of now, formatted once a second."""

    def __init__(self):
        self.second, self.line = -1, ""

    def header(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.line = now, f"Date: {format_datetime(datetime.fromtimestamp(now, timezone.utc))}"
        return self.line
