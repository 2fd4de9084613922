"""Shadow candidates (triton/shadow.py) on disk: names, pins and symlinks, and models[].candidate's validation.
The behaviour against a real tritonserver (clients never reach the candidate, truthful version labels) is in
tests/test_triton_rollout.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ConfigError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.steps import LoadRequest
from triton_rollout.triton import shadow
from triton_rollout.triton.config import pinned_versions, read_config
from triton_rollout.triton.promote import prepare_release

from devstack import demo_models


def _llm_on_pvc(layout: PvcLayout, tmp_path: Path, version: int) -> None:
    src = demo_models.write_llm_release(tmp_path / f"src{version}", version)
    for model_dir in src.iterdir():
        dest = layout.version_dir(model_dir.name, version)
        dest.mkdir(parents=True)
        for f in model_dir.iterdir():
            (dest / f.name).write_bytes(f.read_bytes())


def test_the_shadow_ensemble_calls_the_shadow_members_at_its_own_version(tmp_path: Path) -> None:
    layout = PvcLayout.at(tmp_path / "pvc")
    _llm_on_pvc(layout, tmp_path, 3)
    release = prepare_release(layout, demo_models.LLM_MODEL, 3, triton_models=list(demo_models.LLM_TRITON_MODELS))
    ensemble = shadow.shadow_config(release, "ensemble")
    assert ensemble.name == "ensemble__candidate" and pinned_versions(ensemble) == [3]
    assert [(s.model_name, s.model_version) for s in ensemble.ensemble_scheduling.step] == [
        ("preprocessing__candidate", 3), ("tensorrt_llm__candidate", 3), ("postprocessing__candidate", 3)]
    engine = shadow.shadow_config(release, "tensorrt_llm").parameters["gpt_model_path"].string_value
    assert engine == str(layout.version_dir("tensorrt_llm", 3))  # the real engine directory, not the symlink
    # At rest (promoted), the ensemble's steps are pinned to its version too: never -1.
    rest = release.load_config("ensemble")
    assert [(s.model_name, s.model_version) for s in rest.ensemble_scheduling.step] == [
        ("preprocessing", 3), ("tensorrt_llm", 3), ("postprocessing", 3)]


def test_shadow_directories_hold_a_config_and_a_relative_symlink(tmp_path: Path) -> None:
    layout = PvcLayout.at(tmp_path / "pvc")
    _llm_on_pvc(layout, tmp_path, 2)
    release = prepare_release(layout, demo_models.LLM_MODEL, 2, triton_models=list(demo_models.LLM_TRITON_MODELS))
    assert not shadow.has_shadow(layout, release)
    assert shadow.served_names(layout, release) == {"ensemble": "ensemble"}
    for name in release.order:
        shadow._write_shadow_dir(layout, release, name)
    link = layout.model_dir("tensorrt_llm__candidate") / "2"
    # Relative: it resolves wherever repository/ is mounted (a pod's subPath mount included).
    assert os.readlink(link) == "../tensorrt_llm/2" and (link / "bigram.npy").is_file()
    assert read_config(layout.model_dir("tensorrt_llm__candidate") / "config.pbtxt").name == "tensorrt_llm__candidate"
    assert shadow.has_shadow(layout, release)
    assert shadow.served_names(layout, release) == {"ensemble": "ensemble__candidate"}
    assert shadow.shadow_version(layout, "preprocessing") == 2
    # Discarding removes the shadow directories only (Triton unreachable here: the files go anyway).
    from triton_rollout.triton.control import TritonControl

    with TritonControl("http://127.0.0.1:9", timeout=0.5) as control:
        shadow.discard_shadow(control, layout, release.order)
    assert not any(layout.model_dir(f"{n}__candidate").exists() for n in release.order)
    assert all(layout.version_dir(n, 2).is_dir() for n in release.order)


def test_candidate_mode_is_validated_at_parse_and_reaches_the_load_step() -> None:
    base = {"name": "m", "release_prefix": "s3://bucket/releases"}
    assert ModelDeployment.from_dict(base).candidate == "shadow"
    model = ModelDeployment.from_dict({**base, "candidate": "in_place"})
    assert LoadRequest.for_model(model, 4).to_argv()[-2:] == ["--candidate", "in_place"]
    assert "--candidate" not in LoadRequest.for_model(ModelDeployment.from_dict(base), 4).to_argv()  # the default
    with pytest.raises(ConfigError, match=r"'model\.candidate': must be one of shadow, in_place, got 'blue'"):
        ModelDeployment.from_dict({**base, "candidate": "blue"})
