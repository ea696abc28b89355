"""A replay's progress on stderr: records applied, and lag per input partition."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from confluent_kafka import Consumer, TopicPartition

from config.settings import Settings
from operators.engine import Engine


class Progress:
    """Polls this process's engines every `interval_s` and prints one status line (redrawn on
    a TTY). On several processes each prints its own: the process holding the identity step
    (every record passes through it) the records applied and the lag of each input partition,
    every process the audience changes its profiles made; `label` names the process."""

    def __init__(
        self,
        settings: Settings,
        engines: Callable[[], list[Engine]],
        *,
        kafka: bool,
        interval_s: float = 1.0,
        out: TextIO | None = None,
        label: str = "replay",
    ) -> None:
        self._settings = settings
        self._engines = engines
        self._label = label
        self._kafka = kafka
        self._interval = interval_s
        self._out = sys.stderr if out is None else out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdp-progress", daemon=True)
        self._ends: dict[str, int] = {}
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._print(final=True)

    def _run(self) -> None:
        tty = self._out.isatty()
        every = self._interval if tty else max(self._interval, 5.0)
        while not self._stop.wait(every):
            if self._kafka:
                self._refresh_ends()
            self._print(final=False)

    def _refresh_ends(self) -> None:
        """The end of each source partition (the broker's high watermark)."""
        config = {**self._settings.kafka.client_config(), "group.id": "cdp-progress"}
        consumer = Consumer(config)
        try:
            for src in self._settings.sources:
                if not src.topic:
                    continue
                meta = consumer.list_topics(src.topic, timeout=2).topics.get(src.topic)
                for part in meta.partitions if meta else {}:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(src.topic, part), timeout=2, cached=False
                    )
                    self._ends[f"{src.name}/{part}"] = high
        except Exception:
            return
        finally:
            consumer.close()

    def line(self) -> str:
        engines = self._engines()
        elapsed = time.monotonic() - self._started
        if not engines:
            return f"{self._label}: starting ({elapsed:.0f}s)"
        records = merges = changes = 0
        positions: dict[str, int] = {}
        reads = False  # an engine here applies the records (not only profiles)
        for engine in engines:
            with engine.lock:  # between two calls: the counts of whole batches
                changes += sum(engine.stats.changes.values())
                if engine.role == "profile":
                    continue
                reads = True
                records += engine.stats.records
                merges += engine.stats.merges
                positions.update(engine.positions)
        if not reads:
            return f"{self._label}: {changes:,} changes"
        rate = records / elapsed if elapsed > 0 else 0.0
        parts = []
        for part, end in sorted(self._ends.items()):
            done = positions.get(part, -1) + 1
            parts.append(f"{part} lag {max(end - done, 0)}")
        lag = ("; " + ", ".join(parts)) if parts else ""
        return (
            f"{self._label}: {records:,} records applied ({rate:,.0f}/s), "
            f"{merges:,} identity links, {changes:,} changes{lag}"
        )

    def _print(self, *, final: bool) -> None:
        text = self.line()
        if self._out.isatty():
            self._out.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()
