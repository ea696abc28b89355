"""Errors of `cdp serve` as problem-details documents (RFC 9457,
`application/problem+json`): a route or a dependency raises `Refused`; the detail says where a
request is wrong, never a value it holds."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

JSON = "application/json"
PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM)


class Refused(Exception):
    """Raised by a route or a dependency; answered as a problem-details document."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
