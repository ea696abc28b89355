"""The abandoned-cart journey end to end on a live worker (issue #16): `cdp run` over a real
broker, a webhook on loopback, events stamped with the wall clock.

The journey: a cart add starts it, a purchase ends it (`exit_when`), a wait of a few seconds,
then the reminder to the webhook (with the person's first name and the cart's items) and to a
Kafka topic. A person who buys during the wait gets nothing; one who does not gets one
reminder, exactly once at the endpoint, through a SIGKILL during the wait and one right after
the first POSTs (the outbox emits the delivered reminders again; the ledger of delivered sends
keeps them from the endpoint), and through a broker outage during the wait (the webhook
reminders go out during it, the Kafka ones once after it), with junk input dead-lettered and an
add delivered twice applied once.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.delivered import Ledger
from schemas.records import iso_ms
from tests.flow.test_journeys_flow import journey_totals
from tests.http_server import Server
from tests.journey_data import ADD, BUY, NAMES, crm_record, email
from tests.kafka.outage import Worker, during, wait_until
from tests.kafka_broker import consume_all, create_topics, produce, proxied_broker

pytestmark = pytest.mark.kafka

JOURNEY = "cart-reminder"
CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
sources:
  - {{name: crm, kind: profile, topic: {p}crm, identities: {{email: Email}}}}
  - {{name: web, kind: event, topic: {p}web}}
segments:
  - {{id: known, rule: 'profile.tier in ["vip", "basic"]'}}
destinations:
  - {{name: changes, kind: file, path: changes.jsonl}}
  - name: email
    kind: webhook
    url: "{url}"
    segments: []
    attributes: [person.name.firstName]
    event: true
    backoff_ms: 50
  - {{name: sends, kind: kafka, topic: {p}sends, segments: []}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: {epoch}}}
state: {{dir: state}}
journeys:
  - id: {journey}
    trigger: {{event: 'event.eventType == "{add}"'}}
    exit_when: 'exists(event.eventType == "{buy}", within="2d")'
    steps:
      - wait: {wait}
      - send: {{destination: email, message: cart-1}}
      - send: {{destination: sends, message: cart-1}}
"""


@pytest.fixture
def hook() -> Iterator[Server]:
    server = Server([], keep_alive=True)
    yield server
    server.close()


def start(tmp: Path, prefix: str, bootstrap: str, url: str, wait: str, epoch: int) -> Worker:
    worker = Worker(tmp, prefix, bootstrap)
    names = ("crm", "web", "sends", "dead", "changes")
    create_topics(bootstrap, [prefix + n for n in names])
    fields = {"journey": JOURNEY, "add": ADD, "buy": BUY, "wait": wait, "epoch": epoch}
    worker.config.write_text(CONFIG.format(p=prefix, bootstrap=bootstrap, url=url, **fields))
    worker.start("run")
    return worker


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def items(i: int) -> list[dict[str, Any]]:
    return [{"SKU": f"LLMH{i:02d}", "quantity": 1 + i % 3}, {"SKU": "MJ09", "quantity": 1}]


def web_event(eid: str, kind: str, i: int, ts: int) -> bytes:
    body: dict[str, Any] = {
        "_id": eid,
        "eventType": kind,
        "timestamp": ts,
        "identityMap": {"ECID": [{"id": f"d{i}"}], "Email": [{"id": email(i)}]},
    }
    if kind == ADD:
        body["productListItems"] = items(i)
    return orjson.dumps(body)


def known(worker: Worker, people: range) -> None:
    """The CRM records in and applied (each person entered `known`) before the carts."""
    produce(worker.bootstrap, worker.prefix + "crm", [orjson.dumps(crm_record(i)) for i in people])
    wait_until(
        "the CRM records applied",
        lambda: sum(r["segment_id"] == "known" for r in worker.file_rows()) >= len(people),
        90,
        worker,
    )


def carts(keepers: range, buyers: range, at: int) -> list[bytes]:
    """An add each; the buyers buy a second later, well within the wait."""
    adds = [web_event(f"add-{i}", ADD, i, at) for i in (*keepers, *buyers)]
    return adds + [web_event(f"buy-{i}", BUY, i, at + 1000) for i in buyers]


def steps_metric(worker: Worker, outcome: str) -> float:
    """cdp_journey_steps_total of the journey for one outcome, summed over steps."""
    try:
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    want = (f'journey="{JOURNEY}"', f'outcome="{outcome}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cdp_journey_steps_total{") and all(w in line for w in want)
    )


def received(hook: Server) -> list[dict[str, Any]]:
    return [orjson.loads(b) for b in hook.bodies]


def person_of(send: dict[str, Any]) -> int:
    return int(send["identities"]["ECID"][0].removeprefix("d"))


def check_reminders(
    hook: Server, keepers: range, in_flight: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """One reminder per keeper at the endpoint, each with its person's first name and cart,
    and its id as the Idempotency-Key of every POST of it; none for anyone else. Posted twice
    only if it was in `in_flight` (at the endpoint when the worker was killed, its answer
    perhaps not yet taken: an endpoint dedupes those by the key). Returns each once."""
    posts = received(hook)
    ids = [s["id"] for s in posts]
    assert [h.get("Idempotency-Key") for h in hook.headers] == ids
    twice = {i for i, n in Counter(ids).items() if n > 1}
    assert twice <= in_flight and max(Counter(ids).values()) <= 2, Counter(ids)
    sends = list({s["id"]: s for s in posts}.values())
    assert sorted(map(person_of, sends)) == list(keepers), [person_of(s) for s in sends]
    for send in sends:
        i = person_of(send)
        assert send["journey_id"] == JOURNEY and send["message"] == "cart-1", send
        assert send["attributes"] == {"person.name.firstName": NAMES[i % len(NAMES)]}
        assert send["event"]["_id"] == f"add-{i}" and send["event"]["productListItems"] == items(i)
        assert send["identities"]["Email"] == [email(i)]
    return sends


def settle(hook: Server, worker: Worker, expected: int, seconds: float) -> float:
    """The reminders all in, then a few seconds more for any duplicate to show up. Returns
    how long the reminders took."""
    took = wait_until("the reminders", lambda: len(hook.bodies) >= expected, 90, worker)
    time.sleep(seconds)
    return took


def kafka_sends(worker: Worker, expected: int) -> list[dict[str, Any]]:
    values = consume_all(worker.bootstrap, worker.prefix + "sends", expected=expected)
    return [orjson.loads(v) for v in values]


def test_a_buyer_during_the_wait_gets_no_reminder_a_keeper_gets_one(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, hook: Server
) -> None:
    keepers, buyers = range(3), range(3, 6)
    worker = start(tmp_path, topic_prefix, kafka_bootstrap, hook.url, "4s", 500)
    try:
        known(worker, range(6))
        added = now_ms()
        worker.produce(carts(keepers, buyers, added))
        took = settle(hook, worker, len(keepers), 1.0)
        # A keeper's add again (a producer's retry, after the journey ended): applied once,
        # so no second instance and no second reminder once its wait would have ended.
        worker.produce([web_event("add-0", ADD, 0, added)])
        wait_until("the duplicate", lambda: worker.metric("cdp_duplicate_events_total"), 30, worker)
        time.sleep(6.0)
        sends = check_reminders(hook, keepers)
        # Each wait ended exactly 4 seconds of event time after its add.
        assert {s["event_time"] for s in sends} == {iso_ms(added + 4000)}
        assert steps_metric(worker, "exited_exit_when") == len(buyers)
        assert steps_metric(worker, "entered") == len(keepers) + len(buyers)
        # Live, a send leaves moments after its step is due (a keeper's reminder goes to the
        # webhook and to Kafka: two sends each).
        delays = worker.metric("cdp_journey_send_delay_seconds_count")
        assert delays == 2 * len(keepers)
        mean = (worker.metric("cdp_journey_send_delay_seconds_sum") or 0) / delays
        assert mean < 5.0, mean
        on_kafka = kafka_sends(worker, len(keepers))
        assert worker.stop() == 0, worker.tail()
    finally:
        if worker.alive():
            worker.stop()
    print(f"reminders at the endpoint {took:.1f}s after the adds (wait 4s)")
    totals = journey_totals(tmp_path / "state")[JOURNEY]
    assert totals["entered"] == 6 and totals["exited_exit_when"] == 3, totals
    assert totals["sent"] == 6 and totals["completed"] == 3, totals  # two sends each
    assert sorted(map(person_of, on_kafka)) == list(keepers)
    # The same instances, their next step (a send's id is per step).
    assert {s["instance_id"] for s in on_kafka} == {s["instance_id"] for s in sends}
    assert {s["step"] for s in on_kafka} == {"3"} and {s["step"] for s in sends} == {"2"}
    assert all("attributes" not in s for s in on_kafka)  # that destination asked for nothing


def test_sigkill_during_the_wait_and_after_the_posts_sends_each_once(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, hook: Server
) -> None:
    """Three SIGKILLs: during the wait; right after the first POSTs (those at the endpoint
    whose answer the worker had not taken may come again, with the same Idempotency-Key);
    after every reminder was delivered (the next run emits them all again from the outbox:
    the ledger posts none of them)."""
    keepers, buyers = range(12), range(12, 14)
    people = range(14)
    # No snapshot within the test: every run after a kill finds the sends in the outbox and
    # emits them again (the records applied are skipped by their offsets, kept in the state).
    worker = start(tmp_path, topic_prefix, kafka_bootstrap, hook.url, "6s", 120_000)
    try:
        known(worker, people)
        worker.produce(carts(keepers, buyers, now_ms()))
        wait_until("the entries", lambda: steps_metric(worker, "entered") >= 14, 30, worker)
        kill(worker)
        assert hook.bodies == [], "the kill landed after the wait had ended"
        worker.start("run")
        first = poll(lambda: len(hook.bodies) >= 1, 60, worker)
        kill(worker)  # while the first reminders are going out
        in_flight = frozenset(s["id"] for s in received(hook))
        worker.start("run")
        wait_until(
            "every reminder",
            lambda: len({s["id"] for s in received(hook)}) >= len(keepers),
            60,
            worker,
        )
        time.sleep(1.0)  # every answer taken, every id in the ledger
        posted = len(hook.bodies)
        kill(worker)
        worker.start("run")
        wait_until(
            "the reminders emitted again",
            lambda: (worker.metric("cdp_destination_sends_skipped_total") or 0) >= len(keepers),
            60,
            worker,
        )
        time.sleep(2.0)
        assert len(hook.bodies) == posted, "a delivered reminder was posted again"
        assert worker.stop() == 0, worker.tail()
    finally:
        if worker.alive():
            worker.stop()
    again = posted - len(keepers)
    print(
        f"first POST {first:.1f}s after the restart; {len(in_flight)} at the endpoint at the "
        f"second kill, {again} of them posted again; none after the third"
    )
    sends = check_reminders(hook, keepers, in_flight)
    ledger = Ledger(tmp_path / "state" / "delivered" / "email", 7 * 86_400_000)
    try:
        assert all(ledger.has(s["id"]) for s in sends)
    finally:
        ledger.close()


def kill(worker: Worker) -> None:
    assert worker.proc is not None and worker.alive(), worker.tail()
    worker.proc.kill()
    worker.proc.wait()


def poll(check: Any, seconds: float, worker: Worker) -> float:
    """As `wait_until`, every 20 ms (a kill must land right after something happens)."""
    started = time.monotonic()
    while not check():
        assert worker.alive(), worker.tail()
        assert time.monotonic() - started < seconds, f"nothing within {seconds:.0f} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_broker_outage_during_the_wait_and_junk_lose_nothing(
    tmp_path: Path, hook: Server
) -> None:
    keepers, buyers = range(5), range(5, 7)
    with proxied_broker() as (_broker, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        p = "jout."
        worker = start(tmp_path, p, bootstrap, hook.url, "5s", 500)
        try:
            known(worker, range(7))
            junk = [b"not json", b'{"eventType": "x"}', b"[]"]
            values = carts(keepers, buyers, now_ms())
            # An add sent twice (a producer's retry): applied once, one reminder.
            worker.produce(values[:3] + junk + values[:1] + values[3:])
            wait_until("the entries", lambda: steps_metric(worker, "entered") >= 7, 30, worker)
            cut_posts = len(hook.bodies)
            for _ in during(proxy, 12.0, worker):
                pass  # the waits end during the outage
            during_posts = len(hook.bodies)
            settle(hook, worker, len(keepers), 3.0)
            on_kafka = kafka_sends(worker, len(keepers))
            dead = [orjson.loads(v) for v in consume_all(bootstrap, f"{p}dead", expected=3)]
            assert worker.stop() == 0, worker.tail()
            logged = "\n".join(worker.log_lines())
        finally:
            if worker.alive():
                worker.stop()
    print(f"{during_posts - cut_posts} reminders posted during the outage")
    assert cut_posts == 0, "the waits ended before the outage"
    sends = check_reminders(hook, keepers)
    assert len(on_kafka) == len(keepers), Counter(s["id"] for s in on_kafka)
    assert {s["instance_id"] for s in on_kafka} == {s["instance_id"] for s in sends}
    assert len(dead) == 3 and dead[0]["reason"].startswith("not JSON"), dead
    # The outage and the junk were logged, and nothing of a person: no email, no device id,
    # no name, no cart, no message body.
    assert "broker" in logged
    secrets = [email(i) for i in range(7)] + [f"d{i}" for i in range(7)] + ["LLMH0", "not json"]
    secrets += [crm_record(i)["person"]["name"]["firstName"] for i in range(7)]
    leaked = [s for s in secrets if re.search(rf"\b{re.escape(s)}\b", logged)]
    assert leaked == [], leaked
