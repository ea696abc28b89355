"""The request and response bodies of `cdp serve`, as its OpenAPI document shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class IdentityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity: str = Field(
        description="NAMESPACE:VALUE; normalised as the pipeline normalises it",
        examples=["Email:dwright@example.com"],
    )


class DecisionRequest(IdentityRequest):
    placement: str = Field(examples=["home-hero"])


class AsOf(BaseModel):
    event_time: str | None = None
    seq: int


class ProfileDocument(BaseModel):
    """The profile projection's document (DESIGN §6 profile plus traits and `as_of`)."""

    model_config = ConfigDict(extra="allow")
    profile_id: str
    identities: dict[str, list[str]] = {}
    attributes: dict[str, Any] = {}
    segments: dict[str, Any] = {}
    events: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    updated_at: str | None = None
    as_of: AsOf


class OfferOut(BaseModel):
    id: str
    content: dict[str, Any]


class DecisionResponse(BaseModel):
    placement: str
    profile_id: str | None = Field(description="null: an unknown person")
    offer: OfferOut | None = Field(description="null: no offer of the placement is eligible")
    reason: str = Field(description="the rule that chose the offer")


class Accepted(BaseModel):
    accepted: int


class ItemStatus(BaseModel):
    index: int
    status: int = Field(description="202 accepted, 400 refused")
    reason: str | None = None


class MultiStatus(BaseModel):
    accepted: int
    refused: int
    items: list[ItemStatus]


class Problem(BaseModel):
    """An error (RFC 9457 problem details)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    items: list[ItemStatus] | None = None


class Health(BaseModel):
    status: str
    projection: dict[str, Any]
