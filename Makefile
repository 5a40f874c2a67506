# The two commands of the README. Each creates its own virtual environment: the demo uses
# stock onnxruntime (what devices run); the tests use the onnxruntime-training build on
# x86_64 so the portable and ORT-training backends can be checked against each other (the
# two wheels install the same module and cannot share an environment).
PYTHON ?= python3
DEMO_VENV := .venv
TEST_VENV := .venv-test
ORT_EXTRA := $(shell [ "$$(uname -m)" = x86_64 ] && echo ort-training || echo device)
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test wheel clean

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/fedge simulate --baselines local,central --json runs/demo/run.json

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/python -m pytest -q

# The wheel a device installs: copy dist/fedge-*.whl to the board, then
#   pip install "$$(ls fedge-*.whl)[device]"
wheel: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/pip wheel $(PIP_FLAGS) --no-deps --no-build-isolation -w dist .

$(DEMO_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install $(PIP_FLAGS) -e '.[device,sim]'
	touch $@

$(TEST_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install $(PIP_FLAGS) -e '.[$(ORT_EXTRA),sim,test]'
	touch $@

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) runs build dist *.egg-info
