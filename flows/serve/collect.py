"""`POST /v1/collect/{source}` and its producer: records go to their source's topic, and a
request is answered only after the broker acknowledged every one of its records (acks=all).

A delivery that fails or is not acknowledged within `serve.delivery_timeout` makes the request
a 503: the client sends it again. A record may then be on the topic twice; the pipeline drops
the second copy of an event by its `_id` (or the id derived from its content), and applying
a profile record twice changes nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from fastapi import Request, Response

from flows import broker
from flows.serve.checks import read_body
from flows.serve.errors import JSON, Refused, problem
from schemas.records import DeadLetter, Origin

if TYPE_CHECKING:
    from flows.serve.services import Services


class Unavailable(RuntimeError):
    """The broker did not take the records (the message says why, without values)."""


class Collector:
    def __init__(self, config: dict[str, str], timeout_ms: int) -> None:
        self.health = broker.health_for(config)
        self.timeout_s = timeout_ms / 1000
        self._producer = Producer(
            {
                **config,
                **broker.client_hooks(config),
                "acks": "all",
                "linger.ms": "1",
                # A failed delivery is answered with a 503 (the client retries), so the
                # producer gives up after the timeout instead of retrying without end.
                "message.timeout.ms": str(timeout_ms),
                # against tansu the idempotent producer waits ~1 s for its id; duplicates from
                # retries are dropped by the pipeline (see the module's docstring)
                "enable.idempotence": "false",
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="cdp-serve-produce", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Produce and wait for the broker's acknowledgement of every record."""
        if not self.health.up:  # known down (a probe confirmed it): answer at once
            raise Unavailable("the Kafka broker is unreachable")
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[KafkaError | None]] = []
        for key, value in records:
            done: asyncio.Future[KafkaError | None] = loop.create_future()

            def on_delivery(
                err: KafkaError | None, _msg: Any, done: asyncio.Future[Any] = done
            ) -> None:
                loop.call_soon_threadsafe(_settle, done, err)

            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            except BufferError as exc:
                raise Unavailable("the producer's queue is full") from exc
            except KafkaException as exc:
                raise Unavailable(f"the producer refused the record: {exc.args[0].name()}") from exc
            waiting.append(done)
        try:
            errors = await asyncio.wait_for(asyncio.gather(*waiting), self.timeout_s + 2)
        except TimeoutError as exc:
            raise Unavailable("the Kafka broker did not acknowledge in time") from exc
        failed = [e for e in errors if e is not None]
        if failed:
            raise Unavailable(
                f"the Kafka broker did not take {len(failed)} record(s): {failed[0].name()}"
            )
        self.health.acknowledged()

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)
        self._producer.flush(self.timeout_s)


def _settle(done: asyncio.Future[Any], err: KafkaError | None) -> None:
    if not done.done():
        done.set_result(err)


# -- the route: POST /v1/collect/{source} ---------------------------------------------------


async def collect(services: Services, source: str, request: Request) -> Response:
    settings = services.settings
    serve = settings.serve
    spec = services.decoder.sources.get(source)
    if spec is None or spec.settings.topic is None:
        raise Refused(404, "no source of this name with a topic")
    topic = spec.settings.topic
    max_request = 1 << 20 if serve is None else serve.max_request_bytes
    max_record = 32 << 10 if serve is None else serve.max_record_bytes
    body = await read_body(request, max_request)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"not JSON: {exc.msg} at byte {exc.pos}") from None
    single = not isinstance(parsed, list)
    raws = [body] if single else [orjson.dumps(item) for item in parsed]
    if not raws:
        raise Refused(400, "an empty array: nothing to collect")
    for i, raw in enumerate(raws):
        if len(raw) > max_record:
            where = "the record" if single else f"record {i}"
            raise Refused(413, f"{where} is {len(raw)} bytes, over the limit of {max_record}")
    now_ms = time.time_ns() // 1_000_000
    good: list[tuple[bytes | None, bytes]] = []
    items: list[dict[str, Any]] = []
    for i, raw in enumerate(raws):
        decoded = services.decoder.decode(Origin(source, 0, 0), raw, written_ms=now_ms)
        if isinstance(decoded, DeadLetter):
            items.append({"index": i, "status": 400, "reason": decoded.reason})
            continue
        namespace, value = decoded.identities[0]
        good.append((f"{namespace}:{value}".encode(), raw))
        items.append({"index": i, "status": 202, "reason": None})
    counted = services.metrics.collected
    refused = len(raws) - len(good)
    if refused:
        counted.labels(source, "refused").inc(refused)
    if not good:
        detail = "no record is valid" if len(raws) > 1 else str(items[0]["reason"])
        return problem(400, detail, items=items)
    try:
        await services.producer().send(topic, good)
    except Unavailable as exc:
        counted.labels(source, "unsent").inc(len(good))
        delay = max(1, round(services.producer().timeout_s))
        answer = problem(503, f"{exc}; send the request again")
        answer.headers["Retry-After"] = str(delay)
        return answer
    counted.labels(source, "accepted").inc(len(good))
    if not refused:
        return Response(orjson.dumps({"accepted": len(good)}), 202, media_type=JSON)
    mixed = {"accepted": len(good), "refused": refused, "items": items}
    return Response(orjson.dumps(mixed), 207, media_type=JSON)
