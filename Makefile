# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create/reuse .venv and install what they need (scripts/install.py prints what it chose).
PYTHON ?= python3
VENV   ?= .venv
export TF4CTR_VENV := $(abspath $(VENV))

.PHONY: setup demo test bench clean
setup:
	$(PYTHON) scripts/install.py

demo: setup
	$(VENV)/bin/tf4ctr-fast train

test: setup
	$(VENV)/bin/python -m pytest -q tests

bench: setup
	$(VENV)/bin/python -m pytest bench/ --benchmark-only

clean:
	rm -rf build *.egg-info tf4ctr_fast/_C*.so
