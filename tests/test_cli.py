"""The posts and demo commands of the `keepreading` CLI."""
from sqlalchemy import func, select

from service.extensions import db
from service.models import Post
from service.publishing import demo


def test_posts_add_from_a_markdown_file(runner, client, tmp_path):
    source = tmp_path / "post.md"
    source.write_text("A first paragraph.\n\n<!--more-->\n\nThe rest for subscribers.", encoding="utf-8")
    result = runner.invoke(args=["posts", "add", "--title", "From the CLI", "--file", str(source), "--publish"])
    assert result.exit_code == 0, result.output
    assert "published: http://localhost/p/from-the-cli" in result.output
    page = client.get("/p/from-the-cli").get_data(as_text=True)
    assert "A first paragraph." in page and "The rest for subscribers." not in page


def test_posts_add_draft_and_public(runner, app, tmp_path):
    source = tmp_path / "post.md"
    source.write_text("Words.", encoding="utf-8")
    result = runner.invoke(args=["posts", "add", "--title", "Draft one", "--file", str(source), "--visibility", "public"])
    assert result.exit_code == 0 and result.output.startswith("draft:")
    with app.app_context():
        post = db.session.scalar(select(Post))
        assert post.visibility == "public" and post.published is False


def test_posts_add_reports_errors_cleanly(runner, tmp_path):
    source = tmp_path / "post.md"
    source.write_text("x", encoding="utf-8")
    runner.invoke(args=["posts", "add", "--title", "T", "--file", str(source), "--slug", "taken"])
    result = runner.invoke(args=["posts", "add", "--title", "T", "--file", str(source), "--slug", "taken"])
    assert result.exit_code == 1 and "slug 'taken' is taken" in result.output
    missing = runner.invoke(args=["posts", "add", "--title", "T", "--file", str(tmp_path / "nope.md")])
    assert missing.exit_code == 2


def test_posts_list(runner, admin):
    admin.publish(title="Listed one", visibility="public")
    admin.post("/posts", json={"title": "Unpublished", "body": "x"})
    lines = runner.invoke(args=["posts", "list"]).output.splitlines()
    assert any("public" in line and "listed-one" in line for line in lines)
    assert any(line.startswith("draft") and "unpublished" in line for line in lines)


def test_demo_loads_one_public_and_several_gated_posts(runner, app, client):
    result = runner.invoke(args=["demo"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        posts = db.session.scalars(select(Post)).all()
        visibilities = [post.visibility for post in posts]
    assert visibilities.count("public") == 1 and visibilities.count("subscribers") >= 2
    assert visibilities.count("popup") == 1 and visibilities.count("metered") == 1  # each access mode (issue 12)
    assert all(post.published for post in posts)
    gated = next(post for post in posts if post.visibility == "subscribers")
    assert "Subscribe to keep reading" in client.get(f"/p/{gated.slug}").get_data(as_text=True)


def test_demo_if_empty_does_not_load_twice(runner, app):
    runner.invoke(args=["demo"])
    again = runner.invoke(args=["demo", "--if-empty"])
    assert "posts exist already" in again.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Post)) == len(demo.POSTS)
