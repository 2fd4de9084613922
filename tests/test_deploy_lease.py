"""The per-model deploy lease (pvc/lease.py): one deploy run between its load and its promote or rollback.

Unit cases on a real directory, a race between real processes, and the CLI steps against a real tritonserver:
two `deploy` processes of one model at once are serialized, a load that waits too long fails with exit code 19
having loaded nothing, a downgrade that became one while it waited is refused (exit code 21), and a step whose
lease was taken by another run stops before it tests or promotes anything (exit code 20).
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from triton_rollout import cli
from triton_rollout.errors import ConfigError, DeployLeaseHeld, DeployLeaseLost, DowngradeRefused
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lease import DeployLeases, LeaseOptions
from triton_rollout.triton.control import TritonControl

from devstack.triton import TritonServer
from tests.helpers import cli_env, run_cli, tensor_version_by_hand

MODEL = "demo-tensor"


def leases(layout: PvcLayout, run_id: str, *, ttl: float = 60.0, wait: float = 0.0) -> DeployLeases:
    return DeployLeases(layout, MODEL, run_id, LeaseOptions(ttl_s=ttl, wait_s=wait, poll_s=0.05))


def actions(layout: PvcLayout) -> list[tuple[str, str]]:
    return [(e.action, e.run_id) for e in layout.deploy_lease(MODEL).log]


# -- the record ---------------------------------------------------------------------------------------------


def test_a_second_run_waits_then_fails_naming_the_holder_and_the_log_says_so(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    held = leases(layout, "manual__a").take(3, "load")
    assert (held.run_id, held.version, held.step) == ("manual__a", 3, "load")
    t0 = time.monotonic()
    with pytest.raises(DeployLeaseHeld, match=r"held by run manual__a \(v3, last renewed by its load step") as exc:
        leases(layout, "backfill__b", wait=0.3).take(1, "load")
    assert 0.3 <= time.monotonic() - t0 < 3
    assert "backfill__b waited 0s for it (--lease-wait 0.3) and loaded nothing" in str(exc.value)
    assert exc.value.exit_code == 19 and "status` shows the holder" in str(exc.value)
    # One "waiting" line however long it waited; the lease is still the first run's.
    assert actions(layout) == [("taken", "manual__a"), ("waiting", "backfill__b")]
    assert layout.deploy_lease(MODEL).current == held


def test_the_same_run_takes_it_again_and_keeps_its_first_take_time(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    first = leases(layout, "r1").take(2, "load")
    time.sleep(0.02)
    again = leases(layout, "r1").take(2, "rollback")
    assert again.taken_at == first.taken_at and again.renewed_at > first.renewed_at and again.step == "rollback"
    assert layout.deploy_lease(MODEL).log[-1].note == "again"


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops_at_its_next_step(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    leases(layout, "dead", ttl=0.2).take(4, "load")
    time.sleep(0.3)
    mine = leases(layout, "alive").take(5, "load")
    assert mine.run_id == "alive"
    expired = layout.deploy_lease(MODEL).log[-2]
    assert (expired.action, expired.run_id, expired.other) == ("expired", "alive", "dead")
    assert "took over from run dead (v4" in expired.note
    # The dead run's smoke step comes back: its candidate may have been replaced, so it changes nothing.
    with pytest.raises(DeployLeaseLost, match=r"smoke step of run dead found the deploy lease of demo-tensor held "
                                              r"by run alive \(v5"):
        leases(layout, "dead").renew("smoke")
    # Still lost once the other run has released it: the log shows it was taken since the dead run's take.
    leases(layout, "alive").release("promote")
    with pytest.raises(DeployLeaseLost, match=r"held by run alive \(it took the lease at its load step"):
        leases(layout, "dead").renew("promote")


def test_renew_keeps_the_lease_and_a_step_without_a_lease_goes_on(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    # No lease and none taken from this run (a load by hand, or by an older release): None, nothing written.
    assert leases(layout, "r").renew("smoke") is None
    assert not layout.lease_path(MODEL).exists()
    taken = leases(layout, "r", ttl=0.3).take(1, "load")
    time.sleep(0.2)
    renewed = leases(layout, "r", ttl=0.3).renew("smoke")
    assert renewed is not None and renewed.renewed_at > taken.renewed_at and renewed.step == "smoke"
    time.sleep(0.2)  # past the first take's TTL, within the renewal's
    with pytest.raises(DeployLeaseHeld):
        leases(layout, "other").take(2, "load")


def test_release_by_another_run_leaves_the_lease_alone(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    leases(layout, "r1").take(1, "load")
    assert leases(layout, "r2").release("rollback") is False
    assert layout.deploy_lease(MODEL).current is not None
    assert leases(layout, "r1").release("promote") is True
    assert layout.deploy_lease(MODEL).current is None and actions(layout)[-1] == ("released", "r1")


def test_kept_renews_while_a_step_outlasts_the_ttl(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    lease = leases(layout, "long", ttl=0.6)
    lease.take(1, "load")
    with lease.kept("load"):
        time.sleep(1.5)  # 2.5 TTLs
        with pytest.raises(DeployLeaseHeld):
            leases(layout, "other").take(2, "load")
    assert layout.deploy_lease(MODEL).current.run_id == "long"  # type: ignore[union-attr]


def test_a_waiting_run_gets_the_lease_when_the_holder_releases_it(pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    leases(layout, "first").take(1, "load")
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(leases(layout, "second", wait=10).take(2, "load").taken_at))
    waiter.start()
    time.sleep(0.5)
    released_at = time.time()
    leases(layout, "first").release("promote")
    waiter.join(timeout=10)
    assert got and got[0] >= released_at
    assert actions(layout) == [("taken", "first"), ("waiting", "second"), ("released", "first"), ("taken", "second")]


@pytest.mark.parametrize("ttl, wait", [(0, 1), (-1, 1), (1, -1), (float("nan"), 1)])
def test_bad_lease_options_are_config_errors(ttl: float, wait: float) -> None:
    with pytest.raises(ConfigError, match="--lease-"):
        LeaseOptions(ttl_s=ttl, wait_s=wait)


def _hold_in_turn(root: str, run_id: str, rounds: int, journal: str) -> None:
    layout = PvcLayout.at(root, create=False)
    for i in range(rounds):
        lease = DeployLeases(layout, MODEL, f"{run_id}-{i}", LeaseOptions(ttl_s=30, wait_s=60, poll_s=0.01))
        lease.take(i + 1, "load")
        with open(journal, "a") as fh:
            fh.write(f"start {run_id}-{i}\n")
            fh.flush()
            time.sleep(0.02)
            fh.write(f"end {run_id}-{i}\n")
        lease.release("promote")


def test_processes_racing_for_the_lease_hold_it_one_at_a_time(pvc: Path, tmp_path: Path) -> None:
    """Four processes, five deploys each, all taking and releasing one model's lease: the journal each writes
    while it holds the lease never interleaves, and the log has every take and release."""
    PvcLayout.at(pvc)
    journal = tmp_path / "journal"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold_in_turn, args=(str(pvc), f"p{n}", 5, str(journal))) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    lines = journal.read_text().splitlines()
    assert len(lines) == 40
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        assert start.startswith("start ") and end == "end " + start.removeprefix("start "), lines
    log = PvcLayout.at(pvc).deploy_lease(MODEL).log
    assert sum(e.action == "taken" for e in log) == 20 and sum(e.action == "released" for e in log) == 20


# -- the CLI steps against a real Triton --------------------------------------------------------------------


def _base(pvc: Path, triton: TritonServer) -> list[str]:
    return ["--pvc", str(pvc), "--triton-url", triton.http_url, "--model", MODEL, "--triton-models", "demo_tensor"]


@pytest.mark.slow
def test_two_deploy_processes_of_one_model_are_serialized_and_the_history_says_what_happened(
        pvc: Path, tmp_path: Path, triton: TritonServer) -> None:
    """v2 and v3 deployed at once by two `python -m triton_rollout deploy` processes (a manual run and a backfill,
    say): both end promoted, one after the other (the lease log's take / release times do not overlap), the one
    that waited logged whom it waited for, and Triton serves the one promoted last."""
    layout = PvcLayout.at(pvc)
    for v in (1, 2, 3):
        tensor_version_by_hand(layout, tmp_path, v)
    base = _base(pvc, triton)
    assert cli.main(["deploy", *base, "--version", "1", "--run-id", "first"]) == 0
    procs = {v: subprocess.Popen([sys.executable, "-m", "triton_rollout", "deploy", *base, "--version", str(v),
                                  "--run-id", f"run-v{v}", "--lease-wait", "120"], env=cli_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (2, 3)}
    out = {v: p.communicate(timeout=180) for v, p in procs.items()}
    assert {v: p.returncode for v, p in procs.items()} == {2: 0, 3: 0}, out
    log = [e for e in layout.deploy_lease(MODEL).log if e.run_id.startswith("run-v")]
    held = {e.run_id: e.at for e in log if e.action == "taken"}
    ended = {e.run_id: e.at for e in log if e.action == "released"}
    (a, b) = sorted(held, key=held.__getitem__)
    assert held[a] < ended[a] <= held[b] < ended[b], log
    waited = [e for e in log if e.action == "waiting"]
    assert [(e.run_id, e.other) for e in waited] == [(b, a)]
    waiter = int(b.removeprefix("run-v"))
    assert f"waiting for the deploy lease of {MODEL}, held by run {a}" in out[waiter][1]
    state = layout.deployment(MODEL)
    promotes = [(h.version, h.details["run_id"]) for h in state.history if h.event == "promote"]
    assert promotes == [(1, "first"), (int(a.removeprefix("run-v")), a), (waiter, b)]
    with TritonControl(triton.url, timeout=5) as control:
        assert control.ready_versions("demo_tensor") == [state.promoted] == [waiter]


def test_a_load_refused_by_the_lease_or_a_downgrade_loads_nothing_and_a_failed_load_gives_it_back(
        pvc: Path, tmp_path: Path, triton: TritonServer) -> None:
    layout = PvcLayout.at(pvc)
    for v in (1, 2):
        tensor_version_by_hand(layout, tmp_path, v)
    base = _base(pvc, triton)
    assert cli.main(["deploy", *base, "--version", "2", "--run-id", "newer"]) == 0
    # Another run holds the model: a load that waits 0.5 s fails with exit code 19, Triton never asked.
    leases(layout, "holder").take(3, "load")
    t0 = time.monotonic()
    assert cli.main(["load", *base, "--version", "1", "--run-id", "late", "--lease-wait", "0.5"]) == 19
    assert time.monotonic() - t0 < 10
    assert triton.log_path.read_text().count("loading: demo_tensor__candidate") == 1  # v2's own load
    leases(layout, "holder").release("promote")
    # Free now, but v2 was promoted while it waited: refused under the lease, and the lease given back.
    rc = cli.main(["load", *base, "--version", "1", "--run-id", "late", "--refuse-downgrade"])
    assert rc == DowngradeRefused.exit_code == 21
    assert layout.deploy_lease(MODEL).current is None and actions(layout)[-1] == ("refused", "late")
    assert triton.log_path.read_text().count("loading: demo_tensor__candidate") == 1
    with TritonControl(triton.url, timeout=5) as control:
        assert control.ready_versions("demo_tensor") == [2]
    # The smoke step of a run whose lease another run holds: exit code 20, no smoke request sent.
    leases(layout, "holder").take(3, "load")
    assert cli.main(["smoke", *base, "--version", "2", "--run-id", "late"]) == DeployLeaseLost.exit_code == 20
    status = run_cli("status", "--pvc", str(pvc), timeout=60)
    assert "deploy lease held by run holder (v3, last renewed by its load step" in status.stdout, status
    leases(layout, "holder").release("promote")
    # A load that fails puts back what it changed, so it gives the lease back at once (the next run need not
    # wait for its TTL): v3 raises in initialize.
    tensor_version_by_hand(layout, tmp_path, 3, "init_error")
    assert cli.main(["load", *base, "--version", "3", "--run-id", "broken"]) == 11
    last = layout.deploy_lease(MODEL).log[-1]
    assert (last.action, last.run_id, last.note) == ("released", "broken", "the load failed: TritonError")
    with TritonControl(triton.url, timeout=5) as control:
        assert control.ready_versions("demo_tensor") == [2]
    leases(layout, "holder").take(3, "load")
    # The reconcile leaves a model a deploy holds alone (and says so).
    out = run_cli("reconcile", *base, "--release-prefix", "s3://nowhere/releases", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "a deploy holds the model: run holder (v3" in json.loads(out.stdout.splitlines()[-1])["skipped"]
