"""The write side routes a journey send to the one destination it names, as each sink takes
it (a Kafka message keyed by profile id, a JSON line, a webhook `Post` with its id); audience
changes as before; `--audience-out` stays audience changes only; `cdp forget`'s delivery
ignores sends."""

from __future__ import annotations

from pathlib import Path

import orjson

from config.settings import DestinationSettings, Settings
from flows.deliver import deliver
from flows.webhook import Post
from flows.write import Message, _render_batch, audience_lines, render_message
from schemas.records import AudienceChange, JourneySend

CHANGE = AudienceChange(
    id="c1",
    segment_id="gold",
    status="entered",
    profile_id="p_1",
    identities={"Email": ["a@example.com"]},
    event_time_ms=1597104000000,
    emitted_at_ms=1597104000123,
    reason="event:x",
    sequence=1,
    read_ns=1,
)
SEND = JourneySend(
    id="j1",
    journey_id="welcome",
    version="v1",
    instance_id="i1",
    step="hello",
    message="welcome-email",
    destination="mail",
    profile_id="p_2",
    identities={"Email": ["b@example.com"]},
    event_time_ms=1597104000000,
    emitted_at_ms=1597104000500,
    payload={"attributes": {"person.name.firstName": "Bo"}},
    read_ns=2,
)


def dest(name: str, kind: str, **extra: object) -> DestinationSettings:
    target = {
        "kafka": {"topic": "t"},
        "file": {"path": "x.jsonl"},
        "webhook": {"url": "http://h/x"},
    }
    fields = {"name": name, "kind": kind, **target[kind], **extra}
    return DestinationSettings.model_validate(fields)


def test_a_send_goes_only_to_the_destination_it_names() -> None:
    for kind in ("kafka", "file", "webhook"):
        named = dest("mail", kind, segments=[], attributes=["person.name.firstName"])
        other = dest("ads", kind)
        body = render_message(SEND, named)
        assert body is not None
        doc = orjson.loads(body)
        assert doc["id"] == "j1" and doc["type"] == "journey_send"
        assert doc["attributes"] == {"person.name.firstName": "Bo"}
        assert render_message(SEND, other) is None  # takes every segment, but not this send
        assert render_message(CHANGE, named) is None  # `segments: []`: only sends
        assert render_message(CHANGE, other) is not None


def test_each_sink_gets_the_send_as_it_takes_it() -> None:
    batch: list[Message] = [CHANGE, SEND]
    kafka = _render_batch(dest("mail", "kafka"), batch)
    assert [(k, m[0], m[2]) for k, m in kafka] == [("0", b"p_1", 1), ("0", b"p_2", 2)]
    assert orjson.loads(kafka[1][1][1])["id"] == "j1"
    file = _render_batch(dest("mail", "file"), batch)
    assert [orjson.loads(line)["id"] for line in file] == ["c1", "j1"]
    hook = _render_batch(dest("mail", "webhook"), batch)
    assert [(p.profile, p.id, p.send) for p in hook] == [("p_1", "c1", False), ("p_2", "j1", True)]
    assert all(isinstance(p, Post) for p in hook)
    assert _render_batch(dest("ads", "webhook", segments=["gold"]), batch)[0].id == "c1"
    assert len(_render_batch(dest("ads", "webhook", segments=["gold"]), batch)) == 1


def test_audience_out_has_audience_changes_only() -> None:
    assert [orjson.loads(line)["id"] for line in audience_lines([SEND, CHANGE, SEND])] == ["c1"]


def test_forget_delivery_ignores_sends(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "namespaces": [{"name": "Email"}],
            "sources": [],
            "destinations": [{"name": "mail", "kind": "file", "path": str(tmp_path / "m.jsonl")}],
            "dead_letters": {"path": str(tmp_path / "dl.jsonl")},
        }
    )
    assert deliver(settings, [SEND, CHANGE]) == {"mail": 1}
    lines = (tmp_path / "m.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == ["c1"]
