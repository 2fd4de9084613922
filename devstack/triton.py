"""A real local Triton: the tritonserver 2.51 binary inside the ``nvidia-pytriton==0.7.0`` wheel.

The wheel is unpacked (not pip-installed) into ``.devstack/pytriton`` so its own numpy/tritonclient
requirements never touch the project's pins; only the server binary, its bundled shared libraries and
the python backend are kept. The server runs in explicit model-control mode on free loopback ports,
in its own process group, and is stopped with a SIGKILL fallback: a misconfigured python backend can
hang a load forever, so nothing here waits without a deadline.

    python -m devstack.triton install [--wheel PATH] [--dest DIR]   (idempotent; `make triton-server`)
    python -m devstack.triton run --repository DIR                  (foreground, for debugging)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .procs import LOOPBACK, free_ports, spawn, stop_group, wait_until

PYTRITON_VERSION = "0.7.0"
# The python backend stub in this wheel is built against the numpy 1.x C ABI: under numpy 2 it reads
# array strides/item sizes wrongly (inputs [1, 2, 3] arrive as [1, 1, 1], outputs come back empty).
# The stub therefore gets its own tiny venv with numpy 1.26, first on PATH, apart from the project's.
STUB_NUMPY = "1.26.4"
WHEEL_NAME = f"nvidia_pytriton-{PYTRITON_VERSION}-py3-none-manylinux_2_35_x86_64.whl"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".devstack" / "pytriton"
_STAMP = ".installed.json"
# Only these parts of the wheel are needed: the server, its backends, and its vendored libraries.
_KEEP = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


def _py_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _find_wheel(wheel: Path | None, download_dir: Path) -> Path:
    if wheel is not None:
        if not wheel.is_file():
            raise RuntimeError(f"pytriton wheel {wheel} does not exist")
        return wheel
    env = os.environ.get("PYTRITON_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    cached = download_dir / WHEEL_NAME
    if cached.is_file():
        return cached
    download_dir.mkdir(parents=True, exist_ok=True)
    # --no-deps: we want the binary, not pytriton's Python requirements (they would move numpy).
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(download_dir), f"nvidia-pytriton=={PYTRITON_VERSION}"],
        check=True, timeout=900,
    )
    if not cached.is_file():
        raise RuntimeError(f"pip download did not produce {cached}")
    return cached


def install(dest: Path = DEFAULT_DEST, wheel: Path | None = None) -> Path:
    """Unpack the server from the wheel into ``dest`` and assemble a backend directory. Idempotent."""
    stamp = dest / _STAMP
    want = {"pytriton": PYTRITON_VERSION, "python": _py_tag(), "stub_numpy": STUB_NUMPY}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and server_binary(dest).is_file():
        return dest
    src = _find_wheel(wheel, dest.parent / "wheels")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(_KEEP):
                continue
            target = Path(zf.extract(info, tmp))
            mode = (info.external_attr >> 16) & 0o755
            # Wheels do not always record modes: the binaries must be executable regardless.
            if "/bin/" in info.filename or info.filename.endswith("_stub"):
                mode |= 0o755
            if mode:
                target.chmod(mode)
    # The python backend looks for the stub next to libtriton_python.so; ship the one for our Python.
    ts = tmp / "pytriton" / "tritonserver"
    stub = ts / "python_backend_stubs" / _py_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"the wheel has no python backend stub for Python {_py_tag()}")
    shutil.copy2(stub, ts / "backends" / "python" / "triton_python_backend_stub")
    _make_stub_venv(tmp / "stub-venv")
    (tmp / _STAMP).write_text(json.dumps(want))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _make_stub_venv(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{_py_tag()}" / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
         "--target", str(site), f"numpy=={STUB_NUMPY}"],
        check=True, timeout=900,
    )


def server_binary(dest: Path = DEFAULT_DEST) -> Path:
    return dest / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def backend_directory(dest: Path = DEFAULT_DEST) -> Path:
    return dest / "pytriton" / "tritonserver" / "backends"


def server_env(dest: Path = DEFAULT_DEST) -> dict[str, str]:
    """Environment for tritonserver and the python stub it forks.

    Without LD_LIBRARY_PATH reaching the bundled libraries and libpython, a python-backend load hangs
    instead of failing. The stub embeds the Python it finds first on PATH: the stub venv (numpy 1.x).
    """
    env = dict(os.environ)
    libs = [str(dest / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = str(dest / "stub-venv" / "bin") + os.pathsep + env.get("PATH", "")
    # Models import only numpy and the backend utils; the project's path must not leak into them.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


# The Triton image's `tritonserver` on the emulator's kubelet (devstack/kube): the real server with what the
# CPU build needs, then the pod's own arguments, then the pod network: a container binds 0.0.0.0 in its own
# network namespace, which is the pod's IP; here every pod shares the host's, so the server binds its pod
# IP (the kubelet's DEVSTACK_POD_IP) and keeps its ports, the containerPorts of the manifest. Later flags
# win in tritonserver's parser, so these come last.
_IMAGE_ENTRYPOINT = """#!/bin/sh
exec {binary} --backend-directory={backends} --pinned-memory-pool-byte-size=0 --cuda-memory-pool-byte-size=0:0 \\
  "$@" --http-address="${{{ip}}}" --grpc-address="${{{ip}}}" --metrics-address="${{{ip}}}"
"""


def image_runtime(pattern: str, dest: Path = DEFAULT_DEST) -> dict[str, object]:
    """The emulator's image mapping for the Triton image (``pattern``: fnmatch on the image name): its
    ``tritonserver`` is this install's server (the entrypoint above, written into ``dest``), with the
    environment and the read-only paths the server and the python backend stub need in the sandbox."""
    from .kube.network import POD_IP_ENV

    if not server_binary(dest).is_file():
        raise RuntimeError(f"tritonserver is not installed in {dest}: run `make triton-server` "
                           "(python -m devstack.triton install)")
    bin_dir = dest / "image-bin"
    bin_dir.mkdir(exist_ok=True)
    # Written aside and renamed: emulators starting side by side must never run a half-written file.
    partial = bin_dir / f".tritonserver.{os.getpid()}"
    partial.write_text(_IMAGE_ENTRYPOINT.format(binary=server_binary(dest), backends=backend_directory(dest),
                                                ip=POD_IP_ENV))
    partial.chmod(0o755)
    os.replace(partial, bin_dir / "tritonserver")
    env = server_env(dest)
    libdir = os.path.realpath(str(sysconfig.get_config_var("LIBDIR")))
    return {
        "pattern": pattern,
        "path": [str(bin_dir), str(dest / "stub-venv" / "bin")],
        "env": {"LD_LIBRARY_PATH": env["LD_LIBRARY_PATH"]},
        # The stub venv's python links to this interpreter: its venv, base install and libpython must be seen.
        "binds": sorted({str(dest), sys.prefix, os.path.realpath(sys.base_prefix), libdir}),
    }


@dataclass
class TritonServer:
    repository: Path
    log_dir: Path
    install_dir: Path = DEFAULT_DEST
    exit_timeout: int = 2
    http_port: int = 0
    grpc_port: int = 0
    pid: int | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """host:port, the form tritonclient.http takes."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.url}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "tritonserver.log"

    def command(self) -> list[str]:
        return [
            str(server_binary(self.install_dir)),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_directory(self.install_dir)}",
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            # No GPU here: CUDA pools must be off or start-up fails looking for a device.
            "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
            # An open client connection would otherwise hold shutdown for 30 s.
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> TritonServer:
        if not server_binary(self.install_dir).is_file():
            raise RuntimeError(
                f"tritonserver is not installed in {self.install_dir}: run `make triton-server` "
                "(python -m devstack.triton install)"
            )
        self.repository.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port = free_ports(2)
        proc = spawn(self.command(), log_path=self.log_path, env=server_env(self.install_dir))
        self.pid = proc.pid
        try:
            wait_until(self._live, timeout=timeout, what="tritonserver", proc=proc, log_path=self.log_path)
        except Exception:
            self.stop()
            raise
        return self

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/v2/health/live", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.pid is not None and self._live()

    def stop(self) -> None:
        if self.pid is not None:
            # Triton waits up to exit_timeout for in-flight work; then the group (stubs too) is killed.
            stop_group(self.pid, grace=self.exit_timeout + 3.0)
            self.pid = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.triton")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_inst = sub.add_parser("install", help="unpack tritonserver from the nvidia-pytriton wheel (idempotent)")
    p_inst.add_argument("--wheel", type=Path, default=None, help="a local copy of the wheel (else pip download)")
    p_inst.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    p_run = sub.add_parser("run", help="run a server in the foreground until Ctrl-C")
    p_run.add_argument("--repository", type=Path, required=True)
    p_run.add_argument("--log-dir", type=Path, default=ROOT / ".devstack" / "triton-run")
    args = parser.parse_args(argv)
    if args.cmd == "install":
        print(install(args.dest, args.wheel))
        return 0
    server = TritonServer(args.repository.absolute(), args.log_dir).start()
    print(f"tritonserver on http://{server.url} grpc {server.grpc_url}; log {server.log_path}", flush=True)
    try:
        while server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
