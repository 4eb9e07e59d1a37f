"""The subscriber list as CSV (email,name,status,subscribed_at): export, and an import that keeps the valid rows."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select

from ..errors import DomainError, ValidationError
from ..extensions import db
from ..models import Subscriber, utcnow
from . import subscriptions
from .addresses import clean_name, normalise_email

COLUMNS = ["email", "name", "status", "subscribed_at"]
IMPORTABLE = ("confirmed", "pending", "unsubscribed", "bounced")
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


@dataclass
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    errors: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"imported": self.imported, "unchanged": self.unchanged, "errors": self.errors}


def export(stream) -> int:
    """Write every subscriber but the erased; every cell that a spreadsheet would run as a formula is quoted."""
    writer = csv.writer(stream)
    writer.writerow(COLUMNS)
    count = 0
    for row in _rows():
        writer.writerow(row)
        count += 1
    return count


def export_chunks(size: int = 64 * 1024) -> Iterator[str]:
    """The same file as text chunks of about `size` characters, for a streamed download."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in _rows():
        writer.writerow(row)
        if buffer.tell() >= size:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _rows() -> Iterator[list[str]]:
    """Plain rows read a thousand at a time: a list of a million is never held in memory at once."""
    query = select(Subscriber.email, Subscriber.name, Subscriber.status, Subscriber.consent_at, Subscriber.created_at)
    for email, name, status, consent_at, created_at in db.session.execute(
            query.order_by(Subscriber.id).execution_options(yield_per=1000)):
        yield [_inert(cell) for cell in (email, name, status, (consent_at or created_at).isoformat())]


def export_text() -> str:
    buffer = io.StringIO()
    export(buffer)
    return buffer.getvalue()


def import_bytes(raw: bytes) -> ImportReport:
    """An uploaded file (API body or studio form): UTF-8, with or without a byte order mark."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the CSV must be UTF-8", field="file") from None
    return import_text(text)


def import_text(text: str) -> ImportReport:
    """Import rows; a bad row is reported with its line number and skipped, the others are kept."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames or "email" not in [name.strip().lower() for name in reader.fieldnames]:
        raise ValidationError("the CSV needs a header row with at least an 'email' column", field="file")
    report = ImportReport()
    for row in reader:
        cells = {(k or "").strip().lower(): _restored((v or "").strip()) for k, v in row.items() if k}
        _import_row(cells, reader.line_num, report)
    db.session.commit()
    return report


def _import_row(row: dict, line: int, report: ImportReport) -> None:
    try:
        email = normalise_email(row.get("email"))
        name = clean_name(row.get("name", ""))
        status = _status(row.get("status", ""))
        subscribed_at = _moment(row.get("subscribed_at", ""))
    except DomainError as error:
        report.errors.append({"line": line, "message": error.message})
        return
    if subscriptions.add_imported(email, name, status, subscribed_at):
        report.imported += 1
    else:
        report.unchanged += 1


def _status(value: str) -> str:
    status = value.lower() or "pending"  # no consent is assumed for a row that does not say
    if status not in IMPORTABLE:
        raise ValidationError(f"status must be one of {', '.join(IMPORTABLE)}, not {value!r}", field="status")
    return status


def _moment(value: str) -> datetime:
    if not value:
        return utcnow()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"subscribed_at must be an ISO 8601 date or time, not {value!r}", field="subscribed_at") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _inert(value: str) -> str:
    """A leading apostrophe makes the cell text. Values that already start with apostrophes before a formula
    character get one more, so that `_restored` can take exactly one away again: export and import round-trip."""
    return "'" + value if _needs_quote(value) else value


def _restored(value: str) -> str:
    """The value `_inert` quoted, as it was (so an exported address imports as the same address)."""
    return value[1:] if value.startswith("'") and _needs_quote(value[1:]) else value


def _needs_quote(value: str) -> bool:
    return value.lstrip("'").startswith(_FORMULA_START)
