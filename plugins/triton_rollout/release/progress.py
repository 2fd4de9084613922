"""Progress lines for long transfers: bytes done / total, rate, ETA, at a fixed interval.

Written to the log (stderr), which is what Airflow and ``kubectl logs`` show for a pod.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("triton_rollout.release.progress")


@dataclass(kw_only=True)
class TransferCounters:
    """What a transfer moved and what it could skip: kept by the downloader, reported by the sync."""

    files_transferred: int = 0
    bytes_transferred: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    parts_reused: int = 0
    retries: int = 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Thread-safe byte counter with a reporter thread; ``add`` is cheap enough to call per read."""

    def __init__(self, label: str, total_bytes: int, total_files: int, interval: float = 5.0) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.interval = interval
        self.bytes_done = 0
        self.files_done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._last = (self._started, 0)

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_done += nbytes

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def line(self) -> str:
        now = time.monotonic()
        with self._lock:
            done, files = self.bytes_done, self.files_done
        elapsed = max(now - self._started, 1e-6)
        last_t, last_b = self._last
        self._last = (now, done)
        recent = (done - last_b) / max(now - last_t, 1e-6)
        rate = recent if recent > 0 else done / elapsed
        left = max(self.total_bytes - done, 0)
        eta = human_seconds(left / rate) if rate > 0 and left else ("0s" if not left else "?")
        pct = 100.0 * done / self.total_bytes if self.total_bytes else 100.0
        return (
            f"{self.label}: {human_bytes(done)} / {human_bytes(self.total_bytes)} ({pct:.0f}%), "
            f"files {files}/{self.total_files}, {human_bytes(rate)}/s, ETA {eta}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info(self.line())

    def start(self) -> Progress:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
