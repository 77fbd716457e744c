# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv with the
# pinned versions from constraints.txt first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The bench needs root (its hosts are network namespaces). Its Ansible peer
# (bench/ansible_peer.py) needs ansible-core in the same venv, pinned for the bench only.
ANSIBLE_STAMP := $(VENV)/.installed-ansible

$(ANSIBLE_STAMP): $(STAMP) bench/constraints-ansible.txt
	$(BIN)/pip install --quiet -c constraints.txt -c bench/constraints-ansible.txt ansible-core
	touch $(ANSIBLE_STAMP)

bench: $(ANSIBLE_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.ansible_peer $(PEER_ARGS)
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
