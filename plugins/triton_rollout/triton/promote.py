"""Load a candidate release into Triton, promote it, or roll back to the previous version.

A release (one S3 prefix MODEL/VERSION) holds one or more Triton models. Its *entry* models are the
ones nothing else in the release calls (the ensemble of a TRT-LLM bundle, or a lone model); the rest
are *composing* models. Every load pins exact versions (version_policy specific), so Triton swaps a
model only once the new version is ready: the old version keeps answering during the load and stays
if the load fails.

One Triton behaviour shapes the protocol (measured on tritonserver 2.51): loading an ensemble makes
Triton re-read its composing models *from disk*, and a model loaded through a config override always
counts as modified, so the override is thrown away and the on-disk config.pbtxt wins. Therefore:

- composing models: their model-level config.pbtxt is switched to the candidate first (atomic
  rename), then they are loaded from disk; rollback switches it back and reloads.
- entry models: loaded with a config override; their config.pbtxt on disk changes only at promote,
  so a restarted Triton comes back on the promoted version of what clients call.

A candidate is loaded one of two ways (``models[].candidate``): as a *shadow* (triton/shadow.py: under
second names, smoke-tested there, swapped in at promote; clients never reach it before it passed), or
*in place* (the protocol above: less GPU memory, but the candidate answers clients during its smoke test).
Ensemble steps are pinned to the release's version either way, so every answer's model_version is the
version that produced it.

A failed load leaves state/ untouched (nothing was promoted); a failed smoke test is rolled back and
recorded in the deployment history.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from triton_rollout.errors import ConfigError, TritonError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.pvc.records import DeploymentState, HistoryEntry
from triton_rollout.steps import DEFAULT_READY_DEADLINE  # one default for the CLI flag and the library
from triton_rollout.triton import shadow
from triton_rollout.triton.config import (
    CONFIG_NAME,
    ModelConfig,
    ModelConfigError,
    dependencies,
    load_order,
    pinned,
    validate_version,
    write_config,
)
from triton_rollout.triton.control import TritonControl

log = logging.getLogger(__name__)

# How a candidate is loaded (models[].candidate; the load step's --candidate).
CANDIDATE_MODES = ("shadow", "in_place")


@dataclass
class Release:
    """The Triton models of one release version, validated, in load order."""

    model: str
    version: int
    configs: dict[str, ModelConfig]
    order: list[str]
    entries: list[str]
    triton_repository: str

    @property
    def composing(self) -> list[str]:
        return [t for t in self.order if t not in self.entries]

    def engine_dir(self, triton_model: str) -> str:
        """The version directory as Triton sees it (its mount of repository/ may differ from ours)."""
        return f"{self.triton_repository.rstrip('/')}/{triton_model}/{self.version}"

    def load_config(self, triton_model: str) -> ModelConfig:
        cfg = self.configs[triton_model]
        # Steps pinned to this version: with "-1", an ensemble version still serving while its members swap
        # answers through the new members under its old version label (1,154 of 1,791 answers measured).
        steps = dict.fromkeys((dep for dep in dependencies(cfg) if dep in self.configs), self.version)
        return pinned(cfg, triton_model, [self.version], engine_dir=self.engine_dir(triton_model),
                      step_versions=steps)


def release_triton_models(layout: PvcLayout, model: str, version: int,
                          triton_models: list[str] | None = None) -> list[str]:
    """Which Triton models a release holds: given, else from the sync's publish record."""
    if triton_models:
        return list(triton_models)
    record = layout.publish_record(model, version)
    if record is not None:
        return record.triton_models
    # A version promoted before remembers its models in the deployment history.
    for entry in reversed(layout.deployment(model).history):
        if entry.version == version and entry.triton_models:
            return entry.triton_models
    if layout.version_dir(model, version).is_dir():
        return [model]  # a single-model release named like its Triton model
    raise ConfigError(
        f"release {model} v{version} is not on the PVC {layout.root} (no publish record at "
        f"{layout.publish_record_path(model, version)})",
        hint="sync the release first (python -m triton_rollout sync), or name its models with --triton-models",
    )


def prepare_release(layout: PvcLayout, model: str, version: int, *, triton_models: list[str] | None = None,
                    triton_repository: str | None = None) -> Release:
    """Validate every model of the release on disk before anything is loaded."""
    names = release_triton_models(layout, model, version, triton_models)
    repo = triton_repository or os.environ.get("TRITON_MODEL_REPOSITORY") or str(layout.repository)
    configs: dict[str, ModelConfig] = {}
    for name in names:
        engine_dir = f"{repo.rstrip('/')}/{name}/{version}"
        configs[name] = validate_version(layout.model_dir(name), version, engine_dir=engine_dir)
    called = {dep for cfg in configs.values() for dep in dependencies(cfg)}
    for name, cfg in configs.items():
        missing = [d for d in dependencies(cfg) if d not in configs and not layout.model_dir(d).is_dir()]
        if missing:
            raise ModelConfigError(f"ensemble {name!r} v{version} calls {missing}, which are in neither the "
                                   "release nor the repository")
    order = load_order(configs)
    entries = [n for n in order if n not in called]
    return Release(model=model, version=version, configs=configs, order=order, entries=entries,
                   triton_repository=repo)


def _lock(layout: PvcLayout, model: str, purpose: str, timeout: float = 600.0) -> PvcLock:
    # The sync's lock: retention must not prune a version while it is being loaded or promoted.
    return PvcLock(layout.lock_file(model), purpose=purpose, timeout=timeout)


def _switch_on_disk(layout: PvcLayout, triton_model: str, cfg: ModelConfig | None) -> None:
    path = layout.model_dir(triton_model) / CONFIG_NAME
    if cfg is None:
        path.unlink(missing_ok=True)
    else:
        write_config(path, cfg)


def _apply(control: TritonControl, layout: PvcLayout, release: Release, deadline_s: float) -> None:
    """Serve ``release``: composing models from disk (switched first), entries by override."""
    for name in release.order:
        cfg = release.load_config(name)
        if name in release.entries:
            control.load(name, cfg)
        else:
            _switch_on_disk(layout, name, cfg)
            control.load_from_disk(name)
    for name in release.order:
        control.wait_ready(name, release.version, deadline_s)


@dataclass
class LoadResult:
    model: str
    version: int
    triton_models: list[str]
    entries: list[str]
    seconds: float
    endpoints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "triton_models": self.triton_models,
                "entries": self.entries, "seconds": self.seconds, "endpoints": self.endpoints}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        return cls(model=data["model"], version=data["version"], triton_models=list(data["triton_models"]),
                   entries=list(data["entries"]), seconds=data["seconds"], endpoints=list(data["endpoints"]))


def load_candidate(control: TritonControl, layout: PvcLayout, release: Release, *,
                   deadline_s: float = DEFAULT_READY_DEADLINE, live_deadline_s: float = 30.0,
                   candidate: str = "shadow") -> LoadResult:
    """Load ``release`` as the candidate, under shadow names or in place (``candidate``, CANDIDATE_MODES).

    On failure the shadow names are discarded (the promoted version was never touched), or, in place, the
    promoted version is put back; then the error is raised. state/ is not written: a candidate is not a
    deployment until it is promoted.
    """
    if candidate not in CANDIDATE_MODES:
        raise ConfigError(f"candidate mode {candidate!r} is not one of {', '.join(CANDIDATE_MODES)}")
    control.wait_live(live_deadline_s)  # a Triton that is down fails here, before anything changes
    t0 = time.monotonic()
    with _lock(layout, release.model, f"load {release.model} v{release.version}"):
        if candidate == "shadow":
            _load_shadow(control, layout, release, deadline_s)
            served = shadow.served_names(layout, release)
            return LoadResult(
                model=release.model, version=release.version, triton_models=release.order,
                entries=release.entries, seconds=round(time.monotonic() - t0, 3),
                endpoints=[f"{control.base_url}/v2/models/{served[n]}/versions/{release.version}/infer"
                           for n in release.entries])
        try:
            _apply(control, layout, release, deadline_s)
        except (TritonError, OSError) as exc:
            # OSError: e.g. the PVC filled up while a config.pbtxt was being switched.
            cause = exc.message if isinstance(exc, TritonError) else f"writing a config.pbtxt failed: {exc}"
            state = layout.deployment(release.model)
            log.error("loading %s v%s failed; restoring v%s", release.model, release.version, state.promoted)
            try:
                _restore(control, layout, release, state.promoted, deadline_s)
            except Exception as restore_exc:  # report both: the load error is the cause
                raise TritonError(f"{cause}; restoring v{state.promoted} also failed: {restore_exc}",
                                  hint="roll back by hand: python -m triton_rollout rollback") from exc
            raise TritonError(
                f"candidate {release.model} v{release.version} failed to load: {cause}",
                hint=f"v{state.promoted} keeps serving and state/ is unchanged; read the Triton log, fix the "
                     "release and publish a new version" if state.promoted else
                     "nothing was serving before; read the Triton log and fix the release",
            ) from exc
    return LoadResult(
        model=release.model, version=release.version, triton_models=release.order, entries=release.entries,
        seconds=round(time.monotonic() - t0, 3),
        endpoints=[f"{control.base_url}/v2/models/{n}/versions/{release.version}/infer" for n in release.entries],
    )


def _load_shadow(control: TritonControl, layout: PvcLayout, release: Release, deadline_s: float) -> None:
    try:
        shadow.load_shadow(control, layout, release, deadline_s)
    except (TritonError, OSError) as exc:
        cause = exc.message if isinstance(exc, TritonError) else f"writing a shadow config.pbtxt failed: {exc}"
        promoted = layout.deployment(release.model).promoted
        log.error("loading %s v%s as a shadow candidate failed; discarding it", release.model, release.version)
        try:
            shadow.discard_shadow(control, layout, release.order)
        except OSError as cleanup_exc:
            log.error("removing the shadow directories failed: %s", cleanup_exc)
        raise TritonError(
            f"candidate {release.model} v{release.version} failed to load: {cause}",
            hint=f"it was loaded as shadow models (*{shadow.SHADOW_SUFFIX}), now discarded" +
                 (f"; v{promoted} was never touched and keeps serving" if promoted else
                  "; nothing was serving before") +
                 ". Read the Triton log (a model that does not fit in GPU memory twice needs "
                 "candidate: in_place in models.yaml), fix the release and publish a new version",
        ) from exc


def _restore(control: TritonControl, layout: PvcLayout, failed: Release, version: int | None,
             deadline_s: float, *, triton_models: list[str] | None = None) -> None:
    """Serve ``version`` of the release model again (or nothing, if no version was ever promoted)."""
    if version is not None:
        previous = prepare_release(layout, failed.model, version,
                                   triton_models=triton_models or _models_of(layout, failed, version),
                                   triton_repository=failed.triton_repository)
        # Models only the failed candidate had are unloaded and their disk config removed.
        for name in failed.order:
            if name not in previous.configs:
                _switch_on_disk(layout, name, None)
                control.unload(name)
        _apply(control, layout, previous, deadline_s)
        return
    for name in reversed(failed.order):
        if name not in failed.entries:
            _switch_on_disk(layout, name, None)
        control.unload(name)


def _models_of(layout: PvcLayout, release: Release, version: int) -> list[str] | None:
    """The models of another version of the same release model (same set unless the record says)."""
    try:
        return release_triton_models(layout, release.model, version)
    except ConfigError:
        return [t for t in release.order if layout.version_dir(t, version).is_dir()] or None


@dataclass(frozen=True)
class PromoteResult:
    model: str
    promoted: int | None
    previous: int | None

    @classmethod
    def of(cls, state: DeploymentState) -> PromoteResult:
        return cls(model=state.model, promoted=state.promoted, previous=state.previous)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "promoted": self.promoted, "previous": self.previous}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromoteResult:
        return cls(model=data["model"], promoted=data["promoted"], previous=data["previous"])


def promote(layout: PvcLayout, release: Release, *, run_id: str = "", control: TritonControl | None = None,
            require_ready: bool = True) -> PromoteResult:
    """Make ``release`` the promoted version: config.pbtxt for every model, then state/."""
    with _lock(layout, release.model, f"promote {release.model} v{release.version}"):
        if shadow.has_shadow(layout, release):
            if control is None:
                raise TritonError(f"{release.model} v{release.version} is loaded as a shadow candidate: promoting "
                                  "it swaps it into Triton, so Triton must be reachable",
                                  hint="promote without --no-ready-check")
            swap_in_shadow(control, layout, release)
        elif control is not None and require_ready:
            for name in release.order:
                if not control.is_version_ready(name, release.version):
                    raise TritonError(
                        f"refusing to promote {release.model} v{release.version}: Triton model {name!r} "
                        f"version {release.version} is not ready on {control.url}",
                        hint="load and smoke-test the candidate first (python -m triton_rollout load / smoke)",
                    )
        for name in release.order:
            _switch_on_disk(layout, name, release.load_config(name))
        state = layout.deployment(release.model)
        if state.promoted != release.version:
            state.previous = state.promoted
        state.promoted = release.version
        state.record("promote", release.version, run_id=run_id, previous=state.previous,
                     triton_models=release.order)
        layout.save_deployment(state)
        return PromoteResult.of(state)


def swap_in_shadow(control: TritonControl, layout: PvcLayout, release: Release,
                    deadline_s: float = DEFAULT_READY_DEADLINE) -> None:
    for name in release.order:
        if not control.is_version_ready(shadow.shadow_name(name), release.version):
            raise TritonError(
                f"refusing to promote {release.model} v{release.version}: its shadow model "
                f"{shadow.shadow_name(name)!r} version {release.version} is not ready on {control.url}",
                hint="load and smoke-test the candidate again (python -m triton_rollout load / smoke)")
    try:
        shadow.switch_entries_to_shadow(control, release, deadline_s)
        shadow.rehome(control, layout, release, deadline_s)
    except (TritonError, OSError) as exc:
        cause = exc.message if isinstance(exc, TritonError) else str(exc)
        raise TritonError(
            f"swapping in {release.model} v{release.version} did not finish: {cause}",
            hint="the smoke-tested candidate or the promoted version serves (python -m triton_rollout status "
                 "says which); run promote again to finish, or rollback --failed-version to go back",
        ) from exc


@dataclass(frozen=True)
class RollbackResult:
    model: str
    promoted: int | None
    previous: int | None
    last: HistoryEntry  # the rollback as recorded in the deployment history

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "promoted": self.promoted, "previous": self.previous,
                "last": self.last.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RollbackResult:
        return cls(model=data["model"], promoted=data["promoted"], previous=data["previous"],
                   last=HistoryEntry.from_dict(data["last"]))


def rollback(control: TritonControl, layout: PvcLayout, model: str, *, failed_version: int | None = None,
             to_version: int | None = None, reason: str = "", run_id: str = "",
             triton_models: list[str] | None = None, triton_repository: str | None = None,
             deadline_s: float = DEFAULT_READY_DEADLINE, live_deadline_s: float = 30.0) -> RollbackResult:
    """Put a known-good version back in service and say so in state/.

    ``triton_repository``: where Triton sees repository/ (engine paths in the restored configs point there).

    ``failed_version``: a candidate that was loaded but not promoted (smoke test failed): the promoted
    version is reloaded and stays promoted. Otherwise the promoted version itself is rolled back to
    ``to_version`` (default: the previous one), which becomes the promoted version.
    """
    control.wait_live(live_deadline_s)
    with _lock(layout, model, f"rollback {model}"):
        plan = plan_rollback(layout, model, failed_version=failed_version, to_version=to_version,
                             triton_models=triton_models, triton_repository=triton_repository)
        apply_rollback(control, layout, plan, deadline_s)
        finish_rollback(control, layout, plan)
        return record_rollback(layout, plan, reason=reason, run_id=run_id)


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback puts back, decided once from state/ and the PVC, then applied to each replica."""

    model: str
    target: int | None  # the version that serves afterwards (None: nothing was ever promoted)
    failed: Release | None  # a candidate that failed (rollback --failed-version)
    good: Release | None  # rolling the promoted version back: the release to serve again
    drop: list[str]  # rolling back: Triton models the current version has and the target lacks
    from_version: int | None
    triton_models: list[str] | None


def plan_rollback(layout: PvcLayout, model: str, *, failed_version: int | None = None, to_version: int | None = None,
                  triton_models: list[str] | None = None, triton_repository: str | None = None) -> RollbackPlan:
    state = layout.deployment(model)
    if failed_version is not None:
        if failed_version == state.promoted:
            raise ConfigError(f"{model} v{failed_version} is the promoted version, not a candidate",
                              hint="to leave it, roll back without --failed-version")
        failed = prepare_release(layout, model, failed_version, triton_models=triton_models,
                                 triton_repository=triton_repository)
        return RollbackPlan(model=model, target=state.promoted, failed=failed, good=None, drop=[],
                            from_version=failed_version, triton_models=triton_models)
    target = to_version if to_version is not None else state.previous
    if target is None:
        raise ConfigError(f"{model} has no previous version to roll back to (promoted: {state.promoted})",
                          hint="pass --to-version N for a version that is on the PVC")
    good = prepare_release(layout, model, target, triton_models=triton_models, triton_repository=triton_repository)
    # Models the current version has and the target lacks are unloaded; a current version that
    # no longer validates must not block the way back, so it is only consulted when it can be.
    current_models: list[str] = []
    if state.promoted is not None:
        try:
            current_models = release_triton_models(layout, model, state.promoted, triton_models)
        except ConfigError as exc:
            log.warning("cannot list the models of %s v%s: %s", model, state.promoted, exc)
    return RollbackPlan(model=model, target=target, failed=None, good=good,
                        drop=[n for n in current_models if n not in good.configs], from_version=state.promoted,
                        triton_models=triton_models)


def carries(control: TritonControl, release: Release) -> bool:
    """Whether any real name of ``release`` answers at its version on this Triton (it was loaded in place, or a
    shadow swap got past switching the entries)."""
    return any(control.is_version_ready(name, release.version) for name in release.order)


def apply_rollback(control: TritonControl, layout: PvcLayout, plan: RollbackPlan, deadline_s: float) -> None:
    """Make one Triton serve ``plan.target``. The PVC's shadow directories stay (finish_rollback removes them
    once every replica is done)."""
    if plan.failed is not None:
        failed = plan.failed
        # A shadow candidate never served clients: unloading it is the rollback, unless a promote got as far as
        # switching the real names to it. An in-place candidate is replaced wherever it is loaded.
        if not shadow.has_shadow(layout, failed) or carries(control, failed):
            _restore(control, layout, failed, plan.target, deadline_s, triton_models=plan.triton_models)
        shadow.unload_shadow(control, failed.order)
        return
    assert plan.good is not None
    for name in plan.drop:
        _switch_on_disk(layout, name, None)
        control.unload(name)
    _apply(control, layout, plan.good, deadline_s)
    for name in plan.good.entries:
        _switch_on_disk(layout, name, plan.good.load_config(name))


def finish_rollback(control: TritonControl, layout: PvcLayout, plan: RollbackPlan) -> None:
    if plan.failed is not None:
        shadow.discard_shadow(control, layout, plan.failed.order)


def record_rollback(layout: PvcLayout, plan: RollbackPlan, *, reason: str, run_id: str) -> RollbackResult:
    state = layout.deployment(plan.model)
    if plan.failed is None:
        state.previous, state.promoted = state.promoted, plan.target
    state.record("rollback", plan.target, run_id=run_id, reason=reason, from_version=plan.from_version,
                 candidate_failed=plan.failed is not None)
    layout.save_deployment(state)
    return RollbackResult(model=plan.model, promoted=state.promoted, previous=state.previous,
                          last=state.history[-1])
