"""The publisher's subscriber list: the admin API (pages, filter, CSV) and the CLI import/export."""
from __future__ import annotations

import csv
import io

from sqlalchemy import select

from service.extensions import db
from service.models import Event, Subscriber

from .helpers import subscriber

GOOD_AND_BAD = (
    "email,name,status,subscribed_at\n"
    "ada@example.org,Ada,confirmed,2025-01-02T03:04:05Z\n"
    "not-an-email,Bad,confirmed,2025-01-02\n"
    "bob@example.org,Bob,pending,\n"
    "carl@example.org,Carl,confirmed,yesterday\n"
    "dee@example.org,\"Dee, \"\"the\"\" reader\",unsubscribed,2024-12-31\n"
    "eve@example.org,Eve,royalty,2025-01-01\n"
    "Ada@Example.org,Ada again,confirmed,2025-01-02\n"
)


def test_import_keeps_valid_rows_and_reports_bad_ones_by_line(admin, app):
    answer = admin.post("/subscribers/import", data=GOOD_AND_BAD, content_type="text/csv")
    assert answer.status_code == 200
    report = answer.get_json()
    assert report["imported"] == 3 and report["unchanged"] == 1
    assert [error["line"] for error in report["errors"]] == [3, 5, 7]
    ada = subscriber(app, "ada@example.org")
    assert ada.status == "confirmed" and ada.consent_source == "import" and ada.confirmed_at.year == 2025
    assert ada.digest_watermark is not None
    assert subscriber(app, "bob@example.org").status == "pending"
    assert subscriber(app, "dee@example.org").name == 'Dee, "the" reader'


def test_reimport_is_idempotent(admin, app):
    admin.post("/subscribers/import", data=GOOD_AND_BAD, content_type="text/csv")
    again = admin.post("/subscribers/import", data=GOOD_AND_BAD, content_type="text/csv").get_json()
    assert again["imported"] == 0 and again["unchanged"] == 4
    with app.app_context():
        assert len(db.session.scalars(select(Subscriber)).all()) == 3


def test_import_never_resubscribes_someone_who_left(admin, app):
    admin.post("/subscribers/import", data="email,status\nleft@example.org,unsubscribed\n", content_type="text/csv")
    admin.post("/subscribers/import", data="email,status\nleft@example.org,confirmed\n", content_type="text/csv")
    assert subscriber(app, "left@example.org").status == "unsubscribed"


def test_import_as_multipart_file_and_bad_files(admin):
    upload = {"file": (io.BytesIO(b"email,name\nfile@example.org,File\n"), "list.csv")}
    assert admin.post("/subscribers/import", data=upload, content_type="multipart/form-data").get_json()["imported"] == 1
    assert admin.post("/subscribers/import", data="name\nx\n", content_type="text/csv").status_code == 422
    assert admin.post("/subscribers/import", data=b"\xff\xfe", content_type="text/csv").status_code == 422


def test_list_paginates_and_filters(admin, app):
    rows = "email,status\n" + "".join(f"r{n}@example.org,{'confirmed' if n % 2 else 'pending'}\n" for n in range(25))
    admin.post("/subscribers/import", data=rows, content_type="text/csv")
    first = admin.get("/subscribers?per_page=10").get_json()
    assert first["total"] == 25 and first["pages"] == 3 and len(first["subscribers"]) == 10
    last = admin.get("/subscribers?per_page=10&page=3").get_json()
    assert len(last["subscribers"]) == 5
    confirmed = admin.get("/subscribers?status=confirmed&per_page=100").get_json()
    assert confirmed["total"] == 12 and {s["status"] for s in confirmed["subscribers"]} == {"confirmed"}
    assert admin.get("/subscribers?status=royalty").status_code == 422
    assert admin.client.get("/api/v1/subscribers").status_code == 401


def test_csv_export_round_trips_and_defuses_formulas(admin, app):
    admin.post("/subscribers/import", data="email,name,status\nx@example.org,=HYPERLINK(1),confirmed\n",
               content_type="text/csv")
    answer = admin.get("/subscribers?format=csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    [row] = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert row["email"] == "x@example.org" and row["name"] == "'=HYPERLINK(1)" and row["status"] == "confirmed"
    again = admin.post("/subscribers/import", data=answer.get_data(), content_type="text/csv").get_json()
    assert again == {"imported": 0, "unchanged": 1, "errors": [], "invalid": 0}


def test_cli_import_and_export(runner, app, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(GOOD_AND_BAD, encoding="utf-8")
    result = runner.invoke(args=["subscribers", "import", str(source)])
    assert result.exit_code == 1
    assert "imported 3, unchanged 1, invalid 3" in result.stdout
    assert f"{source}:3:" in result.stderr and f"{source}:7:" in result.stderr
    target = tmp_path / "out.csv"
    result = runner.invoke(args=["subscribers", "export", str(target)])
    assert result.exit_code == 0, result.output
    emails = [row["email"] for row in csv.DictReader(io.StringIO(target.read_text(encoding="utf-8")))]
    assert sorted(emails) == ["ada@example.org", "bob@example.org", "dee@example.org"]


def test_openapi_describes_the_subscriber_routes(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert "get" in paths["/subscribers"] and "post" in paths["/subscribers/import"]


FORMULA_ROWS = (
    "email,name,status\n"
    "=cmd|x!A0@example.org,Plain,confirmed\n"
    "+1-555@example.org,-2+3,pending\n"
    "-minus@example.org,@SUM(A1),confirmed\n"
    "quote@example.org,'=already quoted,confirmed\n"
)


def test_every_exported_cell_is_defused_and_an_export_reimports_as_the_same_addresses(admin, app, backend):
    assert admin.post("/subscribers/import", data=FORMULA_ROWS, content_type="text/csv").get_json()["imported"] == 4
    exported = admin.get("/subscribers?format=csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(exported)))[1:]
    assert len(rows) == 4
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert ["'=cmd|x!a0@example.org", "Plain"] == rows[0][:2]
    before = {(row.email, row.name, row.status) for row in _all_subscribers(app)}
    with app.app_context():
        backend.clean()
    report = admin.post("/subscribers/import", data=exported, content_type="text/csv").get_json()
    assert report == {"imported": 4, "unchanged": 0, "errors": [], "invalid": 0}
    assert {(row.email, row.name, row.status) for row in _all_subscribers(app)} == before
    # An apostrophe before a formula character is the spreadsheet's own escape: it is read as one.
    assert ("quote@example.org", "=already quoted", "confirmed") in before


def _all_subscribers(app) -> list[Subscriber]:
    with app.app_context():
        rows = list(db.session.scalars(select(Subscriber)))
        db.session.expunge_all()
        return rows


def test_a_large_import_goes_in_batches_and_lists_the_first_thousand_bad_rows(admin, app):
    from service.readers import subscriber_csv

    from .test_page_memory import Statements

    rows = ["email,name,status"]
    for n in range(2_500):
        rows.append(f"bulk{n % 2_300}@example.org,Reader {n},{'confirmed' if n % 3 else 'pending'}")  # 200 twice
        if n % 2 == 0:
            rows.append(f"not an address {n},x,confirmed")
    with Statements(app) as counted:
        report = admin.post("/subscribers/import", data="\n".join(rows) + "\n", content_type="text/csv").get_json()
    assert report["imported"] == 2_300 and report["unchanged"] == 200 and report["invalid"] == 1_250
    assert len(report["errors"]) == subscriber_csv.LISTED_ERRORS and report["errors"][0]["line"] == 3
    assert counted.count < 40  # a few statements a batch of 1,000, not a few a row
    with app.app_context():
        confirmed = db.session.scalar(select(Subscriber).where(Subscriber.email == "bulk1@example.org"))
        assert confirmed.status == "confirmed" and confirmed.confirmed_at and confirmed.digest_watermark
        assert confirmed.token_key and confirmed.consent_source == "import"
        events = db.session.scalars(select(Event.kind).where(Event.kind == "import")).all()
        assert len(events) == 2_300
        tokens = db.session.scalars(select(Subscriber.token_key)).all()
        assert len(set(tokens)) == len(tokens)  # each row its own key


def test_the_csv_export_streams(admin, app):
    admin.post("/subscribers/import", data="email\n" + "".join(f"s{n}@example.org\n" for n in range(3_000)),
               content_type="text/csv")
    answer = admin.get("/subscribers?format=csv", buffered=False)
    assert answer.is_streamed
    chunks = list(answer.response)
    assert len(chunks) > 1  # written as it is read, 64 KB at a time
    assert "".join(chunk if isinstance(chunk, str) else chunk.decode() for chunk in chunks).count("\n") == 3_001
