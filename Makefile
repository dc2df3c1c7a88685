# Two commands set everything up on a fresh machine (Python 3.11+, no GPU):
#   make demo   venv + runtime requirements, sample OCT study, one run of the app on it
#   make test   venv + dev requirements, ruff, pytest
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE := sample_study
OUTPUT := output
BUNDLE := model/bundles/aicnet3d_demo
# Holoscan wants a 32 MiB stack; raising it here keeps its warning out of every run.
RUN := ulimit -s 32768 2>/dev/null; HOLOSCAN_LOG_LEVEL=WARN OMP_WAIT_POLICY=PASSIVE

.PHONY: demo test lint venv dev-venv demo-model evaluate bench map clean

$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>25.1"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

demo: $(VENV)/.runtime
	rm -rf $(SAMPLE) $(OUTPUT)
	$(RUN) $(PY) -m monai_app.sample_study $(SAMPLE)
	$(RUN) $(PY) -m monai_app -i $(SAMPLE) -o $(OUTPUT)

test: $(VENV)/.dev
	@bash .ci/debian-tools.sh
	$(PY) -m ruff check .
	$(RUN) $(PY) -m pytest -q

lint: $(VENV)/.dev
	$(PY) -m ruff check .

# Re-train the bundled demo model on synthetic phantoms (about 25 min on 2 CPU cores).
demo-model: $(VENV)/.runtime
	$(RUN) $(PY) -m model.train --config model/bundles/demo_training.yaml

# Regenerate the demo model's metric table on a fresh held-out phantom set.
evaluate: $(VENV)/.runtime
	$(RUN) $(PY) -m model.evaluate --bundle $(BUNDLE) --phantoms 200 --seed 20261128 --out bench/results/demo_evaluation

bench: $(VENV)/.dev
	$(RUN) $(PY) -m bench.run_all

map: $(VENV)/.runtime
	bash deploy/build_map.sh

clean:
	rm -rf $(SAMPLE) $(OUTPUT) .pytest_cache .ruff_cache
