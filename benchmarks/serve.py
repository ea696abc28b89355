"""`cdp serve` under load (issue #15): profile lookups and decisions over 100,000 profiles,
the ceiling of the same server, the HTTP collector into a real broker, and freshness.

    python -m benchmarks.serve [--profiles 100000] [--seconds 20]

A warm `cdp serve` (a subprocess: `benchmarks.serve_server`, the CLI's server plus one constant
route) follows a projection file of generated documents (the `profiles` destination's format).
The load generator is wrk 4.1 (`apt-get install wrk`) with `benchmarks/wrk/serve.lua`:
- throughput at a fixed concurrency (1 wrk thread, 16 connections): the constant route
  (`POST /bench/constant`, no key check, the body not read: the ceiling), lookups of random
  known identities, decisions on `home-hero`, and `/v1/collect/web` (one record a request,
  answered after the tansu broker acknowledged it);
- latency at a fixed rate of 1,000 requests/s (each wrk thread on its own send schedule);
- freshness: a live `cdp run` worker writes the projection file the server follows; wrk POSTs
  events at (1,000 - probes) per second while probes, one new ECID each, are POSTed and then
  looked up every 20 ms until found: the time from the POST to the first lookup that finds it.
Starts a local broker unless KAFKA_BOOTSTRAP_SERVERS is set. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.common import ROOT, PeakRss, free_port, machine, run_id
from benchmarks.serve_data import KEY_ENV, write_config, write_profiles
from tests.kafka_broker import broker_from_env, create_topics

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LUA = ROOT / "benchmarks" / "wrk" / "serve.lua"
CONNECTIONS = 16
POLL_S = 0.02


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def wrk(
    url: str,
    mode: str,
    identities: Path,
    seconds: float,
    *,
    rate: int = 0,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """One wrk run; its JSON line (requests, seconds, p50/p90/p99/max ms, errors, late sends)."""
    env = {
        **os.environ,
        "BENCH_MODE": mode,
        "BENCH_KEY": KEY,
        "BENCH_IDENTITIES": str(identities),
        "BENCH_RATE": str(rate),
        "BENCH_THREADS": "1",
    }
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = orjson.loads(line.split(" ", 1)[1])
            result["rps"] = round(result["requests"] / result["seconds"])
            return result
    raise RuntimeError(f"wrk gave no result ({out.returncode}): {out.stdout[-2000:]}{out.stderr}")


def _spawn(args: list[str], folder: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, KEY_ENV: KEY},
        stdout=(folder / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process ended ({proc.returncode})")
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout_s} s")


def _probe_event(ecid: str, n: int) -> dict[str, Any]:
    return {
        "_id": f"probe-{ecid}-{n}",
        "eventType": "web.webpagedetails.pageViews",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identityMap": {"ECID": [{"id": ecid}]},
        "web": {"webPageDetails": {"name": "yoga"}},
    }


def probe(client: httpx.Client, ecid: str, timeout_s: float = 15.0) -> float | None:
    """POST one event of a new identity, then look it up until found: ms from the POST."""
    started = time.monotonic()
    answer = client.post("/v1/collect/web", json=_probe_event(ecid, 0), headers=AUTH)
    if answer.status_code != 202:
        return None
    body = {"identity": f"ECID:{ecid}"}
    while time.monotonic() - started < timeout_s:
        if client.post("/v1/profiles/lookup", json=body, headers=AUTH).status_code == 200:
            return (time.monotonic() - started) * 1000
        time.sleep(POLL_S)
    return None


def freshness(
    url: str, identities: Path, seconds: float, rate: int, probes_per_s: int
) -> dict[str, Any]:
    """Events at `rate`/s (wrk, `rate - probes_per_s`, plus the probes); the probes' times."""
    tag = run_id().rstrip(".")
    results: list[float | None] = []
    background: dict[str, Any] = {}

    # A collect is answered after the broker acknowledged it (tens of ms while the worker and
    # the probes share the cores): 1,000/s needs about a hundred requests in flight.
    def load() -> None:
        background.update(
            wrk(url, "collect", identities, seconds, rate=rate - probes_per_s, connections=128)
        )

    loader = threading.Thread(target=load)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with (
        httpx.Client(base_url=url, timeout=10, limits=limits) as client,
        ThreadPoolExecutor(64) as pool,
    ):
        loader.start()
        started = time.monotonic()
        count = int(seconds * probes_per_s) - probes_per_s  # the last second: wrk is stopping
        futures = []
        for i in range(count):
            wait = started + i / probes_per_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            futures.append(pool.submit(probe, client, f"{tag}-{i}"))
        results = [f.result() for f in futures]
        loader.join()
    found = [r for r in results if r is not None]
    sent = background["requests"] + len(results)
    return {
        "freshness_events_per_s": round(sent / background["seconds"]),
        "freshness_p50_ms": percentile(found, 0.5),
        "freshness_p99_ms": percentile(found, 0.99),
        "freshness_max_ms": percentile(found, 1.0),
        "freshness_probes": len(results),
        "freshness_not_found": len(results) - len(found),
        "freshness_background": background,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=1000, help="requests/s and events/s")
    parser.add_argument("--probes", type=int, default=10, help="freshness probes a second")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks.serve needs wrk: apt-get install -y wrk")
    prefix = run_id()
    out: dict[str, Any] = {"machine": machine(), "profiles": args.profiles}
    with broker_from_env() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        create_topics(bootstrap, [f"{prefix}web", f"{prefix}crm", f"{prefix}dead"])
        config = write_config(folder, prefix, bootstrap)
        known = folder / "identities.txt"
        size = write_profiles(folder / "profiles.jsonl", args.profiles, known, 20_000)
        out["projection_mb"] = round(size / 1e6, 1)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args_ = ["benchmarks.serve_server", "--config", str(config), "--port", str(port)]
        server = _spawn(args_, folder, "serve")
        rss = PeakRss(server.pid)
        worker = None
        try:
            started = time.monotonic()
            with httpx.Client(base_url=url, timeout=10) as client:
                ok = lambda: client.get("/healthz").status_code == 200  # noqa: E731
                _wait(ok, 300, "cdp serve reading the projection", server)
            out["load_s"] = round(time.monotonic() - started, 1)
            wrk(url, "lookup", known, 3)  # warm up
            s = args.seconds
            ceiling = wrk(url, "ceiling", known, s)
            lookup = wrk(url, "lookup", known, s)
            decide = wrk(url, "decide", known, s)
            lookup_at = wrk(url, "lookup", known, s, rate=args.rate, connections=32)
            decide_at = wrk(url, "decide", known, s, rate=args.rate, connections=32)
            out |= {
                "connections": CONNECTIONS,
                "ceiling_rps": ceiling["rps"],
                "lookup_rps": lookup["rps"],
                "decide_rps": decide["rps"],
                "lookup_vs_ceiling": round(lookup["rps"] / ceiling["rps"], 2),
                "rate": args.rate,
                "lookup_p50_ms": lookup_at["p50_ms"],
                "lookup_p99_ms": lookup_at["p99_ms"],
                "decide_p50_ms": decide_at["p50_ms"],
                "decide_p99_ms": decide_at["p99_ms"],
                "runs": {
                    "ceiling": ceiling,
                    "lookup": lookup,
                    "decide": decide,
                    "lookup_at_rate": lookup_at,
                    "decide_at_rate": decide_at,
                },
            }
            worker = _spawn(["flows.cli", "run", "--config", str(config)], folder, "worker")
            with httpx.Client(base_url=url, timeout=10) as client:
                first = run_id().rstrip(".")
                _wait(lambda: probe(client, first, 2.0) is not None, 120, "cdp run", worker)
            out |= freshness(url, known, s, args.rate, args.probes)
            _stop(worker)
            worker = None
            collect = wrk(url, "collect", known, s)
            out |= {"collect_rps": collect["rps"], "collect_p99_ms": collect["p99_ms"]}
            out["runs"]["collect"] = collect
        except Exception:
            for log in sorted(folder.glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
            raise
        finally:
            if worker is not None:
                _stop(worker)
            _stop(server)
            out["serve_peak_rss_mb"] = rss.stop()
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
