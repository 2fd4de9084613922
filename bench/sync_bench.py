"""Sync benchmark: this project's verified S3 -> PVC sync against cp, s5cmd, aws s3 sync and rclone, and
the experiment of a native data path (bench/crt_sync.py: awscrt's S3 client, with and without this
project's per-part sha256 check and fsync, as crt / crt_body / crt_raw).

One run starts a real local S3 (SeaweedFS over loopback), generates and publishes releases, then, for
several rounds, times each tool's full sync into a fresh empty directory and its no-op re-sync into the
same directory, with the peak RSS and the user and kernel CPU seconds of each tool process, and this VM's
cost of a fresh memory page at the start and the end (bench/machine.py). Ratios are only meaningful within one run: the
S3 server and the clients share the machine's cores.

Cases (BENCH_CASES picks among them):
    large        one big file plus a few hundred small ones (every tool, BENCH_ROUNDS rounds)
    many_small   thousands of small files (every tool, BENCH_ROUNDS rounds)
    tp2_engine   a tp=2 engine: two rank files, configs and tokenizer files (BENCH_SHAPE_TOOLS)
    many_files   tens of thousands of small files (BENCH_SHAPE_TOOLS)
    noop_many    the no-op re-sync of a release of many files; the peers' copies are seeded with cp -r
                 (their own full sync is not the point), triton_rollout's by its own sync
    curve        the cost curve: triton_rollout (and s5cmd) full syncs of one-file releases of growing size
                 and of growing file counts; printed with the marginal cost between consecutive points

    PYTHONPATH=.:plugins python -m bench.sync_bench          (or: make bench)

Environment knobs (defaults are the issue's benchmark, ~13 min on 2 cores; scale down for a quick look,
e.g. BENCH_LARGE_MIB=256 BENCH_TP2_MIB=256 BENCH_SHAPE_FILES=2000 BENCH_NOOP_FILES=5000
BENCH_CURVE_MIB=64,128 BENCH_CURVE_FILES=500 BENCH_ROUNDS=1):
    BENCH_LARGE_MIB=2048   size of the big file in the ``large`` case
    BENCH_SMALL_FILES=300  small files next to the big file in ``large``
    BENCH_MANY_FILES=3000  files in ``many_small``
    BENCH_ROUNDS=3         rounds of large and many_small; medians of full and no-op times are reported
    BENCH_TP2_MIB=4096     size of each of the two rank files of ``tp2_engine``
    BENCH_SHAPE_FILES=20000  files in ``many_files``
    BENCH_NOOP_FILES=50000   files in ``noop_many``
    BENCH_SHAPE_ROUNDS=1   rounds of tp2_engine, many_files, noop_many and curve
    BENCH_SHAPE_TOOLS=s5cmd,triton_rollout  tools of those cases
    BENCH_CURVE_MIB=512,1024,2048,4096  one-file release sizes of the curve
    BENCH_CURVE_FILES=1000,5000  file counts of the curve (many_small, many_files and noop_many add theirs)
    BENCH_TOOLS=...        comma list, subset of cp,s5cmd,aws,rclone,triton_rollout,crt,crt_body,crt_raw
    BENCH_CASES=...        comma list, subset of large,many_small,tp2_engine,many_files,noop_many,curve
    BENCH_TRANSFERS=16     rclone --transfers/--checkers (s5cmd and aws keep their own defaults)
    BENCH_TIMEOUT=1800     seconds before one tool command is killed
    BENCH_KEEP=1           keep bench/work/ (generated data, S3 data, logs) afterwards
    BENCH_RESULTS=path     where the JSON goes (default bench/results/sync.json)

The page cache cannot be dropped reliably here (no root guarantee, shared machine), so every tool reads
from a warm cache: the source files for cp, the S3 server's volume files for the others. All tools
run under the same condition; absolute numbers are better than cold-cache ones.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import fresh_page_cost
from devstack.s3 import SeaweedS3

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
BENCH_VENV = REPO / ".venv-bench"
BUCKET = "bench"
PREFIX = "bench"
VERSION = 1
TRITON_MODEL = "llm"
ALL_TOOLS = ("cp", "s5cmd", "aws", "rclone", "triton_rollout", "crt", "crt_body", "crt_raw")
ALL_CASES = ("large", "many_small", "tp2_engine", "many_files", "noop_many", "curve")
SHAPE_DEFAULT_TOOLS = ("s5cmd", "triton_rollout")
MIB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def env_ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip()
    return tuple(int(x) for x in raw.split(",") if x.strip()) if raw else default


def env_list(name: str, allowed: tuple[str, ...], default: tuple[str, ...] | None = None) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return list(allowed if default is None else default)
    picked = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in picked if x not in allowed]
    if bad:
        raise SystemExit(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return picked


@dataclass(frozen=True)
class Config:
    large_mib: int
    small_files: int
    many_files: int
    rounds: int
    tools: list[str]
    cases: list[str]
    transfers: int
    timeout: float
    keep: bool
    results: Path
    tp2_mib: int = 4096
    shape_files: int = 20000
    noop_files: int = 50000
    shape_rounds: int = 1
    shape_tools: tuple[str, ...] = SHAPE_DEFAULT_TOOLS
    curve_mib: tuple[int, ...] = (512, 1024, 2048, 4096)
    curve_files: tuple[int, ...] = (1000, 5000)

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            large_mib=env_int("BENCH_LARGE_MIB", 2048),
            small_files=env_int("BENCH_SMALL_FILES", 300),
            many_files=env_int("BENCH_MANY_FILES", 3000),
            rounds=max(1, env_int("BENCH_ROUNDS", 3)),
            tools=env_list("BENCH_TOOLS", ALL_TOOLS),
            cases=env_list("BENCH_CASES", ALL_CASES),
            transfers=env_int("BENCH_TRANSFERS", 16),
            timeout=float(env_int("BENCH_TIMEOUT", 1800)),
            keep=os.environ.get("BENCH_KEEP", "") == "1",
            results=Path(os.environ.get("BENCH_RESULTS") or REPO / "bench" / "results" / "sync.json"),
            tp2_mib=env_int("BENCH_TP2_MIB", 4096),
            shape_files=env_int("BENCH_SHAPE_FILES", 20000),
            noop_files=env_int("BENCH_NOOP_FILES", 50000),
            shape_rounds=max(1, env_int("BENCH_SHAPE_ROUNDS", 1)),
            shape_tools=tuple(env_list("BENCH_SHAPE_TOOLS", ALL_TOOLS, SHAPE_DEFAULT_TOOLS)),
            curve_mib=env_ints("BENCH_CURVE_MIB", (512, 1024, 2048, 4096)),
            curve_files=env_ints("BENCH_CURVE_FILES", (1000, 5000)),
        )


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CaseSpec:
    """What one release holds and how it is benchmarked."""

    name: str
    big: tuple[tuple[str, int], ...] = ()  # (path under the Triton model, bytes): incompressible files
    small: tuple[tuple[str, int, int, int], ...] = ()  # (subdir, count, min bytes, max bytes)
    tools: tuple[str, ...] = ALL_TOOLS
    rounds: int = 1
    # Only the no-op re-sync is compared: the peers' copies are seeded with cp -r, not their own sync.
    noop_only: bool = False
    curve: str | None = None  # "size" or "files": a point of the cost curve


@dataclass
class Release:
    spec: CaseSpec
    src: Path
    files: dict[str, int]  # release-relative path -> size

    @property
    def case(self) -> str:
        return self.spec.name

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{PREFIX}/{self.case}/{VERSION}"


def case_specs(cfg: Config) -> list[CaseSpec]:
    """The cases BENCH_CASES picks, in run order; ``curve`` expands to one release per point."""
    core = tuple(cfg.tools)
    shape = tuple(t for t in cfg.shape_tools if t in cfg.tools)
    assets = ("assets", 1024, 32 * 1024)  # the small-file mix of every file-count case and curve point
    specs: dict[str, list[CaseSpec]] = {
        "large": [CaseSpec("large", big=(("engine.bin", cfg.large_mib * MIB),),
                           small=(("tokenizer", cfg.small_files, 4 * 1024, 64 * 1024),), tools=core,
                           rounds=cfg.rounds)],
        "many_small": [CaseSpec("many_small", small=((assets[0], cfg.many_files, *assets[1:]),), tools=core,
                                rounds=cfg.rounds, curve="files")],
        # A TensorRT-LLM tp=2 engine as trtllm-build writes it: a rank file per GPU, config.json, and the
        # tokenizer next to it (a big tokenizer.json, a handful of small files).
        "tp2_engine": [CaseSpec("tp2_engine", big=(("rank0.engine", cfg.tp2_mib * MIB),
                                                   ("rank1.engine", cfg.tp2_mib * MIB),
                                                   ("tokenizer/tokenizer.json", 9 * MIB)),
                                small=(("tokenizer", 6, 200, 600 * 1024), ("config", 3, 1024, 16 * 1024)),
                                tools=shape, rounds=cfg.shape_rounds)],
        "many_files": [CaseSpec("many_files", small=((assets[0], cfg.shape_files, *assets[1:]),), tools=shape,
                                rounds=cfg.shape_rounds, curve="files")],
        "noop_many": [CaseSpec("noop_many", small=((assets[0], cfg.noop_files, *assets[1:]),), tools=shape,
                               rounds=cfg.shape_rounds, noop_only=True, curve="files")],
        "curve": [CaseSpec(f"curve_{mib}mib", big=(("engine.bin", mib * MIB),), tools=shape,
                           rounds=cfg.shape_rounds, curve="size") for mib in cfg.curve_mib]
        + [CaseSpec(f"curve_{n}files", small=((assets[0], n, *assets[1:]),), tools=shape,
                    rounds=cfg.shape_rounds, curve="files") for n in cfg.curve_files],
    }
    return [spec for case in cfg.cases for spec in specs[case] if spec.tools]


def write_large_file(path: Path, size: int, seed: int = 0) -> None:
    """Incompressible, non-repeating bytes at memcpy speed (os.urandom alone is ~4x slower here).

    Each MiB is a slice of an 8 MiB random pool at an odd offset, stamped with its index (and the
    file's seed), so no two MiB (nor 4 KiB-aligned blocks) are equal: neither compression nor dedupe
    can shortcut a tool.
    """
    pool = os.urandom(8 * MIB)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        done, i = 0, 0
        while done < size:
            n = min(MIB, size - done)
            off = (i * 1_048_573) % (7 * MIB)
            fh.write((i.to_bytes(8, "little") + seed.to_bytes(8, "little") + pool[off + 16 : off + MIB])[:n])
            done += n
            i += 1


def write_small_files(root: Path, subdir: str, count: int, lo: int, hi: int, rng: random.Random,
                      files: dict[str, int]) -> None:
    for i in range(count):
        # Spread over a few directories like a tokenizer / config tree, not one flat folder.
        rel = f"{TRITON_MODEL}/{subdir}/d{i % 16:02d}/f{i:05d}.bin"
        size = rng.randint(lo, hi)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files[rel] = size


def generate(spec: CaseSpec) -> Release:
    case = spec.name
    src = WORK / "src" / case
    fingerprint = json.loads(json.dumps({"big": spec.big, "small": spec.small}))
    stamp = src.parent / f"{case}.spec.json"
    # Reuse data a kept earlier run generated with the same spec (BENCH_KEEP=1 workflows).
    if stamp.exists() and src.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == fingerprint:
            log(f"{case}: reusing generated data in {src}")
            return Release(spec, src, saved["files"])
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    rng = random.Random(case)
    files: dict[str, int] = {}
    t0 = time.perf_counter()
    for seed, (rel, size) in enumerate(spec.big):
        write_large_file(src / TRITON_MODEL / rel, size, seed)
        files[f"{TRITON_MODEL}/{rel}"] = size
    for subdir, count, lo, hi in spec.small:
        write_small_files(src, subdir, count, lo, hi, rng, files)
    (src / TRITON_MODEL).mkdir(exist_ok=True)
    (src / TRITON_MODEL / "config.pbtxt").write_text(f'name: "{TRITON_MODEL}"\nbackend: "python"\n')
    files[f"{TRITON_MODEL}/config.pbtxt"] = (src / TRITON_MODEL / "config.pbtxt").stat().st_size
    stamp.write_text(json.dumps({"spec": fingerprint, "files": files}))
    total = sum(files.values())
    log(f"{case}: generated {len(files)} files, {total / MIB:.1f} MiB in {time.perf_counter() - t0:.1f}s")
    return Release(spec, src, files)


# ------------------------------------------------------------------------------------ measured runs


@dataclass
class Measured:
    seconds: float
    rc: int
    peak_rss_mib: float
    stdout: str
    log_path: Path
    user_s: float = 0.0  # the tool's CPU (and its children's), from wait4's rusage
    sys_s: float = 0.0


# Runs one tool and reports its wall time and peak RSS. A separate, minimal process (python -S -I, a
# few MiB) forks the tool because Linux counts the forking process's memory high-water mark into the
# child's ru_maxrss at exec: forked straight from this harness, every tool would show the harness's
# RSS as a floor. os.wait4 gives the rusage of exactly that one child (and what it reaped).
_MEASURE = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
secs = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump({"seconds": secs, "rc": os.waitstatus_to_exitcode(status), "maxrss_kib": ru.ru_maxrss,
               "user_s": ru.ru_utime, "sys_s": ru.ru_stime}, fh)
"""


def run_measured(cmd: list[str], *, env: dict[str, str], log_path: Path, timeout: float) -> Measured:
    """Run one command through the measuring helper; time and peak RSS are the tool's alone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_suffix(".stdout")
    meas_path = log_path.with_suffix(".rusage.json")
    meas_path.unlink(missing_ok=True)
    with open(out_path, "wb") as out, open(log_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", _MEASURE, str(meas_path), *cmd],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the whole group (helper and tool) so a hung tool cannot stall the benchmark.
            _kill_group(proc.pid)
            proc.wait()
    stdout = out_path.read_text(errors="replace")
    if not meas_path.exists():
        return Measured(float(timeout), proc.returncode or -9, 0.0, stdout, log_path)
    m = json.loads(meas_path.read_text())
    return Measured(m["seconds"], m["rc"], m["maxrss_kib"] / 1024.0, stdout, log_path, m["user_s"], m["sys_s"])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 12) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    # (release, dest) -> argv of the full sync and of the no-op re-sync
    full: Callable[[Release, Path], list[str]]
    noop: Callable[[Release, Path], list[str]]
    # release-relative path -> where the tool puts it under dest
    placed: Callable[[Path, str], Path] = field(default=lambda dest, rel: dest / rel)
    skip: str | None = None


def find_peer(name: str) -> str | None:
    """A peer binary from .venv-bench; s5cmd's bin/ entry is a Python shim, so take the real binary."""
    if name == "s5cmd":
        hits = sorted(glob.glob(str(BENCH_VENV / "lib" / "python3*" / "site-packages" / "s5cmd" / "bin" / "s5cmd")))
        return hits[0] if hits else None
    p = BENCH_VENV / "bin" / name
    return str(p) if p.exists() else None


def triton_rollout_skip(env: dict[str, str]) -> str | None:
    """None when `python -m triton_rollout sync` is usable, else why the tool is skipped."""
    r = subprocess.run([sys.executable, "-m", "triton_rollout", "sync", "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"`python -m triton_rollout sync --help` failed: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def build_tools(cfg: Config, s3: SeaweedS3, env: dict[str, str]) -> list[Tool]:
    ep = s3.endpoint
    missing = "not in .venv-bench (run `make bench`, which installs bench/requirements-peers.txt there)"
    s5 = find_peer("s5cmd")
    aws = find_peer("aws")
    rclone = find_peer("rclone")
    has_crt = glob.glob(str(BENCH_VENV / "lib" / "python3*" / "site-packages" / "awscrt"))
    crt_skip = None if has_crt else f"awscrt {missing}"

    def cp_full(rel: Release, dest: Path) -> list[str]:
        return ["cp", "-r", f"{rel.src}/.", f"{dest}/"]

    def cp_noop(rel: Release, dest: Path) -> list[str]:
        # cp has no sync mode; -u (copy only when the source is newer) is its closest no-op.
        return ["cp", "-ru", f"{rel.src}/.", f"{dest}/"]

    def s5_cmd(rel: Release, dest: Path) -> list[str]:
        # s5cmd's own defaults (256 workers, 5 parts per file in flight): the reference to beat.
        return [str(s5), "--endpoint-url", ep, "--log", "error", "sync",
                f"s3://{BUCKET}/{PREFIX}/{rel.case}/{VERSION}/*", f"{dest}/"]

    def aws_cmd(rel: Release, dest: Path) -> list[str]:
        # awscli's defaults (10 concurrent requests, 8 MiB parts).
        return [str(aws), "s3", "sync", f"s3://{BUCKET}/{PREFIX}/{rel.case}/{VERSION}", str(dest),
                "--endpoint-url", ep, "--only-show-errors", "--no-progress"]

    def rclone_cmd(rel: Release, dest: Path) -> list[str]:
        n = str(cfg.transfers)
        return [str(rclone), "sync", f"bench:{BUCKET}/{PREFIX}/{rel.case}/{VERSION}", str(dest),
                "--transfers", n, "--checkers", n, "--log-level", "ERROR"]

    def crt_cmd(verify: str) -> Callable[[Release, Path], list[str]]:
        def argv(rel: Release, dest: Path) -> list[str]:
            return [str(BENCH_VENV / "bin" / "python"), str(REPO / "bench" / "crt_sync.py"), "--endpoint", ep,
                    "--bucket", BUCKET, "--prefix", f"{PREFIX}/{rel.case}/{VERSION}", "--dest", str(dest),
                    "--verify", verify]
        return argv

    def tr_cmd(rel: Release, dest: Path) -> list[str]:
        return [sys.executable, "-m", "triton_rollout", "sync", "--release", rel.uri, "--pvc", str(dest)]

    def tr_placed(dest: Path, rel: str) -> Path:
        model, _, rest = rel.partition("/")
        return dest / "repository" / model / str(VERSION) / rest

    tools = {
        "cp": Tool("cp", cp_full, cp_noop),
        "s5cmd": Tool("s5cmd", s5_cmd, s5_cmd, skip=None if s5 else f"s5cmd {missing}"),
        "aws": Tool("aws", aws_cmd, aws_cmd, skip=None if aws else f"aws {missing}"),
        "rclone": Tool("rclone", rclone_cmd, rclone_cmd, skip=None if rclone else f"rclone {missing}"),
        "triton_rollout": Tool("triton_rollout", tr_cmd, tr_cmd, placed=tr_placed,
                               skip=triton_rollout_skip(env) if "triton_rollout" in cfg.tools else None),
        # The experiment of a native data path (bench/crt_sync.py): awscrt's S3 client under this project's
        # per-part sha256 check and fsync ("crt": hashed from the page cache, "crt_body": as it arrives),
        # and with no check at all ("crt_raw": the native client's floor).
        **{name: Tool(name, crt_cmd(verify), crt_cmd(verify), skip=crt_skip)
           for name, verify in (("crt", "file"), ("crt_body", "body"), ("crt_raw", "none"))},
    }
    return [tools[name] for name in cfg.tools]


def tool_versions(env: dict[str, str]) -> dict[str, str]:
    """Each peer's version line, recorded with the results so ratios can be traced to releases."""
    probes = {"s5cmd": [find_peer("s5cmd"), "version"], "aws": [find_peer("aws"), "--version"],
              "rclone": [find_peer("rclone"), "version"]}
    out = {}
    for name, argv in probes.items():
        if argv[0] is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=30)
            out[name] = ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
    return out


def tool_env(s3: SeaweedS3) -> dict[str, str]:
    env = dict(os.environ)
    env.update(s3.env())
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    # Keep a user's ~/.aws and rclone.conf out of the measurement.
    env["AWS_CONFIG_FILE"] = str(WORK / "aws-config-none")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(WORK / "aws-credentials-none")
    env.pop("AWS_PROFILE", None)
    env["RCLONE_CONFIG"] = str(WORK / "rclone-none.conf")
    env.update({
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
    })
    paths = [str(REPO), str(REPO / "plugins")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# --------------------------------------------------------------------------------------- publish


def publish(rel: Release, env: dict[str, str]) -> None:
    """Publish as producers do: files first, manifest.json last.

    With s5cmd at hand, the files go up with s5cmd and the manifest (the project's own build_manifest)
    after them: the same release, in a fraction of the time boto3's per-file uploads take for 50,000
    files. Without it, the project's publisher does both.
    """
    t0 = time.perf_counter()
    s5 = find_peer("s5cmd")
    if s5 is None:
        r = subprocess.run([sys.executable, "-m", "triton_rollout", "publish", "--src", str(rel.src),
                            "--release", rel.uri], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"`python -m triton_rollout publish` of {rel.uri} failed (rc {r.returncode}):\n"
                               f"{(r.stderr or r.stdout)[-2000:]}")
    else:
        from triton_rollout.release.manifest import build_manifest

        manifest = build_manifest(rel.src, model=rel.case, version=VERSION, kind="engine", source="bench")
        body = WORK / "manifests" / rel.case / "manifest.json"
        body.parent.mkdir(parents=True, exist_ok=True)
        body.write_bytes(manifest.to_json())
        for what, argv in (("files", [f"{rel.src}/*", f"{rel.uri}/"]), ("manifest", [str(body), f"{rel.uri}/"])):
            r = subprocess.run([s5, "--endpoint-url", env["AWS_ENDPOINT_URL"], "--log", "error", "cp", *argv],
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"s5cmd upload of the {what} of {rel.uri} failed (rc {r.returncode}):\n"
                                   f"{(r.stderr or r.stdout)[-2000:]}")
    log(f"{rel.case}: published {rel.uri} ({len(rel.files)} files) in {time.perf_counter() - t0:.1f}s")


# ------------------------------------------------------------------------------------ verification


def _sample_digest(path: Path, size: int) -> str:
    """sha256 of three 64 KiB windows (start, middle, end): catches wrong content cheaply."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for off in sorted({0, max(0, size // 2 - 32768), max(0, size - 65536)}):
            fh.seek(off)
            h.update(fh.read(65536))
    return h.hexdigest()


def verify(tool: Tool, rel: Release, dest: Path) -> str | None:
    """None when dest holds every release file at the right size (and sampled content); else why not."""
    missing, wrong, got_bytes = [], [], 0
    for path, size in rel.files.items():
        p = tool.placed(dest, path)
        try:
            st = p.stat()
        except FileNotFoundError:
            missing.append(path)
            continue
        got_bytes += st.st_size
        if st.st_size != size:
            wrong.append(f"{path} ({st.st_size} != {size})")
    if missing or wrong:
        return (f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} wrong size (e.g. {wrong[:3]}); "
                f"{got_bytes} of {rel.total_bytes} bytes present")
    # The biggest file and a spread of small ones, compared with the source by sampled content.
    by_size = sorted(rel.files, key=lambda p: (-rel.files[p], p))
    for path in by_size[:1] + by_size[1::max(1, len(by_size) // 20)]:
        size = rel.files[path]
        if _sample_digest(tool.placed(dest, path), size) != _sample_digest(rel.src / path, size):
            return f"content of {path} differs from the source"
    return None


def count_files(dest: Path) -> tuple[int, int]:
    n = b = 0
    for root, _, names in os.walk(dest):
        for name in names:
            n += 1
            b += os.lstat(os.path.join(root, name)).st_size
    return n, b


# -------------------------------------------------------------------------------------------- main


@dataclass
class Samples:
    full: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    user: list[float] = field(default_factory=list)  # CPU seconds of each timed full sync
    sys: list[float] = field(default_factory=list)
    noop_result: str = ""
    error: str | None = None


def seed_command(tool: Tool, rel: Release, dest: Path) -> list[str]:
    """What fills ``dest`` before a no-op-only case's timed re-sync: the tool's own full sync for
    triton_rollout (its publish record is part of what its no-op reads), cp -r for the peers (its files
    are newer than the objects, which is all their size-and-mtime no-op needs)."""
    if tool.name == "triton_rollout":
        return tool.full(rel, dest)
    return ["cp", "-r", f"{rel.src}/.", f"{dest}/"]


def bench_one(tool: Tool, rel: Release, cfg: Config, env: dict[str, str], rnd: int, s: Samples) -> None:
    dest = WORK / "dst" / rel.case / tool.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    logs = WORK / "logs" / f"r{rnd}-{rel.case}-{tool.name}"
    timed_full = not rel.spec.noop_only or tool.name == "triton_rollout"
    try:
        # Flush what earlier tools left dirty so no tool pays for another's deferred writeback.
        os.sync()
        argv = tool.full(rel, dest) if not rel.spec.noop_only else seed_command(tool, rel, dest)
        full = run_measured(argv, env=env, log_path=logs.with_name(logs.name + "-full.log"), timeout=cfg.timeout)
        # Time to make the copy durable: triton_rollout fsyncs before publishing, the peers do not.
        t_sync = time.perf_counter()
        os.sync()
        durable = full.seconds + time.perf_counter() - t_sync
        if full.rc != 0:
            s.error = f"full sync exited {full.rc} (log {full.log_path}):\n{tail(full.log_path)}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        bad = verify(tool, rel, dest)
        if bad:
            s.error = f"destination wrong after full sync: {bad}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        n, b = count_files(dest)
        noop = run_measured(tool.noop(rel, dest), env=env, log_path=logs.with_name(logs.name + "-noop.log"),
                            timeout=cfg.timeout)
        if noop.rc != 0:
            s.error = f"no-op re-sync exited {noop.rc} (log {noop.log_path}):\n{tail(noop.log_path)}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        if timed_full:
            s.full.append(full.seconds)
            s.durable.append(durable)
            s.rss.append(full.peak_rss_mib)
            s.user.append(full.user_s)
            s.sys.append(full.sys_s)
        s.noop.append(noop.seconds)
        s.rss.append(noop.peak_rss_mib)
        extra = ""
        if tool.name == "triton_rollout":
            s.noop_result = _result_summary(noop.stdout)
            extra = " | result: " + _result_summary(full.stdout) + " / no-op: " + s.noop_result
        what = (f"full {full.seconds:.2f}s ({rel.total_bytes / MIB / full.seconds:.0f} MiB/s, CPU user "
                f"{full.user_s:.2f}s sys {full.sys_s:.2f}s), durable {durable:.2f}s"
                if timed_full else f"seeded by cp -r in {full.seconds:.2f}s (not timed)")
        log(f"  {tool.name}: {what}, no-op {noop.seconds:.2f}s, peak RSS {max(s.rss):.0f} MiB, "
            f"dest {n} files / {b / MIB:.1f} MiB, verified{extra}")
    finally:
        discard(dest, len(rel.files))


# ext4 skips inodes freed in the last 60 s (longer while their table block is dirty) when it allocates new
# ones (recently_deleted() in fs/ext4/ialloc.c): a tool run right after thousands of files were deleted
# spends most of its CPU scanning inode bitmaps. Trees of many files are set aside and deleted at the end.
TRASH_FROM_FILES = 1000


def discard(dest: Path, files: int) -> None:
    if files < TRASH_FROM_FILES or not dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
        return
    trash = WORK / "trash"
    trash.mkdir(parents=True, exist_ok=True)
    dest.rename(trash / f"{dest.parent.name}-{dest.name}-{time.monotonic_ns()}")


def _result_summary(stdout: str) -> str:
    """The sync's JSON result (last JSON line of stdout), trimmed to its transfer counters."""
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                keys = [k for k in data if any(w in k for w in ("file", "byte", "second", "skip", "status"))]
                return json.dumps({k: data[k] for k in keys} or data, sort_keys=True)[:300]
    return "(no JSON on stdout)"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str) -> str:
    """``x`` formatted to ``spec`` ("8.2f"), or a dash of the same width."""
    return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]))


def case_table(releases: dict[str, Release], results: dict[str, dict[str, Samples]],
               cases: dict[str, dict[str, dict[str, Any]]], errors: dict[str, dict[str, str]]) -> list[str]:
    header = (f"{'case':<16} {'tool':<15} {'files':>6} {'MiB':>7} {'full_s':>8} {'x cp':>6} {'x s5cmd':>8} "
              f"{'MiB/s':>7} {'noop_s':>7} {'noop x s5':>9} {'rss_MiB':>8} {'durable_s':>10} {'dur x s5':>9} "
              f"{'user_s':>7} {'sys_s':>6}")
    lines = [header, "-" * len(header)]
    for case, per_tool in results.items():
        rel = releases[case]
        cases[case] = {}
        ok = {t: s for t, s in per_tool.items() if s.noop and not s.error}
        full = {t: _median(s.full) for t, s in ok.items()}
        noop = {t: _median(s.noop) for t, s in ok.items()}
        dur = {t: _median(s.durable) for t, s in ok.items()}
        mib = rel.total_bytes / MIB
        for tool, s in per_tool.items():
            if tool not in ok:
                errors.setdefault(case, {})[tool] = s.error or "no successful round"
                lines.append(f"{case:<16} {tool:<15} {'FAILED':>8}  {(s.error or '').splitlines()[0][:70]}")
                continue
            f, n, d = full[tool], noop[tool], dur[tool]
            user, system = _median(s.user), _median(s.sys)
            row: dict[str, Any] = {"full_s": f and round(f, 4), "noop_s": n and round(n, 4),
                                   "peak_rss_mib": round(max(s.rss), 1), "durable_s": d and round(d, 4),
                                   "user_s": user and round(user, 3), "sys_s": system and round(system, 3)}
            if s.noop_result:
                row["noop_result"] = json.loads(s.noop_result) if s.noop_result.startswith("{") else s.noop_result
            cases[case][tool] = row
            lines.append(f"{case:<16} {tool:<15} {len(rel.files):>6} {mib:>7.0f} {_fmt(f, '8.2f')} "
                         f"{ratio(f, full.get('cp')):>6} {ratio(f, full.get('s5cmd')):>8} "
                         f"{_fmt(f and mib / f, '7.0f')} {_fmt(n, '7.2f')} {ratio(n, noop.get('s5cmd')):>9} "
                         f"{max(s.rss):>8.0f} {_fmt(d, '10.2f')} {ratio(d, dur.get('s5cmd')):>9} "
                         f"{_fmt(user, '7.2f')} {_fmt(system, '6.2f')}")
    return lines


def cost_curve(releases: dict[str, Release], cases: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Full-sync time against size (one-file releases) and against file count (the small-file mix), per
    tool, with the marginal cost between consecutive points: flat slopes are linear growth, a rising one
    is where it bends."""
    curves: dict[str, Any] = {}
    for kind, unit, scale in (("size", "s/GiB", 1024 * MIB), ("files", "s/1000 files", 1000)):
        points = sorted((r for r in releases.values() if r.spec.curve == kind and r.case in cases),
                        key=lambda r: r.total_bytes if kind == "size" else len(r.files))
        rows = []
        for tool in ("triton_rollout", "s5cmd"):
            prev: tuple[float, float] | None = None
            for r in points:
                t = cases[r.case].get(tool, {}).get("full_s")
                if t is None:
                    continue
                x = r.total_bytes if kind == "size" else len(r.files)
                marginal = (t - prev[1]) / ((x - prev[0]) / scale) if prev and x > prev[0] else None
                rows.append({"tool": tool, "case": r.case, "files": len(r.files), "mib": round(r.total_bytes / MIB),
                             "full_s": t, "per_unit": round(t / (x / scale), 4),
                             "marginal": marginal and round(marginal, 4)})
                prev = (x, t)
        curves[kind] = {"unit": unit, "points": rows}
    return curves


def curve_table(curves: dict[str, Any]) -> list[str]:
    lines = []
    for kind, curve in curves.items():
        if not curve["points"]:
            continue
        unit = curve["unit"]
        lines += ["", f"cost curve: full sync against {kind} ({unit}; marginal = from the previous point)",
                  f"{'tool':<15} {'case':<18} {'files':>6} {'MiB':>7} {'full_s':>8} {unit:>14} {'marginal':>10}"]
        for p in curve["points"]:
            lines.append(f"{p['tool']:<15} {p['case']:<18} {p['files']:>6} {p['mib']:>7} {p['full_s']:>8.2f} "
                         f"{p['per_unit']:>14.3f} {_fmt(p['marginal'], '10.3f')}")
    return lines


def report(cfg: Config, releases: dict[str, Release], results: dict[str, dict[str, Samples]],
           skipped: dict[str, str], versions: dict[str, str], started: float, *, final: bool = True,
           page_us: dict[str, float] | None = None) -> dict[str, Any]:
    cases: dict[str, dict[str, dict[str, Any]]] = {}
    errors: dict[str, dict[str, str]] = {}
    lines = case_table(releases, results, cases, errors)
    for tool, why in skipped.items():
        lines.append(f"{'(all)':<16} {tool:<15} {'SKIPPED':>8}  {why[:80]}")
    curves = cost_curve(releases, cases)
    lines += curve_table(curves)
    if page_us:
        lines += ["", "fresh 4 KiB page, kernel us to fault in (bounds every tool's large cases alike): "
                  + ", ".join(f"{k} {v}" for k, v in page_us.items())]
    if final:
        print("\n".join(lines), flush=True)
    return {
        "cases": cases,
        "curve": curves,
        "meta": {
            "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "bench_seconds": round(time.perf_counter() - started, 1),
            "complete": final,  # False: written after a case, the run still under way (or stopped)
            "rounds": {c: r.spec.rounds for c, r in releases.items()},
            "tools": {c: list(r.spec.tools) for c, r in releases.items()},
            "large_mib": cfg.large_mib,
            "files": {c: len(r.files) for c, r in releases.items()},
            "bytes": {c: r.total_bytes for c, r in releases.items()},
            "cpus": os.cpu_count(),
            "fresh_page_us": page_us or {},
            "statistic": "median of rounds for times, max over rounds (full and no-op) for RSS",
            "rclone_transfers": cfg.transfers,
            "versions": versions,
            "rss_floor": "peak RSS includes the ~6-8 MiB of the measuring helper it was forked from",
            "page_cache": "warm (dropping it is not possible reliably here); same for every tool",
            "durable_s": "full_s plus the time of a sync(2) right after: when the copy is on disk "
                         "(triton_rollout fsyncs before it publishes; the peers leave dirty pages)",
            "dirty_pages": "sync(2) before every timed full sync, so no tool pays another's writeback",
            "noop_only": "noop_many: the peers' copies are seeded with cp -r (untimed), triton_rollout's by "
                         "its own full sync; only the no-op re-syncs are compared",
            "publish": "files uploaded with s5cmd, then manifest.json (the project's build_manifest) last",
        },
        "skipped": skipped,
        "failed": errors,
    }


def write_results(cfg: Config, out: dict[str, Any]) -> None:
    cfg.results.parent.mkdir(parents=True, exist_ok=True)
    cfg.results.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def main() -> int:
    started = time.perf_counter()
    cfg = Config.from_env()
    specs = case_specs(cfg)
    log("config: " + ", ".join(f"{c.name} ({c.rounds}x {'/'.join(c.tools)})" for c in specs))
    WORK.mkdir(parents=True, exist_ok=True)
    # An installed package ships compiled bytecode (pip compiles on install); an editable checkout run
    # with PYTHONDONTWRITEBYTECODE would recompile every module on every start instead.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "plugins")], check=False)
    s3 = SeaweedS3(data_dir=WORK / "s3", buckets=(BUCKET,))
    shutil.rmtree(s3.data_dir, ignore_errors=True)
    try:
        s3.start()
        log(f"SeaweedFS S3 at {s3.endpoint} (pid {s3.pid}, data {s3.data_dir})")
        env = tool_env(s3)
        page_us = {"start": fresh_page_cost()}
        log(f"a fresh 4 KiB page costs {page_us['start']} us of kernel time to fault in (median of 3)")
        tools = {t.name: t for t in build_tools(cfg, s3, env)}
        skipped = {name: t.skip for name, t in tools.items() if t.skip}
        for name, why in skipped.items():
            log(f"SKIP {name}: {why}")
        releases: dict[str, Release] = {}
        results: dict[str, dict[str, Samples]] = {}
        # Case by case: generate, publish, then every round, so a case's data is on disk only while needed.
        for spec in specs:
            rel = releases[spec.name] = generate(spec)
            publish(rel, env)
            active = [tools[t] for t in spec.tools if t in tools and not tools[t].skip]
            results[spec.name] = {t.name: Samples() for t in active}
            for rnd in range(spec.rounds):
                # Rotate the order each round so no tool always runs first (or last) after another's I/O.
                order = active[rnd % len(active):] + active[: rnd % len(active)] if active else []
                log(f"round {rnd + 1}/{spec.rounds}, case {spec.name} ({len(rel.files)} files, "
                    f"{rel.total_bytes / MIB:.1f} MiB)")
                for tool in order:
                    s = results[spec.name][tool.name]
                    if s.error:
                        continue  # a tool that failed once is out of this case; its error is reported
                    bench_one(tool, rel, cfg, env, rnd, s)
            if not cfg.keep:
                discard(rel.src, len(rel.files))
            # After every case, so a run stopped early still leaves the figures of the cases it finished.
            write_results(cfg, report(cfg, releases, results, skipped, {}, started, final=False))
        shutil.rmtree(WORK / "trash", ignore_errors=True)
        page_us["end"] = fresh_page_cost()
        out = report(cfg, releases, results, skipped, tool_versions(env), started, page_us=page_us)
        write_results(cfg, out)
        log(f"wrote {cfg.results}")
        return 1 if out["failed"] else 0
    finally:
        s3.stop()
        log("S3 server stopped")
        if cfg.keep:
            log(f"kept {WORK} (BENCH_KEEP=1)")
        else:
            shutil.rmtree(WORK, ignore_errors=True)
            log(f"removed {WORK}")


if __name__ == "__main__":
    raise SystemExit(main())
