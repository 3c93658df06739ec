# The README's commands. Each target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast mutation bench gpu-check lint install docs

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1  # aa_torchattacks only; its requests pin is not needed
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ltadv run

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The fast lane for local work: everything not marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=15

# Mutation testing of the core (docs/mutation.md); long, not part of `make test`. MODULE=losses runs one.
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) mutation/run.py $(MODULE)

bench: $(STAMP)
	$(VENV)/bin/ltadv bench --out benchmarks/results.json

# Every GPU check in one go (<= 8 min on one GPU), all into runs/gpu-check-$(DEVICE)/ (docs/gpu-check.md).
# DEVICE=cpu: the same script at tiny sizes. Without CUDA, DEVICE=cuda says so in one line and exits 2.
DEVICE ?= cuda
gpu-check: $(STAMP)
	$(PY) -m ltadv_bench.gpu_check --device $(DEVICE) --out runs/gpu-check-$(DEVICE)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site
