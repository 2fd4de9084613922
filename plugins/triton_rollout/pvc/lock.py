"""A per-model lock on the PVC that works across pods and nodes (ReadWriteMany volumes).

flock() does not reach across NFS clients reliably, so the lock is a file created with O_EXCL that
holds its owner (host, pid, process start time, token) and is kept fresh by a heartbeat (its mtime).
It is stale when its owner is on this host and gone (pid dead or reused), or when the heartbeat is
older than ``stale_after`` (an owner on another node that died). A stale lock is taken over by
renaming it aside and checking that what was moved is exactly what was judged stale; the owner
re-checks its token before it publishes, so a wrongly taken lock fails closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from triton_rollout.errors import LockHeld

log = logging.getLogger(__name__)


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Field 22 (starttime); the command name in field 2 may contain spaces, so split after ')'.
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class PvcLock:
    def __init__(
        self,
        path: Path,
        *,
        purpose: str = "",
        timeout: float = 600.0,
        stale_after: float = 60.0,
        heartbeat: float = 10.0,
    ) -> None:
        self.path = path
        self.purpose = purpose
        self.timeout = timeout
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, object] | None = None

    def _content(self) -> bytes:
        pid = os.getpid()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": pid,
                "start": _proc_start_time(pid),
                "token": self.token,
                "purpose": self.purpose,
                "acquired_at": time.time(),
            }
        ).encode()

    def _read(self) -> tuple[bytes, dict[str, object]] | None:
        try:
            raw = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}  # torn write by a killed owner: judged by age alone
        info["_mtime"] = mtime
        return raw, info

    def _is_stale(self, info: dict[str, object]) -> bool:
        age = time.time() - float(info.get("_mtime", 0))  # type: ignore[arg-type]
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            pid = int(info["pid"])  # type: ignore[arg-type]
            alive = _proc_start_time(pid)
            return alive is None or (info.get("start") is not None and alive != info.get("start"))
        return age > self.stale_after

    def _try_take_over(self, raw: bytes, info: dict[str, object]) -> bool:
        aside = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = aside.read_bytes()
        if moved != raw:
            # Someone took over first and we moved their fresh lock: put it back (fails if a third
            # process already created one, in which case that owner's token check protects them).
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self.took_over = {k: v for k, v in info.items() if not k.startswith("_")}
        log.warning("took over stale lock %s from %s", self.path, self.took_over)
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                current = self._read()
                if current is not None and self._is_stale(current[1]):
                    self._try_take_over(*current)
                    continue
                if time.monotonic() >= deadline:
                    holder = current[1] if current else {}
                    raise LockHeld(
                        f"lock {self.path} is held by host={holder.get('host')} pid={holder.get('pid')} "
                        f"({holder.get('purpose') or 'unknown purpose'}); waited {self.timeout:.0f}s"
                    ) from None
                if not announced:
                    holder = current[1] if current else {}
                    log.info("waiting for lock %s held by %s pid %s", self.path, holder.get("host"), holder.get("pid"))
                    announced = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                os.write(fd, self._content())
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="pvc-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def still_held(self) -> bool:
        """True when the lock file on disk is still ours (checked before irreversible steps)."""
        current = self._read()
        if current is None:
            return False
        return current[1].get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.still_held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> PvcLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
