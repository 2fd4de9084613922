"""Build an engine release from a checkpoint release: what the GPU build pod runs.

    checkpoint release (kind checkpoint, verified download)
      -> probe the runtime (TensorRT-LLM version, GPU compute capability, the image's layout) - fail fast,
         before the download
      -> the builder's steps, e.g. conversion then trtllm-build (subprocesses, output streamed to the log)
      -> lay out <triton_model>/... (tensorrt_llm/ = config.pbtxt + engine files; preprocessing,
         postprocessing with tokenizer files; ensemble), every config rendered from the builder's templates
         (TensorRT-LLM: the image's own) and checked
      -> publish_release(kind="engine", compat=...) - files first, manifest.json last; signed with the build
         pod's key when it has one ($TRITON_ROLLOUT_SIGNING_KEY_FILE, release/signing.py)

The backend-specific parts (probe, steps, model files, extra files, the dry-run's descriptions) come
from the spec's builder (build/builders.py); this module is the same for every backend.

A failed step raises BuildError carrying that step's exit code and the last lines of its output, so
the pod fails with the step's code. Re-running with the same ``--workdir`` reuses the verified
checkpoint files already downloaded; an engine release that already exists is left alone (releases are
immutable), which makes a retried task after a successful publish a no-op.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from triton_rollout.build.builders import BuildPaths, Step
from triton_rollout.build.spec import BuildSpec
from triton_rollout.build.templates import check_no_placeholders
from triton_rollout.errors import BuildError, ConfigError
from triton_rollout.release.manifest import Compat, Manifest
from triton_rollout.release.s3 import ReleaseUri, complete_release, fetch_manifest
from triton_rollout.release.signing import PublicKey, signing_key_from_env

log = logging.getLogger(__name__)

TAIL_LINES = 40


@dataclass
class BuildResult:
    release: str
    checkpoint: str
    status: str  # published | exists
    compat: dict[str, Any]
    files: int = 0
    bytes: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    signed_by: str | None = None  # the key id manifest.json was signed with (release/signing.py); None: unsigned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_output(ckpt: ReleaseUri, out: ReleaseUri) -> None:
    """The engine must carry the checkpoint's model and version, at another prefix."""
    if (out.model, out.version) != (ckpt.model, ckpt.version):
        raise ConfigError(
            f"--output {out} must be the same model and version as --checkpoint {ckpt} "
            f"(got {out.model} v{out.version} for {ckpt.model} v{ckpt.version})",
            hint=f"use the engine location of the checkpoint, e.g. {ckpt.engine_release()}",
        )
    if (out.bucket, out.key) == (ckpt.bucket, ckpt.key):
        raise ConfigError(f"--output {out} is the checkpoint release itself; engines go to another prefix",
                          hint=f"e.g. {ckpt.engine_release()}")


def default_workdir(release: ReleaseUri) -> Path:
    # SCRATCH_DIR is the build pod's node-local scratch volume (k8s_specs.build_pod).
    base = os.environ.get("SCRATCH_DIR") or tempfile.gettempdir()
    return Path(base) / f"triton-rollout-build-{release.model}-{release.version}"


# -- subprocesses --------------------------------------------------------------------------------------


def run_step(step: Step, *, tail_lines: int = TAIL_LINES, stream: TextIO | None = None) -> float:
    """Run one step, streaming its output line by line to the log; BuildError with its exit code on failure."""
    out = stream or sys.stderr
    log.info("step %s: %s", step.name, step.shell())
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(step.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
    except OSError as exc:
        err = BuildError(f"build step {step.name!r} could not start {step.argv[0]!r}: {exc.strerror}",
                         hint="check the build image (python, trtllm-build, the examples dir) and the spec's "
                              "python / trtllm_build / examples_dir fields; nothing was published")
        err.exit_code = 127  # the shell's "command not found"
        raise err from None
    tail: deque[str] = deque(maxlen=tail_lines)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        print(f"[{step.name}] {line}", file=out, flush=True)
    rc = proc.wait()
    seconds = time.monotonic() - started
    if rc != 0:
        code = rc if rc > 0 else 128 - rc  # killed by a signal: the shell's 128 + signal number
        shown = "\n".join(f"    {t}" for t in tail) or "    (no output)"
        err = BuildError(f"build step {step.name!r} failed with exit code {rc} after {seconds:.1f}s: "
                         f"{step.shell()}\n  last {len(tail)} lines of its output:\n{shown}")
        err.exit_code = code
        raise err
    log.info("step %s finished in %.1fs", step.name, seconds)
    return seconds


# -- release layout --------------------------------------------------------------------------------------


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def _tokenizer_files(spec: BuildSpec, checkpoint: Path) -> list[Path]:
    found = sorted(p for p in checkpoint.iterdir()
                   if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in spec.tokenizer_files))
    if not found:
        raise BuildError(f"the checkpoint has no tokenizer files matching {list(spec.tokenizer_files)} "
                         f"at its top level ({checkpoint})",
                         hint="publish the tokenizer with the checkpoint, or set the spec's tokenizer_files")
    return found


def assemble_release(spec: BuildSpec, paths: BuildPaths, version: int) -> dict[str, str]:
    """Lay out <triton_model>/... under paths.release; returns the rendered configs by Triton model."""
    if paths.release.exists():
        shutil.rmtree(paths.release)
    builder = spec.builder
    files = builder.model_files(spec, paths)
    configs = spec.render_configs(version, files)
    for name, text in configs.items():
        check_no_placeholders(text, source=f"{name}/config.pbtxt")
        dest = paths.release / name / "config.pbtxt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    for name, src in files.code.items():
        _copy(src, paths.release / name / "model.py")
    engine_files = sorted(p for p in paths.engine.rglob("*") if p.is_file()) if paths.engine.is_dir() else []
    if not engine_files:
        raise BuildError(f"the engine build produced no files in {paths.engine}",
                         hint="read the build step's output above")
    for f in engine_files:
        _copy(f, paths.release / "tensorrt_llm" / f.relative_to(paths.engine))
    for f in _tokenizer_files(spec, paths.checkpoint):
        for name in ("preprocessing", "postprocessing"):
            _copy(f, paths.release / name / builder.tokenizer_dir / f.name)
    builder.write_extras(spec, paths)
    return configs


# -- the build -------------------------------------------------------------------------------------------


def plan_text(spec: BuildSpec, checkpoint: ReleaseUri, output: ReleaseUri, paths: BuildPaths) -> str:
    """What the build would run and write, exactly; --dry-run prints it and touches nothing."""
    builder = spec.builder
    lines = [f"build plan for {checkpoint} -> {output} (backend {spec.backend}, family {spec.family}, "
             f"{spec.gpus} GPU(s))",
             f"download: {checkpoint} (kind checkpoint, every file verified against its sha256) -> {paths.checkpoint}",
             *builder.describe_probe(spec)]
    for step in spec.commands(paths):
        lines.append(f"run [{step.name}]: {step.shell()}")
    lines.append(f"write: {paths.release}/tensorrt_llm/<every file of {paths.engine}>")
    tok = f"{builder.tokenizer_dir}/" if builder.tokenizer_dir else ""
    lines.append(f"write: {paths.release}/{{preprocessing,postprocessing}}/{tok}<checkpoint files matching "
                 f"{list(spec.tokenizer_files)}>")
    lines.extend(builder.describe_layout(spec, paths, output.version))
    lines.append(f"publish: {paths.release} -> {output} (kind engine, manifest.json last) with compat "
                 f"trtllm_version=<probed>, compute_capability=<probed>, tp_size={spec.tp_size}, "
                 f"pp_size={spec.pp_size}, dtype={spec.dtype}")
    return "\n".join(lines) + "\n"


def checkpoint_manifest(checkpoint: ReleaseUri, trusted_keys: Sequence[PublicKey] = ()) -> Manifest:
    """The checkpoint release's manifest, signed by one of ``trusted_keys`` when any are given (SignatureError,
    exit 17, otherwise): checked before the build probes the GPU or downloads a byte, as a sync checks an engine."""
    manifest = fetch_manifest(checkpoint, trusted_keys=trusted_keys)
    if manifest.kind != "checkpoint":
        raise BuildError(f"{checkpoint} is a '{manifest.kind}' release, not a checkpoint",
                         hint="point --checkpoint at the checkpoint release (kind checkpoint); engine releases "
                              "are synced, not built")
    return manifest


def download_checkpoint(checkpoint: ReleaseUri, manifest: Manifest, dest: Path, *, concurrency: int = 8) -> int:
    """The checkpoint release (``manifest``, from ``checkpoint_manifest``) into ``dest``, every byte verified
    (the sync's download engine)."""
    from triton_rollout.pvc.layout import safe_join
    from triton_rollout.release.manifest import validate_relpath
    from triton_rollout.release.transfer import Downloader, FileTask

    dest.mkdir(parents=True, exist_ok=True)
    tasks = [FileTask(e, checkpoint.file_key(e.path), safe_join(dest, validate_relpath(e.path)))
             for e in manifest.files]
    stats = Downloader(checkpoint.bucket, concurrency=concurrency).run(tasks)
    log.info("checkpoint %s: %d files / %d bytes downloaded and verified, %d already present", checkpoint,
             stats.files_transferred, manifest.total_size, stats.files_skipped)
    return manifest.total_size


def run_build(spec: BuildSpec, checkpoint: ReleaseUri, output: ReleaseUri, *, workdir: str | Path | None = None,
              dry_run: bool = False, out: TextIO | None = None,
              trusted_keys: Sequence[PublicKey] = ()) -> BuildResult | None:
    """The whole build; None on a dry run (after printing the plan to ``out``). ``trusted_keys``: the model's
    signing keys; the checkpoint must be signed by one of them (none: unsigned checkpoints are built)."""
    check_output(checkpoint, output)
    paths = BuildPaths(Path(workdir) if workdir else default_workdir(output))
    if dry_run:
        print(plan_text(spec, checkpoint, output, paths), file=out or sys.stdout, end="", flush=True)
        return None
    started = time.monotonic()
    existing = complete_release(output)
    if existing is not None:
        log.warning("engine release %s already exists (releases are immutable); nothing to build", output)
        return BuildResult(str(output), str(checkpoint), "exists",
                           existing.compat.to_dict() if existing.compat else {}, len(existing.files),
                           existing.total_size, seconds=round(time.monotonic() - started, 3))
    # The build pod's key (mounted from models[].signing.build_key_secret): loaded before any work, so a bad
    # key fails the build at once instead of after it. Without one the engine is published unsigned, and a
    # model that requires signatures refuses it at the sync.
    signing_key = signing_key_from_env()
    checkpoint_files = checkpoint_manifest(checkpoint, trusted_keys)
    runtime = spec.builder.probe(spec)
    log.info("build runtime: TensorRT-LLM %s, compute capability %s", runtime.trtllm_version,
             runtime.compute_capability)
    download_checkpoint(checkpoint, checkpoint_files, paths.checkpoint)
    for stale in (paths.converted, paths.engine, paths.release):
        if stale.exists():
            shutil.rmtree(stale)  # a previous attempt's half-written output must not leak into this one
    steps = []
    for step in spec.commands(paths):
        steps.append({"name": step.name, "seconds": round(run_step(step), 3)})
    assemble_release(spec, paths, output.version)
    compat = Compat(trtllm_version=runtime.trtllm_version, compute_capability=runtime.compute_capability,
                    tp_size=spec.tp_size, pp_size=spec.pp_size, dtype=spec.dtype)
    from triton_rollout.release.publish import publish_release

    engine = publish_release(
        paths.release, output, kind="engine", compat=compat,
        source=f"triton_rollout build from {checkpoint} ({spec.backend}, {spec.family})",
        extra={"build": {"checkpoint": str(checkpoint), "spec": spec.to_dict()}}, signing_key=signing_key,
    )
    return BuildResult(str(output), str(checkpoint), "published", compat.to_dict(), len(engine.files),
                       engine.total_size, steps, round(time.monotonic() - started, 3),
                       signing_key.public_key.key_id if signing_key else None)
