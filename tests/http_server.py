"""A real HTTP server on loopback for the webhook tests: scripted statuses, the bodies, headers
and connections they came on, the most requests in flight at once."""

from __future__ import annotations

import http.server
import threading
import time


class Server:
    """Answers each POST with the next status of a script (then 200), recording bodies, their
    headers (`headers[i]` those of `bodies[i]`), the connections they came on and the most requests in flight at once. `keep_alive`: HTTP/1.1
    connections stay open; `drop_idle`: the server closes each connection after answering
    without saying so (as a server timing out an idle connection does); `delay_s`: each
    answer waits."""

    def __init__(
        self,
        script: list[int],
        *,
        keep_alive: bool = False,
        drop_idle: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.connections: list[tuple[str, int]] = []
        self.in_flight = self.peak = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive or drop_idle else "HTTP/1.0"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers.items()))
                    outer.connections.append(self.client_address)
                    status = outer.script.pop(0) if outer.script else 200
                time.sleep(delay_s)
                with lock:
                    outer.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if drop_idle:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
