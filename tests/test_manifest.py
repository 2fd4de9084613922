"""Unit tests for the release manifest model and release URIs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.errors import ConfigError, ManifestError
from triton_rollout.release.manifest import SCHEMA_VERSION, build_manifest, parse_manifest, parse_version
from triton_rollout.release.s3 import ReleaseUri

SHA = "a" * 64


def _doc(**over: Any) -> dict[str, Any]:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "model": "llama",
        "version": 3,
        "created_at": "2026-11-01T10:00:00Z",
        "kind": "engine",
        "source": "ci#12",
        "files": [{"path": "tensorrt_llm/rank0.engine", "size": 10, "sha256": SHA}],
    }
    doc.update(over)
    return doc


def _field_error(doc: dict[str, Any]) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc))
    return info.value


def test_valid_manifest_round_trips() -> None:
    m = parse_manifest(json.dumps(_doc()))
    assert (m.model, m.version, m.kind) == ("llama", 3, "engine")
    assert m.triton_models == ["tensorrt_llm"]
    assert parse_manifest(m.to_json()) == m


@pytest.mark.parametrize("missing", ["schema_version", "model", "version", "created_at", "kind", "source", "files"])
def test_missing_field_is_named(missing: str) -> None:
    doc = _doc()
    del doc[missing]
    err = _field_error(doc)
    assert err.field == missing and "missing" in str(err)


def test_unknown_schema_version() -> None:
    err = _field_error(_doc(schema_version=99))
    assert err.field == "schema_version" and "99" in str(err)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../evil", "a/../../evil", "a//b", "./a", "a\\b", "a/./b", ""],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    err = _field_error(_doc(files=[{"path": path, "size": 1, "sha256": SHA}]))
    assert "path" in (err.field or "")


def test_duplicate_path() -> None:
    f = {"path": "m/a.bin", "size": 1, "sha256": SHA}
    err = _field_error(_doc(files=[f, dict(f)]))
    assert "duplicate" in str(err) and "m/a.bin" in str(err)


def test_file_and_directory_clash() -> None:
    files = [{"path": "m/a", "size": 1, "sha256": SHA}, {"path": "m/a/b", "size": 1, "sha256": SHA}]
    err = _field_error(_doc(files=files))
    assert "both a file and a directory" in str(err)


@pytest.mark.parametrize("version", ["01", "007", "1.0", "v1", 0, -2, True, 1.5, None])
def test_bad_versions(version: object) -> None:
    err = _field_error(_doc(version=version))
    assert err.field == "version"


def test_version_parsing() -> None:
    assert parse_version("12") == 12
    with pytest.raises(ManifestError, match="leading zeros"):
        parse_version("012")


def test_bad_sha_and_size() -> None:
    assert _field_error(_doc(files=[{"path": "m/a", "size": 1, "sha256": "xyz"}])).field == "files[0].sha256"
    assert _field_error(_doc(files=[{"path": "m/a", "size": -1, "sha256": SHA}])).field == "files[0].size"


def test_part_hash_count_must_match_size() -> None:
    f = {"path": "m/a", "size": 3 * 65536 + 1, "sha256": SHA, "part_size": 65536, "part_sha256": [SHA, SHA]}
    err = _field_error(_doc(files=[f]))
    assert err.field == "files[0].part_sha256" and "4 part hashes" in str(err)


def test_naive_timestamp_refused() -> None:
    assert _field_error(_doc(created_at="2026-11-01T10:00:00")).field == "created_at"


def test_kind_checked_and_checkpoint_not_servable() -> None:
    assert _field_error(_doc(kind="weights")).field == "kind"
    m = parse_manifest(json.dumps(_doc(kind="checkpoint")))
    with pytest.raises(ManifestError, match="checkpoint"):
        m.require_servable()


def test_engine_files_need_a_model_directory() -> None:
    m = parse_manifest(json.dumps(_doc(files=[{"path": "rank0.engine", "size": 1, "sha256": SHA}])))
    with pytest.raises(ManifestError, match="Triton model directory"):
        m.require_servable()


def test_build_manifest_hashes_parts_and_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(data)
    (tmp_path / "m" / "small.txt").write_bytes(b"hi")
    m = build_manifest(tmp_path, model="x", version=1, part_size=65536)
    big = next(f for f in m.files if f.path == "m/big.bin")
    assert big.sha256 == hashlib.sha256(data).hexdigest()
    assert big.part_sha256 == tuple(hashlib.sha256(data[i : i + 65536]).hexdigest() for i in range(0, len(data), 65536))
    small = next(f for f in m.files if f.path == "m/small.txt")
    assert small.part_sha256 == () and small.sha256 == hashlib.sha256(b"hi").hexdigest()


def test_build_manifest_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "link").symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="symlink"):
        build_manifest(tmp_path, model="x", version=1)


def test_release_uri_parsing() -> None:
    r = ReleaseUri.parse("s3://models/prod/llama/12")
    assert (r.bucket, r.prefix, r.model, r.version) == ("models", "prod", "llama", 12)
    assert r.manifest_key == "prod/llama/12/manifest.json"
    assert ReleaseUri.parse("s3://models/llama/1/").prefix == ""


@pytest.mark.parametrize(
    "uri",
    ["http://models/a/1", "s3://models/prod/../llama/1", "s3://models/llama/01", "s3://models/1",
     "s3://Bad_Bucket/m/1", "s3://models/prod//llama/1", "s3://models/prod/ll ama/1"],
)
def test_bad_release_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        ReleaseUri.parse(uri)
