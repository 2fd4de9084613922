"""A local webhook receiver: what the deploy DAG's notifications (triton_rollout.airflow.notify) reach in
`make demo` and the tests, instead of Slack or a chat webhook.

A threaded ``http.server`` on 127.0.0.1 (a free port) that records each POST's path, headers and JSON
body and answers 200 ``ok`` (as Slack's incoming webhooks do). :meth:`Receiver.airflow_env` is the
environment that points the Airflow components at it: the HTTP connection as an ``AIRFLOW_CONN_<ID>``
variable (Airflow reads connections from the environment first) and the models file's notify settings.

    python -m devstack.receiver      # prints each message it receives, until Ctrl-C
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .procs import LOOPBACK

DEFAULT_CONN_ID = "rollout_notify"
DEFAULT_ENDPOINT = "/hooks/rollout"


@dataclass(frozen=True)
class Received:
    """One POST: its path, headers (names lower-cased) and body (parsed JSON; None when it was not JSON)."""

    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


class Receiver:
    """Records POSTs; ``status`` is the code it answers with (set it to 500 to play a broken webhook)."""

    def __init__(self, host: str = LOOPBACK, port: int = 0, *, status: int = 200,
                 on_message: Callable[[Received], None] | None = None) -> None:
        self.status = status
        self.on_message = on_message
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True  # a stuck client never blocks stop()
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                receiver._record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw))
                reply = b"ok" if receiver.status < 400 else b"error"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
                pass  # the messages are the record; no access log on stderr

        return Handler

    def _record(self, message: Received) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()
        if self.on_message is not None:
            self.on_message(message)

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Receiver:
        # A short poll interval: stop() returns within 50 ms instead of the default 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="notify-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived -----------------------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, n: int = 1, *, where: Callable[[Received], bool] | None = None,
                 timeout: float = 30.0) -> list[Received]:
        """The first ``n`` messages (those ``where`` accepts), waiting up to ``timeout`` seconds for them.
        Notifications are sent after the task's state is reported, so they may trail a finished run."""
        deadline = time.monotonic() + timeout

        def matching() -> list[Received]:
            return [m for m in self._messages if where is None or where(m)]

        with self._cond:
            while len(found := matching()) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {n} expected message(s) after {timeout:.0f}s; "
                                       f"received in all: {[m.body for m in self._messages]}")
                self._cond.wait(left)
            return found[:n]

    # -- pointing Airflow at it ---------------------------------------------------------------------------

    def airflow_env(self, conn_id: str = DEFAULT_CONN_ID, endpoint: str = DEFAULT_ENDPOINT) -> dict[str, str]:
        """The Airflow components' environment for notifications to this receiver: the connection (an
        ``AIRFLOW_CONN_<ID>`` URI) and the variables dags/models.yaml reads for ``notify``."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.url, "ROLLOUT_NOTIFY_CONN": conn_id,
                "ROLLOUT_NOTIFY_ENDPOINT": endpoint}


def main() -> None:
    def show(message: Received) -> None:
        shown = json.dumps(message.body, indent=2) if message.body is not None else repr(message.raw)
        print(f"POST {message.path}\n{shown}", flush=True)

    with Receiver(on_message=show) as receiver:
        print(f"receiving on {receiver.url}; point Airflow at it with:", flush=True)
        for key, value in receiver.airflow_env().items():
            print(f"  export {key}={value}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
