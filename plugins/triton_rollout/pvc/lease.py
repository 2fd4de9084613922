"""The per-model deploy lease: one deploy run at a time between its load and its promote or rollback.

Airflow's ``max_active_runs=1`` keeps a model's manual and scheduled runs apart, but not its backfill runs,
which Airflow 3 counts separately (airflow/jobs/scheduler_job_runner.py, ``active_non_backfill_runs``), and
not a Job, a CronJob or a Kubeflow run next to an Airflow one. Each step runs in its own pod, so no process
holds anything from load to promote: the lease is a record on the PVC (state/leases/<model>.json, beside
the deployment state it protects) naming the run that holds the model and until when.

- ``load`` (and ``rollback``, ``deploy``) takes it, waiting while another run's unexpired lease stands;
- ``smoke`` and ``promote`` renew it, and stop (DeployLeaseLost) when another run holds it: their candidate
  may have been replaced since their load;
- ``promote`` and ``rollback`` release it; a run that dies holding it stops renewing it, and the next load
  takes it over once ``ttl_s`` has passed since the last renewal (logged as ``expired``).

While a step works, a thread renews the lease every quarter TTL, so the TTL only has to cover the gaps between
steps (scheduling, retries), not a long load. Every read-modify-write happens under a short PvcLock
(lock.py), which works across pods and nodes on a ReadWriteMany volume. Times are epoch seconds: the pods of
one run share the PVC but not a monotonic clock (clock skew between nodes shortens or lengthens a TTL).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from triton_rollout.errors import ConfigError, DeployLeaseHeld, DeployLeaseLost
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.pvc.records import DeployLease, LeaseAction, LeaseEvent, LeaseRecord, holder_text

log = logging.getLogger(__name__)

# Long enough for the scheduler to start the next step's pod and for a retry's delay (the deploy DAG: 30 s);
# short enough that a killed run blocks the model for minutes, not hours.
DEFAULT_LEASE_TTL_S = 900.0
# How long a load waits for another run's candidate to be promoted or rolled back.
DEFAULT_LEASE_WAIT_S = 1800.0
WAIT_LOG_EVERY_S = 30.0
_RECORD_LOCK_TIMEOUT_S = 60.0  # the record lock is held for one read and one write

T = TypeVar("T")


@dataclass(frozen=True)
class LeaseOptions:
    ttl_s: float = DEFAULT_LEASE_TTL_S
    wait_s: float = DEFAULT_LEASE_WAIT_S
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ConfigError(f"--lease-ttl must be a positive number of seconds, not {self.ttl_s:g}")
        if not self.wait_s >= 0:
            raise ConfigError(f"--lease-wait must be zero or a positive number of seconds, not {self.wait_s:g}")


class DeployLeases:
    """The deploy lease of ``model`` as seen by one run (``run_id``; "" for steps run by hand)."""

    def __init__(self, layout: PvcLayout, model: str, run_id: str, options: LeaseOptions | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.layout = layout
        self.model = model
        self.run_id = run_id
        self.options = options or LeaseOptions()
        self._clock = clock

    # -- the record, read and rewritten under its lock ----------------------------------------------------

    def _update(self, change: Callable[[LeaseRecord, float], tuple[bool, T]]) -> T:
        """``change`` edits the record in place and says whether it did (only then is it written)."""
        with PvcLock(self.layout.lease_lock_file(self.model), purpose=f"deploy lease of {self.model}",
                     timeout=_RECORD_LOCK_TIMEOUT_S, stale_after=30.0, heartbeat=5.0):
            record = self.layout.deploy_lease(self.model)
            changed, result = change(record, self._clock())
            if changed:
                self.layout.save_deploy_lease(record)
            return result

    def _event(self, action: LeaseAction, version: int | None, step: str, now: float, *, other: str = "",
               note: str = "") -> LeaseEvent:
        return LeaseEvent(action=action, run_id=self.run_id, version=version, step=step, at=now, other=other,
                          note=note)

    # -- take (load, rollback, deploy) --------------------------------------------------------------------

    def take(self, version: int | None, step: str) -> DeployLease:
        """Hold the model for this run, waiting up to ``wait_s`` while another run's lease stands.

        A lease this run already holds (a retry, the next step) is renewed; an expired one is taken over."""
        start = time.monotonic()
        waited_once = False
        next_log = 0.0
        while True:
            first = not waited_once
            lease = self._update(lambda record, now, first=first: self._try_take(record, now, version, step, first))
            if lease.run_id == self.run_id:
                if waited_once:
                    log.info("took the deploy lease of %s after waiting %.0fs", self.model, time.monotonic() - start)
                return lease
            waited = time.monotonic() - start
            now = self._clock()
            if waited >= self.options.wait_s:
                raise DeployLeaseHeld(
                    f"the deploy lease of {self.model} is held by {lease.describe(now)}: another deploy's candidate "
                    f"is between its load and its promote or rollback; {holder_text(self.run_id)} waited "
                    f"{waited:.0f}s for it (--lease-wait {self.options.wait_s:g}) and loaded nothing")
            if waited >= next_log:
                log.info("waiting for the deploy lease of %s, held by %s; waited %.0fs of %.0fs", self.model,
                         lease.describe(now), waited, self.options.wait_s)
                next_log = waited + WAIT_LOG_EVERY_S
            waited_once = True
            time.sleep(min(self.options.poll_s, max(self.options.wait_s - waited, 0.01)))

    def _try_take(self, record: LeaseRecord, now: float, version: int | None, step: str,
                  first: bool) -> tuple[bool, DeployLease]:
        """This run's lease if the model is free, already this run's, or held past its TTL; else the holder's
        (a first look is logged as ``waiting``)."""
        lease = record.current
        if lease is not None and lease.run_id != self.run_id and not lease.expired(now):
            if first:
                record.append(self._event("waiting", version, step, now, other=lease.run_id))
            return first, lease
        if lease is not None and lease.run_id != self.run_id:
            record.append(self._event("expired", version, step, now, other=lease.run_id,
                                      note=f"took over from {lease.describe(now)}"))
            log.warning("took over the expired deploy lease of %s from %s", self.model, lease.describe(now))
        again = lease is not None and lease.run_id == self.run_id
        mine = DeployLease(model=self.model, run_id=self.run_id, version=version, step=step,
                           taken_at=lease.taken_at if lease is not None and again else now, renewed_at=now,
                           ttl_s=self.options.ttl_s)
        record.current = mine
        record.append(self._event("taken", version, step, now, note="again" if again else ""))
        return True, mine

    # -- renew (smoke, promote) -------------------------------------------------------------------------

    def renew(self, step: str) -> DeployLease | None:
        """Confirm this run still holds the model. DeployLeaseLost when another run holds it, or took it
        after this run's last take; None when no lease stands and none was taken from this run (a load run
        without a lease, e.g. by hand or by an older release of this project): the step goes on."""

        def attempt(record: LeaseRecord, now: float) -> tuple[bool, DeployLease | None]:
            lease = record.current
            if lease is not None and lease.run_id == self.run_id:
                mine = DeployLease(model=lease.model, run_id=lease.run_id, version=lease.version, step=step,
                                   taken_at=lease.taken_at, renewed_at=now, ttl_s=self.options.ttl_s)
                record.current = mine
                return True, mine
            if lease is not None and not lease.expired(now):
                raise self._lost(lease.describe(now), step)
            taker = self._taken_since_mine(record)
            if taker is not None:
                raise self._lost(f"{holder_text(taker.run_id)} (it took the lease at its {taker.step} step "
                                 f"{now - taker.at:.0f}s ago)", step)
            return False, None

        return self._update(attempt)

    def _taken_since_mine(self, record: LeaseRecord) -> LeaseEvent | None:
        """Another run's take after this run's last one (None also when this run never took it)."""
        taker: LeaseEvent | None = None
        for event in reversed(record.log):
            if event.action in ("taken", "expired") and event.run_id == self.run_id:
                return taker
            if event.action in ("taken", "expired") and event.run_id != self.run_id and taker is None:
                taker = event
        return None

    def _lost(self, holder: str, step: str) -> DeployLeaseLost:
        return DeployLeaseLost(
            f"the {step} step of {holder_text(self.run_id)} found the deploy lease of {self.model} held by "
            f"{holder}: this run's candidate may have been replaced since its load, so {step} stops here and "
            "changes nothing")

    # -- release (promote, rollback) ----------------------------------------------------------------------

    def release(self, step: str, *, action: LeaseAction = "released", note: str = "") -> bool:
        """End this run's hold (True); a lease held by another run is left alone (False)."""

        def attempt(record: LeaseRecord, now: float) -> tuple[bool, bool]:
            lease = record.current
            if lease is None or lease.run_id != self.run_id:
                return False, False
            record.current = None
            record.append(self._event(action, lease.version, step, now, note=note))
            return True, True

        released = self._update(attempt)
        if not released:
            log.info("%s holds no deploy lease of %s to release", holder_text(self.run_id), self.model)
        return released

    @contextlib.contextmanager
    def held(self, version: int | None, step: str) -> Iterator[DeployLease]:
        """Take the lease, keep it fresh while the block runs, release it however the block ends (a step that
        ends the run itself: rollback, deploy)."""
        lease = self.take(version, step)
        try:
            with self.kept(step):
                yield lease
        finally:
            self.release(step)

    # -- kept fresh while a step works --------------------------------------------------------------------

    @contextlib.contextmanager
    def kept(self, step: str) -> Iterator[None]:
        """Renew the lease every quarter TTL while the block runs (a load can outlast the TTL)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(self.options.ttl_s / 4, 0.5)):
                try:
                    if self.renew(step) is None:
                        return
                except Exception as exc:  # the step's own next check (renew or release) fails closed
                    log.error("could not renew the deploy lease of %s: %s", self.model, exc)
                    return

        thread = threading.Thread(target=beat, name="deploy-lease-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=_RECORD_LOCK_TIMEOUT_S)
