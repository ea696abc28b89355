"""The HTTP layer of `cdp serve`: routes, the key check, problem-details errors, metrics.

Every answer is built from `operators.replica` (lookups) and `operators.offers` (decisions);
records posted to `/v1/collect` are checked by the pipeline's own decoder. No identity value
and no body is ever written to a log line: the optional access log names the route template
(`/v1/profiles/{profile_id}`), never the path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from config.settings import ApiKey
from flows.serve import collect as collecting
from flows.serve.checks import authorize, body_as
from flows.serve.errors import JSON, PROBLEM, Refused, problem
from flows.serve.metrics import ServeMetrics
from flows.serve.models import (
    Accepted,
    DecisionRequest,
    DecisionResponse,
    Health,
    IdentityRequest,
    MultiStatus,
    Problem,
    ProfileDocument,
)
from flows.serve.services import Services
from operators import replica
from operators.offers import decide

LOG = logging.getLogger("cdp.serve")
ACCESS = logging.getLogger("cdp.serve.access")


_bearer = HTTPBearer(auto_error=False, description="an API key of serve.keys")
REF = "#/components/schemas/{model}"


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    # async: FastAPI runs a plain `def` dependency on its thread pool, a hop per request that
    # cost lookups 30-45 % of their throughput (benchmarks.serve); the check never blocks.
    async def check(
        request: Request,
        _: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> ApiKey:
        # `_bearer` puts the scheme in the OpenAPI document; `authorize` reads the header itself
        return authorize(_services(request).keys, request.headers.get("authorization"), scope)

    return check


def _ready(services: Services) -> None:
    """Until the projection was read to its end once, a 404 could be a profile not read yet:
    the answer is 503 instead."""
    if not services.follower.caught_up.is_set():
        raise Refused(
            503, "the profile projection is still being read", headers={"Retry-After": "1"}
        )


def _identity(services: Services, text: str) -> tuple[str, str] | None:
    """The normalised identity, None when it is no identity (empty or blocked)."""
    namespace, sep, value = text.partition(":")
    if not sep or not namespace or not value:
        raise Refused(400, "identity must look like NAMESPACE:VALUE")
    normal = services.rules.normalize(namespace, value)
    return None if not normal else (namespace, normal)


def _find(services: Services, text: str) -> replica.Found | None:
    _ready(services)
    identity = _identity(services, text)
    return None if identity is None else replica.lookup(services.store, *identity)


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="streaming-cdp serve",
        version="1",
        description="Profile lookups, decisions and the HTTP collector over the profile "
        "projection (DESIGN §11). Authorization: Bearer KEY (serve.keys).",
    )
    app.state.services = services
    _errors(app)
    serve = services.settings.serve
    limit = 1 << 20 if serve is None else serve.max_request_bytes
    app.add_middleware(_Measured, metrics=services.metrics, log=services.access_log, limit=limit)
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": Problem, "content": {PROBLEM: {}}} for s in (400, 401, 403, 404)
    }

    # The lookup and the decision read their key and body inline (flows/serve/checks.py): the
    # OpenAPI parts FastAPI derived from a body parameter and the key dependency are declared.
    @app.post(
        "/v1/profiles/lookup",
        response_model=ProfileDocument,
        responses=errors,
        openapi_extra=_inline(IdentityRequest),
    )
    async def lookup(request: Request) -> Response:
        authorize(services.keys, request.headers.get("authorization"), "read")
        body = await body_as(request, IdentityRequest, limit)
        found = _find(services, body.identity)
        if found is None:
            raise Refused(404, "no profile has this identity")
        return Response(found.document, media_type=JSON)

    @app.get("/v1/profiles/{profile_id}", response_model=ProfileDocument, responses=errors)
    async def get_profile(profile_id: str, _: ApiKey = Depends(require("read"))) -> Response:  # noqa: B008
        _ready(services)
        found = replica.profile(services.store, profile_id)
        if found is None:
            raise Refused(404, "no such profile")
        return Response(found.document, media_type=JSON)

    @app.post(
        "/v1/decisions",
        response_model=DecisionResponse,
        responses=errors,
        openapi_extra=_inline(DecisionRequest),
    )
    async def decisions(request: Request) -> Response:
        authorize(services.keys, request.headers.get("authorization"), "decide")
        body = await body_as(request, DecisionRequest, limit)
        offers = services.offers.get(body.placement)
        if offers is None:
            raise Refused(404, "no placement of this name under offers:")
        found = _find(services, body.identity)
        document = None if found is None else orjson.loads(found.document)
        decision = decide(body.placement, offers, document)
        offer = decision.offer
        answer = {
            "placement": body.placement,
            "profile_id": None if found is None else found.profile_id,
            "offer": None if offer is None else {"id": offer.id, "content": offer.content},
            "reason": decision.reason,
        }
        return Response(orjson.dumps(answer), media_type=JSON)

    collect_responses: dict[int | str, dict[str, Any]] = {
        **errors,
        207: {"model": MultiStatus},
        413: {"model": Problem},
        503: {"model": Problem},
    }

    @app.post(
        "/v1/collect/{source}",
        status_code=202,
        response_model=Accepted,
        responses=collect_responses,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}}},
            }
        },
    )
    async def collect(
        source: str,
        request: Request,
        _: ApiKey = Depends(require("collect")),  # noqa: B008
    ) -> Response:
        return await collecting.collect(services, source, request)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Response:
        follower = services.follower
        status = "ok" if follower.caught_up.is_set() else "starting"
        if follower.failure is not None:
            status = "failing"
        body = {
            "status": status,
            "projection": {
                "source": follower.source,
                "caught_up": follower.caught_up.is_set(),
                "applied": follower.applied,
                "failure": follower.failure,
            },
        }
        # 503 until the projection was read to its end once: a load balancer sends nothing yet
        return Response(orjson.dumps(body), 200 if status == "ok" else 503, media_type=JSON)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(services.metrics.exposition(), media_type="text/plain; version=0.0.4")

    _document_inline_bodies(app, IdentityRequest, DecisionRequest)
    return app


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI parts of a route that reads its own body and key."""
    ref = {"$ref": REF.format(model=model.__name__)}
    return {
        "requestBody": {"required": True, "content": {JSON: {"schema": ref}}},
        "security": [{_bearer.scheme_name: []}],
    }


def _document_inline_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """Adds the schemas `_inline` refers to (and the key's scheme) to the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # made once, then cached by FastAPI: the additions stay
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in models:
            schemas.setdefault(model.__name__, model.model_json_schema(ref_template=REF))
        schemes = components.setdefault("securitySchemes", {})
        bearer = _bearer.model.model_dump(by_alias=True, exclude_none=True)
        schemes.setdefault(_bearer.scheme_name, bearer)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _errors(app: FastAPI) -> None:
    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        answer = problem(exc.status, exc.detail)
        answer.headers.update(exc.headers)
        return answer

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return problem(exc.status_code, str(exc.detail))

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        # Where and what, never the value given (it may be an identity).
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return problem(400, where or "the request is not valid")

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class _Measured:
    """Counts and times every request by its route template (pure ASGI: cheaper than
    BaseHTTPMiddleware); optionally one access line per request without its path."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, log: bool, limit: int) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log
        self.limit = limit  # a body declared larger is refused before it is read

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sent(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if _declared_length(scope) > self.limit:
                answer = problem(413, f"the request is over the limit of {self.limit} bytes")
                await answer(scope, receive, sent)
            else:
                await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            took = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(took)
            if self.log:
                ACCESS.info("%s %s %d %.1fms", scope["method"], route, status, took * 1000)


def _declared_length(scope: dict[str, Any]) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
