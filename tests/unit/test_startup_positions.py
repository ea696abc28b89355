"""The start-up report of saved positions (`flows.startup.saved_positions`) when several
processes start together: another process's store may be half made."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.startup import saved_positions
from operators.steps.positions import offset_key
from operators.store import StoreError, open_state, open_store


def test_a_store_being_created_by_another_process_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "process-0" / "rocksdb").mkdir(parents=True)  # RocksDB has not written CURRENT
    with pytest.raises(StoreError, match="cannot be read"):
        open_state(tmp_path)  # a clear error, not rocksdict's bare Exception
    assert saved_positions(tmp_path) == {}  # the start goes on (it used to crash the process)


def test_saved_positions_are_the_next_offsets(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.write({offset_key(1, "web", 0): b"41", offset_key(2, "web", 0): b"7"})
    store.close()
    assert saved_positions(tmp_path) == {("web", 0): 42}
