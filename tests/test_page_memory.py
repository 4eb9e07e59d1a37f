"""The hot reading path: a bounded number of SQL statements per page view, and memory that never
serves one reader's page to another nor outlives a change made in this process."""
import pytest
from sqlalchemy import event

from service.extensions import db
from service.models import Subscriber, utcnow
from service.publishing.memory import Memory
from service.readers.access import COOKIE, session_token

TAIL = "the chart of the hidden channel"
BODY = f"Opening words.\n\n<!--more-->\n\nThen {TAIL}."


class Statements:
    """Counts the SQL statements the app sends while the block runs."""

    def __init__(self, app):
        self.app, self.count = app, 0

    def _seen(self, *args):
        self.count += 1

    def __enter__(self):
        with self.app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._seen)


def reader_cookie(app, status="confirmed", email="keeper@example.org"):
    with app.app_context():
        reader = Subscriber(email=email, status=status, confirmed_at=utcnow())
        db.session.add(reader)
        db.session.commit()
        return reader.id, session_token(reader)


@pytest.fixture
def post(admin):
    admin.publish(title="Channel notes", body=BODY)
    return "/p/channel-notes"


@pytest.mark.parametrize("signed_in", [False, True])
def test_statements_per_gated_view_do_not_grow_with_views(app, client, post, signed_in):
    if signed_in:
        client.set_cookie(COOKIE, reader_cookie(app)[1])
    with Statements(app) as first:
        assert client.get(post).status_code == 200
    with Statements(app) as next_hundred:
        for _ in range(100):
            client.get(post)
    assert first.count <= 4  # the post and the reader, and on a cold start the settings row
    assert next_hundred.count == 0


def test_archive_statements_do_not_grow_with_views(app, client, post):
    client.get("/")
    with Statements(app) as views:
        for _ in range(50):
            assert client.get("/").status_code == 200
    assert views.count == 0


def test_a_full_page_in_memory_is_never_served_to_a_reader_who_may_not_read(app, client, post):
    _, confirmed = reader_cookie(app)
    _, pending = reader_cookie(app, status="pending", email="pending@example.org")
    client.set_cookie(COOKIE, confirmed)
    assert TAIL in client.get(post).get_data(as_text=True)
    client.set_cookie(COOKIE, pending)
    assert TAIL not in client.get(post).get_data(as_text=True)
    client.delete_cookie(COOKIE)
    assert TAIL not in client.get(post).get_data(as_text=True)
    client.set_cookie(COOKIE, "forged" + confirmed)
    assert TAIL not in client.get(post).get_data(as_text=True)


def test_a_status_change_in_this_process_takes_effect_at_once(app, client, post):
    reader_id, cookie = reader_cookie(app)
    client.set_cookie(COOKIE, cookie)
    assert TAIL in client.get(post).get_data(as_text=True)
    with app.app_context():
        db.session.get(Subscriber, reader_id).status = "unsubscribed"
        db.session.commit()
    assert TAIL not in client.get(post).get_data(as_text=True)


def test_edits_and_unpublishing_show_at_once(app, client, admin, post):
    client.get(post)
    admin.patch("/posts/channel-notes", json={"title": "Channel notes, revised"})
    assert "Channel notes, revised" in client.get(post).get_data(as_text=True)
    admin.patch("/posts/channel-notes", json={"published": False})
    assert client.get(post).status_code == 404
    assert "Channel notes" not in client.get("/").get_data(as_text=True)


def test_memory_can_be_switched_off(app, client, post):
    app.extensions["page_memory"].seconds = 0
    client.get(post)
    with Statements(app) as views:
        client.get(post)
    assert views.count >= 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_an_expired_value_is_rebuilt_by_one_caller_while_others_keep_the_old_one():
    clock = Clock()
    memory = Memory(2, clock=clock)
    assert memory.remember("page", lambda: "v1") == "v1"
    clock.now = 3  # expired
    seen_during_rebuild = []

    def rebuild():
        seen_during_rebuild.append(memory.remember("page", lambda: "built twice"))
        return "v2"

    assert memory.remember("page", rebuild) == "v2"
    assert seen_during_rebuild == ["v1"]
    assert memory.remember("page", lambda: "not called") == "v2"


def test_a_value_built_across_a_forget_is_not_kept():
    memory = Memory(2, clock=Clock())

    def build_while_someone_writes():
        memory.forget_all()
        return "built from the old rows"

    assert memory.remember("page", build_while_someone_writes) == "built from the old rows"
    assert memory.remember("page", lambda: "fresh") == "fresh"


def test_size_is_bounded():
    memory = Memory(60, size=3, clock=Clock())
    for n in range(10):
        memory.remember(n, lambda n=n: n)
    assert len(memory.entries) <= 3


# --- metered posts (issue 12): the page depends on the browser's meter, so the meter is in the key ---

METERED_TAIL = "the buoy that sings at low tide"


@pytest.fixture
def metered(admin):
    slugs = []
    for n in range(1, 4):
        admin.publish(title=f"Sample {n}", body=f"Opening {n}.\n\n<!--more-->\n\nThen {METERED_TAIL}.", visibility="metered")
        slugs.append(f"/p/sample-{n}")
    admin.patch("/settings", json={"free_articles": 2})
    return slugs


def test_a_full_metered_page_in_memory_is_never_served_to_a_spent_meter(app, metered):
    app.extensions["page_memory"].seconds = 600
    first_reader, second_reader = app.test_client(), app.test_client()
    assert METERED_TAIL in first_reader.get(metered[2]).get_data(as_text=True)  # kept: the full page, 1 left
    for path in metered[:2]:
        assert METERED_TAIL in second_reader.get(path).get_data(as_text=True)
    spent = second_reader.get(metered[2]).get_data(as_text=True)
    assert METERED_TAIL not in spent and "Subscribe to keep reading" in spent
    tampered = app.test_client()
    tampered.set_cookie("kr_meter", "forged")
    assert METERED_TAIL not in tampered.get(metered[2]).get_data(as_text=True)
    assert METERED_TAIL in app.test_client().get(metered[2]).get_data(as_text=True)  # a fresh meter still reads


def test_statements_per_metered_view_do_not_grow_with_views(app, client, metered):
    with Statements(app) as first:
        assert client.get(metered[0]).status_code == 200
    with Statements(app) as next_hundred:
        for _ in range(100):
            assert METERED_TAIL in client.get(metered[0]).get_data(as_text=True)
    assert first.count <= 4
    assert next_hundred.count == 0
