"""`iso_ms`, the time format of every output, against the standard library's."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given
from hypothesis import strategies as st

from schemas.records import iso_ms

YEAR_1_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_9999_END_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@given(st.integers(YEAR_1_MS, YEAR_9999_END_MS))
@example(0)
@example(-1)
@example(1_000)
@example(1_597_104_000_000)  # 2020-08-11T00:00:00Z: no milliseconds shown
@example(YEAR_1_MS)
@example(YEAR_9999_END_MS)
def test_iso_ms_is_the_utc_time_to_the_millisecond(ms: int) -> None:
    seconds, frac = divmod(ms, 1000)
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    expected = dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:03d}Z" if frac else "Z")
    assert iso_ms(ms) == expected
