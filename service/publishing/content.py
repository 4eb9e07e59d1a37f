"""Post bodies: Markdown to sanitised HTML, and teasers cut at element boundaries."""
from __future__ import annotations

import re
import textwrap
from html import escape, unescape
from html.parser import HTMLParser

import nh3
from markdown_it import MarkdownIt

MORE_MARKER = "<!--more-->"
_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable("table")
_VOID = {"area", "br", "col", "embed", "hr", "img", "input", "source", "track", "wbr"}
_WORD = re.compile(r"\S+")
_TAG = re.compile(r"<[^>]*>")
_ALLOWED_TAGS = nh3.ALLOWED_TAGS | {"figure", "figcaption"}


def render(markdown: str) -> str:
    """Markdown (raw HTML allowed) to HTML that nh3 has made safe."""
    html = _markdown.render(markdown.replace(MORE_MARKER, ""))
    return sanitise(html)


def sanitise(html: str) -> str:
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    ).strip()


def teaser(markdown: str, word_budget: int, gated: bool = False) -> str:
    """The content before <!--more-->, else the leading blocks within the word budget.

    A gated post's teaser always holds part of the post back, however short it is: at most half of its
    words, and never its last block (a marker with no words after it counts as no marker)."""
    before, marker, after = markdown.partition(MORE_MARKER)
    if marker and not (gated and word_count(render(after)) == 0):
        return render(before)
    html = render(markdown)
    if not gated:
        return cut_to_words(html, word_budget)
    return cut_to_words(html, min(word_budget, word_count(html) // 2), keep_last=False)


def cut_to_words(html: str, budget: int, keep_last: bool = True) -> str:
    """Whole top-level blocks while they fit; a first block that alone overflows is cut at a word.
    With keep_last=False the last block is never shown whole (a single block is cut inside)."""
    blocks = _Blocks.split(html)
    if not keep_last and len(blocks) > 1:
        blocks = blocks[:-1]
    elif not keep_last and blocks and blocks[0][1] <= budget:
        return ""  # one block that would fit whole: nothing can be shown without showing it all
    kept, words = [], 0
    for block_html, block_words in blocks:
        if words + block_words > budget:
            if words == 0 and budget > 0:  # nothing to read yet: cut inside this block rather than show no text
                kept.append(_truncate_block(block_html, budget))
            break
        kept.append(block_html)
        words += block_words
    return "".join(kept).strip()


def word_count(html: str) -> int:
    return sum(count for _, count in _Blocks.split(html))


def shown_share(teaser_html: str, body_html: str) -> float:
    """How much of the post its teaser shows, by words (1.0 for a post with no words)."""
    total = word_count(body_html)
    return word_count(teaser_html) / total if total else 1.0


def plain_text(html: str) -> str:
    """The words of (already sanitised) HTML, a space wherever a tag stood."""
    return re.sub(r"\s+", " ", unescape(_TAG.sub(" ", html))).strip()


def cut_to_bytes(html: str, budget: int) -> str:
    """The leading top-level blocks whose UTF-8 size fits the budget (for a mail that must stay small)."""
    kept, size = [], 0
    for block_html, _ in _Blocks.split(html):
        size += len(block_html.encode("utf-8"))
        if size > budget:
            break
        kept.append(block_html)
    return "".join(kept).strip()


_RELATIVE = re.compile(r'(\s(?:href|src)=")/(?!/)')


def absolute_links(html: str, base_url: str) -> str:
    """Links and images that point into the site, made absolute: a mail has no site to be relative to."""
    return _RELATIVE.sub(lambda found: f"{found.group(1)}{base_url}/", html)


def text_version(html: str, width: int = 72) -> str:
    """(Sanitised) HTML as plain text for a mail: a paragraph per block, wrapped, links as "words <url>"."""
    converter = _PlainText()
    converter.feed(html)
    converter.close()
    return converter.result(width)


class _PlainText(HTMLParser):
    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "pre", "figure", "figcaption",
              "table", "tr", "hr", "ul", "ol", "br"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.words: list[str] = []
        self.links: list[str | None] = []

    def _end_paragraph(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.words)).strip()
        if text:
            self.paragraphs.append(text)
        self.words = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in self.BLOCKS:
            self._end_paragraph()
            if tag == "li":
                self.words.append("- ")
        elif tag == "a":
            href = attributes.get("href") or ""
            self.links.append(href if href.startswith(("http://", "https://", "mailto:")) else None)
        elif tag == "img" and attributes.get("alt"):
            self.words.append(f"[{attributes['alt']}]")

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self._end_paragraph()
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href:
                self.words.append(f" <{href}>")

    def handle_data(self, data):
        self.words.append(data)

    def result(self, width: int) -> str:
        self._end_paragraph()
        return "\n\n".join(textwrap.fill(paragraph, width, break_long_words=False, break_on_hyphens=False)
                           for paragraph in self.paragraphs)


class _Blocks(HTMLParser):
    """Splits well-formed HTML into its top-level elements, counting each one's words."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.source = source
        self.depth = 0
        self.start = 0
        self.words = 0
        self.blocks: list[tuple[str, int]] = []
        self.line_offsets = [0]
        for line in source.splitlines(keepends=True):
            self.line_offsets.append(self.line_offsets[-1] + len(line))

    @classmethod
    def split(cls, source: str) -> list[tuple[str, int]]:
        parser = cls(source)
        parser.feed(source)
        parser.close()
        parser._end_block(len(source))
        return parser.blocks

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_offsets[line - 1] + column

    def _end_block(self, end: int) -> None:
        chunk = self.source[self.start:end]
        if chunk.strip():
            self.blocks.append((chunk, self.words))
        self.start, self.words = end, 0

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.depth += 1
        elif self.depth == 0:
            self._end_block(self._offset() + len(self.get_starttag_text() or ""))

    def handle_startendtag(self, tag, attrs):
        if self.depth == 0:
            self._end_block(self._offset() + len(self.get_starttag_text() or ""))

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        self.depth = max(self.depth - 1, 0)
        if self.depth == 0:
            end = self.source.index(">", self._offset()) + 1
            self._end_block(end)

    def handle_data(self, data):
        self.words += len(_WORD.findall(data))


class _Truncator(HTMLParser):
    """Re-emits HTML up to a word budget, then closes every open element."""

    def __init__(self, budget: int):
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.words = 0
        self.out: list[str] = []
        self.open: list[str] = []
        self.done = False

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        self.out.append(self.get_starttag_text() or f"<{tag}>")
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if not self.done:
            self.out.append(self.get_starttag_text() or f"<{tag}>")

    def handle_endtag(self, tag):
        if self.done or tag in _VOID:
            return
        if self.open and self.open[-1] == tag:
            self.open.pop()
            self.out.append(f"</{tag}>")

    def handle_data(self, data):
        if self.done:
            return
        words = _WORD.findall(data)
        left = self.budget - self.words
        if len(words) <= left:
            self.out.append(escape(data, quote=False))
            self.words += len(words)
            return
        if left > 0:  # an ellipsis only where a sentence is cut, not at an element's edge
            self.out.append(escape(data[: _end_of_word(data, left)], quote=False) + "…")
        self.done = True

    def result(self) -> str:
        return "".join(self.out) + "".join(f"</{tag}>" for tag in reversed(self.open))


def _end_of_word(text: str, count: int) -> int:
    matches = list(_WORD.finditer(text))
    return matches[count - 1].end() if count > 0 else 0


def _truncate_block(html: str, budget: int) -> str:
    truncator = _Truncator(budget)
    truncator.feed(html)
    truncator.close()
    return truncator.result()
