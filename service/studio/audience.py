"""The studio's dashboard and subscriber pages, on the studio blueprint (routes thin, rules in the domain packages)."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Response, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse  # what redirect() returns (flask.Response subclasses it)

from ..errors import Conflict, NotFound, ValidationError, show_form_errors_on
from ..models import utcnow
from ..publishing import memory
from ..readers import subscriber_csv, subscriber_list, subscriptions
from . import charts, stats
from .views import bp, staff_required

RANGES = (30, 90, 365)  # the dashboard's chart spans, in days
IMPORT_LIMIT = 20 * 1024 * 1024  # a whole list, as the API takes it


# --- dashboard ---

@bp.get("/")
@staff_required
def dashboard():
    days = request.args.get("days", 90, type=int)
    days = days if days in RANGES else 90
    # The figures change only when the roll-up runs (every minute): rendered once per roll-up, range and day,
    # then kept a moment (PAGE_CACHE_SECONDS) by the process, so a busy dashboard costs one statement.
    key = ("studio-dashboard", days, stats.rolled_up_at(), utcnow().date())
    figures = memory.remember(key, lambda: _figures(days))
    return render_template("studio/dashboard.html", figures=figures)


def _figures(days: int) -> Markup:
    board = stats.dashboard(days)
    return Markup(render_template("studio/_dashboard.html", board=board, days=days, ranges=RANGES, charts=_charts(board)))


def _charts(board: stats.Dashboard) -> list[charts.Chart]:
    shown, series = board.days, board.series
    return [
        charts.line_chart("subscribers", "Confirmed subscribers", shown, [("Confirmed subscribers", board.subscribers)],
                          per_day=False),
        charts.line_chart("signups", "Signups and confirmations per day", shown,
                          [("Signups", series["signups"]), ("Confirmations", series["confirmations"])]),
        charts.line_chart("leaving", "Unsubscribes and bounces per day", shown,
                          [("Unsubscribes", series["unsubscribes"]), ("Bounces", series["bounces"])]),
        charts.line_chart("mails", "Mails sent per day", shown,
                          [("Digests", series[stats.DIGESTS_SENT]), ("Confirmations, sign-in links, welcomes",
                                                                     series[stats.EMAILS])]),
    ]


# --- the list ---

@dataclass(frozen=True)
class ListQuery:
    """What the list page was asked for, as it goes back into its links."""

    search: str
    status: str

    def link(self, **cursor) -> str:
        return url_for("studio.subscribers", q=self.search or None, status=self.status or None, **cursor)


@bp.get("/subscribers")
@staff_required
def subscribers():
    query = ListQuery(request.args.get("q", "").strip(), request.args.get("status", ""))
    show_form_errors_on("studio/subscribers.html", query=query, found=None, statuses=subscriber_list.LISTED)
    found = subscriber_list.page(query.search, query.status or None, after=request.args.get("after", type=int),
                                 before=request.args.get("before", type=int))
    return render_template("studio/subscribers.html", query=query, found=found, statuses=subscriber_list.LISTED,
                           deep="after" in request.args or "before" in request.args)


@bp.get("/subscribers/export.csv")
@staff_required
def export_subscribers():
    response = Response(stream_with_context(subscriber_csv.export_chunks()), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="subscribers.csv"'
    return response


@bp.get("/subscribers/import")
@staff_required
def import_form():
    return render_template("studio/subscribers_import.html", report=None)


@bp.post("/subscribers/import")
@staff_required
def import_subscribers():
    request.max_content_length = IMPORT_LIMIT
    show_form_errors_on("studio/subscribers_import.html", report=None)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ValidationError("Choose a CSV file to import.", field="file")
    report = subscriber_csv.import_binary(upload.stream)
    return render_template("studio/subscribers_import.html", report=report, filename=upload.filename)


# --- one subscriber ---

@bp.get("/subscribers/<subscriber_id>")
@staff_required
def subscriber(subscriber_id: str):
    return render_template("studio/subscriber.html", **_subscriber_page(_id(subscriber_id)))


@bp.post("/subscribers/<subscriber_id>/unsubscribe")
@staff_required
def unsubscribe(subscriber_id: str):
    return _act(subscriber_id, subscriptions.unsubscribe_for_publisher, "{email} is unsubscribed: no more digests.")


@bp.post("/subscribers/<subscriber_id>/resend")
@staff_required
def resend_confirmation(subscriber_id: str):
    return _act(subscriber_id, subscriptions.resend_confirmation, "A new confirmation email is on its way to {email}.")


@bp.post("/subscribers/<subscriber_id>/erase")
@staff_required
def erase(subscriber_id: str):
    page = _subscriber_page(_id(subscriber_id))
    show_form_errors_on("studio/subscriber.html", **page)
    if request.form.get("confirm") != "yes":
        raise ValidationError("Tick the box to confirm the erasure.", field="confirm")
    email = page["record"].subscriber.email
    subscriptions.erase_for_publisher(page["record"].subscriber.id)
    flash(f"{email} is erased, with their consent record and history. An anonymous event stays in the log.")
    return redirect(url_for("studio.subscribers"), 303)


def _subscriber_page(number: int) -> dict:
    found = subscriber_list.record(number)
    source = stats.normalise_source(found.subscriber.consent_source, current_app.config["BASE_URL"])
    return {"record": found, "source": stats.describe_source(source) if source else None}


def _act(subscriber_id: str, action, done: str) -> BaseResponse:
    """Run one action; a refusal (already unsubscribed, too soon) is shown on the subscriber's page, not as an error."""
    number = _id(subscriber_id)
    try:
        changed = action(number)
    except Conflict as refusal:
        flash(refusal.message)
    else:
        flash(done.format(email=changed.email))
    return redirect(url_for("studio.subscriber", subscriber_id=number), 303)


def _id(value: str) -> int:
    if not value.isdigit():
        raise NotFound("No such subscriber.")
    return int(value)
