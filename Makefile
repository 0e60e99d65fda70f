# Everything runs inside .venv, created on first use. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1
# The shared real data: MASKCONTRAST_DATA when set, else ../shared/data when that folder exists.
ifeq ($(MASKCONTRAST_DATA),)
ifneq ($(wildcard ../shared/data),)
export MASKCONTRAST_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: help install test lint demo demo-fast check-data clean

help:
	@echo "make demo       set up .venv and run the main job end to end (FAST=1 for a ~10 min version)"
	@echo "make test       set up .venv and run the test suite (what CI runs)"
	@echo "make lint       ruff"
	@echo "make check-data validate the shared datasets under MASKCONTRAST_DATA"

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# the independent saliency-metric implementation that tests/saliency/test_metrics.py checks
	@# ours against; --no-deps: its pins (scikit-image<0.26, opencv<5) would downgrade ours
	$(PY) -m pip install --quiet --no-deps "pysodmetrics==1.6.2"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

check-data: $(STAMP)
	$(PY) -m maskcontrast.data.check --shared

demo: $(STAMP)
	$(PY) -m maskcontrast.demo $(if $(FAST),--fast,)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
