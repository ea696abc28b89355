"""The lookup and decision routes read their key and body inline (flows/serve/checks.py), not
through FastAPI's machinery: what a client sees must stay what FastAPI gave it (issue #15)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serve_helpers import DECIDE, READ, append, document, server, settings_of, write_config

ROUTES = {
    "/v1/profiles/lookup": {"identity": "Email:shopper7@example.com"},
    "/v1/decisions": {"identity": "Email:shopper7@example.com", "placement": "home-hero"},
}
KEY = {"/v1/profiles/lookup": READ, "/v1/decisions": DECIDE}
JSON = {"Content-Type": "application/json"}
NOT_AN_OBJECT = "body: Input should be a valid dictionary or object to extract fields from"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("serve")
    config = write_config(tmp)
    append(tmp / "profiles.jsonl", document("p_shopper", 1, {"Email": ["shopper7@example.com"]}))
    with server(settings_of(config), config) as http:
        yield http


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    return body


@pytest.mark.parametrize("route", ROUTES)
def test_a_good_body_in_any_json_media_type(client: httpx.Client, route: str) -> None:
    for media in ("application/json", "application/json; charset=utf-8", "application/x+json"):
        headers = {"Content-Type": media, **KEY[route]}
        answer = client.post(route, json=ROUTES[route], headers=headers)
        assert answer.status_code == 200, (media, answer.text)
        assert answer.json()["profile_id"] == "p_shopper"

    def chunked() -> Iterator[bytes]:  # no Content-Length
        yield b'{"identity": "Email:shopper7@example.com"'
        yield b', "placement": "home-hero"}' if route == "/v1/decisions" else b"}"

    answer = client.post(route, content=chunked(), headers={**JSON, **KEY[route]})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("route", ROUTES)
def test_each_bad_body_is_a_400_saying_where_never_the_value(
    client: httpx.Client, route: str
) -> None:
    key = KEY[route]
    cases = [
        (b"", JSON, "body: Field required"),
        (b'{"identity": "Email:a@b.c"}', {"Content-Type": "text/plain"}, NOT_AN_OBJECT),
        (b'{"identity": "Email:a@b.c"}', {}, NOT_AN_OBJECT),  # JSON only when it says so
        (b'["Email:a@b.c"]', JSON, NOT_AN_OBJECT),
        (b'"Email:a@b.c"', JSON, NOT_AN_OBJECT),
        (b'{"identity": ["Email:a@b.c"]}', JSON, "body.identity: Input should be a valid string"),
        (b'{"identity": "Email:a@b.c", "x": "a@b.c"}', JSON, "body.x: Extra inputs"),
        (b'{"id": "Email:a@b.c"}', JSON, "body.identity: Field required"),
        (b'{"identity": "Email:a@b.c"', JSON, "body: Invalid JSON: EOF"),
        (b'{"identity": "Email:\xff@b.c"}', JSON, "body: Invalid JSON"),  # not UTF-8
    ]
    for raw, headers, where in cases:
        detail = _problem(client.post(route, content=raw, headers={**headers, **key}), 400)
        assert where in detail["detail"], (raw, detail)
        assert "a@b.c" not in detail["detail"]


@pytest.mark.parametrize("route", ROUTES)
def test_the_key_is_checked_before_the_body(client: httpx.Client, route: str) -> None:
    # as /v1/collect: a caller without a valid key learns nothing of what its body lacks
    for raw in (b"{not json", b"[]", b""):
        assert _problem(client.post(route, content=raw, headers=JSON), 401)["detail"].startswith(
            "send an API key"
        )
        other = DECIDE if route == "/v1/profiles/lookup" else READ
        _problem(client.post(route, content=raw, headers={**JSON, **other}), 403)
    bad = client.post(route, json=ROUTES[route], headers={"Authorization": "Basic k-read"})
    assert _problem(bad, 401) and bad.headers["www-authenticate"] == "Bearer"
    lower = client.post(route, json=ROUTES[route], headers={"Authorization": "bearer k-all"})
    assert lower.status_code == 200  # the scheme's case does not matter (RFC 9110)


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_over_the_limit_is_413_declared_or_chunked(client: httpx.Client, route: str) -> None:
    big = b'{"identity": "Email:' + b"x" * (1 << 20) + b'@example.com"}'
    _problem(client.post(route, content=big, headers={**JSON, **KEY[route]}), 413)

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    _problem(client.post(route, content=chunked(), headers={**JSON, **KEY[route]}), 413)


def test_the_openapi_document_describes_the_inline_bodies(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for route, model, answer in (
        ("/v1/profiles/lookup", "IdentityRequest", "ProfileDocument"),
        ("/v1/decisions", "DecisionRequest", "DecisionResponse"),
    ):
        post = document["paths"][route]["post"]
        body = post["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"
        }
        assert post["security"] == [{"HTTPBearer": []}]
        ok = post["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{answer}"}
        for status in ("400", "401", "403", "404"):
            assert "application/problem+json" in post["responses"][status]["content"]
        assert "422" not in post["responses"]  # never answered: a bad body is a 400
        assert schemas[model]["additionalProperties"] is False
        assert "identity" in schemas[model]["required"]
    assert schemas["DecisionRequest"]["required"] == ["identity", "placement"]
