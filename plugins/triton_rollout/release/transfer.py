"""The download engine: parallel ranged GETs across and within files, verified as the bytes arrive.

Why not boto3's download_file: it verifies nothing, buffers through several copies, and cannot resume
at part granularity. Here each worker thread keeps its own keep-alive HTTP connection, GETs a
presigned URL (so credentials, session tokens and IRSA refresh stay botocore's job). Parts of large
files arrive over plain HTTP by splice(2), socket to page cache inside the kernel, and are hashed from
the page cache; over HTTPS they are read with ``readinto`` into a shared mapping of the part, hashed as
they arrive. Small files go through one reused buffer, hashed and ``pwrite``-n. hashlib, socket reads,
splice and pwrite release the GIL, so hashing overlaps the network on all cores.

Every byte is covered by a manifest hash: small files by their sha256, large files by the sha256 of
each part. A verified part is appended to a ``.parts`` journal beside the ``.partial`` file so a killed
sync resumes without re-downloading it (the part is re-hashed from disk first: trust, but verify).
A file is renamed to its final staging name only when all its parts verified. A multi-part file is
fsynced before that rename, so a resume trusts it by its size. Single-part (small) files are not: an
fsync each cost ~15% of a 3,000-file sync here (0.6-1.1 s), so they are made durable together by one
syncfs(2) of the PVC's filesystem before ``run`` returns (before anything is published), and a resume
re-hashes each one it finds (after a node crash, a renamed but unsynced file can have its size and not its bytes).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import http.client
import logging
import mmap
import os
import queue
import select
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_rollout.errors import DiskFull, IntegrityError, RolloutError, TransferError
from triton_rollout.release.manifest import FileEntry, hash_file
from triton_rollout.release.progress import Progress, TransferCounters, human_bytes
from triton_rollout.release.s3 import ObjectReader, RetryableError, backoff_delay

log = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024
SPLICE_PIPE = 1024 * 1024  # the default /proc/sys/fs/pipe-max-size
PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".parts"


class _PartMismatch(Exception):
    def __init__(self, index: int, got: str) -> None:
        super().__init__(index, got)
        self.index = index
        self.got = got


@dataclass
class FileTask:
    entry: FileEntry
    key: str
    dest: Path


@dataclass(kw_only=True)
class TransferStats(TransferCounters):
    """The counters, updated from every worker thread."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)


class _Window:
    """A writable shared mapping of one byte range of a file."""

    def __init__(self, fd: int, off: int, length: int) -> None:
        base = off - off % mmap.ALLOCATIONGRANULARITY
        self.delta = off - base
        self.map = mmap.mmap(fd, length + self.delta, offset=base)
        self.view = memoryview(self.map)

    @classmethod
    def open(cls, fd: int, off: int, length: int) -> _Window | None:
        try:
            return cls(fd, off, length)
        except (OSError, ValueError):
            return None  # a filesystem without shared mappings: fall back to pwrite

    def slice(self, start: int, length: int) -> memoryview:
        return self.view[self.delta + start : self.delta + start + length]

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # an export still alive after an error: the GC closes it
            self.view.release()
            self.map.close()


class _FileState:
    """A file being downloaded in parts by several workers."""

    def __init__(self, task: FileTask, fd: int, missing: list[int], partial: Path, journal: Path | None, *,
                 use_mmap: bool = False) -> None:
        self.task = task
        self.fd = fd
        self.use_mmap = use_mmap and journal is not None
        self.remaining = len(missing)
        self.lock = threading.Lock()
        self.partial = partial
        # Only multi-part files keep a journal: a single-part file is verified and finished in one go.
        self.journal_path = journal
        self.journal = open(journal, "a") if journal is not None else None  # noqa: SIM115

    def part_verified(self, index: int) -> bool:
        """Record a verified part; True when it was the file's last one."""
        with self.lock:
            if self.journal is not None:
                try:
                    self.journal.write(f"{index}\n")
                    self.journal.flush()
                except OSError as exc:  # the journal's first page can be the write that finds the disk full
                    raise _disk_error(exc, self.partial, self.task.entry.size) from exc
            self.remaining -= 1
            return self.remaining == 0

    def close(self) -> None:
        if self.journal is not None:
            # A line that never reached the disk only costs its part a download: resumes re-hash every part.
            with contextlib.suppress(OSError):
                self.journal.close()
            self.journal = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Downloader:
    def __init__(
        self,
        bucket: str,
        *,
        concurrency: int = 8,
        large_streams: int = 4,
        request_size: int = 64 * 1024 * 1024,
        max_attempts: int = 6,
        progress: Progress | None = None,
        timeout: float = 60.0,
        write_mode: str = "mmap",
    ) -> None:
        self.write_mode = write_mode
        self.getter = ObjectReader(bucket, timeout=timeout)
        self.bucket = bucket
        self.concurrency = max(1, concurrency)
        self.large_streams = max(1, large_streams)
        self.request_size = request_size
        self.max_attempts = max_attempts
        self.progress = progress
        self.stats = TransferStats()
        # Two pools: file set-up and small files on one, ranged parts of large files on the other.
        # Few part streams go further than many: on 2 cores, 8 concurrent streams into one file cost
        # ~1.8x the CPU of 4 (context switches, TLB shootdowns from mapping churn) for the same bytes.
        self._files: queue.Queue[Any] = queue.Queue()
        self._parts: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._open: set[_FileState] = set()
        self._open_lock = threading.Lock()
        self._made_dirs: set[Path] = set()  # staging folders this run created: one mkdir each, not one per file
        self._unsynced: list[Path] = []  # small files renamed in before their bytes are durable (flush_small)
        self._unsynced_lock = threading.Lock()
        # splice(2) moves a plain-HTTP body from the socket to the file inside the kernel (Linux only).
        self._splice = write_mode == "mmap" and hasattr(os, "splice")
        self._pipes = threading.local()

    # -- scheduling ---------------------------------------------------------------------------------
    def run(self, tasks: list[FileTask]) -> TransferStats:
        # Largest first, so the long pole's parts start streaming at once.
        for task in sorted(tasks, key=lambda t: -t.entry.size):
            self._files.put(("file", task))
        pools = [(self._files, self.concurrency, "dl"), (self._parts, self.large_streams, "part")]
        workers = [
            threading.Thread(target=self._worker, args=(q,), name=f"{name}-{i}", daemon=True)
            for q, n, name in pools
            for i in range(n)
        ]
        for w in workers:
            w.start()
        self._files.join()  # every part is queued by the time its file's set-up is done
        self._parts.join()
        for q, n, _ in pools:
            for _ in range(n):
                q.put(None)
        for w in workers:
            w.join()
        with self._open_lock:
            for st in list(self._open):
                st.close()
        if self._error is None:
            try:
                self._flush_small()
            except OSError as exc:
                self._error = exc
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # delayed allocation fails at writeback
                    self._error = DiskFull(f"the PVC ran out of space writing back {len(self._unsynced)} small "
                                           f"files: {_free_text(self._unsynced[0])} free")
        if self._error is not None:
            raise self._error
        return self.stats

    def _flush_small(self) -> None:
        """Make the small files renamed in without their own fsync durable, all at once."""
        if not self._unsynced:
            return
        if not _syncfs(self._unsynced[0]):  # no syncfs(2) here: one fsync per file, as before
            for path in self._unsynced:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._unsynced.clear()

    def _worker(self, work: queue.Queue[Any]) -> None:
        buf = bytearray(READ_BLOCK)
        try:
            while True:
                item = work.get()
                try:
                    if item is None:
                        return
                    if self._abort.is_set():
                        continue
                    if item[0] == "file":
                        self._start_file(item[1], buf)
                    else:
                        self._fetch_parts(item[1], item[2], buf)
                except BaseException as exc:
                    if self._error is None:
                        self._error = exc
                    self._abort.set()
                finally:
                    work.task_done()
        finally:
            self.getter.drop()
            self._drop_pipe()

    # -- per file -----------------------------------------------------------------------------------
    def _start_file(self, task: FileTask, buf: bytearray) -> None:
        entry = task.entry
        dest = task.dest
        try:
            done = os.stat(dest).st_size == entry.size
        except FileNotFoundError:
            done = False
        if done and not entry.part_sha256:
            # Renamed in verified, but maybe not yet durable when an earlier run died (see _flush_small):
            # a node crash can leave its size without its bytes. Small, so re-hashed rather than trusted.
            done = self._small_file_intact(dest, entry)
        if done:
            # Only a verified file is renamed to its final staging name (a multi-part one fsynced first).
            self.stats.bump(files_skipped=1, bytes_skipped=entry.size)
            self._progress(entry.size, file_done=True)
            return
        if dest.parent not in self._made_dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(dest.parent)
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        journal = dest.with_name(dest.name + JOURNAL_SUFFIX) if entry.part_sha256 else None
        parts = entry.parts
        reusable = (self._reusable_parts(entry, partial, journal, buf)
                    if journal is not None and partial.exists() else set())
        if journal is not None and not reusable:
            journal.unlink(missing_ok=True)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | (0 if reusable else os.O_TRUNC), 0o644)
        try:
            if reusable:
                if os.fstat(fd).st_size > entry.size:
                    os.ftruncate(fd, entry.size)
            elif journal is not None:
                # Fail on a full disk now, not 90% in. A single-part file is one write: its ENOSPC comes as
                # soon, and skipping the call saves a syscall per file where there are tens of thousands.
                os.posix_fallocate(fd, 0, entry.size)
        except OSError as exc:
            os.close(fd)
            raise _disk_error(exc, partial, entry.size) from exc
        if reusable and journal is not None:
            # Rewrite the journal with only the parts that re-verified.
            journal.write_text("".join(f"{i}\n" for i in sorted(reusable)))
            reused_bytes = sum(parts[i][1] for i in reusable)
            self.stats.bump(parts_reused=len(reusable), bytes_skipped=reused_bytes)
            self._progress(reused_bytes)
        missing = [i for i in range(len(parts)) if i not in reusable]
        state = _FileState(task, fd, missing, partial, journal, use_mmap=self.write_mode == "mmap")
        with self._open_lock:
            self._open.add(state)
        if not missing:
            self._finish(state)
            return
        if len(missing) == 1 and not entry.part_sha256:
            self._fetch_parts(state, missing, buf)  # small file: no scheduling round trip
            return
        for group in self._groups(entry, missing):
            self._parts.put(("parts", state, group))

    def _small_file_intact(self, dest: Path, entry: FileEntry) -> bool:
        if hash_file(dest, entry.size, max(entry.size, 1))[0] == entry.sha256:
            with self._unsynced_lock:  # its bytes may still be only in the page cache of a killed run
                self._unsynced.append(dest)
            return True
        log.warning("%s: staged by an earlier run but its content does not match the manifest (a crash before "
                    "it was synced?): downloading it again", entry.path)
        dest.unlink()
        return False

    def _groups(self, entry: FileEntry, missing: list[int]) -> list[list[int]]:
        """Contiguous runs of missing parts, cut to about request_size bytes per GET."""
        per_request = max(1, self.request_size // (entry.part_size or entry.size or 1))
        groups: list[list[int]] = []
        for i in missing:
            if groups and groups[-1][-1] == i - 1 and len(groups[-1]) < per_request:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _reusable_parts(self, entry: FileEntry, partial: Path, journal: Path, buf: bytearray) -> set[int]:
        if not entry.part_sha256 or not journal.exists():
            return set()
        try:
            listed = {int(line) for line in journal.read_text().split() if line.isdigit()}
        except OSError:
            return set()
        parts = entry.parts
        good = set()
        view = memoryview(buf)
        with open(partial, "rb", buffering=0) as fh:
            for i in sorted(i for i in listed if i < len(parts)):
                off, length, digest = parts[i]
                fh.seek(off)
                h = hashlib.sha256()
                left = length
                while left:
                    n = fh.readinto(view[: min(len(buf), left)])
                    if not n:
                        break
                    h.update(view[:n])
                    left -= n
                if not left and h.hexdigest() == digest:
                    good.add(i)
        if good:
            log.info("resuming %s: %d of %d parts already verified on disk", entry.path, len(good), len(parts))
        return good

    def _fetch_parts(self, state: _FileState, indexes: list[int], buf: bytearray) -> None:
        entry = state.task.entry
        parts = entry.parts
        pending = list(indexes)
        attempt = 0
        mismatches: dict[int, int] = {}
        view = memoryview(buf)
        while pending:
            if self._abort.is_set():
                return
            start = parts[pending[0]][0]
            last = parts[pending[-1]]
            end = last[0] + last[1]
            try:
                resp = self.getter.open_range(state.task.key, start, end, entry.size)
                try:
                    while pending:
                        idx = pending[0]
                        off, length, digest = parts[idx]
                        # Only a Content-Length body is bytes as sent: a chunked one carries framing.
                        plain = self._splice and state.use_mmap and resp.length is not None and not resp.chunked
                        sock = self.getter.plain_socket() if plain else None
                        if sock is not None:
                            got = self._splice_part(resp, sock, state, off, length, view)
                        else:
                            got = self._read_part(resp, state, off, length, view)
                        if got != digest:
                            raise _PartMismatch(idx, got)
                        pending.pop(0)
                        attempt = 0  # only failures in a row count: a long file under sparse faults still finishes
                        self.stats.bump(bytes_transferred=length)
                        if state.part_verified(idx):
                            self._finish(state)
                finally:
                    resp.close()
            except _PartMismatch as exc:
                mismatches[exc.index] = mismatches.get(exc.index, 0) + 1
                self.getter.drop()
                if mismatches[exc.index] >= 2:  # once may be the wire; twice is the object
                    off, length, digest = parts[exc.index]
                    where = f" part {exc.index} (bytes {off}-{off + length - 1})" if entry.part_sha256 else ""
                    raise IntegrityError(
                        f"checksum mismatch in {entry.path}{where}: expected sha256 {digest}, got {exc.got} "
                        f"(s3://{self.bucket}/{state.task.key}); nothing was published"
                    ) from None
                self.stats.bump(retries=1)
            except RetryableError as exc:
                self.getter.drop()
                attempt += 1
                self.stats.bump(retries=1)
                if attempt >= self.max_attempts:
                    raise TransferError(
                        f"giving up on s3://{self.bucket}/{state.task.key} after {attempt} attempts: {exc}"
                    ) from exc
                delay = backoff_delay(attempt)
                log.warning("retrying %s in %.1fs (attempt %d/%d): %s", entry.path, delay, attempt + 1,
                            self.max_attempts, exc)
                time.sleep(delay)

    def _read_part(self, resp: Any, state: _FileState, off: int, length: int, view: memoryview) -> str:
        """Stream one part of the response into the file at ``off``, hashing it; return its sha256.

        Multi-part files are written through a shared mapping of just this part: recv lands straight in
        the page cache (one copy instead of two) and concurrent writers do not serialize on the inode
        lock as they do with pwrite. Mapping one part at a time keeps mapped pages (and RSS) bounded.
        """
        h = hashlib.sha256()
        window = _Window.open(state.fd, off, length) if state.use_mmap else None
        got = 0
        try:
            while got < length:
                want = min(READ_BLOCK, length - got)
                target = window.slice(got, want) if window is not None else view[:want]
                try:
                    n = resp.readinto(target)
                except (OSError, http.client.HTTPException) as exc:
                    raise RetryableError(f"reading {state.task.key}: {exc}") from exc
                if not n:
                    raise RetryableError(f"connection closed early reading {state.task.key}")
                chunk = target[:n]
                h.update(chunk)
                if window is None:
                    self._pwrite(state, chunk, off + got)
                del chunk, target  # drop buffer exports so the mapping can close
                got += n
                self._progress(n)
        except BaseException:
            self._progress(-got)
            raise
        finally:
            if window is not None:
                window.close()
        return h.hexdigest()

    def _splice_part(self, resp: Any, sock: Any, state: _FileState, off: int, length: int, view: memoryview) -> str:
        """Like _read_part, for a plain-HTTP body: splice(2) moves it socket -> pipe -> page cache with one
        copy, where recv into a mapping costs the copy plus zeroing each newly faulted page (a third of
        the sync's CPU on a 2-core node). The part is then hashed from the page cache, before it counts.
        """
        got = 0
        try:
            # Body bytes http.client already read along with the headers come first (at most one 8 KiB
            # buffer); once they are consumed, the rest of this part is still in the socket.
            ahead = resp.fp.peek(1)[:length]
            if ahead:
                self._pwrite(state, memoryview(resp.fp.read(len(ahead))), off)
                got = len(ahead)
                self._progress(got)
            pipe_r, pipe_w = self._pipe()
            src, timeout = sock.fileno(), sock.gettimeout()
            while got < length:
                try:
                    n = os.splice(src, pipe_w, min(SPLICE_PIPE, length - got))
                except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                    if not select.select([src], [], [], timeout)[0]:
                        raise RetryableError(f"reading {state.task.key}: no data for {timeout}s") from None
                    continue
                except OSError as exc:
                    raise RetryableError(f"reading {state.task.key}: {exc}") from exc
                if not n:
                    raise RetryableError(f"connection closed early reading {state.task.key}")
                while n:
                    try:
                        written = os.splice(pipe_r, state.fd, n, offset_dst=off + got)
                    except OSError as exc:
                        raise _disk_error(exc, state.partial, state.task.entry.size) from exc
                    n -= written
                    got += written
                    self._progress(written)
            resp.length -= length  # read past http.client: keep its count, so it reuses the connection
        except BaseException:
            self._drop_pipe()  # it may hold bytes of this part
            self._progress(-got)
            raise
        return self._hash_range(state, off, length, view)

    def _hash_range(self, state: _FileState, off: int, length: int, view: memoryview) -> str:
        h = hashlib.sha256()
        window = _Window.open(state.fd, off, length)
        if window is not None:
            try:
                h.update(window.slice(0, length))
            finally:
                window.close()
            return h.hexdigest()
        done = 0
        while done < length:
            n = os.preadv(state.fd, [view[: min(len(view), length - done)]], off + done)
            if not n:
                raise IntegrityError(f"{state.task.entry.path}: shorter on disk than the bytes just written")
            h.update(view[:n])
            done += n
        return h.hexdigest()

    def _pipe(self) -> tuple[int, int]:
        pipe = getattr(self._pipes, "fds", None)
        if pipe is None:
            pipe = self._pipes.fds = os.pipe()
            with contextlib.suppress(OSError, AttributeError):  # fewer round trips with a larger pipe
                import fcntl

                fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, SPLICE_PIPE)
        return pipe  # type: ignore[no-any-return]

    def _drop_pipe(self) -> None:
        for fd in self._pipes.__dict__.pop("fds", ()):
            os.close(fd)

    def _pwrite(self, state: _FileState, chunk: memoryview, offset: int) -> None:
        try:
            while chunk:
                written = os.pwrite(state.fd, chunk, offset)
                chunk = chunk[written:]
                offset += written
        except OSError as exc:
            raise _disk_error(exc, state.partial, state.task.entry.size) from exc

    def _finish(self, state: _FileState) -> None:
        """All parts verified: make the bytes durable, then give the file its final name."""
        entry = state.task.entry
        try:
            if os.fstat(state.fd).st_size != entry.size:
                raise IntegrityError(f"{entry.path}: size on disk differs from the manifest's {entry.size}")
            if state.journal_path is not None:
                os.fsync(state.fd)  # a resume trusts a multi-part file at its final name by its size
        except OSError as exc:
            raise _disk_error(exc, state.partial, entry.size) from exc
        finally:
            state.close()
            with self._open_lock:
                self._open.discard(state)
        os.rename(state.partial, state.task.dest)
        if state.journal_path is not None:
            state.journal_path.unlink(missing_ok=True)
        else:
            with self._unsynced_lock:
                self._unsynced.append(state.task.dest)
        self.stats.bump(files_transferred=1)
        if self.progress is not None:
            self.progress.file_done()

    def _progress(self, nbytes: int, *, file_done: bool = False) -> None:
        if self.progress is not None:
            if nbytes:
                self.progress.add(nbytes)
            if file_done:
                self.progress.file_done()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _syncfs(path: Path) -> bool:
    """syncfs(2) of the filesystem holding ``path`` (Linux; Python has no os.syncfs): True when done.

    It flushes that filesystem only, data and metadata (on ext4 and XFS one journal commit), so thousands
    of small files cost one flush. It also flushes other writers' dirty pages on the same filesystem.
    """
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)
    return True


def _disk_error(exc: OSError, path: Path, size: int) -> RolloutError | OSError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # Space taken by another writer after the up-front check (sync._check_space): say what is left now.
        return DiskFull(f"the PVC ran out of space writing {path.name}: {_free_text(path)} free, the file needs "
                        f"{human_bytes(size)}")
    return exc


def _free_text(path: Path) -> str:
    try:
        return human_bytes(shutil.disk_usage(path.parent).free)
    except OSError:
        return "an unknown amount"
