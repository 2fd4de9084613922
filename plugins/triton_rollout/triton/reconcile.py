"""Reconcile one model: is the promoted version intact on the PVC and loaded and ready in Triton?

Drift is repaired the same way a deploy works: damaged or missing files are re-downloaded through
staging and the version is swapped in whole (sync with repair), and a Triton that lost the model (a
restart, an unload by hand) gets the promoted version loaded again with its pinned config. The report
says what was found and what was done; drift that could not be repaired is an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from triton_rollout.errors import DriftNotRepaired, RolloutError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.release.s3 import ReleaseUri, fetch_manifest
from triton_rollout.release.sync import SyncOptions, check_published, sync_release
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.promote import load_candidate, prepare_release

if TYPE_CHECKING:
    from triton_rollout.release.signing import PublicKey

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    model: str
    promoted: int | None
    verify: str
    pvc_problems: list[str] = field(default_factory=list)
    repaired: bool = False
    bytes_transferred: int = 0
    triton_not_ready: list[str] = field(default_factory=list)  # "<pod>: <model>" with a fleet
    replicas_differed: list[str] = field(default_factory=list)  # with a fleet: the pods that did not serve it
    reloaded: bool = False
    endpoints: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def drift(self) -> bool:
        return bool(self.pvc_problems or self.triton_not_ready)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift": self.drift, "ok": self.ok}

    def summary(self) -> str:
        if self.promoted is None:
            return f"reconcile {self.model}: nothing promoted yet, nothing to check"
        found = "; ".join([*self.pvc_problems[:3], *(f"{t} not ready in Triton" for t in self.triton_not_ready)])
        done = [w for w, did in (("re-synced through staging", self.repaired), ("reloaded", self.reloaded)) if did]
        return (f"reconcile {self.model} v{self.promoted} ({self.verify} check): "
                f"{'drift: ' + found if self.drift else 'in sync'}"
                f"{'; ' + ' and '.join(done) if done else ''}"
                f"{'; NOT REPAIRED: ' + '; '.join(self.errors) if self.errors else ''}; "
                f"bytes={self.bytes_transferred}; seconds={self.seconds:.2f}; "
                f"endpoint={self.endpoints[0] if self.endpoints else '-'}")


def reconcile_model(layout: PvcLayout, control: TritonControl, model: str, *, release_prefix: str,
                    engine_prefix: str | None = None, full: bool = False, repair: bool = True,
                    triton_repository: str | None = None, deadline_s: float = 600.0,
                    trusted_keys: tuple[PublicKey, ...] = (),
                    replicas: Mapping[str, TritonControl] | None = None) -> ReconcileReport:
    """``trusted_keys``: the model's signing keys; a repair re-syncs through the same gate as a sync.
    ``replicas``: a fleet's replicas by pod name (triton/fleet.py), each checked and repaired instead of ``control``.
    """
    t0 = time.monotonic()
    state = layout.deployment(model)
    report = ReconcileReport(model=model, promoted=state.promoted, verify="full" if full else "stat")
    if state.promoted is None:
        return report
    version = state.promoted
    record = layout.publish_record(model, version)
    if record is not None:
        report.pvc_problems = check_published(layout, record.manifest, record, full=full)
    else:
        report.pvc_problems = [f"no publish record for v{version} at {layout.publish_record_path(model, version)}"]
    if report.pvc_problems:
        log.warning("%s v%d drifted on the PVC: %s", model, version, "; ".join(report.pvc_problems[:5]))
        if repair:
            try:
                release = ReleaseUri.under(release_prefix, model, version)
                uri = release.servable(fetch_manifest(release, trusted_keys=trusted_keys).kind, engine_prefix)
                result = sync_release(uri, layout.root, options=SyncOptions(
                    repair=True, verify="full" if full else "stat", prune=False, progress_interval=0,
                    trusted_keys=trusted_keys))
                report.repaired = True
                report.bytes_transferred = result.bytes_transferred
            except RolloutError as exc:
                report.errors.append(f"re-sync failed: {exc.message}")
        else:
            report.errors.append("PVC drift left as found (--no-repair)")
    if not report.errors:
        for pod, target in (replicas or {"": control}).items():
            _check_triton(layout, target, report, version, repair=repair, triton_repository=triton_repository,
                          deadline_s=deadline_s, pod=pod)
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def _check_triton(layout: PvcLayout, control: TritonControl, report: ReconcileReport, version: int, *,
                  repair: bool, triton_repository: str | None, deadline_s: float, pod: str = "") -> None:
    where = f"{pod}: " if pod else ""
    try:
        release = prepare_release(layout, report.model, version, triton_repository=triton_repository)
        not_ready = [n for n in release.order if not control.is_version_ready(n, version)]
        report.triton_not_ready += [where + n for n in not_ready]
        if not_ready and pod:
            report.replicas_differed.append(pod)
        # Repaired files must be read again by Triton (a python backend or an engine holds the old ones).
        if (not_ready or report.repaired) and repair:
            # The promoted version, reloaded where it serves: it passed its smoke test when it was promoted.
            loaded = load_candidate(control, layout, release, deadline_s=deadline_s, candidate="in_place")
            report.reloaded = True
            report.endpoints += loaded.endpoints
        elif not_ready:
            report.errors.append(f"{where}Triton drift left as found (--no-repair)")
        else:
            report.endpoints += [f"{control.base_url}/v2/models/{n}/versions/{version}/infer" for n in release.entries]
    except RolloutError as exc:
        report.errors.append(f"{where}Triton: {exc.message}")


def require_in_sync(report: ReconcileReport) -> None:
    if report.errors:
        raise DriftNotRepaired(f"{report.model}: {'; '.join(report.errors)}")
