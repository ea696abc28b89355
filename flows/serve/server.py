"""Starting `cdp serve`: the replica's store, the projection follower, the keys from the
environment, the offers compiled, and uvicorn on a socket bound here (so the port is known
before the first request, and a test can ask for port 0)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn

from config.settings import ConfigError, ServeSettings, Settings, api_keys
from flows import logs
from flows.serve.app import create_app
from flows.serve.follow import FileFollower, Follower, KafkaFollower
from flows.serve.metrics import ServeMetrics
from flows.serve.services import Services
from operators import replica
from operators.offers import compile_offers
from operators.store import open_store

LOG = logging.getLogger("cdp.serve")


def projection_of(settings: Settings) -> tuple[str | None, Path | None]:
    """`(topic, path)` of the projection: `serve.profiles`, else the `profiles` destination."""
    serve = settings.serve or ServeSettings()
    if serve.profiles is not None:
        path = serve.profiles.path
        return serve.profiles.topic, None if path is None else settings.resolve(path)
    for dest in settings.destinations:
        if str(dest.kind) == "profiles":
            return dest.topic, None if dest.path is None else settings.resolve(dest.path)
    raise ConfigError(
        "serve.profiles: say where the profile projection is ({topic: …} or {path: …}), "
        "or add a destination of kind profiles"
    )


class _Server(uvicorn.Server):
    """uvicorn's server, stopping gracefully on SIGINT/SIGTERM and then returning (uvicorn
    raises the signal again once stopped, which would end the process before the store and
    the producer are closed)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in wanted}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Running:
    """A server: the follower started, uvicorn serving on its own thread or the caller's."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        host: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        serve = settings.serve or ServeSettings()
        keys = api_keys(serve, env)
        offers = compile_offers(settings, config_path)
        topic, path = projection_of(settings)
        self._temp: str | None = None
        if serve.state_dir is None:
            self._temp = tempfile.mkdtemp(prefix="cdp-serve-")
            state = Path(self._temp)
        else:
            state = settings.resolve(serve.state_dir)
        self.store = open_store(state)
        source = f"topic {topic}" if topic is not None else f"file {path}"
        # A kept store resumes where it was read to; a temporary one starts from the beginning.
        position = replica.resume(self.store, source, keep=self._temp is None)
        metrics = ServeMetrics()
        follower: Follower
        if topic is not None:
            config = settings.kafka.client_config()
            follower = KafkaFollower(config, topic, self.store, metrics, position)
        else:
            assert path is not None
            follower = FileFollower(path, self.store, metrics, position)
        self.services = Services(
            settings, self.store, follower, offers, keys, metrics, serve.access_log
        )
        self.app = create_app(self.services)
        self.socket = socket.create_server(
            (host or serve.host, serve.port if port is None else port), reuse_port=False
        )
        self.host, self.port = self.socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._server = _Server(
            uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,  # uvicorn's would print paths; ours names route templates
                loop="uvloop",
                http="httptools",
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
        )
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """On the caller's thread (the CLI): uvicorn handles SIGINT and SIGTERM."""
        logs.ensure_handler()
        self.services.follower.start()
        LOG.info("serving on %s (projection: %s)", self.url, self.services.follower.source)
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self) -> Running:
        """On a thread of its own (tests, benchmarks); returns once it accepts requests."""
        self.services.follower.start()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self._thread.start()
        started = threading.Event()
        for _ in range(500):
            if self._server.started:
                started.set()
                break
            threading.Event().wait(0.01)
        if not started.is_set():
            self.close()
            raise RuntimeError("cdp serve did not start within 5 s")
        return self

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.services.follower.close()
        if self.services.collector is not None:
            self.services.collector.close()
        with contextlib.suppress(OSError):
            self.socket.close()
        self.store.close()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
