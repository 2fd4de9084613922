"""An experiment peer for bench/sync_bench.py: the AWS CRT's native S3 client as the data path, with this
project's contract on top (every byte checked against the manifest's sha256 per part, fsync, then rename).

Issue 16 asks whether a native data path would put the verified sync ahead of s5cmd. This answers it by
measurement, in the same run as the engine and s5cmd, without making ``awscrt`` a dependency of the pods:
it runs from .venv-bench (bench/requirements-peers.txt). Two ways to verify, ``--verify``:

- ``file``: the CRT writes each object to ``<dest>.partial`` itself (``recv_filepath``: C all the way, its
  own parallel ranged GETs), then the parts are hashed from the page cache (two threads: hashlib releases
  the GIL) before fsync and rename. The engine's splice path does the same split.
- ``body``: the CRT hands each body chunk, in order, to Python (``on_body``): it is written with pwrite and
  hashed as it arrives, one part at a time, so no second pass over the bytes.
- ``none``: ``recv_filepath`` only, nothing checked and nothing fsynced: the CRT's raw speed, the floor.

A file whose size on disk already matches is skipped (s5cmd's size rule, not the engine's publish record):
an experiment of the data path, not a second sync engine.

    .venv-bench/bin/python bench/crt_sync.py --endpoint http://127.0.0.1:PORT --bucket B --prefix P \\
        --dest DIR [--verify file|body|none]         credentials from AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from awscrt.auth import AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType, create_default_s3_signing_config

IN_FLIGHT = 64  # objects requested at once; the CRT splits each into parts and pools the connections itself


class Mismatch(Exception):
    pass


class Crt:
    def __init__(self, endpoint: str, bucket: str, region: str, part_size: int, memory_limit: int | None) -> None:
        url = urlsplit(endpoint)
        self.host = url.netloc
        self.bucket = bucket
        elg = EventLoopGroup()
        bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
        creds = AwsCredentialsProvider.new_static(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        self.client = S3Client(
            bootstrap=bootstrap, region=region,
            signing_config=create_default_s3_signing_config(region=region, credential_provider=creds),
            tls_mode=S3RequestTlsMode.ENABLED if url.scheme == "https" else S3RequestTlsMode.DISABLED,
            part_size=part_size, throughput_target_gbps=10.0, memory_limit=memory_limit,
        )

    def request(self, key: str) -> HttpRequest:
        # Path-style addressing: the local S3 server has no virtual-host buckets.
        return HttpRequest("GET", f"/{self.bucket}/{quote(key)}", HttpHeaders([("Host", self.host)]))

    def get_bytes(self, key: str) -> bytes:
        chunks: list[bytes] = []
        req = self.client.make_request(type=S3RequestType.GET_OBJECT, request=self.request(key),
                                       on_body=lambda chunk, offset, **_: chunks.append(bytes(chunk)))
        req.finished_future.result()
        return b"".join(chunks)


def parts_of(entry: dict[str, Any]) -> list[tuple[int, int, str]]:
    size = entry["size"]
    if not entry.get("part_sha256"):
        return [(0, size, entry["sha256"])]
    ps = entry["part_size"]
    return [(i * ps, min(ps, size - i * ps), d) for i, d in enumerate(entry["part_sha256"])]


def hash_range(fd: int, off: int, length: int) -> str:
    h = hashlib.sha256()
    if length:
        base = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, length + off - base, offset=base, access=mmap.ACCESS_READ) as m:
            h.update(memoryview(m)[off - base:])
    return h.hexdigest()


class BodyHasher:
    """on_body's target: pwrite each chunk and hash it into the current part, in order."""

    def __init__(self, fd: int, parts: list[tuple[int, int, str]], path: str) -> None:
        self.fd, self.parts, self.path = fd, parts, path
        self.index, self.h, self.filled = 0, hashlib.sha256(), 0
        self.error: Exception | None = None

    def __call__(self, chunk: Any, offset: int, **_: Any) -> None:
        view = memoryview(chunk)
        os.pwrite(self.fd, view, offset)
        while view and self.error is None:
            _, length, digest = self.parts[self.index]
            take = min(len(view), length - self.filled)
            self.h.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == length:
                if self.h.hexdigest() != digest:
                    self.error = Mismatch(f"{self.path}: part {self.index} does not match the manifest")
                self.index, self.h, self.filled = self.index + 1, hashlib.sha256(), 0


def sync(crt: Crt, prefix: str, dest: Path, verify: str) -> dict[str, Any]:
    manifest = json.loads(crt.get_bytes(f"{prefix}/manifest.json"))
    entries = manifest["files"]
    todo = []
    for entry in entries:
        target = dest / entry["path"]
        try:
            if target.stat().st_size == entry["size"]:
                continue
        except FileNotFoundError:
            pass
        todo.append(entry)
    hashers = ThreadPoolExecutor(max_workers=2)  # part hashes from the page cache, on both cores
    slots = threading.Semaphore(IN_FLIGHT)
    pending: list[Future[None]] = []
    requests: list[Any] = []  # a request is cancelled once nothing references it
    made: set[Path] = set()
    t0 = time.perf_counter()

    def finish(entry: dict[str, Any], partial: Path, target: Path, body: BodyHasher | None) -> None:
        fd = os.open(partial, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != entry["size"]:
                raise Mismatch(f"{entry['path']}: size differs from the manifest's {entry['size']}")
            if body is not None and (body.error or body.index != len(body.parts)):
                raise body.error or Mismatch(f"{entry['path']}: body ended before its last part")
            if verify == "file":
                parts = parts_of(entry)
                got = hashers.map(lambda p: hash_range(fd, p[0], p[1]), parts)
                bad = [i for i, (p, g) in enumerate(zip(parts, got, strict=True)) if p[2] != g]
                if bad:
                    raise Mismatch(f"{entry['path']}: part {bad[0]} does not match the manifest")
            if verify != "none":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, target)

    # Largest first, so the long pole starts at once.
    for entry in sorted(todo, key=lambda e: -e["size"]):
        target = dest / entry["path"]
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        partial = target.with_name(target.name + ".partial")
        body = None
        kwargs: dict[str, Any] = {"recv_filepath": str(partial)}
        if verify == "body":
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            body = BodyHasher(fd, parts_of(entry), entry["path"])
            kwargs = {"on_body": body}
        slots.acquire()
        done: Future[None] = Future()

        def on_done(error: Exception | None = None, *, entry: dict[str, Any] = entry, partial: Path = partial,
                    target: Path = target, body: BodyHasher | None = body, done: Future[None] = done,
                    **_: Any) -> None:
            # Off the CRT's event loop: hashing and fsync there would stall every other transfer.
            def work() -> None:
                try:
                    if body is not None:
                        os.close(body.fd)
                    if error is not None:
                        raise error
                    finish(entry, partial, target, body)
                    done.set_result(None)
                except BaseException as exc:
                    done.set_exception(exc)
                finally:
                    slots.release()
            threading.Thread(target=work, daemon=True).start()

        req = crt.client.make_request(type=S3RequestType.GET_OBJECT, request=crt.request(f"{prefix}/{entry['path']}"),
                                      on_done=on_done, **kwargs)
        pending.append(done)
        requests.append(req)
    for fut in pending:
        fut.result()
    hashers.shutdown()
    return {"files_total": len(entries), "files_transferred": len(todo), "verify": verify,
            "bytes_transferred": sum(e["size"] for e in todo), "seconds": round(time.perf_counter() - t0, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--dest", required=True, type=Path)
    ap.add_argument("--verify", choices=("file", "body", "none"), default="file")
    ap.add_argument("--part-size", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--memory-limit", type=int, default=None,
                    help="the CRT's buffer pool in bytes (its default follows the throughput target)")
    args = ap.parse_args()
    crt = Crt(args.endpoint, args.bucket, os.environ.get("AWS_REGION", "us-east-1"), args.part_size,
              args.memory_limit)
    try:
        print(json.dumps(sync(crt, args.prefix.strip("/"), args.dest, args.verify)))
    except Mismatch as exc:
        print(f"crt_sync: integrity error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
