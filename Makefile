# Two commands on a fresh machine with Python 3.11:
#   make demo   - set up .venv and run the main job: the quick grid (services started locally)
#   make test   - set up .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.skinadv-installed
# Real data: $SKINADV_HAM10000, else ../shared/data/ham10000 when present, else synthetic.
SKINADV_HAM10000 ?= $(abspath ../shared/data/ham10000)
DATA ?= $(if $(wildcard $(SKINADV_HAM10000)/HAM10000_metadata.csv),$(SKINADV_HAM10000),synthetic:3000)
export SKINADV_HAM10000

.PHONY: setup demo test clean

setup: $(STAMP)

# torch first, pinned: pip then takes the local CPU build instead of a multi-GB CUDA one.
# torchattacks (the [crosscheck] and [bench] extras) without its pins, which make pip backtrack
# for minutes; IBM ART (the rest of [bench], for `skinadv bench` and its tests) with its own.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q adversarial-robustness-toolbox==1.20.1
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	$(BIN)/python -m pip install -q --no-deps pyautoattack==0.2.0
	touch $(STAMP)

demo: $(STAMP)
	@echo "data: $(DATA)"
	$(BIN)/skinadv grid --preset quick --data $(DATA) $(GRID_ARGS)

# 2 pytest-xdist workers: the tests that start services (tests/flows, tests/integration,
# tests/e2e) run one after another on one of them, the in-process tests beside them on the
# other (tests/conftest.py's scheduler). TEST_WORKERS=0: one process, as plain pytest.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
