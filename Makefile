# The README's commands. Each target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check lint install docs

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
	$(PY) -m pytest -q

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
