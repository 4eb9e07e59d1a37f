"""Reader membership pages: subscribe, confirm, sign in, account, unsubscribe."""
from __future__ import annotations

import json

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from ..errors import ValidationError, show_form_errors_on, wants_json
from ..extensions import csrf, limiter
from ..publishing import publication
from ..readers import abuse, access, subscriptions
from ..readers.addresses import safe_next
from .headers import allow_framing, private

bp = Blueprint("account", __name__)
SUBSCRIBED = "Check your inbox to confirm your subscription."
SIGNIN_SENT = "If that address is subscribed, a sign-in link is on its way. Check your inbox."
signup_limit = limiter.shared_limit(abuse.signup_limit, scope="signup", methods=["POST"])


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
    return _answer(SUBSCRIBED, "embed.html" if embedded else "message.html", title="Check your inbox")


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    subscriptions.check_link("confirm", token)
    return _page("confirm.html")


@bp.post("/confirm/<token>")
def confirm(token: str):
    return _signed_in(*subscriptions.confirm(token))


@bp.get("/signin")
def signin_form():
    return _page("signin.html", next_url=safe_next(request.args.get("next")))


@bp.post("/signin")
@signup_limit
def signin():
    show_form_errors_on("signin.html", next_url=safe_next(request.form.get("next")))
    subscriptions.request_signin(request.form.get("email"), request.form.get("next") or "/",
                                 abuse.honeypot_filled(request.form))
    return _answer(SIGNIN_SENT, "message.html", title="Check your inbox")


@bp.get("/signin/<token>")
def signin_link_page(token: str):
    subscriptions.check_link("signin", token)
    return _page("signin_link.html")


@bp.post("/signin/<token>")
def signin_link(token: str):
    return _signed_in(*subscriptions.sign_in(token))


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
    return {"signed_in": lambda: access.session_status() is not None}


def _fields() -> dict:
    if not request.is_json:
        return request.form.to_dict()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("The body must be a JSON object.", field="body")
    return body


def _signup(fields: dict) -> subscriptions.Signup:
    return subscriptions.Signup(
        email=fields.get("email"),
        name=fields.get("name") or "",
        next_url=fields.get("next") or "/",
        source=fields.get("source") or request.referrer,
        ip=request.remote_addr,
        user_agent=request.user_agent.string,
        honeypot=abuse.honeypot_filled(fields),
    )


def _answer(message: str, template: str, **context):
    """The one answer to an anonymous request, whatever happened behind it."""
    if wants_json():
        return private(jsonify(ok=True, message=message))
    return _page(template, message=message, done=True, **context)


def _signed_in(reader, next_url: str) -> Response:
    response = redirect(next_url, 303)
    access.sign_in(response, reader)
    return response


def _page(template: str, **context) -> Response:
    return private(make_response(render_template(template, **context)))
