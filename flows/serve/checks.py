"""What a route of `cdp serve` checks before it answers: the API key, the body's size, and the
body as its request model.

The lookup and decision routes call these inline instead of going through FastAPI's dependency
and body machinery, which cost a lookup about a third of its throughput (benchmarks/RESULTS.md,
Session 6); the `require` dependency of the other routes calls the same `authorize`. The
refusals are those FastAPI gave (a body is JSON only with `Content-Type: application/json` or
`application/*+json`, as FastAPI's strict content type), always with where, never the value.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from config.settings import ApiKey
from flows.serve.errors import Refused

Model = TypeVar("Model", bound=BaseModel)
# FastAPI's words for a body that is no JSON object (an array, a string, not sent as JSON)
NOT_AN_OBJECT = {
    "type": "model_attributes_type",
    "loc": ("body",),
    "msg": "Input should be a valid dictionary or object to extract fields from",
}


def authorize(keys: Sequence[ApiKey], authorization: str | None, scope: str) -> ApiKey:
    """The key an `Authorization: Bearer KEY` header names if it has `scope`; else 401 / 403."""
    scheme, _, given = (authorization or "").partition(" ")
    secret = given.strip().encode()
    if scheme.lower() != "bearer" or not secret:
        raise Refused(401, "send an API key: Authorization: Bearer KEY")
    found = None
    for key in keys:  # every key compared: no timing hint
        if hmac.compare_digest(key.secret, secret):
            found = key
    if found is None:
        raise Refused(401, "the API key is not valid")
    if scope not in found.scopes:
        raise Refused(403, f"the key {found.name!r} has no {scope!r} scope")
    return found


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 past `limit` bytes, declared or (chunked) read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the request is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the request is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def body_as(request: Request, model: type[Model], limit: int) -> Model:
    """The body as `model`; a `RequestValidationError` (answered 400) located under `body`."""
    raw = await read_body(request, limit)
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required"}
        raise RequestValidationError([missing])
    if not is_json(request.headers.get("content-type")):
        raise RequestValidationError([NOT_AN_OBJECT])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [
                NOT_AN_OBJECT
                if error["type"] == "model_type" and not error["loc"]
                else {**error, "loc": ("body", *error["loc"])}
                for error in errors
            ]
        ) from None


def is_json(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, parameters and case aside."""
    media = (content_type or "").partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and "/" not in sub and (sub == "json" or sub.endswith("+json"))
