"""config.pbtxt through Triton's own ModelConfig message, and model directory validation (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from triton_rollout.triton.config import (
    ModelConfigError,
    list_models,
    load_order,
    parse_config,
    pinned,
    read_config,
    scan_model_dir,
    to_json,
    to_text,
    validate_version,
    write_config,
)

from devstack import demo_models


def _publish_by_hand(src: Path, repo: Path, version: int) -> None:
    """What the sync does for a release: <triton_model>/<file> -> repository/<triton_model>/<version>/<file>."""
    for model_dir in src.iterdir():
        dest = repo / model_dir.name / str(version)
        dest.mkdir(parents=True)
        for f in model_dir.iterdir():
            (dest / f.name).write_bytes(f.read_bytes())


def test_round_trip_and_pinning(tmp_path: Path) -> None:
    cfg = read_config(demo_models.HERE / "llm" / "tensorrt_llm" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.parameters["gpt_model_path"].string_value == "${engine_dir}"
    out = pinned(cfg, "tensorrt_llm", [3], engine_dir="/models/tensorrt_llm/3")
    assert list(out.version_policy.specific.versions) == [3]
    assert out.parameters["gpt_model_path"].string_value == "/models/tensorrt_llm/3"
    assert cfg.parameters["gpt_model_path"].string_value == "${engine_dir}"  # a copy, not a mutation
    write_config(tmp_path / "config.pbtxt", out)
    again = read_config(tmp_path / "config.pbtxt")
    assert again == out
    # protobuf's JSON writes int64 as strings; Triton's load API parses that form (checked in the load tests).
    assert '"specific": {"versions": ["3"]}' in to_json(out)
    assert 'versions: 3' in to_text(out)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "m"\nbackend: "python"\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] }\n')
    with pytest.raises(ModelConfigError, match=r"config.pbtxt: not a valid Triton model config: 4:1"):
        read_config(bad)
    with pytest.raises(ModelConfigError, match="no field named \"bakend\""):
        parse_config('bakend: "python"')
    with pytest.raises(ModelConfigError, match="is missing"):
        read_config(tmp_path / "nope.pbtxt")


def test_validate_version_catches_what_triton_would_refuse(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    src = demo_models.write_llm_release(tmp_path / "src", 1)
    _publish_by_hand(src, repo, 1)
    # The engine path is filled at load time; without it the ${engine_dir} placeholder is caught.
    with pytest.raises(ModelConfigError, match=r"unfilled template placeholders gpt_model_path=\$\{engine_dir\}"):
        validate_version(repo / "tensorrt_llm", 1)
    assert validate_version(repo / "tensorrt_llm", 1, engine_dir=str(repo / "tensorrt_llm" / "1")).backend == "python"
    (repo / "preprocessing" / "1" / "model.py").unlink()
    with pytest.raises(ModelConfigError, match=r"backend 'python' needs .*preprocessing/1/model.py"):
        validate_version(repo / "preprocessing", 1)
    (repo / "postprocessing" / "1" / "config.pbtxt").write_text('name: "other"\nbackend: "python"\n')
    with pytest.raises(ModelConfigError, match="name 'other' differs from its directory 'postprocessing'"):
        validate_version(repo / "postprocessing", 1)
    with pytest.raises(ModelConfigError, match=r"version 7: .* does not exist"):
        validate_version(repo / "ensemble", 7)


def test_version_dirs_and_listing(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    for v in ("1", "2", "10"):
        (repo / "m" / v).mkdir(parents=True)
    (repo / "m" / ".staging").mkdir()
    assert scan_model_dir(repo / "m").versions == [1, 2, 10]
    (repo / "m" / "010").mkdir()
    with pytest.raises(ModelConfigError, match="010: version directories must be positive integers"):
        scan_model_dir(repo / "m")
    (repo / "m" / "010").rmdir()
    write_config(repo / "m" / "config.pbtxt", pinned(parse_config('backend: "python"'), "m", [2]))
    models = list_models(repo)
    assert list(models) == ["m"] and models["m"].promoted_config is not None
    assert list(models["m"].promoted_config.version_policy.specific.versions) == [2]


def test_load_order_puts_composing_models_first() -> None:
    configs = {n: read_config(demo_models.HERE / "llm" / n / "config.pbtxt") for n in demo_models.LLM_TRITON_MODELS}
    order = load_order(configs)
    assert order[-1] == "ensemble"
    assert set(order[:-1]) == {"preprocessing", "tensorrt_llm", "postprocessing"}
