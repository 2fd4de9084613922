"""Helpers for tests: release directories with known content, CLI runs, a fault-injecting S3 proxy."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_release_dir(path: Path, *, seed: int = 0, big_mib: int = 0, small: int = 5, model: str = "llm") -> Path:
    """A release tree <model>/config.pbtxt + small files (+ one big file), deterministic per seed."""
    rng = random.Random(seed)
    root = path / model
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "config.pbtxt").write_text(f'name: "{model}"\nbackend: "python"\n# seed {seed}\n')
    for i in range(small):
        (root / "tokenizer" / f"f{i:04d}.json").write_bytes(rng.randbytes(rng.randint(10, 4000)))
    if big_mib:
        block = rng.randbytes(1024 * 1024)
        with open(root / "rank0.engine", "wb") as fh:
            for i in range(big_mib):
                # Distinct blocks, cheap to make: the block with its index in front.
                fh.write(i.to_bytes(8, "little") + block[8:])
    return path


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under path."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[p.relative_to(path).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'plugins'}"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triton_rollout", *args], env=env or cli_env(), capture_output=True, text=True,
        timeout=timeout,
    )


def result_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


class FaultProxy:
    """A loopback TCP proxy in front of S3 that breaks the first few GETs of object data.

    mode "503": answers HTTP 503 SlowDown instead of forwarding; mode "reset": forwards, then cuts the
    connection after ``cut_after`` bytes of the response. Only requests whose path contains ``match``
    are broken, ``failures`` times in all; everything else passes through untouched.
    """

    def __init__(self, upstream_port: int, *, mode: str, failures: int, match: str, cut_after: int = 200_000) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.failures = failures
        self.match = match.encode()
        self.cut_after = cut_after
        self.broken = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _should_break(self, head: bytes) -> bool:
        first_line = head.split(b"\r\n", 1)[0]
        if not first_line.startswith(b"GET ") or self.match not in first_line:
            return False
        with self._lock:
            if self.broken < self.failures:
                self.broken += 1
                return True
        return False

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                # GETs carry no body; other methods are forwarded with theirs via a plain pipe.
                if not head.startswith(b"GET "):
                    self._pipe_rest(client, upstream, head)
                    return
                breaking = self._should_break(head)
                if breaking and self.mode == "503":
                    body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                cut = self.cut_after if breaking and self.mode == "reset" else None
                upstream.sendall(head)
                if not self._relay_response(upstream, client, cut):
                    return
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def _relay_response(self, upstream: socket.socket, client: socket.socket, cut: int | None) -> bool:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = upstream.recv(65536)
            if not chunk:
                return False
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        sent = 0
        client.sendall(header + b"\r\n\r\n")
        data = rest
        while True:
            if cut is not None and sent + len(data) > cut:
                client.sendall(data[: max(cut - sent, 0)])
                client.shutdown(socket.SHUT_RDWR)
                return False
            client.sendall(data)
            sent += len(data)
            if sent >= length:
                return True
            data = upstream.recv(min(1 << 20, length - sent))
            if not data:
                return False

    def _pipe_rest(self, client: socket.socket, upstream: socket.socket, head: bytes) -> None:
        upstream.sendall(head)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(client, upstream), daemon=True)
        t.start()
        pump(upstream, client)
        t.join(timeout=5)
