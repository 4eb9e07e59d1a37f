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
