"""Studio accounts: staff, their passwords (argon2), their single-use emailed links, their signed-in sessions."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from functools import lru_cache
from typing import cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import CursorResult, delete, func, select

from .. import tokens
from ..errors import Conflict, DomainError, InvalidToken, NotFound, ValidationError
from ..extensions import db
from ..mail import outbox
from ..models import Staff, StudioSession, utcnow
from ..readers.addresses import clean_name, normalise_email

MIN_PASSWORD, MAX_PASSWORD = 10, 1024
TOUCH_EVERY = timedelta(minutes=1)  # a session's last_seen_at is written at most this often
FIRST_STAFF_EMAIL = "publisher@example.org"  # development only; email-validator refuses @localhost
_hasher = PasswordHasher()


class SignInFailed(DomainError):
    """That email and password do not match a studio account."""

    status = 401
    code = "signin_failed"


# --- accounts ---

def add(email: str, name: str = "") -> Staff:
    email = normalise_email(email)
    if find(email) is not None:
        raise Conflict(f"{email} has a studio account already", field="email")
    staff = Staff(email=email, name=clean_name(name))
    db.session.add(staff)
    db.session.commit()
    return staff


def find(email: str) -> Staff | None:
    return db.session.scalar(select(Staff).where(Staff.email == email.strip().lower()))


def get(email: str) -> Staff:
    staff = find(email)
    if staff is None:
        raise NotFound(f"no studio account for {email}")
    return staff


def every() -> list[Staff]:
    return list(db.session.scalars(select(Staff).order_by(Staff.email)))


def remove(email: str) -> None:
    """The account goes, and with it every browser signed in to it."""
    staff = get(email)
    db.session.execute(delete(StudioSession).where(StudioSession.staff_id == staff.id))
    db.session.delete(staff)
    db.session.commit()


def invite(staff: Staff) -> str | None:
    """In development, the invitation link to print; elsewhere it is emailed (through the outbox) and None."""
    if current_app.config["ENV"] == "development":
        return outbox.staff_link("studio_invite", staff)
    outbox.commit_and_dispatch([outbox.add_for_staff("studio_invite", staff)])
    return None


def ensure_first(email: str = FIRST_STAFF_EMAIL) -> tuple[Staff, str]:
    """Development: a first account when there is none, and a link into the studio for it (or for the first one)."""
    staff = db.session.scalar(select(Staff).order_by(Staff.id).limit(1)) or add(email, "Publisher")
    kind = "studio_signin" if staff.password_hash else "studio_invite"
    return staff, outbox.staff_link(kind, staff)


# --- passwords and links ---

def check_password(email: object, password: object) -> Staff:
    """The account these credentials open, or SignInFailed (as slow for an unknown address as for a wrong password)."""
    staff = find(email) if isinstance(email, str) else None
    stored = staff.password_hash if staff is not None and staff.password_hash else _unusable_hash()
    given = password if isinstance(password, str) else ""
    try:
        _hasher.verify(stored, given)
    except (VerificationError, InvalidHashError):
        raise SignInFailed(field="password") from None
    if staff is None or not staff.password_hash:
        raise SignInFailed(field="password")
    if _hasher.check_needs_rehash(staff.password_hash):
        staff.password_hash = _hasher.hash(given)
        db.session.commit()
    return staff


@lru_cache(maxsize=1)
def _unusable_hash() -> str:
    return _hasher.hash(secrets.token_hex(16))


def use_link(purpose: str, token: str, password: object = None, repeated: object = None) -> Staff:
    """An emailed link used: this link and every older one die. With a password (required for an invitation),
    that becomes the account's password and its other sessions end: a forgotten password is reset this way."""
    staff = _link_holder(purpose, token)
    if password or purpose == "studio_invite":
        _set_password(staff, password, repeated)
    else:
        staff.link_generation += 1
        db.session.commit()
    return staff


def change_password(staff: Staff, current: object, password: object, repeated: object) -> None:
    """From inside the studio: every session of the account ends (the caller starts a new one for this browser)."""
    if staff.password_hash:
        try:
            _hasher.verify(staff.password_hash, current if isinstance(current, str) else "")
        except (VerificationError, InvalidHashError):
            raise ValidationError("Your current password is not right.", field="current_password") from None
    _set_password(staff, password, repeated)


def _set_password(staff: Staff, password: object, repeated: object) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"Choose a password of at least {MIN_PASSWORD} characters.", field="password")
    if password != repeated:
        raise ValidationError("The two passwords differ.", field="password")
    staff.password_hash = _hasher.hash(password)
    staff.link_generation += 1
    db.session.execute(delete(StudioSession).where(StudioSession.staff_id == staff.id))
    db.session.commit()


def request_signin_link(email: object) -> None:
    """Email a one-time sign-in link to a staff member; nothing for an unknown address (the answer is the same)."""
    staff = find(email) if isinstance(email, str) else None
    outbox.commit_and_dispatch([outbox.add_for_staff("studio_signin", staff)] if staff else [])


def check_link(purpose: str, token: str) -> Staff:
    """For the GET pages: the link is good (or InvalidToken / TokenExpired); nothing changes."""
    return _link_holder(purpose, token)


def _link_holder(purpose: str, token: str) -> Staff:
    payload = tokens.verify(purpose, token)
    staff = db.session.get(Staff, payload[0])
    if staff is None or not tokens.matches(payload, staff) or payload[2:] != [staff.link_generation]:
        raise InvalidToken(purpose)
    return staff


# --- sessions ---

def start_session(staff: Staff, ip: str | None, user_agent: str | None) -> str:
    """A new signed-in browser: the cookie's token (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    db.session.add(StudioSession(id=_digest(token), staff_id=staff.id, ip=(ip or "")[:64] or None,
                                 user_agent=(user_agent or "")[:400] or None))
    staff.last_signin_at = utcnow()
    db.session.commit()
    return token


def staff_for_session(token: str | None) -> Staff | None:
    """The staff member a session cookie belongs to, while the session lives (idle timeout, maximum age)."""
    if not token:
        return None
    found = db.session.execute(select(StudioSession, Staff).join(Staff, Staff.id == StudioSession.staff_id)
                               .where(StudioSession.id == _digest(token))).first()  # one statement on every studio page
    if found is None:
        return None
    row, staff = found
    now = utcnow()
    seen_since, started_since = _live_since(now)
    if row.last_seen_at < seen_since or row.created_at < started_since:
        db.session.delete(row)
        db.session.commit()
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
        db.session.commit()
    return staff


def sweep_sessions() -> int:
    """Delete the sessions past their idle timeout or maximum age (beat, hourly): a browser that never came
    back leaves no row behind. Returns how many ended."""
    seen_since, started_since = _live_since(utcnow())
    ended = cast(CursorResult, db.session.execute(delete(StudioSession).where(
        (StudioSession.last_seen_at < seen_since) | (StudioSession.created_at < started_since)))).rowcount
    db.session.commit()
    return ended


def _live_since(now: datetime) -> tuple[datetime, datetime]:
    """A session lives while it was seen after the first moment and started after the second (the idle
    timeout and the maximum age): one rule for the check on each request and the hourly sweep."""
    config = current_app.config
    return (now - timedelta(seconds=config["STUDIO_IDLE_TIMEOUT"]),
            now - timedelta(seconds=config["STUDIO_SESSION_MAX_AGE"]))


def end_session(token: str | None) -> None:
    if token:
        db.session.execute(delete(StudioSession).where(StudioSession.id == _digest(token)))
        db.session.commit()


def session_count(staff: Staff) -> int:
    return db.session.execute(select(func.count()).select_from(StudioSession).where(StudioSession.staff_id == staff.id)).scalar_one()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
