"""The checks of a settings file that pydantic's field types cannot make: names that must refer
to something defined elsewhere in the file, names defined twice; and where in the YAML file a
problem is (its line), so every error names the line to edit."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

if TYPE_CHECKING:
    from config.settings import Settings

Loc = tuple[str | int, ...]


class Problem(ValueError):
    """One problem found by a cross-check, located in the settings tree (`loc`), so the file's
    line can be named."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class Problems(ValueError):
    """Every cross-check problem of a settings object (raised by its validator)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{_dotted(p.loc)}: {p.message}" for p in self.problems))


def cross_check(settings: Settings) -> list[Problem]:
    """Every name that must refer to something defined elsewhere in the file, and every name
    defined twice, each located where it is written."""
    problems: list[Problem] = []
    _unique(problems, "namespaces", "name", [n.name for n in settings.namespaces])
    _unique(problems, "sources", "name", [s.name for s in settings.sources])
    _unique(problems, "segments", "id", [s.id for s in settings.segments])
    _unique(problems, "destinations", "name", [d.name for d in settings.destinations])
    _unique(problems, "traits", "name", [t.name for t in settings.traits])
    namespaces = [n.name for n in settings.namespaces]
    for i, src in enumerate(settings.sources):
        for path, namespace in src.identities.items():
            loc: Loc = ("sources", i, "identities", path)
            _known(problems, loc, "namespace", namespace, namespaces)
        declared = src.fields.get(src.timestamp_field or "timestamp")
        if declared == "boolean":
            problems.append(
                Problem(
                    ("sources", i, "fields", src.timestamp_field or "timestamp"),
                    "the source's time field cannot be declared boolean "
                    "(a time is an ISO-8601 string or an epoch number)",
                )
            )
    segments = [s.id for s in settings.segments]
    for i, dest in enumerate(settings.destinations):
        for j, seg in enumerate(dest.segments or ()):
            _known(problems, ("destinations", i, "segments", j), "segment", seg, segments)
        for key in ("identities", "hash_identities"):
            for j, namespace in enumerate(getattr(dest, key) or ()):
                loc = ("destinations", i, key, j)
                _known(problems, loc, "namespace", namespace, namespaces)
    problems.extend(payload_problems(settings))
    problems.extend(offer_problems(settings))
    problems.extend(journey_problems(settings))
    return problems


def journey_problems(settings: Settings) -> list[Problem]:
    """A journey id twice, a trigger segment or a send destination that is not defined (or
    cannot take a message: a `profiles` destination)."""
    problems: list[Problem] = []
    _unique(problems, "journeys", "id", [j.id for j in settings.journeys])
    segments = [s.id for s in settings.segments]
    sendable = [d.name for d in settings.destinations if d.kind != "profiles"]
    for i, journey in enumerate(settings.journeys):
        if journey.trigger.segment is not None:
            loc: Loc = ("journeys", i, "trigger", "segment")
            _known(problems, loc, "segment", journey.trigger.segment, segments)
        if journey.key is not None and journey.trigger.event is None:
            problems.append(
                Problem(
                    ("journeys", i, "key"),
                    "key reads the triggering event: it needs an event trigger",
                )
            )
        for where, step in _steps(journey.steps, ("journeys", i, "steps")):
            if step.send is not None:
                loc = (*where, "send", "destination")
                _known(problems, loc, "destination", step.send.destination, sendable)
    return problems


def _steps(steps: Sequence[Any], loc: Loc) -> list[tuple[Loc, Any]]:
    """Every step of a journey with where it is written, branches included."""
    out: list[tuple[Loc, Any]] = []
    for j, step in enumerate(steps):
        out.append(((*loc, j), step))
        out.extend(_steps(step.then, (*loc, j, "then")))
        out.extend(_steps(step.else_, (*loc, j, "else")))
    return out


PAYLOAD_KEYS = ("attributes", "traits", "event", "max_payload_bytes")
_ATTRIBUTE_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")  # person.name.firstName


def payload_problems(settings: Settings) -> list[Problem]:
    """A destination's personalization (`attributes`, `traits`, `event`): each path a dotted
    profile path, each trait one of `traits:`, and none of it on a `profiles` destination
    (it carries whole documents already)."""
    problems: list[Problem] = []
    traits = [t.name for t in settings.traits]
    for i, dest in enumerate(settings.destinations):
        if dest.kind == "profiles":
            for key in PAYLOAD_KEYS:
                if key in dest.model_fields_set:
                    message = (
                        f"destination {dest.name!r} of kind profiles takes no {key!r} (it "
                        "carries whole profile documents)"
                    )
                    problems.append(Problem(("destinations", i, key), message))
            continue
        for j, path in enumerate(dest.attributes):
            loc: Loc = ("destinations", i, "attributes", j)
            if not _ATTRIBUTE_PATH.match(path):
                message = (
                    f"attribute {path!r} must be a dotted profile path, like "
                    "'person.name.firstName'"
                )
                problems.append(Problem(loc, message))
            elif path.startswith("profile."):
                # A rule's `profile.x` is the profile's `x`: this path would never have a value.
                message = (
                    f"attribute {path!r}: write the path inside the profile, without 'profile.'"
                    f" ({path.removeprefix('profile.')!r})"
                )
                problems.append(Problem(loc, message))
        for j, name in enumerate(dest.traits):
            _known(problems, ("destinations", i, "traits", j), "trait", name, traits)
    return problems


def offer_problems(settings: Settings) -> list[Problem]:
    """A placement named twice, an offer id twice in one placement (`cdp serve`'s offers)."""
    problems: list[Problem] = []
    placements: set[str] = set()
    for i, placement in enumerate(settings.offers):
        if placement.placement in placements:
            message = f"placement {placement.placement!r} is defined twice"
            problems.append(Problem(("offers", i, "placement"), message))
        placements.add(placement.placement)
        ids: set[str] = set()
        for j, offer in enumerate(placement.offers):
            if offer.id in ids:
                message = (
                    f"offer {offer.id!r} is defined twice in placement {placement.placement!r}"
                )
                problems.append(Problem(("offers", i, "offers", j, "id"), message))
            ids.add(offer.id)
    return problems


def _unique(problems: list[Problem], section: str, key: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            what = section.removesuffix("s")
            problems.append(Problem((section, i, key), f"{what} {name!r} is defined twice"))
        seen.add(name)


def _known(problems: list[Problem], loc: Loc, what: str, name: str, known: Sequence[str]) -> None:
    if name in known:
        return
    message = f"unknown {what} {name!r}"
    guess = did_you_mean(name, known)
    if guess is not None:
        message += f"; did you mean {guess!r}?"
    elif known:
        message += f" (known: {', '.join(known)})"
    problems.append(Problem(loc, message))


def did_you_mean(name: str, known: Sequence[str]) -> str | None:
    """The known name closest to a typo: one that differs only in case, else difflib's."""
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def problem_lines(exc: ValidationError, node: yaml.Node | None, path: Path) -> list[str]:
    """One line per problem: the file, the line of the offending node, the field, what."""
    found: list[tuple[Loc, str]] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            found.extend(((*loc, *p.loc), p.message) for p in cause.problems)
        else:
            found.append((loc, _message(error)))
    lines = [(_line_of(node, loc), loc, message) for loc, message in found]
    lines.sort(key=lambda item: item[0])
    return [f"{path}: line {line}: {_dotted(loc)}: {msg}" for line, loc, msg in lines]


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top)"


def line_in_file(path: str | Path, loc: Loc) -> int:
    """The 1-based line of the node at `loc` in a YAML file (best effort; 1 when unknown)."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return 1
    return _line_of(node, loc)


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at a pydantic error location (best effort)."""
    best = node
    for part in loc:
        if isinstance(best, yaml.MappingNode):
            nxt = next((v for k, v in best.value if k.value == part), None)
        elif isinstance(best, yaml.SequenceNode) and isinstance(part, int):
            nxt = best.value[part] if part < len(best.value) else None
        else:
            nxt = None
        if nxt is None:
            break
        best = nxt
    return best.start_mark.line + 1 if best is not None else 1


def rules_in_file(path: str | Path) -> list[tuple[str, str, int]]:
    """`(segment id, rule, line of the rule)` of every segment written in a YAML file, read
    without the settings' checks (so rules can be checked even when the file has other
    problems). Best effort: entries that are not an id and a rule text are skipped."""
    return _texts_in_file(path, "segments", "id", "rule")


def traits_in_file(path: str | Path) -> list[tuple[str, str, int]]:
    """`(trait name, value, line of the value)` of every trait, as `rules_in_file`."""
    return _texts_in_file(path, "traits", "name", "value")


def _texts_in_file(
    path: str | Path, section: str, id_key: str, text_key: str
) -> list[tuple[str, str, int]]:
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return []
    found: list[tuple[str, str, int]] = []
    entries = _child(node, section)
    if not isinstance(entries, yaml.SequenceNode):
        return found
    for item in entries.value:
        name, text = _child(item, id_key), _child(item, text_key)
        if isinstance(name, yaml.ScalarNode) and isinstance(text, yaml.ScalarNode):
            found.append((str(name.value), str(text.value), text.start_mark.line + 1))
    return found


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if k.value == key), None)
