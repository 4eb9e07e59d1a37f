"""Mail headers from plain text: the one encoder every mail's headers go through (RFC 5322, RFC 2047, 7bit).

Data (a reader's name, a title, the publication's name) only ever becomes an atom, a quoted string or
RFC 2047 encoded words of the whole text, so it can bring no line break, no header and no address of its
own: control characters and line separators become spaces, and text that holds `=?` is itself encoded,
so a decoder shows it literally. Lines are folded at 76 characters (RFC 2047's limit for a line with an
encoded word) between tokens only; just an address or URL longer than that makes a longer line.
"""
from __future__ import annotations

import re
from binascii import b2a_base64
from urllib.parse import quote

LIMIT = 76
_WORD = 75  # the longest encoded word (RFC 2047 section 2)
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PRINTABLE = re.compile(r"[ -~]*")
_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_LABEL = re.compile(_DOMAIN)
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@" + _DOMAIN)
_URL = re.compile(r"[!#-;=?-~]+")  # printable ASCII but for space, '"', '<' and '>'
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]^_`{|}~"  # what quote() keeps of a URL that needs quoting
# Characters str.split() keeps that must not reach a header either: C0 and C1 controls, DEL.
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")


def plain(text: str) -> str:
    """One line of text: control characters, line and paragraph separators and runs of spaces become one space."""
    if not (text.isascii() and text.isprintable()):
        text = str(text).translate(_CONTROLS)
    return " ".join(text.split())


def unstructured(name: str, text: str) -> str:
    """`Name: text` (Subject), folded between words; encoded words when the text is not plain ASCII."""
    text, room = plain(text), LIMIT - len(name) - 2
    words = text.split(" ")
    if text.isascii() and "=?" not in text and _PRINTABLE.fullmatch(text) and max(map(len, words)) <= room:
        return fold(name, words)
    return fold(name, encoded_words(text, room))


def mailbox(name: str, display: str, address: str) -> str:
    """`Name: display <address>` (From, To); just the address when there is no display name."""
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"not a plain ASCII address: {address!r}")
    display = plain(display)
    if not display:
        return f"{name}: {address}"
    if _ATOMS.fullmatch(display) and "=?" not in display:
        line = f"{name}: {display} <{address}>"
        if len(line) <= LIMIT:  # the common case, checked in a few hundred nanoseconds
            return line
    return fold(name, [*phrase(display, LIMIT - len(name) - 2), f"<{address}>"])


def list_id(display: str, label: str) -> str:
    """RFC 2919 `List-Id: display <label>`; the label is a dot-atom such as keepreading.news.example."""
    if not _LABEL.fullmatch(label):
        raise ValueError(f"not a list label: {label!r}")
    display = plain(display)
    return fold("List-Id", [*phrase(display, LIMIT - len("List-Id: ")), f"<{label}>"] if display else [f"<{label}>"])


def urls(name: str, targets: list[str]) -> str:
    """`Name: <url>, <url>` (List-Unsubscribe): each URL one token, folded only between them."""
    tokens = [f"<{url if _URL.fullmatch(url) else quote(url, safe=_URL_SAFE)}>," for url in targets]
    tokens[-1] = tokens[-1][:-1]
    return fold(name, tokens)


def phrase(text: str, room: int) -> list[str]:
    """A display name as tokens: atoms, one quoted string, or encoded words (the first fits in `room`)."""
    if text.isascii() and "=?" not in text:
        if _ATOMS.fullmatch(text) and max(map(len, text.split(" "))) <= room:
            return text.split(" ")
        quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if _PRINTABLE.fullmatch(text) and len(quoted) <= room:
            return [quoted]
    return encoded_words(text, room)


def encoded_words(text: str, room: int) -> list[str]:
    """`=?utf-8?b?...?=` words of whole characters; the first at most `room` long, the others 75."""
    data, words, start = text.encode("utf-8", "replace"), [], 0
    while start < len(data):
        end = min(len(data), start + (max(room, 28) - 12) // 4 * 3)  # the bytes whose base64 fits
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never cut a character
            end -= 1
        words.append(f"=?utf-8?b?{b2a_base64(data[start:end], newline=False).decode('ascii')}?=")
        start, room = end, _WORD
    return words


def fold(name: str, tokens: list[str]) -> str:
    """`Name: ` and the tokens, a line break before each token that would pass LIMIT (never before the first)."""
    lines, line = [], f"{name}: {tokens[0]}"
    for token in tokens[1:]:
        if len(line) + 1 + len(token) <= LIMIT:
            line += " " + token
        else:
            lines.append(line)
            line = " " + token
    lines.append(line)
    return "\r\n".join(lines)
