"""The real dag-processor's parse time of each DAG file: its own ``last_parse_duration``, read back from a
running Airflow's REST API (``GET /api/v2/dags/{dag_id}``), where bench/parse_time.py models the processor.

It starts Airflow alone (PostgreSQL, api-server, scheduler, dag-processor, triggerer on loopback; no S3, no
Triton: a parse contacts neither), has the dag-processor re-parse every few seconds, and records each new
parse's duration per file until it has enough; the first parse of each file (the manager's first imports)
is reported apart from the steady ones.

    PYTHONPATH=.:plugins python -m bench.processor_parse          (also part of: make bench)

    BENCH_PROCESSOR_PARSES=7   steady parses per file (medians)
    BENCH_RESULTS_PROCESSOR=path   where the JSON goes (default bench/results/processor_parse.json)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.parse_time import REPO, TARGET_S, _env
from devstack.airflow import USERNAME, AirflowClient, AirflowServer

# One DAG of each file: the file's parse duration is recorded on every DAG it holds.
DAG_OF_FILE = {"triton_deploy.py": "deploy_demo-llm", "triton_reconcile.py": "reconcile_triton_models"}
INTERVAL_S = 5  # [dag_processor] min_file_process_interval for the bench (airflow.cfg: 60)


def collect(client: AirflowClient, parses: int, timeout: float) -> dict[str, list[float]]:
    """Each file's parse durations, one per new ``last_parsed_time``, the first parse first."""
    seen: dict[str, list[tuple[str, float]]] = {name: [] for name in DAG_OF_FILE}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(len(v) < parses + 1 for v in seen.values()):
        for name, dag_id in DAG_OF_FILE.items():
            dag = client.request("GET", f"/dags/{dag_id}")
            stamp, duration = dag.get("last_parsed_time"), dag.get("last_parse_duration")
            if stamp and duration is not None and (not seen[name] or seen[name][-1][0] != stamp):
                seen[name].append((stamp, float(duration)))
        time.sleep(1)
    short = {n: len(v) for n, v in seen.items() if len(v) < parses + 1}
    if short:
        raise RuntimeError(f"the dag-processor parsed too few times in {timeout:.0f}s: {short} (want {parses + 1} "
                           f"each); see its log")
    return {name: [d for _, d in v] for name, v in seen.items()}


def main() -> int:
    parses = int(os.environ.get("BENCH_PROCESSOR_PARSES", "7"))
    out = Path(os.environ.get("BENCH_RESULTS_PROCESSOR", REPO / "bench" / "results" / "processor_parse.json"))
    os.sync()  # after the sync bench: its dirty pages are not this bench's to write back
    (REPO / ".devstack").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="processor-bench-", dir=REPO / ".devstack"))
    env = {**_env(), "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(INTERVAL_S)}
    env.pop("AIRFLOW_HOME", None)
    env.pop("AIRFLOW_CONFIG", None)
    airflow = AirflowServer(home, env=env)
    try:
        airflow.start()
        client = AirflowClient(airflow.url, USERNAME, airflow.password)
        for dag_id in DAG_OF_FILE.values():
            client.wait_for_dag(dag_id)
        durations = collect(client, parses, timeout=(parses + 2) * INTERVAL_S * 4 + 120)
    finally:
        airflow.stop()
        shutil.rmtree(home, ignore_errors=True)
    results: dict[str, Any] = {"parses": parses, "min_file_process_interval_s": INTERVAL_S,
                               "target_steady_s": TARGET_S, "files": {}}
    lines = [f"the dag-processor's own parse duration (last_parse_duration; median of {parses} after the first)",
             f"{'file':<22} {'first':>8} {'steady':>8} {'min-max':>15}"]
    for name, values in durations.items():
        first, steady = values[0], values[1:]
        med = statistics.median(steady)
        results["files"][name] = {"first_s": round(first, 3), "steady_s": round(med, 3), "all_s": values}
        met = "met" if med < TARGET_S else "NOT met"
        lines.append(f"{name:<22} {first:>7.3f}s {med:>7.3f}s {min(steady):>6.3f}-{max(steady):.3f}s   "
                     f"steady < {TARGET_S}s: {met}")
    print("\n".join(lines), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
