# Entry points. Every target creates or refreshes .venv first, so a fresh machine needs nothing else.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export AIRFLOW_HOME ?= $(CURDIR)/.devstack/airflow
export AIRFLOW_CONFIG ?= $(CURDIR)/airflow.cfg
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
# Extra flags for the demo, e.g. `make demo DEMO_ARGS=--no-rollback` or `DEMO_ARGS=--keep`.
DEMO_ARGS ?=

.PHONY: venv triton-server system-deps test test-fast chaos lint demo up down bench clean

# Debian packages the local stack uses (bubblewrap sandboxes emulated pods; chromium is the browser of
# tests/test_airflow_ui.py, driven by Playwright; postgresql is the running Airflow's database). Skipped when present.
system-deps:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "note: PostgreSQL missing (apt-get install postgresql); the running Airflow cannot start"; fi; fi
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; \
	  else echo "note: bubblewrap missing (apt-get install bubblewrap); emulated pods run as plain processes"; fi; fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "note: chromium missing (apt-get install chromium); tests/test_airflow_ui.py is skipped"; fi; fi

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

# The real tritonserver (2.51, CPU python backend) unpacked from the nvidia-pytriton wheel into
# .devstack/pytriton, with the python stub's own numpy 1.x venv: never pip-installed into .venv, so
# the project's tritonclient/numpy pins stay as they are. Idempotent; PYTRITON_WHEEL=path skips the download.
TRITON_STAMP := .devstack/pytriton/.make-stamp
$(TRITON_STAMP): devstack/triton.py | $(STAMP)
	$(BIN)/python -m devstack.triton install $(if $(PYTRITON_WHEEL),--wheel $(PYTRITON_WHEEL))
	@touch $@

triton-server: $(TRITON_STAMP)

# The Kubeflow Pipelines SDK lives in its own venv: kfp 2.17 needs kubernetes<31, .venv pins kubernetes 36.
# PYTHONPATH= : pip must not see this checkout's package (exported above), whose dependencies are .venv's.
KFP_VENV := .venv-kfp
$(KFP_VENV)/.installed: requirements-kfp.txt
	@test -x $(KFP_VENV)/bin/python || $(PY) -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/pip install -q --upgrade pip
	PYTHONPATH= $(KFP_VENV)/bin/pip install -q -r requirements-kfp.txt
	@touch $@

venv: $(STAMP) system-deps triton-server $(KFP_VENV)/.installed

lint: venv
	$(BIN)/ruff check --no-cache .

# Two workers (pytest-xdist) on the machine's two cores: a file's tests stay on one worker, and so do the running
# Airflow's (tests/conftest.py); then the timing-sensitive files (marker serial) alone. PYTEST_WORKERS=0: one
# process for the first part too.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

test: venv
	$(BIN)/ruff check --no-cache .
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# Everything but the slow end-to-end cases.
test-fast: venv
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow and not serial"
	$(BIN)/python -m pytest -q -m "serial and not slow"

# The faults suite (tests/chaos/, outside `make test`'s time budget): kills, S3 storms and stalls, a full PVC,
# an API server restart, concurrent deploys, plus the bad-input property tests; writes tests/chaos/results/.
chaos: venv
	$(BIN)/python -m pytest -q --chaos tests/chaos tests/test_bad_input.py tests/test_release_signing.py

# Starts S3 + Triton + the Kubernetes emulator, runs the deploy DAG through Airflow (then a bad release
# that is rolled back), prints the endpoints and a real answer, stops everything; non-zero on failure.
demo: venv
	$(BIN)/python -m devstack demo $(DEMO_ARGS)

up: venv
	$(BIN)/python -m devstack up

down:
	@test -x $(BIN)/python && $(BIN)/python -m devstack down || true

# Peer tools for the benchmark live in their own venv: awscli 1.x caps libraries .venv pins differently.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: bench/requirements-peers.txt
	@test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements-peers.txt
	@touch $@

bench: venv $(BENCH_VENV)/.installed
	$(BIN)/python -m bench.sync_bench
	$(BIN)/python -m bench.parse_time
	$(BIN)/python -m bench.processor_parse
	$(BIN)/python -m bench.deploy_latency

clean: down
	rm -rf .devstack bench/work

# Re-render k8s/ from the pod builders (tests fail when the committed files drift from this).
.PHONY: manifests
manifests: venv
	$(BIN)/python -m triton_rollout render-manifests --out k8s/

# Re-compile the committed Kubeflow pipeline (tests fail when it drifts from the code); for your own model:
# make kfp-pipeline KFP_CONFIG=dags/models.yaml KFP_MODEL=NAME KFP_OUT=FILE KFP_FLAGS= (FLAGS: --no-env ignores $VARs).
KFP_CONFIG ?= kubeflow/example-models.yaml
KFP_MODEL ?= llama3-8b
KFP_OUT ?= kubeflow/triton_rollout_pipeline.yaml
KFP_FLAGS ?= --no-env
.PHONY: kfp-pipeline
kfp-pipeline: venv
	set -o pipefail; $(BIN)/python -m triton_rollout.kube.kfp_steps --config $(KFP_CONFIG) --model $(KFP_MODEL) $(KFP_FLAGS) \
	  | $(KFP_VENV)/bin/python -m kubeflow.pipeline --steps - --out $(KFP_OUT)
