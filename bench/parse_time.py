"""DAG file parse time: each file in dags/ against an empty DAG file (``from airflow.sdk import DAG``).

Three figures per file, each the median of several runs, each a parse as Airflow does it (a ``DagBag``
of the one file, then the serialization the dag-processor sends to its manager):

- ``cold``: a fresh interpreter that has imported ``airflow.sdk`` (every Airflow process has): what a
  task's worker pays for each task, since it parses the DAG file once per task;
- ``steady``: the dag-processor at steady state: the parent imports the ``airflow.*`` modules the file
  names at its top level (what the manager does when ``[dag_processor] parsing_pre_import_modules`` is on,
  Airflow's default), then forks one child per parse (airflow/dag_processing/processor.py);
- ``warm``: the same process parsing again with every module already imported: the DAG objects alone.

Ratios are against the empty file parsed the same way in the same run (the machine's cores are shared).

    PYTHONPATH=.:plugins python -m bench.parse_time          (also part of: make bench)

    BENCH_PARSE_RUNS=7   runs per figure (medians)
    BENCH_RESULTS_PARSE=path   where the JSON goes (default bench/results/parse.json)
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from devstack.stack import DEMO_BUILDERS

REPO = Path(__file__).resolve().parent.parent
DAG_FILES = (REPO / "dags" / "triton_deploy.py", REPO / "dags" / "triton_reconcile.py")
TARGET_S = 0.3  # issue 16: under 0.3 s per file at steady state
EMPTY_DAG = "from airflow.sdk import DAG  # noqa: F401\n"


def parse_once(path: Path) -> float:
    """Seconds to parse ``path`` into DAGs and serialize them; raises on an import error."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization, LazyDeserializedDAG

    start = time.perf_counter()
    bag = DagBag(dag_folder=str(path), safe_mode=False, load_op_links=False)
    for dag in bag.dags.values():  # as the dag-processor's _serialize_dags does
        LazyDeserializedDAG(data=DagSerialization.to_dict(dag), last_loaded=dag.last_loaded)
    elapsed = time.perf_counter() - start
    if bag.import_errors:
        raise RuntimeError(f"{path} does not parse: {bag.import_errors}")
    return elapsed


def cold(path: Path, runs: int) -> float:
    code = ("import sys, airflow.sdk; from bench.parse_time import parse_once; "
            "from pathlib import Path; print(parse_once(Path(sys.argv[1])))")
    return statistics.median(_python(code, path) for _ in range(runs))


def steady(path: Path, runs: int) -> float:
    """Forked parses after the manager's pre-import, in a child interpreter so this process stays clean."""
    code = "import sys; from bench.parse_time import _steady_here; from pathlib import Path; " \
           "print(_steady_here(Path(sys.argv[1]), int(sys.argv[2])))"
    return _python(code, path, runs)


def _steady_here(path: Path, runs: int) -> float:
    import airflow.dag_processing.manager  # noqa: F401  (the manager's own modules, airflow.sdk among them)
    from airflow.utils.file import iter_airflow_imports

    for module in iter_airflow_imports(str(path)):
        importlib.import_module(module)
    parse_once(REPO / "bench" / "__init__.py")  # DagBag's own modules, as the manager has them
    times = []
    for _ in range(runs):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one parse, its time back through the pipe
            os.close(read)
            code = 1
            try:
                os.write(write, str(parse_once(path)).encode())
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:  # never back into the parent's code
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as fh:
            sent = fh.read()
        if os.waitpid(pid, 0)[1] != 0:
            raise RuntimeError(f"the forked parse of {path} failed (its traceback is above)")
        times.append(float(sent))
    return statistics.median(times)


def warm(path: Path, runs: int) -> float:
    code = ("import sys; from bench.parse_time import parse_once; from pathlib import Path; import statistics; "
            "p = Path(sys.argv[1]); parse_once(p); "
            "print(statistics.median(parse_once(p) for _ in range(int(sys.argv[2]))))")
    return _python(code, path, runs)


def _python(code: str, *args: object) -> float:
    """The number the last line of ``python -c code args`` prints."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"parsing {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    env.setdefault("AIRFLOW_CONFIG", str(REPO / "airflow.cfg"))
    env.setdefault("AIRFLOW_HOME", str(REPO / ".devstack" / "airflow-bench"))
    env.setdefault("TRITON_URL", "http://127.0.0.1:8000")  # dags/models.yaml reads it; nothing is contacted
    for key, value in DEMO_BUILDERS.items():  # dags/models.yaml's demo models build with the devstack's builder
        env.setdefault(key, value)
    return env


def main() -> int:
    runs = int(os.environ.get("BENCH_PARSE_RUNS", "7"))
    results: dict[str, Any] = {"runs": runs, "target_steady_s": TARGET_S, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        base = {kind: fn(empty, runs) for kind, fn in (("cold", cold), ("steady", steady), ("warm", warm))}
    results["empty"] = base
    lines = [f"DAG file parse time (median of {runs}; ratio: x the empty DAG file `{EMPTY_DAG.split('  ')[0]}`)",
             f"{'file':<22} {'cold (worker)':>20} {'steady (dag-processor)':>24} {'warm (in-process)':>20}",
             f"{'(empty DAG file)':<22} {base['cold']:>19.3f}s {base['steady']:>23.3f}s {base['warm']:>19.3f}s"]
    for path in DAG_FILES:
        figures = {kind: fn(path, runs) for kind, fn in (("cold", cold), ("steady", steady), ("warm", warm))}
        results["files"][path.name] = figures
        cells = [f"{figures[k]:.3f}s {figures[k] / base[k]:5.1f}x" for k in ("cold", "steady", "warm")]
        met = "met" if figures["steady"] < TARGET_S else "NOT met"
        lines.append(f"{path.name:<22} {cells[0]:>20} {cells[1]:>24} {cells[2]:>20}   steady < {TARGET_S}s: {met}")
    print("\n".join(lines), flush=True)
    out = Path(os.environ.get("BENCH_RESULTS_PARSE", REPO / "bench" / "results" / "parse.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
