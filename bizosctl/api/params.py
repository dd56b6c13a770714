"""Query parameter types the API shares.

pydantic reads a number as a Unix timestamp where a date or a date-time is expected
(``?due_before=0`` would mean 1970-01-01). The API documents ISO 8601 strings, so a number
there is refused (422), as the schema says.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BeforeValidator


def _is_number(value: Any) -> bool:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


def _not_a_number(value: Any) -> Any:
    if _is_number(value):
        raise ValueError("give an ISO 8601 date or time, not a number")
    return value


IsoDate = Annotated[dt.date | None, BeforeValidator(_not_a_number)]
IsoDateTime = Annotated[dt.datetime | None, BeforeValidator(_not_a_number)]
