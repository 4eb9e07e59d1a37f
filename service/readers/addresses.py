"""Reader input made safe: email addresses normalised by email-validator, one-line text fields, same-site paths."""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from email_validator import EmailNotValidError, validate_email

from ..errors import ValidationError

MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalise_email(value) -> str:
    """Trimmed, IDN domain to punycode, lower-cased: one mailbox, one spelling (so limits cannot be dodged by case)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Please enter your email address.", field="email")
    one_line(value, "email")
    try:
        checked = validate_email(value.strip(), check_deliverability=False, allow_smtputf8=False, strict=True)
    except EmailNotValidError as error:
        raise ValidationError(str(error), field="email") from None
    return f"{checked.local_part}@{checked.ascii_domain}".lower()


# Providers that deliver every dot variant of a local part to one mailbox (a.b@ and ab@ are one person).
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email: str) -> str:
    """The mailbox a (normalised) address reaches: no +tag anywhere, and at Gmail no dots and one domain.
    What a per-mailbox limit counts, so spellings of one inbox do not multiply the mail it gets."""
    local, _, domain = email.lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


def one_line(value, field: str, limit: int | None = None) -> str:
    """A text field with no CR, LF or other control characters (they end up in headers and logs)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text.", field=field)
    if _CONTROL.search(value):
        raise ValidationError(f"{field} must be a single line of text.", field=field)
    if limit is not None and len(value) > limit:
        raise ValidationError(f"{field} must be at most {limit} characters.", field=field)
    return value


def clean_name(value) -> str:
    return one_line(value, "name", MAX_NAME).strip()


def safe_next(value, fallback: str = "/") -> str:
    """A same-site path to return to, or the fallback: never //host, /\\host, /%09/host, a scheme or a URL."""
    if not isinstance(value, str) or not value or len(value) > 500:
        return fallback
    for candidate in (value, unquote(value)):
        if not _is_local_path(candidate):
            return fallback
    return value


def _is_local_path(path: str) -> bool:
    if _CONTROL.search(path) or "\\" in path or not path.startswith("/") or path.startswith("//"):
        return False
    parts = urlsplit(path)
    return not parts.scheme and not parts.netloc


def source_text(value) -> str | None:
    """Where a signup came from (a page or an embed origin), kept as consent data: one line, bounded."""
    if not isinstance(value, str) or not value:
        return None
    return _CONTROL.sub("", value)[:500] or None
