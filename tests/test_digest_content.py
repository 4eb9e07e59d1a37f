"""What digests carry (issue 12): full text by default, images and links kept, teasers as a setting, and a long
digest cut so Gmail does not clip it: the rest of a post becomes "Continue reading" with its signed link."""
from __future__ import annotations

import re

from service import tokens
from service.digests import runs, sending
from service.extensions import db
from service.models import Delivery, utcnow
from service.publishing import posts, publication

from .conftest import BASE_URL
from .flows import confirmed_subscriber
from .mailcheck import check

READER = "full.text@example.org"
RICH = """The quay at dawn, for everyone.

<!--more-->

The rest, for subscribers: a [tide table](https://tides.example/harbour) and [the previous letter](/p/earlier).

![The harbour wall at low water](https://images.example/wall.jpg)

It ends with *the ferry* leaving late."""


def send_digest(app, mailbox):
    """One run of the digest in this process; the mail the reader received."""
    with app.app_context():
        digest = runs.create_run(f"manual:{utcnow().timestamp()}", None, utcnow())
        for first, last in runs.id_ranges(Delivery.digest_id == digest.id):
            sending.send_batch(digest.id, first, last)
    [mail] = [each for each in mailbox.wait_for(1) if each.to == READER]
    return mail


def reader_and_posts(*bodies: tuple[str, str]) -> list[int]:
    confirmed_subscriber(READER, "Fen")
    created = [posts.create(title, text, "subscribers", True) for title, text in bodies]
    db.session.commit()
    return [post.id for post in created]


def test_a_digest_carries_full_text_with_images_and_links(app, mailbox):
    with app.app_context():
        reader_and_posts(("Dawn on the quay", RICH))
    mail = send_digest(app, mailbox)
    check(mail.raw)  # the strict reading: 7bit, line lengths, folding, MIME structure
    html, text = mail.html, mail.text
    assert "It ends with <em" in html and "the ferry</em> leaving late." in html
    assert '<a href="https://tides.example/harbour"' in html and f'<a href="{BASE_URL}/p/earlier"' in html
    assert '<img src="https://images.example/wall.jpg" alt="The harbour wall at low water"' in html
    assert "max-width: 100%" in html.split("<img", 1)[1].split(">", 1)[0]  # inlined: images fit a phone
    assert "Continue reading" not in html and "Read it on the web" in html
    assert "It ends with the ferry leaving late." in text and "tide table <https://tides.example/harbour>" in text
    assert re.search(re.escape(BASE_URL) + r"/p/dawn-on-the-quay\?t=[\w.-]+", text)


def test_the_publisher_may_send_teasers_instead(app, mailbox):
    with app.app_context():
        reader_and_posts(("Dawn on the quay", RICH))
        posts.update_settings({"digest_content": "teaser"})
    mail = send_digest(app, mailbox)
    check(mail.raw)
    for part in (mail.html, mail.text):
        assert "The quay at dawn, for everyone." in part and "leaving late" not in part and "Continue reading" in part


def test_a_long_digest_stays_under_the_clipping_size_and_continues_on_the_web(app, mailbox):
    paragraphs = [f"Paragraph {n} of the long letter, about ropes, tides and the ferry's timetable. " * 6
                  for n in range(1, 400)]  # about 200 KB of HTML
    long_body = "An opening for everyone.\n\n<!--more-->\n\n" + "\n\n".join(paragraphs)
    with app.app_context():
        short_id, long_id = reader_and_posts(("A short one", "Short, and whole."), ("A very long one", long_body))
        assert len(db.session.get(posts.Post, long_id).body_html.encode()) > 150_000
        limit = app.config["DIGEST_HTML_LIMIT"]
    mail = send_digest(app, mailbox)
    check(mail.raw)
    html, text = mail.html, mail.text
    assert len(html.encode("utf-8")) <= limit == 100_000
    assert len(html.encode("utf-8")) > 80_000  # it is filled, not emptied
    assert "Short, and whole." in html  # the newest post first, whole
    assert "Paragraph 1 of the long letter" in html and "Paragraph 399 of" not in html
    whole = re.findall(r"<p[^>]*>Paragraph \d+ of the long letter[^<]*</p>", html)
    assert len(whole) == html.count(">Paragraph ") > 100  # cut between paragraphs, never inside one
    links = re.findall(re.escape(BASE_URL) + r"/p/a-very-long-one\?t=([\w.-]+)", html)
    assert links and "Continue reading</a>" in html.split("Paragraph 1 of the long letter", 1)[1]
    with app.app_context():
        assert tokens.verify("article", links[-1])[2] == long_id
    assert "Paragraph 399 of" not in text and "Continue reading: " + BASE_URL + "/p/a-very-long-one?t=" in text
    assert "/p/a-short-one?t=" in text and short_id != long_id


def test_the_cut_falls_between_blocks(app):
    with app.app_context():
        html = "".join(f"<p>{'word ' * 50}{n}</p>\n" for n in range(10))
        block = len(f"<p>{'word ' * 50}0</p>\n".encode())
        kept = posts.content.cut_to_bytes(html, block * 3 + 10)
        assert kept.count("<p>") == 3 and kept.count("</p>") == 3
        assert publication.settings().digest_content == "full"
