"""Reader membership pages: subscribe, confirm, sign in, account, unsubscribe."""
from __future__ import annotations

import json
import secrets

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import escape
from werkzeug.wrappers import Response  # flask.Response's base: what redirect() returns

from ..errors import DomainError, ValidationError, clock_time, show_form_errors_on, wants_json
from ..extensions import csrf, limiter
from ..publishing import publication
from ..readers import abuse, access, subscriptions
from ..readers.addresses import clean_name, safe_next
from . import bodies
from .headers import allow_framing, private

bp = Blueprint("account", __name__)
SUBSCRIBED = "Check your inbox to confirm your subscription."
SIGNIN_SENT = "If that address is subscribed, a sign-in link is on its way. Check your inbox."
signup_limit = limiter.shared_limit(abuse.signup_limit, scope="signup", methods=["POST"])
# A reader's form may be larger than the app's body limit (a pasted novel in the name): read it, so the answer
# names the field that is too long and keeps the rest, instead of a bare 413.
FORM_MAX_BYTES = 256 * 1024
FORM_ENDPOINTS = {"account.subscribe", "account.signin", "account.account_action"}
# Pages are kept in memory per reader status, not per reader: they carry this per-process secret where the signed-in
# reader's address goes, and each answer gets its own reader's address as it leaves (as headers.py does nonces).
SIGNED_IN_AS = f"kr-reader-{secrets.token_hex(16)}"
NO_STAY_IN_TOUCH = {"account.subscribe"}  # its answer: the reader has just used a signup form
CONFIRMED = "You're subscribed. Welcome aboard: every post, and the whole archive, is yours to read."
SIGNED_IN = "Signed in. Welcome back: every post is yours to read."


@bp.url_value_preprocessor
def _room_for_forms(endpoint, _values):
    """Runs before every before_request hook (the CSRF check reads the form first)."""
    if endpoint in FORM_ENDPOINTS:
        request.max_content_length = FORM_MAX_BYTES


def subscribed_message() -> str:
    """The answer to every signup, the same words for every address: whether a mail went out now or the
    cooldown held it back is not said, only when asking again can help."""
    again = clock_time(current_app.config["CONFIRM_COOLDOWN"])
    return f"{SUBSCRIBED} If you don't see it within a few minutes, you can ask again after {again}."


@bp.post("/subscribe")
@csrf.exempt  # posted cross-site from embeds and publishers' own forms; it changes nothing a visitor owns
@signup_limit
def subscribe():
    fields = _fields()
    embedded = fields.get("embed") == "1"
    if embedded:
        allow_framing()
    show_form_errors_on("embed.html" if embedded else "subscribe.html", next_url=safe_next(fields.get("next")))
    subscriptions.subscribe(_signup(fields))
    return _answer(subscribed_message(), "embed.html" if embedded else "message.html", title="Check your inbox")


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    subscriptions.check_link("confirm", token)
    return _page("confirm.html")


@bp.post("/confirm/<token>")
def confirm(token: str):
    return _signed_in(*subscriptions.confirm(token), said=CONFIRMED)


@bp.get("/signin")
def signin_form():
    return _page("signin.html", next_url=safe_next(request.args.get("next")))


@bp.post("/signin")
@signup_limit
def signin():
    next_url = safe_next(request.form.get("next"))  # a hidden field: a bad one is the home page, not an error
    show_form_errors_on("signin.html", next_url=next_url)
    subscriptions.request_signin(request.form.get("email"), next_url, abuse.honeypot_filled(request.form))
    return _answer(SIGNIN_SENT, "message.html", title="Check your inbox")


@bp.get("/signin/<token>")
def signin_link_page(token: str):
    subscriptions.check_link("signin", token)
    return _page("signin_link.html")


@bp.post("/signin/<token>")
def signin_link(token: str):
    return _signed_in(*subscriptions.sign_in(token), said=SIGNED_IN)


@bp.post("/renew/<any(confirm, signin):purpose>/<token>")
@signup_limit
def renew(purpose: str, token: str):
    subscriptions.renew_link(purpose, token)
    return _answer("A fresh link is on its way. Check your inbox.", "message.html", title="Check your inbox")


@bp.get("/account")
def account():
    reader = access.current_reader()
    if reader is None:
        return redirect(url_for("account.signin_form", next=url_for("account.account")))
    return _page("account.html", reader=reader, default_frequency=publication.settings().default_frequency)


@bp.post("/account")
def account_action():
    reader = access.current_reader()
    if reader is None:
        return redirect(url_for("account.signin_form", next=url_for("account.account")))
    show_form_errors_on("account.html", reader=reader, default_frequency=publication.settings().default_frequency)
    action = ACCOUNT_ACTIONS.get(request.form.get("action", ""))
    if action is None:
        raise ValidationError("Unknown action.", field="action")
    return action(reader)


def _save(reader) -> Response:
    subscriptions.update_account(reader, request.form.get("name", ""), request.form.get("frequency"))
    flash("Your settings are saved.")
    return redirect(url_for("account.account"), 303)


def _sign_out(reader) -> Response:
    """Signing out ends the session on the server, so it ends everywhere: a copied cookie is worthless too."""
    subscriptions.sign_out_everywhere(reader)
    response = redirect(url_for("reader.archive"), 303)
    access.sign_out(response)
    return response


def _export(reader) -> Response:
    body = json.dumps(subscriptions.account_data(reader), indent=2, ensure_ascii=False)
    response = make_response(body)
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.headers["Content-Disposition"] = 'attachment; filename="my-subscription-data.json"'
    return private(response)


def _delete(reader) -> Response:
    if request.form.get("confirm") != "yes":
        raise ValidationError("Tick the box to confirm that your data should be deleted.", field="confirm")
    subscriptions.erase(reader)
    response = _page("message.html", title="Your data is deleted",
                     message="We have erased your subscription and the consent data we kept. No more emails will come.")
    access.sign_out(response)
    return response


ACCOUNT_ACTIONS = {"save": _save, "signout": _sign_out, "export": _export, "delete": _delete}


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    subscriptions.check_unsubscribe_link(token)
    return _page("unsubscribe.html")


@bp.post("/unsubscribe/<token>")
@csrf.exempt  # RFC 8058: the mail provider posts List-Unsubscribe=One-Click with no cookie and no form token
def unsubscribe(token: str):
    subscriptions.unsubscribe(token)
    return _page("message.html", title="You are unsubscribed",
                 message="You will get no more emails from us. You can subscribe again at any time.")


@bp.app_context_processor
def reader_context():
    return {
        "signed_in": lambda: access.session_status() is not None,
        "signed_in_as": SIGNED_IN_AS,
        # Hidden for signed-in readers, who never see a subscribe prompt.
        "stay_in_touch": lambda: access.session_status() is None and request.endpoint not in NO_STAY_IN_TOUCH,
    }


@bp.after_app_request
def fill_in_reader(response: Response) -> Response:
    """The signed-in reader's address where a page says "Signed in as"; only pages for a signed-in reader carry it."""
    if not request.cookies.get(access.COOKIE) or response.mimetype != "text/html" or response.direct_passthrough \
            or not response.is_sequence:
        return response
    body, placeholder = response.get_data(), SIGNED_IN_AS.encode()
    if placeholder in body:
        response.set_data(body.replace(placeholder, str(escape(access.session_email() or "")).encode()))
    return response


def _fields() -> dict:
    if not request.is_json:
        return request.form.to_dict()
    return bodies.json_object()


def _signup(fields: dict) -> subscriptions.Signup:
    name, next_url = fields.get("name") or "", fields.get("next") or "/"
    if not request.is_json:
        # A form shows its reader the email field only: what the reader cannot see cannot be what they must
        # fix. A bad name is left out (it can be set on the account page), a bad next is the home page.
        # JSON callers get every field's error by name.
        name, next_url = _or_empty(clean_name, name), safe_next(next_url)
    return subscriptions.Signup(
        email=fields.get("email"),
        name=name,
        next_url=next_url,
        source=fields.get("source") or request.referrer,
        ip=request.remote_addr,
        user_agent=request.user_agent.string,
        honeypot=abuse.honeypot_filled(fields),
    )


def _or_empty(clean, value) -> str:
    try:
        return clean(value)
    except DomainError:
        return ""


def _answer(message: str, template: str, **context):
    """The one answer to an anonymous request, whatever happened behind it."""
    if wants_json():
        return private(jsonify(ok=True, message=message))
    return _page(template, message=message, done=True, **context)


def _signed_in(reader, next_url: str, said: str) -> Response:
    """Back where the reader came from, signed in, and told so once (a flash message: that page is not kept)."""
    flash(said)
    response = redirect(next_url, 303)
    access.sign_in(response, reader)
    return response


def _page(template: str, **context) -> Response:
    return private(make_response(render_template(template, **context)))
