"""CLI commands on the `keepreading` group: posts, subscribers, digests, demo content and studio staff."""
from __future__ import annotations

import copy
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import func, select

from .errors import DomainError
from .extensions import create_broker_tables, db
from .models import VISIBILITIES, Digest, Post
from .publishing import demo, posts
from .readers import subscriber_csv

WAIT_RECOVER_SECONDS = 10.0  # `digest send --wait`: how often it recovers stale claims


def register(app: Flask) -> None:
    for command in every_command():
        app.cli.add_command(command)


def every_command() -> list[click.Command]:
    """The project's commands. The `keepreading` script lists them without building the app (which needs a
    secret and an instance folder), so a new command goes here, not only onto app.cli."""
    return [posts_group, demo_command, digest_group, subscribers_group, staff_group, _migrations_group(),
            backup_command, restore_command]


def _migrations_group() -> click.Group:
    """Flask-Migrate's `db` group, whose `upgrade` also makes the embedded broker's tables."""
    from flask_migrate.cli import db as migrations
    from flask_migrate.cli import upgrade as upgrade_schema

    @click.command("upgrade", params=upgrade_schema.params, help=upgrade_schema.help)
    @click.pass_context
    @with_appcontext
    def upgrade(context: click.Context, **options) -> None:
        context.invoke(upgrade_schema, **options)
        if not options["sql"]:  # --sql only prints the migrations' SQL
            create_broker_tables(current_app.extensions["celery"])

    group = copy.copy(migrations)
    group.commands = {**migrations.commands, "upgrade": upgrade}
    return group


@click.group("posts", cls=AppGroup, help="Publish and list posts.")
def posts_group():
    pass


@posts_group.command("add")
@click.option("--title", required=True)
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--visibility", type=click.Choice(list(VISIBILITIES)), default=None,
              help="who reads it in full (README: Access modes); default: the publication's default_visibility")
@click.option("--slug", default=None, help="defaults to one made from the title")
@click.option("--publish", is_flag=True, help="publish now (otherwise saved as a draft)")
def add_post(title: str, path: Path, visibility: str | None, slug: str | None, publish: bool):
    """Add a post from a Markdown file."""
    try:
        post = posts.create(title, path.read_text(encoding="utf-8"), visibility, publish, slug)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    state = "published" if post.published else "draft"
    click.echo(f"{state}: {current_app.config['BASE_URL']}/p/{post.slug}")
    warning = posts.teaser_warning(post)
    if warning:
        click.echo(f"warning: {warning}", err=True)


@posts_group.command("list")
def list_posts():
    """One line a post: state, visibility, slug, title; a warning line under a gated post whose teaser is most of it."""
    for post in posts.every():
        state = post.published_at.date().isoformat() if post.published_at else "draft"
        click.echo(f"{state:<10}  {post.visibility:<11}  {post.slug}  {post.title}")
        warning = posts.teaser_warning(post)
        if warning:
            click.echo(f"{'':<10}  warning: {warning}")


@click.group("subscribers", cls=AppGroup, help="Import and export the subscriber list as CSV.")
def subscribers_group():
    pass


@subscribers_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_subscribers(path: Path):
    """Import FILE.csv (email,name,status,subscribed_at); bad rows are listed by line and skipped."""
    try:
        with path.open("rb") as stream:
            report = subscriber_csv.import_binary(stream)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    for problem in report.errors:
        click.echo(f"{path}:{problem['line']}: {problem['message']}", err=True)
    if report.invalid > len(report.errors):
        click.echo(f"{path}: {report.invalid - len(report.errors)} more invalid rows", err=True)
    click.echo(f"imported {report.imported}, unchanged {report.unchanged}, invalid {report.invalid}")
    if report.errors:
        raise SystemExit(1)


@subscribers_group.command("export")
@click.argument("path", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def export_subscribers(path: Path):
    """Write every subscriber to FILE.csv."""
    with path.open("w", encoding="utf-8", newline="") as stream:
        count = subscriber_csv.export(stream)
    click.echo(f"exported {count} subscribers to {path}")


@click.command("demo")
@with_appcontext
@click.option("--if-empty", is_flag=True, help="only when no post exists yet")
def demo_command(if_empty: bool):
    """Load the original demo posts (one or more in each access mode)."""
    if if_empty and db.session.scalar(select(func.count()).select_from(Post)):
        click.echo("posts exist already; demo not loaded")
        return
    for post in demo.load():
        click.echo(f"{post.visibility:<11}  {current_app.config['BASE_URL']}/p/{post.slug}")


@click.group("digest", cls=AppGroup, help="Send digests of new posts.")
def digest_group():
    pass


@digest_group.command("send")
@click.option("--frequency", type=click.Choice(["daily", "weekly"]), default=None,
              help="only subscribers of this cadence (default: all but those who turned digests off)")
@click.option("--wait", is_flag=True, help="block until the run is settled, then print its counts")
@click.option("--timeout", type=float, default=3600, show_default=True, help="seconds --wait waits at most")
def send_digest(frequency: str | None, wait: bool, timeout: float):
    """Send a digest now to every confirmed subscriber with unseen posts, whatever the clock says."""
    from .digests import runs

    digest = runs.send_now(frequency)
    summary = runs.summary(digest)
    click.echo(f"digest {digest.id}: {summary['recipients']} recipients queued")
    if wait:
        summary = _wait_for(digest.id, timeout)
        counts = summary["counts"]
        click.echo(f"sent {counts['sent']}, failed {counts['failed']}, skipped {counts['skipped']}")
        if summary["finished_at"] is None:
            raise click.ClickException(f"not settled after {timeout:g}s: is a worker running?")


def _wait_for(digest_id: int, timeout: float) -> dict:
    """Poll the run until none of its deliveries is open: its finished_at every half second (one row), and the
    recovery of stale claims at most every WAIT_RECOVER_SECONDS (a lease is minutes long: recovering more often
    finds nothing, and at a million deliveries each pass read the run's open rows for a second of the
    database's time, slowing the run it waited for)."""
    import time

    from .digests import runs

    deadline = time.monotonic() + timeout
    every = min(WAIT_RECOVER_SECONDS, current_app.config["DELIVERY_LEASE"] / 4)
    recover_at = time.monotonic() + every
    while True:
        finished = db.session.scalar(select(Digest.finished_at).where(Digest.id == digest_id))
        db.session.rollback()  # the next look sees the workers' commits
        if finished is not None or time.monotonic() > deadline:
            return runs.settle(digest_id)
        if time.monotonic() >= recover_at:
            runs.settle(digest_id)
            recover_at = time.monotonic() + every
        time.sleep(0.5)


@click.group("staff", cls=AppGroup, help="Studio accounts: who may sign in under /studio.")
def staff_group():
    pass


@staff_group.command("add")
@click.argument("email")
@click.option("--name", default="", help="shown in the studio and in its emails")
def add_staff(email: str, name: str):
    """Create a studio account and invite EMAIL to choose a password (printed in development, emailed otherwise)."""
    from .studio import staff

    try:
        account = staff.add(email, name)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    link = staff.invite(account)
    if link:
        click.echo(f"{account.email} can choose a password at (works once, for a week):\n  {link}")
    else:
        click.echo(f"{account.email} is invited: an email with a link to choose a password is on its way")


@staff_group.command("list")
def list_staff():
    """One line an account: email, name, whether a password is set, last sign-in."""
    from .studio import staff

    for account in staff.every():
        last = account.last_signin_at.strftime("%Y-%m-%d %H:%M") if account.last_signin_at else "never signed in"
        state = "password set" if account.password_hash else "invited"
        click.echo(f"{account.email:<32}  {state:<12}  {last:<16}  {account.name}")


@staff_group.command("remove")
@click.argument("email")
def remove_staff(email: str):
    """Delete a studio account; every browser signed in to it is signed out at once."""
    from .studio import staff

    try:
        staff.remove(email)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    click.echo(f"removed {email}")


@staff_group.command("ensure-first")
def ensure_first_staff():
    """Development (`make run`): a first studio account if there is none, and a link to sign in with it."""
    from .studio import staff

    if current_app.config["ENV"] != "development":
        raise click.ClickException("ensure-first is for development; use `keepreading staff add EMAIL`")
    account, link = staff.ensure_first()
    action = "sign in" if account.password_hash else "choose a password"
    click.echo(f"\n  studio: {current_app.config['BASE_URL']}/studio/ as {account.email}; {action} at\n  {link}\n")


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
def backup_command(path: Path):
    """Copy the embedded database to PATH while the service runs (SQLite's online backup: one consistent
    snapshot; writers carry on). On PostgreSQL use pg_dump (README: Backups)."""
    import sqlite3

    source = _sqlite_path()
    if path.exists():
        raise click.ClickException(f"{path} exists: choose a new file")
    with sqlite3.connect(source, timeout=30) as live, sqlite3.connect(path) as copy:
        live.backup(copy)  # every page in one step: the copy is the database as of one transaction
    copy.close()
    live.close()
    path.chmod(0o600)  # it holds the secrets of the readers' links and the staff's password hashes
    click.echo(f"backed up {source} to {path} ({path.stat().st_size} bytes)")


@click.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="do not ask before replacing the database")
@with_appcontext
def restore_command(path: Path, yes: bool):
    """Replace the embedded database with the backup at PATH (stop the web server and workers first).
    On PostgreSQL use pg_restore (README: Backups)."""
    import sqlite3

    target = _sqlite_path()
    try:
        with sqlite3.connect(path) as backup:
            problem = backup.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {row[0] for row in backup.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        backup.close()
    except sqlite3.DatabaseError as error:
        raise click.ClickException(f"{path} is not a keepreading backup ({error})") from None
    if problem != "ok" or not {"subscribers", "deliveries", "posts"} <= tables:
        raise click.ClickException(f"{path} is not a keepreading backup ({problem if problem != 'ok' else 'tables missing'})")
    if not yes:
        click.confirm(f"replace {target} with {path}?", abort=True)
    db.session.remove()
    db.engine.dispose()
    with sqlite3.connect(path) as backup, sqlite3.connect(target, timeout=30) as live:
        backup.backup(live)
    backup.close()
    live.close()
    click.echo(f"restored {target} from {path}")


def _sqlite_path() -> str:
    url = db.engine.url
    if url.get_backend_name() != "sqlite" or not url.database:
        raise click.ClickException("backup and restore copy the embedded SQLite database; "
                                   "on PostgreSQL use pg_dump and pg_restore (README: Backups)")
    return url.database
