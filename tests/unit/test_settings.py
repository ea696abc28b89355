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
        (GOOD.replace("name: Email", "name: CRMID"), 1, "defined twice"),
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
