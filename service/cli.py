"""The `keepreading` console script: Flask's CLI over create_app (the factory registers the command groups)."""
from __future__ import annotations

import click
from flask.cli import FlaskGroup

from . import create_app


def group() -> click.Group:
    return FlaskGroup(name="keepreading", create_app=create_app, help="keepreading: newsletter subscriptions and a paywall.")


def main() -> None:
    group()()
