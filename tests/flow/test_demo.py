"""`cdp demo` (the README's first command): the whole pipeline on a generated stream, then an
audience edit rolled out over the stored profiles, with the preview's size matching it."""

from __future__ import annotations

import re

import pytest

from flows.cli import main as cdp


def test_the_demo_runs_and_its_edit_matches_its_preview(capsys: pytest.CaptureFixture[str]) -> None:
    assert cdp(["demo", "--people", "300", "--events", "3000"]) == 0
    out = capsys.readouterr().out
    assert "audience sizes now:" in out
    sizes = dict(re.findall(r"^    (\S+) +(\d+)  ", out, re.MULTILINE))
    previewed = int(re.search(r"preview of .*: (\d+) profiles", out).group(1))  # type: ignore[union-attr]
    entered = int(re.search(r"added checkout-regulars: (\d+) entered", out).group(1))  # type: ignore[union-attr]
    removed = int(re.search(r"removed engaged-browsers: (\d+) exited", out).group(1))  # type: ignore[union-attr]
    assert previewed == entered > 0
    assert removed == int(sizes["engaged-browsers"]) > 0
    # The abandoned-cart journey: personalized emails, one per send, and buyers exit.
    sent = int(re.search(r"^    sent (\d+), held out", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    exits = int(re.search(r"exited: (\d+) exit_when", out).group(1))  # type: ignore[union-attr]
    email = re.search(r"(\d+) emails written; one: cart-1 to (\w+), cart \['", out)
    assert email is not None and int(email.group(1)) == sent > 0 and exits > 0
