"""The `keepreading` console script: Flask's CLI over create_app, listing every command without building the app."""
from __future__ import annotations

import click
from flask.cli import FlaskGroup
from sqlalchemy.exc import DBAPIError

from . import create_app
from .commands import every_command
from .config import ConfigError


class KeepreadingGroup(FlaskGroup):
    """`--help` lists the project's commands without loading the app, so it needs no secret and creates nothing;
    the app (and the instance folder) is built only when a command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted(self.commands)


def _create_app():
    try:
        return create_app()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


def group() -> click.Group:
    cli = KeepreadingGroup(name="keepreading", create_app=_create_app, load_dotenv=False, add_version_option=False,
                           help="keepreading: newsletter subscriptions and a paywall.")
    cli.params = [param for param in cli.params if param.name != "app"]  # the app is always ours: no --app
    click.version_option(package_name="keepreading")(cli)
    for command in every_command():
        cli.add_command(command)
    return cli


def main() -> None:
    try:
        group()(prog_name="keepreading")
    except DBAPIError as error:  # one line, not a traceback: the usual causes are the two below
        reason = str(error.orig).strip().splitlines()[0]
        click.echo(f"Error: the database answered: {reason} (is it reachable, and upgraded with "
                   "`keepreading db upgrade`?)", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
