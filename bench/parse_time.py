"""DAG file parse time: each file in dags/ against an empty DAG file (``from airflow.sdk import DAG``).

Three figures per file, each the median of several runs, each a parse as Airflow does it (a ``DagBag``
of the one file, then the serialization the dag-processor sends to its manager):

- ``cold``: a fresh interpreter that has imported ``airflow.sdk`` (every Airflow process has): what a
  task's worker pays for each task, since it parses the DAG file once per task;
- ``steady``: the dag-processor at steady state: the parent freezes its heap (``gc.freeze()``), imports the
  ``airflow.*`` modules the file names at its top level (what the manager does when ``[dag_processor]
  parsing_pre_import_modules`` is on, Airflow's default), then forks one child per parse
  (airflow/dag_processing/manager.py and processor.py); with the child's page faults and kernel time;
- ``warm``: the same process parsing again with every module already imported: the DAG objects alone.

Ratios are against the empty file parsed the same way in the same run (the machine's cores are shared).

    PYTHONPATH=.:plugins python -m bench.parse_time          (also part of: make bench)

    BENCH_PARSE_RUNS=7   runs per figure (medians)
    BENCH_RESULTS_PARSE=path   where the JSON goes (default bench/results/parse.json)
"""

from __future__ import annotations

import gc
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

from bench.machine import fresh_page_cost
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


def steady(path: Path, runs: int) -> dict[str, float]:
    """Forked parses after the manager's pre-import, in a child interpreter so this process stays clean:
    the median seconds, and the median page faults and kernel seconds of one forked parse."""
    code = "import sys, json; from bench.parse_time import _steady_here; from pathlib import Path; " \
           "print(json.dumps(_steady_here(Path(sys.argv[1]), int(sys.argv[2]))))"
    return json.loads(_python_line(code, path, runs))  # type: ignore[no-any-return]


def _steady_here(path: Path, runs: int) -> dict[str, float]:
    import airflow.dag_processing.manager  # noqa: F401  (the manager's own modules, airflow.sdk among them)
    from airflow.utils.file import iter_airflow_imports

    parse_once(REPO / "bench" / "__init__.py")  # DagBag's own modules, as the manager has them
    # The manager freezes what it holds before its parsing loop, so that a forked parse's collections do
    # not copy its heap (DagFileProcessorManager.before_run, gc.freeze(): Airflow 3.3 manager.py), and
    # pre-imports each file's airflow.* modules after that, per parse (processor.py
    # _pre_import_airflow_modules): those stay unfrozen, as here.
    gc.freeze()
    for module in iter_airflow_imports(str(path)):
        importlib.import_module(module)
    times, faults, kernel = [], [], []
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
        _, status, usage = os.wait4(pid, 0)
        if status != 0:
            raise RuntimeError(f"the forked parse of {path} failed (its traceback is above)")
        times.append(float(sent))
        # A forked child copies every page of the parent's heap it writes to (reference counts do):
        # each copy is a fresh page, which this VM charges for (bench/machine.py).
        faults.append(usage.ru_minflt)
        kernel.append(usage.ru_stime)
    return {"seconds": statistics.median(times), "page_faults": statistics.median(faults),
            "sys_s": round(statistics.median(kernel), 4)}


def warm(path: Path, runs: int) -> float:
    code = ("import sys; from bench.parse_time import parse_once; from pathlib import Path; import statistics; "
            "p = Path(sys.argv[1]); parse_once(p); "
            "print(statistics.median(parse_once(p) for _ in range(int(sys.argv[2]))))")
    return _python(code, path, runs)


def _python(code: str, *args: object) -> float:
    """The number the last line of ``python -c code args`` prints."""
    return float(_python_line(code, *args))


def _python_line(code: str, *args: object) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"parsing {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    env.setdefault("AIRFLOW_CONFIG", str(REPO / "airflow.cfg"))
    env.setdefault("AIRFLOW_HOME", str(REPO / ".devstack" / "airflow-bench"))
    env.setdefault("TRITON_URL", "http://127.0.0.1:8000")  # dags/models.yaml reads it; nothing is contacted
    for key, value in DEMO_BUILDERS.items():  # dags/models.yaml's demo models build with the devstack's builder
        env.setdefault(key, value)
    return env


def measure(path: Path, runs: int) -> dict[str, float]:
    forked = steady(path, runs)
    return {"cold": cold(path, runs), "steady": forked["seconds"], "warm": warm(path, runs),
            "steady_page_faults": forked["page_faults"], "steady_sys_s": forked["sys_s"]}


def main() -> int:
    runs = int(os.environ.get("BENCH_PARSE_RUNS", "7"))
    # Run after the sync bench, whose GiBs of dirty pages would otherwise be written back while this is timed.
    os.sync()
    results: dict[str, Any] = {"runs": runs, "target_steady_s": TARGET_S, "files": {},
                               "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                               "fresh_page_us": {"start": fresh_page_cost()}}
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        base = measure(empty, runs)
    results["empty"] = base
    lines = [f"DAG file parse time (median of {runs}; ratio: x the empty DAG file `{EMPTY_DAG.split('  ')[0]}`)",
             f"{'file':<22} {'cold (worker)':>20} {'steady (dag-processor)':>24} {'warm (in-process)':>20}"
             f"   {'steady: faults, sys':>20}",
             f"{'(empty DAG file)':<22} {base['cold']:>19.3f}s {base['steady']:>23.3f}s {base['warm']:>19.3f}s"
             f"   {base['steady_page_faults']:>12.0f} {base['steady_sys_s']:>6.3f}s"]
    for path in DAG_FILES:
        figures = measure(path, runs)
        results["files"][path.name] = figures
        cells = [f"{figures[k]:.3f}s {figures[k] / base[k]:5.1f}x" for k in ("cold", "steady", "warm")]
        met = "met" if figures["steady"] < TARGET_S else "NOT met"
        lines.append(f"{path.name:<22} {cells[0]:>20} {cells[1]:>24} {cells[2]:>20}   "
                     f"{figures['steady_page_faults']:>12.0f} {figures['steady_sys_s']:>6.3f}s   "
                     f"steady < {TARGET_S}s: {met}")
    results["fresh_page_us"]["end"] = fresh_page_cost()
    lines.append("a fresh 4 KiB page, kernel us to fault in (each forked parse copies the pages it writes): "
                 + ", ".join(f"{k} {v}" for k, v in results["fresh_page_us"].items()))
    print("\n".join(lines), flush=True)
    out = Path(os.environ.get("BENCH_RESULTS_PARSE", REPO / "bench" / "results" / "parse.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
