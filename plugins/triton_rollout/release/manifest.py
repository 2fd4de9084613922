"""The release manifest: the contract between producers (CI, build pods) and the sync.

A release is complete only once ``manifest.json`` exists (it is written last). The manifest lists
every file with its size and sha256; files larger than one part also carry the sha256 of each
fixed-size part so parallel ranged downloads are verified as the bytes arrive, with no second read
pass. Validation fails closed: anything unexpected is an error naming the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from triton_rollout.errors import ConfigError, ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("engine", "checkpoint")
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 64 * 1024
# Bigger than any real release's manifest (100k files take ~15 MB) and small enough to hold in memory:
# fetch_manifest refuses a larger manifest.json before reading it.
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
# Sizes and versions are int64 on disk (file offsets) and in Triton (model versions).
_INT64_MAX = 2**63 - 1
# Linux's NAME_MAX and PATH_MAX, in bytes: longer paths fail with ENAMETOOLONG half-way through a sync.
_SEGMENT_MAX_BYTES = 255
_PATH_MAX_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
# Model names become directory names on the PVC and path segments in S3 keys.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HASH_BLOCK = 1024 * 1024


def parse_version(value: object, *, field_name: str = "version") -> int:
    """A positive integer without leading zeros: Triton ignores any other version directory name."""
    if isinstance(value, bool):
        raise ManifestError(f"must be a positive integer, got {value!r}", field=field_name)
    if isinstance(value, int):
        if not 0 < value <= _INT64_MAX:
            raise ManifestError(f"must be a positive integer up to 2^63-1, got {_show(value)}", field=field_name)
        return value
    if isinstance(value, str) and _VERSION.fullmatch(value) and int(value) <= _INT64_MAX:
        return int(value)
    raise ManifestError(
        f"must be a positive integer without leading zeros (Triton ignores other directory names), got {_show(value)}",
        field=field_name,
    )


def validate_name(value: object, *, field_name: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise ManifestError(
            f"must be 1-128 characters of letters, digits, '_', '.', '-' starting with a letter or digit, "
            f"got {_show(value)}",
            field=field_name,
        )
    return value


def _show(value: object, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters: a hostile manifest must not make a 10 MB error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def path_key(path: str) -> str:
    """The name a case- and normalization-insensitive filesystem (macOS, Windows, some NAS exports) sees:
    two paths with one key are one file there."""
    return unicodedata.normalize("NFC", path).casefold()


def validate_relpath(value: object, *, field_name: str = "files[].path") -> str:
    """A relative POSIX path that cannot escape the directory it is joined to."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"must be a non-empty string, got {_show(value)}", field=field_name)
    if "\x00" in value or "\\" in value:
        raise ManifestError(f"contains a NUL or backslash: {_show(value)}", field=field_name)
    if _CONTROL.search(value):
        raise ManifestError(f"contains a control character: {_show(value)}", field=field_name)
    if value.startswith("/"):
        raise ManifestError(f"must be relative, got absolute path {_show(value)}", field=field_name)
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(
            f"must not contain '..', '.' or empty segments (path traversal), got {_show(value)}", field=field_name
        )
    try:
        encoded = [p.encode() for p in parts]
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): no file can have that name
        raise ManifestError(f"is not valid Unicode: {_show(value)}", field=field_name) from None
    if sum(map(len, encoded)) + len(parts) - 1 > _PATH_MAX_BYTES or max(map(len, encoded)) > _SEGMENT_MAX_BYTES:
        raise ManifestError(
            f"is longer than the filesystem allows ({_SEGMENT_MAX_BYTES} bytes a name, {_PATH_MAX_BYTES} in all): "
            f"{_show(value)}", field=field_name,
        )
    if parts[-1] == MANIFEST_NAME and len(parts) == 1:
        raise ManifestError("must not be manifest.json itself", field=field_name)
    return value


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    part_size: int | None = None
    part_sha256: tuple[str, ...] = ()

    @property
    def triton_model(self) -> str:
        """The Triton model directory the file belongs to: the path's first segment."""
        return self.path.partition("/")[0]

    @property
    def path_in_model(self) -> str:
        """The rest of the path: where the file lies in its Triton model's version directory."""
        return self.path.partition("/")[2]

    @property
    def parts(self) -> list[tuple[int, int, str]]:
        """(offset, length, sha256) of each verified unit; a small file is one unit."""
        if not self.part_sha256:
            return [(0, self.size, self.sha256)]
        assert self.part_size is not None
        out = []
        for i, digest in enumerate(self.part_sha256):
            off = i * self.part_size
            out.append((off, min(self.part_size, self.size - off), digest))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.part_sha256:
            d["part_size"] = self.part_size
            d["part_sha256"] = list(self.part_sha256)
        return d


@dataclass(frozen=True)
class Compat:
    """Facts that tie an engine to its runtime: TensorRT-LLM version and GPU compute capability."""

    trtllm_version: str
    compute_capability: str
    tp_size: int = 1
    pp_size: int = 1
    dtype: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "trtllm_version": self.trtllm_version,
            "compute_capability": self.compute_capability,
            "tp_size": self.tp_size,
            "pp_size": self.pp_size,
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class Manifest:
    model: str
    version: int
    created_at: datetime
    kind: str
    source: str
    files: tuple[FileEntry, ...]
    compat: Compat | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def triton_models(self) -> list[str]:
        """Triton model directories in this release, sorted (each file's ``triton_model``)."""
        return sorted({f.triton_model for f in self.files})

    def require_servable(self) -> None:
        """An engine release maps onto Triton model directories: ``<triton_model>/<file>``."""
        if self.kind != "engine":
            raise ManifestError(
                f"release {self.model} v{self.version} is a '{self.kind}', not an engine",
                field="kind",
                hint="checkpoint releases are built into an engine release first (the build step)",
            )
        for f in self.files:
            if not f.path_in_model:
                raise ManifestError(
                    f"path {f.path!r} must start with its Triton model directory (<triton_model>/<file>)",
                    field="files[].path",
                )
            validate_name(f.triton_model, field_name=f"files[].path ({f.path!r}) Triton model directory")
            if f.path_in_model.split("/", 1)[0].isdigit():
                raise ManifestError(
                    f"path {f.path!r} holds a numeric directory under the model: release files are the "
                    "version's own files; the version number comes from the release",
                    field="files[].path",
                )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "model": self.model,
            "version": self.version,
            "created_at": format_time(self.created_at),
            "kind": self.kind,
            "source": self.source,
            "files": [f.to_dict() for f in self.files],
        }
        if self.compat is not None:
            d["compat"] = self.compat.to_dict()
        d.update(self.extra)
        return d

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n").encode()


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, *, field_name: str = "created_at") -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"must be an ISO-8601 UTC timestamp string, got {_show(value)}", field=field_name)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ManifestError(f"is not an ISO-8601 timestamp: {_show(value)}", field=field_name) from exc
    if t.tzinfo is None:
        raise ManifestError(f"must carry a UTC offset (e.g. 'Z'), got {_show(value)}", field=field_name)
    try:
        return t.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ManifestError(f"is out of range in UTC: {_show(value)}", field=field_name) from None


def _require(data: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ManifestError("is missing", field=key)
    value = data[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ManifestError(f"has the wrong type {type(value).__name__}", field=key)
    return value


def _parse_file(i: int, raw: object) -> FileEntry:
    where = f"files[{i}]"
    if not isinstance(raw, dict):
        raise ManifestError("must be an object", field=where)
    for key in ("path", "size", "sha256"):
        if key not in raw:
            raise ManifestError("is missing", field=f"{where}.{key}")
    path = validate_relpath(raw["path"], field_name=f"{where}.path")
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _INT64_MAX:
        raise ManifestError(f"must be an integer from 0 to 2^63-1, got {_show(size)}", field=f"{where}.size")
    sha = raw["sha256"]
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise ManifestError(f"must be 64 lowercase hex digits, got {_show(sha)}", field=f"{where}.sha256")
    part_size = raw.get("part_size")
    parts_raw = raw.get("part_sha256", [])
    if parts_raw:
        if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise ManifestError(
                f"must be an integer >= {MIN_PART_SIZE} when part_sha256 is given, got {_show(part_size)}",
                field=f"{where}.part_size",
            )
        expected = -(-size // part_size)
        if not isinstance(parts_raw, list) or len(parts_raw) != expected:
            raise ManifestError(
                f"must list {expected} part hashes for size {size} and part_size {part_size}",
                field=f"{where}.part_sha256",
            )
        for digest in parts_raw:
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ManifestError(f"holds a bad digest {_show(digest)}", field=f"{where}.part_sha256")
        return FileEntry(path, size, sha, part_size, tuple(parts_raw))
    return FileEntry(path, size, sha)


def parse_manifest(raw: bytes | str | dict[str, Any]) -> Manifest:
    """Parse and validate; every problem is a ManifestError naming the field."""
    if isinstance(raw, bytes | str):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"is not valid JSON: {exc}") from exc
        except RecursionError:  # the C decoder recurses per nesting level
            raise ManifestError("is nested too deeply to be a manifest") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise ManifestError("must be a JSON object")
    schema = _require(data, "schema_version", int)
    if schema != SCHEMA_VERSION:
        raise ManifestError(
            f"unknown schema version {schema}; this tool reads version {SCHEMA_VERSION}",
            field="schema_version",
            hint="upgrade triton_rollout, or publish with the schema this version reads",
        )
    model = validate_name(_require(data, "model", str), field_name="model")
    if "version" not in data:
        raise ManifestError("is missing", field="version")
    version = parse_version(data["version"])
    created_at = parse_time(_require(data, "created_at", str))
    kind = _require(data, "kind", str)
    if kind not in KINDS:
        raise ManifestError(f"must be one of {', '.join(KINDS)}, got {_show(kind)}", field="kind")
    source = _require(data, "source", str)
    files_raw = _require(data, "files", list)
    if not files_raw:
        raise ManifestError("must list at least one file", field="files")
    files = tuple(_parse_file(i, f) for i, f in enumerate(files_raw))
    seen: dict[str, str] = {}
    for f in files:
        # Paths that differ only by case or Unicode normalization (NFC/NFD) collide on some filesystems.
        key = path_key(f.path)
        if key in seen:
            twin = "" if seen[key] == f.path else f" (same file as {_show(seen[key])} on some filesystems)"
            raise ManifestError(f"duplicate path {_show(f.path)}{twin}", field="files[].path")
        seen[key] = f.path
    # A file that is also a directory prefix of another file cannot exist on disk.
    dirs = {"/".join(key.split("/")[:i]) for key in seen for i in range(1, key.count("/") + 1)}
    clash = sorted(dirs & seen.keys())
    if clash:
        raise ManifestError(f"path {_show(seen[clash[0]])} is both a file and a directory", field="files[].path")
    compat = None
    if "compat" in data and data["compat"] is not None:
        compat = parse_compat(data["compat"])
    known = {"schema_version", "model", "version", "created_at", "kind", "source", "files", "compat"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(model, version, created_at, kind, source, files, compat, schema, extra)


def parse_compat(raw: object) -> Compat:
    if not isinstance(raw, dict):
        raise ManifestError("must be an object", field="compat")
    for key in ("trtllm_version", "compute_capability"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ManifestError("must be a non-empty string", field=f"compat.{key}")
    sizes = {}
    for key in ("tp_size", "pp_size"):
        v = raw.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ManifestError(f"must be a positive integer, got {_show(v)}", field=f"compat.{key}")
        sizes[key] = v
    dtype = raw.get("dtype", "")
    if not isinstance(dtype, str):
        raise ManifestError("must be a string", field="compat.dtype")
    return Compat(raw["trtllm_version"], raw["compute_capability"], sizes["tp_size"], sizes["pp_size"], dtype)


def hash_file(path: Path, size: int, part_size: int) -> tuple[str, tuple[str, ...]]:
    """Whole-file sha256 and, when the file spans several parts, each part's sha256, in one read."""
    whole = hashlib.sha256()
    parts: list[str] = []
    part = hashlib.sha256()
    in_part = 0
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            want = min(len(buf), part_size - in_part)
            n = fh.readinto(view[:want])
            if not n:
                break
            chunk = view[:n]
            whole.update(chunk)
            part.update(chunk)
            in_part += n
            if in_part == part_size:
                parts.append(part.hexdigest())
                part = hashlib.sha256()
                in_part = 0
    if in_part:
        parts.append(part.hexdigest())
    if size <= part_size:
        return whole.hexdigest(), ()
    return whole.hexdigest(), tuple(parts)


def iter_release_files(src: Path) -> Iterator[tuple[str, Path]]:
    """Regular files under ``src`` as (relative posix path, absolute path), sorted.

    Refused, naming the path: symlinks (to files or directories: one could point out of ``src``, and
    os.walk would silently skip a linked directory), hard links (the same bytes are reachable, and
    changeable, from outside the release) and anything that is not a regular file (a FIFO would block
    the hashing forever).
    """
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(dirs + names):
            full = Path(root) / name
            rel = PurePosixPath(full.relative_to(src).as_posix())
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise ManifestError(f"{rel} is a symlink; releases hold regular files only", field="files[].path",
                                    hint="copy the file it points to into the release directory")
            if stat.S_ISDIR(st.st_mode) or str(rel) == MANIFEST_NAME:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ManifestError(f"{rel} is not a regular file (a FIFO, socket or device)", field="files[].path",
                                    hint="releases hold regular files only; remove it from the release directory")
            if st.st_nlink > 1:
                raise ManifestError(
                    f"{rel} is a hard link ({st.st_nlink} names for one file); releases hold files of their own",
                    field="files[].path", hint="copy it (cp without -l / --link) into the release directory",
                )
            yield str(rel), full


def build_manifest(
    src: Path,
    *,
    model: str,
    version: int,
    kind: str = "engine",
    source: str = "",
    created_at: datetime | None = None,
    compat: Compat | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Hash every file under ``src`` into a validated manifest."""
    if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
        # A zero part size would hash no bytes at all: every file would get the empty file's sha256.
        raise ConfigError(f"part size must be at least {MIN_PART_SIZE} bytes, got {part_size!r}",
                          hint="use the default (8 MiB), or --part-mib 1 or more")
    entries = []
    for rel, full in iter_release_files(src):
        size = full.stat().st_size
        sha, parts = hash_file(full, size, part_size)
        entries.append(FileEntry(rel, size, sha, part_size if parts else None, parts))
    manifest = Manifest(
        model=validate_name(model, field_name="model"),
        version=parse_version(version),
        created_at=(created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0),
        kind=kind,
        source=source,
        files=tuple(entries),
        compat=compat,
        extra=dict(extra or {}),
    )
    # Round-trip through the parser so a producer can never write what a consumer refuses.
    return parse_manifest(manifest.to_dict())
