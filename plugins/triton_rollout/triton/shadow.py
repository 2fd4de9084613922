"""Shadow candidates: a release loaded under second names, smoke-tested there, then swapped in.

With one Triton replica, a candidate loaded in place answers clients before its smoke test has passed, and an
ensemble swapped in place routes the old ensemble version through new members (its answers carry the old
version label). Measured on tritonserver 2.51 with one loop of unversioned generate requests: in place with the
ensemble steps at -1, 1,154 of 1,791 answers mislabelled; with the steps pinned, 6,742 requests failed (the old
ensemble's members were gone before the new ensemble was ready). A shadow candidate avoids both, where the model
fits in GPU memory twice (``models[].candidate: shadow``, the default):

1. every Triton model ``m`` of the release is loaded as ``m__candidate``: a directory in repository/ holding a
   config.pbtxt (that name, the version pinned, ensemble steps pointing at the other shadow names at that
   version) and a relative symlink ``<version> -> ../m/<version>`` (Triton reads version directories through
   symlinks; a name with no directory cannot be loaded, even by config override). Clients still reach only
   the promoted version under the real names.
2. the smoke test runs against the shadow entry models.
3. promote switches the real entry names to the candidate: an ensemble first to the shadow members (one
   ensemble reload, atomic: every answer's version is the version that produced it), then the real member
   names are reloaded at the candidate version and the ensemble pointed back at them, so at rest the
   repository is as before (real names, versions pinned, ensemble steps pinned). A lone model is reloaded at
   the candidate version under its real name (Triton keeps the old version serving until the new one is
   ready) after its shadow is unloaded, so no more than two copies are ever loaded.
4. a failed load or smoke test only discards the shadow names: the promoted version was never touched.

TensorRT-LLM reads its engine from the absolute model-level ``gpt_model_path`` (tensorrtllm_backend#727), so
two engine versions need two model names: the shadow name is that second name, never a second version of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import TYPE_CHECKING

from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.triton.config import (
    CONFIG_NAME,
    ModelConfig,
    dependencies,
    pinned,
    pinned_versions,
    read_config,
    write_config,
)
from triton_rollout.triton.control import TritonControl

if TYPE_CHECKING:
    from triton_rollout.triton.promote import Release

SHADOW_SUFFIX = "__candidate"


def shadow_name(triton_model: str) -> str:
    return f"{triton_model}{SHADOW_SUFFIX}"


def is_shadow(name: str) -> bool:
    return name.endswith(SHADOW_SUFFIX)


def shadow_config(release: Release, triton_model: str) -> ModelConfig:
    """``triton_model``'s config under its shadow name: the version pinned, steps at the other shadow names."""
    cfg = release.configs[triton_model]
    steps = [dep for dep in dependencies(cfg) if dep in release.configs]
    return pinned(cfg, shadow_name(triton_model), [release.version], engine_dir=release.engine_dir(triton_model),
                  step_versions=dict.fromkeys(steps, release.version),
                  step_names={dep: shadow_name(dep) for dep in steps})


def shadow_version(layout: PvcLayout, triton_model: str) -> int | None:
    """The version ``triton_model``'s shadow directory pins (None: there is none)."""
    path = layout.model_dir(shadow_name(triton_model)) / CONFIG_NAME
    if not path.is_file():
        return None
    versions = pinned_versions(read_config(path))
    return versions[0] if len(versions) == 1 else None


def has_shadow(layout: PvcLayout, release: Release) -> bool:
    """Whether every model of ``release`` has a shadow directory for its version (a shadow candidate)."""
    return all(shadow_version(layout, name) == release.version for name in release.order)


def served_names(layout: PvcLayout, release: Release) -> dict[str, str]:
    """Where the candidate's entry models answer: their shadow names for a shadow candidate, else their own."""
    shadow = has_shadow(layout, release)
    return {name: shadow_name(name) if shadow else name for name in release.entries}


def _write_shadow_dir(layout: PvcLayout, release: Release, triton_model: str) -> None:
    directory = layout.model_dir(shadow_name(triton_model))
    directory.mkdir(exist_ok=True)
    link = directory / str(release.version)
    if not link.is_symlink():
        # Relative, so it resolves wherever the PVC's repository/ is mounted (Triton's subPath mount included).
        os.symlink(f"../{triton_model}/{release.version}", link)
    write_config(directory / CONFIG_NAME, shadow_config(release, triton_model))


def load_shadow(control: TritonControl, layout: PvcLayout, release: Release, deadline_s: float) -> None:
    """Load the release under its shadow names (leftovers of an earlier candidate are discarded first)."""
    discard_shadow(control, layout, release.order)
    for name in release.order:  # dependency order: members before the ensemble that calls them
        _write_shadow_dir(layout, release, name)
        control.load_from_disk(shadow_name(name))
    for name in release.order:
        control.wait_ready(shadow_name(name), release.version, deadline_s)


def unload_shadow(control: TritonControl, triton_models: list[str]) -> None:
    """Unload the shadow names of ``triton_models`` from one Triton (another replica may still use the
    directories: discard_shadow removes them)."""
    for name in reversed(triton_models):  # the ensemble before the members it calls
        with contextlib.suppress(Exception):  # not loaded, or Triton down
            if control.ready_versions(shadow_name(name)):
                control.unload(shadow_name(name))


def discard_shadow(control: TritonControl, layout: PvcLayout, triton_models: list[str]) -> None:
    """Unload the shadow names of ``triton_models`` and remove their directories (never the real ones)."""
    for name in reversed(triton_models):  # the ensemble before the members it calls
        directory = layout.model_dir(shadow_name(name))
        if not directory.exists():
            continue
        with contextlib.suppress(Exception):  # not loaded, or Triton down: the directory goes anyway
            control.unload(shadow_name(name))
        shutil.rmtree(directory)


def switch_entries_to_shadow(control: TritonControl, release: Release, deadline_s: float) -> None:
    """Point the real entry names at the candidate: an ensemble at the shadow members (one atomic reload)."""
    for name in release.entries:
        cfg = release.configs[name]
        steps = [dep for dep in dependencies(cfg) if dep in release.configs]
        if not steps:
            continue  # a lone model: reloaded under its real name by rehome
        control.load(name, pinned(cfg, name, [release.version], engine_dir=release.engine_dir(name),
                                  step_versions=dict.fromkeys(steps, release.version),
                                  step_names={dep: shadow_name(dep) for dep in steps}))
        control.wait_ready(name, release.version, deadline_s)


def rehome(control: TritonControl, layout: PvcLayout, release: Release, deadline_s: float) -> None:
    """Serve the candidate under the real names only, then drop the shadow names.

    Members: the real name is unloaded (nothing calls it since the switch), switched on disk, loaded again.
    Entries: reloaded with their own config (steps at the real members). A lone model's shadow is unloaded
    before its real name is reloaded, so two copies at most are loaded at any time.
    """
    for name in release.composing:
        control.unload(name, wait_s=deadline_s)
        write_config(layout.model_dir(name) / CONFIG_NAME, release.load_config(name))
        control.load_from_disk(name)
        control.wait_ready(name, release.version, deadline_s)
    for name in release.entries:
        if not dependencies(release.configs[name]):
            discard_shadow(control, layout, [name])
        control.load(name, release.load_config(name))
        control.wait_ready(name, release.version, deadline_s)
    discard_shadow(control, layout, release.order)


def serves_shadow(control: TritonControl, release: Release) -> bool:
    """Whether a real entry name answers at the candidate version (promote got past the switch)."""
    return any(control.is_version_ready(name, release.version) for name in release.entries)
