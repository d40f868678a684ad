# `make demo` and `make test` are the two commands; both set up .venv on first use.
PYTHON_BASE ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.cfg tools/install_detectron2.sh
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The loop while editing: every test not marked `slow` (no training run, export or second process), under a
# minute on 2 CPU cores; `make test` runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(PY) tools/demo_job.py --output-dir output/demo

# `make bench PAPER_REPO=<checkout>` also times the authors' own loss (a checkout of zhanghengdev/MutualGuide at
# fd2c4cc, see parity/README.md); SEED_REPO is its old name.
PAPER_REPO ?= $(SEED_REPO)
bench: $(STAMP)
	$(PY) benchmarks/bench_assignment.py
	$(PY) benchmarks/bench_train_step.py $(if $(PAPER_REPO),--paper-repo $(PAPER_REPO))
	$(PY) benchmarks/bench_inference.py

# Only what `make demo` and `make test` write: the demo's run and Python's caches. Training runs in output/<run>/
# and .venv/ stay.
clean:
	rm -rf output/demo .pytest_cache
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
