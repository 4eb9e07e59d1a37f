"""Request bodies read safely: a JSON object of bounded depth holding only valid Unicode text, or a clear 4xx."""
from __future__ import annotations

import json
import re

from flask import request

from ..errors import ValidationError

MAX_DEPTH = 32  # no endpoint takes nested values; this leaves room and stops 30,000 `[` at the parser
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def json_object(required: bool = True) -> dict:
    """The body as a JSON object; with required=False an empty body is {}."""
    raw = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH (413 before this)
    if not raw.strip() and not required:
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValidationError("The body must be JSON in UTF-8.", field="body") from None
    except RecursionError:
        raise ValidationError(f"The JSON is nested too deeply (at most {MAX_DEPTH} levels).", field="body") from None
    except ValueError as error:
        raise ValidationError(f"The body is not valid JSON: {error}.", field="body") from None
    if not isinstance(value, dict):
        raise ValidationError("The body must be a JSON object.", field="body")
    _check(value)
    return value


def _check(value: object) -> None:
    """Depth and text of every value, iteratively (a recursive walk could itself run out of stack).
    A lone surrogate ("\\ud800") is valid JSON but no text: it cannot be stored, shown or mailed."""
    stack: list[tuple[object, int, str]] = [(value, 1, "body")]
    while stack:
        item, depth, field = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(f"The JSON is nested too deeply (at most {MAX_DEPTH} levels).", field="body")
        if isinstance(item, str) and _SURROGATE.search(item):
            raise ValidationError(f"{field} holds characters that are not valid Unicode text.", field=field)
        if isinstance(item, dict):
            for key, child in item.items():
                name = key if depth == 1 else field
                stack.append((key, depth + 1, name))
                stack.append((child, depth + 1, name))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, field) for child in item)
