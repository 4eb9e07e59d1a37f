"""Rendering and teasers: sanitised HTML, cut only at element boundaries, never broken."""
import re
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from service.publishing import content

VOID = {"area", "br", "col", "embed", "hr", "img", "input", "source", "track", "wbr"}


class _Balance(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.problems = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def assert_well_formed(html: str) -> None:
    checker = _Balance()
    checker.feed(html)
    checker.close()
    assert not checker.problems, (checker.problems, html)
    assert not checker.stack, (checker.stack, html)


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_more_marker_sets_the_teaser():
    body = "First part.\n\n<!--more-->\n\nThe secret rest."
    assert content.teaser(body, 120) == "<p>First part.</p>"
    assert "The secret rest." in content.render(body)
    assert "more" not in content.render(body)


def test_word_budget_keeps_whole_paragraphs():
    body = f"{words(50)}\n\n{words(50, 50)}\n\n{words(50, 100)}"
    teaser = content.teaser(body, 120)
    assert "w99" in teaser and "w100" not in teaser
    assert teaser.count("<p>") == 2
    assert_well_formed(teaser)


def test_a_first_block_over_budget_is_cut_at_a_word_and_closed():
    body = f"*{words(30)}* **{words(300, 30)}**"
    teaser = content.teaser(body, 40)
    assert content.word_count(teaser) == 40
    assert "w39" in teaser and "w40" not in teaser
    assert teaser.endswith("…</strong></p>")
    assert_well_formed(teaser)


def test_lists_and_quotes_are_never_split_across_tags():
    body = f"> {words(30)}\n>\n> {words(30, 30)}\n\n- {words(10, 60)}\n- {words(10, 70)}\n\n{words(200, 80)}"
    teaser = content.teaser(body, 100)
    assert_well_formed(teaser)
    assert "<blockquote>" in teaser and "</ul>" in teaser and "w80" not in teaser


def test_script_tags_are_removed():
    html = content.render("Hello <script>alert('x')</script> there")
    assert "<script" not in html and "alert" not in html


def test_event_handlers_are_removed():
    html = content.render('<img src="https://example.org/a.png" onerror="alert(1)"> <b onclick="x()">b</b>')
    assert "onerror" not in html and "onclick" not in html
    assert '<img src="https://example.org/a.png">' in html


def test_javascript_urls_are_removed():
    html = content.render('[click](javascript:alert(1)) <a href="JaVaScRiPt:alert(2)">x</a> <a href="https://ok.example">ok</a>')
    hrefs = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert hrefs == ["https://ok.example"]
    assert "<a rel=" in html  # the javascript: anchor survives only without its href


def test_links_are_marked_nofollow_noopener():
    html = content.render("[site](https://example.org)")
    assert 'rel="noopener noreferrer nofollow"' in html


def test_teaser_is_sanitised_too():
    teaser = content.teaser("<p onclick='x()'>hi <script>bad()</script></p><!--more-->rest", 120)
    assert "onclick" not in teaser and "bad()" not in teaser


# Markdown and raw HTML fragments that nest, combined at random.
_inline = st.sampled_from(["word", "two words", "*em*", "**strong**", "`code`", "[link](https://e.org)",
                           "<em>raw <b>bold</b></em>", "<span>a<i>b</i></span>", "&amp;", "<", "<b>unclosed"])
_block = st.one_of(
    st.lists(_inline, min_size=1, max_size=12).map(" ".join),
    st.lists(_inline, min_size=1, max_size=5).map(lambda xs: "\n".join(f"- {x}" for x in xs)),
    st.lists(_inline, min_size=1, max_size=5).map(lambda xs: "\n".join(f"> {x}" for x in xs)),
    st.lists(_inline, min_size=1, max_size=4).map(lambda xs: "<div><p>" + " ".join(xs) + "</p><ul><li>" + xs[0] + "</li></ul></div>"),
    st.just("<table><tr><td>cell one</td><td>cell two</td></tr></table>"),
    st.just("<hr>"),
    st.just("![alt text](https://e.org/i.png)"),
)


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(_block, min_size=1, max_size=12), budget=st.integers(min_value=1, max_value=80))
def test_teasers_are_always_well_formed_and_within_budget(blocks, budget):
    body = "\n\n".join(blocks)
    full = content.render(body)
    teaser = content.teaser(body, budget)
    assert_well_formed(teaser)
    kept = content.word_count(teaser)
    assert kept <= budget
    if content.word_count(full) > 0:
        assert kept > 0
    teaser_words = content.plain_text(teaser).replace("…", "").split()
    assert teaser_words == content.plain_text(full).split()[: len(teaser_words)]


def test_a_short_gated_post_is_never_shown_whole():
    """Issue 9.6: a subscribers-only post under the word budget, without <!--more-->, kept half back."""
    one_paragraph = f"{words(40)}"
    assert content.teaser(one_paragraph, 120) == f"<p>{words(40)}</p>"  # a public post: whole
    gated = content.teaser(one_paragraph, 120, gated=True)
    assert content.word_count(gated) == 20 and "w19" in gated and "w20" not in gated
    three = f"{words(10)}\n\n{words(10, 10)}\n\n{words(10, 20)}"
    assert "w29" not in content.teaser(three, 120, gated=True)
    assert content.teaser("<!--more-->", 120, gated=True) == ""
    assert content.teaser(f"{words(8)}\n\n<!--more-->", 120, gated=True) == "<p>w0 w1 w2 w3…</p>"
    assert content.teaser(f"{words(8)}\n\n<!--more-->\n\n{words(2, 8)}", 120, gated=True) == f"<p>{words(8)}</p>"


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(_block, min_size=1, max_size=12), budget=st.integers(min_value=1, max_value=200),
       marker_at=st.none() | st.integers(min_value=0, max_value=12))
def test_a_gated_teaser_always_holds_part_of_the_post_back(blocks, budget, marker_at):
    if marker_at is not None:
        blocks = [*blocks[:marker_at], "<!--more-->", *blocks[marker_at:]]
    body = "\n\n".join(blocks)
    before, marker, after = body.partition("<!--more-->")
    full = content.render(body)
    teaser = content.teaser(body, budget, gated=True)
    assert_well_formed(teaser)
    total, kept = content.word_count(full), content.word_count(teaser)
    teaser_words = content.plain_text(teaser).replace("…", "").split()
    assert teaser_words == content.plain_text(full).split()[: len(teaser_words)]
    if full:
        assert teaser != full
    if total:
        assert kept < total and content.shown_share(teaser, full) < 1
    if not marker or not content.word_count(content.render(after)):
        assert kept <= min(budget, total // 2)  # no marker (or nothing after it): at most half
