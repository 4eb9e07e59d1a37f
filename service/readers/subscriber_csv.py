"""The subscriber list as CSV (email,name,status,subscribed_at): export, and an import that keeps the valid rows."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..errors import DomainError, ValidationError
from ..extensions import db
from ..models import Subscriber, utcnow
from . import subscriptions
from .addresses import clean_name, normalise_email

COLUMNS = ["email", "name", "status", "subscribed_at"]
IMPORTABLE = ("confirmed", "pending", "unsubscribed", "bounced")
IMPORT_BATCH = 1000  # rows checked, inserted and committed together: memory stays flat whatever the file's size
LISTED_ERRORS = 1000  # bad rows listed by line; past this many they are only counted
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


@dataclass
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    errors: list[dict] = field(default_factory=list)  # the first LISTED_ERRORS
    invalid: int = 0  # every bad row

    def as_dict(self) -> dict:
        return {"imported": self.imported, "unchanged": self.unchanged, "errors": self.errors, "invalid": self.invalid}

    def error(self, line: int, message: str) -> None:
        self.invalid += 1
        if len(self.errors) < LISTED_ERRORS:
            self.errors.append({"line": line, "message": message})


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
    return import_binary(io.BytesIO(raw))


def import_binary(stream: IO[bytes]) -> ImportReport:
    """A file read as it comes (an upload Werkzeug spooled to disk, a file on disk): never whole in memory."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        return import_stream(text)
    except UnicodeDecodeError:
        db.session.rollback()
        raise ValidationError("the CSV must be UTF-8 (the rows before the first bad byte were imported)",
                              field="file") from None
    finally:
        text.detach()  # the stream stays its owner's to close


def import_text(text: str) -> ImportReport:
    return import_stream(io.StringIO(text.lstrip("\ufeff"), newline=""))


def import_stream(stream: IO[str]) -> ImportReport:
    """Import rows, IMPORT_BATCH at a time (each batch committed); a bad row is reported with its line number and
    skipped, the others are kept."""
    reader = csv.DictReader(stream)
    if not reader.fieldnames or "email" not in [name.strip().lower() for name in reader.fieldnames]:
        raise ValidationError("the CSV needs a header row with at least an 'email' column", field="file")
    report = ImportReport()
    batch: list[tuple[str, str, str, datetime]] = []
    for row in reader:
        cells = {(k or "").strip().lower(): _restored((v or "").strip()) for k, v in row.items() if k}
        checked = _checked_row(cells, reader.line_num, report)
        if checked:
            batch.append(checked)
        if len(batch) >= IMPORT_BATCH:
            _import_batch(batch, report)
            batch = []
    _import_batch(batch, report)
    return report


def _checked_row(row: dict, line: int, report: ImportReport) -> tuple[str, str, str, datetime] | None:
    try:
        return (normalise_email(row.get("email")), clean_name(row.get("name", "")), _status(row.get("status", "")),
                _moment(row.get("subscribed_at", "")))
    except DomainError as error:
        report.error(line, error.message)
        return None


def _import_batch(batch: list[tuple[str, str, str, datetime]], report: ImportReport) -> None:
    for attempt in range(3):
        try:
            added = subscriptions.add_imported_many(batch) if batch else set()
            db.session.commit()
            break
        except IntegrityError:  # someone signed up with one of these addresses in between: read them again
            db.session.rollback()
            if attempt == 2:
                raise
    report.imported += len(added)
    report.unchanged += len(batch) - len(added)


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
