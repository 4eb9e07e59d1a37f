"""CLI commands on the `keepreading` group: posts and demo content."""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import func, select

from . import demo, posts
from .errors import DomainError
from .extensions import db
from .models import Post


def register(app: Flask) -> None:
    app.cli.add_command(posts_group)
    app.cli.add_command(demo_command)


@click.group("posts", cls=AppGroup, help="Publish and list posts.")
def posts_group():
    pass


@posts_group.command("add")
@click.option("--title", required=True)
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--visibility", type=click.Choice(["public", "subscribers"]), default="subscribers", show_default=True)
@click.option("--slug", default=None, help="defaults to one made from the title")
@click.option("--publish", is_flag=True, help="publish now (otherwise saved as a draft)")
def add_post(title: str, path: Path, visibility: str, slug: str | None, publish: bool):
    """Add a post from a Markdown file."""
    try:
        post = posts.create(title, path.read_text(encoding="utf-8"), visibility, publish, slug)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    state = "published" if post.published else "draft"
    click.echo(f"{state}: {current_app.config['BASE_URL']}/p/{post.slug}")


@posts_group.command("list")
def list_posts():
    """One line a post: state, visibility, slug, title."""
    for post in posts.every():
        state = post.published_at.date().isoformat() if post.published_at else "draft"
        click.echo(f"{state:<10}  {post.visibility:<11}  {post.slug}  {post.title}")


@click.command("demo")
@with_appcontext
@click.option("--if-empty", is_flag=True, help="only when no post exists yet")
def demo_command(if_empty: bool):
    """Load the original demo posts (one public, several for subscribers)."""
    if if_empty and db.session.scalar(select(func.count()).select_from(Post)):
        click.echo("posts exist already; demo not loaded")
        return
    for post in demo.load():
        click.echo(f"{post.visibility:<11}  {current_app.config['BASE_URL']}/p/{post.slug}")


def _cli() -> click.Group:
    from flask.cli import FlaskGroup

    from . import create_app

    return FlaskGroup(name="keepreading", create_app=create_app, help="keepreading: newsletter subscriptions and a paywall.")


def main() -> None:
    """The `keepreading` console script: Flask's CLI over create_app."""
    _cli()()
