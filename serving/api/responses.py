"""JSON responses rendered with orjson, and the design's error body."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class OrjsonResponse(Response):
    """``application/json`` serialised by orjson (numpy values included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)


def now_iso() -> str:
    """``datetime.now(UTC).isoformat()``, at a third of its cost: the date and time of day
    are formatted once a second (every response carries a timestamp)."""
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    if second != _second[0]:
        _second[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    micro = nanoseconds // 1000  # datetime.now truncates to the microsecond too
    return f"{_second[1]}.{micro:06d}+00:00" if micro else f"{_second[1]}+00:00"


_second: list[Any] = [None, ""]  # the second now_iso formatted last, and its text


def error_body(
    code: str, message: str, request_id: str | None, details: Any = None
) -> dict[str, Any]:
    """``{"error": {"code", "message", "details", "request_id", "timestamp"}}``."""
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": request_id,
            "timestamp": now_iso(),
        }
    }
