"""Shared pieces of the benchmarks: the broker, topics, configs, resident memory, the machine,
the event history on or off, the bench journeys and the size of a state on disk."""

from __future__ import annotations

import os
import platform
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from config.settings import HistorySettings
from operators.steps.history import PREFIX as HISTORY_PREFIX
from operators.store import Store, open_store, process_dirs

ROOT = Path(__file__).resolve().parents[1]
HISTORY_MODES = ("on", "off")
JOURNEY_MODES = ("on", "off")
SEND_DESTINATIONS = ("email", "sms")  # the file destinations the bench journeys send to


def bench_journeys(send_dir: Path) -> dict[str, Any]:
    """The bench journeys (DESIGN §12) as top-level config keys, for a config with the bench
    data's segments (`config/bench.yaml`): `journeys`, `journey_caps`, and `destinations` to
    add (a file per send destination in `send_dir`, taking no audience change).

    `cart-reminder` starts on every cart add (`commerce.productListAdds`, about 1 event in 25 of
    the bench data), ends at once on a purchase, waits a day and branches; `cart-rescue` starts
    on entering `abandoned-cart` with a 5 % holdout. Both send even when the step is due long
    before the wall clock (`late: send`): the bench data is dated November 2026.
    """
    return {
        "journeys": [
            {
                "id": "cart-reminder",
                "trigger": {"event": 'event.eventType == "commerce.productListAdds"'},
                "exit_when": 'exists(event.eventType == "commerce.purchases", within="2d")',
                "reentry": {"min_gap": "24h"},
                "priority": 2,
                "late": "send",
                "steps": [
                    {"send": {"destination": "email", "message": "cart-1"}},
                    {"wait": "1d"},
                    {
                        "if": 'profile._techmarketingdemos.loyalty.level == "gold"',
                        "then": [{"send": {"destination": "email", "message": "cart-vip"}}],
                        "else": [{"send": {"destination": "sms", "message": "cart-2"}}],
                    },
                ],
            },
            {
                "id": "cart-rescue",
                "trigger": {"segment": "abandoned-cart"},
                "exit_when": 'in_segment("buyers-7d")',
                "holdout": "5%",
                "priority": 1,
                "late": "send",
                "steps": [
                    {"wait": "2h"},
                    {"send": {"destination": "email", "message": "rescue-1"}},
                ],
            },
        ],
        "journey_caps": {"per_profile": 3, "per": "1d"},
        "destinations": [
            {"name": name, "kind": "file", "path": str(send_dir / f"{name}.jsonl"), "segments": []}
            for name in SEND_DESTINATIONS
        ],
    }


def journeys_config(base: Path, out: Path, send_dir: Path) -> Path:
    """A copy of a config (in `out`) with the bench journeys and their destinations added."""
    data = yaml.safe_load(base.read_text())
    added = bench_journeys(send_dir)
    data["destinations"] = [*data.get("destinations", []), *added.pop("destinations")]
    data.update(added)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def sends_written(send_dir: Path) -> int:
    """The journey sends the file destinations of `bench_journeys` hold (one JSON line each)."""
    total = 0
    for name in SEND_DESTINATIONS:
        path = send_dir / f"{name}.jsonl"
        if path.exists():
            with path.open("rb") as lines:
                total += sum(1 for line in lines if line.strip())
    return total


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def run_id() -> str:
    return f"bench{secrets.token_hex(3)}."


def history_overrides(configured_max_events: int | None, mode: str) -> dict[str, int]:
    """Dotted config overrides (as `load_settings` takes them) for the per-profile event history
    `on` or `off`. `off` is `max_events: 0`; `on` keeps the config's history if it is on (None:
    not configured, the default is on), else takes the default `max_events`."""
    if mode not in HISTORY_MODES:
        raise ValueError(f"history mode must be one of {HISTORY_MODES}, not {mode!r}")
    key = "profile.history.max_events"
    if mode == "off":
        return {key: 0}
    if configured_max_events is None or configured_max_events > 0:
        return {}
    return {key: HistorySettings().max_events}


def bench_config(
    base: Path, out: Path, prefix: str, bootstrap: str, history: str | None = None, **extra: Any
) -> Path:
    """A copy of a config with topics prefixed, the broker set, the event history `on` or `off`
    (None: as configured) and extra top-level keys."""
    data = yaml.safe_load(base.read_text())
    if history is not None:
        held = data.get("profile", {}).get("history", {}).get("max_events")
        for dotted, value in history_overrides(held, history).items():
            target = data
            *parents, last = dotted.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = value
    for src in data["sources"]:
        src["topic"] = prefix + src["topic"]
        src.pop("path", None)
    for dest in data.get("destinations", []):
        if dest.get("kind") == "kafka":
            dest["topic"] = prefix + dest["topic"]
    if data.get("dead_letters", {}).get("kind") == "kafka":
        data["dead_letters"]["topic"] = prefix + data["dead_letters"]["topic"]
    data["kafka"] = {"bootstrap_servers": bootstrap}
    data.update(extra)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


class PeakRss:
    """Polls a child process's resident memory (VmRSS) and keeps the peak, in MB; and its CPU
    time (user + system, last seen), in seconds."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.cpu_s = (int(fields[11]) + int(fields[12])) / self.TICK
            except (OSError, ValueError):
                return
            self._stop.wait(every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb, 1)


def run_timed(cmd: Sequence[str], timeout_s: float) -> tuple[float, float, str]:
    """Run a command; (seconds, peak RSS in MB, stderr tail). Raises if it fails."""
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rss = PeakRss(proc.pid)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        peak = rss.stop()
    seconds = time.monotonic() - started
    text = err.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return seconds, peak, text[-500:]


def run_cluster(
    cmds: Sequence[Sequence[str]], timeout_s: float
) -> tuple[float, list[float], list[float]]:
    """Run the processes of one cluster together; (seconds until the last ends, peak RSS of
    each in MB, CPU seconds of each). Raises if any fails."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(list(c), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    watches = [PeakRss(proc.pid, every_s=0.05) for proc in procs]
    errors: list[str] = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout_s)
            errors.append(err.decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        peaks = [w.stop() for w in watches]
    seconds = time.monotonic() - started
    for cmd, proc, text in zip(cmds, procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return seconds, peaks, [round(w.cpu_s, 1) for w in watches]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files_mb(root: Path, pattern: str) -> float:
    return round(sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file()) / 2**20, 2)


def state_disk(state_dir: Path) -> dict[str, float]:
    """The size of a state directory on disk, in MB: as the run left it (`state_mb`: SST files,
    write-ahead logs, manifests), and its SST files once flushed and fully compacted
    (`state_mb_compacted`: the live data, free of when RocksDB last flushed or compacted). The
    compaction rewrites the state: call this once the run is over."""
    before = _files_mb(state_dir, "*")
    for part in process_dirs(state_dir) or [state_dir]:
        store = open_store(part)
        try:
            store.compact()
        finally:
            store.close()
    return {"state_mb": before, "state_mb_compacted": _files_mb(state_dir, "*.sst")}


def history_held(store: Store) -> dict[str, float]:
    """The events a state keeps in its history: how many, and their keys and values in MB
    (uncompressed, as written)."""
    count, size = 0, 0
    for key, value in store.scan(HISTORY_PREFIX):
        count += 1
        size += len(key) + len(value)
    return {"history_events": count, "history_mb": round(size / 2**20, 2)}
