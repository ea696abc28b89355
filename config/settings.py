"""The one settings object, loaded from the YAML file of DESIGN §4.

Only this package reads files and the environment for configuration; everything else is
handed a frozen `Settings`. A bad file is refused at start with the file, the line and what is
wrong (`ConfigError`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.checks import Problem, Problems, cross_check, problem_lines

ENV_PREFIX = "CDP_"
# Placeholders that forms, apps and exports put where an id is unknown. Matched without regard
# to case, against the value as given and as normalised: "N/A" from three devices must not make
# them one person. The e-mail patterns take only placeholder local parts or reserved domains, so
# a real-looking address is never blocked.
DEFAULT_BLOCKED = (
    "",
    "null",
    "none",
    "nil",
    "undefined",
    "unknown",
    "anonymous",
    "n/a",
    "na",
    "test",
    "-1",
    "^[0-]+$",  # all-zero ids: 0, 000-000, the zeroed ECID / IDFA / GAID
    r"^(test|testing|noemail|no-email|no_email|none|null|nil|unknown|n/?a|noreply|no-reply"
    r"|donotreply|do-not-reply|dummy|fake)@.*$",
    r"^([a-z0-9])\1*@\1+\.[a-z]{2,3}$",  # a@a.com, xx@xx.com
    r"^[^@]+@([^@]+\.)?(invalid|test)$",  # RFC 2606 reserved top-level domains
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")  # a dotted body path: a, a.b.c
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
FieldType = Literal["number", "integer", "string", "boolean", "timestamp"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, line and problem, one
    line per problem (`problems`)."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.problems)


def duration_ms(text: str) -> int:
    """`"30m"` -> 1_800_000. Units: ms s m h d w."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"bad duration {text!r}: use a number and one of ms s m h d w, e.g. '30m'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NamespaceSettings(_Frozen):
    name: str
    unique: bool = False
    normalize: Literal["email", "phone", "lower", "none"] = "none"
    # person: names one person (CRMID, Email); device: a browser or phone (ECID, IDFA). The
    # blob-user guard limits how many device ids one person identity gathers in a short time.
    # Unset: person when unique or normalised as an email or phone, else device.
    kind: Literal["person", "device"] | None = None

    @property
    def is_person(self) -> bool:
        if self.kind is not None:
            return self.kind == "person"
        return self.unique or self.normalize in ("email", "phone")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"namespace name {value!r} must be letters, digits, _ . - (no ':')")
        return value


class IdentitySettings(_Frozen):
    max_identities_per_cluster: int = Field(default=50, ge=1)
    blocked_values: tuple[str, ...] = DEFAULT_BLOCKED
    max_value_length: int = Field(default=256, ge=1)
    # The blob-user guard: a link that would leave a cluster holding a person identity with
    # more than this many device ids attached within one `device_window` of event time is
    # refused and recorded as a conflict (rule `max_devices_per_identity`). null: no guard.
    max_devices_per_identity: int | None = Field(default=10, ge=1)
    device_window: str = "1h"
    # Several processes (`-i/-a`): moves of merged profiles between processes travel here.
    feedback_topic: str = "cdp.identity-feedback"

    @field_validator("blocked_values")
    @classmethod
    def _patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if _looks_like_regex(value):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(
                        f"blocked value {value!r} is not a valid regex: {exc}"
                    ) from exc
        return values

    @field_validator("device_window")
    @classmethod
    def _window(cls, value: str) -> str:
        duration_ms(value)
        return value

    @property
    def device_window_ms(self) -> int:
        return duration_ms(self.device_window)


class SourceSettings(_Frozen):
    name: str
    kind: Literal["event", "profile"]
    topic: str | None = None
    path: Path | None = None
    priority: int = 0
    identities: dict[str, str] = Field(default_factory=dict)
    # Declared types of body fields (dotted paths, through lists like rule paths): numeric
    # strings become numbers; a value of the wrong type makes the record a dead letter.
    fields: dict[str, FieldType] = Field(default_factory=dict)
    event_type: str | None = None
    # What a numeric `timestamp` counts: epoch milliseconds or seconds. A value that reads as
    # the other unit (seconds taken as ms land in January 1970) is a dead letter, not a guess.
    timestamp_unit: Literal["ms", "s"] = "ms"
    # Where a record's time is: a dotted body path (`loyalty.updatedAt`) in place of the
    # top-level `timestamp`, in the same formats and `timestamp_unit`. An event without it is
    # a dead letter. A profile record without it takes its Kafka message timestamp (a file's
    # record: none, and its file position orders it): a profile record's time orders the
    # attribute merge and stamps the changes it causes, never moves event time.
    timestamp_field: str | None = None

    @field_validator("timestamp_field")
    @classmethod
    def _timestamp_field(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value):
            raise ValueError(
                f"timestamp_field {value!r} must be a dotted field path, like 'loyalty.updatedAt'"
            )
        return value

    @model_validator(mode="after")
    def _where(self) -> SourceSettings:
        if self.topic is None and self.path is None:
            raise ValueError(f"source {self.name!r} needs a 'topic', a 'path', or both")
        return self

    @property
    def time_path(self) -> tuple[str, ...]:
        """The body path of a record's time: `timestamp_field` split, else `timestamp`."""
        return tuple((self.timestamp_field or "timestamp").split("."))


class SegmentSettings(_Frozen):
    id: str
    name: str = ""
    rule: str

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"segment id {value!r} must be letters, digits, _ . -")
        return value


class DestinationSettings(_Frozen):
    name: str
    # "profiles": the profile projection (DESIGN §11), to a topic or a file (ProjectionTarget)
    kind: Literal["kafka", "file", "webhook", "profiles"]
    topic: str | None = None
    path: Path | None = None
    url: str | None = None
    segments: tuple[str, ...] | None = None  # None: every segment
    identities: tuple[str, ...] | None = None  # namespaces to send; None: all
    hash_identities: tuple[str, ...] = ()  # namespaces sent as SHA-256 hex
    headers: dict[str, str] = Field(default_factory=dict)  # webhook: e.g. Authorization
    max_attempts: int = Field(default=5, ge=1)  # webhook: then the change is a dead letter
    backoff_ms: int = Field(default=200, ge=0)  # webhook: doubled after each failed attempt
    timeout_s: float = Field(default=5.0, gt=0)
    # webhook: requests in flight at once, each lane a kept-alive connection; a profile's
    # changes keep to one lane, so they arrive in order
    concurrency: int = Field(default=8, ge=1, le=256)
    requires_consent: bool = False  # profiles whose consent attribute is denied are not sent
    # webhook: after this many deliveries in a row failed (each after max_attempts), the
    # destination is down: its changes go to its spool (STATE/spool/<name>.jsonl) unsent
    down_after: int = Field(default=3, ge=1)
    # webhook: while its spool holds changes, the oldest is tried this often; when it goes
    # through, the spool is delivered in order before newer changes of the same profiles
    retry_every: str = "30s"
    # webhook: the ids of the journey sends it delivered are kept this long (in
    # STATE/delivered/<name>), so a send emitted again after a crash is not posted again
    dedup_window: str = "7d"
    # Personalization (issue #16): what each of its messages carries besides the change.
    # `attributes`: profile field paths (dotted, as in the profile: `person.name.firstName`);
    # `traits`: names of `traits:`; `event`: the body of the record that caused the change
    # (null for a change a timer, a merge or an edit caused). Over `max_payload_bytes` the
    # message leaves out the event, then the traits, then the attributes, and names them in
    # `"omitted"`.
    attributes: tuple[str, ...] = ()
    traits: tuple[str, ...] = ()
    event: bool = False
    max_payload_bytes: int = Field(default=32768, ge=1)

    @property
    def personalized(self) -> bool:
        """It asks for something besides the change itself."""
        return bool(self.attributes or self.traits or self.event)

    @field_validator("retry_every")
    @classmethod
    def _retry_every(cls, value: str) -> str:
        if duration_ms(value) <= 0:
            raise ValueError("retry_every must be more than 0")
        return value

    @property
    def retry_every_s(self) -> float:
        return duration_ms(self.retry_every) / 1000

    @field_validator("dedup_window")
    @classmethod
    def _dedup_window(cls, value: str) -> str:
        if duration_ms(value) <= 0:
            raise ValueError("dedup_window must be more than 0")
        return value

    @property
    def dedup_window_ms(self) -> int:
        return duration_ms(self.dedup_window)

    @model_validator(mode="after")
    def _target(self) -> DestinationSettings:
        if self.kind == "profiles":
            return projection_target(self)
        needed = {"kafka": "topic", "file": "path", "webhook": "url"}[self.kind]
        if getattr(self, needed) is None:
            raise ValueError(f"destination {self.name!r} of kind {self.kind} needs '{needed}'")
        if self.url is not None:
            try:
                http_url(self.url)
            except ValueError as exc:  # located at the url, not the destination's first line
                raise Problems([Problem(("url",), f"destination {self.name!r}: {exc}")]) from None
        return self


def http_url(url: str) -> urllib.parse.SplitResult:
    """`url` in parts, if it is `http(s)://host/…` (ValueError otherwise)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be http(s)://host/…")
    return parts


class DeadLetterSettings(_Frozen):
    kind: Literal["kafka", "file"] = "file"
    topic: str = "cdp.dead-letters"
    path: Path = Path("dead-letters.jsonl")


class KafkaSettings(BaseModel):
    """`bootstrap_servers` plus any librdkafka option (dotted names allowed)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    bootstrap_servers: str = "127.0.0.1:9092"

    def client_config(self) -> dict[str, str]:
        extra = {k: str(v) for k, v in (self.model_extra or {}).items()}
        return {"bootstrap.servers": self.bootstrap_servers, **extra}

    def __repr_args__(self) -> Any:  # never print credentials
        for key, value in super().__repr_args__():
            secret = key is not None and ("password" in key or "secret" in key)
            yield key, "***" if secret else value


class StateSettings(_Frozen):
    dir: Path = Path(".cdp-state")
    # RocksDB's block cache (uncompressed blocks) of a worker process: halves the time of a
    # profile read at 100k profiles against RocksDB's default of 8 MB (benchmarks/RESULTS.md).
    cache_mb: int = Field(default=256, ge=8)


class TimeSettings(_Frozen):
    allowed_lateness: str = "0s"
    # A record stamped further ahead than this of when it was written (its Kafka message
    # timestamp, else the wall clock when read) is a dead letter: one wrong clock must not
    # move event time for everyone, nor fire every pending timer at once.
    max_future: str = "10m"

    @field_validator("allowed_lateness", "max_future")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_ms(value)
        return value

    @property
    def allowed_lateness_ms(self) -> int:
        return duration_ms(self.allowed_lateness)

    @property
    def max_future_ms(self) -> int:
        return duration_ms(self.max_future)


class HistorySettings(_Frozen):
    """Each profile's raw events, kept to rebuild the inputs of an audience added or edited
    later (DESIGN §13): the newest `max_events` within `max_age` of event time. 0 events: off."""

    max_age: str = "90d"
    max_events: int = Field(default=5000, ge=0)

    @field_validator("max_age")
    @classmethod
    def _duration(cls, value: str) -> str:
        if duration_ms(value) <= 0:
            raise ValueError("max_age must be longer than 0")
        return value

    @property
    def max_age_ms(self) -> int:
        return duration_ms(self.max_age)

    @property
    def enabled(self) -> bool:
        return self.max_events > 0


class ProfileSettings(_Frozen):
    history: HistorySettings = HistorySettings()
    # Profiles brought to edited audience definitions per write batch: a record waits at most
    # one batch for the rollout (DESIGN §13).
    rollout_batch: int = Field(default=200, ge=1)


class PrivacySettings(_Frozen):
    """Consent and deletion. `consent_attribute` is a profile field path; a profile whose value
    is in `denied` is kept out of destinations with `requires_consent: true`. After `cdp forget`
    a person's identities are tombstoned: their records are dropped unless one carries the
    consent attribute with a `granted` value."""

    topic: str | None = None  # streaming deletes: {"identity": "Email:..."} per message
    consent_attribute: str = "consents.marketing.val"
    granted: tuple[str, ...] = ("y", "yes", "true")
    denied: tuple[str, ...] = ("n", "no", "false")


class RecoverySettings(_Frozen):
    """Bytewax recovery: how often input positions are snapshotted (the most a crash rewinds)."""

    enabled: bool = True
    epoch_interval_ms: int = Field(default=1000, ge=10)


class Settings(_Frozen):
    namespaces: tuple[NamespaceSettings, ...]
    identity: IdentitySettings = IdentitySettings()
    sources: tuple[SourceSettings, ...]
    segments: tuple[SegmentSettings, ...] = ()
    traits: tuple[TraitSettings, ...] = ()
    destinations: tuple[DestinationSettings, ...] = ()
    dead_letters: DeadLetterSettings = DeadLetterSettings()
    kafka: KafkaSettings = KafkaSettings()
    state: StateSettings = StateSettings()
    time: TimeSettings = TimeSettings()
    recovery: RecoverySettings = RecoverySettings()
    privacy: PrivacySettings = PrivacySettings()
    profile: ProfileSettings = ProfileSettings()
    shards: int = Field(default=256, ge=1, le=4096)
    max_record_bytes: int = Field(default=1_000_000, ge=1024)
    serve: ServeSettings | None = None  # `cdp serve` (DESIGN §11)
    offers: tuple[PlacementSettings, ...] = ()  # `cdp serve`'s decisions
    journeys: tuple[JourneySettings, ...] = ()  # DESIGN §12
    journey_caps: JourneyCapSettings | None = None
    base_dir: Path = Path()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = cross_check(self)
        if problems:
            raise Problems(problems)
        return self

    def resolve(self, path: Path) -> Path:
        """A path from the file, relative to the file's folder."""
        return path if path.is_absolute() else self.base_dir / path

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.state.dir)

    def source(self, name: str) -> SourceSettings:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)


def _looks_like_regex(value: str) -> bool:
    return value.startswith("^") or value.endswith("$")


@dataclass(frozen=True, slots=True)
class Entry:
    """What `python -m bytewax.run "flows.audience:build_flow()"` takes from the environment:
    the settings file (`CDP_CONFIG`), the mode (`CDP_RUN_MODE`: live, replay or files) and
    whether Bytewax recovers (`BYTEWAX_RECOVERY_DIRECTORY`, bytewax.run's own)."""

    config: Path
    mode: Literal["files", "replay", "live"]
    recovery: bool


def entry_from_env(
    config: str | None, mode: str | None, env: Mapping[str, str] | None = None
) -> Entry:
    env = os.environ if env is None else env
    path = config or env.get("CDP_CONFIG")
    if not path:
        raise ConfigError("set CDP_CONFIG to the settings file (or pass config=...)")
    chosen = mode or env.get("CDP_RUN_MODE", "live")
    if chosen not in ("files", "replay", "live"):
        raise ConfigError(f"CDP_RUN_MODE must be live, replay or files, not {chosen!r}")
    return Entry(Path(path), chosen, bool(env.get("BYTEWAX_RECOVERY_DIRECTORY")))  # type: ignore[arg-type]


def load_settings(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, override from `CDP_…` variables (nesting with `__`), validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_settings(text, path, os.environ if env is None else env, overrides or {})


def parse_settings(
    text: str, path: Path, env: Mapping[str, str], overrides: Mapping[str, Any]
) -> Settings:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}: not valid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: line 1: the file must be a mapping of settings")
    _apply_env(raw, env)
    for dotted, value in overrides.items():
        _set_path(raw, dotted.split("."), value)
    raw["base_dir"] = str(path.resolve().parent)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(*problem_lines(exc, node, path)) from exc


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX:
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in Settings.model_fields or parts[0] == "base_dir":
            continue  # CDP_CONFIG, CDP_RUN_MODE and friends are not settings
        _set_path(raw, parts, yaml.safe_load(value) if value else value)


def _set_path(raw: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    target = raw
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[parts[-1]] = value


# -- `cdp serve` (DESIGN §11) ----------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Scope = Literal["read", "decide", "collect"]


class ServeKeySettings(_Frozen):
    """An API key: its value is read from the environment variable `key_env` when the server
    starts, never from the file (the file is shared and versioned; keys are not)."""

    name: str
    key_env: str
    scopes: tuple[Scope, ...] = ("read",)

    @field_validator("key_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"key_env {value!r} must be an environment variable name")
        return value


class ServeProfilesSettings(_Frozen):
    """Where the profile projection is read: a Kafka topic (from its beginning) or a JSON-lines
    file (followed as it grows)."""

    topic: str | None = None
    path: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> ServeProfilesSettings:
        if (self.topic is None) == (self.path is None):
            raise ValueError("serve.profiles needs exactly one of 'topic' or 'path'")
        return self


class ServeSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # None: the `profiles` destination of this file (its topic or path).
    profiles: ServeProfilesSettings | None = None
    keys: tuple[ServeKeySettings, ...] = ()
    # The server's own store of the projection: kept, a restart resumes where it was read
    # to. None: a temporary directory, filled from the projection's beginning at each start.
    state_dir: Path | None = None
    max_record_bytes: int = Field(default=32 * 1024, ge=64)
    max_request_bytes: int = Field(default=1024 * 1024, ge=64)
    # How long a collect request waits for the broker's acknowledgement before answering 503.
    delivery_timeout: str = "5s"
    # One line per request: method, route template (never the path: no id in a log), status,
    # time. Off by default: /metrics counts and times every route.
    access_log: bool = False

    @field_validator("delivery_timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if duration_ms(value) <= 0:
            raise ValueError("delivery_timeout must be more than 0")
        return value

    @property
    def delivery_timeout_ms(self) -> int:
        return duration_ms(self.delivery_timeout)

    @model_validator(mode="after")
    def _keys(self) -> ServeSettings:
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.name in seen:
                raise Problems([Problem(("keys", i, "name"), f"key {key.name!r} is defined twice")])
            seen.add(key.name)
        return self


class OfferSettings(_Frozen):
    """One offer of a placement: eligible when `rule` holds (no rule: always)."""

    id: str
    rule: str | None = None
    priority: int = 0
    content: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"offer id {value!r} must be letters, digits, _ . -")
        return value


class PlacementSettings(_Frozen):
    """A place on a page or in a conversation; its offers are tried by priority, highest
    first (ties: in the file's order)."""

    placement: str
    offers: tuple[OfferSettings, ...]

    @field_validator("placement")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"placement {value!r} must be letters, digits, _ . -")
        return value


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key of `serve.keys` with its secret, read from the environment."""

    name: str
    secret: bytes = field(repr=False)  # never printed
    scopes: frozenset[str] = frozenset()


def api_keys(serve: ServeSettings, env: Mapping[str, str] | None = None) -> tuple[ApiKey, ...]:
    """Each key's secret from its environment variable. None configured, or one not set: a
    ConfigError (a server whose every request is a 401 is a misconfiguration, not a lock)."""
    env = os.environ if env is None else env
    if not serve.keys:
        raise ConfigError("serve.keys: no API key is configured (add {name, key_env, scopes})")
    keys: list[ApiKey] = []
    missing: list[str] = []
    for i, key in enumerate(serve.keys):
        value = env.get(key.key_env, "")
        if not value:
            missing.append(f"serve.keys.{i}: the environment variable {key.key_env} is not set")
            continue
        keys.append(ApiKey(key.name, value.encode(), frozenset(key.scopes)))
    if missing:
        raise ConfigError(*missing)
    return tuple(keys)


# -- issue #15, the profile projection: traits and the `profiles` destination ------------------

_TRAIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # one part of `profile.traits.NAME`
_AGGREGATE_CALL = re.compile(r"^\s*(exists|count|sum|min|max|last)\s*\(.*\)\s*$", re.DOTALL)


class TraitSettings(_Frozen):
    """A computed profile value: one aggregate call of the rule language, kept up to date per
    event; in the profile documents as `traits.NAME`, in rules as `profile.traits.NAME`. The
    call itself is compiled (and its errors located) with the rules."""

    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TRAIT_NAME.match(value):
            raise ValueError(
                f"trait name {value!r} must be letters, digits and _ (a rule reads"
                " it as profile.traits.NAME)"
            )
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if not _AGGREGATE_CALL.match(value):
            raise ValueError(
                "a trait's value must be one aggregate call: exists, count, sum, min, max or "
                'last(...), e.g. sum(event.commerce.order.priceTotal, event.eventType == "p")'
            )
        return value


def projection_target(dest: DestinationSettings) -> DestinationSettings:
    """A `profiles` destination writes to exactly one of a topic or a file, and sends whole
    documents: the per-change options do not apply."""
    if (dest.topic is None) == (dest.path is None):
        raise ValueError(f"destination {dest.name!r} of kind profiles needs 'topic' or 'path'")
    if (
        dest.url is not None
        or dest.segments is not None
        or dest.identities is not None
        or dest.hash_identities
        or dest.requires_consent
    ):
        raise ValueError(
            f"destination {dest.name!r} of kind profiles takes no url, segments, identities, "
            "hash_identities or requires_consent (it carries whole profile documents)"
        )
    return dest


# -- issue #16, journeys (DESIGN §12) ---------------------------------------------------------

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_PERCENT = re.compile(r"^(\d+(\.\d+)?)%$")


class SendSettings(_Frozen):
    destination: str
    message: str


class WaitUntilSettings(_Frozen):
    """Until the next `until` (HH:MM) in `timezone`: an IANA name (`Europe/Berlin`) or a
    profile attribute holding one (`profile.timezone`; UTC when it holds none valid)."""

    until: str
    timezone: str = "UTC"

    @field_validator("until")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"until {value!r} must be a time of day HH:MM, e.g. '09:00'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value.startswith("profile."):
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {value!r} is neither an IANA time zone (Europe/Berlin) nor a"
                " profile attribute (profile.timezone)"
            ) from None
        return value


class StepSettings(_Frozen):
    """One step: exactly one of `send`, `wait` (a duration, or `{until, timezone}`) or `if`
    (a rule, with `then` and `else` steps)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    send: SendSettings | None = None
    wait: str | WaitUntilSettings | None = None
    if_: str | None = Field(default=None, alias="if")
    then: tuple[StepSettings, ...] = ()
    else_: tuple[StepSettings, ...] = Field(default=(), alias="else")

    @model_validator(mode="after")
    def _one(self) -> StepSettings:
        given = [k for k in ("send", "wait", "if_") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a step is exactly one of send, wait or if")
        if self.if_ is None and (self.then or self.else_):
            raise ValueError("only an if step has then/else")
        if isinstance(self.wait, str):
            duration_ms(self.wait)
        return self


class TriggerSettings(_Frozen):
    """What starts an instance: entering a segment, or an event matching a condition (written
    as inside `exists(...)`)."""

    segment: str | None = None
    event: str | None = None

    @model_validator(mode="after")
    def _one(self) -> TriggerSettings:
        if (self.segment is None) == (self.event is None):
            raise ValueError("a trigger is exactly one of segment or event")
        return self


class ReentrySettings(_Frozen):
    """When a profile may start the journey again (per `key`). With none of these: once the
    instance before has ended. Kept in the state with no expiry."""

    min_gap: str | None = None
    max: int | None = Field(default=None, ge=1)
    per: str | None = None
    once: bool = False

    @model_validator(mode="after")
    def _valid(self) -> ReentrySettings:
        for value in (self.min_gap, self.per):
            if value is not None:
                duration_ms(value)
        if (self.max is None) != (self.per is None):
            raise ValueError("reentry max and per go together: {max: 3, per: 30d}")
        return self


class JourneySettings(_Frozen):
    id: str
    name: str | None = None
    trigger: TriggerSettings
    # A path in the triggering event (`event.cart.id`): one instance per value (two carts are
    # two instances). None: one per profile.
    key: str | None = None
    exit_when: str | None = None  # a rule; the instance ends the moment it holds
    reentry: ReentrySettings = ReentrySettings()
    holdout: str = "0%"  # a share of profiles, chosen by profile id: tracked, never sent
    priority: int = 0  # who wins under journey_caps
    late: Literal["skip", "send"] = "skip"  # a send due more than max_lateness ago
    max_lateness: str = "1h"
    on_edit: Literal["finish", "exit"] = "finish"  # instances in flight when the journey changes
    steps: tuple[StepSettings, ...] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"journey id {value!r} must be letters, digits, _ . -")
        return value

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: str) -> str:
        match = _PERCENT.match(str(value).strip())
        if match is None or float(match.group(1)) > 100:
            raise ValueError(f"holdout {value!r} must be a percentage from 0% to 100%, e.g. '5%'")
        return value

    @field_validator("max_lateness")
    @classmethod
    def _lateness(cls, value: str) -> str:
        duration_ms(value)
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value.removeprefix("event.")):
            raise ValueError(f"key {value!r} must be a path in the event, e.g. event.cart.id")
        return value

    @property
    def holdout_bp(self) -> int:
        """The holdout in basis points (5% -> 500)."""
        match = _PERCENT.match(self.holdout.strip())
        assert match is not None
        return round(float(match.group(1)) * 100)

    @property
    def max_lateness_ms(self) -> int:
        return duration_ms(self.max_lateness)


class JourneyCapSettings(_Frozen):
    """At most `per_profile` sends to one profile, over all journeys, in any `per` window;
    journey `priority` decides between sends due at the same moment."""

    per_profile: int = Field(ge=1)
    per: str = "1d"

    @field_validator("per")
    @classmethod
    def _per(cls, value: str) -> str:
        if duration_ms(value) <= 0:
            raise ValueError("per must be more than 0")
        return value

    @property
    def per_ms(self) -> int:
        return duration_ms(self.per)


Settings.model_rebuild()
