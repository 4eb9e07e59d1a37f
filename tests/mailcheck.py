"""A strict reading of a mail as an SMTP server received it: 7bit, line lengths, folding, RFC 2047
encoded words, MIME structure, and the parser's own defects (stdlib `email` with policy.strict).

RFC 5322 (lines <= 998, 78 recommended; folding only at whitespace), RFC 2045 (7bit without
8BITMIME, quoted-printable lines <= 76), RFC 2047 (encoded words <= 75, lines holding one <= 76,
whole characters, never inside a quoted string), RFC 2369 (one URL per <...>).
"""
from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
import unicodedata
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage

ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
FIELD_NAME = re.compile(r"[!-9;-~]+")
QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
Q_TEXT = re.compile(r"(?:[A-Za-z0-9!*+/_-]|=[0-9A-F]{2})*")  # RFC 2047 5(3): what a Q word may hold in a phrase
QP_LINE = re.compile(r"(?:[!-<>-~ \t]|=[0-9A-F]{2})*=?")
LIST_URL_LINE = re.compile(r"(?:List-Unsubscribe: | )<(?:https?|mailto):[!#-;=?-~]+>,?")
STRUCTURED = ("From", "To", "List-Id")  # fields whose quoted strings are quoted strings


@dataclass
class Checked:
    message: EmailMessage
    fields: list[tuple[str, str]]  # (name, unfolded raw value), in order

    @property
    def names(self) -> list[str]:
        return sorted(name for name, _ in self.fields)

    def raw(self, name: str) -> str:
        values = [value for field, value in self.fields if field.lower() == name.lower()]
        assert len(values) == 1, f"{len(values)} {name} fields"
        return values[0]


def check(raw: bytes) -> Checked:
    """Every rule above, asserted; the parsed message and its fields for further checks."""
    assert raw.isascii(), "8bit data in a mail sent without BODY=8BITMIME"
    assert b"\0" not in raw and raw.endswith(b"\r\n")
    lines = raw.decode("ascii").split("\r\n")[:-1]
    assert not any("\r" in line or "\n" in line for line in lines), "a bare CR or LF"
    assert all(len(line) <= 998 for line in lines), "a line longer than 998 characters"
    blank = lines.index("")
    fields = [_check_field(field) for field in _group(lines[:blank])]
    message = email.message_from_bytes(raw, policy=email.policy.strict)
    for name in message.keys():
        assert not message[name].defects, (name, message[name].defects)
    _check_mime(message)
    return Checked(message, fields)


def _group(head: list[str]) -> list[list[str]]:
    fields: list[list[str]] = []
    for line in head:
        if line[:1] in (" ", "\t"):
            assert fields and line.strip(), f"a bad continuation line: {line!r}"
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _check_field(physical: list[str]) -> tuple[str, str]:
    name, colon, _ = physical[0].partition(":")
    assert colon and FIELD_NAME.fullmatch(name), f"not a header line: {physical[0]!r}"
    for line in physical:
        tokens = line[len(name) + 1:].split() if line is physical[0] else line.split()
        if "=?" in line:
            assert len(line) <= 76, f"a line with an encoded word longer than 76: {line!r}"
        elif len(tokens) > 1:  # a single token (a URL, an address) cannot be folded; anything else can
            assert len(line) <= 78, f"a header line longer than 78 that could have been folded: {line!r}"
    if name == "List-Unsubscribe":
        assert all(LIST_URL_LINE.fullmatch(line) for line in physical), f"folded inside an element: {physical}"
    value = " ".join(line.strip() for line in physical)[len(name) + 1:].strip()
    for token in value.split():
        if "=?" in token:
            _check_encoded_word(token, name)
    if name in STRUCTURED:
        for quoted in QUOTED_STRING.findall(value):
            assert "=?" not in quoted, f"an encoded word inside a quoted string: {quoted}"
    return name, value


def _check_encoded_word(token: str, field: str) -> str:
    word = ENCODED_WORD.fullmatch(token)
    assert word, f"'=?' outside a whole encoded word in {field}: {token!r}"
    assert len(token) <= 75, f"an encoded word longer than 75: {token}"
    charset, form, text = word.groups()
    assert charset.lower() in ("utf-8", "us-ascii"), charset
    if form in "Bb":
        assert len(text) % 4 == 0, f"unpadded base64: {token}"
        data = base64.b64decode(text, validate=True)
    else:
        assert Q_TEXT.fullmatch(text), f"characters a Q word may not hold: {token}"
        data = binascii.a2b_qp(text.encode("ascii"), header=True)
    return data.decode(charset)  # strict: a word holds whole characters


def _check_mime(message: EmailMessage) -> None:
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in message.walk():
        assert not part.defects, part.defects
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        for line in part.get_payload().splitlines():
            assert len(line) <= 76, f"a quoted-printable line longer than 76: {line!r}"
            assert QP_LINE.fullmatch(line) and not line.endswith((" ", "\t")), f"bad quoted-printable: {line!r}"
        part.get_content()  # decodes as UTF-8


def display_name(address_value: str) -> str:
    """The display name of `Name <address>` as an RFC 2047 decoder shows it (whitespace between
    adjacent encoded words dropped: the stdlib's headerregistry keeps it in phrases, the legacy API does not)."""
    phrase = address_value.rpartition("<")[0].strip() if address_value.endswith(">") else ""
    if phrase.startswith('"'):
        assert QUOTED_STRING.fullmatch(phrase), phrase
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase)))


def shown(text: str) -> str:
    """What a name or title looks like in a header: control characters and line or paragraph separators
    become spaces, each run of spaces one, none at the ends."""
    return " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text).split())
