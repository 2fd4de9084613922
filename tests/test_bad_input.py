"""Bad input: the manifest parser, the models config loader, config.pbtxt handling and the CLI fail only with
the project's own errors (a message naming the field, an exit code) and never write outside the PVC.

Property tests use hypothesis with ``derandomize=True`` and no example database (``database=None``): every run,
here and in CI, tries the same examples, so a failure reproduces from the test name alone. Example counts are
bounded per test (``BOUNDED``) so the file's fast part runs in well under a minute on two busy cores.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import io
import json
import os
import shutil
import socket
import string
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from triton_rollout.cli.main import main
from triton_rollout.config.loader import read_config_file
from triton_rollout.errors import ConfigError, IntegrityError, ManifestError, RolloutError, TransferError
from triton_rollout.pvc.layout import PvcLayout, safe_join
from triton_rollout.pvc.records import FileStat, PublishRecord
from triton_rollout.release.manifest import (
    MANIFEST_MAX_BYTES,
    SCHEMA_VERSION,
    build_manifest,
    iter_release_files,
    parse_manifest,
    validate_relpath,
)
from triton_rollout.release.publish import publish_release
from triton_rollout.release.s3 import ObjectReader, ObjectSigner, ReleaseUri, S3Access, fetch_manifest
from triton_rollout.release.sync import sync_release
from triton_rollout.triton.config import ModelConfigError, read_config, validate_version

from tests.chaos.ledger import counted_in
from tests.helpers import make_release_dir, tree_digest

# Reproducible (derandomize, no database) and bounded; the deadline is generous for two shared cores.
BOUNDED = settings(derandomize=True, database=None, max_examples=300, deadline=2000,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SHA = "b" * 64


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "model": "llm", "version": 1, "created_at": "2026-01-01T00:00:00Z",
        "kind": "engine", "source": "ci",
        "files": [{"path": "llm/config.pbtxt", "size": 10, "sha256": SHA},
                  {"path": "llm/rank0.engine", "size": 200_000, "sha256": SHA, "part_size": 65536,
                   "part_sha256": [SHA] * 4}],
        "compat": {"trtllm_version": "0.17.0", "compute_capability": "9.0", "tp_size": 1, "pp_size": 1,
                   "dtype": "float16"},
    }
    doc.update(over)
    return doc


# -- strategies ------------------------------------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False) | st.text(max_size=40))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
# Path forms that break naive joins: traversal, absolute, Windows separators, NUL, control characters, lone
# surrogates, names over NAME_MAX, and the Unicode normalization twins.
HOSTILE_SEGMENTS = st.sampled_from([
    "..", ".", "", "/", "\\", "..\\..", "\x00", "a\nb", "\x7f", "\ud800", "\udcff", "C:", "~", "$HOME", "a" * 256,
    "é" * 128, "\u00e9", "e\u0301", "\u212b", "\u00c5", "A\u030a", "manifest.json", "\u202e", " ", "CON", "\uffff",
])
HOSTILE_PATHS = st.one_of(
    st.lists(HOSTILE_SEGMENTS | st.text(max_size=8), min_size=1, max_size=5).map("/".join),
    st.lists(HOSTILE_SEGMENTS, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.text(max_size=300),
)


def _mutations() -> st.SearchStrategy[tuple[tuple[Any, ...], str, Any]]:
    """(location in the document, field name the error must mention, new value or DELETE)."""
    top = st.sampled_from(["schema_version", "model", "version", "created_at", "kind", "source", "files", "compat"])
    file_key = st.sampled_from(["path", "size", "sha256", "part_size", "part_sha256"])
    compat_key = st.sampled_from(["trtllm_version", "compute_capability", "tp_size", "pp_size", "dtype"])
    value = st.one_of(
        st.just(DELETE), JSON,
        st.sampled_from([-1, 0, 2**63, 2**64, 10**30, "1" * 5000, "01", True, 1.5, float("inf"), "9" * 19,
                         "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-01-01T00:00:00",
                         SHA + "\n", SHA.upper(), "llm\n", "a" * 129, [], {}, [SHA] * 3]),
        HOSTILE_PATHS,
    )
    return st.one_of(
        st.tuples(top.map(lambda k: (k,)), value).map(lambda t: (t[0], t[0][0], t[1])),
        st.tuples(st.integers(0, 1), file_key, value).map(lambda t: (("files", t[0], t[1]), t[1], t[2])),
        st.tuples(compat_key, value).map(lambda t: (("compat", t[0]), t[0], t[1])),
    )


DELETE = object()


def _apply(doc: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for step in where[:-1]:
        node = node[step]
    if value is DELETE:
        node.pop(where[-1], None)
    else:
        node[where[-1]] = value
    return out


def _check_accepted(m: Any) -> None:
    """What an accepted manifest guarantees downstream: every path joins under a root and is a real file name."""
    root = Path("/pvc/staging/llm/1")
    keys = set()
    for f in m.files:
        joined = safe_join(root, f.path)
        assert joined.is_relative_to(root) and ".." not in joined.parts
        f.path.encode()  # encodable: a file can have this name
        assert all(len(seg.encode()) <= 255 for seg in f.path.split("/"))
        assert not any(ord(c) < 32 for c in f.path)
        keys.add(unicodedata.normalize("NFC", f.path).casefold())
        assert 0 <= f.size < 2**63
    assert len(keys) == len(m.files)
    assert 0 < m.version < 2**63


# -- the faults table (tests/chaos/ledger.py): each example tried is an injection, each that held survived ---

MANIFEST = ("manifest.json: arbitrary and mutated JSON, hand-written cases, 100k files, 500 MB",
            "ManifestError naming the field (exit 3), nothing written")
PATHS = ("paths: .., absolute, unicode, backslashes, NUL; symlinks, hard links and FIFOs in a release or the PVC",
         "refused naming the path; nothing written outside the PVC")
RELEASES = ("releases: sizes that lie, empty files, 100k files, tiny part sizes",
            "IntegrityError / ConfigError, nothing visible; empty and 100k-file releases work")
MODELS_YAML = ("models.yaml: mutated fields, arbitrary text, billion laughs, bad encodings",
               "ConfigError naming the field (exit 2)")
PBTXT = ("config.pbtxt: random bytes, unreadable file", "ModelConfigError naming the file")
CLI = ("CLI arguments: fuzzed argv, bad values, unreachable S3", "usage error or the project's exit code")
NAMES = ("names with a trailing newline (bucket, resource, build word, version dir)", "ConfigError / ModelConfigError")


def counted(kind: tuple[str, str]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    fault, behaviour = kind
    return counted_in("Bad input", fault, injected_how="property tests (hypothesis) and hand-written cases",
                      behaviour=behaviour)


# -- the manifest parser -----------------------------------------------------------------------------------


@BOUNDED
@given(JSON)
@counted(MANIFEST)
def test_arbitrary_json_gives_only_manifest_errors(data: Any) -> None:
    for raw in (data, json.dumps(data)):
        try:
            _check_accepted(parse_manifest(raw))
        except ManifestError as exc:
            assert exc.message.startswith("manifest")


@settings(BOUNDED, max_examples=600)
@given(_mutations())
@counted(MANIFEST)
def test_mutated_manifest_errors_name_the_field(mutation: tuple[tuple[Any, ...], str, Any]) -> None:
    where, name, value = mutation
    doc = _apply(_doc(), where, value)
    try:
        m = parse_manifest(json.dumps(doc))
    except ManifestError as exc:
        # The field named is the one changed, or (a changed path) the path check over all files.
        assert exc.field is not None and (name in exc.field or (name == "path" and exc.field == "files[].path")
                                          or (where[0] == "files" and exc.field.startswith("files"))), exc
        assert len(exc.message) < 600, "hostile values are shown cut short"
    except ValueError:
        # Only json.dumps itself may refuse (e.g. inf is no JSON); the dict form must still be ours.
        with contextlib.suppress(ManifestError):
            _check_accepted(parse_manifest(doc))
    else:
        _check_accepted(m)


@BOUNDED
@given(HOSTILE_PATHS)
@counted(PATHS)
def test_hostile_paths_never_escape(path: str) -> None:
    try:
        validate_relpath(path)
    except ManifestError as exc:
        assert exc.field == "files[].path"
        return
    root = Path("/pvc/staging")
    assert safe_join(root, path).is_relative_to(root)
    assert ".." not in path.split("/") and not path.startswith("/") and "\\" not in path
    # And a file can have the name: encodable, within NAME_MAX, no control characters.
    assert all(0 < len(seg.encode()) <= 255 for seg in path.split("/"))
    assert not any(ord(c) < 32 or ord(c) == 127 for c in path)


@pytest.mark.parametrize(("raw", "field", "text"), [
    ("[" * 100_000, None, "nested too deeply"),
    ('{"a":' * 100_000, None, "nested too deeply"),
    (json.dumps(_doc(version="1" * 5000)), "version", "positive integer"),
    (json.dumps(_doc(version=2**63)), "version", "2^63-1"),
    (json.dumps(_doc(created_at="0001-01-01T00:00:00+01:00")), "created_at", "out of range"),
    (json.dumps(_doc(model="llm\n")), "model", "letters, digits"),
    (json.dumps(_doc(files=[{"path": "llm/a", "size": 1, "sha256": SHA + "\n"}])), "files[0].sha256", "hex"),
    (json.dumps(_doc(files=[{"path": "llm/a", "size": 2**64, "sha256": SHA}])), "files[0].size", "2^63-1"),
    ('{"schema_version":1,"model":"llm","version":1,"created_at":"2026-01-01T00:00:00Z","kind":"engine",'
     '"source":"","files":[{"path":"llm/\\ud800","size":1,"sha256":"' + SHA + '"}]}', "files[0].path", "Unicode"),
    (json.dumps(_doc(files=[{"path": "llm/" + "a" * 256, "size": 1, "sha256": SHA}])), "files[0].path", "255"),
    (json.dumps(_doc(files=[{"path": "/".join(["llm"] + ["d" * 200] * 21), "size": 1, "sha256": SHA}])),
     "files[0].path", "4096"),
    (json.dumps(_doc(files=[{"path": "llm/a\nb", "size": 1, "sha256": SHA}])), "files[0].path", "control"),
    (json.dumps(_doc(files=[{"path": "llm/caf\u00e9", "size": 1, "sha256": SHA},
                            {"path": "llm/cafe\u0301", "size": 1, "sha256": SHA}])), "files[].path", "same file"),
    (json.dumps(_doc(files=[{"path": "llm/Dir", "size": 1, "sha256": SHA},
                            {"path": "llm/dir/x", "size": 1, "sha256": SHA}])), "files[].path", "file and a dir"),
    (json.dumps(_doc(source="x" * 10_000_000, kind="z" * 1_000_000)), "kind", "characters)"),
])
@counted(MANIFEST)
def test_hand_written_bad_manifests(raw: str, field: str | None, text: str) -> None:
    """Each of these raised KeyError/ValueError/OverflowError/RecursionError, or was accepted, before."""
    with pytest.raises(ManifestError, match=None) as info:
        parse_manifest(raw)
    assert info.value.field == field and text in info.value.message, info.value
    assert len(info.value.message) < 600


@counted(MANIFEST)
def test_100k_file_manifest_parses() -> None:
    """Linear in the number of files: 100k synthetic entries parse (no timing asserted: shared CI cores)."""
    files = [{"path": f"llm/d{i % 100:02d}/f{i:06d}.bin", "size": i, "sha256": SHA} for i in range(100_000)]
    body = json.dumps(_doc(files=files)).encode()
    assert len(body) < MANIFEST_MAX_BYTES, "100k files fit well under the manifest cap"
    m = parse_manifest(body)
    assert len(m.files) == 100_000 and m.files[-1].path == "llm/d99/f099999.bin"
    assert m.total_size == sum(range(100_000))


# -- releases on disk: symlinks, hard links, special files, empty files ----------------------------------


def _release(tmp_path: Path) -> Path:
    return make_release_dir(tmp_path / "src", small=3)


@pytest.mark.parametrize("kind", ["file symlink", "dir symlink out", "hard link", "fifo", "hard link in"])
@counted(PATHS)
def test_publish_refuses_links_and_special_files(tmp_path: Path, kind: str, s3_client, bucket: str) -> None:  # type: ignore[no-untyped-def]
    src = _release(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not part of the release")
    bad = src / "llm" / "tokenizer" / "extra"
    if kind == "file symlink":
        bad.symlink_to(outside / "secret")
    elif kind == "dir symlink out":
        bad.symlink_to(outside, target_is_directory=True)  # os.walk used to skip it without a word
    elif kind == "hard link":
        os.link(outside / "secret", bad)
    elif kind == "hard link in":
        os.link(src / "llm" / "config.pbtxt", bad)
    else:
        os.mkfifo(bad)  # hashing it used to block forever
    with pytest.raises(ManifestError) as info:
        publish_release(src, f"s3://{bucket}/prod/llm/1")
    # The first of the two names in walk order; for the others, the odd entry itself.
    named = "llm/config.pbtxt" if kind == "hard link in" else "llm/tokenizer/extra"
    assert named in info.value.message and info.value.field == "files[].path"
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0, "nothing was uploaded"


@counted(RELEASES)
def test_iter_release_files_lists_plain_trees(tmp_path: Path) -> None:
    src = _release(tmp_path)
    (src / "llm" / "empty.bin").write_bytes(b"")
    rels = [rel for rel, _ in iter_release_files(src)]
    assert rels == sorted(rels) and "llm/empty.bin" in rels and "llm/config.pbtxt" in rels


@pytest.mark.parametrize("part_size", [0, -1, 1024])
@counted(RELEASES)
def test_build_manifest_refuses_tiny_part_sizes(tmp_path: Path, part_size: int) -> None:
    """``publish --part-mib 0`` used to hash no bytes: every file got the empty file's sha256."""
    with pytest.raises(ConfigError, match="part size"):
        build_manifest(_release(tmp_path), model="llm", version=1, part_size=part_size)


@counted(RELEASES)
def test_empty_files_publish_and_sync(tmp_path: Path, bucket: str, pvc: Path) -> None:
    src = _release(tmp_path)
    (src / "llm" / "empty.bin").write_bytes(b"")
    (src / "llm" / "tokenizer" / "also-empty").write_bytes(b"")
    uri = f"s3://{bucket}/prod/llm/1"
    publish_release(src, uri, part_size=65536)
    for mode in ("mmap", "pwrite"):
        sync_release(uri, tmp_path / f"pvc-{mode}", write_mode=mode)
        assert tree_digest(tmp_path / f"pvc-{mode}" / "repository" / "llm" / "1") == tree_digest(src / "llm")
        assert (tmp_path / f"pvc-{mode}" / "repository" / "llm" / "1" / "empty.bin").stat().st_size == 0


@pytest.mark.slow
@counted(RELEASES)
def test_100k_file_release_builds(tmp_path: Path) -> None:
    """100k real (empty) files: build_manifest hashes, round-trips and stays linear (completes in the timeout)."""
    src = tmp_path / "big"
    for d in range(100):
        folder = src / "llm" / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"f{i:04d}").touch()
    m = build_manifest(src, model="llm", version=1)
    assert len(m.files) == 100_000 and m.total_size == 0
    assert parse_manifest(m.to_json()).files == m.files


# -- sizes that lie ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "delta"), [("tokenizer/f0001.json", 1), ("tokenizer/f0001.json", -1),
                                              ("rank0.engine", 1), ("rank0.engine", -1)])
@counted(RELEASES)
def test_sizes_that_lie_publish_nothing(tmp_path: Path, bucket: str, pvc: Path, s3_client,  # type: ignore[no-untyped-def]
                                        name: str, delta: int) -> None:
    src = make_release_dir(tmp_path / "src", small=3, big_mib=2)
    uri = f"s3://{bucket}/prod/llm/1"
    publish_release(src, uri, part_size=1024 * 1024)
    body = (src / "llm" / name).read_bytes()
    lied = body + b"x" if delta > 0 else body[:-1]
    s3_client.put_object(Bucket=bucket, Key=f"prod/llm/1/llm/{name}", Body=lied)
    with pytest.raises(IntegrityError) as info:
        sync_release(uri, pvc)
    assert f"llm/{name}" in str(info.value)
    assert list((pvc / "repository").iterdir()) == [], "nothing visible in repository/"
    assert not (pvc / "staging" / "llm").exists(), "staging cleaned"


# -- never write outside the PVC ------------------------------------------------------------------------------


def _files_outside(tmp_path: Path, pvc: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if not p.is_relative_to(pvc)}


@pytest.mark.parametrize("path", ["../x", "/etc/x", "llm/../../x", "llm/..", "llm\\..\\..\\x", "llm/./x",
                                  "llm//x", "llm/x\x00y", "llm/" + "x" * 300])
@counted(PATHS)
def test_escaping_manifest_paths_write_nothing(tmp_path: Path, bucket: str, pvc: Path, s3_client,  # type: ignore[no-untyped-def]
                                               path: str) -> None:
    doc = _doc(files=[{"path": "llm/config.pbtxt", "size": 1, "sha256": SHA}, {"path": path, "size": 1,
                                                                             "sha256": SHA}])
    del doc["compat"]
    s3_client.put_object(Bucket=bucket, Key="prod/llm/1/manifest.json", Body=json.dumps(doc).encode())
    before = _files_outside(tmp_path, pvc)
    with pytest.raises(ManifestError) as info:
        sync_release(f"s3://{bucket}/prod/llm/1", pvc)
    assert info.value.field == "files[1].path"
    assert _files_outside(tmp_path, pvc) == before
    assert not list(pvc.rglob("*")), "refused before the PVC was even laid out"


@pytest.mark.parametrize("plant", ["dir link", "partial link", "staging model link", "repository model link"])
@counted(PATHS)
def test_symlinks_planted_in_the_pvc_are_refused(tmp_path: Path, bucket: str, pvc: Path, plant: str) -> None:
    """A symlink left in staging (or repository/<model>) by an earlier run or a person: the sync used to write,
    and then publish, through it."""
    src = make_release_dir(tmp_path / "src", small=3)
    uri = f"s3://{bucket}/prod/llm/1"
    publish_release(src, uri)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep me")
    layout = PvcLayout.at(pvc)
    staged = layout.staging_release("llm", 1) / "llm"
    if plant == "dir link":
        staged.mkdir(parents=True)
        (staged / "tokenizer").symlink_to(outside, target_is_directory=True)
    elif plant == "partial link":
        (staged / "tokenizer").mkdir(parents=True)
        (staged / "tokenizer" / "f0001.json.partial").symlink_to(victim)
    elif plant == "staging model link":
        (layout.staging / "llm").symlink_to(outside, target_is_directory=True)
    else:
        layout.model_dir("llm").symlink_to(outside, target_is_directory=True)
    with pytest.raises(IntegrityError, match="is a symlink") as info:
        sync_release(uri, pvc)
    assert "remove" in info.value.hint
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and victim.read_text() == "keep me"
    assert not layout.version_dir("llm", 1).exists() or plant == "repository model link"


# -- the manifest size cap -------------------------------------------------------------------------------------


class _HugeManifest(http.server.BaseHTTPRequestHandler):
    """Answers any GET with a valid-JSON manifest of 500 MB made on the fly (never held in memory), with a
    Content-Length or chunked; counts what it managed to send. A stand-in for an S3 object too large to upload
    here (SeaweedFS sends a Content-Length, as S3 does; the chunked case is the stricter one)."""

    protocol_version = "HTTP/1.1"
    size = 500 * 1024 * 1024
    chunked = False
    sent = 0

    def do_GET(self) -> None:
        head, tail = b'{"pad": "', b'"}'
        self.send_response(200)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(self.size))
        self.end_headers()
        block = b"a" * (1024 * 1024)
        try:
            self._write(head)
            for _ in range((self.size - len(head) - len(tail)) // len(block)):
                self._write(block)
            self._write(tail)
            if self.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up: the point of the test

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self.chunked else data)
        type(self).sent += len(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _huge_server(chunked: bool) -> Iterator[tuple[str, type[_HugeManifest]]]:
    handler = type("Handler", (_HugeManifest,), {"chunked": chunked, "sent": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("chunked", [False, True])
@counted(MANIFEST)
def test_500mb_manifest_is_refused_without_reading_it(chunked: bool) -> None:
    with _huge_server(chunked) as (endpoint, handler):
        signer = ObjectSigner(S3Access(endpoint_url=endpoint, credentials=("k", "s", None), region="us-east-1"))
        reader = ObjectReader("bucket", signer=signer, timeout=10)
        with pytest.raises(ManifestError) as info:
            fetch_manifest(ReleaseUri.parse("s3://bucket/prod/llm/1"), reader)
        reader.drop()
    assert f"{MANIFEST_MAX_BYTES}-byte limit" in info.value.message
    if not chunked:
        assert str(handler.size) in info.value.message, "the error names the size"
    # By Content-Length: refused before reading the body (only what socket buffers took was sent). Chunked:
    # read up to one byte past the cap, then hung up. The margin is what loopback socket buffers can hold on
    # both ends once autotuned (net.ipv4.tcp_rmem / tcp_wmem maxima, 6 + 4 MiB by default, doubled by the
    # kernel's bookkeeping): 8 MiB was exceeded once under load (75.5 MB sent, chunked), out of 500 MB.
    assert handler.sent < (MANIFEST_MAX_BYTES if chunked else 0) + 24 * 1024 * 1024


@pytest.mark.slow
@counted(MANIFEST)
def test_manifest_over_the_cap_in_real_s3(bucket: str, s3_client, pvc: Path) -> None:  # type: ignore[no-untyped-def]
    """The real store: valid JSON one byte over the cap (64 MiB of padding) is refused; nothing reaches the PVC."""
    body = json.dumps(_doc()).encode()
    pad = MANIFEST_MAX_BYTES + 1 - len(body) - len(b', "pad": ""')
    body = body[:-1] + b', "pad": "' + b"a" * pad + b'"}'
    assert len(body) == MANIFEST_MAX_BYTES + 1 and json.loads(body)
    s3_client.put_object(Bucket=bucket, Key="prod/llm/1/manifest.json", Body=body)
    with pytest.raises(ManifestError, match=f"is {MANIFEST_MAX_BYTES + 1} bytes, over the {MANIFEST_MAX_BYTES}"):
        sync_release(f"s3://{bucket}/prod/llm/1", pvc)
    assert not list(pvc.iterdir())


# -- the models config file -------------------------------------------------------------------------------------

VALID_CONFIG: dict[str, Any] = {
    "defaults": {"release_prefix": "s3://bkt/releases", "triton_url": "http://127.0.0.1:1"},
    "models": [{"name": "llm", "keep": 2}],
}
CONFIG_VALUES = st.one_of(
    JSON, st.dates(), st.sampled_from([None, True, -1, 10**30, "", "${UNSET_VAR_FOR_TEST}", "a\n", "llm\n",
                                       "s3://bkt/../x", "http://", [], {}, {1: 2}, {None: "x"}, {True: 1}]))
CONFIG_KEYS = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans(),
                        st.sampled_from(["name", "keep", "release_prefix", "triton_url", "schedule", "kubernetes",
                                         "smoke", "sensor", "reconcile", "defaults", "models", "serving", "build"]))


def _config_mutations() -> st.SearchStrategy[tuple[tuple[Any, ...], Any]]:
    return st.one_of(
        st.tuples(st.tuples(CONFIG_KEYS), CONFIG_VALUES),
        st.tuples(st.tuples(st.just("defaults"), CONFIG_KEYS), CONFIG_VALUES),
        st.tuples(st.tuples(st.just("models"), st.just(0), CONFIG_KEYS), CONFIG_VALUES),
    )


def _expect_config_error(path: Path, fields: tuple[str, ...] = ()) -> None:
    """Loading ``path`` succeeds or raises a ConfigError naming the file and (``fields``) one of these fields."""
    try:
        read_config_file(path, environ={})
    except ConfigError as exc:
        assert str(path) in exc.message, exc
        if fields and "config field '" in exc.message:
            assert any(f in exc.message for f in fields), exc


@settings(BOUNDED, max_examples=400)
@given(st.lists(_config_mutations(), min_size=1, max_size=3))
@counted(MODELS_YAML)
def test_mutated_models_config_gives_config_errors_naming_the_field(
        tmp_path_factory: pytest.TempPathFactory, mutations: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(VALID_CONFIG)
    names = []
    for where, value in mutations:
        node: Any = doc
        for step in where[:-1]:  # an earlier mutation may have replaced the section this one goes into
            ok = (isinstance(node, dict) and step in node) or (isinstance(node, list) and step < len(node))
            node = node[step] if ok else None
        if isinstance(node, dict):
            node[where[-1]] = value
            # The field itself, else its section (<root>, defaults, or models[0] that defaults merge into).
            names += [str(where[-1]), {1: "<root>", 2: str(where[0]), 3: "models[0]"}[len(where)], "models[0]"]
    path = tmp_path_factory.mktemp("cfg") / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    _expect_config_error(path, tuple(names))


@BOUNDED
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(["models:", "- ", "name: ", "{", "[", "&a ", "*a ", "!!python/object ",
                                           "defaults:", "\n", "  ", ":", "? ", "\t", "%YAML 1.1\n", "---\n"]),
                          max_size=30).map("".join)))
@counted(MODELS_YAML)
def test_arbitrary_yaml_text_gives_config_errors(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "models.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _expect_config_error(path)


# Nine levels of ten aliases: 10^9 values from 10 lines (expanding it used to take minutes at DAG parse).
BILLION_LAUGHS = b"l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n".encode() for i in range(1, 9)
) + b"models: [{name: llm, release_prefix: 's3://bkt/p', smoke: *l8}]\n"


@pytest.mark.parametrize(("name", "body"), [
    ("models.yaml", b"\xff\xfe not utf-8"),
    ("models.json", b"\xff\xfe"),
    ("models.yaml", b"[" * 100_000),
    ("models.json", b"[" * 100_000),
    ("models.yaml", b"models:\n  - {name: llm}\n1: x\nnull: y\n"),
    ("models.yaml", b"models: [{name: \"llm\\n\", release_prefix: \"s3://bkt/p\"}]\n"),
    ("models.yaml", BILLION_LAUGHS),
    ("models.json", b'{"models": [{"name": "llm", "release_prefix": "s3://bkt/p", "smoke": ' + b"[" * 900
     + b"]" * 900 + b"}]}"),
])
@counted(MODELS_YAML)
def test_hand_written_bad_config_files(tmp_path: Path, name: str, body: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        read_config_file(path, environ={})
    assert str(path) in info.value.message


@counted(MODELS_YAML)
def test_cli_reading_a_bad_config_exits_with_the_config_code(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(b"models:\n  - name: llm\n    keep: -5\n    release_prefix: s3://bkt/p\n")
    code = main(["render-manifests", "--config", str(path), "--version", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code and "models[0].keep" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- config.pbtxt ------------------------------------------------------------------------------------------------


@BOUNDED
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.lists(st.sampled_from([b"name", b": ", b'"', b"{", b"}", b"[", b"]", b"input", b"dims", b"-1",
                                           b"parameters", b"key", b"value", b"string_value", b"\\x", b"\xff",
                                           b"99999999999999999999", b"backend", b"1e999", b"#", b"\n", b"<"]),
                          max_size=40).map(b"".join)))
@counted(PBTXT)
def test_random_config_pbtxt_gives_model_config_errors(tmp_path_factory: pytest.TempPathFactory, body: bytes) -> None:
    vdir = tmp_path_factory.mktemp("repo") / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "config.pbtxt").write_bytes(body)
    for call in (lambda: read_config(vdir / "config.pbtxt"), lambda: validate_version(vdir.parent, 1)):
        try:
            call()
        except ModelConfigError as exc:
            assert str(vdir) in exc.message, exc


@counted(PBTXT)
def test_unreadable_config_pbtxt_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").mkdir()
    with pytest.raises(ModelConfigError, match=r"config\.pbtxt: cannot be read"):
        read_config(tmp_path / "config.pbtxt")
    (tmp_path / "bad.pbtxt").write_bytes(b'name: "m"\n\xff\xfe')
    with pytest.raises(ModelConfigError, match=r"bad\.pbtxt: not a valid Triton model config: not UTF-8"):
        read_config(tmp_path / "bad.pbtxt")


# -- CLI arguments -----------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLOSED = _closed_port()
PROJECT_CODES = {0, 2, 130} | {cls.exit_code for cls in RolloutError.__subclasses__()} | {
    c.exit_code for cls in RolloutError.__subclasses__() for c in cls.__subclasses__()}
FLAG_VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e400", "", " ", "..", "/", "x\n",
                                         "99999999999999999999", "s3://", "s3://b/../x/1", "s3://bkt/p/llm/0",
                                         "s3://bkt/p/llm/1", "s3://BAD/x/1", "ed25519:xx", "mmap", "full",
                                         "127.0.0.1:xx", "..:1", "http://", ":", "h:0", "[::1", "{}",
                                         '{"tp_size": 0}']),
                        st.text(string.printable, max_size=12))
COMMAND_FLAGS = {
    "sync": ["--release", "--pvc", "--keep", "--concurrency", "--large-streams", "--write-mode", "--request-mib",
             "--verify", "--repair", "--lock-timeout", "--progress-interval", "--trusted-keys",
             "--expect-compute-capability", "--bogus"],
    "load": ["--pvc", "--triton-url", "--model", "--version", "--deadline", "--candidate", "--timeout",
             "--live-deadline", "--triton-models", "--triton-repository", "--run-id", "--lease-ttl", "--lease-wait",
             "--refuse-downgrade", "--bogus"],
    "publish": ["--src", "--release", "--kind", "--created-at", "--compat", "--part-mib", "--signing-key",
                "--source", "--bogus"],
}


SWITCHES = {"--repair", "--refuse-downgrade"}  # flags without a value (a value drawn after one is a stray argument)


# Each command's required flags, well-formed: the random flags drawn after them override or add to these, so
# most examples get past argparse into the command itself.
BASE_ARGV = {
    "sync": ["--release", "s3://bkt/prod/llm/1", "--pvc", "pvc"],
    "load": ["--pvc", "pvc", "--model", "llm", "--version", "1", "--triton-url", f"127.0.0.1:{CLOSED}",
             "--live-deadline", "0.2", "--timeout", "0.2"],
    "publish": ["--src", "src", "--release", "s3://bkt/prod/llm/1"],
}


@st.composite
def _argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMAND_FLAGS)))
    argv = [command, *(BASE_ARGV[command] if draw(st.integers(0, 9)) else [])]
    for flag in draw(st.lists(st.sampled_from(COMMAND_FLAGS[command]), max_size=4)):
        argv.append(flag)
        if flag not in SWITCHES or draw(st.booleans()):
            argv.append(draw(FLAG_VALUES))
    return argv


class _Denied(http.server.BaseHTTPRequestHandler):
    """S3 that refuses every request with 403 AccessDenied (body read, keep-alive kept): a fast, deterministic
    store for the argv fuzz, where a closed port would cost botocore's connection retries on every example."""

    protocol_version = "HTTP/1.1"

    def _deny(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _deny

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def denying_s3() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, denying_s3: str) -> Path:
    """No network: S3 refuses everything, Triton is a closed loopback port; a PVC and a release folder in
    tmp_path."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", denying_s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("TRITON_URL", f"127.0.0.1:{CLOSED}")
    monkeypatch.setenv("PVC_DIR", str(tmp_path / "pvc"))
    monkeypatch.delenv("TRITON_ROLLOUT_SIGNING_KEY", raising=False)
    src = make_release_dir(tmp_path / "src", small=2)
    # A PVC with llm v1 published (as a sync leaves it), so `load` gets as far as Triton.
    layout = PvcLayout.at(tmp_path / "pvc")
    shutil.copytree(src / "llm", layout.version_dir("llm", 1))
    (layout.version_dir("llm", 1) / "model.py").write_text("")
    manifest = build_manifest(layout.version_dir("llm", 1).parent, model="llm", version=1)
    manifest = replace(manifest, files=tuple(replace(f, path=f"llm/{f.path.split('/', 1)[1]}") for f in manifest.files))
    layout.write_publish_record(PublishRecord("published", manifest, {
        f.path: FileStat.of(layout.version_dir("llm", 1) / f.path_in_model) for f in manifest.files}))
    monkeypatch.chdir(tmp_path)
    # Retries still happen, without their waits: a refused connection is retried in microseconds.
    monkeypatch.setattr("triton_rollout.release.s3.backoff_delay", lambda attempt: 0.0)
    return tmp_path


@settings(BOUNDED, max_examples=300, deadline=10_000)
@given(_argv())
@counted(CLI)
def test_cli_arguments_give_usage_or_project_exit_codes(offline_env: Path, argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2, --help 0
            code = exc.code if isinstance(exc.code, int) else 2
    event(f"{argv[0]} exit {code}")  # pytest --hypothesis-show-statistics: how far the examples got
    assert code in PROJECT_CODES, (argv, code, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["publish", "sync"])
@counted(CLI)
def test_unreachable_s3_is_a_transfer_error(offline_env: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], command: str) -> None:
    """A closed port: botocore's EndpointConnectionError used to escape publish as a traceback. botocore
    retries the connection 8 times first: its backoff sleeps are skipped here (the retries still happen)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{CLOSED}")
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0)
    code = main([command, *BASE_ARGV[command]])
    err = capsys.readouterr().err
    assert code == TransferError.exit_code and "Traceback" not in err, err
    assert "127.0.0.1" in err or "s3://bkt" in err


@pytest.mark.parametrize(("argv", "code", "text"), [
    (["load", *BASE_ARGV["load"], "--triton-url", "127.0.0.1:xx"], 2, "Triton URL '127.0.0.1:xx'"),
    (["load", *BASE_ARGV["load"], "--triton-url", "..:9"], 2, "Triton URL"),
    (["load", *BASE_ARGV["load"], "--triton-url", "http://"], 2, "Triton URL"),
    (["publish", *BASE_ARGV["publish"], "--part-mib", "0"], 2, "part size"),
    # nan made `monotonic() >= end` false forever: the load waited for an unreachable Triton without end.
    (["load", *BASE_ARGV["load"], "--live-deadline", "nan"], 2, "argument --live-deadline: invalid"),
    (["sync", *BASE_ARGV["sync"], "--lock-timeout", "inf"], 2, "argument --lock-timeout: invalid"),
    (["publish", *BASE_ARGV["publish"], "--compat", "[" * 100_000], 2, "--compat is not valid JSON"),
])
@counted(CLI)
def test_cli_bad_values_found_by_the_fuzz(offline_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                         code: int, text: str) -> None:
    """Inputs the argv fuzz or the hand-written cases found escaping as tracebacks (ValueError from gevent's
    URL parsing, UnicodeError from IDNA, RecursionError from json), publishing wrong hashes or hanging."""
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    assert got == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err, err


@counted(NAMES)
def test_a_trailing_newline_is_not_a_valid_name(tmp_path: Path) -> None:
    """`re.match` with a pattern ending in `$` accepts "name\\n" ($ matches before a final newline): every
    validator matches whole strings, so a newline cannot ride into a version dir, a bucket or a pod spec."""
    from triton_rollout.build.spec import _word
    from triton_rollout.config.kubernetes import ResourceSpec
    from triton_rollout.triton.config import scan_model_dir

    with pytest.raises(ConfigError, match="invalid bucket name"):
        ReleaseUri.parse("s3://bucket\n/prod/llm/1")
    with pytest.raises(ConfigError, match="not a valid resource name"):
        ResourceSpec(limits={"nvidia.com/gpu\n": "1"})
    with pytest.raises(ConfigError, match="letters, digits"):
        _word("trtllm-build\n", "build.trtllm_build")
    (tmp_path / "llm" / "1\n").mkdir(parents=True)
    with pytest.raises(ModelConfigError, match="positive integers"):
        scan_model_dir(tmp_path / "llm")
