"""The studio's pages under /studio: sign-in, posts, digests, settings (routes thin, rules in the domain packages)."""
from __future__ import annotations

from datetime import datetime
from functools import wraps
from zoneinfo import available_timezones

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response  # flask.Response's base: what redirect() returns

from ..digests import preview as digest_preview
from ..digests import runs
from ..errors import ValidationError, show_form_errors_on
from ..extensions import limiter
from ..models import Staff
from ..publishing import posts, publication
from ..readers.addresses import safe_next
from ..web.headers import allow_framing
from ..web.reader import article_page
from . import staff as accounts

bp = Blueprint("studio", __name__)
COOKIE = "kr_studio"
COOKIE_PATH = "/studio"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TOO_MANY = "Too many sign-in attempts. Wait a few minutes, then try again."
# The editor's choices, in the order a publisher weighs them: (visibility, label, what readers get).
VISIBILITY_CHOICES = (
    ("subscribers", "Subscribers", "others see the teaser and the subscribe block"),
    ("metered", "Metered", "readers who are not subscribed read a few such posts a month in full, then the teaser"),
    ("popup", "Everyone, with a subscribe pop-up", "full text; readers who are not subscribed are invited as they read"),
    ("public", "Everyone", "full text, no prompt"),
)


def _account_key() -> str:
    """Sign-in limits per account: counted on the address typed, whoever types it and from wherever."""
    return "studio-account:" + str(request.form.get("email", "")).strip().lower()


per_ip = limiter.shared_limit(lambda: current_app.config["STUDIO_SIGNIN_RATE_LIMIT"], scope="studio-ip", methods=["POST"])
per_account = limiter.shared_limit(lambda: current_app.config["STUDIO_ACCOUNT_RATE_LIMIT"], scope="studio-account",
                                   key_func=_account_key, methods=["POST"])


# --- who gets in ---

def current_staff() -> Staff | None:
    if "staff" not in g:
        g.staff = accounts.staff_for_session(request.cookies.get(COOKIE))
    return g.staff


def staff_required(view):
    """Studio pages are for signed-in staff: anyone else (a reader's cookie too) is sent to the sign-in page."""

    @wraps(view)
    def guarded(*args, **kwargs):
        if current_staff() is None:
            next_url = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("studio.signin_form", next=next_url), 303)
        return view(*args, **kwargs)

    return guarded


@bp.after_request
def not_stored(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Cookie")
    return response


@bp.errorhandler(429)
def too_many(_error):
    return render_template("studio/signin.html", next_url=_studio_next(request.form.get("next")), limited=TOO_MANY), 429


@bp.get("/signin")
def signin_form():
    return render_template("studio/signin.html", next_url=_studio_next(request.args.get("next")))


@bp.post("/signin")
@per_ip
@per_account
def signin():
    show_form_errors_on("studio/signin.html", next_url=_studio_next(request.form.get("next")))
    staff = accounts.check_password(request.form.get("email"), request.form.get("password"))
    return _signed_in(staff, request.form.get("next"))


@bp.post("/signin/email")
@per_ip
@per_account
def request_link():
    show_form_errors_on("studio/signin.html", next_url=_studio_next(None))
    accounts.request_signin_link(request.form.get("email"))
    return render_template("studio/signin.html", next_url=_studio_next(None), link_sent=True)


@bp.get("/signin/<token>")
def signin_link(token: str):
    accounts.check_link("studio_signin", token)
    return render_template("studio/link.html", purpose="studio_signin")


@bp.post("/signin/<token>")
@per_ip
def use_signin_link(token: str):
    show_form_errors_on("studio/link.html", purpose="studio_signin")
    staff = accounts.use_link("studio_signin", token, request.form.get("password"), request.form.get("repeat"))
    return _signed_in(staff, None)


@bp.get("/welcome/<token>")
def set_password(token: str):
    staff = accounts.check_link("studio_invite", token)
    return render_template("studio/link.html", purpose="studio_invite", invited=staff)


@bp.post("/welcome/<token>")
@per_ip
def choose_password(token: str):
    show_form_errors_on("studio/link.html", purpose="studio_invite", invited=accounts.check_link("studio_invite", token))
    staff = accounts.use_link("studio_invite", token, request.form.get("password"), request.form.get("repeat"))
    return _signed_in(staff, None)


@bp.post("/signout")
@staff_required
def signout():
    accounts.end_session(request.cookies.get(COOKIE))
    response = redirect(url_for("studio.signin_form"), 303)
    _forget_cookie(response)
    return response


@bp.get("/password")
@staff_required
def password_form():
    return render_template("studio/password.html")


@bp.post("/password")
@staff_required
def change_password():
    show_form_errors_on("studio/password.html")
    form = request.form
    accounts.change_password(g.staff, form.get("current_password"), form.get("password"), form.get("repeat"))
    flash("Your password is changed. Every other browser signed in to your account is signed out.")
    return _signed_in(g.staff, url_for("studio.dashboard"))


def _signed_in(staff: Staff, next_url: str | None) -> Response:
    """A fresh session for this browser (a session it held before ends: no fixation)."""
    accounts.end_session(request.cookies.get(COOKIE))
    token = accounts.start_session(staff, request.remote_addr, request.user_agent.string)
    response = redirect(_studio_next(next_url), 303)
    config = current_app.config
    response.set_cookie(COOKIE, token, max_age=config["STUDIO_SESSION_MAX_AGE"], path=COOKIE_PATH, httponly=True,
                        samesite="Strict", secure=config["SECURE_COOKIES"])
    return response


def _forget_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict",
                           secure=current_app.config["SECURE_COOKIES"])


def _studio_next(value) -> str:
    """Where to go after signing in: a studio path, else the dashboard."""
    dashboard = url_for("studio.dashboard")
    target = safe_next(value, dashboard)
    return target if target.startswith(COOKIE_PATH + "/") else dashboard


# --- the dashboard and the subscriber pages: in audience.py, on this blueprint ---


# --- posts ---

@bp.get("/posts")
@staff_required
def post_list():
    query = request.args.get("q", "")
    found = posts.every(title_contains=query)
    groups = {state: [post for post in found if post.state == state] for state in ("draft", "scheduled", "published")}
    return render_template("studio/posts.html", groups=groups, query=query)


@bp.get("/posts/new")
@staff_required
def new_post():
    return render_template("studio/editor.html", post=None, form={})


@bp.post("/posts/new")
@staff_required
def create_post():
    form = request.form
    show_form_errors_on("studio/editor.html", post=None)
    if form.get("action") == "preview":
        return _editor_with_preview(None)
    post = posts.create(form.get("title"), form.get("body"), form.get("visibility"), slug=form.get("slug") or None)
    flash("Draft saved.")
    return redirect(url_for("studio.edit_post", slug=post.slug), 303)


@bp.get("/posts/<slug>")
@staff_required
def edit_post(slug: str):
    post = posts.get(slug)
    return render_template("studio/editor.html", post=post, form={}, zone=publication.settings().timezone,
                           teaser_warning=posts.teaser_warning(post))


@bp.post("/posts/<slug>")
@staff_required
def save_post(slug: str):
    post = posts.get(slug)
    form = request.form
    show_form_errors_on("studio/editor.html", post=post, zone=publication.settings().timezone)
    if form.get("action") == "preview":
        return _editor_with_preview(post)
    changes = {"title": form.get("title"), "body": form.get("body"), "visibility": form.get("visibility"),
               "slug": form.get("slug") or post.slug}
    post = posts.update(slug, changes)
    flash("Saved.")
    return redirect(url_for("studio.edit_post", slug=post.slug), 303)


def _editor_with_preview(post):
    """The editor again, with what was typed and its server-rendered preview; nothing is saved."""
    form = request.form
    draft = posts.preview(form.get("title"), form.get("body"), form.get("visibility"), form.get("slug"))
    return render_template("studio/editor.html", post=post, form=form, preview=draft,
                           zone=publication.settings().timezone, teaser_warning=posts.teaser_warning(draft))


@bp.post("/posts/<slug>/publish")
@staff_required
def publish_post(slug: str):
    posts.update(slug, {"published": True})
    flash("Published.")
    return redirect(url_for("studio.edit_post", slug=slug), 303)


@bp.post("/posts/<slug>/unpublish")
@staff_required
def unpublish_post(slug: str):
    posts.update(slug, {"published": False})
    flash("Unpublished: the post is a draft again.")
    return redirect(url_for("studio.edit_post", slug=slug), 303)


@bp.post("/posts/<slug>/schedule")
@staff_required
def schedule_post(slug: str):
    post = posts.get(slug)
    show_form_errors_on("studio/editor.html", post=post, zone=publication.settings().timezone)
    when = _local_time(request.form.get("scheduled_at"), "scheduled_at") if request.form.get("action") != "cancel" else None
    post = posts.update(slug, {"scheduled_at": when, "published": False})
    flash(f"Scheduled for {_shown(post.scheduled_at)}." if post.scheduled_at else "No longer scheduled.")
    return redirect(url_for("studio.edit_post", slug=slug), 303)


@bp.get("/posts/<slug>/delete")
@staff_required
def confirm_delete(slug: str):
    return render_template("studio/delete.html", post=posts.get(slug))


@bp.post("/posts/<slug>/delete")
@staff_required
def delete_post(slug: str):
    post = posts.get(slug)
    show_form_errors_on("studio/delete.html", post=post)
    if request.form.get("confirm") != "yes":
        raise ValidationError("Tick the box to confirm the deletion.", field="confirm")
    posts.delete(slug)
    flash(f"“{post.title}” is deleted.")
    return redirect(url_for("studio.post_list"), 303)


@bp.get("/posts/<slug>/preview")
@staff_required
def anonymous_preview(slug: str):
    post = posts.get(slug)
    return render_template("studio/anonymous.html", post=post, teaser_warning=posts.teaser_warning(post),
                           reader_view=_reader_view(post))


def _reader_view(post) -> str:
    """What the framed page below shows, in the publisher's words."""
    free = publication.settings().free_articles
    return {
        "subscribers": "Readers who are not signed in see the teaser and the subscribe block.",
        "metered": f"Readers who are not subscribed read {free} metered post{'s' if free != 1 else ''} a month in "
                   "full, told how many are left; after that they see the teaser and the subscribe block, as below.",
        "popup": "Everyone reads all of it. Readers who are not subscribed are invited to subscribe in a pop-up "
                 "as they read (scroll the page below to see it), and by the form at its end.",
        "public": "This post is public: everyone reads all of it.",
    }[post.visibility]


@bp.get("/posts/<slug>/preview/reader")
@staff_required
def anonymous_page(slug: str):
    """Exactly the page the reader blueprint serves to someone not signed in (drafts dated as if published now)."""
    post = posts.get(slug)
    if post.published_at is None:
        post = posts.preview(post.title, post.body, post.visibility, post.slug)
        post.published_at = post.updated_at = datetime.now(publication.zone())
    allow_framing()
    return article_page(post, None)


# --- digests ---

@bp.get("/digests")
@staff_required
def digests():
    return render_template("studio/digests.html", runs=runs.history(50))


@bp.post("/digests")
@staff_required
def send_digest():
    frequency = request.form.get("frequency") or None
    summary = runs.summary(runs.send_now(frequency))
    flash(f"Digest run {summary['id']} is sending to {summary['recipients']} subscribers.")
    return redirect(url_for("studio.digests"), 303)


@bp.get("/digests/preview")
@staff_required
def digest_preview_page():
    address = request.args.get("email", "").strip()
    show_form_errors_on("studio/digest_preview.html", digest=None, address=address)
    digest = digest_preview.next_digest(address or None)
    to = digest.subscriber or g.staff
    message = None if digest.empty else digest.parsed(to.email, to.name or "")
    return render_template("studio/digest_preview.html", digest=digest, address=address, message=message)


@bp.get("/digests/preview/mail")
@staff_required
def digest_preview_mail():
    """The HTML part alone, for the preview page's frame."""
    digest = digest_preview.next_digest(request.args.get("email", "").strip() or None)
    if digest.empty:
        return render_template("studio/empty_mail.html")
    to = digest.subscriber or g.staff
    html_part = digest.parsed(to.email, to.name or "").get_body(preferencelist=("html",))
    assert html_part is not None  # a digest always has its HTML alternative (digests.message)
    html = html_part.get_content()
    allow_framing()
    return make_response(html)


@bp.post("/digests/test")
@staff_required
def send_test_digest():
    address = request.form.get("email", "").strip()
    show_form_errors_on("studio/digest_preview.html", digest=None, address=address)
    digest = digest_preview.next_digest(address or None)
    if digest.empty:
        raise ValidationError("There is nothing to send: no new posts for this reader.", field="email")
    digest_preview.send_test(digest, g.staff.email, g.staff.name)
    flash(f"A test digest is on its way to {g.staff.email}.")
    return redirect(url_for("studio.digest_preview_page", email=address or None), 303)


# --- settings ---

@bp.get("/settings")
@staff_required
def settings():
    return _settings_page()


@bp.post("/settings")
@staff_required
def save_settings():
    show_form_errors_on("studio/settings.html", **_settings_context())
    form = request.form
    changes = {
        "name": form.get("name", ""),
        "default_frequency": form.get("default_frequency"),
        "send_hour": _number(form.get("send_hour"), "send_hour"),
        "send_weekday": _number(form.get("send_weekday"), "send_weekday"),
        "timezone": form.get("timezone"),
        "teaser_words": _number(form.get("teaser_words"), "teaser_words"),
        "blocked_domains": form.get("blocked_domains", ""),
        "embed_origins": form.get("embed_origins", ""),
    }
    for field in READING_SETTINGS:  # the access modes' settings, as far as the form sent them
        if field in form:
            changes[field] = _number(form[field], field) if field in NUMBERS else form[field]
    posts.update_settings(changes)
    flash("Settings saved.")
    return redirect(url_for("studio.settings"), 303)


READING_SETTINGS = ("default_visibility", "free_articles", "popup_scroll_percent", "popup_delay_seconds",
                    "popup_snooze_days", "digest_content")
NUMBERS = {"free_articles", "popup_scroll_percent", "popup_delay_seconds", "popup_snooze_days"}


def _settings_page():
    return render_template("studio/settings.html", form={}, **_settings_context())


def _settings_context() -> dict:
    base_url = current_app.config["BASE_URL"]
    return {
        "current": publication.as_dict(),
        "zones": sorted(available_timezones()),
        "weekdays": WEEKDAYS,
        "embed_script": f'<script src="{base_url}/embed.js" data-keepreading></script>',
        "embed_form": f'<form method="post" action="{base_url}/subscribe">\n'
                      '  <label>Email address <input type="email" name="email" required></label>\n'
                      '  <button>Subscribe</button>\n</form>',
    }


# --- small parsers and the studio's clock ---

def _number(value, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValidationError("Enter a whole number.", field=field) from None


def _local_time(value, field: str) -> datetime:
    """A datetime-local field, read in the publication's time zone."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationError("Choose a date and a time.", field=field) from None
    return moment.replace(tzinfo=publication.zone()) if moment.tzinfo is None else moment


def _shown(moment: datetime | None) -> str:
    return moment.astimezone(publication.zone()).strftime("%d %b %Y, %H:%M %Z").lstrip("0") if moment else ""


@bp.app_template_filter("studio_time")
def studio_time(moment: datetime | None) -> str:
    """A moment as the publisher reads it: in the publication's time zone."""
    return _shown(moment)


@bp.app_template_filter("studio_iso")
def studio_iso(text: str | None) -> str:
    """An ISO 8601 moment (as the digest summaries carry them), shown like `studio_time`."""
    return _shown(datetime.fromisoformat(text)) if text else ""


@bp.app_template_filter("studio_duration")
def studio_duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s" if minutes else f"{rest} s"


@bp.app_template_filter("studio_local_input")
def studio_local_input(moment: datetime | None) -> str:
    """A moment as a datetime-local field's value, in the publication's time zone."""
    return moment.astimezone(publication.zone()).strftime("%Y-%m-%dT%H:%M") if moment else ""


@bp.app_template_filter("visibility_label")
def visibility_label(visibility: str) -> str:
    return posts.VISIBILITY_LABELS.get(visibility, visibility)


@bp.app_context_processor
def studio_context() -> dict:
    return {"studio_staff": lambda: g.get("staff"), "visibility_choices": VISIBILITY_CHOICES,
            "default_visibility": lambda: publication.settings().default_visibility}
