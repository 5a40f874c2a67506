# The two commands of the README. Each creates its own virtual environment: the demo uses
# stock onnxruntime (what devices run); the tests use the onnxruntime-training build on
# x86_64 so the portable and ORT-training backends can be checked against each other (the
# two wheels install the same module and cannot share an environment).
PYTHON ?= python3
DEMO_VENV := .venv
TEST_VENV := .venv-test
ORT_EXTRA := $(shell [ "$$(uname -m)" = x86_64 ] && echo ort-training || echo device)
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test wheel check-aarch64 clean

# The demo starts from a pretrained model: `fedge pretrain` trains it on 10% of MNIST-5k that
# no device holds (printing its accuracy before round 1), and the fleet imports it with
# mnist-mlp-lora32's roles (fc1 frozen, fc2 LoRA rank 32, dual head) and fine-tunes it for 30
# rounds on the other 90%, 20 devices, Dirichlet 0.1. The baselines start from the same
# pretrained weights. FedAdam (server lr 0.03, its default): on this split's seeds 0-3 it ends
# 0.8 to 3 points above FedAvg's global accuracy; rank 32 and 30 rounds hold global >= 90% on
# seeds 0-5 (90.9% at worst), where rank 8 and 20 rounds missed on seed 3 (README, Two commands).
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/fedge pretrain --out runs/demo/pretrained --spec models/specs/mnist-mlp-lora32.toml
	$(DEMO_VENV)/bin/fedge simulate --model runs/demo/pretrained/model.toml --data runs/demo/pretrained/clients \
		--rounds 30 --lr 0.01 --clients-per-round 20 --strategy fedadam --baselines local,central --json runs/demo/run.json

# -n 2 (pytest-xdist): two test processes, one per core of the 2-core CI machine. One process
# ran the suite in 34 min there (2,141 s in CI for stop 46), over its 30-minute budget: most of
# the slow tests wait on brokers, databases and subprocesses, so two overlap well (20 min on the
# same machine). worksteal: an idle process takes queued tests from the busy one, so the few
# 1-3 minute tests do not leave one process idle at the end. Every test picks free ports and its
# own tmp_path, so the two never share a broker, a database or a folder.
# --durations: the slowest tests are listed so a run shows where the time went.
test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/python -m pytest -q -n 2 --dist worksteal --durations=25

# The wheel a device installs: copy dist/fedge-*.whl to the board, then
#   pip install "$$(ls fedge-*.whl)[device]"
wheel: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/pip wheel $(PIP_FLAGS) --no-deps --no-build-isolation -w dist .

# The device install on arm64 (issue 10): the wheel above with [device], from pip's arm64
# wheels, in a Debian arm64 userland under qemu-user; `fedge device probe` and one training task
# there, matched against the same task here to 1e-5 (tests/packaging/test_aarch64.py). Needs
# root, debootstrap and qemu-user-static. The userland is built once into .cache/aarch64-rootfs
# (gitignored) and reused; delete that folder to rebuild it.
check-aarch64: wheel
	FEDGE_WHEEL="$$(ls -t dist/fedge-*.whl | head -n 1)" FEDGE_REQUIRE_AARCH64=1 \
		$(TEST_VENV)/bin/python -m pytest -q -s tests/packaging/test_aarch64.py

$(DEMO_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install $(PIP_FLAGS) -e '.[device,sim]'
	touch $@

$(TEST_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install $(PIP_FLAGS) -e '.[$(ORT_EXTRA),sim,test]'
	# A real pretrained model for the import tests; --no-deps: its onnxruntime requirement
	# would replace the training build, and the test only reads its model file.
	$(TEST_VENV)/bin/pip install $(PIP_FLAGS) --no-deps rapidocr-onnxruntime==1.4.4
	# torch exports the CNN and MLP the import tests read (test-only: no device installs it).
	# Pinned: 2.13.0 is the CPU wheel this machine's pip finds on disk; an unpinned torch pulls
	# a CUDA build of several GB. x86_64 only, like the training build.
	[ "$$(uname -m)" != x86_64 ] || $(TEST_VENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	touch $@

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) runs build dist *.egg-info
