"""The studio's dashboard and subscriber pages through a signed-in publisher's browser (a test client)."""
from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from service import tokens
from service.extensions import db
from service.models import DailyCount, Delivery, Digest, Event, OutboxEmail, RollupMark, Subscriber, utcnow
from service.publishing import posts
from service.studio import stats

from .conftest import BASE_URL
from .helpers import Reader, csrf_token, subscriber
from .studio_helpers import Publisher, make_staff
from .test_query_budget import (
    counting,
)
from .test_stats import seed_history


@pytest.fixture
def publisher(app, client):
    make_staff(app)
    person = Publisher(client)
    assert person.sign_in().status_code == 303
    return person


def text_of(answer) -> str:
    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    return answer.get_data(as_text=True)


def no_inline_script(page: str) -> None:
    """Every script is a file (a nonce-based CSP is coming); charts are plain SVG."""
    assert all(' src="' in tag for tag in re.findall(r"<script[^>]*>", page)), re.findall(r"<script[^>]*>", page)
    assert " style=" not in page and "<style" not in page and " on" + "click=" not in page


def test_the_dashboard_shows_headline_figures_charts_and_which_posts_convert(app, client, publisher, own_queue):
    with app.app_context():
        slug = posts.create("Harbour notes", "Words.\n\n<!--more-->\n\nMore.", "subscribers", True).slug
    for n in range(3):
        Reader(client, f"reader{n}@example.org").subscribe(source=f"{BASE_URL}/p/{slug}")
    Reader(client, "far@example.org").subscribe(source="https://blog.example/a-post")
    with app.app_context():
        for n in range(2):
            reader = subscriber(app, f"reader{n}@example.org")
            from service.readers import subscriptions

            subscriptions.confirm(tokens.make("confirm", reader, "/", reader.link_epoch))
        stats.roll_up()

    page = text_of(client.get("/studio/"))
    no_inline_script(page)
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd class=\"big\">([^<]+)</dd>", page))
    assert figures["Confirmed subscribers"] == "2" and figures["Last 7 days"] == "+2"
    assert figures["Confirmation rate, 30 days"] == "50%" and figures["Mails sent, 30 days"] == "0"
    assert page.count('role="img"') == 4 and '<title id="subscribers-title">Confirmed subscribers</title>' in page
    assert "Signups: 4 in all, at most 4 on" in page  # the description a screen reader hears
    today = utcnow().date().isoformat()
    row = re.search(rf"<th scope=\"row\">{today}</th>(.*?)</tr>", page, re.S).group(1)
    assert re.findall(r">(\d+)</td>", row)[:3] == ["2", "4", "2"]
    sources = re.search(r"Which posts convert(.*?)</table>", page, re.S).group(1)
    assert re.search(rf'<a href="/p/{slug}">Harbour notes</a></th>\s*<td class="num">3</td>\s*<td class="num">2</td>', sources)
    assert "https://blog.example (a form on another site)" in sources
    assert client.get("/studio/?days=365").status_code == 200 and client.get("/studio/?days=7").status_code == 200


def test_the_dashboard_page_costs_the_same_statements_for_a_small_and_a_large_history(app, backend, client, publisher):
    statements = {}
    for readers in (20, 2000):
        with app.app_context():
            for table in (Event, Subscriber, DailyCount, RollupMark):  # a new history, counted from scratch
                db.session.execute(table.__table__.delete())
            db.session.commit()
            seed_history(readers)
            stats.roll_up()
        with app.app_context(), counting() as tally:
            page = text_of(client.get("/studio/?days=365"))
        assert f'<dd class="big">{readers:,}</dd>' in page
        statements[readers] = len(tally.statements)
    assert statements[20] == statements[2000] <= 10, statements


def seed_list(count: int) -> list[int]:
    rows = [{"email": f"r{n}@example.org", "name": f"Reader {n}", "status": ("confirmed", "pending")[n % 2],
             "frequency": "default", "created_at": utcnow()} for n in range(count)]
    db.session.execute(insert(Subscriber), rows)
    db.session.commit()
    return list(db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)))


def listed(page: str) -> list[str]:
    return re.findall(r'<a href="/studio/subscribers/\d+">([^<]+)</a>', page)


def test_the_list_searches_filters_and_pages_by_keyset(app, client, publisher):
    with app.app_context():
        ids = seed_list(120)
    first = text_of(client.get("/studio/subscribers"))
    no_inline_script(first)
    assert listed(first) == [f"r{n}@example.org" for n in range(119, 69, -1)]
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert older == f"/studio/subscribers?after={ids[70]}" and 'rel="prev"' not in first
    second = text_of(client.get(older))
    assert listed(second)[0] == "r69@example.org" and "First page" in second
    newer = re.search(r'href="([^"]+)" rel="prev"', second).group(1).replace("&amp;", "&")
    assert listed(text_of(client.get(newer))) == listed(first)

    found = text_of(client.get("/studio/subscribers?q=R11&status=pending"))
    assert listed(found) == ["r111@example.org", "r113@example.org", "r115@example.org", "r117@example.org",
                             "r119@example.org", "r11@example.org"]
    assert 'value="R11"' in found and '<option value="pending" selected>' in found
    refused = client.get("/studio/subscribers?status=royalty")
    assert refused.status_code == 422 and 'role="alert"' in refused.get_data(as_text=True)


def test_a_deep_page_costs_what_the_first_costs(app, client, publisher):
    with app.app_context():
        ids = seed_list(400)
    for deep_link in (f"?after={ids[20]}", f"?status=confirmed&q=r&after={ids[300]}"):
        plain = deep_link.split("after=")[0].rstrip("&?")
        with app.app_context(), counting() as first:
            text_of(client.get(f"/studio/subscribers?{plain.lstrip('?')}"))
        with app.app_context(), counting() as deep:
            page = text_of(client.get(f"/studio/subscribers{deep_link}"))
        assert listed(page) and len(first.statements) == len(deep.statements), deep_link


def test_a_subscribers_page_costs_the_same_statements_with_150_deliveries_as_with_one(app, client, publisher):
    statements = {}
    for runs in (1, 150):
        with app.app_context():
            Reader(client, f"ada{runs}@example.org").subscribe(source=f"{BASE_URL}/")
            ada = db.session.scalar(select(Subscriber).where(Subscriber.email == f"ada{runs}@example.org"))
            digests = [Digest(slot=f"manual:{runs}:{n}", cutoff=utcnow(), created_at=utcnow()) for n in range(runs)]
            db.session.add_all(digests)
            db.session.flush()
            db.session.execute(insert(Delivery), [{"digest_id": d.id, "subscriber_id": ada.id, "status": "sent",
                                                   "attempts": 1, "sent_at": utcnow()} for d in digests])
            db.session.commit()
            ada_id = ada.id
        with app.app_context(), counting() as tally:
            page = text_of(client.get(f"/studio/subscribers/{ada_id}"))
        statements[runs] = len(tally.statements)
        assert "Front page" in page and "192.0.2.10" in page and "Signed up" in page and "Confirmation" in page
        assert page.count("<td>sent</td>") == min(runs, 20) and f"{runs} digest{'s' if runs > 1 else ''}: {runs} sent." in page
    no_inline_script(page)
    assert statements[1] == statements[150] <= 10, statements


def test_the_publisher_resends_unsubscribes_and_erases(app, client, publisher, mailbox):
    Reader(client, "pat@example.org").subscribe()
    pat = subscriber(app, "pat@example.org")
    page = f"/studio/subscribers/{pat.id}"
    assert "Resend the confirmation" in text_of(client.get(page))

    answer = publisher.form(page, f"{page}/resend")
    assert answer.status_code == 303 and answer.headers["Location"] == page
    assert "less than 10 minutes ago" in text_of(client.get(page))  # the signup's own email just went
    with app.app_context():
        db.session.execute(Subscriber.__table__.update().values(last_confirmation_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    publisher.form(page, f"{page}/resend")
    shown = text_of(client.get(page))
    assert "A new confirmation email is on its way to pat@example.org." in shown
    assert "Confirmation sent again" in shown and shown.count("<td>Confirmation</td>") == 2

    publisher.form(page, f"{page}/unsubscribe")
    assert subscriber(app, "pat@example.org").status == "unsubscribed"
    shown = text_of(client.get(page))
    assert "pat@example.org is unsubscribed" in shown and "by the publisher" in shown
    assert f"{page}/unsubscribe" not in shown and f"{page}/resend" not in shown

    refused = publisher.form(page, f"{page}/erase")
    assert refused.status_code == 422 and "Tick the box" in refused.get_data(as_text=True)
    assert subscriber(app, "pat@example.org") is not None
    erased = publisher.form(page, f"{page}/erase", confirm="yes")
    assert erased.status_code == 303 and erased.headers["Location"] == "/studio/subscribers"
    assert subscriber(app, "pat@example.org") is None
    assert "pat@example.org is erased" in text_of(client.get("/studio/subscribers"))
    assert client.get(page).status_code == 404 and client.get("/studio/subscribers/x1").status_code == 404
    with app.app_context():
        assert db.session.scalars(select(OutboxEmail)).all() == []


UPLOAD = ("email,name,status,subscribed_at\n"
          "ada@example.org,Ada,confirmed,2025-01-02T03:04:05Z\n"
          "not-an-email,Bad,confirmed,\n"
          "bob@example.org,Bob,royalty,\n"
          "cy@example.org,Cy,,\n")


def test_a_csv_upload_imports_and_reports_each_bad_line(app, client, publisher):
    form = text_of(client.get("/studio/subscribers/import"))
    no_inline_script(form)
    answer = client.post("/studio/subscribers/import", content_type="multipart/form-data",
                         data={"csrf_token": csrf_token(form), "file": (io.BytesIO(UPLOAD.encode()), "list.csv")})
    report = text_of(answer)
    assert "Imported 2, unchanged 0, invalid 2." in report
    assert re.findall(r'<td class="num">(\d+)</td>', report) == ["3", "4"] and "royalty" in report
    assert subscriber(app, "ada@example.org").status == "confirmed" and subscriber(app, "cy@example.org").status == "pending"

    bad = client.post("/studio/subscribers/import", content_type="multipart/form-data",
                      data={"csrf_token": csrf_token(form), "file": (io.BytesIO(b"\xff\xfe"), "list.csv")})
    assert bad.status_code == 422 and "must be UTF-8" in bad.get_data(as_text=True)
    empty = client.post("/studio/subscribers/import", content_type="multipart/form-data", data={"csrf_token": csrf_token(form)})
    assert empty.status_code == 422 and "Choose a CSV file" in empty.get_data(as_text=True)


def test_the_export_downloads_every_subscriber(app, client, publisher):
    with app.app_context():
        seed_list(5)
    answer = client.get("/studio/subscribers/export.csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="subscribers.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert sorted(row["email"] for row in rows) == [f"r{n}@example.org" for n in range(5)]


def test_the_pages_are_for_staff_only(app, client):
    for path in ("/studio/", "/studio/subscribers", "/studio/subscribers/1", "/studio/subscribers/import",
                 "/studio/subscribers/export.csv"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/studio/signin"), path


def test_the_dashboard_before_any_roll_up(app, client, publisher):
    page = text_of(client.get("/studio/"))
    assert "No figures yet" in page and "No signups in this period yet." in page


def test_the_api_answers_the_same_figures(app, client, admin):
    with app.app_context():
        slug = posts.create("Harbour notes", "Words.", "subscribers", True).slug
    Reader(client, "ada@example.org").subscribe(source=f"{BASE_URL}/p/{slug}")
    with app.app_context():
        stats.roll_up()
    answer = admin.get("/stats?days=30")
    assert answer.status_code == 200
    figures = answer.get_json()
    assert figures["confirmed"] == 0 and figures["last_30_days"]["signups"] == 1 and len(figures["days"]) == 31
    assert figures["days"][-1]["signups"] == 1 and figures["days"][-1]["day"] == utcnow().date().isoformat()
    assert figures["sources"] == [{"source": f"post:{slug}", "label": "Harbour notes", "signups": 1, "confirmations": 0}]
    assert len(admin.get("/stats?days=5000").get_json()["days"]) == stats.MAX_DAYS
    assert client.get("/api/v1/stats").status_code == 401
    assert "/stats" in client.get("/api/v1/openapi.json").get_json()["paths"]
