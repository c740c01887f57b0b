# Both targets create or refresh the local virtual environment first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test mutation venv fashion-mnist clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/softintrovae demo

test: $(STAMP) fashion-mnist
	$(PY) -m pytest

# Mutation testing of the core (tools/mutation.py, results in docs/testing.md); not part of `test`.
# mutmut is installed here only, from the `mutation` extra. Long: see docs/testing.md for its time.
mutation: $(STAMP)
	@$(VENV)/bin/mutmut --version >/dev/null 2>&1 || $(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) tools/mutation.py

# Fashion-MNIST from Debian, for the image tests; installed only when missing and running as root.
fashion-mnist:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
		echo "warning: could not install dataset-fashion-mnist; tests that need it are skipped"; \
	fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache mutants
