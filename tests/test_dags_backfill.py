"""Backfills re-deploy, for each past date, the release that was current then (as-of resolution)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from triton_rollout.pvc.layout import PvcLayout

from devstack import demo_models
from tests.helpers import RolloutStack, golden, infer_llm, text_of

LLM = demo_models.LLM_MODEL
DAG_ID = f"deploy_{LLM}"


def airflow_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_backfill_over_two_past_dates_deploys_the_versions_current_then(rollout: RolloutStack) -> None:
    # Two hourly slots two days ago; v1 was current at the first, v2 (published in between) at the second,
    # and v3 came later: a backfill must not deploy it.
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    second = first + timedelta(hours=1)
    rollout.publish(LLM, 1, created_at=first - timedelta(minutes=30))
    rollout.publish(LLM, 2, created_at=first + timedelta(minutes=30))
    rollout.publish(LLM, 3, created_at=datetime.now(UTC) - timedelta(minutes=1))

    # The runs `airflow backfill create` would make (the command in the README, with --dry-run).
    airflow_cli("dags", "reserialize", "--bundle-name", "dags-folder")
    out = airflow_cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", first.isoformat(),
                      "--to-date", second.isoformat(), "--reprocess-behavior", "completed", "--dry-run")
    dates = [datetime.fromisoformat(d) for d in re.findall(r"^\| (\d{4}-\S+ \S+) +\|", out, re.M)]
    assert dates == [first, second], out

    deployed = []
    for logical_date in dates:  # in order, as the scheduler runs a backfill with max_active_runs=1
        dr, states = rollout.run(DAG_ID, logical_date=logical_date)
        assert dr.state == "success", states
        deployed.append(PvcLayout.at(rollout.pvc, create=False).deployment(LLM).promoted)
    assert deployed == [1, 2]
    answer = infer_llm(rollout.triton.http_url, 2)
    assert answer["model_version"] == "2" and text_of(answer) == golden(2)
