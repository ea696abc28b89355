from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings, parse_settings

GOOD = """\
namespaces:
  - {name: CRMID, unique: true}
  - {name: Email, unique: true, normalize: email}
sources:
  - name: crm
    kind: profile
    path: crm.json
    identities: {crmId: CRMID}
segments:
  - {id: all, rule: 'profile.x == 1'}
kafka: {bootstrap_servers: "127.0.0.1:9092", sasl.password: hunter2}
"""


def parse(text: str, env: dict[str, str] | None = None) -> object:
    return parse_settings(text, Path("/cfg/cdp.yaml"), env or {}, {})


def test_defaults_and_relative_paths() -> None:
    s = parse(GOOD)
    assert s.identity.max_identities_per_cluster == 50  # type: ignore[attr-defined]
    assert "null" in s.identity.blocked_values  # type: ignore[attr-defined]
    assert s.resolve(s.sources[0].path) == Path("/cfg/crm.json")  # type: ignore[attr-defined]
    assert s.state_dir == Path("/cfg/.cdp-state")  # type: ignore[attr-defined]


def test_settings_are_frozen() -> None:
    s = parse(GOOD)
    with pytest.raises(ValueError, match="frozen"):
        s.shards = 3  # type: ignore[attr-defined]


def test_secrets_hidden_when_printed() -> None:
    s = parse(GOOD)
    assert "hunter2" not in repr(s.kafka)  # type: ignore[attr-defined]
    assert s.kafka.client_config()["sasl.password"] == "hunter2"  # type: ignore[attr-defined]


def test_environment_overrides_nested_values() -> None:
    s = parse(
        GOOD,
        {"CDP_KAFKA__BOOTSTRAP_SERVERS": "10.0.0.1:9092", "CDP_SHARDS": "16", "CDP_CONFIG": "x"},
    )
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092"  # type: ignore[attr-defined]
    assert s.shards == 16  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (GOOD.replace("kind: profile", "kind: person"), 6, "sources.0.kind"),
        (GOOD.replace("    path: crm.json\n", ""), 5, "needs a 'topic', a 'path', or both"),
        (GOOD.replace("{id: all,", "{id: 'bad id',"), 10, "segment id"),
        (GOOD + "unknown_key: 1\n", 12, "unknown_key"),
        ("namespaces: [\n", 2, "not valid YAML"),
        (GOOD.replace("name: Email", "name: CRMID"), 3, "defined twice"),
        (GOOD.replace("crmId: CRMID", "crmId: CRMId"), 8, "did you mean 'CRMID'?"),
        (
            GOOD.replace("{id: all,", "{id: all, name: x,", 1) + "destinations: [{name: f, "
            "kind: file, path: o.jsonl, segments: [al]}]\n",
            12,
            "unknown segment 'al'; did you",
        ),
        (
            GOOD + "destinations: [{name: hook, kind: webhook, url: 'offers.example.com/cdp'}]\n",
            12,
            "url must be http(s)://host/",
        ),
        (
            GOOD
            + "destinations: [{name: hook, kind: webhook, url: 'https://x', concurrency: 0}]\n",
            12,
            "concurrency",
        ),
    ],
)
def test_bad_files_name_file_line_and_problem(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text)
    message = str(err.value)
    assert message.startswith(f"/cfg/cdp.yaml: line {line}:"), message
    assert fragment in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    for name in ("luma.yaml", "demo.yaml"):
        settings = load_settings(root / name)
        assert settings.sources


def realistic(replace: str = "", by: str = "") -> str:
    """The demo configuration with one line changed."""
    text = (Path(__file__).resolve().parents[2] / "config" / "demo.yaml").read_text()
    assert not replace or replace in text
    return text.replace(replace, by) if replace else text


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as err:
        parse(text)
    return err.value.problems


def test_a_namespace_typo_deep_in_a_real_file_names_its_own_line() -> None:
    text = realistic(
        "      _techmarketingdemos.systemIdentifier.loyaltyId: LoyaltyId\n\nsegments:",
        "      _techmarketingdemos.systemIdentifier.loyaltyId: LoyaltyID\n\nsegments:",
    )
    line = line_of(text, "loyaltyId: LoyaltyID")
    assert line > 40  # deep in the file, not at the top of its section
    (problem,) = problems(text)
    assert problem.startswith(f"/cfg/cdp.yaml: line {line}: sources.4.identities."), problem
    assert "unknown namespace 'LoyaltyID'; did you mean 'LoyaltyId'?" in problem


def test_every_reference_problem_is_reported_each_at_its_line() -> None:
    text = realistic(
        "  - {name: audiences, kind: file, path: audience-changes.jsonl}",
        "  - {name: audiences, kind: file, path: audience-changes.jsonl,\n"
        "     identities: [Emial, ECID], hash_identities: [phone],\n"
        "     segments: [gold-buyer]}",
    ).replace("crmId: CRMID\n      personalEmail", "crmId: CRMId\n      personalEmail")
    found = problems(text)
    assert len(found) == 4, found
    expect = [
        (line_of(text, "crmId: CRMId"), "unknown namespace 'CRMId'; did you mean 'CRMID'?"),
        (line_of(text, "identities: [Emial"), "unknown namespace 'Emial'; did you mean 'Email'?"),
        (line_of(text, "identities: [Emial"), "unknown namespace 'phone'; did you mean 'Phone'?"),
        (line_of(text, "segments: [gold-buyer]"), "did you mean 'gold-buyers'?"),
    ]
    for (line, fragment), problem in zip(expect, found, strict=True):
        assert problem.startswith(f"/cfg/cdp.yaml: line {line}:"), problem
        assert fragment in problem, problem


def test_unknown_namespace_without_a_close_match_lists_the_known() -> None:
    (problem,) = problems(GOOD.replace("crmId: CRMID", "crmId: Zzz"))
    assert "unknown namespace 'Zzz' (known: CRMID, Email)" in problem


def test_namespaces_only_in_an_identity_map_stay_allowed() -> None:
    # DESIGN §4: a namespace the file does not list may still arrive in an identityMap; only
    # references written in the file must name a listed one.
    assert parse(GOOD).sources[0].identities == {"crmId": "CRMID"}  # type: ignore[attr-defined]


def test_field_types_and_guard_settings() -> None:
    s = parse(
        GOOD.replace(
            "identities: {crmId: CRMID}",
            "identities: {crmId: CRMID}\n    fields: {order.total: number, items.qty: integer}",
        )
        + "identity: {max_devices_per_identity: 5, device_window: 30m}\n"
    )
    assert s.sources[0].fields == {"order.total": "number", "items.qty": "integer"}  # type: ignore[attr-defined]
    assert s.identity.device_window_ms == 1_800_000  # type: ignore[attr-defined]
    (problem,) = problems(
        GOOD.replace(
            "identities: {crmId: CRMID}",
            "identities: {crmId: CRMID}\n    fields: {order.total: money}",
        )
    )
    assert problem.startswith("/cfg/cdp.yaml: line 9: sources.0.fields.order.total:"), problem
    (problem,) = problems(GOOD + "identity: {device_window: soon}\n")
    assert "bad duration" in problem


def test_namespace_kind_defaults() -> None:
    s = parse(
        GOOD.replace(
            "  - {name: Email, unique: true, normalize: email}\n",
            "  - {name: Email, unique: true, normalize: email}\n"
            "  - {name: Phone, normalize: phone}\n  - {name: ECID}\n"
            "  - {name: Kiosk, kind: person}\n  - {name: Card, unique: true, kind: device}\n",
        )
    )
    kinds = {n.name: n.is_person for n in s.namespaces}  # type: ignore[attr-defined]
    assert kinds == {
        "CRMID": True,
        "Email": True,
        "Phone": True,
        "ECID": False,
        "Kiosk": True,
        "Card": False,
    }


def test_benchmark_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    assert load_settings(root / "bench.yaml").segments


def test_a_bad_url_names_the_url_line() -> None:
    text = GOOD + "destinations:\n  - name: hook\n    kind: webhook\n    url: offers.example.com\n"
    (problem,) = problems(text)
    assert problem.startswith("/cfg/cdp.yaml: line 15: destinations.0.url: destination 'hook'")


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("'meta..updatedAt'", "timestamp_field 'meta..updatedAt' must be a dotted field path"),
        ("'.at'", "must be a dotted field path"),
        ("'up dated'", "must be a dotted field path"),
    ],
)
def test_a_bad_timestamp_field_names_its_line(field: str, fragment: str) -> None:
    text = GOOD.replace(
        "    path: crm.json\n", f"    path: crm.json\n    timestamp_field: {field}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse(text)
    message = str(err.value)
    assert message.startswith("/cfg/cdp.yaml: line 8:"), message
    assert fragment in message


def test_a_timestamp_field_is_a_dotted_path_and_cannot_be_declared_boolean() -> None:
    text = GOOD.replace("    path: crm.json\n", "    path: crm.json\n    timestamp_field: m.at\n")
    source = parse_settings(text, Path("/cfg/cdp.yaml"), {}, {}).sources[0]
    assert source.timestamp_field == "m.at" and source.time_path == ("m", "at")
    plain = parse_settings(GOOD, Path("/cfg/cdp.yaml"), {}, {}).sources[0]
    assert plain.time_path == ("timestamp",)
    wrong = text.replace("    identities:", "    fields: {m.at: boolean}\n    identities:")
    with pytest.raises(ConfigError) as err:
        parse(wrong)
    message = str(err.value)
    assert message.startswith("/cfg/cdp.yaml: line 9:"), message
    assert "time field cannot be declared boolean" in message


PERSONAL = (
    GOOD
    + """\
traits:
  - {name: lifetime_value, value: 'sum(event.total, event.eventType == "buy")'}
destinations:
  - name: email
    kind: webhook
    url: http://127.0.0.1/x
    attributes: [person.name.firstName, homeAddress]
    traits: [lifetime_value]
    event: true
    max_payload_bytes: 4096
  - {name: projection, kind: profiles, path: p.jsonl}
"""
)


def test_payload_keys_of_a_destination() -> None:
    s = parse(PERSONAL)
    email, projection = s.destinations  # type: ignore[attr-defined]
    assert email.attributes == ("person.name.firstName", "homeAddress")
    assert email.traits == ("lifetime_value",) and email.event is True
    assert email.max_payload_bytes == 4096 and email.personalized
    assert not projection.personalized and projection.max_payload_bytes == 32768


def test_payload_problems_each_at_its_line() -> None:
    text = (
        PERSONAL.replace("[person.name.firstName, homeAddress]", "['person..name', profile.tier]")
        .replace("traits: [lifetime_value]", "traits: [lifetime_valeu, nope]")
        .replace(
            "  - {name: projection, kind: profiles, path: p.jsonl}",
            "  - name: projection\n    kind: profiles\n    path: p.jsonl\n    event: true\n"
            "    attributes: [a]",
        )
    )
    found = problems(text)
    expect = [
        (line_of(text, "person..name"), "attribute 'person..name' must be a dotted profile path"),
        (line_of(text, "person..name"), "without 'profile.' ('tier')"),
        (line_of(text, "lifetime_valeu"), "unknown trait 'lifetime_valeu'; did you mean"),
        (line_of(text, "lifetime_valeu"), "unknown trait 'nope' (known: lifetime_value)"),
        (line_of(text, "    attributes: [a]") - 1, "takes no 'event'"),
        (line_of(text, "    attributes: [a]"), "takes no 'attributes'"),
    ]
    assert len(found) == len(expect), found
    for (line, fragment), problem in zip(expect, found, strict=True):
        assert problem.startswith(f"/cfg/cdp.yaml: line {line}:"), problem
        assert fragment in problem, problem


def test_max_payload_bytes_must_be_positive() -> None:
    (problem,) = problems(PERSONAL.replace("max_payload_bytes: 4096", "max_payload_bytes: 0"))
    assert "destinations.0.max_payload_bytes" in problem
